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

import copy
import dataclasses
import hashlib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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


def _cached_member(data: UnlearnData, model_name: str, recipe: Recipe, seed: int, cache: ModelCache,
                   callbacks: list[Callback] | None, source: str) -> tuple[nn.Module | None, float, str]:
    """(model in eval mode, recorded seconds, key) of a cached pool member; (None, 0, key) when it
    is not cached (an unusable entry is reported, removed and will be rebuilt)."""
    key = cache.key(pool_cache_parts(data, model_name, recipe, seed))
    model = build_model(model_name, data.info, seed=seed)
    meta, problem = cache.load(key, model)
    if problem:
        emit(callbacks, ProgressEvent(source, "cache", 0, 0, message=problem))
    if meta is None:
        return None, 0.0, key
    return model.to(data.device).eval(), float(meta.get("seconds", 0.0)), key


def _save_member(data: UnlearnData, model_name: str, recipe: Recipe, seed: int, cache: ModelCache, key: str,
                 model: nn.Module, seconds: float, batched: int = 1) -> None:
    cache.save(key, model, {"parts": pool_cache_parts(data, model_name, recipe, seed), "seconds": seconds,
                            "device": device_name(data.device), "created": time.time(), "batched": batched})


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
    cached, seconds, key = _cached_member(data, model_name, recipe, seed, cache, callbacks, source)
    if cached is not None:
        return cached, seconds, True, key
    device = data.device
    model = build_model(model_name, data.info, seed=seed).to(device)  # the seeded init, untouched by a failed load
    synchronize(device)
    start = time.perf_counter()
    train_supervised(model, data.x_train, data.y_train, data.retain_idx, recipe, seed, callbacks, source=source)
    synchronize(device)
    seconds = time.perf_counter() - start
    _save_member(data, model_name, recipe, seed, cache, key, model, seconds)
    return model.eval(), seconds, False, key


def _pool_event(callbacks, source: str, done: int, n: int, message: str = "", **data) -> None:
    emit(callbacks, ProgressEvent(source, "pool", done, n, message=message, data=data))


DEFAULT_BATCH = 4  # models trained at once when batched training applies (bench/pool_speed.py)


def pool_batch_size(model_name: str, batch: int | None = None) -> int:
    """How many models of a retrained pool train at once: ``batch`` when given (1 = one at a
    time), else :data:`DEFAULT_BATCH` where batched training applies (:func:`batched_applies`)
    and 1 elsewhere."""
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"pool batch must be a positive integer, got {batch!r}")
        if batch > 1 and not batched_applies(model_name):
            raise ValueError(f"batched pool training applies to the digits CNN only, not to {model_name!r}")
        return batch
    return DEFAULT_BATCH if batched_applies(model_name) else 1


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
    batch: int | None = None,
) -> Pool:
    """N retrained models (seeds from :func:`pool_seeds`), each measured by ``measure(i, model)``
    right away so that only the measurements need to stay in memory. Members missing from the
    cache are trained ``batch`` at a time (:func:`pool_batch_size`; batched: as a stacked
    ensemble, :func:`train_supervised_batched`), cached members are loaded."""
    if data.y_train is None:
        raise ValueError("a retrained pool needs the labelled task")
    cache = cache or ModelCache()
    group = pool_batch_size(model_name, batch)
    seeds = pool_seeds(base_seed, n, stream)
    source = "retrain" if stream == "reference" else "retrain (as unlearner)"
    _pool_event(callbacks, source, 0, n, f"retrained pool ({stream}): {n} models"
                + (f", trained {group} at a time" if group > 1 else ""))
    start = time.perf_counter()
    members: dict[int, PoolMember] = {}

    def done(i: int, model: nn.Module, seconds: float, cached: bool) -> None:
        stats = measure(i, model) if measure else {}
        members[i] = PoolMember(i, seeds[i], seconds, cached, stats, model if keep_models else None)
        _pool_event(callbacks, source, len(members), n, seed=seeds[i], cached=cached)

    if group <= 1:
        for i, s in enumerate(seeds):
            model, seconds, cached, _ = retrained_model(data, model_name, recipe, s, cache, callbacks,
                                                        source=f"{source} {i + 1}/{n}")
            done(i, model, seconds, cached)
    else:
        todo: list[tuple[int, str]] = []
        for i, s in enumerate(seeds):
            model, seconds, key = _cached_member(data, model_name, recipe, s, cache, callbacks, f"{source} {i + 1}/{n}")
            if model is None:
                todo.append((i, key))
            else:
                done(i, model, seconds, True)
        device = data.device
        for g in range(0, len(todo), group):
            chunk = todo[g:g + group]
            idx = [i for i, _ in chunk]
            label = f"{source} {idx[0] + 1}–{idx[-1] + 1}/{n}" if len(idx) > 1 else f"{source} {idx[0] + 1}/{n}"
            inits = [build_model(model_name, data.info, seed=seeds[i]).to(device) for i in idx]
            synchronize(device)
            t0 = time.perf_counter()
            trained = train_supervised_batched(inits, data.x_train, data.y_train, data.retain_idx, recipe,
                                               [seeds[i] for i in idx], callbacks, source=label)
            synchronize(device)
            seconds = (time.perf_counter() - t0) / len(idx)  # each model's share of the group's time
            for (i, key), model in zip(chunk, trained):
                _save_member(data, model_name, recipe, seeds[i], cache, key, model, seconds, batched=len(idx))
            for (i, _), model in zip(chunk, trained):
                done(i, model, seconds, False)
    pool = Pool("retrain", stream, [members[i] for i in range(n)], time.perf_counter() - start)
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


