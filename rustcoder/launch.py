"""Multi-process training through Accelerate: the launcher the field already trusts.

``rustcoder train --num-processes N`` resolves the config and the run directory once, writes the
resolved config there, then runs ``accelerate launch`` with N processes on ``rustcoder train``
pointing at that directory. Only rank 0 writes the run's files, logs to Trackio and pushes.
DeepSpeed launch configs are refused with the reason (``check_engine``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

from . import artifacts
from .config import TrainConfig
from .errors import RustcoderError, UsageError, did_you_mean
from .ranks import LAUNCHED_ENV, RUN_DIR_ENV, is_launched, process_rank  # noqa: F401 - re-exported

LAUNCH_CONFIG_FILE = "launch_config.yaml"
DEEPSPEED_REFUSED = (
    "DeepSpeed is refused by rustcoder train: each optimizer step runs as several forwards and backwards (step "
    "packing, a number that varies by step), while DeepSpeed fixes its gradient accumulation when the engine starts "
    "(rustcoder's is 1), so ZeRO would treat every backward as the end of a step and reduce in each. The remedy "
    "(marking only a step's last backward as the boundary) cannot be verified here: Accelerate runs DeepSpeed only "
    "on GPUs. Use --launch-config fsdp2 (shards the base as ZeRO-3 does) or ddp; see docs/scaling.md.")


def launch_config_names() -> list[str]:
    """The shipped Accelerate configs (ddp, ddp-multinode, fsdp2, deepspeed-zero2, deepspeed-zero3)."""
    root = resources.files("rustcoder") / "launch_configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def launch_config_path(name_or_file: str) -> Path:
    """A shipped config by name, or an existing YAML file."""
    p = Path(name_or_file).expanduser()
    if p.is_file():
        return p.resolve()
    names = launch_config_names()
    if name_or_file in names:
        return Path(str(resources.files("rustcoder") / "launch_configs" / f"{name_or_file}.yaml"))
    raise UsageError(f"unknown launch config {name_or_file!r}{did_you_mean(name_or_file, names)}: use one of "
                     f"{', '.join(names)} or a path to an Accelerate YAML file.")


def launch_config_data(name_or_file: str) -> dict:
    """The parsed Accelerate YAML of a launch config ({} when it cannot be read)."""
    import yaml

    try:
        data = yaml.safe_load(launch_config_path(name_or_file).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def check_engine(cfg: TrainConfig) -> None:
    """Refuse, before anything starts, a launch config whose engine rustcoder's training has not been verified
    with (DeepSpeed: see DEEPSPEED_REFUSED), whether named by --launch-config or set by `accelerate launch`."""
    by_config = bool(cfg.launch_config) and launch_config_data(cfg.launch_config).get("distributed_type") == "DEEPSPEED"
    if by_config or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise UsageError(f"--launch-config {cfg.launch_config or '(accelerate launch)'}: {DEEPSPEED_REFUSED}")


def machine_count(cfg: TrainConfig, num_machines: int | None = None) -> int:
    """Machines the run spans: --num-machines, else the launch config file's num_machines, else 1."""
    if num_machines:
        return num_machines
    if cfg.launch_config:
        return int(launch_config_data(cfg.launch_config).get("num_machines") or 1)
    return 1


def accelerate_command(cfg: TrainConfig, train_args: list[str], machine: dict | None = None) -> list[str]:
    """The `accelerate launch` command line that runs `rustcoder train` with cfg.num_processes processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.launch_config:
        cmd += ["--config_file", str(launch_config_path(cfg.launch_config))]
    else:  # plain DDP; on a machine without GPUs, accelerate starts CPU processes with the gloo backend
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(cfg.num_processes)]
    for key, flag in (("machine_rank", "--machine_rank"), ("main_process_ip", "--main_process_ip"),
                      ("main_process_port", "--main_process_port"), ("num_machines", "--num_machines")):
        if machine and machine.get(key) is not None:
            cmd += [flag, str(machine[key])]
    return cmd + ["-m", "rustcoder", "train", *train_args]


def launch_training(cfg: TrainConfig, *, run_dir: Path | None = None, resume: bool = False,
                    machine: dict | None = None, log=print) -> Path:
    """Start cfg.num_processes training processes and wait; returns the run directory."""
    from .rundir import new_run_dir

    check_engine(cfg)
    if run_dir is None:
        run_dir = new_run_dir(cfg)
        run_dir.mkdir(parents=True)
    config_file = run_dir / LAUNCH_CONFIG_FILE
    artifacts.atomic_write_yaml(config_file, {**cfg.to_dict(), "run_name": run_dir.name,
                                              "output_dir": str(run_dir.parent)})
    args = ["--run-name", run_dir.name, "--output-dir", str(run_dir.parent)]
    args += ["--resume"] if resume else ["--config", str(config_file), "--preset", cfg.preset or "small-batch"]
    cmd = accelerate_command(cfg, args, machine)
    env = {**os.environ, LAUNCHED_ENV: "1", RUN_DIR_ENV: str(run_dir.resolve())}
    log(f"launching {cfg.num_processes} processes: {' '.join(cmd[1:])}")
    try:
        code = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        raise RustcoderError(f"training interrupted; continue it with `rustcoder train --resume --run-name "
                             f"{run_dir.name} --output-dir {run_dir.parent} --num-processes {cfg.num_processes}`.")
    if code != 0:
        raise RustcoderError(f"the {cfg.num_processes}-process training exited with code {code}; see the output "
                             f"above. Resume with `rustcoder train --resume --run-name {run_dir.name} "
                             f"--output-dir {run_dir.parent} --num-processes {cfg.num_processes}`.")
    return run_dir
