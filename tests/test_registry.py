"""The method registry: lookup, config validation and coercion, --param parsing, family defaults,
config round-trips, and a smoke test over EVERY registered method (collected at import time, so
methods added later are included automatically)."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mixunlearn.methods import (
    MethodConfig,
    MethodOutput,
    config_from_dict,
    config_to_dict,
    field_specs,
    get_method,
    make_config,
    method_names,
    param,
    parse_param_overrides,
    register_method,
    run_method,
)
from mixunlearn.methods import base as registry
from mixunlearn.metrics import ALL_METRICS, evaluate
from mixunlearn.progress import ProgressEvent, RunCancelled
from mixunlearn.training import RECIPES

ALL_METHODS = method_names()


@dataclasses.dataclass(frozen=True)
class DemoConfig(MethodConfig):
    lr: float = param(0.1, "learning rate", min=1e-4, max=1.0)
    epochs: int = param(3, "epochs", min=1, max=10)
    mode: str = param("a", "mode", choices=("a", "b"))
    flag: bool = param(False, "a switch")
    steps: tuple[int, ...] = param((1, 2), "milestones")

    FAMILY_DEFAULTS = {"resnet": {"lr": 0.01, "epochs": 5}}


# --------------------------------------------------------------------------- lookup


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        get_method("forgetful")
    assert "unknown method 'forgetful'" in str(err.value)
    for name in ("retrain", "finetune", "neggrad"):
        assert name in str(err.value)


def test_core_methods_are_registered():
    assert {"retrain", "finetune", "neggrad"} <= set(ALL_METHODS)
    spec = get_method("neggrad")
    assert spec.labels == "aware" and spec.in_paper and spec.display == "NegGrad"
    assert get_method("finetune").summary and get_method("retrain").paper


# --------------------------------------------------------------------------- configs


def test_config_validation_names_the_field_and_range():
    with pytest.raises(ValueError, match=r"DemoConfig.lr = 2.0 is above its maximum 1.0 \(allowed 0.0001..1.0\)"):
        config_from_dict(DemoConfig, {"lr": 2.0})
    with pytest.raises(ValueError, match="DemoConfig.epochs = 0 is below its minimum 1"):
        config_from_dict(DemoConfig, {"epochs": "0"})
    with pytest.raises(ValueError, match=r"DemoConfig.mode = 'c' is not one of \['a', 'b'\]"):
        config_from_dict(DemoConfig, {"mode": "c"})
    with pytest.raises(ValueError, match="NaN"):
        config_from_dict(DemoConfig, {"lr": "nan"})


def test_unknown_field_lists_the_known_fields():
    with pytest.raises(ValueError) as err:
        config_from_dict(DemoConfig, {"learning_rate": 0.1})
    assert "unknown parameter 'learning_rate'" in str(err.value)
    assert "known: lr, epochs, mode, flag, steps" in str(err.value)


def test_coercion_from_strings():
    cfg = config_from_dict(DemoConfig, {"lr": "1e-3", "epochs": " 4 ", "mode": "b", "flag": "yes", "steps": "3,7"})
    assert cfg == DemoConfig(lr=1e-3, epochs=4, mode="b", flag=True, steps=(3, 7))
    assert isinstance(cfg.epochs, int) and isinstance(cfg.lr, float)
    assert config_from_dict(DemoConfig, {"epochs": 2.0}).epochs == 2
    for bad in ({"epochs": "2.5"}, {"epochs": 2.5}, {"epochs": True}, {"lr": "fast"}, {"lr": False},
                {"steps": "1,x"}):
        with pytest.raises(ValueError, match="must be"):
            config_from_dict(DemoConfig, bad)


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("1", True), ("yes", True), ("on", True),
                                         ("false", False), ("0", False), ("no", False), ("OFF", False),
                                         (1, True), (0, False), (True, True)])
def test_bool_parsing(text, value):
    assert config_from_dict(DemoConfig, {"flag": text}).flag is value


@pytest.mark.parametrize("bad", ["maybe", "2", "", 2])
def test_bool_parsing_rejects(bad):
    with pytest.raises(ValueError, match="true or false"):
        config_from_dict(DemoConfig, {"flag": bad})


def test_parse_param_overrides():
    out = parse_param_overrides(["finetune.lr=1e-3", "neggrad.epochs = 2", "finetune.augment=true",
                                 "mixunlearn.note=a=b"])
    assert out == {"finetune": {"lr": "1e-3", "augment": "true"}, "neggrad": {"epochs": "2"},
                   "mixunlearn": {"note": "a=b"}}
    assert parse_param_overrides([]) == {}
    for bad in ("lr=1e-3", "finetune.lr", "finetune.lr=", ".lr=1", "finetune.=1", "=1"):
        with pytest.raises(ValueError, match="METHOD.FIELD=VALUE"):
            parse_param_overrides([bad])


def test_family_defaults_then_overrides():
    @register_method("_demo_family", config=DemoConfig, labels="aware", summary="s", paper="p")
    def demo(model, data, cfg, *, device, callbacks):
        return model

    try:
        assert make_config("_demo_family", "digits") == DemoConfig()
        assert make_config("_demo_family", "resnet") == DemoConfig(lr=0.01, epochs=5)
        assert make_config("_demo_family", "resnet", {"epochs": "7"}) == DemoConfig(lr=0.01, epochs=7)
    finally:
        registry._REGISTRY.pop("_demo_family")
    ft = make_config("finetune", "resnet")
    assert (ft.lr, ft.epochs, ft.batch_size, ft.weight_decay, ft.augment) == (0.01, 10, 256, 5e-4, True)
    assert make_config("finetune", "digits") == make_config("finetune")


@pytest.mark.parametrize("name", ALL_METHODS)
def test_family_defaults_are_valid_fields(name):
    spec = get_method(name)
    for family, values in spec.config_cls.FAMILY_DEFAULTS.items():
        # a model family, or family:budget (a recipe's budget profile, training.budget_profile)
        assert family.split(":")[0] in ("digits", "cnn", "resnet") and family.count(":") <= 1, family
        if ":" in family:
            assert family.split(":")[1] in {r.budget for r in RECIPES.values() if r.budget}, family
        make_config(name, family)  # raises on unknown fields or values out of range
        assert set(values) <= {f.name for f in dataclasses.fields(spec.config_cls)}


def _strategy(f: dict):
    t = f["type"]
    if f["choices"]:
        return st.sampled_from(list(f["choices"]))
    if t is bool:
        return st.booleans()
    if t is int:
        lo = int(f["min"]) if f["min"] is not None else -1000
        hi = int(f["max"]) if f["max"] is not None else 1000
        return st.integers(lo, hi)
    if t is float:
        lo = f["min"] if f["min"] is not None else -1e6
        hi = f["max"] if f["max"] is not None else 1e6
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if t is str:
        return st.text(max_size=12)
    if typing.get_origin(t) is tuple:
        return st.lists(st.integers(0, 100), max_size=4).map(tuple)
    return st.just(f["default"])


@pytest.mark.parametrize("name", ALL_METHODS)
def test_config_json_round_trip(name):
    cls = get_method(name).config_cls
    fields = field_specs(cls)
    strategy = st.fixed_dictionaries({f["name"]: _strategy(f) for f in fields})

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(values=strategy)
    def check(values):
        try:
            cfg = config_from_dict(cls, values)
        except ValueError:  # a cross-field rule of the method (__post_init__) may refuse a combination
            assume(False)
        text = json.dumps(config_to_dict(cfg), allow_nan=False)
        again = config_from_dict(cls, json.loads(text))
        assert again == cfg and type(again) is cls

    check()
    default = make_config(name)
    assert config_from_dict(cls, json.loads(json.dumps(config_to_dict(default)))) == default


def test_registration_rules():
    @dataclasses.dataclass
    class Mutable:
        lr: float = 0.1

    with pytest.raises(TypeError, match="frozen dataclass"):
        register_method("_x", config=Mutable, labels="aware", summary="", paper="")
    with pytest.raises(ValueError, match="'aware' or 'agnostic'"):
        register_method("_x", config=DemoConfig, labels="sometimes", summary="", paper="")
    with pytest.raises(ValueError, match="registered twice"):
        @register_method("finetune", config=DemoConfig, labels="aware", summary="", paper="")
        def finetune_again(model, data, cfg, *, device, callbacks):  # pragma: no cover
            return model
    assert get_method("finetune").config_cls.__name__ == "FinetuneConfig"
    # Re-registering the same function (a module reload) is allowed.
    spec = get_method("neggrad")
    register_method("neggrad", config=spec.config_cls, labels="aware", summary=spec.summary, paper=spec.paper,
                    display=spec.display, in_paper=True)(spec.fn)


# --------------------------------------------------------------------------- run_method


@pytest.fixture(scope="module")
def small_class(digits_class3):
    data, original, _ = digits_class3
    return data.subset(120, 60, seed=0), original


@pytest.fixture(scope="module")
def small_data(digits_data_level):
    data, original, _ = digits_data_level
    return data.subset(120, 60, seed=0), original


def test_run_method_checks(small_class):
    data, original = small_class
    with pytest.raises(TypeError, match="must be FinetuneConfig"):
        run_method("finetune", original, data, DemoConfig())
    with pytest.raises(ValueError, match="below its minimum"):
        run_method("finetune", original, data, dataclasses.replace(make_config("finetune"), epochs=0))
    seen = {}

    @register_method("_agnostic_probe", config=DemoConfig, labels="agnostic", summary="", paper="",
                     kinds=("data",))
    def probe(model, data, cfg, *, device, callbacks):
        seen["labels"] = data.y_train, data.y_test, data.y_clean
        return MethodOutput(model, {"note": 1})

    try:
        with pytest.raises(ValueError, match="does not support class-level"):
            run_method("_agnostic_probe", original, data)
        level_data = dataclasses.replace(data, spec=dataclasses.replace(data.spec, kind="data", fraction=0.5))
        res = run_method("_agnostic_probe", original, level_data)
        assert seen["labels"] == (None, None, None)  # a label-agnostic method never sees labels
        assert res.extras == {"note": 1} and res.config == config_to_dict(DemoConfig())
        assert res.model is not original and not res.model.training
    finally:
        registry._REGISTRY.pop("_agnostic_probe")


def _short_overrides(name: str) -> dict:
    """Every epoch / step count of the method at its smallest positive value."""
    out = {}
    for f in field_specs(get_method(name).config_cls):
        if f["type"] is int and (f["name"].endswith("epochs") or f["name"].endswith("steps")):
            lo = f["min"] if f["min"] is not None else 1
            out[f["name"]] = max(1, int(lo))
    return out


class Events:
    def __init__(self, cancel_after: int | None = None):
        self.events: list[ProgressEvent] = []
        self.cancel_after = cancel_after

    def __call__(self, ev):
        self.events.append(ev)
        if self.cancel_after is not None and len(self.events) >= self.cancel_after:
            raise RunCancelled("stop")


def _smoke(name, data, original, device="cpu"):
    spec = get_method(name)
    if data.spec.kind not in spec.kinds:
        pytest.skip(f"{name} does not support {data.spec.kind}-level forgetting")
    before = {k: v.clone() for k, v in original.state_dict().items()}
    cfg = make_config(name, original.family, _short_overrides(name))
    events = Events()
    torch.manual_seed(0)
    res = run_method(name, original, data, cfg, device=device, callbacks=[events])
    model = res.model
    assert all(p.device.type == torch.device(device).type for p in model.parameters())
    own, ref = model.state_dict(), original.state_dict()
    assert list(own) == list(ref) and all(own[k].shape == ref[k].shape for k in ref)
    assert all(bool(torch.isfinite(v.float()).all()) for v in own.values())
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())  # f_D untouched
    assert events.events, "no progress event"
    assert all(isinstance(e, ProgressEvent) and e.total >= 0 for e in events.events)
    metrics = evaluate(model, data.to(device), attacks=False)
    assert {"test_r", "test_f", "train_r", "train_f", "test"} <= set(metrics) <= set(ALL_METRICS)
    assert all(0.0 <= v <= 100.0 for v in metrics.values() if not math.isnan(v))
    assert res.seconds > 0 and json.dumps(res.config)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_smoke_class_level(name, small_class):
    _smoke(name, *small_class)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_smoke_data_level(name, small_data):
    _smoke(name, *small_data)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_smoke_cuda(name, small_class, small_data):  # pragma: no cover - CPU-only machines
    _smoke(name, *small_class, device="cuda")
    if "data" in get_method(name).kinds:
        _smoke(name, *small_data, device="cuda")


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_honours_cancel(name, small_class):
    data, original = small_class
    cfg = make_config(name, original.family, _short_overrides(name))
    events = Events(cancel_after=1)
    with pytest.raises(RunCancelled):
        run_method(name, original, data, cfg, device="cpu", callbacks=[events])
    assert len(events.events) == 1  # nothing is reported after the cancel
