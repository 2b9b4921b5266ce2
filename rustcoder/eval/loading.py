"""Loading generation backends for an evaluation plan: which backend a target needs, each loaded once and
shared between targets with the same weights."""

from __future__ import annotations

from typing import Callable

from .backends import Backend, EndpointBackend, ModelTarget, ReferenceBackend, api_key_from_env
from .plan import EvalPlan

BackendFactory = Callable[[ModelTarget, EvalPlan], Backend]


def backend_key(target: ModelTarget) -> tuple:
    return (target.kind, target.path, target.revision, target.adapter_dir, target.endpoint)


def default_backend_factory(target: ModelTarget, plan: EvalPlan) -> Backend:
    """The backend a target needs under the plan's settings (loads the model)."""
    cfg = plan.cfg
    if target.kind == "reference":
        return ReferenceBackend()
    if target.kind == "endpoint":
        return EndpointBackend(target.endpoint, api_key=api_key_from_env(cfg.api_key_env),
                               concurrency=cfg.concurrency)
    if plan.backend == "served":
        from .served import ServedBackend

        return ServedBackend(target, cfg, log=getattr(plan, "log", print))
    if plan.backend == "vllm":
        from .backends import VLLMBackend

        return VLLMBackend(target.path, revision=target.revision, adapter_dir=target.adapter_dir,
                           chat_template=target.chat_template, dtype=cfg.dtype, seed=cfg.seed,
                           tensor_parallel_size=cfg.tensor_parallel_size, log=getattr(plan, "log", print))
    from .backends import TransformersBackend

    return TransformersBackend(target.path, revision=target.revision, adapter_dir=target.adapter_dir,
                               chat_template=target.chat_template, dtype=cfg.dtype, batch_size=cfg.batch_size,
                               batch_tokens="auto" if cfg.batch_tokens is None else (cfg.batch_tokens or None),
                               kv_cache=cfg.kv_cache, log=getattr(plan, "log", print))  # the eval's log, not stdout


class Backends:
    """Loads each backend once, shares it between targets with the same weights, frees it when done."""

    def __init__(self, plan: EvalPlan, factory: BackendFactory, log):
        self.plan, self.factory, self.log = plan, factory, log
        self.cache: dict[tuple, Backend] = {}

    def get(self, target: ModelTarget) -> Backend:
        """The backend for a target, loaded on first use."""
        key = backend_key(target)
        if key not in self.cache:
            self.cache[key] = self.factory(target, self.plan)
        return self.cache[key]

    def release_unneeded(self, remaining: list[ModelTarget]) -> None:
        """Close backends that no remaining target shares."""
        needed = {backend_key(t) for t in remaining}
        for key in [k for k in self.cache if k not in needed]:
            self.cache.pop(key).close()

    def close(self) -> None:
        """Close every loaded backend."""
        for b in self.cache.values():
            b.close()
        self.cache.clear()
