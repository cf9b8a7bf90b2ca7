"""The generator playground's library side (mixunlearn/playground.py) on digits class 3, seed 0, with
the session's cached models: a run returns snapshots, health and accuracies; the attack is scored in
a second call and matches a full evaluation; bad values fail before any work; a callback cancels;
the share constraint shows in the health numbers; missing models are never trained silently."""

from __future__ import annotations

import pytest
import torch

from mixunlearn import playground as pg
from mixunlearn.experiment import ExperimentConfig, run_experiment
from mixunlearn.metrics import evaluate, gap_to_retrain
from mixunlearn.progress import RunCancelled
from mixunlearn.training import ModelCache

# The digits tables' recipe: the session's model cache (conftest) holds its models.
CFG = ExperimentConfig(dataset="digits", forget="class:3", methods=("retrain", "mixunlearn"), seed=0, device="cpu",
                       recipe="digits")


@pytest.fixture(autouse=True)
def _fresh_contexts():
    pg.clear_contexts()
    yield
    pg.clear_contexts()


@pytest.fixture
def cache(digits_class3, session_cache):
    return session_cache


def test_a_run_returns_snapshots_health_and_accuracies_and_matches_the_full_run(cache):
    events = []
    r = pg.run_playground(CFG, {}, cache=cache, callbacks=[events.append])
    assert r.method == "mixunlearn" and r.generator_updates > 0
    assert len(r.snapshots) >= 2 and r.snapshots[-1]["update"] == r.generator_updates
    assert r.curves["update"] == [s["update"] for s in r.snapshots]
    assert set(r.health) >= {"share_err", "share_slope", "std_mid", "gain_retain", "gain_forget", "collapse"}
    assert {"test_r", "test_f"} <= set(r.metrics) and "asr" not in r.metrics and not r.attacked
    expected = (abs(r.metrics["test_r"] - r.retrain_metrics["test_r"])
                + abs(r.metrics["test_f"] - r.retrain_metrics["test_f"])) / 2
    assert r.gap_acc == pytest.approx(expected)
    assert any(e.source == "mixunlearn" and e.losses for e in events)  # progress went through the callbacks
    assert r.load_seconds > 0 and r.seconds > 0
    # The same task, seed and settings as a full run: the same probe pairs, λs and unlearned model.
    full = run_experiment(CFG, cache=cache, keep_models=True)
    rec = full.methods["mixunlearn"]
    own = rec.extras["snapshots"][-1]
    for key in ("x_f", "x_r", "lams"):
        assert torch.equal(own[key], r.snapshots[-1][key]), key
    assert torch.allclose(own["mask"], r.snapshots[-1]["mask"])
    assert r.metrics["test_r"] == rec.metrics["test_r"] and r.metrics["test_f"] == rec.metrics["test_f"]
    # A second run on the same task reuses the loaded data and models.
    again = pg.run_playground(CFG, {"gen_interval": 2}, cache=cache)
    assert again.context is r.context and again.generator_updates > r.generator_updates


def test_score_attack_adds_the_attack_and_the_full_gap_as_a_full_evaluation_would(cache):
    r = pg.run_playground(CFG, {}, cache=cache)
    before = dict(r.metrics)
    assert pg.score_attack(r) is r and r.attacked
    ctx = r.context
    assert r.metrics == evaluate(r.model, ctx.data, 0, attacks=True)
    assert r.retrain_metrics == evaluate(ctx.retrain, ctx.data, 0, attacks=True)
    assert r.gap == pytest.approx(gap_to_retrain(r.metrics, r.retrain_metrics, "class"))
    assert {k: r.metrics[k] for k in before} == before
    seconds = r.attack_seconds
    pg.score_attack(r)  # a second call does nothing
    assert r.attack_seconds == seconds


@pytest.mark.parametrize("overrides, field", [({"lr_generator": 5.0}, "lr_generator"),
                                              ({"share_constraint": "sideways"}, "share_constraint"),
                                              ({"gen_steps": 0}, "gen_steps"),
                                              ({"tau_gen": "warm"}, "tau_gen"),
                                              ({"no_such_setting": 1}, "no_such_setting")])
