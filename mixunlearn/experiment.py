"""One config in, every method run and scored against Retrain, one result out.

Used by the CLI (``run``, ``bench``) and by the app's background jobs. Every input is
validated before any heavy work starts, so a bad class or method name fails at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .data import UnlearnData, check_classes, make_split, parse_forget_spec
from .datahash import data_hash
from .datasets import get_info, load_dataset
from .diagnostics import Diagnoser, add_tow
from .methods import config_to_dict, get_method, make_config, run_method
from .metrics import ALL_METRICS, evaluate, gap_to_retrain
from .models import MODELS
from .progress import Callback, NonFiniteLossError, ProgressEvent, emit
from .training import ModelCache, budget_profile, default_recipe, get_recipe, get_trained
from .utils import atomic_write_text, check_seed, device_name, resolve_device, seed_everything


@dataclass
class ExperimentConfig:
    """Everything needed to replay a run."""

    dataset: str = "digits"
    forget: str = "class:3"
    methods: tuple[str, ...] = ("retrain", "finetune", "neggrad")
    seed: int = 0
    model: str | None = None  # None: the dataset's default model
    recipe: str | None = None  # None: the dataset's default recipe
    device: str = "auto"
    data_root: str | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_split: str = "test"  # "val": score on a validation split held out from D (tuning)
    attacks: bool = True
    download: bool = True
    # Bring your own (docs/plugins.md, docs/app.md). Left out of to_dict() at their defaults, so the
    # identity of every other config (bench's resume check, the store) is what it was.
    plugins: tuple[str, ...] = ()  # plugin files (absolute paths once resolved), imported by resolved()
    original: str | None = None  # the user's trained weights (.safetensors) instead of training f_D
    original_sha256: str | None = None  # filled in by resolved(): runs and the store key on the weights
    retrained: str | None = None  # the user's Retrain weights instead of training f_{D_r}
    retrained_sha256: str | None = None

    def resolved(self) -> ExperimentConfig:
        """Validate every field and fill in defaults; raises ValueError naming the problem."""
        plugins = _resolve_plugins(self.plugins)
        info = get_info(self.dataset)
        model = self.model or info.default_model
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        if MODELS[model].input_size != info.size:
            raise ValueError(f"model {model!r} does not fit {self.dataset!r} ({info.size}x{info.size}); "
                             f"use {info.default_model!r}")
        recipe = (get_recipe(self.recipe) if self.recipe else default_recipe(self.dataset)).name
        spec = parse_forget_spec(self.forget, info.n_classes)
        check_classes(spec, info.n_classes)
        seed = check_seed(self.seed)  # 0..2**32-1: what every consumer (attacks, store, NumPy) accepts
        raw = self.methods.split(",") if isinstance(self.methods, str) else list(self.methods)
        if not all(isinstance(m, str) for m in raw):
            raise ValueError(f"methods must be names (text), got {self.methods!r}")
        methods = [m.strip() for m in raw if m.strip()]
        if not methods:
            raise ValueError("no method given; pass at least one, e.g. --methods retrain,mixunlearn")
        family = budget_profile(MODELS[model].builder.family, recipe)
        for m in methods:
            ms = get_method(m)
            if spec.kind not in ms.kinds:
                raise ValueError(f"method {m!r} does not support {spec.kind}-level forgetting "
                                 f"(supports: {', '.join(ms.kinds)})")
        if not isinstance(self.params, Mapping):
            raise ValueError(f"params must map method names to {{field: value}}, got {self.params!r}")
        # Overrides are kept as their checked values in JSON form ("1e-3" -> 0.001, (3, 5) -> [3, 5]), so
        # a resolved config survives dict -> JSON -> dict unchanged and replays exactly.
        params: dict[str, dict[str, Any]] = {}
        for m, overrides in self.params.items():
            if m == "retrain" and overrides:
                raise ValueError("Retrain is the cached oracle trained with the run's recipe; its parameters "
                                 "cannot be overridden here (choose another --recipe instead)")
            if m not in methods:
                raise ValueError(f"parameters given for method {m!r}, which is not in the run ({', '.join(methods)})")
            if not isinstance(overrides, Mapping):
                raise ValueError(f"parameters of {m!r} must map field names to values, got {overrides!r}")
            checked = config_to_dict(make_config(m, family, overrides))
            params[m] = {k: checked[k] for k in overrides}
        if self.eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {self.eval_split!r}")
        resolve_device(self.device)
        ordered = ["retrain"] + [m for m in dict.fromkeys(methods) if m != "retrain"]
        weights = {}
        for kind in ("original", "retrained"):
            path, sha = getattr(self, kind), getattr(self, f"{kind}_sha256")
            if path is None:
                if sha is not None:
                    raise ValueError(f"{kind}_sha256 is given without --{kind}")
                continue
            from .byo import check_weights_file

            weights[kind], weights[f"{kind}_sha256"] = check_weights_file(kind, path, sha, model, info)
        return dataclasses.replace(self, model=model, recipe=recipe, forget=str(spec), methods=tuple(ordered),
                                   seed=int(seed), params=params, plugins=plugins, **weights)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        for k in _BYO_FIELDS:
            if d[k] in (None, ()):
                del d[k]
            elif isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError(f"unknown experiment field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if "methods" in d:
            d["methods"] = tuple(d["methods"])
        if "plugins" in d:
            d["plugins"] = tuple(d["plugins"] or ())
        return cls(**d)


_BYO_FIELDS = ("plugins", "original", "original_sha256", "retrained", "retrained_sha256")


def _resolve_plugins(plugins: Any) -> tuple[str, ...]:
    """The plugin files as absolute paths, each imported (once per process) so that its methods are
    registered before the method names are checked; a file that fails raises PluginError (one line)."""
    if isinstance(plugins, str):
        plugins = (plugins,)
    if not plugins:
        return ()
    from .plugins import load_plugin_file

    return tuple(dict.fromkeys(load_plugin_file(p).source for p in plugins))


@dataclass
class MethodRecord:
    name: str
    display: str
    labels: str
    status: str  # "done" or "failed"
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    gap_to_retrain: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    cached: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)  # per_class, prediction_matrix, cka (diagnostics.py)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metrics": _round(self.metrics), "seconds": _num(self.seconds)}
        if self.gap_to_retrain is not None:
            out["gap_to_retrain"] = _num(self.gap_to_retrain)
        out.update({"status": self.status, "labels": self.labels, "config": self.config})
        if self.cached:
            out["cached"] = True
        if self.error:
            out["error"] = self.error
        for key in ("per_class", "prediction_matrix", "cka"):
            if key in self.analysis:
                out[key] = self.analysis[key]
        health = self.extras.get("health") if isinstance(self.extras, dict) else None
        if health:  # MixUnlearn's generator health at its last snapshot (METHOD.md §9)
            out["generator"] = {k: (v if isinstance(v, (str, int)) and not isinstance(v, bool) else _num(v))
                                for k, v in health.items()}
        return out


def _num(v: Any, ndigits: int = 4) -> float | None:
    """A finite number rounded for JSON, else None (NaN/inf never reach results.json)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return round(v, ndigits) if math.isfinite(v) else None


