"""Training recipes (issue 12): the registry, the fast defaults, the paper recipes kept bit for bit,
one-cycle and channels-last training, budget profiles, and the duration estimate."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mixunlearn import estimate
from mixunlearn.datasets import get_info
from mixunlearn.experiment import ExperimentConfig
from mixunlearn.methods import config_to_dict, make_config
from mixunlearn.models import MODELS, build_model
from mixunlearn.training import (
    DEFAULT_RECIPE,
    RECIPE_FAMILY,
    RECIPES,
    TABLE_RECIPE,
    ModelCache,
    Recipe,
    budget_profile,
    default_recipe,
    get_recipe,
    get_trained,
    recipes_for,
    train_supervised,
)

# The paper / table recipes as the first build defined them (every field, in its order). Their
# to_dict() -- the identity in cache keys and stored configs -- must stay exactly this, so cached
# models and the fidelity tables' numbers do not move.
FROZEN = {
    "laf_cnn": {"name": "laf_cnn", "epochs": 20, "batch_size": 32, "lr": 1e-4, "optimizer": "adam",
                "weight_decay": 1e-4, "momentum": 0.9, "schedule": "none", "milestones": (), "augment": "none",
                "description": "LAF's MNIST/Fashion-MNIST recipe: Adam 1e-4, wd 1e-4, 20 epochs, batch 32"},
    "digits": {"name": "digits", "epochs": 40, "batch_size": 64, "lr": 1e-3, "optimizer": "adam",
               "weight_decay": 0.0, "momentum": 0.9, "schedule": "none", "milestones": (), "augment": "none",
               "description": "Adam 1e-3, 40 epochs, batch 64 [ours]"},
    "cifar_full": {"name": "cifar_full", "epochs": 182, "batch_size": 256, "lr": 0.1, "optimizer": "sgd",
                   "weight_decay": 5e-4, "momentum": 0.9, "schedule": "multistep", "milestones": (91, 136),
                   "augment": "crop_flip",
                   "description": "OPTML's 32px recipe: SGD 0.1, wd 5e-4, 182 epochs, lr x0.1 at 91/136"},
}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_paper_recipes_are_unchanged(name):
    assert RECIPES[name].to_dict() == FROZEN[name]
    assert list(RECIPES[name].to_dict()) == list(FROZEN[name])  # same order: same JSON, same cache key


def test_registry_is_consistent():
    assert set(RECIPE_FAMILY) == set(RECIPES)
    for dataset, name in {**DEFAULT_RECIPE, **TABLE_RECIPE}.items():
        assert name in RECIPES, (dataset, name)
        family = MODELS[get_info(dataset).default_model].builder.family
        assert RECIPE_FAMILY[name] == family, (dataset, name)
    # Interactive defaults are fast; the paper recipes stay selectable and are flagged.
    assert DEFAULT_RECIPE["fashion_mnist"] == DEFAULT_RECIPE["mnist"] == "cnn_fast"
    assert DEFAULT_RECIPE["digits"] == "digits_fast"
    assert TABLE_RECIPE["fashion_mnist"] == "laf_cnn" and RECIPES["laf_cnn"].paper
    assert not RECIPES["cnn_fast"].paper
    assert recipes_for("cnn")[0] == "cnn_fast" and recipes_for("cnn")[-1] == "laf_cnn"
    assert get_recipe("fashion_mnist") is RECIPES["cnn_fast"] and get_recipe("laf_cnn") is RECIPES["laf_cnn"]
    # "digits" names both a dataset and the digits tables' recipe: by name it is the recipe.
    assert get_recipe("digits") is RECIPES["digits"] and default_recipe("digits") is RECIPES["digits_fast"]
    assert ExperimentConfig(dataset="digits").resolved().recipe == "digits_fast"
    assert ExperimentConfig(dataset="digits", recipe="digits").resolved().recipe == "digits"
    assert ExperimentConfig(dataset="fashion_mnist").resolved().recipe == "cnn_fast"
    with pytest.raises(ValueError, match="no default recipe"):
        default_recipe("imagenet")
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        get_recipe("nope")
    # Far fewer optimiser steps than the paper's recipe on 60k images.
    assert RECIPES["cnn_fast"].steps(60_000) * 10 < RECIPES["laf_cnn"].steps(60_000)
    assert RECIPES["digits_fast"].steps(1437) * 2 < RECIPES["digits"].steps(1437)


def test_labels_are_not_part_of_the_identity():
    r = RECIPES["laf_cnn"]
    assert r.to_dict() == dataclasses.replace(r, paper=False, budget="fast").to_dict()
    assert r.to_dict() != dataclasses.replace(r, channels_last=True).to_dict()
    assert r.to_dict() != dataclasses.replace(r, warmup=0.3).to_dict()


def test_onecycle_schedule_steps_per_step():
    """One-cycle rises to the recipe's lr by the warm-up share and ends near zero; the optimiser's
    learning rate is read after each step (so a per-epoch schedule would fail this)."""
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    model = build_model("digits_cnn", get_info("digits"), seed=0)
    recipe = Recipe("t", 2, 8, 1e-2, "adam", schedule="onecycle", warmup=0.25)
    seen = []
    orig_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig_step(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        train_supervised(model, x, y, torch.arange(64), recipe, seed=0)
    finally:
        torch.optim.Adam.step = orig_step
    assert len(seen) == 16
    peak = max(range(16), key=lambda i: seen[i])
    assert peak == 3 and seen[peak] == pytest.approx(1e-2, rel=1e-6)  # the 4th of 16 steps: 25 % warm-up
    assert seen[0] < 1e-3 and seen[-1] < 1e-4
    assert all(a <= b for a, b in zip(seen[:peak], seen[1:peak + 1]))


def test_channels_last_recipe_trains_and_caches(tmp_path, digits_class3):
    """A channels-last recipe leaves the model in channels-last format, also when it comes back from
    the cache (safetensors stores contiguous tensors), with the same outputs."""
    data = digits_class3[0]
    recipe = Recipe("cl", 1, 128, 1e-3, channels_last=True)
    cache = ModelCache(tmp_path)
    a = get_trained("original", data, "digits_cnn", recipe, cache=cache)
    b = get_trained("original", data, "digits_cnn", recipe, cache=cache)
    assert not a.cached and b.cached
    w = b.model.block1[1][0].weight  # 32 -> 32 channels (a 1-channel weight is both formats at once)
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    x = data.x_test[:32]
    with torch.no_grad():
        assert torch.allclose(a.model(x), b.model(x), atol=1e-5)


def test_budget_profile_layers_on_the_family_defaults():
    assert budget_profile("cnn", RECIPES["cnn_fast"]) == "cnn:fast"
    assert budget_profile("cnn", "laf_cnn") == "cnn" and budget_profile("digits", "digits_fast") == "digits"
    fam = config_to_dict(make_config("mixunlearn", "cnn"))
    fast = config_to_dict(make_config("mixunlearn", "cnn:fast"))
    assert fam["lr"] == fast["lr"] == 1e-4  # the family's value survives where the profile says nothing
    assert fast["epochs"] < fam["epochs"]
    assert config_to_dict(make_config("mixunlearn", "cnn:fast", {"epochs": 7}))["epochs"] == 7  # overrides last
    # A profile no method knows is the family's defaults.
    assert config_to_dict(make_config("finetune", "digits:none")) == config_to_dict(make_config("finetune", "digits"))


def test_experiment_uses_the_budget_profile_of_its_recipe():
    fast = ExperimentConfig(dataset="fashion_mnist", forget="class:0", methods=("retrain", "mixunlearn"),
                            params={"mixunlearn": {"lr": 1e-3}}).resolved()
    assert fast.recipe == "cnn_fast"
    paper = dataclasses.replace(fast, recipe="laf_cnn").resolved()
    assert paper.recipe == "laf_cnn"


# --------------------------------------------------------------------------- the estimate


def test_probe_is_finite_positive_and_the_estimate_scales_with_epochs(tmp_path):
    r = RECIPES["digits_fast"]
    sec = estimate.probe_train_step("digits_cnn", "digits", r, "cpu", steps=2, min_seconds=0.0)
    assert 0 < sec < 5 and sec == sec
    cfg = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain", "finetune"))
    sizes = (1437, 144, 360)
    e1 = estimate.estimate_experiment(cfg, cache=ModelCache(tmp_path), sizes=sizes)
    phases = e1.by_name()
    assert set(phases) == {"original", "retrain", "finetune", "scoring"}
    assert all(p.seconds > 0 and not p.cached for p in e1.phases)
    assert phases["finetune"].source == "measured ratio"
    # Twice the epochs of the fine-tune: about twice its estimate (same probe reused within the bucket).
    cfg2 = dataclasses.replace(cfg, params={"finetune": {"epochs": 2 * make_config("finetune", "digits").epochs}})
    e2 = estimate.estimate_experiment(cfg2, cache=ModelCache(tmp_path), sizes=sizes, reuse_seconds=1e9)
    e3 = estimate.estimate_experiment(cfg, cache=ModelCache(tmp_path), sizes=sizes, reuse_seconds=1e9)
    assert e2.by_name()["finetune"].seconds == pytest.approx(2 * e3.by_name()["finetune"].seconds)
    assert "about" in e1.text() and "original" in e1.text()


def test_the_training_estimate_scales_with_the_recipes_epochs(tmp_path, monkeypatch):
    cfg = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain",), recipe="digits_fast")
    sizes = (1437, 144, 360)
    base = estimate.estimate_experiment(cfg, cache=ModelCache(tmp_path), sizes=sizes, reuse_seconds=1e9).by_name()
    r = RECIPES["digits_fast"]
    monkeypatch.setitem(RECIPES, "digits_fast", dataclasses.replace(r, epochs=2 * r.epochs))
    twice = estimate.estimate_experiment(cfg, cache=ModelCache(tmp_path), sizes=sizes, reuse_seconds=1e9).by_name()
    for kind in ("original", "retrain"):  # the same probe (reused), twice the steps
        assert twice[kind].seconds == pytest.approx(2 * base[kind].seconds)


def test_estimate_marks_cached_models(tmp_path, monkeypatch):
    cfg = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain",), recipe="digits_fast")
    cache = ModelCache(tmp_path)
    from mixunlearn.data import make_split
    from mixunlearn.datasets import load_dataset

    data = make_split(load_dataset("digits"), "class:3", 0)
    small = dataclasses.replace(RECIPES["digits_fast"], epochs=1)
    monkeypatch.setitem(RECIPES, "digits_fast", small)
    get_trained("original", data, "digits_cnn", small, cache=cache)
    est = estimate.estimate_experiment(cfg, cache=cache, sizes=(len(data.x_train), len(data.forget_idx),
                                                                len(data.x_test))).by_name()
    assert est["original"].cached and est["original"].seconds == 0
    assert not est["retrain"].cached and est["retrain"].seconds > 0


def test_method_costs_cover_the_defaults():
    costs = estimate.method_costs()
    for key in ("digits_cnn/digits_fast", "cnn2/cnn_fast", "cnn2/laf_cnn"):
        assert key in costs, key
        assert all(v > 0 for v in costs[key].values())
    from mixunlearn.methods import method_names

    for m in method_names():
        if m != "retrain":
            assert m in costs["digits_cnn/digits_fast"], m


def test_method_ratio_scales_with_budget_overrides_and_a_step_cap_only_downwards():
    base, _ = estimate.method_ratio("mixunlearn", "digits_cnn", "digits_fast", None, "digits")
    cap = make_config("mixunlearn", "digits").max_steps
    assert cap > 0 and base > 0

    def ratio(**over):
        return estimate.method_ratio("mixunlearn", "digits_cnn", "digits_fast", over, "digits")[0]

    assert ratio(epochs=20) == pytest.approx(2 * base)  # epochs scale the run
    assert ratio(max_steps=cap // 2) == pytest.approx(base * (cap // 2) / cap)  # a lower cap can cut it
    assert ratio(max_steps=0) == pytest.approx(base)  # no cap: never an estimate of 0 s
    assert ratio(max_steps=10 * cap) == pytest.approx(base)  # a higher cap need not lengthen a class-level run


def test_estimate_counts_an_overridden_agnostic_partner_pool(tmp_path, monkeypatch):
    """The fast recipe's measured agnostic ratio holds a pool of 2,000 D_r images; an override adds
    (or saves) f_D's forward over the difference, at the probed per-image cost. Aware: unchanged."""
    per_image, step = 1e-4, 1e-2
    monkeypatch.setattr(estimate, "_probe", lambda what, *a: step if what == "train" else per_image)
    sizes = (60000, 6000, 10000)
    n_retain = sizes[0] - sizes[1]

    def seconds(params):
        cfg = ExperimentConfig(dataset="fashion_mnist", forget="class:0", recipe="cnn_fast", attacks=False,
                               methods=("retrain", "mixunlearn", "mixunlearn_agnostic"), params=params)
        return {k: p.seconds for k, p in
                estimate.estimate_experiment(cfg, cache=ModelCache(tmp_path), sizes=sizes).by_name().items()}

    assert make_config("mixunlearn_agnostic", "cnn:fast").partner_pool == 2000
    base = seconds({})
    every = seconds({"mixunlearn_agnostic": {"partner_pool": 0}, "mixunlearn": {"partner_pool": 0}})
    assert every["mixunlearn_agnostic"] - base["mixunlearn_agnostic"] == pytest.approx((n_retain - 2000) * per_image)
    assert every["mixunlearn"] == pytest.approx(base["mixunlearn"])  # aware reads labels: no pass
    small = seconds({"mixunlearn_agnostic": {"partner_pool": 500}})
    assert base["mixunlearn_agnostic"] - small["mixunlearn_agnostic"] == pytest.approx(1500 * per_image)
    # The aware entry switched to agnostic pays for the pool it now builds.
    switched = seconds({"mixunlearn": {"label_mode": "agnostic"}})
    assert switched["mixunlearn"] - base["mixunlearn"] == pytest.approx(2000 * per_image)


