"""The generator playground: MixUnlearn alone, again, on a stored run's task, with other settings.

A stored run fixes the task (dataset, forget spec, seed, recipe, evaluation split, device). The
playground takes that :class:`~mixunlearn.experiment.ExperimentConfig` and MixUnlearn overrides,
and:

1. checks the overrides first (the config's own min / max / choices, a ValueError naming the
   field), before any data is loaded or any model touched;
2. loads the data, the original model and Retrain from the model cache -- never retrains a
   cached model; when one is missing it raises :class:`ModelsNotCached` unless
   ``train_missing=True`` -- and keeps them in a small in-process cache, so a second playground
   run on the same task starts at once;
3. runs MixUnlearn alone (progress and cancellation through the callbacks, as every method) and
   scores it on the accuracy metrics only, with the gap to Retrain over those accuracies;
4. :func:`score_attack` adds the membership attacks (ASR, MIA-Efficacy) and the full gap to
   Retrain in a second call, so a page can show the accuracies first.

The generator's probe pairs and λs are seeded from the data seed (``MixUnlearnTrainer``), so a
playground run's snapshots show the same pairs at the same λs as the stored run's own.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .data import UnlearnData, parse_forget_spec
from .datasets import get_info
from .experiment import ExperimentConfig, MethodRecord, prepare_data
from .methods import config_to_dict, get_method, make_config, run_method
from .methods.mixunlearn import generator_health, health_curves
from .metrics import evaluate, gap_to_retrain, metric_set
from .models import MODELS
from .progress import Callback, ProgressEvent, emit
from .training import ModelCache, budget_profile, cache_parts, get_recipe, get_trained
from .utils import resolve_device, seed_everything

PLAYGROUND_METHODS = ("mixunlearn", "mixunlearn_agnostic")
# The generator's settings the playground offers (issue 16), in the order a page shows them.
GENERATOR_FIELDS = ("share_constraint", "lr_generator", "gen_optimizer", "gen_steps", "gen_warmup", "gen_interval",
                    "tau_gen", "tau_mix", "tau_real", "omega", "alpha", "gen_init")
ATTACK_METRICS = ("asr", "mia_efficacy")
MAX_CONTEXTS = 2


class ModelsNotCached(LookupError):
    """The original model or Retrain of the task is not in the model cache (and training was not asked for)."""


# --------------------------------------------------------------------------- validation


def playground_method(cfg: ExperimentConfig, method: str | None = None) -> str:
    """The MixUnlearn entry to run: ``method`` when given, else the one the run has (aware first)."""
    if method is None:
        method = next((m for m in PLAYGROUND_METHODS if m in cfg.methods), PLAYGROUND_METHODS[0])
    if method not in PLAYGROUND_METHODS:
        raise ValueError(f"the playground runs MixUnlearn only ({', '.join(PLAYGROUND_METHODS)}), not {method!r}")
    return method


def check_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any] | None = None, *, method: str | None = None,
                    base: Mapping[str, Any] | None = None) -> tuple[ExperimentConfig, str, Any]:
    """Validate everything before any work: the task (``cfg.resolved()``), the method, the base
    config (the run's own MixUnlearn settings, default ``cfg.params[method]``) and the overrides,
    each against the config's min / max / choices. Returns (resolved config, method, MixUnlearn
    config); raises ValueError naming the field."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(f"overrides must map MixUnlearn field names to values, got {overrides!r}")
    resolved = dataclasses.replace(cfg, params={}).resolved()  # the task alone; params are checked below
    method = playground_method(cfg, method)
    spec = get_method(method)
    kind = parse_forget_spec(resolved.forget).kind
    if kind not in spec.kinds:
        raise ValueError(f"{spec.display} does not support {kind}-level forgetting")
    family = budget_profile(MODELS[resolved.model].builder.family, resolved.recipe)
    if base is None:
        base = (cfg.params or {}).get(method, {})
    known = {f.name for f in dataclasses.fields(spec.config_cls)}
    base = {k: v for k, v in dict(base or {}).items() if k in known}  # a field since removed is ignored
    overrides = dict(overrides or {})
    make_config(method, family, overrides)  # the user's values alone first: the error names their field
    try:
        mcfg = make_config(method, family, base)
    except ValueError as exc:
        raise ValueError(f"the run's own {spec.display} settings are not valid today ({exc}); "
                         "pass base={} to start from the defaults") from None
    mcfg = make_config(method, family, {**base, **overrides})
    return resolved, method, mcfg


# --------------------------------------------------------------------------- the task: data and cached models


