"""Hyper-parameter tuning of any registered method with Optuna, on the validation split only.

``python -m mixunlearn tune --dataset D --forget F --method M --trials N --seeds S --out OUT``

- **Data.** Every seed's split is built with ``eval_split="val"`` (a stratified 10 % of D held out
  and scored in the test split's place, EVALUATION.md §1): the test split is never scored here.
- **Objective.** The tables' gap to Retrain (:func:`mixunlearn.metrics.gap_to_retrain`, the
  function ``bench`` tabulates), averaged over the tuning seeds. The original model and Retrain
  of each seed are trained once (or read from the model cache) and reused by every trial.
- **Search space.** From the config fields' declared ranges (:func:`search_space`): a field with
  ``tune=False`` is left out, ``tune_range=(lo, hi)`` narrows it; otherwise the range is derived
  from the field's default for the model family and recipe (budgets, batch sizes and learning
  rates within a factor of the shipped value, see :func:`auto_range`).
- **Trial 0** is the shipped defaults (``study.enqueue_trial``), so the tuned setting is never
  worse than the shipped one on validation.
- **Time.** A trial slower than ``max_time_ratio`` (0.3) × a Retrain of the same process is
  infeasible: its ``time_ratio`` user attribute minus the cap is the trial's Optuna constraint
  (``Trial.set_constraint``, which Optuna 5 uses in place of the sampler's deprecated
  ``constraints_func``; TPE ranks infeasible trials below every feasible one). Retrain's time is
  measured in the process that runs the trials: a timed slice of it (whole epochs of the real
  training loop on D_r, scaled to the recipe's epochs; :func:`retrain_seconds_here`), or on a GPU
  Retrain's own training when it ran there. On a CPU both sides count the process's CPU seconds
  (:func:`clock_for`), so another process's load does not move the ratio; on a GPU the wall clock.
  A trial other than trial 0 is stopped as soon as it can no longer
  meet the cap (its method time summed over the seeds passes the cap × Retrain's summed): it is
  stored as *pruned* with the constraint it had reached (a lower bound) and counts as a trial.
  The outcome is the one a full run would give (infeasible); only the time is saved.
- **Failures.** A trial that raises (NaN loss, a bad combination, anything) is stored as failed
  with its message; the study goes on.
- **Resume.** The study lives in ``OUT/study.db`` (SQLite) or ``storage``; running the same
  command again continues it; ``trials`` is the total.
- **Output.** ``OUT/best.json``: method, dataset, forget, recipe, params, gap, trials, failed, and
  the measured per-trial cost as a multiple of the same process's Retrain.

The library part never imports Ray; :mod:`mixunlearn.tune_ray` runs trials as Ray tasks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .progress import RunCancelled
from .utils import atomic_write_text

MAX_TIME_RATIO = 0.3  # a trial slower than this × Retrain (same process) is infeasible
STUDY_FILE = "study.db"
BEST_FILE = "best.json"
# Field names that hold a training budget (more = slower), and batch sizes (searched on a log scale).
_BUDGET_WORDS = ("epochs", "steps", "iterations", "copies")
_BATCH_WORDS = ("batch", "size")


def field_role(name: str, kind: str) -> str | None:
    """"budget" for an int field that holds a training budget, "batch" for an int batch size, else
    None: how auto_range derives a range, and which end of it is the cheap one."""
    words = name.lower().split("_")
    if kind == "int" and any(w in words for w in _BUDGET_WORDS):
        return "budget"
    if kind == "int" and any(w in words for w in _BATCH_WORDS):
        return "batch"
    return None


# --------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Dim:
    """One tuned field: ``kind`` "float" | "int" | "bool" | "cat"; ``low``/``high``/``log`` for
    numbers, ``choices`` for categories."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    default: Any = None

    def describe(self) -> str:
        if self.kind == "bool":
            return "true / false"
        if self.kind == "cat":
            return " / ".join(str(c) for c in self.choices)
        fmt = (lambda v: f"{v:g}") if self.kind == "float" else (lambda v: str(int(v)))
        return f"{fmt(self.low)} .. {fmt(self.high)}" + (" (log)" if self.log else "")


def _base_type(t: Any) -> Any:
    if typing.get_origin(t) is typing.Literal:
        return type(typing.get_args(t)[0])
    return t


def _clip(v: float, lo: float | None, hi: float | None) -> float:
    if lo is not None:
        v = max(v, lo)
    if hi is not None:
        v = min(v, hi)
    return v


