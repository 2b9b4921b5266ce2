"""What a newcomer and a daily user trip over: clear errors for paths and the hub, ecosystem habits."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from rustcoder.cli import main


def _run(args, cwd, env=None):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, env={"HF_HUB_OFFLINE": "1", **(env or {})})
    finally:
        os.chdir(old)


@pytest.mark.parametrize("command", [["serve", "--engine", "transformers"], ["eval"]])
def test_a_path_that_does_not_exist_is_named_not_treated_as_a_hub_id(tmp_path, command):
    (tmp_path / "runs" / "exp-a").mkdir(parents=True)
    r = _run(command[:1] + ["runs/nope"] + command[1:], tmp_path)
    assert r.exit_code == 2, r.output
    assert "'runs/nope' does not exist" in r.output and "exp-a" in r.output  # what is there instead
    assert "Strandset" not in r.output and "Traceback" not in r.output


def test_hub_id_with_hf_hub_offline_says_so_not_check_your_network(monkeypatch):
    from rustcoder import modeling
    from rustcoder.errors import RustcoderError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RustcoderError) as e:
        modeling.load_config("nobody-here/not-a-model")
    text = str(e.value)
    assert "HF_HUB_OFFLINE=1 is set" in text and "unset hf_hub_offline" in text.lower()
    assert "network" not in text and "huggingface-cli" not in text


def test_unreachable_hub_fails_at_once_without_retries(monkeypatch):
    from rustcoder import modeling
    from rustcoder.errors import RustcoderError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(modeling, "hub_reachable", lambda timeout=3.0: False)
    t = time.monotonic()
    with pytest.raises(RustcoderError, match="cannot be reached from here"):
        modeling.load_config("nobody-here/not-a-model")
    assert time.monotonic() - t < 10  # huggingface_hub alone retries 5 times (about 30 s) first