def _round(m: Mapping[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in m.items()}


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts: NaN/inf floats become
    None, tuples become lists, other unknown objects their ``str``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return json_safe(obj.item())
    if hasattr(obj, "item") and callable(obj.item):  # NumPy scalars
        try:
            return json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    original: MethodRecord
    methods: dict[str, MethodRecord]
    info: dict[str, Any] = field(default_factory=dict)
    data: UnlearnData | None = None
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # the attack's per-example view

    def to_json(self) -> dict[str, Any]:
        """The results.json document (DESIGN.md); never contains NaN or inf (they become null)."""
        return json_safe({
            "config": self.config.to_dict(),
            "original": self.original.to_json(),
            "methods": {k: v.to_json() for k, v in self.methods.items()},
            "info": self.info,
        })

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # A temporary file of a unique name, renamed over results.json: two runs writing the same
        # folder leave one complete file, and a reader never sees a partial one.
        return atomic_write_text(out / "results.json", json.dumps(self.to_json(), indent=2, allow_nan=False))


def prepare_data(cfg: ExperimentConfig, device: torch.device) -> UnlearnData:
    ds = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    return make_split(ds, cfg.forget, cfg.seed, eval_split=cfg.eval_split).to(device)


@dataclass
class Oracles:
    """The original model and Retrain of one experiment, trained (or read from the cache) and scored."""

    original: Any  # training.TrainedModel
    oracle: Any  # training.TrainedModel
    original_record: MethodRecord
    retrain_record: MethodRecord


def prepare_oracles(cfg: ExperimentConfig, data: UnlearnData, cache: ModelCache | None = None,
                    callbacks: list[Callback] | None = None, keep: dict | None = None) -> Oracles:
    """Train or load the original model and Retrain of ``cfg`` (a resolved config) and score both;
    the original's gap to Retrain is filled in when the attacks are on. ``keep``: a dict that
    receives each model's evaluation leftovers under "original" and "retrain" (metrics.evaluate)."""
    recipe = get_recipe(cfg.recipe)
    cache = cache or ModelCache()
    if cfg.original:  # the user's weights (checked and hashed by resolved())
        from .byo import load_weights

        original = load_weights("original", cfg.original, cfg.original_sha256, data, cfg.model, recipe, callbacks)
    else:
        original = get_trained("original", data, cfg.model, recipe, callbacks, cache)
    emit(callbacks, ProgressEvent("original", "evaluate", 0, 1, message="scoring the original model"))
    keep_o = {} if keep is None else keep.setdefault("original", {})
    keep_r = {} if keep is None else keep.setdefault("retrain", {})
    orig_rec = MethodRecord("original", "Original", "aware", "done", evaluate(original.model, data, cfg.seed,
                                                                             cfg.attacks, keep=keep_o),
                            original.seconds, cached=original.cached)
    if cfg.retrained:
        from .byo import load_weights

        oracle = load_weights("retrain", cfg.retrained, cfg.retrained_sha256, data, cfg.model, recipe, callbacks)
    else:
        oracle = get_trained("retrain", data, cfg.model, recipe, callbacks, cache)
    emit(callbacks, ProgressEvent("retrain", "evaluate", 0, 1, message="scoring Retrain"))
    retrain_metrics = evaluate(oracle.model, data, cfg.seed, cfg.attacks, keep=keep_r)
    retrain_rec = MethodRecord("retrain", "Retrain", "aware", "done", retrain_metrics, oracle.seconds,
                               config={"recipe": recipe.to_dict()}, cached=oracle.cached)
    add_tow(retrain_metrics, retrain_metrics)
    add_tow(orig_rec.metrics, retrain_metrics)
    if cfg.attacks:
        retrain_rec.gap_to_retrain = 0.0
        orig_rec.gap_to_retrain = gap_to_retrain(orig_rec.metrics, retrain_metrics, data.spec.level)
    return Oracles(original, oracle, orig_rec, retrain_rec)


def run_one_method(name: str, cfg: ExperimentConfig, original: torch.nn.Module, data: UnlearnData,
                   retrain_metrics: Mapping[str, float], device: torch.device,
                   callbacks: list[Callback] | None = None,
                   keep: dict | None = None) -> tuple[MethodRecord, torch.nn.Module | None]:
    """One method of ``cfg`` on a copy of ``original``, scored against Retrain's metrics: the cell
    that ``run_experiment`` and the Ray grid (mixunlearn.ray_grid) both run. A method that fails
    with NaN/inf losses gives a failed record (no metrics) and no model."""
    spec = get_method(name)
    # The recipe's budget profile too (as ExperimentConfig.resolved and bench's resume check use it).
    mcfg = make_config(name, budget_profile(original.family, cfg.recipe), cfg.params.get(name))
    emit(callbacks, ProgressEvent(name, "start", 0, 1, message=f"running {spec.display}"))
    try:
        res = run_method(name, original, data, mcfg, device=device, callbacks=callbacks)
    except NonFiniteLossError as exc:
        emit(callbacks, ProgressEvent(name, "failed", 0, 1, message=str(exc)))
        return MethodRecord(name, spec.display, spec.labels, "failed", seconds=0.0,
                            config=config_to_dict(mcfg), error=str(exc)), None
    emit(callbacks, ProgressEvent(name, "evaluate", 0, 1, message=f"scoring {spec.display}"))
    metrics = add_tow(evaluate(res.model, data, cfg.seed, cfg.attacks, keep=keep), retrain_metrics)
    gap = gap_to_retrain(metrics, retrain_metrics, data.spec.level) if cfg.attacks else None
    return MethodRecord(name, spec.display, spec.labels, "done", metrics, res.seconds, gap,
                        res.config, extras=res.extras), res.model


def experiment_info(data: UnlearnData, device: torch.device, oracles: Oracles, started: float) -> dict[str, Any]:
    """The ``info`` block of results.json."""
    level = data.spec.level
    return {
        "version": __version__,
        "device": device_name(device),
        "level": level,
        "metric_set": list({"class": ("test_r", "test_f", "asr"),
                            "data": ("train_r", "train_f", "test", "asr")}[level]),
        "metrics": list(ALL_METRICS),
        "n_train": int(len(data.x_train)), "n_forget": int(len(data.forget_idx)),
        "n_retain": int(len(data.retain_idx)), "n_test": int(len(data.x_test)),
        "eval_split": data.eval_split,
        "data_hash": data_hash(data),  # the data's fingerprint (mixunlearn.datahash): resume checks it
        "cache": {"original": oracles.original.key, "retrain": oracles.oracle.key},
        "started": started, "seconds_total": time.time() - started,
    }


def run_experiment(
    cfg: ExperimentConfig,
    callbacks: list[Callback] | None = None,
    cache: ModelCache | None = None,
    keep_models: bool = False,
    data: UnlearnData | None = None,
    analyses: bool = True,
) -> ExperimentResult:
    """Run every method of ``cfg`` (Retrain always first) and score each against Retrain.

    ``analyses`` (default on): every model's per-class accuracy, prediction matrices, layer-wise CKA
    and (with the attacks) the attack's per-example scores (diagnostics.py, EVALUATION.md §2.5).

    A method that fails with NaN/inf losses is recorded as failed (no metrics) and the others
    go on; :class:`~mixunlearn.progress.RunCancelled` from a callback stops everything.
    """
    cfg = cfg.resolved()
    callbacks = list(callbacks or [])
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    started = time.time()
    emit(callbacks, ProgressEvent("experiment", "data", 0, 1, message=f"loading {cfg.dataset}"))
    if data is None:
        data = prepare_data(cfg, device)
    kept: dict[str, dict] = {}  # each model's logits and ASR attacker, reused by the diagnostics
    oracles = prepare_oracles(cfg, data, cache, callbacks, keep=kept if analyses else None)
    records: dict[str, MethodRecord] = {"retrain": oracles.retrain_record}
    models: dict[str, torch.nn.Module] = {"original": oracles.original.model, "retrain": oracles.oracle.model}
    diag = None
    if analyses:
        emit(callbacks, ProgressEvent("experiment", "evaluate", 0, 1, message="analysing the original and Retrain"))
        diag = Diagnoser(data, cfg.seed, oracles.original.model, oracles.oracle.model, cfg.attacks)
        oracles.original_record.analysis = diag.add("original", oracles.original.model, kept.pop("original", None))
        oracles.retrain_record.analysis = diag.add("retrain", oracles.oracle.model, kept.pop("retrain", None))
    for name in cfg.methods:
        if name == "retrain":
            continue
        kept_m: dict | None = {} if diag is not None else None
        records[name], model = run_one_method(name, cfg, oracles.original.model, data,
                                              oracles.retrain_record.metrics, device, callbacks, keep=kept_m)
        if diag is not None and model is not None:
            emit(callbacks, ProgressEvent(name, "evaluate", 0, 1, message=f"analysing {records[name].display}"))
            records[name].analysis = diag.add(name, model, kept_m)
        if keep_models and model is not None:
            models[name] = model
    info = experiment_info(data, device, oracles, started)
    if diag is not None:
        info["diagnostics"] = {"cka_layers": list(diag.result.layers), "cka_probe": diag.result.probe_size,
                               "attack_subsets": {s: int(len(i)) for s, i in diag.result.subsets.items()}}
    return ExperimentResult(cfg, oracles.original_record, records, info, data if keep_models else None,
                            models if keep_models else {}, diag.result.to_tensors() if diag is not None else {})
