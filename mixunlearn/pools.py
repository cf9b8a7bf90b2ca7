"""Model pools for the strong evaluation (issue 14): N retrained models and N unlearning runs.

- **Retrained pools.** N models trained from scratch on D_r with the task's recipe, one seed each.
  They are cached in ``MIXUNLEARN_HOME/models`` through :class:`~mixunlearn.training.ModelCache`
  (safetensors only, no pickle; an unusable entry is reported, removed and rebuilt), so a pool is
  reused by every method and every later evaluation of the same (data set, forget split, recipe,
  model, evaluation split).
- **Unlearned pools.** N runs of one method, all from the same original model f_D, each with its
  own seed. A method's randomness (batch order, λ draws, noise, teachers) comes from
  ``data.seed`` (see :class:`~mixunlearn.methods._loop.MethodLoop` and the method files), so run
  ``i`` gets ``dataclasses.replace(data, seed=s_i)``: the same split and labels, only the seed
  that drives the method differs. A method that uses no randomness (SSD) gives N identical
  models; the challenge's zero-spread rule then scores it ε = 50 (see ``strong_eval``).

**Seeds.** Pool member ``i`` of stream ``k`` gets seed ``SeedSequence([base_seed, k, i])``'s first
32-bit word, halved to stay below 2**31 (the methods multiply seeds by up to ~8,000 and feed them
to torch, which accepts < 2**64). Seeds depend on ``i`` alone, so a pool of 32 starts with the
pool of 16: growing N reuses what is cached. Streams: ``reference`` (the retrained pool every
method is compared with), ``unlearner`` (Retrain evaluated as if it were an unlearning method:
other seeds, the sanity row) and ``runs`` (the seeds of every method's unlearning runs).

**Cache key.** :func:`~mixunlearn.training.cache_parts` of Retrain at the member's seed, plus a
hash of the split (forget indices and stored labels). ``cache_parts`` alone would not do: for a
data-level or noisy spec, the forget set is drawn with the *task* seed, so a pool member trained
at seed ``s`` on the task's split must not be mistaken for the Retrain of a task built with seed
``s`` (another split).

Progress goes through callbacks: one ``phase="pool"`` event per finished member (``step`` =
members done, ``total`` = N, ``data`` = seed and whether it came from the cache) and a message
when a pool starts and ends; the training or unlearning inside reports as usual.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import UnlearnData
from .models import build_model
from .progress import Callback, ProgressEvent, emit
from .training import ModelCache, Recipe, cache_parts, train_supervised
from .utils import check_seed, device_name, synchronize

POOL_STREAMS = {"reference": 1, "unlearner": 2, "runs": 3}
POOL_SEED_MAX = 2**31 - 1

Measure = Callable[[int, nn.Module], dict[str, Any]]


def pool_seeds(base_seed: int, n: int, stream: str) -> list[int]:
    """``n`` distinct seeds for pool ``stream``, derived from ``base_seed`` (deterministic; the
    first ``k`` seeds of a pool of ``n`` are the seeds of the pool of ``k``)."""
    base_seed = check_seed(base_seed, "base seed")
    if stream not in POOL_STREAMS:
        raise ValueError(f"unknown pool stream {stream!r}; known: {', '.join(POOL_STREAMS)}")
    if n < 0:
        raise ValueError(f"pool size must be non-negative, got {n}")
    seeds: list[int] = []
    i = 0
    while len(seeds) < n:
        word = int(np.random.SeedSequence([base_seed, POOL_STREAMS[stream], i]).generate_state(1)[0])
        s = word >> 1
        if s not in seeds:  # a collision among 2**31 values is rare; skipping keeps the seeds distinct
            seeds.append(s)
        i += 1
    return seeds


def split_hash(data: UnlearnData) -> str:
    """What identifies the task's split beyond the cache parts: forget indices and stored labels."""
    h = hashlib.sha256()
    h.update(data.forget_idx.detach().cpu().to(torch.int64).numpy().tobytes())
    if data.y_train is not None:
        h.update(data.y_train.detach().cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def pool_cache_parts(data: UnlearnData, model_name: str, recipe: Recipe, seed: int) -> dict:
    parts = cache_parts("retrain", dataclasses.replace(data, seed=seed), model_name, recipe)
    parts["pool_split"] = split_hash(data)
    return parts


@dataclass
class PoolMember:
    index: int
    seed: int
    seconds: float  # training (Retrain) or unlearning time; a cached member's recorded time
    cached: bool
    stats: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None  # kept only with keep_models=True


@dataclass
class Pool:
    name: str  # "retrain" (a retrained pool) or a method name
    stream: str
    members: list[PoolMember]
    seconds: float  # wall time of building the pool (training, unlearning and measuring)

    @property
    def seeds(self) -> list[int]:
        return [m.seed for m in self.members]

    @property
    def n_cached(self) -> int:
        return sum(m.cached for m in self.members)

    def stat(self, key: str) -> list[Any]:
        return [m.stats[key] for m in self.members]


def retrained_model(
    data: UnlearnData,
    model_name: str,
    recipe: Recipe,
    seed: int,
    cache: ModelCache,
    callbacks: list[Callback] | None = None,
    source: str = "retrain pool",
) -> tuple[nn.Module, float, bool, str]:
    """One retrained pool member: from the cache when present, else trained on D_r with
    ``recipe`` at ``seed`` and cached. Returns (model in eval mode, seconds, cached, key)."""
    if data.y_train is None:
        raise ValueError("a retrained pool needs the labelled task")
    key = cache.key(pool_cache_parts(data, model_name, recipe, seed))
    model = build_model(model_name, data.info, seed=seed)
    meta, problem = cache.load(key, model)
    if problem:
        emit(callbacks, ProgressEvent(source, "cache", 0, 0, message=problem))
        model = build_model(model_name, data.info, seed=seed)  # a failed load may leave weights behind
    device = data.device
    if meta is not None:
        return model.to(device).eval(), float(meta.get("seconds", 0.0)), True, key
    model = model.to(device)
    synchronize(device)
    start = time.perf_counter()
    train_supervised(model, data.x_train, data.y_train, data.retain_idx, recipe, seed, callbacks, source=source)
    synchronize(device)
    seconds = time.perf_counter() - start
    cache.save(key, model, {"parts": pool_cache_parts(data, model_name, recipe, seed), "seconds": seconds,
                            "device": device_name(device), "created": time.time()})
    return model.eval(), seconds, False, key


def _pool_event(callbacks, source: str, done: int, n: int, message: str = "", **data) -> None:
    emit(callbacks, ProgressEvent(source, "pool", done, n, message=message, data=data))


def retrained_pool(
    data: UnlearnData,
    model_name: str,
    recipe: Recipe,
    n: int,
    base_seed: int,
    *,
    stream: str = "reference",
    cache: ModelCache | None = None,
    callbacks: list[Callback] | None = None,
    measure: Measure | None = None,
    keep_models: bool = False,
) -> Pool:
    """N retrained models (seeds from :func:`pool_seeds`), each measured by ``measure(i, model)``
    right away so that only the measurements need to stay in memory."""
    cache = cache or ModelCache()
    seeds = pool_seeds(base_seed, n, stream)
    source = "retrain" if stream == "reference" else "retrain (as unlearner)"
    _pool_event(callbacks, source, 0, n, f"retrained pool ({stream}): {n} models")
    start = time.perf_counter()
    members = []
    for i, s in enumerate(seeds):
        model, seconds, cached, _ = retrained_model(data, model_name, recipe, s, cache, callbacks,
                                                    source=f"{source} {i + 1}/{n}")
        stats = measure(i, model) if measure else {}
        members.append(PoolMember(i, s, seconds, cached, stats, model if keep_models else None))
        _pool_event(callbacks, source, i + 1, n, seed=s, cached=cached)
    pool = Pool("retrain", stream, members, time.perf_counter() - start)
    _pool_event(callbacks, source, n, n, f"retrained pool ({stream}) ready: {pool.n_cached}/{n} from the cache, "
                f"{pool.seconds:.1f} s")
    return pool


def unlearned_pool(
    method: str,
    original: nn.Module,
    data: UnlearnData,
    n: int,
    base_seed: int,
    *,
    cfg: Any | None = None,
    device: torch.device | str | None = None,
    callbacks: list[Callback] | None = None,
    measure: Measure | None = None,
    keep_models: bool = False,
) -> Pool:
    """N runs of ``method`` from the same ``original``, run ``i`` with the task's seed replaced by
    the ``runs`` stream's seed ``i`` (see the module docstring). Raises what the method raises
    (e.g. :class:`~mixunlearn.progress.NonFiniteLossError`)."""
    from .methods import run_method

    seeds = pool_seeds(base_seed, n, "runs")
    _pool_event(callbacks, method, 0, n, f"unlearned pool: {n} runs of {method}")
    start = time.perf_counter()
    members = []
    for i, s in enumerate(seeds):
        res = run_method(method, original, dataclasses.replace(data, seed=s), cfg, device=device,
                         callbacks=callbacks)
        stats = measure(i, res.model) if measure else {}
        members.append(PoolMember(i, s, res.seconds, False, stats, res.model if keep_models else None))
        _pool_event(callbacks, method, i + 1, n, seed=s, cached=False)
    pool = Pool(method, "runs", members, time.perf_counter() - start)
    _pool_event(callbacks, method, n, n, f"unlearned pool of {method} ready: {pool.seconds:.1f} s")
    return pool