# --------------------------------------------------------------------------- batched training


class StackedDigitsCNN(nn.Module):
    """K :class:`~mixunlearn.models.DigitsCNN` models as one network: every convolution is a
    grouped convolution (group k holds model k's filters), every BatchNorm one BatchNorm over the
    K·C channels (a channel's statistics come from its own model's batch only, so the batch
    statistics and the running-statistics updates are those of K separate models), the linear
    layers batched matrix products. The input is ``[K, B, C, H, W]`` (model k's own batch in row
    k); the output ``[K, B, classes]``. Built from K models and split back into K models
    (:meth:`unstack`), weights, BatchNorm statistics and all."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        from .models import DigitsCNN

        if not models or not all(type(m) is DigitsCNN for m in models):
            raise ValueError("a stacked ensemble is built from DigitsCNN models only")
        first = models[0]
        for m in models[1:]:
            nm, nf = m.normalize, first.normalize
            if not (torch.equal(nm.mean, nf.mean) and torch.equal(nm.std, nf.std)):
                raise ValueError("the stacked models must share their input normalisation")
            for (ka, a), (kb, b) in zip(first.state_dict().items(), m.state_dict().items()):
                if ka != kb or a.shape != b.shape:
                    raise ValueError("the stacked models must have one architecture")
        self.k = k = len(models)
        self.template = copy.deepcopy(first).cpu()  # the architecture to split back into
        self.normalize = copy.deepcopy(first.normalize)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for path in _CONV_PATHS:
            convs = [_get(m, path) for m in models]
            bns = [_get(m, path[:-1] + (path[-1] + 1,)) for m in models]
            c0 = convs[0]
            conv = nn.Conv2d(k * c0.in_channels, k * c0.out_channels, c0.kernel_size, c0.stride, c0.padding,
                             bias=False, groups=k)
            bn = nn.BatchNorm2d(k * c0.out_channels, eps=bns[0].eps, momentum=bns[0].momentum)
            conv, bn = conv.to(c0.weight.dtype), bn.to(c0.weight.dtype)  # float64 models stay float64
            with torch.no_grad():
                conv.weight.copy_(torch.cat([c.weight for c in convs]))
                bn.weight.copy_(torch.cat([b.weight for b in bns]))
                bn.bias.copy_(torch.cat([b.bias for b in bns]))
                bn.running_mean.copy_(torch.cat([b.running_mean for b in bns]))
                bn.running_var.copy_(torch.cat([b.running_var for b in bns]))
                bn.num_batches_tracked.copy_(bns[0].num_batches_tracked)
            self.convs.append(conv)
            self.bns.append(bn)
        self.embed_w = nn.Parameter(torch.stack([m.embed[1].weight.detach() for m in models]).clone())
        self.embed_b = nn.Parameter(torch.stack([m.embed[1].bias.detach() for m in models]).clone())
        self.head_w = nn.Parameter(torch.stack([m.head.weight.detach() for m in models]).clone())
        self.head_b = nn.Parameter(torch.stack([m.head.bias.detach() for m in models]).clone())
        self.to(first.normalize.mean.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        if k != self.k:
            raise ValueError(f"expected inputs for {self.k} models, got {k}")
        h = self.normalize(x.flatten(0, 1)).unflatten(0, (k, b))
        h = h.transpose(0, 1).flatten(1, 2)  # [B, K*C, H, W]: model k's images in channel group k
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            h = F.relu(bn(conv(h)))
            if i in _POOL_AFTER:
                h = F.max_pool2d(h, 2)
        h = h.unflatten(1, (k, -1)).flatten(2).transpose(0, 1)  # [K, B, C*H*W], per model as nn.Flatten
        h = F.relu(torch.baddbmm(self.embed_b[:, None, :], h, self.embed_w.transpose(1, 2)))
        return torch.baddbmm(self.head_b[:, None, :], h, self.head_w.transpose(1, 2))

    def unstack(self) -> list[nn.Module]:
        """The K models, as separate DigitsCNN modules on this ensemble's device, in eval mode."""
        out = []
        device = self.embed_w.device
        for j in range(self.k):
            m = copy.deepcopy(self.template).to(device)
            with torch.no_grad():
                for path, conv, bn in zip(_CONV_PATHS, self.convs, self.bns):
                    c = _get(m, path)
                    n = c.out_channels
                    c.weight.copy_(conv.weight[j * n:(j + 1) * n])
                    mb = _get(m, path[:-1] + (path[-1] + 1,))
                    sl = slice(j * n, (j + 1) * n)
                    mb.weight.copy_(bn.weight[sl])
                    mb.bias.copy_(bn.bias[sl])
                    mb.running_mean.copy_(bn.running_mean[sl])
                    mb.running_var.copy_(bn.running_var[sl])
                    mb.num_batches_tracked.copy_(bn.num_batches_tracked)
                m.embed[1].weight.copy_(self.embed_w[j])
                m.embed[1].bias.copy_(self.embed_b[j])
                m.head.weight.copy_(self.head_w[j])
                m.head.bias.copy_(self.head_b[j])
            out.append(m.eval())
        return out


