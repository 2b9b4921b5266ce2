"""``rustcoder doctor``: what is installed and what is missing for each command, with the exact fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

OK, WARN, MISSING = "ok", "warn", "missing"


@dataclass
class Check:
    """One finding: which commands it matters for, its status, what was seen, and the fix."""

    name: str
    status: str
    detail: str
    needed_by: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("python", OK if ok else MISSING, f"{sys.version.split()[0]} ({sys.executable})", "all",
                 "" if ok else "install Python 3.10 or newer")


def check_packages() -> list[Check]:
    """The core training stack, installed with rustcoder itself."""
    out = []
    for dist in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "trackio"):
        v = _version(dist)
        out.append(Check(dist, OK if v else MISSING, v or "not installed", "train, eval, merge",
                         "" if v else "pip install -e . (or bash scripts/setup.sh)"))
    return out


def check_torch() -> list[Check]:
    """Torch build, CUDA and GPUs."""
    try:
        import torch
    except ImportError:
        return [Check("torch build", MISSING, "torch not importable", "train, eval, merge",
                      "pip install torch==2.13.0 (CPU) or the CUDA build from pytorch.org")]
    cuda = torch.version.cuda
    checks = [Check("torch build", OK, f"{torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU-only build'})",
                    "train, eval, merge")]
    if torch.cuda.is_available():
        gpus = [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
                for i in range(torch.cuda.device_count())]
        checks.append(Check("GPUs", OK, f"{len(gpus)}: " + ", ".join(gpus), "train at scale, vLLM"))
        checks.append(check_packed_attention())
    else:
        checks.append(Check("GPUs", WARN, "none visible: training and eval run on CPU (tiny models, minutes; "
                            "a 7B model needs a GPU)", "train at scale, vLLM",
                            "on a GPU machine: pip install torch (CUDA build), check nvidia-smi"))
    return checks


def check_packed_attention() -> Check:
    """The attention path packed training forwards will use on this GPU (rustcoder.attention's choice)."""
    from .attention import choose_attention

    path = choose_attention("cuda", "padding-free")
    if path.varlen_kwargs:
        return Check("packed attention", OK, f"{path.name} (a varlen kernel: packed examples cost no mask)", "train")
    return Check("packed attention", WARN, f"{path.name}: no varlen kernel here, packed forwards attend through a "
                 "block mask (exact, slower)", "train",
                 "pip install flash-attn --no-build-isolation   (or torch >= 2.9, whose varlen_attn rustcoder uses)")


def check_rustc() -> list[Check]:
    """rustc for evaluation, and the sandbox's protections."""
    path = shutil.which("rustc")
    if not path:
        return [Check("rustc", MISSING, "not on PATH: code answers cannot be compiled or tested",
                      "eval (code categories), playground 'Check with rustc'",
                      "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh   (then open a new shell)")]
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return [Check("rustc", MISSING, f"{path} does not run: {e}", "eval", "reinstall with rustup")]
    checks = [Check("rustc", OK, f"{out} ({path})", "eval")]
    try:
        from .sandbox import sandbox_capabilities

        caps = sandbox_capabilities()
        missing = caps.get("missing") or []
        if not caps.get("usable", True):
            checks.append(Check("sandbox", MISSING, caps.get("error") or "unusable", "eval",
                                "see docs/sandbox.md"))
        else:
            checks.append(Check("sandbox", WARN if missing else OK,
                                f"isolation: {', '.join(caps.get('isolation', []))}"
                                + (f"; missing: {', '.join(missing)}" if missing else ""),
                                "eval", "see docs/sandbox.md (run as root for uid drop and network namespaces)"
                                if missing else ""))
    except Exception as e:  # the doctor reports, it never crashes
        checks.append(Check("sandbox", WARN, f"could not probe: {type(e).__name__}: {e}", "eval"))
    return checks


def vllm_venvs() -> list[Path]:
    """Pythons of the vLLM environments serve/setup_vllm_cpu.sh builds: .venv-vllm in the checkout rustcoder runs
    from, or in the current directory."""
    found = []
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        python = root / os.environ.get("RUSTCODER_VLLM_VENV", ".venv-vllm") / "bin" / "python"
        if python.is_file() and python.absolute() not in found:
            found.append(python.absolute())
    return found


def _installed_version(python: Path, dists=("vllm", "vllm-cpu")) -> str | None:
    """The version a distribution has in another environment (its metadata: importing vLLM takes many seconds)."""
    code = ("import sys\nfrom importlib.metadata import version, PackageNotFoundError\n"
            f"for d in {list(dists)!r}:\n    try:\n        sys.stdout.write(version(d)); break\n"
            "    except PackageNotFoundError: pass\n")
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def check_vllm(vllm_python: str | None = None) -> Check:
    """vLLM in this environment, or in its own (RUSTCODER_VLLM_PYTHON / --vllm-python, or a checkout's
    .venv-vllm, which is used only once named)."""
    other = vllm_python or os.environ.get("RUSTCODER_VLLM_PYTHON")
    if other:
        try:
            out = subprocess.run([other, "-c", "import vllm, sys; sys.stdout.write(vllm.__version__)"],
                                 capture_output=True, text=True, timeout=120)
            if out.returncode == 0:
                return Check("vLLM", OK, f"{out.stdout.strip()} in {other}", "serve --engine vllm, eval (GPU)")
            return Check("vLLM", MISSING, f"{other} cannot import vllm", "serve --engine vllm",
                         "bash serve/setup_vllm_cpu.sh (CPU) or `pip install vllm` in that environment")
        except (OSError, subprocess.SubprocessError) as e:
            return Check("vLLM", MISSING, f"{other}: {e}", "serve --engine vllm", "check the path")
    v = _version("vllm") or _version("vllm-cpu")
    if v:
        return Check("vLLM", OK, f"{v} (this environment)", "serve --engine vllm, eval (GPU)")
    for python in vllm_venvs():
        v = _installed_version(python)
        if v:
            return Check("vLLM", OK, f"{v} in {python.parent.parent} (its own environment; used when named: "
                         f"export RUSTCODER_VLLM_PYTHON={python}, or --vllm-python {python} on serve / "
                         "eval --backend served)", "serve --engine vllm, eval --backend vllm/served")
    return Check("vLLM", WARN, "not installed (serve falls back to the transformers engine)",
                 "serve --engine vllm, eval (GPU)",
                 "GPU: pip install vllm in its own venv, then --vllm-python PATH; CPU: bash serve/setup_vllm_cpu.sh")


def check_extras() -> list[Check]:
    """Optional stacks: the serve extra (transformers engine + OpenAI client), Gradio (playground). flash-attn
    matters only on a GPU: check_packed_attention."""
    from .serve import transformers_serving_missing

    out = []
    missing = transformers_serving_missing()
    vllm = bool(_version("vllm") or _version("vllm-cpu") or os.environ.get("RUSTCODER_VLLM_PYTHON"))
    out.append(Check("serve extra", OK if not missing else WARN,
                     "transformers engine ready" if not missing else
                     f"missing {', '.join(missing)}: `rustcoder serve` "
                     + ("can only use --engine vllm" if vllm else "cannot start") + " and the demo skips serving",
                     "serve, demo (serving stage)", "" if not missing else "pip install 'rustcoder[serve]'"))
    v = _version("gradio")
    out.append(Check("gradio", OK if v else WARN, v or "not installed: `rustcoder playground` and "
                     "`serve --playground` cannot start", "playground",
                     "" if v else "pip install 'rustcoder[playground]'"))
    return out


def check_trackio() -> Check:
    v = _version("trackio")
    if not v:
        return Check("trackio", MISSING, "not installed: no live metrics", "train",
                     "pip install trackio (or train with --report-to none)")
    where = os.environ.get("TRACKIO_DIR") or str(Path(os.environ.get("HF_HOME", Path.home() / ".cache" /
                                                                     "huggingface")) / "trackio")
    return Check("trackio", OK, f"{v}, runs stored in {where}; dashboard: rustcoder runs --dashboard", "train")


def check_hub(timeout: float = 3.0) -> list[Check]:
    """Hub login and reachability (skipped when HF_HUB_OFFLINE is set)."""
    checks = []
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:
        token = None
    checks.append(Check("hub login", OK if token else WARN, "token found" if token else "not logged in",
                        "train --push-to-hub, merge --push-to-hub, gated models",
                        "" if token else "hf auth login   (or export HF_TOKEN=...)"))
    needs = "the default model and dataset (Qwen/Qwen2-7B-Instruct, Strandset-Rust-v1), hub ids, --push-to-hub"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        checks.append(Check("hub reachable", WARN, "HF_HUB_OFFLINE=1: only local models and data", needs,
                            "unset HF_HUB_OFFLINE, or use local paths / tiny-qwen2 and --dataset sample"))
        return checks
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/api/models?limit=1"), timeout=timeout)
        checks.append(Check("hub reachable", OK, endpoint, needs))
    except Exception as e:
        checks.append(Check("hub reachable", WARN, f"{endpoint} unreachable ({type(e).__name__})", needs,
                            "check the network/proxy, or work offline: --model tiny-qwen2 --dataset sample, "
                            "or local paths"))
    return checks


def check_disk(paths: list[str] | None = None, need_gb: float = 40.0) -> list[Check]:
    """Free space where runs, merged models and the hub cache go."""
    out = []
    hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    for label, p in (("disk: runs", (paths or ["runs"])[0]), ("disk: hub cache", hf_home)):
        probe = Path(p).resolve()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free / 2**30
        ok = free >= need_gb
        out.append(Check(label, OK if ok else WARN, f"{free:.0f} GiB free at {probe}",
                         "train, merge (a merged 7B model is ~15 GB; its base another 15 GB)",
                         "" if ok else f"free space or point --output-dir / HF_HOME elsewhere (want >= {need_gb:.0f} GiB)"))
    return out


def run_checks(vllm_python: str | None = None, hub_timeout: float = 3.0) -> list[Check]:
    """Every check, in the order they are printed."""
    return [check_python(), *check_packages(), *check_torch(), *check_rustc(), check_vllm(vllm_python),
            *check_extras(), check_trackio(), *check_hub(hub_timeout), *check_disk()]


def render(checks: list[Check]) -> str:
    """A table a person reads top to bottom, fixes listed under it."""
    mark = {OK: "ok  ", WARN: "warn", MISSING: "MISS"}
    width = max(len(c.name) for c in checks)
    lines = [f"[{mark[c.status]}] {c.name:<{width}}  {c.detail}" for c in checks]
    fixes = [c for c in checks if c.status != OK and c.fix]
    if fixes:
        lines.append("\nto fix:")
        for c in fixes:
            lines.append(f"  {c.name} (needed by {c.needed_by}):\n      {c.fix}")
    missing = [c.name for c in checks if c.status == MISSING]
    unavailable = [c for c in checks if c.status == WARN and c.name in OPTIONAL_COMMANDS]
    offline = next((c for c in checks if c.name == "hub reachable" and c.status != OK), None)
    if missing:
        lines.append(f"\nmissing: {', '.join(missing)}: the commands that need them will fail until fixed.")
    elif unavailable or offline:
        lines.append(("\ntrain, eval and merge have everything they need"
                      + (" for local models and data (tiny-qwen2, --dataset sample, local paths)" if offline else "")
                      + "; not available here: ")
                     + "; ".join([f"{OPTIONAL_COMMANDS[c.name]} ({c.fix})" for c in unavailable]
                                 + ([f"the hub: {offline.needed_by} ({offline.detail})"] if offline else [])) + ".")
    else:
        lines.append("\neverything needed is here.")
    return "\n".join(lines)


# Optional stacks whose absence stops a whole command (a warning, not a failure of `doctor`).
OPTIONAL_COMMANDS = {"serve extra": "rustcoder serve and the demo's serving stage",
                     "gradio": "rustcoder playground"}