def test_format_seconds():
    assert estimate.format_seconds(3.21) == "3.2 s"
    assert estimate.format_seconds(42) == "42 s"
    assert estimate.format_seconds(125) == "2 min 05 s"
    assert estimate.format_seconds(4 * 3600) == "4 h 00 min"


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_onecycle_on_very_short_runs_trains_at_a_constant_rate(steps):
    """torch's OneCycleLR divides by (phase length - 1): a run of a few steps must still train."""
    x, y = torch.rand(steps * 4, 1, 8, 8), torch.randint(0, 10, (steps * 4,))
    model = build_model("digits_cnn", get_info("digits"), seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    train_supervised(model, x, y, torch.arange(steps * 4), Recipe("t", 1, 4, 1e-2, schedule="onecycle"), seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_method_costs_script_keeps_the_provenance_of_methods_it_does_not_remeasure():
    """bench/method_costs.py updating two methods of a key used to replace the key's whole provenance,
    so the other methods' ratios lost where they came from."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "method_costs.py"
    spec = importlib.util.spec_from_file_location("method_costs_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    first = {"methods": ["finetune", "mixunlearn", "scrub"], "seeds": [2]}
    legacy = {"seeds": [1]}  # written before entries named their methods: kept
    once = mod.merge_provenance(legacy, first)
    assert once == [legacy, first]
    second = {"methods": ["mixunlearn"], "seeds": [0]}
    assert mod.merge_provenance(once, second) == [legacy, first, second]  # finetune, scrub still first's
    third = {"methods": ["finetune", "mixunlearn", "scrub", "salun"], "seeds": [3]}
    assert mod.merge_provenance([legacy, first, second], third) == [legacy, third]  # all superseded


def _floor_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "retrain_floor.py"
    spec = importlib.util.spec_from_file_location("retrain_floor_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_retrain_floor_protocol_gap_is_the_tables_gap_of_seed_means():
    """bench/retrain_floor.py scores like bench/mixunlearn_digits.py: per setting the gap of the seed
    means (not the mean of per-run gaps), then the mean over settings."""
    mod = _floor_module()
    ret = {"test_r": 99.0, "test_f": 0.0, "asr": 30.0}
    rows = [{"spec": "class:0", "seed": 0, "metrics": {"test_r": 98.0, "test_f": 0.0, "asr": 34.0}, "retrain": ret},
            {"spec": "class:0", "seed": 1, "metrics": {"test_r": 98.0, "test_f": 0.0, "asr": 26.0}, "retrain": ret},
            {"spec": "class:1", "seed": 0, "metrics": {"test_r": 99.0, "test_f": 3.0, "asr": 30.0}, "retrain": ret}]
    # class:0: ASR means cancel (30 vs 30), Test_r 1 -> 1/3; class:1: Test_f 3 -> 1; mean 2/3.
    assert mod.protocol_gap(rows, "class") == pytest.approx((1 / 3 + 1) / 2)
    per_run = np.mean([(1 + 4) / 3, (1 + 4) / 3, 1.0])
    assert abs(mod.protocol_gap(rows, "class") - per_run) > 0.5  # a different number from the per-run mean


def test_retrain_floor_scores_an_independent_retrain_against_the_tasks(tmp_path, digits_class3, session_cache,
                                                                       monkeypatch, capsys):
    """End to end on digits class 3, seed 0: the alternative Retrain is the strong evaluation's
    stream-2 seed, cached, scored on the task's split against the task's Retrain."""
    from mixunlearn.metrics import evaluate, gap_to_retrain
    from mixunlearn.pools import pool_seeds
    from mixunlearn.training import get_trained

    mod = _floor_module()
    d = digits_class3[0]
    recipe = get_recipe(TABLE_RECIPE["digits"])  # the tables' recipe, as bench/mixunlearn_digits.py
    monkeypatch.setattr(sys, "argv", ["retrain_floor.py", "--forget", "class:3", "--seeds", "0", "--alt", "1",
                                      "--cache", str(session_cache.root), "--out", str(tmp_path),
                                      "--threads", str(torch.get_num_threads())])  # the session's: same sums
    assert mod.main() == 0
    rows = json.loads((tmp_path / "floor.json").read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["alt_seed"] == pool_seeds(0, 1, "unlearner")[0]
    retrain = get_trained("retrain", d, "digits_cnn", recipe, cache=session_cache)
    assert retrain.cached  # the fixture's Retrain: the script read it rather than training its own
    ref = evaluate(retrain.model, d, 0, True)
    assert {k: row["retrain"][k] for k in ref} == pytest.approx(ref)  # (+ Retrain's ToW against itself)
    assert row["gap"] == pytest.approx(gap_to_retrain(row["metrics"], ref, "class"))
    assert row["metrics"] != pytest.approx(ref)  # another draw, not the task's Retrain again
    assert "independent Retrain (the floor)" in capsys.readouterr().out
