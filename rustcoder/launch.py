"""Multi-process training through Accelerate: the launcher the field already trusts.

``rustcoder train --num-processes N`` resolves the config and the run directory once, writes the
resolved config there, then runs ``accelerate launch`` with N processes on ``rustcoder train``
pointing at that directory. Only rank 0 writes the run's files, logs to Trackio and pushes.
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


def machine_count(cfg: TrainConfig, num_machines: int | None = None) -> int:
    """Machines the run spans: --num-machines, else the launch config file's num_machines, else 1."""
    if num_machines:
        return num_machines
    if cfg.launch_config:
        import yaml

        try:
            data = yaml.safe_load(launch_config_path(cfg.launch_config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return 1
        return int(data.get("num_machines") or 1) if isinstance(data, dict) else 1
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
