"""The training configuration: one typed schema, the presets, and how they combine.

Precedence, lowest to highest: built-in defaults < preset < ``--config FILE`` (YAML) < flags the
user typed. Unknown presets and keys fail with a "did you mean"; impossible values are reported all
at once, each naming the flag that sets it. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, UsageError, did_you_mean

DEFAULT_MODEL = "Qwen/Qwen2-7B-Instruct"
STRANDSET_ID = "Fortytwo-Network/Strandset-Rust-v1"
# The dataset commit the research-era data was read at (README update after the data upload).
STRANDSET_REVISION = "537245ed2de8f3cd65803d0225abe26e3d480f76"
DEFAULT_PRESET = "small-batch"


def config_field(default, help: str, **kw):
    """A dataclass field whose help text is the CLI help of its flag."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


_f = config_field


class ConfigSchema:
    """The validation style every rustcoder config shares (TrainConfig, eval's EvalConfig): ``problems()`` lists
    every impossible value or combination at once, each naming its flag; a field's ``choices`` (its metadata) are
    checked here, the rest by the subclass's ``check_values(bad)``; ``validate()`` raises them in one ConfigError."""

    def check_values(self, bad) -> None:
        """Call ``bad(field_name, message)`` for each impossible value or combination (the subclass's rules)."""

    def problems(self) -> list[str]:
        """Every impossible value or combination, each naming its flag."""
        p: list[str] = []

        def bad(name: str, msg: str) -> None:
            p.append(f"{flag_name(name)}: {msg}")

        for f_ in fields(self):
            choices = f_.metadata.get("choices")
            value = getattr(self, f_.name)
            if choices and value is not None and value not in choices:
                bad(f_.name, f"must be one of {', '.join(choices)}, got {value!r}{did_you_mean(str(value), choices)}")
        self.check_values(bad)
        return p

    def validate(self):
        """Raise ConfigError listing every problem at once; return self when valid."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    check = validate  # eval's name for it

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (the YAML saved beside the outputs)."""
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(ConfigSchema):
    """Every setting of a training run. Field names are the YAML keys; flags are ``--field-name``."""

    # What to train
    model: str = _f(DEFAULT_MODEL, "Base model: a Qwen2/Qwen2.5/Qwen3 hub id, a local directory, or "
                    "the built-in 'tiny-qwen2' / 'tiny-qwen3' (random, offline, for trying the loop).")
    model_revision: str | None = _f(None, "Hub revision (branch, tag or commit) of the base model.")
    dataset: str = _f(STRANDSET_ID, "Training data: a hub dataset id, a local parquet/jsonl/json "
                      "file or directory, or 'sample' (the built-in Strandset-shaped sample).")
    dataset_revision: str | None = _f(STRANDSET_REVISION, "Hub revision of the dataset (pinned by default).")
    num_examples: int | None = _f(None, "Sample this many rows (seed 42) before the eval split; "
                                  "all rows when unset.", flag="-n")
    eval_fraction: float = _f(0.1, "Share of sampled rows held out for eval, stratified by category.")
    categories: list[str] | None = _f(None, "Train only on these task categories (comma-separated).")
    max_bad_fraction: float = _f(0.01, "Stop before training when more than this share of rows is unusable.")
    max_length: int = _f(1024, "Truncate examples to this many tokens (prompt first, answer kept).")

    # Optimisation (the research's knobs)
    epochs: float = _f(1, "Passes over the training rows.")
    lr: float = _f(2e-5, "Peak learning rate.")
    batch_size: int = _f(4, "Examples per device per forward pass.")
    grad_accum: int = _f(4, "Forward passes accumulated per optimizer step (effective batch = "
                         "batch size x grad accum).")
    warmup_ratio: float = _f(0.1, "Share of optimizer steps spent warming the learning rate up from 0.")
    lr_scheduler: str = _f("cosine", "Learning-rate schedule after warmup: cosine, linear or constant.",
                           choices=("cosine", "linear", "constant"))
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: run all epochs).")
    seed: int = _f(42, "Seed for sampling, splitting, adapter init and data order.")

    # LoRA
    lora_r: int = _f(16, "LoRA rank: adapter capacity.")
    lora_alpha: int = _f(32, "LoRA alpha: adapter scaling is alpha / r.")
    lora_dropout: float = _f(0.05, "Dropout on the adapter's input.")
    lora_target_modules: str = _f("all-linear", "Modules that get adapters: 'all-linear' or a "
                                  "comma-separated list (q_proj,k_proj,...).")

    # Forward layout and precision
    forward_layout: str = _f("auto", "How a step's examples are laid out in forwards: 'auto' (padding-free), "
                             "'grouped' (length-grouped steps, padded forwards of similar lengths), "
                             "'padding-free' (flattened forwards, no padding) or 'padded' (the preset's "
                             "micro-batches as they are, TRL's default). Formerly data_path.",
                             choices=("auto", "grouped", "padding-free", "padded"))
    tokens_per_forward: int | None = _f(None, "Token budget of one forward pass: a step's examples are packed into "
                                        "as few forwards as it allows (default: from the device's free memory and "
                                        "the model's size on a GPU, 1024 on CPU). Never changes the step's math.")
    fast_dropout: bool | None = _f(None, "Fast LoRA dropout (16-bit slices of 48-bit random draws; default: on on "
                                   "CPU, where torch's Bernoulli is slow). Formerly fast_paths.")
    dtype: str = _f("auto", "Weights dtype: auto (bf16 on a GPU that has it, float16 on one without, float32 "
                    "on CPU), bfloat16, float16 or float32.", choices=("auto", "bfloat16", "float16", "float32"))
    gradient_checkpointing: bool | None = _f(None, "Trade compute for memory (default: by need, on only when a "
                                             "forward's estimated activations do not fit the device's memory).")

    # Scale-out (data parallel through Accelerate)
    num_processes: int = _f(1, "Data-parallel processes (GPUs, or CPU processes with gloo). Launched through "
                            "`accelerate launch`.")
    keep_effective_batch: bool = _f(True, "With several processes, divide grad accum so the effective batch stays "
                                    "the preset's (batch x accum).")
    launch_config: str | None = _f(None, "Accelerate launch config: ddp, fsdp2, deepspeed-zero2, deepspeed-zero3 "
                                   "(shipped) or a YAML file.")

    # Outputs, logging, checkpoints
    output_dir: str = _f("runs", "Directory that holds run directories.")
    run_name: str | None = _f(None, "Run directory and Trackio run name (default exp-PRESET-SIZE, made unique).")
    project: str = _f("rustcoder", "Trackio project.")
    report_to: str = _f("trackio", "Metrics sink: trackio or none.", choices=("trackio", "none"))
    logging_steps: int = _f(10, "Log train metrics every N optimizer steps.")
    eval_steps: int | None = _f(None, "Evaluate every N steps (default: about 10 times per run).")
    save_steps: int = _f(100, "Checkpoint every N optimizer steps (for --resume).")
    save_total_limit: int = _f(2, "Checkpoints to keep.")
    profile_step: int | None = _f(None, "Profile this optimizer step (1-based) with torch.profiler: a Chrome trace and "
                                  "a summary of where its time went (GPU busy share, kernel launches, host syncs, "
                                  "matmul and attention shares) in the run's profile/ directory.")
    push_to_hub: str | None = _f(None, "Push the adapter and a model card to this hub repo at the end.")

    # Filled by resolution, not by the user
    preset: str | None = field(default=None, metadata={"help": "Preset the values came from.", "internal": True})

    # ---- validation (ConfigSchema.problems checks the choices) ---------------------------------
    def check_values(self, bad) -> None:
        """The training schema's rules (see ConfigSchema.check_values)."""
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", f"must be > 0, got {self.lr}")
        if self.lora_r < 1:
            bad("lora_r", f"must be >= 1, got {self.lora_r}")
        if self.lora_alpha <= 0:
            bad("lora_alpha", f"must be > 0, got {self.lora_alpha}")
        if not (0 <= self.lora_dropout < 1):
            bad("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if not (0 <= self.warmup_ratio <= 1):
            bad("warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio}")
        if self.batch_size < 1:
            bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1:
            bad("grad_accum", f"must be >= 1, got {self.grad_accum}")
        if not self.epochs > 0:
            bad("epochs", f"must be > 0, got {self.epochs}")
        if not (0 < self.eval_fraction < 1):
            bad("eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")
        if not (0 <= self.max_bad_fraction <= 1):
            bad("max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction}")
        if self.num_examples is not None and self.num_examples < 2:
            bad("num_examples", f"must be >= 2 (one train and one eval row), got {self.num_examples}")
        if self.max_length < 16:
            bad("max_length", f"must be >= 16, got {self.max_length}")
        if self.tokens_per_forward is not None and self.tokens_per_forward < 16:
            bad("tokens_per_forward", f"must be >= 16, got {self.tokens_per_forward}")
        if self.max_steps == 0 or self.max_steps < -1:
            bad("max_steps", f"must be -1 (all epochs) or >= 1, got {self.max_steps}")
        if self.weight_decay < 0:
            bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            bad("max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        for name in ("logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.num_processes < 1:
            bad("num_processes", f"must be >= 1, got {self.num_processes}")
        if self.profile_step is not None and self.profile_step < 1:
            bad("profile_step", f"must be >= 1 (optimizer steps count from 1), got {self.profile_step}")
        if self.eval_steps is not None and self.eval_steps < 1:
            bad("eval_steps", f"must be >= 1, got {self.eval_steps}")
        if self.categories is not None:
            from .data.categories import CATEGORIES

            for c in self.categories:
                if c not in CATEGORIES:
                    bad("categories", f"unknown category {c!r}{did_you_mean(c, CATEGORIES)}; "
                        f"choose from {', '.join(CATEGORIES)}")
        if self.run_name is not None and (not self.run_name.strip() or "/" in self.run_name):
            bad("run_name", f"must be a non-empty name without '/', got {self.run_name!r}")

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step, over all processes."""
        return self.batch_size * grad_accum_per_process(self) * self.num_processes


# ---- field helpers ------------------------------------------------------------------------------

def config_fields() -> list[dataclasses.Field]:
    """Fields a user may set (YAML keys and flags)."""
    return [f for f in fields(TrainConfig) if not f.metadata.get("internal")]


def field_names() -> list[str]:
    return [f.name for f in config_fields()]


def flag_name(name: str) -> str:
    """The long flag for a field: lora_r -> --lora-r (num_examples is -n/--num-examples)."""
    return "--" + name.replace("_", "-")


# The names Hugging Face (TrainingArguments, TRL, PEFT), Axolotl and LLaMA-Factory users type, accepted
# as YAML keys and as flags (--learning-rate ...) for the same field.
HF_ALIASES = {
    "learning_rate": "lr", "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "lora_rank": "lora_r", "target_modules": "lora_target_modules", "lr_scheduler_type": "lr_scheduler",
    "max_seq_length": "max_length", "sequence_len": "max_length", "cutoff_len": "max_length",
    "model_name_or_path": "model", "base_model": "model", "dataset_name": "dataset", "max_samples": "num_examples",
    "warmup": "warmup_ratio", "bf16": None, "fp16": None,  # None: no such setting here (see dtype)
}
ALIAS_NOTES = {"bf16": "use dtype: bfloat16", "fp16": "use dtype: float16"}

# Settings renamed to say what they hold: old key -> new key. The old key still works (YAML files, --set values and
# flags in the wild use it), with a RenamedSettingWarning naming the new one; saved run configs are read silently.
RENAMED = {"data_path": "forward_layout", "fast_paths": "fast_dropout"}


class RenamedSettingWarning(FutureWarning):
    """A setting given by its old name (``RENAMED``): it still works, under its new name."""


def current_name(key: str, source: str) -> str:
    """The field a key sets now: KEY itself, or its new name (``RENAMED``) with a RenamedSettingWarning that names
    SOURCE (the file, --set, the command line) and the new key and flag."""
    new = RENAMED.get(key)
    if new is None:
        return key
    warnings.warn(f"{key!r} ({flag_name(key)}) in {source} is deprecated: it is now {new!r} ({flag_name(new)}); "
                  f"rename it, the old name will stop working in a future release", RenamedSettingWarning, stacklevel=3)
    return new


def rename_settings(values: dict[str, Any], source: str) -> dict[str, Any]:
    """VALUES with keys given by an old name (``RENAMED``) under the new one (``current_name``). A None value (a
    flag not typed) never replaces a value; both names given is a ConfigError."""
    out: dict[str, Any] = {k: v for k, v in values.items() if k not in RENAMED}
    for old, v in values.items():
        if old not in RENAMED or v is None:
            continue
        new = current_name(old, source)
        if out.get(new) is not None:
            raise ConfigError([f"{old!r} and {new!r} in {source} both set {new!r}: keep {new!r}"])
        out[new] = v
    return out


def flag_aliases(name: str) -> list[str]:
    """The extra flags of a field (--learning-rate for lr, ...)."""
    return [flag_name(a) for a, target in HF_ALIASES.items() if target == name]


def _suggest(name: str) -> str:
    """' (did you mean X?)' over field names and their aliases, naming the field an alias sets."""
    known = set(field_names()) | {a for a, t in HF_ALIASES.items() if t}
    hint = did_you_mean(name, known)
    if hint:
        close = hint[len(" (did you mean '"):-len("'?)")]
        if close in HF_ALIASES:
            hint = f" (did you mean {close!r}, which sets {HF_ALIASES[close]!r}?)"
    return hint


def apply_aliases(values: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """VALUES with aliased keys renamed to their fields; problems for an alias and its field both set."""
    out, given, problems = {}, {}, []
    for k, v in values.items():
        target = HF_ALIASES[k] if k in HF_ALIASES else current_name(k, source)
        if target is None:
            problems.append(f"{k!r} in {source} is not a rustcoder setting: {ALIAS_NOTES.get(k, 'drop it')}")
        elif target in given:
            problems.append(f"{given[target]!r} and {k!r} in {source} both set {target!r}: keep one")
        else:
            out[target], given[target] = v, k
    return out, problems


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert a YAML or string value to the field's type; raise a message naming the source."""
    f_ = next(f for f in fields(TrainConfig) if f.name == name)
    t = str(f_.type)
    if value is None:
        return None
    try:
        if "list[str]" in t:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if t.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if t.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if t.startswith("float"):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if t.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError([f"{flag_name(name)} ({source}): cannot read {value!r} as {t}"]) from None
    return value


def coerce_field(name: str, value: Any, source: str = "flag") -> Any:
    """A flag's or YAML value converted to the TrainConfig field's type (``"a,b"`` -> ``["a", "b"]``)."""
    return _coerce(name, value, source)


# ---- presets ------------------------------------------------------------------------------------

def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    root = resources.files("rustcoder") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The raw values of a shipped preset (including its 'description')."""
    names = preset_names()
    if name not in names:
        raise UsageError(f"unknown preset {name!r}{did_you_mean(name, names)}. "
                         f"Available: {', '.join(names)} (see `rustcoder presets`).")
    text = (resources.files("rustcoder") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _check_keys(values: dict[str, Any], source: str) -> list[str]:
    known = set(field_names()) | {"description", "preset"}
    return [f"unknown key {k!r} in {source}{_suggest(k)}" for k in values if k not in known]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict of known keys; unknown keys fail with 'did you mean'."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} does not exist. Pass an existing YAML file to --config, "
                         "or copy a preset to start from: `rustcoder presets show small-batch > my.yaml`.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {str(path)!r} must hold a mapping of keys to values, "
                         f"got {type(values).__name__}.")
    values, problems = apply_aliases({str(k).replace("-", "_"): v for k, v in values.items()}, str(path))
    problems += _check_keys(values, str(path))
    if problems:
        raise ConfigError(problems)
    return values


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build a validated TrainConfig: defaults < preset < config file < overrides (typed flags).

    A config file may name a preset (``preset: aggressive-lr``); a preset given explicitly wins.
    Every problem (unknown keys, unreadable or impossible values) is reported in one ConfigError.
    """
    overrides = rename_settings({k: v for k, v in (overrides or {}).items() if v is not None}, "overrides")
    problems = _check_keys(overrides, "overrides")
    file_values = read_config_file(config_file) if config_file else {}
    preset = preset or file_values.get("preset") or DEFAULT_PRESET
    values: dict[str, Any] = {}
    for layer, source in ((load_preset(preset), f"preset {preset}"),
                          (file_values, str(config_file)),
                          (overrides, "command line")):
        for k, v in layer.items():
            if k in ("description", "preset"):
                continue
            if k not in field_names():
                continue
            try:
                values[k] = _coerce(k, v, source)
            except ConfigError as e:
                problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    cfg = TrainConfig(**values, preset=preset)
    return cfg.validate()


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved config (a run's config.yaml) without re-applying presets."""
    known = {f.name for f in fields(TrainConfig)}
    values = {RENAMED.get(k, k): v for k, v in values.items()}  # a run saved before a rename
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


def default_run_name(cfg: TrainConfig) -> str:
    """exp-PRESET-SIZE as in the research (exp-small-batch-10k); 'all' when no -n was given."""
    n = cfg.num_examples
    if n is None:
        size = "all"
    elif n >= 1000 and n % 1000 == 0:
        size = f"{n // 1000}k"
    else:
        size = str(n)
    return f"exp-{cfg.preset or 'custom'}-{size}"


def grad_accum_per_process(cfg: TrainConfig) -> int:
    """Accumulation steps each process runs: the preset's, divided by the processes when keeping the
    effective batch (batch x accum), rounded to the nearest whole number and at least 1 (so the effective
    batch is exact only when the processes divide the accumulation: 4 over 3 processes runs 1 each)."""
    if cfg.num_processes > 1 and cfg.keep_effective_batch:
        return max(1, round(cfg.grad_accum / cfg.num_processes))
    return cfg.grad_accum


def steps_for(num_train_rows: int, cfg: TrainConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) exactly as transformers' Trainer counts them.

    Each process's dataloader yields ceil(rows / (batch * processes)) batches; a partial last
    accumulation still makes an optimizer step; fractional epochs round up; max_steps wins when set.
    """
    batches = math.ceil(num_train_rows / (cfg.batch_size * cfg.num_processes))
    accum = grad_accum_per_process(cfg)
    per_epoch = max(batches // accum + int(batches % accum > 0), 1)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * per_epoch)
    return per_epoch, total
