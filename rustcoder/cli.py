"""The ``rustcoder`` command: a thin adapter over the library.

It parses flags, resolves the config, imports the worker lazily and calls one library function.
Importing this module imports no torch, so ``rustcoder --help`` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import RustcoderError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(e: RustcoderError, debug: bool) -> None:
    if debug:
        raise e
    click.secho(f"error: {e}", fg="red", err=True)
    sys.exit(e.exit_code)


class RustcoderGroup(click.Group):
    """Turns RustcoderError into a clean message and an exit code (no traceback unless --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RustcoderError as e:
            _fail(e, bool(ctx.params.get("debug")) or os.environ.get("RUSTCODER_DEBUG") == "1")


@click.group(cls=RustcoderGroup, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="rustcoder")
def main(debug: bool) -> None:
    """rustcoder: turn an open Qwen model into a Rust assistant, and prove it.

    \b
    The pipeline:
      rustcoder train --preset small-batch -n 10000   LoRA SFT on Strandset-Rust-v1
      rustcoder eval --by-task                        score base vs adapter per Rust task
      rustcoder merge && rustcoder serve              fold the adapter in, serve it

    \b
    Try the whole loop offline on CPU with the built-in tiny model and sample:
      rustcoder train --preset small-batch --model tiny-qwen2 --dataset sample
    """
    if debug:
        os.environ["RUSTCODER_DEBUG"] = "1"


# ---- train --------------------------------------------------------------------------------------

def _field_options(func):
    """One flag per TrainConfig field; default None means 'not typed' (so presets and files show)."""
    from .config import config_fields, flag_name

    for f in reversed(config_fields()):
        t = str(f.type)
        decls = [flag_name(f.name)]
        if f.metadata.get("flag"):
            decls.insert(0, f.metadata["flag"])
        kw = {"default": None, "help": f.metadata.get("help", ""), "show_default": False}
        if t.startswith("bool"):
            decls = [f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}"]
            kw["default"] = None
        elif "list[str]" in t:
            kw["type"] = str
            kw["metavar"] = "A,B"
        elif t.startswith("int"):
            kw["type"] = int
        elif t.startswith("float"):
            kw["type"] = float
        else:
            kw["type"] = str
        func = click.option(*decls, f.name, **kw)(func)
    return func


@main.command(context_settings=CONTEXT)
@click.option("--preset", default=None, metavar="NAME",
              help="Start from a preset (see `rustcoder presets`). Default: small-batch.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of config values (above the preset, below typed flags).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config, data and step counts; train nothing.")
@click.option("--resume", is_flag=True,
              help="Continue a run from its last complete checkpoint (--run-name, else the newest unfinished run).")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@_field_options
def train(preset, config_file, dry_run, resume, as_json, **overrides):
    """Fine-tune a LoRA adapter on Rust tasks (TRL SFT + PEFT).

    Precedence: defaults < --preset < --config FILE < flags you type. The run directory
    (OUTPUT_DIR/RUN_NAME) receives the adapter, tokenizer, chat template, resolved config, manifest
    and metrics; watch the run live with `rustcoder runs --dashboard`.

    \b
    Examples:
      rustcoder train --preset small-batch -n 10000
      rustcoder train --preset small-batch --lr 3e-5 --dry-run
      rustcoder train --preset small-batch --model tiny-qwen2 --dataset sample
    """
    from .config import resolve_config

    if resume:
        cfg, run_dir = _resume_target(overrides)
    else:
        cfg, run_dir = resolve_config(preset, config_file, overrides), None
    if dry_run:
        from .train import plan_training

        plan = plan_training(cfg)
        if as_json:
            import json

            click.echo(json.dumps(plan.to_dict(), indent=2, default=str))
        else:
            click.echo(plan.render())
            click.echo("dry run: nothing trained.")
        return
    from .train import train as run_training

    result = run_training(cfg, run_dir=run_dir, resume=resume, log=click.echo)
    m = result.metrics
    click.echo(f"\ndone: {result.run_dir}")
    click.echo(f"  eval loss {m['eval_loss']:.4f}, token accuracy {m['eval_mean_token_accuracy']:.1%}, "
               f"{m['steps']} steps in {m['wall_time_s']:.0f} s")
    click.echo(f"  adapter: {result.adapter_dir}")
    click.echo("  next: rustcoder eval --by-task   |   rustcoder merge && rustcoder serve")


def _resume_target(overrides: dict):
    """(config, run_dir) of the run to resume; typed changes to its config are refused."""
    from . import artifacts
    from .errors import UsageError
    from .train import load_run_config

    output_dir = overrides.get("output_dir") or "runs"
    name = overrides.get("run_name")
    if name:
        run_dir = Path(output_dir) / name
        if not run_dir.is_dir():
            raise UsageError(f"no run {name!r} under {output_dir!r} to resume. "
                             f"Existing runs: {', '.join(p.name for p in artifacts.list_runs(output_dir)) or 'none'}.")
    else:
        unfinished = [p for p in artifacts.list_runs(output_dir)
                      if artifacts.read_json(p / artifacts.MANIFEST).get("status") != "finished"]
        if not unfinished:
            raise UsageError(f"no unfinished run under {output_dir!r} to resume; pass --run-name NAME.")
        run_dir = unfinished[0]
    cfg = load_run_config(run_dir)
    changed = [k for k, v in overrides.items()
               if v is not None and k not in ("output_dir", "run_name") and getattr(cfg, k) != v]
    if changed:
        raise UsageError(f"cannot change {', '.join('--' + k.replace('_', '-') for k in changed)} when resuming "
                         f"{run_dir.name}: a resumed run keeps its config. Start a new run instead.")
    return cfg, run_dir


# ---- presets ------------------------------------------------------------------------------------

@main.group(invoke_without_command=True, context_settings=CONTEXT)
@click.pass_context
def presets(ctx):
    """List the shipped presets (from the research's five experiments)."""
    if ctx.invoked_subcommand is None:
        from .config import load_preset, preset_names

        for name in preset_names():
            p = load_preset(name)
            click.echo(f"{name:<16} lr {p['lr']:<7g} batch {p['batch_size']}x{p['grad_accum']:<3} "
                       f"r {p['lora_r']:<3} epochs {p['epochs']:<3g} {p.get('description', '')}")
        click.echo("\nShow one with `rustcoder presets show NAME`; save it to edit with "
                   "`rustcoder presets show NAME > my.yaml` and pass --config my.yaml.")


@presets.command("show", context_settings=CONTEXT)
@click.argument("name")
def presets_show(name):
    """Print a preset's fully resolved config as YAML (usable as --config)."""
    import yaml

    from .config import load_preset, resolve_config

    description = load_preset(name).get("description", "")
    cfg = resolve_config(name)
    click.echo(f"# preset {name}: {description}")
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())


