"""The README's two commands are the ones CI and the demo run, and its links point at real files."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_holds_the_two_commands_and_ci_runs_the_test_one():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)
    assert blocks[0].strip() == "bash scripts/quickstart.sh"
    assert blocks[1].strip() == "bash scripts/test.sh"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert re.search(r'rustcoder"? demo', (ROOT / "scripts" / "quickstart.sh").read_text())
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/setup.sh" in test_sh and "pytest" in test_sh
    assert "torch==2.13.0" in (ROOT / "scripts" / "setup.sh").read_text()  # never an unpinned CUDA torch


def test_readme_and_docs_links_exist():
    for text, base in [(README, ROOT)] + [(p.read_text(), p.parent) for p in (ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(((?!https?://)[^)#]+)\)", text):
            assert (base / target).exists(), f"broken link {target}"


def test_every_command_has_a_docs_page():
    from click.testing import CliRunner

    from rustcoder.cli import main

    out = CliRunner().invoke(main, ["--help"]).output
    commands = re.findall(r"^  (\w+)\s", out.split("Commands:")[1], re.MULTILINE)
    docs = " ".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for cmd in commands:
        assert f"rustcoder {cmd}" in docs, f"`rustcoder {cmd}` is not documented in docs/"


def test_readme_names_the_prerequisites_and_the_quickstart_checks_python():
    import subprocess

    before = README.split("## Two commands")[0]
    for needed in ("Python 3.10 or newer", "rustc", "2 GB", "3.4 GB"):
        assert needed in before, needed
    out = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh")], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": "/nonexistent/python3"})
    assert out.returncode == 1 and "needs Python 3.10 or newer" in out.stderr and "PYTHON=" in out.stderr


def test_documented_shell_completion_works():
    import os
    import subprocess
    import sys

    import pytest

    assert 'eval "$(_RUSTCODER_COMPLETE=bash_source rustcoder)"' in README
    script = Path(sys.executable).parent / "rustcoder"
    if not script.is_file():
        pytest.skip("no rustcoder console script next to this Python")
    env = {**os.environ, "_RUSTCODER_COMPLETE": "bash_source"}
    source = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60).stdout
    assert "complete -o nosort -F _rustcoder_completion rustcoder" in source
    env = {**os.environ, "_RUSTCODER_COMPLETE": "bash_complete", "COMP_WORDS": "rustcoder train --learn",
           "COMP_CWORD": "2"}
    answer = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60).stdout
    assert "--learning-rate" in answer


def test_outputs_written_into_a_checkout_are_ignored_by_git():
    """`eval --oracle` (./evals-out) and `compare` (./comparison) write into the current directory."""
    import shutil
    import subprocess

    import pytest

    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("evals-out/oracle/humaneval-rust/metrics.json", "comparison/comparison.md", "runs/x/manifest.json"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, timeout=30)
        assert r.returncode == 0, f"{path} is not ignored by .gitignore"


def test_the_gpu_docs_point_at_a_wheelhouse_script_the_repository_ships():
    """docs/gpu.md and scripts/gpu_checks.py name scripts/gpu_wheelhouse.sh (not a file outside the
    repository), and every wheel it downloads is pinned in constraints.txt."""
    import subprocess
    import sys

    for path in (ROOT / "docs" / "gpu.md", ROOT / "scripts" / "gpu_checks.py"):
        text = path.read_text()
        assert "shared/gpu" not in text and "prepare.sh" not in text, path
        assert "scripts/gpu_wheelhouse.sh" in text, path
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_wheelhouse.sh"), "--list"], capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    wheels = out.stdout.split()
    pinned = {line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert {"transformers", "peft", "trl", "datasets", "fastapi", "openai"} <= {w.split("==")[0] for w in wheels}
    assert set(wheels) <= pinned
    unpinned = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_wheelhouse.sh"), "--list"], capture_output=True,
                              text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                                                          "EXTRA_PKGS": "not-a-pinned-package"})
    assert unpinned.returncode == 1 and "not-a-pinned-package is not pinned in constraints.txt" in unpinned.stderr


def test_readme_says_what_the_test_command_costs_and_how_to_skip_vllm():
    section = README.split("bash scripts/test.sh", 1)[1].split("## ")[0]
    assert "RUSTCODER_SKIP_VLLM=1" in section and "3.4 GB" in section
    assert re.search(r"\d+-\d+ minutes", section), "the test command's time, as a range"
    assert "RUSTCODER_SKIP_VLLM" in (ROOT / "scripts" / "test.sh").read_text()
