"""Strong evaluation (issue 14): the challenge's ε, bucket score and final score on synthetic
confidences, the U-LiRA-style attack, model pools (seeds, caching, reuse), the CLI's input checks
and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from mixunlearn import strong_eval as se
from mixunlearn.cli import main

# --------------------------------------------------------------------------- a brute-force restatement


def _brute_epsilon(retrained, unlearned, delta=1e-5):
    """The challenge's ε restated the slow way: every threshold compared with every model by
    broadcasting (no sorting, no counting tricks), to check the fast implementation."""
    r, u = np.asarray(retrained, float), np.asarray(unlearned, float)
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
    big, small = max(np.ptp(pos), np.ptp(neg)), min(np.ptp(pos), np.ptp(neg))
    if big > 0 and small / big < 0.01:
        return 50.0
    rates = []
    # single threshold: positive when c >= t
    lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
    for t in np.linspace(lo, hi, int(math.ceil((hi - lo) * 100))):
        tpr, fpr = (pos >= t).mean(), (neg >= t).mean()
        rates.append((tpr, 1 - tpr, fpr, 1 - fpr))
    # double threshold: the peakier group is positive, l <= c <= r
    p, q = (neg, pos) if np.ptp(pos) >= np.ptp(neg) else (pos, neg)
    w = min(np.ptp(pos), np.ptp(neg))
    a, b = p.min() + w - 2, p.max() + 2
    for right in np.linspace(a, b, int(math.ceil((b - a) * 100))):
        lefts = np.linspace(right - w - 2, right - w + 2, 400)
        inside_p = (lefts[:, None] <= p[None, :]) & (p[None, :] <= right)
        inside_q = (lefts[:, None] <= q[None, :]) & (q[None, :] <= right)
        for tpr, fpr in zip(inside_p.mean(1), inside_q.mean(1)):
            rates.append((tpr, 1 - tpr, fpr, 1 - fpr))
    best = None
    for tpr, fnr, fpr, tnr in rates:
        if fpr + fnr == 0 and tpr + tnr == 2:
            e = math.inf
        elif fpr * fnr == 0:
            continue
        else:
            cands = [v for v in (np.log(1 - delta - fpr) - np.log(fnr) if 1 - delta - fpr > 0 else np.nan,
                                 np.log(1 - delta - fnr) - np.log(fpr) if 1 - delta - fnr > 0 else np.nan)
                     if not np.isnan(v)]
            if not cands:
                continue
            e = max(max(cands), 0.0)
        best = e if best is None else max(best, e)
    return 0.0 if best is None else float(min(max(best, 0.0), 50.0))


@pytest.mark.parametrize("case", range(4))
def test_fast_epsilon_equals_the_brute_force_restatement(case):
    rng = np.random.default_rng(case)
    n = [5, 6, 4, 7][case]
    r = rng.normal(0, 1, n)
    u = rng.normal([0.0, 0.7, 2.5, -1.0][case], [1.0, 0.5, 1.5, 0.3][case], n)
    assert se.example_epsilon(r, u) == pytest.approx(_brute_epsilon(r, u), abs=1e-9)


# --------------------------------------------------------------------------- ε on synthetic pools


def test_epsilon_is_zero_for_identical_samples_and_small_for_one_distribution():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 1, (32, 20))
    assert np.all(se.epsilons(r, r.copy()) == 0.0)  # every threshold has TPR = FPR
    u = rng.normal(0, 1, (64, 20))
    r2 = rng.normal(0, 1, (64, 20))
    eps = se.epsilons(r2, u)
    # Finite N: the max over thresholds picks up tail noise (about ln of small count ratios).
    assert eps.mean() < 2.5 and eps.max() < 4
    assert se.forget_quality(eps, 64) > 0.05


def test_epsilon_is_capped_and_large_for_separated_pools():
    rng = np.random.default_rng(1)
    r = rng.normal(0, 1, (16, 10))
    far = rng.normal(10, 1, (16, 10))
    assert np.all(se.epsilons(r, far) == 50.0)  # perfect separation: ε = ∞, capped at 50
    near = rng.normal(2.0, 1, (16, 10))
    same = rng.normal(0, 1, (16, 10))
    assert se.epsilons(r, near).mean() > se.epsilons(r, same).mean()
    assert se.forget_quality(se.epsilons(r, far), 16) == 0.0


def test_zero_spread_rule():
    rng = np.random.default_rng(2)
    r = rng.normal(0, 1, 16)
    peaky = np.full(16, float(np.median(r)))  # range 0 in the middle of the retrained ones
    assert se.example_epsilon(r, peaky) == 50.0
    tiny = np.median(r) + np.linspace(-0.5, 0.5, 16) * 0.009 * np.ptp(r)  # range ratio 0.009 < 0.01
    wider = np.median(r) + np.linspace(-0.5, 0.5, 16) * 0.05 * np.ptp(r)  # ratio 0.05: the rule does not apply
    assert se.example_epsilon(r, tiny) == 50.0
    assert se.example_epsilon(r, wider) < 50.0
    assert se.example_epsilon(np.full(8, 1.5), np.full(8, 1.5)) == 0.0  # both one point: nothing separates them
    assert se.example_epsilon(np.full(8, 1.5), np.full(8, 9.0)) == 50.0  # two different points: separated


# --------------------------------------------------------------------------- buckets and scores


def test_bucket_points_by_hand():
    assert se.bucket_points(2) == []  # ceil(ln 1) = 0: no bucket
    assert se.bucket_points(3) == [(0.5, 1.0), (1.0, 0.5)]  # ceil(ln 2) = 1
    assert [u for u, _ in se.bucket_points(16)] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]  # ceil(ln 15) = 3
    assert len(se.bucket_points(32)) == 8 and se.bucket_points(32)[-1] == (4.0, 1 / 128)  # ceil(ln 31) = 4
    assert len(se.bucket_points(512)) == 14  # ceil(ln 511) = 7, the challenge's N


def test_forget_quality_by_hand():
    eps = [0.0, 0.49, 0.5, 1.2, 3.99, 4.0, 50.0]
    # N = 32: points 1, 1, 1/2, 1/4, 1/128, 0 (past the last bucket), 0
    expected = (1 + 1 + 0.5 + 0.25 + 1 / 128) / 7
    assert se.forget_quality(eps, 32) == pytest.approx(expected)
    assert se.forget_quality([0.7, 1.0], 3) == pytest.approx(0.25)  # 1/2 and 0
    assert se.forget_quality([0.0, 0.0], 2) == 0.0
    assert se.final_score(0.5, 90.0, 100.0, 80.0, 100.0) == pytest.approx(0.36)
    assert se.final_score(0.5, 110.0, 100.0, 100.0, 100.0) == pytest.approx(0.55)  # no cap at 1, as the challenge


def test_logit_scaled_confidence_is_stable_and_matches_the_definition():
    z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 0.0, 0.0], [1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0]])
    y = torch.tensor([0, 1, 0, 0])
    conf = se.logit_scaled_confidence(z, y)
    p = torch.softmax(z[:2].double(), 1)
    naive = [math.log(p[i, y[i]]) - math.log(1 - p[i, y[i]]) for i in range(2)]
    assert conf[:2] == pytest.approx(naive, abs=1e-9)
    assert np.isfinite(conf).all()
    assert conf[2] == pytest.approx(-math.log(1e-45), rel=1e-6)  # the challenge's floor: about +103.6
    assert conf[3] == pytest.approx(math.log(1e-45) - 0.0, rel=1e-3)
    assert se.logit_scaled_confidence(z, y, floor=False)[2] == pytest.approx(1000 - math.log(2), rel=1e-9)


def test_ulira_separates_what_differs_and_not_what_does_not():
    rng = np.random.default_rng(3)
    r, same = rng.normal(0, 1, (16, 50)), rng.normal(0, 1, (16, 50))
    shifted = rng.normal(3, 1, (16, 50))
    neg, pos = se.ulira_scores(r, same)
    assert se.tpr_at_fpr(neg, pos, 0.01) < 6.0
    neg, pos = se.ulira_scores(r, shifted)
    assert se.tpr_at_fpr(neg, pos, 0.01) > 50.0
    assert se.tpr_at_fpr(neg, pos, 0.001) <= se.tpr_at_fpr(neg, pos, 0.01)


# --------------------------------------------------------------------------- pools


@pytest.fixture(scope="module")
def small_task():
    from mixunlearn.data import make_split
    from mixunlearn.datasets import load_dataset

    data = make_split(load_dataset("digits"), "class:3", seed=0).subset(300, 120, seed=0)
    from mixunlearn.training import get_recipe

    recipe = dataclasses.replace(get_recipe("digits"), epochs=1)
    return data, recipe


def test_pool_seeds_are_deterministic_distinct_and_prefix_stable():
    from mixunlearn.pools import pool_seeds

    a = pool_seeds(0, 16, "reference")
    assert a == pool_seeds(0, 16, "reference") and len(set(a)) == 16
    assert pool_seeds(0, 32, "reference")[:16] == a
    assert set(a).isdisjoint(pool_seeds(0, 16, "unlearner")) and pool_seeds(1, 16, "reference") != a
    assert all(0 <= s < 2**31 for s in a)
    with pytest.raises(ValueError, match="stream"):
        pool_seeds(0, 3, "nope")


def test_retrained_pool_is_cached_and_reused(small_task, tmp_path):
    from mixunlearn.pools import retrained_pool
    from mixunlearn.training import ModelCache

    data, recipe = small_task
    cache = ModelCache(tmp_path / "models")
    events = []
    first = retrained_pool(data, "digits_cnn", recipe, 2, 0, cache=cache, callbacks=[events.append], keep_models=True)
    assert first.n_cached == 0 and any(e.phase == "train" for e in events)
    assert len(list((tmp_path / "models").glob("*.safetensors"))) == 2 and not list(tmp_path.rglob("*.pt"))
    events.clear()
    again = retrained_pool(data, "digits_cnn", recipe, 2, 0, cache=cache, callbacks=[events.append], keep_models=True)
    assert again.n_cached == 2 and not any(e.phase == "train" for e in events)  # nothing trained
    assert again.seeds == first.seeds
    for a, b in zip(first.members, again.members):
        for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(v, w), k
    pool_events = [e for e in events if e.phase == "pool" and not e.message]
    assert [e.step for e in pool_events] == [1, 2] and all(e.data["cached"] for e in pool_events)
    # a bigger pool reuses the two cached members and trains one more
    bigger = retrained_pool(data, "digits_cnn", recipe, 3, 0, cache=cache)
    assert bigger.n_cached == 2 and bigger.seeds[:2] == first.seeds
    # different seeds for different members: the models differ
    sd = [m.model.state_dict()["head.weight"] for m in first.members]
    assert not torch.equal(sd[0], sd[1])


def test_pool_cache_key_names_the_split(digits_dataset):
    from mixunlearn.data import make_split
    from mixunlearn.pools import pool_cache_parts
    from mixunlearn.training import ModelCache, cache_parts, get_recipe

    recipe = get_recipe("digits")
    a = make_split(digits_dataset, "data:5-9:0.4", seed=0)
    b = make_split(digits_dataset, "data:5-9:0.4", seed=7)
    # the same member seed on two different splits: two cache entries (cache_parts alone would collide)
    assert cache_parts("retrain", dataclasses.replace(a, seed=5), "digits_cnn", recipe) == \
        cache_parts("retrain", dataclasses.replace(b, seed=5), "digits_cnn", recipe)
    assert ModelCache.key(pool_cache_parts(a, "digits_cnn", recipe, 5)) != \
        ModelCache.key(pool_cache_parts(b, "digits_cnn", recipe, 5))


def test_unlearned_pool_runs_have_their_own_seeds(small_task, tmp_path):
    from mixunlearn.models import build_model
    from mixunlearn.pools import unlearned_pool

    data, _ = small_task
    original = build_model("digits_cnn", data.info, seed=0).eval()
    cfg = {"epochs": 1}
    one = unlearned_pool("finetune", original, data, 3, 0, cfg=cfg, keep_models=True,
                         measure=lambda i, m: {"i": i})
    two = unlearned_pool("finetune", original, data, 3, 0, cfg=cfg, keep_models=True)
    w = [m.model.state_dict()["head.weight"] for m in one.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])  # each run its own seed
    assert torch.equal(w[0], two.members[0].model.state_dict()["head.weight"])  # and reproducible
    assert one.stat("i") == [0, 1, 2] and len(set(one.seeds)) == 3


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("args, message", [
    (["--pool", "2"], "pool size 2 is out of range; allowed 3..512"),
    (["--pool", "513"], "pool size 513 is out of range"),
    (["--pool", "many"], "pool size must be an integer"),
    (["--methods", "retrain,nosuch"], "unknown method 'nosuch'"),
    (["--seed", "-1"], "seed must be a non-negative integer"),
    (["--seed", str(2**32)], "out of range"),
    (["--forget", "class:12"], "out of range"),
    (["--epochs", "0"], "--epochs 0 is out of range"),
    (["--param", "finetune.nosuch=1"], "unknown parameter 'nosuch'"),
])
def test_evaluate_bad_input_is_one_line_exit_2_before_any_work(args, message, tmp_path, capsys):
    import os

    try:
        rc = main(["evaluate", "--out", str(tmp_path / "out"), "--quiet", *args])
    except SystemExit as exc:  # argparse's own checks (types and ranges) exit from the parser
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    models = os.path.join(os.environ["MIXUNLEARN_HOME"], "models")
    assert not os.path.isdir(models) or not os.listdir(models)  # nothing trained


def test_evaluate_bad_input_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--pool", "1"])
    assert exc.value.code == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["evaluate", "--out", str(blocker), "--quiet"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_evaluate_end_to_end_writes_the_schema(tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--dataset", "digits", "--forget", "class:3", "--methods", "retrain,finetune",
               "--pool", "3", "--epochs", "1", "--param", "finetune.epochs=1", "--depth-models", "1",
               "--relearn-cap", "30", "--seed", "5", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["config"]["pool"] == 3 and doc["config"]["seed"] == 5 and doc["config"]["methods"] == ["retrain",
                                                                                                       "finetune"]
    n_forget = doc["info"]["n_forget"]
    for name in ("retrain", "finetune"):
        rec = doc["methods"][name]
        assert {"score", "forget_quality", "eps_per_example", "ulira_tpr_at_1pct_fpr", "ulira_tpr_at_0.1pct_fpr",
                "relearn_steps", "probe_forget_acc", "seconds"} <= set(rec)
        assert len(rec["eps_per_example"]) == n_forget
        assert all(0.0 <= e <= 50.0 for e in rec["eps_per_example"])
        assert 0.0 <= rec["forget_quality"] <= 1.0
        assert rec["forget_quality"] == pytest.approx(se.forget_quality(rec["eps_per_example"], 3), abs=1e-3)
        assert 0 <= rec["relearn_steps"] <= 30 and 0 <= rec["probe_forget_acc"] <= 100
        assert 0 <= rec["ulira_tpr_at_0.1pct_fpr"] <= rec["ulira_tpr_at_1pct_fpr"] <= 100
        assert rec["seconds"] > 0 and len(rec["seeds"]) == 3
    assert set(doc["methods"]["retrain"]["seeds"]).isdisjoint(doc["reference"]["seeds"])
    assert "retrain" in printed and "finetune" in printed and "wrote" in printed
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*tmp"))


# --------------------------------------------------------------------------- batched pool training


@pytest.mark.parametrize("recipe_change", [
    {},  # the digits recipe: Adam, no schedule, no augmentation
    {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine", "augment": "crop"},
    pytest.param({"schedule": "onecycle", "lr": 1e-2}, marks=pytest.mark.skipif(
        not hasattr(__import__("mixunlearn.training").training.Recipe, "warmup"),
        reason="this version's recipes have no one-cycle schedule")),
])
def test_batched_training_equals_sequential_training_for_the_same_seeds(small_task, recipe_change):
    """K models trained at once as a stacked ensemble = the same K trained one at a time with the same
    seeds: weights, BatchNorm running statistics and batch counters. In float64, so that the only
    difference left is rounding (in float32 Adam amplifies rounding in near-zero gradients)."""
    from mixunlearn.models import build_model
    from mixunlearn.pools import train_supervised_batched
    from mixunlearn.training import RECIPES, train_supervised

    data, _ = small_task
    data = data.subset(200, 50, seed=1)
    recipe = dataclasses.replace(RECIPES["digits"], epochs=2, **recipe_change)  # the named recipe, 3 steps/epoch
    x = data.x_train.double()
    seeds = [3, 11, 2024]
    seq = [train_supervised(build_model("digits_cnn", data.info, seed=s).double(), x, data.y_train, data.retain_idx,
                            recipe, s) for s in seeds]
    events = []
    bat = train_supervised_batched([build_model("digits_cnn", data.info, seed=s).double() for s in seeds], x,
                                   data.y_train, data.retain_idx, recipe, seeds, callbacks=[events.append])
    assert len(bat) == 3 and all(not m.training for m in bat)
    for a, b in zip(seq, bat):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb)
        for k in sa:
            assert sb[k].dtype == sa[k].dtype, k
            torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-9, msg=k)
    # the seeds matter: two members differ by far more than the tolerance
    assert (seq[0].head.weight - seq[1].head.weight).abs().max() > 1e-3
    assert events and events[-1].phase == "train" and events[-1].step == events[-1].total


def test_retrained_pool_trains_in_groups_by_default_and_caches_each_member(small_task, tmp_path):
    from mixunlearn.pools import DEFAULT_BATCH, pool_batch_size, retrained_pool
    from mixunlearn.training import ModelCache

    data, recipe = small_task
    assert pool_batch_size("digits_cnn") == DEFAULT_BATCH > 1 and pool_batch_size("cnn2") == 1
    with pytest.raises(ValueError, match="digits CNN only"):
        pool_batch_size("cnn2", 4)
    with pytest.raises(ValueError, match="positive integer"):
        pool_batch_size("digits_cnn", 0)
    cache = ModelCache(tmp_path / "models")
    events = []
    pool = retrained_pool(data, "digits_cnn", recipe, 3, 0, cache=cache, callbacks=[events.append], batch=2,
                          measure=lambda i, m: {"i": i, "training": m.training}, keep_models=True)
    assert {e.source for e in events if e.phase == "train"} == {"retrain 1–2/3", "retrain 3/3"}
    assert pool.stat("i") == [0, 1, 2] and not any(pool.stat("training")) and pool.n_cached == 0
    metas = [json.loads(p.read_text()) for p in (tmp_path / "models").glob("*.json")]
    assert sorted(m["batched"] for m in metas) == [1, 2, 2]
    again = retrained_pool(data, "digits_cnn", recipe, 3, 0, cache=cache, keep_models=True)  # default batch
    assert again.n_cached == 3
    for a, b in zip(pool.members, again.members):
        assert torch.equal(a.model.head.weight, b.model.head.weight)
