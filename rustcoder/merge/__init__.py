"""Fold a run's LoRA adapter into its base model, and prove the result is the same model.

``merge`` turns a run directory (or an adapter directory) into a standalone model directory that
transformers and vLLM load like any Qwen checkpoint: sharded safetensors in the base model's dtype,
config, generation config whose eos includes ``<|im_end|>``, tokenizer, chat template (in
``chat_template.jinja`` and ``tokenizer_config.json``), a model card and ``merge_report.json``.

Two ways to merge, with equal results tensor for tensor:

* in memory (default): the base is loaded in float32, PEFT merges the adapter, the model is cast to
  the base dtype and saved;
* streaming (``streaming=True``): base safetensors shards are read one tensor at a time and each
  target weight becomes ``W + scale * B @ A`` (float32, cast back), so peak memory is about the
  largest tensor, not the whole model.

``verify_merge`` checks the merged directory against base + adapter (logits within a stated
tolerance, identical greedy generations, finite tensors, tied embeddings consistent with the config,
the same chat template rendering, eos). In memory it runs both models whole ("full"); after a
streaming merge it runs them one decoder layer at a time from the safetensors files and checks every
merged tensor against ``W + scale * B @ A`` ("layerwise"), so verification too needs about one layer
plus the embeddings, not the model. Everything is written into a temporary sibling directory and
renamed into place at the end, so a killed merge never leaves a half-written model at the target.

The package, by job: ``tensors`` (safetensors I/O one tensor at a time), ``sources`` (what a merge reads:
adapter, base, identity), ``plan`` (the adapter as arithmetic), ``writing`` (the merge and its output
files), ``probes`` (probe prompts and whole-model outputs), ``checks`` (exactness and function checks),
``layerwise`` (the one-layer-at-a-time forward), ``verify`` (verify_merge and the reports), ``api``
(merge(), atomic install, newest merge).
"""

from ..rundir import MERGE_REPORT as REPORT
from ..rundir import MERGED_DIR, newest_merged
from .api import MergeResult, clean_stale_temp_dirs, default_output_dir, merge, push_merged
from .checks import DEFAULT_MAX_EFFECT_LOST
from .layerwise import layerwise_probe_outputs
from .plan import MergePlan, check_fit, load_adapter_tensors, plan_merge
from .probes import PROBES, probe_messages, reference_outputs
from .sources import MERGE_DTYPES, adapter_fingerprint, base_identity
from .tensors import iter_tensors, read_safetensors_header, tensor_shapes, weight_files
from .verify import refusal_message, render_report, verify_merge

__all__ = ["DEFAULT_MAX_EFFECT_LOST", "MERGED_DIR", "MERGE_DTYPES", "PROBES", "REPORT", "MergePlan", "MergeResult",
           "adapter_fingerprint", "base_identity", "check_fit", "clean_stale_temp_dirs", "default_output_dir",
           "iter_tensors", "layerwise_probe_outputs", "load_adapter_tensors", "merge", "newest_merged", "plan_merge",
           "probe_messages", "push_merged", "read_safetensors_header", "reference_outputs", "refusal_message",
           "render_report", "tensor_shapes", "verify_merge", "weight_files"]
