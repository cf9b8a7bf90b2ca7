"""The method registry: one signature for every unlearning method.

A method is a function registered by name::

    @register_method("finetune", config=FinetuneConfig, labels="aware", summary="...", paper="...")
    def finetune(model, data, cfg, *, device, callbacks) -> nn.Module | MethodOutput: ...

- ``model`` is a private copy of the original model f_D (the caller copies; the method may
  change it in place and return it);
- ``data`` is an :class:`~mixunlearn.data.UnlearnData` on ``device``; label-agnostic methods
  receive a view without labels;
- ``cfg`` is the method's frozen config dataclass, whose fields carry metadata (help, min, max,
  choices) so the app can build widgets and a run can be replayed exactly;
- ``callbacks`` receive :class:`~mixunlearn.progress.ProgressEvent` objects; one may raise
  :class:`~mixunlearn.progress.RunCancelled` to stop the run.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..data import UnlearnData
from ..progress import Callback, NonFiniteLossError, RunCancelled, check_finite_weights
from ..utils import synchronize


def param(default: Any, help: str, *, min: float | None = None, max: float | None = None,
          choices: Iterable[Any] | None = None, log: bool = False, tune: bool = True,
          tune_range: tuple[Any, Any] | None = None) -> Any:
    """A config field with the metadata the CLI and the app read. ``tune=False`` keeps the field
    out of hyper-parameter tuning (mixunlearn.tune); ``tune_range=(lo, hi)`` narrows the range
    tuning searches (within min..max; the field's ``log`` applies), else tune derives one."""
    meta = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None, "log": log,
            "tune": tune, "tune_range": tuple(tune_range) if tune_range is not None else None}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. ``FAMILY_DEFAULTS`` maps a model family ("digits", "cnn",
    "resnet") to field overrides, e.g. a smaller learning rate for ResNet-18. A key
    ``family:budget`` (e.g. "cnn:fast") holds further overrides for originals trained with a recipe
    of that budget profile (training.budget_profile), applied on top of the family's."""

    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Per family (and ``family:budget``), a field's range for tuning where the model bounds it (e.g. a
    # layer count, ``{"cnn": {"k": (1, 5)}}``) or where the derived range cannot meet the time cap (a
    # budget whose shipped value is paper-sized, ``{"cnn:fast": {"epochs": (1, 10)}}``); read by
    # mixunlearn.tune.search_space over tune_range.
    TUNE_RANGES: ClassVar[dict[str, dict[str, tuple[float, float]]]] = {}

    def setup_images(self, n_retain: int) -> int:
        """Retain images the original model classifies before this config's run starts (a forward
        pass each). The duration estimate (mixunlearn.estimate) charges the difference an override
        makes at the probed per-image cost; 0 for a method without such a pass."""
        return 0


@dataclass
class MethodOutput:
    """What a method may return instead of a bare model: the model plus extras for the app
    (e.g. generator snapshots) and the loss history."""

    model: nn.Module
    extras: dict[str, Any] = field(default_factory=dict)


UnlearnFn = Callable[..., "nn.Module | MethodOutput"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: UnlearnFn
    config_cls: type
    labels: str  # "aware" or "agnostic"
    summary: str
    paper: str
    display: str
    kinds: tuple[str, ...] = ("class", "data", "noisy")
    in_paper: bool = False


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    config: type,
    labels: str,
    summary: str,
    paper: str,
    display: str | None = None,
    kinds: Iterable[str] = ("class", "data", "noisy"),
    in_paper: bool = False,
) -> Callable[[UnlearnFn], UnlearnFn]:
    if labels not in ("aware", "agnostic"):
        raise ValueError(f"labels must be 'aware' or 'agnostic', got {labels!r}")
    if not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
        raise TypeError(f"config of {name!r} must be a frozen dataclass")

    def deco(fn: UnlearnFn) -> UnlearnFn:
        old = _REGISTRY.get(name)
        # Re-importing the same module (e.g. a reload by a file watcher) replaces the entry;
        # another function claiming the name is a mistake.
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"method {name!r} is registered twice ({old.fn.__module__} and {fn.__module__})")
        _REGISTRY[name] = MethodSpec(name, fn, config, labels, summary, paper, display or name, tuple(kinds), in_paper)
        return fn

    return deco


def _ensure_loaded() -> None:
    from . import _load_all

    _load_all()