# ---- runs ---------------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@click.option("--output-dir", default="runs", show_default=True, help="Directory that holds run directories.")
@click.option("--dashboard", is_flag=True, help="Open the Trackio dashboard of the runs' project.")
@click.option("--project", default="rustcoder", show_default=True, help="Trackio project (with --dashboard).")
def runs(output_dir, dashboard, project):
    """List training runs (newest first) and how to watch them in Trackio."""
    from . import artifacts

    found = artifacts.list_runs(output_dir)
    if not found:
        click.echo(f"no runs under {output_dir!r} yet. Start one: rustcoder train --preset small-batch")
    for run in found:
        m = artifacts.read_json(run / artifacts.MANIFEST)
        metrics = m.get("metrics") or {}
        loss = f"eval loss {metrics['eval_loss']:.4f}" if metrics.get("eval_loss") is not None else ""
        click.echo(f"{run.name:<32} {m.get('status', '?'):<12} {m.get('preset') or '':<16} {loss}")
    click.echo(f"\nlive metrics: trackio show --project {project}   (or rustcoder runs --dashboard)")
    if dashboard:
        import subprocess

        sys.exit(subprocess.call([sys.executable, "-m", "trackio.cli", "show", "--project", project]))


if __name__ == "__main__":  # pragma: no cover
    main()