def test_a_bad_value_is_a_clear_error_before_any_work(overrides, field, tmp_path, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("data were loaded before the settings were checked")

    monkeypatch.setattr(pg, "prepare_data", no_work)
    monkeypatch.setattr(pg, "run_method", no_work)
    events = []
    with pytest.raises(ValueError, match=field):
        pg.run_playground(CFG, overrides, cache=ModelCache(tmp_path / "c"), callbacks=[events.append])
    assert events == []
    with pytest.raises(ValueError, match=field):
        pg.estimate_seconds(CFG, overrides)
    with pytest.raises(ValueError, match="MixUnlearn only"):
        pg.run_playground(CFG, {}, method="finetune")


def test_cancelling_through_a_callback_stops_the_run(cache):
    seen = []

    def cancel_after_a_few(event):
        if event.source == "mixunlearn" and event.losses:
            seen.append(event.step)
            if len(seen) == 3:
                raise RunCancelled("stop")

    with pytest.raises(RunCancelled):
        pg.run_playground(CFG, {}, cache=cache, callbacks=[cancel_after_a_few])
    assert len(seen) == 3 and max(seen) < 10  # a digits run has 50 steps
    r = pg.run_playground(CFG, {}, cache=cache)  # the task is still usable afterwards
    assert r.snapshots


def test_the_share_constraint_shows_in_the_health_numbers(cache):
    on = pg.run_playground(CFG, {"share_constraint": "project"}, cache=cache)
    off = pg.run_playground(CFG, {"share_constraint": "none"}, cache=cache)
    assert on.config["share_constraint"] == "project" and off.config["share_constraint"] == "none"
    assert all(e < 1e-4 for e in on.curves["share_err"])  # share = λ at every snapshot
    assert on.health["share_slope"] == pytest.approx(1.0, abs=1e-3)
    assert off.health["share_err"] > 0.1  # without it the share drifts away from λ
    assert abs(off.health["share_slope"] - 1.0) > 0.5


def test_missing_models_are_said_and_never_trained_unless_asked(tmp_path, digits_class3):
    empty = ModelCache(tmp_path / "empty")
    with pytest.raises(pg.ModelsNotCached, match="not in the model cache"):
        pg.run_playground(CFG, {}, cache=empty)
    assert list(empty.root.iterdir()) == []


def test_the_estimate_follows_the_budget_and_loads_nothing(monkeypatch):
    monkeypatch.setattr(pg, "prepare_data", lambda *a, **k: pytest.fail("the estimate loaded data"))
    one = pg.estimate_seconds(CFG, {"epochs": 5})
    two = pg.estimate_seconds(CFG, {"epochs": 10})
    assert two == pytest.approx(2 * one, rel=0.1)
    assert pg.estimate_seconds(CFG, {"gen_warmup": 100}) > pg.estimate_seconds(CFG, {})
    fashion = ExperimentConfig(dataset="fashion_mnist", forget="class:0", methods=("mixunlearn",), device="cpu")
    # Same budget (epochs over D_f), far more data per step on 28x28 images than on 8x8 digits.
    assert pg.estimate_seconds(fashion, {"epochs": 10}) > 20 * pg.estimate_seconds(CFG, {"epochs": 10})


def test_save_as_run_stores_a_complete_run_every_page_can_read(cache, tmp_path):
    from mixunlearn import analysis
    from mixunlearn.store import RunStore

    r = pg.run_playground(CFG, {"share_constraint": "none"}, cache=cache)
    store = RunStore(tmp_path / "store")
    run_id = pg.save_as_run(r, store, label="playground test")
    row = store.get(run_id)
    assert row.status == "complete" and row.label == "playground test"
    assert row.config["params"] == {"mixunlearn": {"share_constraint": "none"}}
    assert row.results["methods"]["mixunlearn"]["metrics"]["asr"] == pytest.approx(r.metrics["asr"], abs=1e-4)
    assert row.results["app"]["models"] == ["original", "retrain", "mixunlearn"]
    snaps = analysis.snapshots_from_tensors(store.load_tensors(run_id), "mixunlearn")
    assert len(snaps) == len(r.snapshots) and torch.equal(snaps[-1]["mask"], r.snapshots[-1]["mask"])
