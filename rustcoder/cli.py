"""The ``rustcoder`` command: a thin adapter over the library.

It parses flags, resolves the config, imports the worker lazily and calls one library function.
Importing this module imports no torch, so ``rustcoder --help`` is instant.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import click

from .errors import RustcoderError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _note(line: str) -> None:
    """A side remark (offline, progress) on stderr, so stdout stays what the command prints."""
    click.echo(line, err=True)


def _path_arg(path) -> str:
    from .terminal import path_arg

    return path_arg(path)


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
    from . import terminal

    if debug:
        os.environ["RUSTCODER_DEBUG"] = "1"
    terminal.install()  # no colour codes when piped; Trackio's banner names a command that works


# ---- train --------------------------------------------------------------------------------------

def _field_options(func):
    """One flag per TrainConfig field; default None means 'not typed' (so presets and files show)."""
    from .config import RENAMED, config_fields, flag_aliases, flag_name

    for f in reversed(config_fields()):
        t = str(f.type)
        decls = [flag_name(f.name), *flag_aliases(f.name)]  # aliases: the Hugging Face names (--learning-rate)
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
    for old, new in RENAMED.items():  # the old flags still work, hidden; config.rename_settings says the new name
        t = next(str(f.type) for f in config_fields() if f.name == new)
        decls = [f"{flag_name(old)}/--no-{old.replace('_', '-')}"] if t.startswith("bool") else [flag_name(old)]
        func = click.option(*decls, old, default=None, hidden=True)(func)
    return func


@main.command(context_settings=CONTEXT)
@click.argument("config_arg", required=False, metavar="[CONFIG.yaml]")
@click.option("--preset", default=None, metavar="NAME",
              help="Start from a preset (see `rustcoder presets`). Default: small-batch.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of config values (above the preset, below typed flags).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config, data and step counts; train nothing.")
@click.option("--resume", is_flag=True,
              help="Continue a run from its last complete checkpoint (--run-name, else the newest unfinished run).")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.option("--num-machines", type=int, default=None, help="Multi-node: machines in the job (passed to accelerate).")
@click.option("--machine-rank", type=int, default=None, help="Multi-node: this machine's rank (passed to accelerate).")
@click.option("--main-process-ip", default=None, help="Multi-node: address of machine 0 (passed to accelerate).")
@click.option("--main-process-port", type=int, default=None, help="Multi-node: port on machine 0.")
@_field_options
def train(config_arg, preset, config_file, dry_run, resume, as_json, num_machines, machine_rank, main_process_ip,
          main_process_port, **overrides):
    """Fine-tune a LoRA adapter on Rust tasks (TRL SFT + PEFT).

    CONFIG.yaml (same as --config) is a YAML file of settings, as Axolotl and LLaMA-Factory run them; a
    preset name there works like --preset. Flags and YAML keys also accept the Hugging Face names
    (--learning-rate, --per-device-train-batch-size, --gradient-accumulation-steps, --num-train-epochs,
    --lora-rank, --max-seq-length ...).

    Precedence: defaults < --preset < --config FILE < flags you type. The run directory
    (OUTPUT_DIR/RUN_NAME) receives the adapter, tokenizer, chat template, resolved config, manifest
    and metrics; watch the run live with `rustcoder runs --dashboard`.

    \b
    Examples:
      rustcoder train --preset small-batch -n 10000
      rustcoder train my.yaml --dry-run                  (my.yaml: rustcoder presets show small-batch > my.yaml)
      rustcoder train --preset small-batch --lr 3e-5 --dry-run
      rustcoder train --preset small-batch --model tiny-qwen2 --dataset sample
    """
    from .config import rename_settings, resolve_config

    from .hub import settle_offline

    overrides = rename_settings(overrides, "the command line")
    if config_arg is not None:
        preset, config_file = _config_argument(config_arg, preset, config_file)
    if resume:
        from .rundir import resume_target

        cfg, run_dir = resume_target(overrides)
    else:
        cfg, run_dir = resolve_config(preset, config_file, overrides), None
    settle_offline(log=_note)
    if dry_run:
        from .modeling import check_architecture, load_config
        from .terminal import stdout_to_stderr
        from .train import plan_training

        with stdout_to_stderr() if as_json else nullcontext():
            base_config = load_config(cfg.model, cfg.model_revision)  # a model the real run cannot load fails here
            check_architecture(base_config, cfg.model)  # the dry run says what training says
            plan = plan_training(cfg, base_config=base_config)
        if as_json:
            import json

            click.echo(json.dumps(plan.to_dict(), indent=2, default=str))
        else:
            click.echo(plan.render())
            click.echo("dry run: nothing trained.")
        return
    from .ranks import is_launched, process_rank

    if cfg.report_to == "trackio" and importlib.util.find_spec("trackio") is None:
        from .errors import MissingExtraError

        raise MissingExtraError("Trackio (live metrics, --report-to trackio, the default)",
                                "pip install trackio   (or train without metrics: --report-to none)")
    machines = 1
    if cfg.num_processes > 1 and not is_launched():
        from .launch import machine_count

        machines = machine_count(cfg, num_machines)
    if machines > 1 and not resume:  # every machine must write the one run directory: no per-machine renaming
        from .errors import UsageError

        if not cfg.run_name:
            raise UsageError(f"a run over {machines} machines needs --run-name, the same on every machine, so that "
                             "all of them write one run directory (e.g. --run-name exp-high-capacity-full).")
        run_dir = Path(cfg.output_dir) / cfg.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and not is_launched() and cfg.report_to == "trackio" and machines == 1:
        from .artifacts import unique_run_name
        from .config import default_run_name

        # Trackio appends to a reused run name: keep the name new in the project, not only in output_dir.
        cfg.run_name = unique_run_name(cfg.output_dir, cfg.run_name or default_run_name(cfg), cfg.project)
    if cfg.num_processes > 1 and not is_launched():
        from . import artifacts
        from .launch import launch_training

        machine = {"num_machines": num_machines, "machine_rank": machine_rank,
                   "main_process_ip": main_process_ip, "main_process_port": main_process_port}
        run_dir = launch_training(cfg, run_dir=run_dir, resume=resume, machine=machine, log=click.echo)
        if machine_rank:  # machine 0 holds global rank 0, which writes the run and its metrics
            click.echo(f"\ndone: machine {machine_rank}'s processes finished; machine 0 writes {run_dir}")
            return
        m = artifacts.read_json(run_dir / artifacts.METRICS)
        click.echo(f"\ndone: {run_dir} ({cfg.num_processes} processes)")
        click.echo(f"  eval loss {m['eval_loss']:.4f}, token accuracy {m['eval_mean_token_accuracy']:.1%}, "
                   f"{m['steps']} steps in {m['wall_time_s']:.0f} s")
        return
    from .train import train as run_training

    result = run_training(cfg, run_dir=run_dir, resume=resume, log=click.echo)
    if process_rank()[0] != 0 or os.environ.get("RUSTCODER_LAUNCHED") == "1":
        return  # the launcher prints the summary
    m = result.metrics
    click.echo(f"\ndone: {result.run_dir}")
    click.echo(f"  eval loss {m['eval_loss']:.4f}, token accuracy {m['eval_mean_token_accuracy']:.1%}, "
               f"{m['steps']} steps in {m['wall_time_s']:.0f} s")
    click.echo(f"  adapter: {result.adapter_dir}")
    from .terminal import rustcoder_command

    rc, run = rustcoder_command(), _path_arg(result.run_dir)
    click.echo(f"  next: {rc} eval {run} --by-task\n        {rc} merge {run} && {rc} serve {run}")


def _config_argument(arg: str, preset, config_file):
    """(preset, config_file) for `rustcoder train ARG`: ARG is a YAML file, or else a preset name."""
    from .config import preset_names
    from .errors import UsageError

    if arg in preset_names() and not Path(arg).exists():
        if preset and preset != arg:
            raise UsageError(f"two presets given: {arg!r} and --preset {preset!r}; keep one.")
        return arg, config_file
    if config_file:
        raise UsageError(f"two config files given: {arg!r} and --config {config_file!r}; keep one.")
    if not Path(arg).is_file():
        from .errors import did_you_mean

        raise UsageError(f"config file {arg!r} does not exist{did_you_mean(arg, preset_names())}. Pass a YAML file "
                         "(start from a preset: `rustcoder presets show small-batch > my.yaml`) or a preset name "
                         f"({', '.join(preset_names())}).")
    return preset, arg


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


# ---- sweep and compare ------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@click.option("--study", type=click.Choice(["research"]), default=None,
              help="A named study: 'research' = the five presets on 10,000 rows, as in the research notes.")
@click.option("--presets", "preset_list", default=None, metavar="A,B,...", help="Presets to train, comma-separated.")
@click.option("--grid", multiple=True, metavar="FIELD=V1,V2",
              help="Sweep a field over values (repeatable): --grid lr=1e-5,2e-5 --grid lora_r=16,32.")
@click.option("-n", "--num-examples", type=int, default=None, help="Rows sampled for every run (same sample).")
@click.option("--sweep-dir", default=None, help="Where the runs go (default runs/sweep-STUDY-or-PRESETS).")
@click.option("--project", default=None, help="Trackio project shared by all runs (default rustcoder-SWEEPNAME).")
@click.option("--eval", "with_eval", is_flag=True, help="Evaluate each finished adapter per category (rustcoder eval).")
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="A config value for every run (repeatable): --set model=tiny-qwen2 --set dataset=sample.")
def sweep(study, preset_list, grid, num_examples, sweep_dir, project, with_eval, settings):
    """Train several configurations on the identical sample and split; resumable.

    Finished runs are skipped on a rerun, unfinished ones resume from their last checkpoint, and a
    failed run is recorded while the others go on. Then `rustcoder compare SWEEP_DIR`.

    \b
    Examples:
      rustcoder sweep --study research                       # the research's five runs, 10k rows
      rustcoder sweep --presets small-batch,aggressive-lr -n 5000 --grid lr=2e-5,5e-5
      rustcoder sweep --presets baseline,small-batch --set model=tiny-qwen2 --set dataset=sample
    """
    from .errors import UsageError
    from .hub import settle_offline
    from .sweep import STUDIES, parse_grid, parse_settings, run_sweep

    if study:
        presets = list(STUDIES[study]["presets"])
        num_examples = num_examples or STUDIES[study]["num_examples"]
    elif preset_list:
        presets = [p.strip() for p in preset_list.split(",") if p.strip()]
    else:
        raise UsageError("say what to sweep: --study research or --presets A,B,...")
    common = parse_settings(list(settings))
    settle_offline(log=_note)
    name = study or ("-".join(presets) if len(presets) <= 3 else f"{len(presets)}-presets")
    sweep_dir = sweep_dir or f"runs/sweep-{name}"
    evaluate = None
    if with_eval:
        from .sweep import evaluate_run as evaluate
    entries = run_sweep(sweep_dir, presets, grid=parse_grid(list(grid)), num_examples=num_examples, common=common,
                        project=project, evaluate=evaluate, log=click.echo)
    failed = [e for e in entries if e.status == "failed"]
    click.echo(f"\n{len(entries) - len(failed)} of {len(entries)} runs finished in {sweep_dir}"
               + (f"; failed: {', '.join(e.name for e in failed)}" if failed else ""))
    from .terminal import rustcoder_command

    click.echo(f"compare them: {rustcoder_command()} compare {_path_arg(sweep_dir)}")


@main.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output-dir", default=None, help="Where comparison.md/.json and the PNGs go "
              "(default: the sweep directory, or ./comparison).")
@click.option("--json", "as_json", is_flag=True, help="Print comparison.json on stdout (for scripts).")
def compare(paths, output_dir, as_json):
    """Compare runs (run directories or a sweep directory): table, JSON and plots.

    Best eval loss first, with token accuracy, steps, wall time, trainable parameters, per-category
    eval scores when present, and the research's reference figures where the setup matches.
    """
    from .compare import compare_runs

    result = compare_runs(list(paths), output_dir)
    if as_json:
        click.echo(Path(result["json"]).read_text())
        return
    click.echo(result["terminal"])
    click.echo(f"\nthe full table (per-category scores, research figures): {result['markdown']}\nwritten: "
               + ", ".join(str(result[k]) for k in ("json", "eval_loss_png", "categories_png") if result[k]))


@main.command(context_settings=CONTEXT)
@click.option("--vllm-python", default=None, help="Python of a separate vLLM environment to check.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor(vllm_python, as_json):
    """Check what each command needs: torch build and GPUs, rustc and the sandbox, vLLM, Gradio,
    Trackio, hub login and reachability, disk space; each problem with its exact fix.

    Exits 1 when something required is missing (warnings do not fail).
    """
    from .doctor import MISSING, render, run_checks

    checks = run_checks(vllm_python)
    if as_json:
        import json

        click.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        click.echo(render(checks))
    if any(c.status == MISSING for c in checks):
        sys.exit(1)


@main.command(context_settings=CONTEXT)
@click.option("--output-dir", default="runs", show_default=True, help="Where the demo run (and its merge) goes.")
@click.option("--max-new-tokens", default=48, show_default=True, help="Generation length in eval and the question.")
@click.option("--no-serve", is_flag=True, help="Skip the serving stage.")
def demo(output_dir, max_new_tokens, no_serve):
    """The whole loop offline on CPU in minutes: tiny model, train, eval, merge, serve, ask.

    Builds (once, cached) a tiny RANDOM Qwen2 model, trains the small-batch preset on the built-in
    Strandset sample, evaluates base vs adapter per category (compiling Rust with rustc where
    available), merges and verifies, serves the merged model with the transformers engine, asks it
    one Rust question and stops it. It shows the mechanics, not quality.
    """
    from .demo import run_demo

    run_demo(output_dir, max_new_tokens=max_new_tokens, serve=not no_serve, echo=click.echo)


# ---- runs ---------------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@click.option("--output-dir", default="runs", show_default=True, help="Directory that holds run directories.")
@click.option("--dashboard", is_flag=True, help="Open the Trackio dashboard of the runs' project.")
@click.option("--project", default=None,
              help="Trackio project (with --dashboard). Default: the project the newest run logged to.")
@click.option("--port", default=7861, show_default=True, type=int,
              help="With --dashboard: the first port tried (the next free one is taken); the playground uses 7860.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON (for scripts).")
def runs(output_dir, dashboard, project, port, as_json):
    """List training runs (newest first) and how to watch them in Trackio."""
    from . import artifacts
    from . import rundir
    from .terminal import rustcoder_command

    found = rundir.list_runs(output_dir)
    projects = [artifacts.run_project(run) for run in found]
    project = project or next((p for p in projects if p), None) or "rustcoder"
    if as_json:
        import json

        rows = []
        for run, run_project in zip(found, projects):
            m = rundir.read_manifest(run)
            rows.append({"name": run.name, "path": str(run.resolve()), "status": m.get("status"),
                         "preset": m.get("preset"), "project": run_project, "created_at": m.get("created_at"),
                         "metrics": m.get("metrics") or {}})
        click.echo(json.dumps(rows, indent=2))
    else:
        if not found:
            click.echo(f"no runs under {output_dir!r} yet. Start one: {rustcoder_command()} train --preset small-batch")
        for run in found:
            m = rundir.read_manifest(run)
            metrics = m.get("metrics") or {}
            loss = f"eval loss {metrics['eval_loss']:.4f}" if metrics.get("eval_loss") is not None else ""
            click.echo(f"{run.name:<32} {m.get('status', '?'):<12} {m.get('preset') or '':<16} {loss}")
        others = sorted({p for p in projects if p and p != project})
        click.echo(f"\nlive metrics: {rustcoder_command()} runs --output-dir {_path_arg(output_dir)} --dashboard   "
                   f"(Trackio project {project}"
                   + (f"; others here: {', '.join(others)}, pick with --project" if others else "") + ")")
    if dashboard:
        from .dashboard import open_dashboard

        sys.exit(open_dashboard(project, port))


# ---- merge --------------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--output-dir", default=None, metavar="DIR", help="Where the merged model goes. Default: RUN_DIR/merged.")
@click.option("--base", default=None, metavar="ID_OR_DIR",
              help="Base model to merge into (hub id or directory). Default: the one the run recorded.")
@click.option("--force", is_flag=True, help="Replace an existing merged model at the output directory.")
@click.option("--no-verify", is_flag=True, help="Skip checking the merged model against base + adapter.")
@click.option("--streaming", is_flag=True,
              help="Merge shard by shard from the safetensors files (merge memory: about one tensor; its verification runs layer by layer: about one decoder layer plus the embeddings).")
@click.option("--push-to-hub", default=None, metavar="REPO", help="Upload the merged model to this hub repo.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
              help="Dtype of the merged weights (auto: the base's). float32 keeps an adapter whose update is "
                   "below bf16's resolution, at twice the size.")
@click.option("--max-effect-lost", default=0.10, show_default=True, type=click.FloatRange(0, 1), metavar="SHARE",
              help="Refuse the merge when rounding to --dtype loses more than this share of the adapter's effect "
                   "on the probe logits (0.1 = 10%).")
@click.option("--verify-device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
              help="Where the verification's forwards run. auto: a CUDA GPU when present and its free memory "
                   "holds one decoder layer and the embeddings in float32 (verified layer by layer there, for "
                   "in-memory merges too), else the CPU.")
@click.option("--runs-dir", default="runs", show_default=True, help="Where to find the newest run when RUN_DIR is omitted.")
def merge(run_dir, output_dir, base, force, no_verify, streaming, push_to_hub, dtype, max_effect_lost, verify_device,
          runs_dir):
    """Fold a run's LoRA adapter into its base model and prove it is the same model.

    Writes a standalone model (sharded safetensors in --dtype, config, generation config with
    <|im_end|> as eos, tokenizer, chat template, model card, merge_report.json) that transformers
    and vLLM load like any Qwen checkpoint. Verification has two layers: exactness (every merged
    tensor is the float32 merge rounded once to --dtype, bit for bit) and function (on Rust probe
    prompts the merged model computes what that rounded merge computes, and keeps at least
    1 - --max-effect-lost of the adapter's effect on the logits). Without RUN_DIR, merges the
    newest finished run under --runs-dir. Merging the same adapter again is a no-op.

    \b
    Examples:
      rustcoder merge                                   newest run -> runs/NAME/merged
      rustcoder merge runs/exp-small-batch-10k --streaming
      rustcoder merge runs/exp-small-batch-10k --dtype float32    a short run's adapter, kept whole
      rustcoder merge runs/exp-small-batch-10k --base ./Qwen2.5-7B-Instruct --output-dir out/merged
    """
    from . import rundir
    from .hub import settle_offline
    from .merge import merge as run_merge
    from .merge import render_report
    from .terminal import rustcoder_command

    if run_dir is None:
        run_dir = rundir.newest_run(runs_dir)
        click.echo(f"merging the newest finished run: {run_dir}")
    run_dir = rundir.resolve_name(run_dir, runs_dir, hub_ids=False)
    settle_offline(log=_note)  # the base model may be a hub id
    result = run_merge(run_dir, output_dir=output_dir, base=base, force=force, verify=not no_verify,
                       streaming=streaming, push_to_hub=push_to_hub, dtype=dtype, max_effect_lost=max_effect_lost,
                       verify_device=verify_device, log=click.echo)
    if not result.already_merged:
        click.echo(render_report(result.report))
    click.echo(f"  next: {rustcoder_command()} serve {_path_arg(result.merged_dir)}")


# ---- serve / playground -------------------------------------------------------------------------

def _playground_auth(username, password):
    from .errors import UsageError

    if bool(username) != bool(password):
        raise UsageError("--username and --password go together (the password may come from "
                         "RUSTCODER_PLAYGROUND_PASSWORD).")
    return (username, password) if username else None


def _serve_options(func):
    """One flag per ServeOptions field (rustcoder.serve.options): the options are described once, there."""
    from .serve.options import option_fields

    for f in reversed(option_fields()):
        meta, flag, t = f.metadata, "--" + f.name.replace("_", "-"), str(f.type)
        kw = {"help": meta.get("help", ""), "default": f.default, "show_default": bool(meta.get("show_default"))}
        if meta.get("envvar"):
            kw.update(envvar=meta["envvar"], show_envvar=True)
        if t == "bool":
            func = click.option(flag, f.name, is_flag=True, **kw)(func)
            continue
        if meta.get("choices"):
            kw["type"] = click.Choice(meta["choices"])
        elif t.startswith("int"):
            kw["type"] = int
        elif t.startswith("float"):
            kw["type"] = float
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        func = click.option(flag, f.name, **kw)(func)
    return func


@main.command(context_settings=CONTEXT)
@click.argument("model_dir", required=False)
@_serve_options
def serve(model_dir, **options):
    """Serve the fine-tuned model behind an OpenAI-compatible API (vLLM or transformers).

    MODEL_DIR is a merged model (default: the newest RUN/merged under --runs-dir), a merged run
    directory, or a hub id. With --adapter, serves the base model with the adapter: vLLM loads it as
    a LoRA module (max LoRA rank from the adapter's r) and serves the base too, under its own name.
    Waits until the engine is healthy, then prints the base URL, the model name and a curl line.
    Ctrl-C (or SIGTERM) stops every process it started.

    \b
    Examples:
      rustcoder merge && rustcoder serve --playground
      rustcoder serve runs/exp-small/merged --port 8001 --max-model-len 4096
      rustcoder serve --adapter runs/exp-small --engine vllm --vllm-python .venv-vllm/bin/python
      RUSTCODER_API_KEY=... rustcoder serve --host 0.0.0.0
    """
    from .hub import settle_offline
    from .rundir import resolve_name
    from .serve import serve as run_serve
    from .serve.options import ServeOptions

    model_dir = resolve_name(model_dir, options["runs_dir"])
    if options.get("adapter"):
        options["adapter"] = resolve_name(options["adapter"], options["runs_dir"], hub_ids=False)
    settle_offline(log=_note)
    result = run_serve(model_dir, **ServeOptions(**options).serve_kwargs(), log=click.echo)
    if result.stopped_by == "signal":
        sys.exit(0)


@main.command(context_settings=CONTEXT)
@click.option("--endpoint", default="http://127.0.0.1:8000/v1", show_default=True, metavar="URL",
              help="OpenAI-compatible base URL (e.g. from `rustcoder serve`).")
@click.option("--compare", default=None, metavar="URL",
              help="A second endpoint: every prompt goes to both, side by side (e.g. base vs fine-tuned).")
@click.option("--model", default=None, help="Model on --endpoint. Default: the first it lists.")
@click.option("--compare-model", default=None, help="Model on --compare. Default: one other than --model.")
@click.option("--api-key", default=None, metavar="KEY", envvar="RUSTCODER_API_KEY", show_envvar=True,
              help="API key of --endpoint.")
@click.option("--compare-api-key", default=None, metavar="KEY", help="API key of --compare. Default: --api-key.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback requires --username/--password.")
@click.option("--port", default=7860, show_default=True, type=int)
@click.option("--username", default=None, help="Require this login (with --password).")
@click.option("--password", default=None, envvar="RUSTCODER_PLAYGROUND_PASSWORD", show_envvar=True,
              help="Playground password.")
@click.option("--share", is_flag=True, help="Publish a public Gradio share link (needs --username/--password).")
def playground(endpoint, compare, model, compare_model, api_key, compare_api_key, host, port, username, password,
               share):
    """Open the playground: chat with a served model and check its Rust with rustc.

    Streaming answers with Rust highlighting, sampling controls, and a task picker that applies the
    system prompt each Rust task category was trained with. "Check with rustc" compiles the answer's
    Rust in the evaluation sandbox and shows the diagnostics. With --compare, the same prompt goes to
    two endpoints (or two models of one endpoint) side by side. Talks to the engines only through
    the OpenAI API.

    \b
    Examples:
      rustcoder playground                                   # after `rustcoder serve`
      rustcoder playground --endpoint http://127.0.0.1:8001/v1 --compare http://127.0.0.1:8002/v1
    """
    from .playground import launch_playground

    auth = _playground_auth(username, password)
    click.echo(f"playground on http://{host}:{port}/ for {endpoint}" + (f" vs {compare}" if compare else "")
               + "   (Ctrl-C stops it)")
    launch_playground(endpoint, compare, api_key=api_key, compare_api_key=compare_api_key, model=model,
                      compare_model=compare_model, host=host, port=port, auth=auth, share=share, block=True)


# ---- eval ---------------------------------------------------------------------------------------

def _eval_options(func):
    """One flag per EvalConfig field (MODEL is the argument); None means 'not typed'."""
    from .eval.config import config_fields

    for f in reversed(config_fields()):
        if f.name == "model":
            continue
        t, flag = str(f.type), "--" + f.name.replace("_", "-")
        kw = {"help": f.metadata.get("help", ""), "show_default": False}
        if f.default not in (None, False) and not isinstance(f.default, bool) and "default" not in kw["help"]:
            kw["help"] += f" [default: {f.default}]"
        if t == "bool":
            func = click.option(flag, f.name, is_flag=True, default=False, **kw)(func)
            continue
        if t.startswith("bool"):
            func = click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, **kw)(func)
            continue
        kw["default"] = None
        if f.metadata.get("choices"):
            kw["type"] = click.Choice(f.metadata["choices"])
        elif "list[str]" in t:
            kw["metavar"] = "A,B"
        elif t.startswith("int"):
            kw["type"] = int
        elif t.startswith("float"):
            kw["type"] = float
        func = click.option(flag, f.name, **kw)(func)
    return func


@main.command("eval", context_settings=CONTEXT)
@click.argument("model", required=False)
@click.option("--by-task", is_flag=True, help="Print the scores per task category (report.md always has them).")
@click.option("--json", "as_json", is_flag=True,
              help="Print metrics.json (with its path as eval_dir) on stdout for scripts; progress goes to stderr.")
@_eval_options
def eval_cmd(model, by_task, as_json, **flags):
    """Prove the adapter helps: score a model on held-out Rust tasks, per category, with rustc.

    MODEL is a run directory (base + adapter from its manifest), a merged or adapter directory, a hub
    id, or with --endpoint the served model name. Without MODEL: the newest finished run under
    --runs-dir. Default data: the held-out Strandset test split for a run trained on the hub
    dataset, the built-in test sample for a run trained on 'sample'. Rows that were trained on
    (train_ids.txt) are never scored. Code answers are compiled and tested in rustcoder's sandbox;
    names are exact-matched; prose is scored with chrF (optionally an LLM judge).

    Stages write RUN_DIR/eval/NAME/ (or ./evals-out/MODEL/NAME): samples.jsonl, executions.jsonl,
    scores.jsonl, metrics.json, report.md and scores.png. A rerun resumes where it stopped.

    \b
    Examples:
      rustcoder eval --by-task                          newest run on its held-out tasks
      rustcoder eval runs/exp-small-batch-10k --by-task --compare-base
      rustcoder eval --benchmark humaneval-rust --samples 10 --temperature 0.8
      rustcoder eval --oracle                           check the harness on HumanEval-Rust
      rustcoder eval rust --endpoint http://127.0.0.1:8000 --base-model Qwen/Qwen2-7B-Instruct --compare-base
      rustcoder eval --predictions answers.jsonl --dataset sample
    """
    from .eval import EvalConfig, evaluate
    from .eval.config import tiny_model_defaults
    from .hub import settle_offline
    from .rundir import resolve_name
    from .terminal import stdout_to_stderr

    values = {k: v for k, v in flags.items() if v is not None}
    if isinstance(values.get("categories"), str):
        values["categories"] = [c.strip() for c in values["categories"].split(",") if c.strip()]
    cfg = EvalConfig(model=model, **values)
    with stdout_to_stderr() if as_json else nullcontext():  # --json: stdout carries the JSON alone
        if not (cfg.endpoint or cfg.oracle):  # with --endpoint, MODEL is the name the server gives it
            cfg.model = resolve_name(cfg.model, cfg.runs_dir)  # before any data is read or directory written
            settle_offline(log=_note)
        note = tiny_model_defaults(cfg)
        if note:
            _note(note)
        result = evaluate(cfg, log=_note)  # progress on stderr, a line per stage; the results on stdout
    m = result.metrics
    if as_json:
        import json

        click.echo(json.dumps({**m, "eval_dir": str(result.eval_dir), "report": str(result.report_path)},
                              indent=2, default=str))
        oracle = m.get("oracle")
        sys.exit(1 if oracle and oracle["unexpected"] else 0)
    click.echo("")
    click.echo(result.table(by_task=by_task))
    overlap = m["data"]["overlap"]
    if overlap["excluded"]:
        click.echo(f"excluded {overlap['excluded']} eval row(s) found in the training set ({overlap['checked_against']})")
    if m["data"]["invalid_tasks"] or m["data"]["excluded_tasks"]:
        click.echo(f"not scored: {len(m['data']['invalid_tasks'])} unusable and {len(m['data']['excluded_tasks'])} "
                   "excluded benchmark task(s) (listed in report.md)")
    click.echo(f"\nreport: {result.report_path}\nmetrics: {result.eval_dir / 'metrics.json'}"
               + (f"\nchart: {result.plot_path}" if result.plot_path else ""))
    oracle = m.get("oracle")
    if oracle:
        click.echo(f"oracle: {oracle['pass']}/{oracle['total']} pass; scorable tasks {oracle['scorable_pass']}/"
                   f"{oracle['scorable']}; {oracle['unexpected']} unexpected failure(s)")
        for f in oracle["failures"]:
            if not f["invalid"]:
                click.echo(f"  {f['id']}: {f['status']}" + (f" ({f['reason']})" if f["reason"] else f" {f['evidence']}"))
        if oracle["unexpected"]:
            sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