def method_names() -> list[str]:
    _ensure_loaded()
    return list(_REGISTRY)


def list_methods() -> list[MethodSpec]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def get_method(name: str) -> MethodSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}") from None


# --------------------------------------------------------------------------- configs


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(f.name, f.type)


def field_specs(cls: type) -> list[dict[str, Any]]:
    """One dict per config field: name, type, default, help, min, max, choices, log, tune,
    tune_range."""
    out = []
    for f in dataclasses.fields(cls):
        t = _field_type(cls, f)
        out.append({"name": f.name, "type": t, "default": f.default,
                    **{k: f.metadata.get(k) for k in ("help", "min", "max", "choices", "log", "tune_range")},
                    "tune": f.metadata.get("tune", True)})
    return out


def _coerce(value: Any, t: Any, name: str) -> Any:
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        t = type(typing.get_args(t)[0])
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if t is int:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if t is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if t is str:
        return str(value)
    if origin in (tuple, list) or t in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        args = typing.get_args(t)
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, name) for v in value)
    return value


def validate_config(cfg: MethodConfig) -> None:
    """Check every field against its min / max / choices; raise ValueError naming the field."""
    cls = type(cfg)
    for f in dataclasses.fields(cls):
        v = getattr(cfg, f.name)
        lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
        where = f"{cls.__name__}.{f.name}"
        if isinstance(v, float) and v != v:
            raise ValueError(f"{where} is NaN")
        if lo is not None and isinstance(v, (int, float)) and not isinstance(v, bool) and v < lo:
            raise ValueError(f"{where} = {v} is below its minimum {lo} (allowed {lo}..{hi})")
        if hi is not None and isinstance(v, (int, float)) and not isinstance(v, bool) and v > hi:
            raise ValueError(f"{where} = {v} is above its maximum {hi} (allowed {lo}..{hi})")
        if choices and v not in choices:
            raise ValueError(f"{where} = {v!r} is not one of {list(choices)}")


def config_from_dict(cls: type, values: Mapping[str, Any] | None = None) -> Any:
    """Build and validate a config from plain values (JSON, CLI strings); unknown names fail
    with the list of known ones."""
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} for {cls.__name__}; known: {', '.join(known)}")
    kwargs = {k: _coerce(v, _field_type(cls, known[k]), f"{cls.__name__}.{k}") for k, v in values.items()}
    cfg = cls(**kwargs)
    validate_config(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v) for f in dataclasses.fields(cfg)}


