"""How long a run will take on this device, before it starts.

Every estimate is built from measurements, none from guesses:

- training the original model and Retrain: a short timed probe (a few optimiser steps of the
  recipe's batch on random images of the dataset's shape, after one warm-up step) times the
  recipe's number of steps; a model already in the cache costs nothing;
- each unlearning method: its measured run time as a multiple of Retrain's training time on the
  same machine in the same run (``resources/method_costs.json``, written by
  ``bench/method_costs.py`` from ``results.json`` files), times the probed Retrain time; a method
  whose ``epochs`` (or ``steps`` / ``iterations``) is overridden is scaled by the override, and an
  override that changes the images a method classifies before its run (``setup_images``: MixUnlearn's
  agnostic ``partner_pool``) adds (or saves) their forward pass at the probed per-image cost;
- scoring a model: a timed forward probe times the images scored, plus the two attacks (timed on
  synthetic scores of the real sizes once per process);
- the app's embedding projection: a fixed cost per projected model, measured (``PROJECTION_SECONDS``).

The estimate is per phase so the app and the CLI can show where the time goes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from torch.nn import functional as F

from .datasets import get_info
from .models import MODELS, build_model
from .training import RECIPES, ModelCache, Recipe, budget_profile, get_recipe, model_parts
from .utils import resolve_device, synchronize

# Seconds to build the analysis pack and UMAP-project one model's embeddings in the app, per
# model: five models took 9.4 s on the digits demo and 13.3 s on Fashion-MNIST class 0
# (analysis.build_pack + analysis.project, 2 cores, load 1-3, numba compile included) -- 1.9-2.7 s
# each, less once the app's warm-up has compiled the kernels; the image-count term below adds the rest.
PROJECTION_SECONDS = 1.5
FALLBACK_RATIO = 0.2  # a method with no measurement on this model and recipe
_SCALED_FIELDS = ("epochs", "steps", "iterations")
# A cap on the iterations (MixUnlearn's max_steps, 0 = none) binds only when the run would be longer:
# a lower cap scales the measured ratio down at most in proportion; a higher cap or none leaves it.
_CAP_FIELDS = ("max_steps",)


@dataclass
class Phase:
    """One phase of a run: what it is, its estimated seconds, and where the number comes from."""

    name: str  # "original", "retrain", a method name, "scoring", "projection"
    label: str
    seconds: float
    source: str  # "probe", "cache", "measured ratio", "fallback"
    cached: bool = False


@dataclass
class Estimate:
    phases: list[Phase] = field(default_factory=list)
    device: str = "cpu"

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def by_name(self) -> dict[str, Phase]:
        return {p.name: p for p in self.phases}

    def text(self) -> str:
        """One line, e.g. ``about 2 min 10 s on cpu: original 25 s, Retrain 22 s (cached 0 s), …``."""
        parts = [f"{p.label} {'cached' if p.cached else format_seconds(p.seconds)}" for p in self.phases]
        return f"about {format_seconds(self.seconds)} on {self.device}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "device": self.device, "phases": [dataclasses.asdict(p) for p in self.phases]}


def format_seconds(seconds: float) -> str:
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    m, r = divmod(int(round(s)), 60)
    if m < 90:
        return f"{m} min {r:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


# --------------------------------------------------------------------------- probes


def probe_train_step(model_name: str, dataset: str, recipe: Recipe, device: str | torch.device = "cpu",
                     steps: int = 3, min_seconds: float = 0.3, max_steps: int = 50) -> float:
    """Seconds per optimiser step of ``recipe`` for ``model_name`` on ``device``, on random images of
    the dataset's shape: two warm-up steps, then chunks of ``steps`` timed steps -- at least three,
    and more until ``min_seconds`` are spent (at most ``max_steps`` steps) -- and the median chunk."""
    if steps < 1:
        raise ValueError(f"a probe needs at least one step, got {steps}")
    dev = resolve_device(str(device))
    info = get_info(dataset)
    model = build_model(model_name, info, seed=0).to(dev)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-4) if recipe.optimizer == "adam" else torch.optim.SGD(
        model.parameters(), 1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(recipe.batch_size, info.channels, info.size, info.size, generator=g).to(dev)
    y = torch.randint(0, info.n_classes, (recipe.batch_size,), generator=g).to(dev)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    step()
    synchronize(dev)
    # Timed in chunks of ``steps`` steps; the median chunk stands for the device, so a passing
    # burst of other work (a page drawing, a background compile) does not set the estimate.
    chunks: list[float] = []
    spent = 0.0
    while len(chunks) < 3 or (spent < min_seconds and len(chunks) * steps < max_steps):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(dev)
        chunks.append((time.perf_counter() - start) / steps)
        spent += chunks[-1] * steps
    chunks.sort()
    return chunks[len(chunks) // 2]


def probe_predict(model_name: str, dataset: str, recipe: Recipe, device: str | torch.device = "cpu",
                  n: int = 1024) -> float:
    """Seconds per image of an eval-mode forward pass (batches as in metrics.predict_logits)."""
    from .metrics import predict_logits

    dev = resolve_device(str(device))
    info = get_info(dataset)
    model = build_model(model_name, info, seed=0).to(dev).eval()
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    x = torch.rand(n, info.channels, info.size, info.size, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        predict_logits(model, x[:64])
        synchronize(dev)
        start = time.perf_counter()
        predict_logits(model, x)
        synchronize(dev)
    return (time.perf_counter() - start) / n


@functools.lru_cache(maxsize=16)
def attack_seconds(n_retain: int, n_forget: int, n_test: int) -> float:
    """Seconds of the two membership attacks of one model (timed once per size and process)."""
    from .metrics import attack_success_rate, mia_efficacy

    g = torch.Generator().manual_seed(0)
    p_train = torch.rand(n_retain + n_forget, 10, generator=g).softmax(1)
    p_test = torch.rand(n_test, 10, generator=g).softmax(1)
    start = time.perf_counter()
    attack_success_rate(p_train[:n_retain], p_train[n_retain:], p_test, 0)
    mia_efficacy(p_train[:n_retain, 0], p_test[:, 0], p_train[n_retain:, 0], 0)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- method costs


@functools.lru_cache(maxsize=1)
def method_costs() -> dict[str, dict[str, float]]:
    """``{"<model>/<recipe>": {method: seconds / Retrain's training seconds}}`` as measured."""
    text = resources.files("mixunlearn").joinpath("resources/method_costs.json").read_text()
    doc = json.loads(text)
    return {k: {m: float(v) for m, v in d.items()} for k, d in doc["ratios"].items()}


def method_ratio(method: str, model: str, recipe: str, overrides: dict[str, Any] | None = None,
                 family: str | None = None) -> tuple[float, str]:
    """(seconds as a multiple of Retrain's training time, where the number comes from)."""
    from .methods import config_to_dict, make_config

    table = method_costs().get(f"{model}/{recipe}", {})
    if method in table:
        ratio, source = table[method], "measured ratio"
    else:
        ratio, source = FALLBACK_RATIO, "fallback"
    if overrides and family:
        base = config_to_dict(make_config(method, family))
        new = config_to_dict(make_config(method, family, overrides))
        for f in _SCALED_FIELDS:
            if f in base and isinstance(base[f], int | float) and base[f] and new[f] != base[f]:
                ratio *= float(new[f]) / float(base[f])
        for f in _CAP_FIELDS:
            if f in base and base[f] and new[f] and new[f] < base[f]:
                ratio *= float(new[f]) / float(base[f])
    return ratio, source


def setup_seconds_delta(method: str, family: str, overrides: dict[str, Any] | None, n_retain: int,
                        per_image: float) -> float:
    """Seconds an override adds (or saves) in the forward pass a method makes before its run (its
    config's ``setup_images``, e.g. MixUnlearn's agnostic partner pool), against the defaults the
    measured ratio was taken with: the difference in images times the probed per-image cost."""
    if not overrides:
        return 0.0
    from .methods import make_config

    extra = (make_config(method, family, overrides).setup_images(n_retain)
             - make_config(method, family).setup_images(n_retain))
    return extra * per_image


# --------------------------------------------------------------------------- the estimate


def _split_sizes(cfg) -> tuple[int, int, int]:
    """(n_train, n_forget, n_test) of the run's split, without loading the images when possible."""
    from .data import make_split
    from .datasets import load_dataset

    ds = load_dataset(cfg.dataset, cfg.data_root, download=False)
    data = make_split(ds, cfg.forget, cfg.seed, eval_split=cfg.eval_split)
    return len(data.x_train), len(data.forget_idx), len(data.x_test)


def _bucket(reuse_seconds: float) -> int:
    """A time bucket: probes are reused within it (0 = a fresh probe every call)."""
    return int(time.time() // reuse_seconds) if reuse_seconds > 0 else time.perf_counter_ns()


@functools.lru_cache(maxsize=64)
def _probe(what: str, model: str, dataset: str, recipe: str, device: str, steps: int, bucket: int) -> float:
    r = get_recipe(recipe)
    if what == "train":
        return probe_train_step(model, dataset, r, device, steps=steps)
    return probe_predict(model, dataset, r, device)


def estimate_experiment(cfg, *, cache: ModelCache | None = None, probe_steps: int = 3, projections: int = 0,
                        sizes: tuple[int, int, int] | None = None, reuse_seconds: float = 0.0,
                        data_hash: str | None = None) -> Estimate:
    """The estimated duration of ``run_experiment(cfg)`` on ``cfg.device``, per phase.

    ``projections``: how many models the app projects afterwards (0 for the CLI). ``sizes``:
    (n_train, n_forget, n_test) when the caller knows them (else the split is made once here).
    ``reuse_seconds``: reuse this process's probes of the same model, recipe and device made within
    that many seconds (the app, which redraws often); 0 probes afresh. ``data_hash``: the task's
    fingerprint (:func:`mixunlearn.datahash.data_hash`) when the caller has the data (else the data
    set is loaded once per process to find it), which the cached models are keyed on.
    Raises ValueError for an invalid config, as ``run_experiment`` would.
    """
    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    recipe = get_recipe(cfg.recipe)
    n_train, n_forget, n_test = sizes or _split_sizes(cfg)
    n_retain = n_train - n_forget
    step = _probe("train", cfg.model, cfg.dataset, recipe.name, str(device), probe_steps, _bucket(reuse_seconds))
    retrain_train = step * recipe.steps(n_retain)
    cache = cache or ModelCache()
    phases: list[Phase] = []
    for kind, n in (("original", n_train), ("retrain", n_retain)):
        cached = _is_cached(kind, cfg, recipe, cache, n_train, data_hash or _task_hash(
            cfg.dataset, cfg.data_root, cfg.forget, cfg.seed, cfg.eval_split))
        phases.append(Phase(kind, {"original": "original", "retrain": "Retrain"}[kind],
                            0.0 if cached else step * recipe.steps(n), "cache" if cached else "probe", cached))
    family = budget_profile(MODELS[cfg.model].builder.family, recipe)
    per_image = _probe("predict", cfg.model, cfg.dataset, recipe.name, str(device), probe_steps, _bucket(reuse_seconds))
    for m in cfg.methods:
        if m == "retrain":
            continue
        ratio, source = method_ratio(m, cfg.model, recipe.name, cfg.params.get(m), family)
        seconds = ratio * retrain_train
        if source == "fallback":
            borrowed = _same_budget_elsewhere(m, cfg, recipe, family, n_retain, probe_steps, reuse_seconds)
            if borrowed is not None:
                seconds, source = borrowed, "measured ratio (another recipe, same budget)"
        # e.g. MixUnlearn's agnostic partner pool: the measured ratio holds the default pool's pass.
        seconds = max(seconds + setup_seconds_delta(m, family, cfg.params.get(m), n_retain, per_image), 0.0)
        phases.append(Phase(m, _display(m), seconds, source))
    n_models = len(cfg.methods) + 1  # every method, Retrain and the original
    score = per_image * (n_train + n_test)
    if cfg.attacks:
        score += attack_seconds(min(n_retain, 5000), n_forget, n_test)
    phases.append(Phase("scoring", f"scoring {n_models} models", n_models * score, "probe"))
    if projections:
        phases.append(Phase("projection", "embeddings", projections * (PROJECTION_SECONDS + per_image * 2000),
                            "measured"))
    return Estimate(phases, str(device))


def _same_budget_elsewhere(method: str, cfg, recipe: Recipe, family: str, n_retain: int, probe_steps: int,
                           reuse_seconds: float) -> float | None:
    """A method's seconds from its measured ratio under another recipe of the same model when its
    budget is the same under both (its run time does not depend on how the original was trained):
    that ratio times the other recipe's Retrain time, probed here. None when there is no such one."""
    from .methods import config_to_dict, make_config

    own = config_to_dict(make_config(method, family, cfg.params.get(method)))
    plain = family.split(":", 1)[0]
    for key, table in method_costs().items():
        model, _, other = key.partition("/")
        if model != cfg.model or other == recipe.name or method not in table or other not in RECIPES:
            continue
        other_family = budget_profile(plain, RECIPES[other])
        if config_to_dict(make_config(method, other_family, cfg.params.get(method))) != own:
            continue
        step = _probe("train", cfg.model, cfg.dataset, other, str(resolve_device(cfg.device)), probe_steps,
                      _bucket(reuse_seconds))
        return table[method] * step * RECIPES[other].steps(n_retain)
    return None


@functools.lru_cache(maxsize=16)
def _task_hash(dataset: str, data_root: str | None, forget: str, seed: int, eval_split: str) -> str | None:
    """The fingerprint of a task's data (loaded once per process), or None when it cannot be loaded."""
    from .data import make_split
    from .datahash import data_hash
    from .datasets import load_dataset

    try:
        ds = load_dataset(dataset, data_root, download=False)
        return data_hash(make_split(ds, forget, seed, eval_split=eval_split))
    except (OSError, ValueError):
        return None


def _is_cached(kind: str, cfg, recipe: Recipe, cache: ModelCache, n_train: int, data_hash: str | None) -> bool:
    """Whether the trained model of ``kind`` is in the cache (by its key; not loaded)."""
    from .data import parse_forget_spec

    if data_hash is None:
        return False
    spec = parse_forget_spec(cfg.forget)
    parts = model_parts(kind, cfg.dataset, str(spec), spec.kind, cfg.seed, cfg.eval_split, n_train, cfg.model, recipe,
                        data_hash)
    wpath, mpath = cache.paths(cache.key(parts))
    return wpath.is_file() and mpath.is_file()


def _display(name: str) -> str:
    from .methods import get_method

    try:
        return get_method(name).display
    except (KeyError, ValueError):
        return name


__all__ = ["Estimate", "Phase", "attack_seconds", "estimate_experiment", "format_seconds",
           "method_costs", "method_ratio", "probe_predict", "probe_train_step"]
