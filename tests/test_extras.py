"""Optional stacks are extras: a missing one is explained with the exact install command, before any work."""

from __future__ import annotations

import sys

import pytest

from rustcoder import extras
from rustcoder.errors import MissingExtraError


def test_every_optional_stack_names_an_extra_that_pyproject_declares():
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    optional = declared["project"]["optional-dependencies"]
    runtime = " ".join(declared["project"]["dependencies"])
    for module, (_, install) in extras.EXTRAS.items():
        extra = install.split("rustcoder[", 1)[1].split("]", 1)[0]
        assert extra in optional, f"{module}: pyproject.toml has no [{extra}] extra"
        assert module.replace("_", "-") not in runtime, f"{module} is optional but a hard dependency"


@pytest.mark.parametrize("module", sorted(extras.EXTRAS))
def test_a_missing_stack_fails_with_its_install_command(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import module` sees when it is not installed
    assert not extras.installed(module)
    with pytest.raises(MissingExtraError) as e:
        extras.require(module)
    assert extras.install_command(module) in str(e.value) and "pip install 'rustcoder[" in str(e.value)


def test_pyplot_draws_to_a_file_without_a_display(tmp_path):
    pytest.importorskip("matplotlib", reason="the plots extra: pip install 'rustcoder[plots]'")
    plt = extras.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "x.png")
    plt.close(fig)
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