@dataclass
class PlaygroundContext:
    """One task's data, original model and Retrain (from the cache), and Retrain's scores."""

    config: ExperimentConfig  # resolved, task fields only
    data: UnlearnData
    original: nn.Module
    retrain: nn.Module
    family: str
    retrain_metrics: dict[str, float]  # accuracies; the attacks are added by score_attack
    load_seconds: float
    trained: tuple[str, ...] = ()  # models trained (not found in the cache) when loading
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def level(self) -> str:
        return self.data.spec.level


_CONTEXTS: collections.OrderedDict[str, PlaygroundContext] = collections.OrderedDict()
_CONTEXTS_LOCK = threading.Lock()


def _task_key(cfg: ExperimentConfig, cache: ModelCache) -> str:
    task = {k: v for k, v in cfg.to_dict().items() if k not in ("methods", "params", "attacks", "download")}
    return json.dumps({**task, "cache": str(cache.root)}, sort_keys=True, default=str)


def _missing(kind: str, data: UnlearnData, model: str, recipe, cache: ModelCache) -> bool:
    wpath, mpath = cache.paths(cache.key(cache_parts(kind, data, model, recipe)))
    return not (wpath.is_file() and mpath.is_file())


def load_context(cfg: ExperimentConfig, *, cache: ModelCache | None = None, callbacks: list[Callback] | None = None,
                 train_missing: bool = False) -> PlaygroundContext:
    """The task of ``cfg`` with its original model and Retrain from the model cache, kept in a
    small in-process cache. Raises :class:`ModelsNotCached` when a model is missing and
    ``train_missing`` is false."""
    cache = cache or ModelCache()
    resolved = dataclasses.replace(cfg, params={}).resolved()
    key = _task_key(resolved, cache)
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is not None:
            _CONTEXTS.move_to_end(key)
            return ctx
    start = time.perf_counter()
    emit(callbacks, ProgressEvent("playground", "load", 0, 1, message=f"loading {resolved.dataset}"))
    device = resolve_device(resolved.device)
    data = prepare_data(resolved, device)
    recipe = get_recipe(resolved.recipe)
    missing = tuple(k for k in ("original", "retrain") if _missing(k, data, resolved.model, recipe, cache))
    if missing and not train_missing:
        what = " and ".join("the original model" if k == "original" else "Retrain" for k in missing)
        raise ModelsNotCached(
            f"{what} for {resolved.dataset} · {resolved.forget} · seed {resolved.seed} (recipe {resolved.recipe}, "
            f"{resolved.eval_split} split) {'is' if len(missing) == 1 else 'are'} not in the model cache at "
            f"{cache.root}. The playground does not train them unless asked to: run the experiment once (Unlearn "
            f"page or `python -m mixunlearn run`), or allow training them here.")
    original = get_trained("original", data, resolved.model, recipe, callbacks, cache)
    retrain = get_trained("retrain", data, resolved.model, recipe, callbacks, cache)
    emit(callbacks, ProgressEvent("playground", "evaluate", 0, 1, message="scoring Retrain"))
    retrain_metrics = evaluate(retrain.model, data, resolved.seed, attacks=False)
    profile = budget_profile(original.model.family, recipe)
    ctx = PlaygroundContext(resolved, data, original.model, retrain.model, profile, retrain_metrics,
                            time.perf_counter() - start, missing)
    with _CONTEXTS_LOCK:
        _CONTEXTS[key] = ctx
        while len(_CONTEXTS) > MAX_CONTEXTS:
            _CONTEXTS.popitem(last=False)
    return ctx


def clear_contexts() -> None:
    with _CONTEXTS_LOCK:
        _CONTEXTS.clear()


# --------------------------------------------------------------------------- one playground run


@dataclass
class PlaygroundResult:
    """What one playground run produced. ``metrics`` holds the accuracies until :func:`score_attack`
    adds the attacks; ``gap_acc`` is the gap to Retrain over the protocol's accuracy metrics only,
    ``gap`` the full gap (None until the attacks are scored)."""

    method: str
    overrides: dict[str, Any]
    config: dict[str, Any]  # the full MixUnlearn config that ran
    snapshots: list[dict[str, Any]]
    curves: dict[str, list[float]]  # health over generator updates, one entry per snapshot
    health: dict[str, Any]  # at the last snapshot
    history: list[dict[str, float]]
    metrics: dict[str, float]
    retrain_metrics: dict[str, float]
    level: str
    gap_acc: float
    seconds: float  # MixUnlearn's own compute
    eval_seconds: float  # the accuracy metrics
    load_seconds: float  # data and cached models (0 when the task was already loaded)
    gap: float | None = None
    attack_seconds: float | None = None
    generator_updates: int = 0
    context: PlaygroundContext | None = field(default=None, repr=False)
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def attacked(self) -> bool:
        return self.gap is not None

    @property
    def last_snapshot(self) -> dict[str, Any] | None:
        return self.snapshots[-1] if self.snapshots else None