# (block, conv_bn index, 0 = the Conv2d; the BatchNorm follows at index 1) in DigitsCNN's order.
_CONV_PATHS = (("block1", 0, 0), ("block1", 1, 0), ("block2", 0, 0))
_POOL_AFTER = (1, 2)  # max-pool after the second and the third conv_bn


def _get(model: nn.Module, path: tuple) -> nn.Module:
    m = getattr(model, path[0])
    for i in path[1:]:
        m = m[i]
    return m


def batched_applies(model_name: str) -> bool:
    """Whether pools of ``model_name`` can be trained as a stacked ensemble (the tiny digits CNN)."""
    from .models import MODELS, DigitsCNN

    entry = MODELS.get(model_name)
    return entry is not None and entry.builder is DigitsCNN


def train_supervised_batched(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    recipe: Recipe,
    seeds: Sequence[int],
    callbacks: list[Callback] | None = None,
    source: str = "train",
) -> list[nn.Module]:
    """Train K models at once, model k exactly as ``train_supervised(models[k], x, y, idx,
    recipe, seeds[k])`` would (up to float rounding): its own generator seeded with
    ``seeds[k]`` draws its batch order and augmentation in the same order, the optimiser's update
    is elementwise (so one optimiser over the stacked weights is K optimisers), and the loss is
    the sum of the K mean cross-entropies (model k's gradient is its own loss's). Returns the K
    trained models (new modules, eval mode)."""
    from .data import augment_batch, batch_indices
    from .progress import Reporter, check_finite_weights
    from .training import _scheduler, make_optimizer
    from .utils import device_generator

    if len(models) != len(seeds):
        raise ValueError(f"{len(models)} models but {len(seeds)} seeds")
    device = x.device
    net = StackedDigitsCNN(models).to(device)
    k = net.k
    gens = [device_generator(s, device) for s in seeds]
    opt = make_optimizer(net.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum)
    steps_per_epoch = -(-len(idx) // recipe.batch_size)
    # As train_supervised: a per-step schedule (one-cycle) gets the run's total steps and is stepped
    # after every optimiser step, the others once per epoch.
    takes_total = "total_steps" in inspect.signature(_scheduler).parameters
    sched = _scheduler(opt, recipe, recipe.epochs * steps_per_epoch) if takes_total else _scheduler(opt, recipe)
    per_step = recipe.schedule == "onecycle"
    rep = Reporter(source, callbacks, recipe.epochs * steps_per_epoch, phase="train",
                   log_every=max(1, steps_per_epoch // 4))
    net.train()
    for _ in range(recipe.epochs):
        orders = [batch_indices(idx, recipe.batch_size, g) for g in gens]
        for step in range(steps_per_epoch):
            bs = [o[step] for o in orders]
            xb = torch.stack([augment_batch(x[b], recipe.augment, g) for b, g in zip(bs, gens)])
            yb = torch.stack([y[b] for b in bs])
            logits = net(xb)
            per_model = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(k, -1).mean(1)
            loss = per_model.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if per_step and sched is not None:  # (None: a run too short for one-cycle)
                sched.step()
            rep.step({"loss": per_model.detach()})  # reported as the mean; every model is checked for NaN
        if sched is not None and not per_step:
            sched.step()
    out = net.unstack()
    for j, m in enumerate(out):
        check_finite_weights(m, f"{source} (model {j + 1} of {k})", rep.step_count)
    return out