def make_config(name: str, family: str | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """The config of method ``name``: class defaults, then the model family's defaults, then those
    of the budget profile when ``family`` is ``family:budget``, then ``overrides``."""
    spec = get_method(name)
    base = for_family(spec.config_cls.FAMILY_DEFAULTS, family)
    base.update(overrides or {})
    return config_from_dict(spec.config_cls, base)


def for_family(table: Mapping[str, Mapping[str, Any]], family: str | None) -> dict[str, Any]:
    """The entries of a per-family ``table`` (FAMILY_DEFAULTS, TUNE_RANGES) that apply to ``family``:
    the family's (e.g. "cnn"), then, when ``family`` is ``family:budget``, that profile's on top."""
    out: dict[str, Any] = {}
    if family:
        out.update(table.get(family.split(":", 1)[0], {}))
        if ":" in family:
            out.update(table.get(family, {}))
    return out


def parse_param_overrides(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["mixunlearn.lr=1e-3", ...]`` -> ``{"mixunlearn": {"lr": "1e-3"}}`` (values coerced later)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"malformed --param {item!r}; use METHOD.FIELD=VALUE, e.g. mixunlearn.lr=1e-4")
        key, value = item.split("=", 1)
        method, fld = key.split(".", 1)
        if not method or not fld or not value.strip():
            raise ValueError(f"malformed --param {item!r}; use METHOD.FIELD=VALUE")
        out.setdefault(method.strip(), {})[fld.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------- running


@dataclass
class MethodResult:
    name: str
    model: nn.Module
    seconds: float
    config: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    # CPU seconds of this process over the run (all its threads): a cost that another process's load
    # barely moves, unlike ``seconds`` (wall clock); tuning's time cap reads it on CPU devices.
    cpu_seconds: float = 0.0


class PluginMethodError(NonFiniteLossError):
    """A plugin's method raised, returned something other than a model of the original's
    architecture, or a model with NaN/inf weights. A subclass of NonFiniteLossError so that every
    caller (a run, the app's jobs, the strong evaluation) records that method as failed, with this
    one line naming the plugin's file, and goes on with the others."""

    def __init__(self, method: str, source: str, problem: str):
        RuntimeError.__init__(self, f"{method} (plugin {source}): {problem}")
        self.method, self.step, self.what, self.source = method, -1, problem, source


def _plugin_source(spec: MethodSpec) -> str:
    """The file of a method that is not one of the package's own, else ``""``."""
    module = getattr(spec.fn, "__module__", "") or ""
    if module.startswith("mixunlearn.methods"):
        return ""
    code = getattr(spec.fn, "__code__", None)
    return str(code.co_filename) if code is not None else module


def _architecture_problem(original: nn.Module, model: nn.Module) -> str:
    """How ``model``'s tensors differ from ``original``'s (names and shapes), or ``""``."""
    own = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, shape in own.items():
        if k not in got:
            return f"returned a model of another architecture (tensor {k} is missing)"
        if got[k] != shape:
            return f"returned a model of another shape (tensor {k} is {got[k]}, the original's is {shape})"
    extra = [k for k in got if k not in own]
    if extra:
        return f"returned a model of another architecture (unexpected tensor {extra[0]})"
    return ""


class _LastStep:
    """A callback that remembers the last step a method reported (for errors between reports)."""

    def __init__(self):
        self.step = 0

    def __call__(self, event) -> None:
        if event.total:
            self.step = max(self.step, int(event.step))


def run_method(
    name: str,
    original: nn.Module,
    data: UnlearnData,
    cfg: Any | None = None,
    *,
    device: torch.device | str | None = None,
    callbacks: list[Callback] | None = None,
) -> MethodResult:
    """Run one method on a deep copy of ``original`` and time it (with device syncs).

    The original is never modified. Label-agnostic methods get :meth:`UnlearnData.without_labels`.
    """
    spec = get_method(name)
    if data.spec.kind not in spec.kinds:
        raise ValueError(f"method {name!r} does not support {data.spec.kind}-level forgetting "
                         f"(supports: {', '.join(spec.kinds)})")
    family = getattr(original, "family", None)
    if cfg is None:
        cfg = make_config(name, family)
    elif isinstance(cfg, Mapping):
        cfg = make_config(name, family, cfg)
    elif not isinstance(cfg, spec.config_cls):
        raise TypeError(f"config for {name!r} must be {spec.config_cls.__name__}, got {type(cfg).__name__}")
    else:
        validate_config(cfg)  # a config built directly skipped the checks of make_config
    device = torch.device(device) if device is not None else data.device
    if data.device != device:
        data = data.to(device)
    model = copy.deepcopy(original).to(device)
    view = data.without_labels() if spec.labels == "agnostic" else data
    reported = _LastStep()
    plugin = _plugin_source(spec)
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        out = spec.fn(model, view, cfg, device=device, callbacks=[reported, *(callbacks or [])])
    except (NonFiniteLossError, RunCancelled, KeyboardInterrupt):
        raise
    except FloatingPointError as exc:
        # Python's own signal of a non-finite value (e.g. a NaN check inside a method's modules):
        # the same failure as a NaN loss, so the experiment records the method as failed.
        raise NonFiniteLossError(name, reported.step, f"a computed value ({exc})", after=True) from exc
    except Exception as exc:
        if not plugin:  # a built-in method's bug stays an internal error
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise PluginMethodError(name, plugin, f"raised {type(exc).__name__}: {text}") from exc
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if isinstance(out, MethodOutput):
        model, extras = out.model, out.extras
    else:
        model, extras = out, {}
    if not isinstance(model, nn.Module):
        what = f"returned {type(model).__name__}, not a torch model (nn.Module) or MethodOutput"
        if plugin:
            raise PluginMethodError(name, plugin, what)
        raise TypeError(f"method {name!r} {what}")
    if plugin:
        problem = _architecture_problem(original, model)
        if problem:
            raise PluginMethodError(name, plugin, problem)
        try:
            check_finite_weights(model, name, -1)
        except NonFiniteLossError:
            raise PluginMethodError(name, plugin, "returned a model with NaN or infinite weights") from None
    check_finite_weights(model, name, -1)
    model.eval()
    return MethodResult(name, model, seconds, config_to_dict(cfg), extras, cpu_seconds)