def accuracy_keys(level: str) -> tuple[str, ...]:
    """The protocol's metrics without the attack: class (Test_r, Test_f), data (Train_r, Train_f, Test)."""
    return tuple(k for k in metric_set(level) if k not in ATTACK_METRICS)


def accuracy_gap(metrics: Mapping[str, float], retrain: Mapping[str, float], level: str) -> float:
    """Mean |m − m_Retrain| over :func:`accuracy_keys` (the full gap adds the ASR term)."""
    keys = accuracy_keys(level)
    return sum(abs(float(metrics[k]) - float(retrain[k])) for k in keys) / len(keys)


def run_playground(cfg: ExperimentConfig, overrides: Mapping[str, Any] | None = None, *, method: str | None = None,
                   base: Mapping[str, Any] | None = None, callbacks: list[Callback] | None = None,
                   cache: ModelCache | None = None, train_missing: bool = False) -> PlaygroundResult:
    """MixUnlearn alone on the task of ``cfg`` with ``overrides`` on top of ``base`` (the run's own
    MixUnlearn settings; default ``cfg.params[method]``). Validation first; a callback raising
    :class:`~mixunlearn.progress.RunCancelled` stops it. See the module docstring."""
    resolved, method, mcfg = check_overrides(cfg, overrides, method=method, base=base)
    callbacks = list(callbacks or [])
    emit(callbacks, ProgressEvent("playground", "start", 0, 1, message="checked the settings"))
    t0 = time.perf_counter()
    ctx = load_context(resolved, cache=cache, callbacks=callbacks, train_missing=train_missing)
    load_seconds = time.perf_counter() - t0
    seed_everything(resolved.seed)  # as run_experiment does before its methods
    res = run_method(method, ctx.original, ctx.data, mcfg, device=ctx.data.device, callbacks=callbacks)
    emit(callbacks, ProgressEvent("playground", "evaluate", 0, 1, message="scoring the accuracies"))
    t1 = time.perf_counter()
    metrics = evaluate(res.model, ctx.data, resolved.seed, attacks=False)
    eval_seconds = time.perf_counter() - t1
    snaps = list(res.extras.get("snapshots") or [])
    return PlaygroundResult(
        method=method, overrides=dict(overrides or {}), config=res.config, snapshots=snaps, curves=health_curves(snaps),
        health=generator_health(snaps[-1]) if snaps and "h_share_err" in snaps[-1] else {},
        history=list(res.extras.get("history") or []), metrics=metrics, retrain_metrics=dict(ctx.retrain_metrics),
        level=ctx.level, gap_acc=accuracy_gap(metrics, ctx.retrain_metrics, ctx.level), seconds=res.seconds,
        eval_seconds=eval_seconds, load_seconds=load_seconds,
        generator_updates=int(res.extras.get("generator_updates", 0)), context=ctx, model=res.model)


def _retrain_attacks(ctx: PlaygroundContext) -> dict[str, float]:
    with ctx.lock:  # once per task, however many results ask
        if not all(k in ctx.retrain_metrics for k in ATTACK_METRICS):
            ctx.retrain_metrics = evaluate(ctx.retrain, ctx.data, ctx.config.seed, attacks=True)
        return dict(ctx.retrain_metrics)


def score_attack(result: PlaygroundResult) -> PlaygroundResult:
    """Add the membership attacks (ASR, MIA-Efficacy; the same :func:`~mixunlearn.metrics.evaluate`
    as a full run, so the numbers match) to ``result`` and Retrain's, and the full gap to Retrain.
    Changes ``result`` in place and returns it; a second call does nothing."""
    if result.attacked:
        return result
    if result.context is None or result.model is None:
        raise ValueError("this playground result no longer holds its model, so its attack cannot be scored")
    ctx = result.context
    t = time.perf_counter()
    full = evaluate(result.model, ctx.data, ctx.config.seed, attacks=True)
    result.retrain_metrics = _retrain_attacks(ctx)
    result.metrics = full
    result.gap = gap_to_retrain(full, result.retrain_metrics, result.level)
    result.attack_seconds = time.perf_counter() - t
    return result


# --------------------------------------------------------------------------- time estimate, saving


# Seconds per MixUnlearn step (32 pairs, a generator update every 4 steps), by model family and device kind.
# digits (CPU) and the 2-conv CNN (CPU) were measured on the 2-core machine (docs/app.md, "Playground");
# ResNet-18 on CUDA is docs/mixunlearn.md's 43.5 steps/s on an H200; ResNet-18 on a CPU was not measured:
# the number is a guess from the CNN's and the models' sizes. Only an estimate, and said so where shown.
SECONDS_PER_STEP = {("digits", "cpu"): 0.031, ("cnn", "cpu"): 0.11, ("resnet", "cpu"): 1.5,
                    ("digits", "cuda"): 0.025, ("cnn", "cuda"): 0.02, ("resnet", "cuda"): 0.023}
