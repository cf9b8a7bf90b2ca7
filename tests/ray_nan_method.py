"""A throwaway method whose loss is NaN by construction, for the Ray tests (tests/test_ray.py).

Its loss is fine-tuning's cross-entropy on D_r plus ``0/0`` from step ``nan_at`` on: IEEE 754
defines 0/0 as NaN, and NaN + x as NaN, on every CPU, so the method fails at the same step on
every machine, whatever its rounding (a real method driven to divergence, e.g. a huge learning
rate, fails or not depending on how a CPU rounds). The failure then travels through the same code
as a real one: the progress reporter raises NonFiniteLossError, the experiment records the method
as failed with that message.

``register()`` adds it to the registry of the calling process (``unregister()`` removes it: the
Ray tests hold it only while they run, since other tests list every registered method); Ray workers, which do not import
the tests, run it as their ``worker_process_setup_hook`` (``RAY_HOOK``), found through PYTHONPATH
(``ray_env()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NAME = "nan_by_construction"
RAY_HOOK = f"{__name__}.register"
TESTS_DIR = str(Path(__file__).resolve().parent)
ROOT = str(Path(__file__).resolve().parents[1])


def register() -> None:
    """Register the method (idempotent)."""
    import torch
    import torch.nn.functional as F

    from mixunlearn.methods import base
    from mixunlearn.methods._loop import MethodLoop, make_optimizer, optimizer_step

    base._ensure_loaded()
    if NAME in base._REGISTRY:
        return

    @dataclass(frozen=True)
    class NanConfig(base.MethodConfig):
        nan_at: int = base.param(3, "the step (0-based) from which 0/0 is added to the loss", min=0, max=100)
        steps: int = base.param(5, "optimiser steps", min=1, max=100)

    def nan_fn(model, data, cfg, *, device, callbacks):
        loop = MethodLoop(NAME, data, callbacks, cfg.steps, model=model)
        opt = make_optimizer(model.parameters(), "sgd", 0.01)
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        zero = torch.zeros((), device=data.device)
        for step, b in zip(range(cfg.steps), loop.stream(data.retain_idx, 64)):
            loss = F.cross_entropy(model(loop.images(b)), data.y_train[b])
            if step >= cfg.nan_at:
                loss = loss + zero / zero  # NaN by IEEE 754, on every CPU
            optimizer_step(opt, loss, params)
            loop.step({"ce": loss})
        return loop.finish(model)

    base.register_method(NAME, config=NanConfig, labels="aware", display="NaN by construction",
                         summary="fine-tuning whose loss is NaN from step nan_at (tests only)",
                         paper="test")(nan_fn)


def unregister() -> None:
    """Remove the method again (other tests list every registered method)."""
    from mixunlearn.methods import base

    base._REGISTRY.pop(NAME, None)


def ray_env(extra: dict | None = None) -> dict:
    """A runtime_env whose workers register the method at start (the hook runs before a worker
    sees the driver's sys.path: it finds this module and mixunlearn through PYTHONPATH, the
    machine's own PYTHONPATH behind them)."""
    import os

    path = os.pathsep.join(p for p in (TESTS_DIR, ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(extra or {})
    env["env_vars"] = {**env.get("env_vars", {}), "PYTHONPATH": path}
    env["worker_process_setup_hook"] = RAY_HOOK
    return env