def auto_range(name: str, kind: str, default: float, lo: float | None, hi: float | None,
               log: bool) -> tuple[float, float, bool] | None:
    """A range around the shipped ``default`` within ``lo..hi``, or None (not tuned): a field
    whose default is 0 or negative is a switch or a sentinel ("0 = none") and is left alone.

    - budgets (epochs, steps, iterations, copies): default/3 .. 2 × default;
    - batch sizes: default/4 .. 4 × default, log scale;
    - learning rates and declared-log fields, and floats declared over 2+ decades: default/10 ..
      10 × default, log scale;
    - other numbers: default/2 .. 2 × default.
    Every range holds the default (trial 0 is the shipped setting)."""
    if default is None or default <= 0:
        return None
    words = name.lower().split("_")
    role = field_role(name, kind)
    if role == "budget":
        low, high, use_log = math.ceil(default / 3), 2 * default, False
    elif role == "batch":
        low, high, use_log = max(1, default // 4), 4 * default, True
    elif kind == "float" and (log or "lr" in words or (lo is not None and lo > 0 and hi is not None
                                                         and hi / lo >= 100)):
        low, high, use_log = default / 10, default * 10, True
    elif kind == "int":
        low, high, use_log = max(1, default // 2), 2 * default, False
    else:
        low, high, use_log = default / 2, default * 2, False
    low, high = _clip(low, lo, hi), _clip(high, lo, hi)
    if use_log and low <= 0:
        use_log = False
    if kind == "int":
        low, high = int(math.ceil(low)), int(math.floor(high))
    low, high = min(low, default), max(high, default)
    if high <= low:
        return None
    return low, high, use_log


def search_space(method: str, family: str | None) -> list[Dim]:
    """The tuned fields of ``method`` for the model family / budget profile ``family`` (e.g.
    "cnn:fast"), in the config's field order."""
    from .methods import config_to_dict, get_method, make_config
    from .methods.base import for_family

    spec = get_method(method)
    if method == "retrain":
        raise ValueError("Retrain is the yardstick, not a method to tune; choose another --method")
    defaults = config_to_dict(make_config(method, family))
    dims: list[Dim] = []
    hints = typing.get_type_hints(spec.config_cls)
    per_family = for_family(spec.config_cls.TUNE_RANGES, family)
    for f in dataclasses.fields(spec.config_cls):
        meta = f.metadata
        if not meta.get("tune", True):
            continue
        t = _base_type(hints.get(f.name, f.type))
        d = defaults[f.name]
        lo, hi, log, choices = meta.get("min"), meta.get("max"), bool(meta.get("log")), meta.get("choices")
        given = per_family.get(f.name, meta.get("tune_range"))
        if t is bool:
            dims.append(Dim(f.name, "bool", choices=(False, True), default=d))
        elif choices:
            dims.append(Dim(f.name, "cat", choices=tuple(choices), default=d))
        elif t in (int, float):
            kind = "int" if t is int else "float"
            if given is not None:
                low, high = given
                if (lo is not None and low < lo) or (hi is not None and high > hi) or not low <= d <= high:
                    raise ValueError(f"{spec.config_cls.__name__}.{f.name}: tune_range {given} must lie in "
                                     f"{lo}..{hi} and hold the default {d}")
                rng = (low, high, log and low > 0)
            else:
                rng = auto_range(f.name, kind, d, lo, hi, log)
            if rng is None:
                continue
            dims.append(Dim(f.name, kind, rng[0], rng[1], rng[2], default=d))
    return dims


def suggest(trial, dims: Sequence[Dim]) -> dict[str, Any]:
    """The params of ``trial`` (an Optuna trial) over ``dims``."""
    out: dict[str, Any] = {}
    for d in dims:
        if d.kind == "float":
            out[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        elif d.kind == "int":
            out[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
        else:
            out[d.name] = trial.suggest_categorical(d.name, list(d.choices))
    return out


def shipped_params(dims: Sequence[Dim]) -> dict[str, Any]:
    return {d.name: d.default for d in dims}


def space_table(family: str, methods: Sequence[str] | None = None) -> str:
    """A markdown table of every method's search space for ``family`` (docs/baselines.md)."""
    from .methods import list_methods

    names = methods or [m.name for m in list_methods() if m.name != "retrain"]
    lines = ["| method | field | shipped | searched |", "|---|---|---|---|"]
    for name in names:
        for d in search_space(name, family):
            lines.append(f"| {name} | {d.name} | {d.default} | {d.describe()} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the task


@dataclass
class TuneTask:
    """What one study tunes: a method on one setting, scored over ``seeds`` (validation split)."""

    dataset: str
    forget: str
    method: str
    seeds: tuple[int, ...] = (0,)
    recipe: str | None = None
    model: str | None = None
    device: str = "auto"
    data_root: str | None = None
    download: bool = True
    max_time_ratio: float = MAX_TIME_RATIO
    plugins: tuple[str, ...] = ()  # plugin files (docs/plugins.md), imported wherever a trial runs

    def experiment(self, seed: int):
        """The resolved experiment config of one seed (validation split; Retrain and the method)."""
        from .experiment import ExperimentConfig

        return ExperimentConfig(dataset=self.dataset, forget=self.forget, methods=("retrain", self.method),
                                seed=seed, model=self.model, recipe=self.recipe, device=self.device,
                                data_root=self.data_root, eval_split="val", download=self.download,
                                plugins=tuple(self.plugins)).resolved()

    def resolved(self) -> TuneTask:
        from .methods import get_method
        from .plugins import load_plugins

        if self.plugins:  # absolute paths (a Ray worker's working folder may differ), imported first
            self = dataclasses.replace(self, plugins=tuple(str(Path(f).expanduser().resolve()) for f in self.plugins))
            load_plugins(self.plugins)
        get_method(self.method)
        if self.method == "retrain":
            raise ValueError("Retrain is the yardstick, not a method to tune; choose another --method")
        if not self.seeds:
            raise ValueError("no tuning seed given")
        if not (self.max_time_ratio > 0):
            raise ValueError(f"max_time_ratio must be positive, got {self.max_time_ratio}")
        cfg = self.experiment(self.seeds[0])
        return dataclasses.replace(self, forget=cfg.forget, recipe=cfg.recipe, model=cfg.model,
                                   seeds=tuple(int(s) for s in self.seeds))

    @property
    def family(self) -> str:
        from .models import MODELS
        from .training import budget_profile

        return budget_profile(MODELS[self.model].builder.family, self.recipe)

    @property
    def study_name(self) -> str:
        return f"{self.method}|{self.dataset}|{self.forget}|{self.recipe}|seeds={','.join(map(str, self.seeds))}"

    def space(self) -> list[Dim]:
        return search_space(self.method, self.family)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        d["plugins"] = list(self.plugins)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TuneTask:
        d = dict(d)
        d["seeds"] = tuple(d.get("seeds", (0,)))
        d["plugins"] = tuple(d.get("plugins") or ())
        return cls(**d)


@dataclass
class SeedSetup:
    """One tuning seed: its validation split, the original model and Retrain's metrics."""

    seed: int
    data: Any  # UnlearnData on the device
    original: torch.nn.Module
    retrain_metrics: dict[str, float]
    retrain_seconds: float  # Retrain's training time in this process (its own, or a timed slice)
    timed: bool = False  # True: a timed slice, re-timed when stale (the load of a shared machine drifts)


def prepare_seed(task: TuneTask, seed: int, callbacks=None, cache=None) -> SeedSetup:
    """Train (or read from the cache) the original and Retrain of one seed on the validation split,
    and score Retrain there."""
    from .experiment import prepare_data
    from .metrics import evaluate
    from .training import get_recipe, get_trained
    from .utils import resolve_device, seed_everything

    cfg = task.experiment(seed)
    device = resolve_device(cfg.device)
    seed_everything(seed)
    data = prepare_data(cfg, device)
    assert data.eval_split == "val"
    recipe = get_recipe(cfg.recipe)
    original = get_trained("original", data, cfg.model, recipe, callbacks, cache)
    oracle = get_trained("retrain", data, cfg.model, recipe, callbacks, cache)
    metrics = evaluate(oracle.model, data, seed)
    # Retrain's time in this process: its own training when it ran here on a GPU (wall clock), else
    # a timed slice of it (on a CPU always: the cap reads CPU seconds there, see clock_for).
    if not oracle.cached and device.type != "cpu":
        return SeedSetup(seed, data, original.model, metrics, oracle.seconds)
    return SeedSetup(seed, data, original.model, metrics, retrain_seconds_here(task, data, seed), timed=True)


def clock_for(device) -> tuple[str, Callable[[], float]]:
    """The clock of the time cap: on a CPU the process's CPU seconds (``time.process_time``, all its
    threads), which another process's load barely moves -- a test suite starting beside a sweep
    doubled the wall time of trials but not of a Retrain timed before it; on a GPU the wall clock
    (with device syncs), since the GPU's work is not the process's CPU time."""
    if torch.device(device).type == "cpu":
        return "cpu", time.process_time
    return "wall", time.perf_counter


_RETRAIN_SECONDS: dict[tuple, tuple[float, float]] = {}
RETIME_SECONDS = 900.0  # a timed slice older than this is timed again (before the next trial)


def retrain_seconds_here(task: TuneTask, data, seed: int, min_seconds: float = 3.0) -> float:
    """Seconds a Retrain of ``task``'s recipe takes in this process, measured with the real training
    loop: whole epochs of Retrain's training on D_r (from a fresh seeded model, nothing kept) until
    ``min_seconds`` are spent or every epoch ran, scaled to the recipe's epochs. Kept per process and
    seed for ``RETIME_SECONDS``, then timed again, so a long study follows the machine's load
    (``prepare_seed`` uses Retrain's own time instead when it trained it here)."""
    import dataclasses as dc

    from .models import build_model
    from .training import get_recipe, train_supervised
    from .utils import synchronize

    key = (task.dataset, task.forget, task.model, task.recipe, seed, str(data.x_train.device))
    if key in _RETRAIN_SECONDS and time.time() - _RETRAIN_SECONDS[key][1] < RETIME_SECONDS:
        return _RETRAIN_SECONDS[key][0]
    _, now = clock_for(data.x_train.device)
    recipe = get_recipe(task.recipe)
    one = dc.replace(recipe, epochs=1)
    model = build_model(task.model, data.info, seed=seed).to(data.x_train.device)
    spent, epochs = 0.0, 0
    while epochs < recipe.epochs and (epochs == 0 or spent < min_seconds):
        synchronize(data.x_train.device)
        start = now()
        train_supervised(model, data.x_train, data.y_train, data.retain_idx, one, seed + epochs,
                         source="retrain-timing")
        synchronize(data.x_train.device)
        spent += now() - start
        epochs += 1
    _RETRAIN_SECONDS[key] = (spent / epochs * recipe.epochs, time.time())
    return _RETRAIN_SECONDS[key][0]


class OverTimeCap(RunCancelled):
    """Raised by :class:`_Cap` when a trial can no longer meet the time cap."""


class _Cap:
    """A progress callback that stops the method once ``budget`` seconds have passed since it was
    made (the trial is then infeasible whatever the rest of the run would give)."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.perf_counter):
        self.budget, self.clock = budget, clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def __call__(self, event) -> None:
        if self.elapsed() > self.budget:
            raise OverTimeCap(f"over the time cap after {self.elapsed():.1f} s")


def evaluate_params(task: TuneTask, setups: Sequence[SeedSetup], params: Mapping[str, Any], *,
                    stop_over_cap: bool = False) -> dict[str, Any]:
    """Run the method with ``params`` on every seed and score it on the validation split.

    Returns ``{"gap", "seconds", "retrain_seconds", "time_ratio", "per_seed"}`` or
    ``{"error": message}`` when the run raised or a score is not finite (never raises for those).

    ``stop_over_cap``: stop the trial as soon as the method's time summed over the seeds passes
    ``max_time_ratio`` × Retrain's summed over the seeds -- the point from which the trial's time
    ratio (mean seconds / mean Retrain seconds) is over the cap whatever the rest would take. The
    result then has ``"over_cap": True``, no gap, and ``seconds`` / ``time_ratio`` that are lower
    bounds. (Trial 0, the shipped defaults, is always run to the end: its gap is the table's.)"""
    from .methods import make_config, run_method
    from .metrics import evaluate, gap_to_retrain, metric_set
    from .utils import resolve_device, seed_everything

    per_seed = []
    started = time.perf_counter()
    spent = 0.0
    clock_name, clock = clock_for(resolve_device(task.device))
    level = setups[0].data.spec.level if setups else "class"
    mia = "mia_efficacy" in metric_set(level)  # MIA-efficacy's SVM only where the gap reads it
    try:
        cfg = make_config(task.method, task.family, dict(params))
        for s in setups:
            if s.timed:
                s.retrain_seconds = retrain_seconds_here(task, s.data, s.seed)
        budget = task.max_time_ratio * sum(s.retrain_seconds for s in setups)
        for s in setups:
            assert s.data.eval_split == "val", "tuning scores the validation split only"
            seed_everything(s.seed)
            cap = _Cap(budget - spent, clock) if stop_over_cap else None
            try:
                res = run_method(task.method, s.original, s.data, cfg, device=resolve_device(task.device),
                                 callbacks=[cap] if cap else None)
            except OverTimeCap:
                spent += cap.elapsed()
                n = len(setups)
                return {"over_cap": True, "seconds": spent / n,
                        "retrain_seconds": sum(x.retrain_seconds for x in setups) / n,
                        "time_ratio": spent / max(budget / task.max_time_ratio, 1e-12),
                        "stopped_at_seed": s.seed, "per_seed": per_seed, "clock": clock_name,
                        "wall_seconds": time.perf_counter() - started}
            seconds = res.cpu_seconds if clock_name == "cpu" else res.seconds
            spent += seconds
            metrics = evaluate(res.model, s.data, s.seed, mia=mia)
            gap = gap_to_retrain(metrics, s.retrain_metrics, s.data.spec.level)
            if not math.isfinite(gap):
                raise FloatingPointError(f"seed {s.seed}: the gap to Retrain is not finite ({gap})")
            row = {"seed": s.seed, "gap": gap, "seconds": seconds, "wall_seconds": res.seconds,
                   "retrain_seconds": s.retrain_seconds}
            chosen = {fld: res.extras[key] for key, fld in getattr(type(cfg), "CHOSEN_ON_VALIDATION", {}).items()
                      if key in res.extras}
            if chosen:
                row["chosen"] = chosen  # what the method chose on this validation seed (e.g. SCRUB+R's epoch)
            per_seed.append(row)
    except Exception as exc:  # noqa: BLE001 -- a trial's failure is data, not a crash
        text = " ".join(str(exc).split()) or type(exc).__name__
        return {"error": f"{type(exc).__name__}: {text}"[:500]}
    seconds = sum(p["seconds"] for p in per_seed) / len(per_seed)
    retrain = sum(p["retrain_seconds"] for p in per_seed) / len(per_seed)
    return {"gap": sum(p["gap"] for p in per_seed) / len(per_seed), "seconds": seconds,
            "retrain_seconds": retrain, "time_ratio": seconds / retrain if retrain > 0 else float("inf"),
            "per_seed": per_seed, "clock": clock_name, "wall_seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------- the study


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{Path(out).resolve() / STUDY_FILE}"


def open_study(task: TuneTask, storage: str, seed: int = 0):
    """Create or load the study of ``task`` (TPE with the time constraint), trial 0 enqueued as the
    shipped defaults when no finished trial holds them yet; trials left running by a process that
    is gone are marked failed ("interrupted")."""
    import optuna

    # TPE reads each trial's constraint values (set in tell(); Optuna 5's replacement of the
    # sampler's deprecated constraints_func): a trial over the time cap ranks below every feasible one.
    study = optuna.create_study(study_name=task.study_name, storage=storage, direction="minimize",
                                load_if_exists=True)
    # Seeded by the trials already stored: a resumed study draws new points (the same seed on every
    # resume would repeat the first process's random draws), and a rerun from scratch is the same.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)),
                                               n_startup_trials=8)
    study.set_user_attr("task", task.to_dict())
    states = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (the process running it ended)")
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, states.FAIL)
    have_shipped = any(t.user_attrs.get("shipped") for t in study.get_trials(deepcopy=False)
                       if t.state in (states.COMPLETE, states.FAIL, states.WAITING)
                       and not t.user_attrs.get("interrupted"))
    if not have_shipped:
        study.enqueue_trial(shipped_params(task.space()), user_attrs={"shipped": True})
    return study


def counted(study) -> list:
    """The finished trials that count toward ``--trials`` (complete, failed, or stopped over the time
    cap; not interrupted)."""
    import optuna

    states = optuna.trial.TrialState
    return [t for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.FAIL, states.PRUNED))
            if not t.user_attrs.get("interrupted")]


def tell(study, trial, result: Mapping[str, Any]) -> str:
    """Store one trial's result (complete with its gap, or failed with its message); returns a line."""
    import optuna

    if "error" in result:
        trial.set_user_attr("error", result["error"])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"trial {trial.number}: FAILED ({result['error'][:160]})"
    for k in ("seconds", "retrain_seconds", "time_ratio"):
        trial.set_user_attr(k, float(result[k]))
    if result.get("clock"):
        trial.set_user_attr("clock", result["clock"])  # what "seconds" count: CPU or wall seconds
    # Feasible when <= 0: the time cap as an Optuna constraint, read by the TPE sampler.
    trial.set_constraint("time", float(result["time_ratio"]) - study_task(study).max_time_ratio)
    trial.set_user_attr("per_seed", result["per_seed"])
    trial.set_user_attr("wall_seconds", float(result.get("wall_seconds", 0.0)))  # the method and its scoring
    trial.set_user_attr("where", result.get("where", ""))
    if result.get("over_cap"):
        # Stopped once it could no longer meet the cap: infeasible, no gap; its time is a lower bound.
        trial.set_user_attr("over_cap", True)
        trial.set_user_attr("stopped_at_seed", int(result["stopped_at_seed"]))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return (f"trial {trial.number}: stopped over the time cap (≥ {result['time_ratio']:.3f}× Retrain, "
                f"infeasible)")
    study.tell(trial, float(result["gap"]))
    slow = " (infeasible: too slow)" if result["time_ratio"] > study_task(study).max_time_ratio else ""
    return f"trial {trial.number}: gap {result['gap']:.3f}, {result['time_ratio']:.3f}× Retrain{slow}"


def study_task(study) -> TuneTask:
    return TuneTask.from_dict(study.user_attrs["task"])


def best_trial(study):
    """The complete trial of lowest gap among the feasible ones and the shipped trial 0 (so the best
    is never worse than the shipped defaults on validation); None before any trial completes."""
    import optuna

    task = study_task(study)
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    ok = [t for t in done if t.user_attrs.get("shipped")
          or t.user_attrs.get("time_ratio", math.inf) <= task.max_time_ratio]
    return min(ok, key=lambda t: (t.value, t.number)) if ok else None


def summary(study) -> dict[str, Any]:
    """The best.json document of a study."""
    import optuna

    task = study_task(study)
    trials = counted(study)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    stopped = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    best = best_trial(study)
    shipped = next((t for t in done if t.user_attrs.get("shipped")), None)
    ratios = [t.user_attrs["time_ratio"] for t in done if "time_ratio" in t.user_attrs]
    secs = [t.user_attrs["seconds"] for t in done if "seconds" in t.user_attrs]
    # (the wall seconds of stopped trials too: what a trial costs is what the estimate needs)
    walls = [t.user_attrs["wall_seconds"] for t in done + stopped if t.user_attrs.get("wall_seconds")]
    return {
        "method": task.method, "dataset": task.dataset, "forget": task.forget, "recipe": task.recipe,
        # (plus what the method chose on the validation seeds, fixed here for test-split runs)
        "params": {**dict(best.params), **chosen_on_validation(best)} if best else {},
        "shipped_chosen_on_validation": chosen_on_validation(shipped),
        "gap": best.value if best else None,
        "trials": len(done), "failed": len(trials) - len(done) - len(stopped),
        "stopped_over_cap": len(stopped),
        "best_trial": best.number if best else None,
        "shipped_gap": shipped.value if shipped else None,
        "best_is_shipped": bool(best is not None and best.user_attrs.get("shipped")),
        "best_time_ratio": best.user_attrs.get("time_ratio") if best else None,
        "trial_seconds_mean": sum(secs) / len(secs) if secs else None,
        "trial_time_ratio_mean": sum(ratios) / len(ratios) if ratios else None,
        "trial_wall_seconds_mean": sum(walls) / len(walls) if walls else None,
        # a trial's whole cost (the method on every seed and its scoring) per Retrain of the process
        "trial_wall_ratio_mean": _mean([t.user_attrs["wall_seconds"] / t.user_attrs["retrain_seconds"]
                                        for t in done + stopped if t.user_attrs.get("wall_seconds")
                                        and t.user_attrs.get("retrain_seconds")]),
        "infeasible": sum(r > task.max_time_ratio for r in ratios) + len(stopped),
        "clocks": sorted({t.user_attrs["clock"] for t in done + stopped if t.user_attrs.get("clock")}),
        "max_time_ratio": task.max_time_ratio, "seeds": list(task.seeds), "model": task.model,
        "family": task.family, "eval_split": "val", "study_name": task.study_name,
        "level": _level(task.forget),
    }


def trials_counted(best: Mapping[str, Any]) -> int:
    """The trials a best.json document counts toward ``--trials``: complete, failed and stopped."""
    return sum(int(best.get(k) or 0) for k in ("trials", "failed", "stopped_over_cap"))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def chosen_on_validation(trial) -> dict[str, Any]:
    """The settings a method chose itself on the trial's validation seeds (a config class's
    ``CHOSEN_ON_VALIDATION``, e.g. SCRUB+R's rewind epoch), one value per field: the lower median
    over the seeds; {} when the method chooses nothing."""
    per: dict[str, list] = {}
    for row in (trial.user_attrs.get("per_seed") or []) if trial is not None else []:
        for k, v in (row.get("chosen") or {}).items():
            per.setdefault(k, []).append(v)
    return {k: sorted(v)[(len(v) - 1) // 2] for k, v in per.items()}


def _level(forget: str) -> str:
    from .data import parse_forget_spec

    return parse_forget_spec(forget).level


def write_best(study, out: str | Path) -> Path:
    from .experiment import json_safe

    return atomic_write_text(Path(out) / BEST_FILE, json.dumps(json_safe(summary(study)), indent=1) + "\n")


@dataclass
class TuneResult:
    best: dict[str, Any]
    path: Path
    ran: int  # trials run by this call
    lines: list[str] = field(default_factory=list)


def estimate_trial(task: TuneTask) -> tuple[float, float, str]:
    """(seconds per trial, the same as a multiple of one Retrain, where the method's number comes
    from), from the estimate machinery; per trial = the method on every seed plus its scoring."""
    from .estimate import estimate_experiment

    secs, retrain, source = 0.0, 0.0, ""
    for seed in task.seeds:
        cfg = task.experiment(seed)
        est = estimate_experiment(cfg, reuse_seconds=600)
        phases = est.by_name()
        retrain += _probed_retrain(task, _n_retain(cfg))
        m = phases[task.method]
        secs += m.seconds + phases["scoring"].seconds / 3  # scoring covers original, Retrain, method
        source = m.source
    per_retrain = retrain / len(task.seeds)
    return secs, secs / per_retrain if per_retrain else float("nan"), source


def _probed_retrain(task: TuneTask, n_retain: int) -> float:
    """The estimate's Retrain: a timed probe of one optimiser step × the recipe's steps on D_r."""
    from .estimate import _bucket, _probe
    from .training import get_recipe
    from .utils import resolve_device

    recipe = get_recipe(task.recipe)
    step = _probe("train", task.model, task.dataset, recipe.name, str(resolve_device(task.device)), 3, _bucket(600))
    return step * recipe.steps(n_retain)


def _n_retain(cfg) -> int:
    from .estimate import _split_sizes

    n_train, n_forget, _ = _split_sizes(cfg)
    return n_train - n_forget


def run_tuning(task: TuneTask, trials: int, out: str | Path, *, storage: str | None = None,
               write: Callable[[str], None] = print, callbacks=None, cache=None) -> TuneResult:
    """Run (or continue) the study of ``task`` until it holds ``trials`` counted trials, serially in
    this process; write ``out/best.json``."""
    task = task.resolved()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(task, storage or default_storage(out))
    todo = max(0, trials - len(counted(study)))
    dims = task.space()
    ran = 0
    lines: list[str] = []
    if todo:
        setups = [prepare_seed(task, s, callbacks, cache) for s in task.seeds]
        for _ in range(todo):
            trial = study.ask()
            params = suggest(trial, dims)
            result = evaluate_params(task, setups, params, stop_over_cap=not trial.user_attrs.get("shipped"))
            line = tell(study, trial, result)
            lines.append(line)
            write(line)
            write_best(study, out)
            ran += 1
    path = write_best(study, out)
    return TuneResult(json.loads(path.read_text()), path, ran, lines)


# --------------------------------------------------------------------------- tuned settings: files


def read_best(path: str | Path) -> dict[str, Any]:
    """A best.json document, checked (:func:`check_best`). Raises ValueError with one line."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise ValueError(f"--params-from {p}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"--params-from {p}: not JSON ({exc})") from None
    return check_best(doc, f"--params-from {p}")


def check_best(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` if it reads as a tuning result: a JSON object with a known ``method`` and a ``params``
    object whose fields that method's config knows and accepts; else ValueError naming ``where``."""
    from .methods import config_from_dict, get_method

    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str) or not isinstance(doc.get("params"), dict):
        raise ValueError(f"{where}: not a tuning result (needs \"method\" and a \"params\" object)")
    try:
        spec = get_method(doc["method"])
        config_from_dict(spec.config_cls, doc["params"])  # unknown fields and bad values fail here
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return doc


def params_from_files(paths: Sequence[str | Path], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{method: params}`` from best.json files (one per method), every file checked; a file whose
    method is not in ``methods`` or a method given twice is refused (ValueError, one line)."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        doc = read_best(path)
        m = doc["method"]
        if m not in methods:
            raise ValueError(f"--params-from {path}: method {m!r} is not in the run ({', '.join(methods)})")
        if m in out:
            raise ValueError(f"--params-from: two files for method {m!r}; give one per method")
        out[m] = dict(doc["params"])
    return out


def tuned_home() -> Path:
    """Where the app looks for published tuning results: ``$MIXUNLEARN_HOME/tuned``."""
    from .utils import home_dir

    return home_dir() / "tuned"


def tuned_folder(dataset: str, recipe: str, level: str) -> Path:
    return tuned_home() / dataset / recipe / level


def publish(out: str | Path) -> Path:
    """Copy ``out/best.json`` (as METHOD.json) and the study's SQLite file (as METHOD.db) to the
    app's folder for its data set, recipe and level. Returns the published best file."""
    out = Path(out)
    doc = json.loads((out / BEST_FILE).read_text())
    folder = tuned_folder(doc["dataset"], doc["recipe"], doc["level"])
    folder.mkdir(parents=True, exist_ok=True)
    db = out / STUDY_FILE
    if db.is_file():
        tmp = folder / f".{doc['method']}.db.tmp"
        shutil.copyfile(db, tmp)
        tmp.replace(folder / f"{doc['method']}.db")
    return atomic_write_text(folder / f"{doc['method']}.json", json.dumps(doc, indent=1) + "\n")


# The project's own tuning results ship with the package, one file per data set, recipe and level
# (the best.json documents of bench/tune_all.py's studies; `--phase bundle` writes them). The
# studies themselves (SQLite, about 140-210 KB each) do not ship.
BUNDLED_DIR = Path(__file__).resolve().parent / "tuned"
# {path: ((mtime_ns, size), {method: doc})}: checking a file's 23 results costs ~40 ms, and the
# Unlearn page asks once per chosen method on every rerun.
_BUNDLE_CACHE: dict[Path, tuple[tuple[int, int], dict[str, dict[str, Any]]]] = {}


def bundled_file(dataset: str, recipe: str, level: str) -> Path:
    return BUNDLED_DIR / f"{dataset}-{recipe}-{level}.json"


def write_bundle(docs: Sequence[Mapping[str, Any]], dataset: str, recipe: str, level: str,
                 made_by: str = "") -> Path:
    """Write the tuning results that ship with the package for one task (each doc checked first,
    sorted by method; a doc of another data set, recipe or level is refused)."""
    docs = sorted((dict(d) for d in docs), key=lambda d: d.get("method", ""))
    for d in docs:
        check_best(d, f"bundle {dataset}-{recipe}-{level}")
        got = (d.get("dataset"), d.get("recipe"), d.get("level"))
        if got != (dataset, recipe, level):
            raise ValueError(f"bundle {dataset}-{recipe}-{level}: {d['method']}'s result is for {got}")
    body = {"dataset": dataset, "recipe": recipe, "level": level, "made_by": made_by, "results": docs}
    path = bundled_file(dataset, recipe, level)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(body, indent=1) + "\n")


def bundled(dataset: str, recipe: str, level: str) -> dict[str, dict[str, Any]]:
    """``{method: best.json document}`` of the tuning results that ship with the package for this
    task, each marked ``"bundled": True`` (a result that no longer reads as one -- a method gone or
    a field renamed -- is skipped)."""
    path = bundled_file(dataset, recipe, level)
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if path in _BUNDLE_CACHE and _BUNDLE_CACHE[path][0] == stamp:
            return dict(_BUNDLE_CACHE[path][1])
        docs = json.loads(path.read_text()).get("results", [])
    except (OSError, ValueError, AttributeError):
        return {}
    found: dict[str, dict[str, Any]] = {}
    for doc in docs if isinstance(docs, list) else []:
        try:
            check_best(doc, str(path))
        except ValueError:
            continue
        found[doc["method"]] = {**doc, "bundled": True}
    _BUNDLE_CACHE[path] = (stamp, found)
    return dict(found)


def published(dataset: str, recipe: str, level: str) -> dict[str, dict[str, Any]]:
    """``{method: best.json document}`` of the tuning results for this task: those that ship with
    the package (:func:`bundled`), each replaced by the user's own where ``$MIXUNLEARN_HOME/tuned``
    has one (files that do not read as a tuning result are skipped)."""
    folder = tuned_folder(dataset, recipe, level)
    found: dict[str, dict[str, Any]] = bundled(dataset, recipe, level)
    if not folder.is_dir():
        return found
    for p in sorted(folder.glob("*.json")):
        try:
            doc = read_best(p)
        except ValueError:
            continue
        if doc["method"] == p.stem:
            found[p.stem] = doc
    return found


def load_published_study(dataset: str, recipe: str, level: str, method: str):
    """The Optuna study published with a method's tuning result (read-only use), or None."""
    import optuna

    folder = tuned_folder(dataset, recipe, level)
    db, best = folder / f"{method}.db", folder / f"{method}.json"
    if not db.is_file() or not best.is_file():
        return None
    doc = json.loads(best.read_text())
    return optuna.load_study(study_name=doc["study_name"], storage=f"sqlite:///{db}")


def study_figures(study) -> dict[str, Any]:
    """Optuna's own Plotly figures of a study: the optimisation history, and the parameter
    importances once two trials are complete (None before)."""
    import optuna

    figs: dict[str, Any] = {"history": optuna.visualization.plot_optimization_history(study)}
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    try:
        figs["importances"] = optuna.visualization.plot_param_importances(study) if len(done) >= 2 else None
    except (ValueError, RuntimeError):  # e.g. every complete trial has the same value
        figs["importances"] = None
    return figs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mixunlearn.tune [FAMILY ...]``: every method's search space as markdown tables
    (default families: cnn:fast and digits) -- the tables in docs/baselines.md."""
    import sys

    for family in (list(argv) if argv is not None else sys.argv[1:]) or ["cnn:fast", "digits"]:
        print(f"**Search spaces, model family `{family}`**\n\n{space_table(family)}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