TRAIN_SIZES = {"digits": 1437, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "svhn": 73257}
GENERATOR_STEP_SHARE = 0.4  # a generator update costs about this share of a full step


def estimate_seconds(cfg: ExperimentConfig, overrides: Mapping[str, Any] | None = None, *, method: str | None = None,
                     base: Mapping[str, Any] | None = None) -> float:
    """A rough estimate of one playground run's compute in seconds, from the data set's size, the
    forget spec and the budget (epochs, batch, K, generator steps and warm-up); validates like
    :func:`run_playground` and loads nothing."""
    resolved, _, mcfg = check_overrides(cfg, overrides, method=method, base=base)
    info = get_info(resolved.dataset)
    spec = parse_forget_spec(resolved.forget, info.n_classes)
    n_train = TRAIN_SIZES.get(resolved.dataset, 50000)
    n_forget = max(1, round(n_train / info.n_classes * len(spec.classes) * (spec.fraction if spec.kind != "class"
                                                                              else 1.0)))
    steps = mcfg.epochs * math.ceil(n_forget / min(mcfg.batch_size, n_forget))
    gen_updates = math.ceil(steps / mcfg.gen_interval) * mcfg.gen_steps + mcfg.gen_warmup
    family = MODELS[resolved.model].builder.family
    kind = "cuda" if resolve_device(resolved.device).type == "cuda" else "cpu"
    per_step = SECONDS_PER_STEP.get((family, kind), SECONDS_PER_STEP[("resnet", "cpu")])
    # The measured per-step cost includes one generator update per K steps; extra ones add on.
    extra = max(0, gen_updates - math.ceil(steps / mcfg.gen_interval))
    return per_step * (steps + GENERATOR_STEP_SHARE * extra)


def save_as_run(result: PlaygroundResult, store, *, label: str = "playground") -> str:
    """Store a playground result as a complete run (Retrain + this MixUnlearn; the original for
    reference), with its snapshots, history and the analysis pack, so every page can show it.
    Scores the attacks first when needed. Returns the new run id."""
    from . import analysis
    from .jobs import run_payload

    if result.context is None or result.model is None:
        raise ValueError("this playground result no longer holds its model, so it cannot be saved as a run")
    score_attack(result)
    ctx = result.context
    cfg = ctx.config
    spec = get_method(result.method)
    family_defaults = config_to_dict(make_config(result.method, ctx.family))
    params = {k: v for k, v in result.config.items() if family_defaults.get(k) != v}
    run_cfg = dataclasses.replace(cfg, methods=("retrain", result.method), params={result.method: params}).resolved()
    orig_metrics = evaluate(ctx.original, ctx.data, cfg.seed, attacks=True)
    original = MethodRecord("original", "Original", "aware", "done", orig_metrics, 0.0, cached=True,
                            gap_to_retrain=gap_to_retrain(orig_metrics, result.retrain_metrics, result.level))
    retrain = MethodRecord("retrain", "Retrain", "aware", "done", dict(result.retrain_metrics), 0.0, 0.0,
                           config={"recipe": get_recipe(cfg.recipe).to_dict()}, cached=True)
    extras = {"snapshots": result.snapshots, "history": result.history, "health": result.health,
              "generator_updates": result.generator_updates}
    mine = MethodRecord(result.method, spec.display, spec.labels, "done", dict(result.metrics), result.seconds,
                        result.gap, dict(result.config), extras=extras)
    from .experiment import ExperimentResult

    info = {"level": result.level, "eval_split": ctx.data.eval_split, "playground": {"overrides": result.overrides},
            "n_train": int(len(ctx.data.x_train)), "n_forget": int(len(ctx.data.forget_idx)),
            "n_retain": int(len(ctx.data.retain_idx)), "n_test": int(len(ctx.data.x_test))}
    exp = ExperimentResult(run_cfg, original, {"retrain": retrain, result.method: mine}, info)
    models = {"original": ctx.original, "retrain": ctx.retrain, result.method: result.model}
    pack = analysis.build_pack(models, ctx.data, seed=cfg.seed)
    results, tensors, files = run_payload(exp, pack)
    run_id = store.begin(run_cfg.to_dict(), label=label)
    try:
        store.commit(run_id, results, tensors, files)
    except BaseException as exc:
        try:
            store.finish_unsuccessful(run_id, "failed", str(exc))
        except Exception:  # noqa: BLE001 - the store itself may be the problem; the first error says so
            pass
        raise
    return run_id
