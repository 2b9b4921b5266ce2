"""rustcoder doctor finds what is missing and names the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from click.testing import CliRunner

from rustcoder.cli import main
from rustcoder.doctor import MISSING, OK, check_rustc, check_vllm, render, run_checks


def test_doctor_reports_rustc_missing_when_path_hides_it(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # an empty PATH: no rustc
    out = subprocess.run([sys.executable, "-m", "rustcoder", "doctor", "--json"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert checks["rustc"]["status"] == MISSING
    assert "rustup.rs" in checks["rustc"]["fix"]
    assert checks["torch"]["status"] == OK


def test_doctor_finds_rustc_when_present():
    if not shutil.which("rustc"):
        import pytest

        pytest.skip("rustc not installed here")
    checks = {c.name: c for c in check_rustc()}
    assert checks["rustc"].status == OK and "rustc 1." in checks["rustc"].detail
    assert "sandbox" in checks


def test_vllm_python_that_lacks_vllm_is_reported(tmp_path):
    c = check_vllm(sys.executable)  # this environment has no vLLM
    assert c.status == MISSING and "cannot import vllm" in c.detail and "setup_vllm_cpu.sh" in c.fix


def test_render_lists_fixes_and_offline_hub_note():
    os.environ["HF_HUB_OFFLINE"] = "1"
    text = render(run_checks(hub_timeout=0.1))
    assert "hub reachable" in text and "HF_HUB_OFFLINE=1" in text
    assert "to fix:" in text


def test_doctor_cli_runs():
    r = CliRunner().invoke(main, ["doctor"])
    assert r.exit_code in (0, 1), r.output
    assert "[ok  ] python" in r.output


def test_doctor_does_not_say_all_is_here_when_serve_cannot_start(monkeypatch):
    import rustcoder.serve as serve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RUSTCODER_VLLM_PYTHON", raising=False)  # no vLLM to fall back on (CI sets one)
    monkeypatch.setattr(serve, "transformers_serving_missing", lambda: ["fastapi", "uvicorn"])
    checks = run_checks(hub_timeout=0.1)
    extra = {c.name: c for c in checks}["serve extra"]
    assert extra.status != OK and "cannot start" in extra.detail and extra.fix == "pip install 'rustcoder[serve]'"
    text = render(checks)
    assert "everything needed is here" not in text
    assert "not available here: rustcoder serve" in text and "pip install 'rustcoder[serve]'" in text

    monkeypatch.setattr(serve, "transformers_serving_missing", lambda: [])
    assert {c.name: c for c in run_checks(hub_timeout=0.1)}["serve extra"].status == OK


def test_hub_login_hint_is_the_current_cli(monkeypatch, tmp_path):
    from rustcoder.doctor import check_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored token
    login = {c.name: c for c in check_hub()}["hub login"]
    assert login.fix.startswith("hf auth login") and "huggingface-cli" not in login.fix


def test_doctor_names_the_packed_attention_path_on_a_gpu(monkeypatch):
    """On a GPU the doctor says which attention packed training forwards will use, and how to get a varlen one."""
    import torch

    from rustcoder import attention
    from rustcoder.doctor import WARN, check_packed_attention, check_torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: type("P", (), {"total_memory": 80 * 2**30}))
    monkeypatch.setattr(attention, "has_module", lambda m: m == "torch.nn.attention.varlen")
    checks = {c.name: c for c in check_torch()}
    assert "H100" in checks["GPUs"].detail
    assert checks["packed attention"].status == OK and "torch varlen_attn" in checks["packed attention"].detail
    monkeypatch.setattr(attention, "has_module", lambda m: False)
    c = check_packed_attention()
    assert c.status == WARN and "FlexAttention" in c.detail and "flash-attn" in c.fix


def test_doctor_does_not_say_all_is_here_when_the_hub_is_unreachable(monkeypatch):
    """The default model and dataset need the hub: an unreachable hub is a warning naming them, and the last line
    says what works (local models and data) instead of "everything needed is here"."""
    import rustcoder.serve as serve
    from rustcoder.doctor import WARN

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(serve, "transformers_serving_missing", lambda: [])
    checks = run_checks(hub_timeout=0.5)
    hub = {c.name: c for c in checks}["hub reachable"]
    assert hub.status == WARN and "Qwen/Qwen2-7B-Instruct" in hub.needed_by and "Strandset" in hub.needed_by
    text = render([c for c in checks if c.name != "gradio"])
    assert "everything needed is here" not in text
    assert "for local models and data" in text and "not available here: the hub" in text


def test_doctor_finds_a_checkouts_vllm_environment_and_says_how_it_is_used(tmp_path, monkeypatch):
    """serve/setup_vllm_cpu.sh builds .venv-vllm in the checkout: not "vLLM not installed", but where it is and
    how to name it (it is used only when named)."""
    from rustcoder.doctor import vllm_venvs

    venv = tmp_path / ".venv-vllm-here" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\nprintf 0.99.1\n")  # answers the version query as vLLM's would
    (venv / "python").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUSTCODER_VLLM_VENV", ".venv-vllm-here")
    monkeypatch.delenv("RUSTCODER_VLLM_PYTHON", raising=False)
    assert vllm_venvs() == [venv / "python"]
    c = check_vllm()
    assert c.status == OK and "0.99.1" in c.detail and f"RUSTCODER_VLLM_PYTHON={venv / 'python'}" in c.detail
    assert "--vllm-python" in c.detail
    monkeypatch.setenv("RUSTCODER_VLLM_VENV", ".venv-vllm-nowhere")
    assert check_vllm().status != OK  # nothing found: the warning and the setup command
