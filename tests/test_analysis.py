"""Analysis: shared-frame projections, per-sample losses, KDEs, the membership AUC, pack round
trips and snapshot flattening."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mixunlearn import analysis


def _clusters(n=120, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(3, d))
    labels = np.arange(n) % 3
    return centres[labels] + rng.normal(size=(n, d)), labels


def _random_rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_procrustes_recovers_a_similarity_transform():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 2))
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moved = 3.0 * ref @ rot @ np.diag([1.0, -1.0]) + np.array([5.0, -2.0])  # rotate, reflect, scale, shift
    np.testing.assert_allclose(analysis.procrustes_align(moved, ref), ref, atol=1e-9)


def test_pca_projection_puts_equivalent_geometry_on_the_same_coordinates():
    x, _ = _clusters()
    rotated = x @ _random_rotation(x.shape[1], 3) * 2.5 + 7.0  # same geometry, other coordinates
    other = np.random.default_rng(5).normal(size=x.shape)  # a different geometry
    out = analysis.project({"original": x, "rotated": rotated, "other": other}, "pca", seed=0)
    assert list(out) == ["original", "rotated", "other"]
    assert all(v.shape == (len(x), 2) for v in out.values())
    np.testing.assert_allclose(out["rotated"], out["original"], atol=1e-3)
    assert np.abs(out["other"] - out["original"]).mean() > 0.1
    # The reference layout is centred with unit RMS radius, and every panel is in its frame.
    assert np.allclose(out["original"].mean(0), 0, atol=1e-5)
    assert np.sqrt((out["original"] ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("method", ["umap", "tsne"])
def test_nonlinear_projection_is_deterministic_and_shared(method):
    x, labels = _clusters(n=90)
    shifted = x + np.random.default_rng(9).normal(scale=0.3, size=x.shape)
    feats = {"original": x, "method": shifted}
    a = analysis.project(feats, method, seed=0, n_epochs=50)
    b = analysis.project(feats, method, seed=0, n_epochs=50)
    for k in feats:
        assert a[k].shape == (90, 2)
        assert np.isfinite(a[k]).all()
        np.testing.assert_array_equal(a[k], b[k])
    # One frame: each cluster of the slightly perturbed model lies nearest to the same cluster of
    # the original (an unaligned projection may rotate or reflect the layout arbitrarily).
    cent = {k: np.stack([a[k][labels == c].mean(0) for c in range(3)]) for k in feats}
    for c in range(3):
        assert int(np.argmin(np.linalg.norm(cent["original"] - cent["method"][c], axis=1))) == c


def test_projection_rejects_mismatched_rows_and_unknown_method():
    with pytest.raises(ValueError, match="same samples"):
        analysis.project({"a": np.zeros((5, 3)), "b": np.zeros((6, 3))}, "pca")
    with pytest.raises(ValueError, match="unknown projection"):
        analysis.project({"a": np.zeros((5, 3))}, "mds")


def test_per_sample_ce_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 10, generator=g) * 3
    y = torch.randint(0, 10, (40,), generator=g)
    ours = analysis.per_sample_ce(logits, y)
    ref = F.cross_entropy(logits, y, reduction="none").numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    # And by hand for one sample: -log softmax at the label.
    by_hand = -(logits[0, y[0]] - torch.logsumexp(logits[0], 0)).item()
    assert ours[0] == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("values", [
    np.random.default_rng(0).lognormal(mean=-2, sigma=1.5, size=300),
    np.full(20, 0.3),  # degenerate: all equal
    np.array([2.0]),
])
def test_kde_integrates_to_one(values):
    curve = analysis.kde_curve(values)
    assert curve.n == len(values)
    assert np.trapezoid(curve.density, curve.grid) == pytest.approx(1.0, abs=0.02)
    assert (curve.density >= 0).all()


def test_kde_curves_share_a_grid_and_peak_where_the_data_are():
    sets = {"forget": np.full(50, 1e-3) * np.random.default_rng(1).uniform(0.5, 2, 50),
            "unseen": np.random.default_rng(2).uniform(2, 6, 80)}
    curves = analysis.kde_curves(sets)
    assert np.array_equal(curves["forget"].grid, curves["unseen"].grid)
    peak_f = curves["forget"].x[np.argmax(curves["forget"].density)]
    peak_u = curves["unseen"].x[np.argmax(curves["unseen"].density)]
    assert 3e-4 < peak_f < 3e-3
    assert 1.5 < peak_u < 8


def test_membership_auc_extremes_and_ties():
    rng = np.random.default_rng(0)
    same = rng.exponential(size=4000)
    assert analysis.membership_auc(same[:2000], same[2000:]) == pytest.approx(0.5, abs=0.03)
    low, high = rng.uniform(0, 1, 300), rng.uniform(2, 3, 300)
    assert analysis.membership_auc(low, high) == 1.0  # forgotten samples remembered (low loss)
    assert analysis.membership_auc(high, low) == 0.0  # over-forgotten
    assert analysis.distinguishability(high, low) == 1.0
    assert analysis.distinguishability(same[:2000], same[2000:]) == pytest.approx(0.5, abs=0.03)
    assert analysis.membership_auc(np.ones(5), np.ones(7)) == 0.5  # ties count half
    # Against the pairwise definition on a small case.
    f, u = np.array([0.1, 0.5, 0.5, 2.0]), np.array([0.5, 1.0, 0.05])
    pairs = np.mean([(ui > fi) + 0.5 * (ui == fi) for fi in f for ui in u])
    assert analysis.membership_auc(f, u) == pytest.approx(pairs)
    assert np.isnan(analysis.membership_auc(np.array([]), u))


def test_pack_on_a_small_task_round_trips_and_matches_direct_evaluation(digits_class3):
    data, original, retrain = digits_class3
    small = data.subset(200, 120, seed=0)
    pack = analysis.build_pack({"original": original, "retrain": retrain}, small, n_test=100, n_forget=15,
                               n_retain=40, seed=0)
    assert pack.models == ["original", "retrain"]
    assert len(pack.test_idx) == 100 and len(pack.forget_idx) == 15 and len(pack.retain_idx) == 40
    assert pack.forget_classes == (3,)
    assert (pack.y_forget == 3).all() and (pack.y_retain != 3).all()
    # Logits equal the model's own forward on those samples.
    with torch.no_grad():
        direct = original.eval()(small.x_test[pack.test_idx])
    torch.testing.assert_close(pack.logits_test["original"], direct, rtol=1e-4, atol=1e-4)
    sets = analysis.loss_sets(pack, "original")
    assert len(sets["unseen"]) == int((pack.y_test == 3).sum())
    # Round trip through the flat tensor dict (as stored in the run store).
    back = analysis.AnalysisPack.from_tensors(pack.to_tensors(), ["retrain", "original"])
    assert back.models == ["retrain", "original"]
    torch.testing.assert_close(back.features["retrain"], pack.features["retrain"])
    np.testing.assert_allclose(analysis.loss_sets(back, "retrain")["forget"],
                               analysis.loss_sets(pack, "retrain")["forget"])
    # The original remembers D_f better than Retrain does (its forget losses are lower).
    rows = {r["model"]: r for r in analysis.loss_summary(pack)}
    assert rows["original"]["median_forget"] < rows["retrain"]["median_forget"]


def _fake_snapshot(update, P=2, L=3):
    return {"update": update, "step": 4 * update, "lams": torch.tensor([0.25, 0.5, 0.75]),
            "x_f": torch.rand(P, 1, 8, 8), "x_r": torch.rand(P, 1, 8, 8), "mask": torch.rand(L, P, 8, 8),
            "mixed": torch.rand(L, P, 1, 8, 8), "vanilla": torch.rand(L, P, 1, 8, 8),
            "mask_mean": torch.rand(L, P), "pred": torch.randint(0, 10, (L, P))}


def test_snapshots_and_history_round_trip():
    snaps = [_fake_snapshot(0), _fake_snapshot(3)]
    flat = analysis.snapshots_to_tensors("mixunlearn", snaps)
    assert "mixunlearn/snap/01/mask" in flat
    back = analysis.snapshots_from_tensors(flat, "mixunlearn")
    assert [s["update"] for s in back] == [0, 3] and isinstance(back[1]["step"], int)
    torch.testing.assert_close(back[1]["mixed"], snaps[1]["mixed"])
    hist = [{"step": 1, "l_mix": 0.5}, {"step": 2, "l_mix": 0.4, "l_gen": -0.3}]
    h = analysis.history_from_tensors(analysis.history_to_tensors("mixunlearn", hist), "mixunlearn")
    np.testing.assert_allclose(h["l_mix"], [0.5, 0.4])
    assert np.isnan(h["l_gen"][0]) and h["l_gen"][1] == -0.3
    assert analysis.snapshot_methods({**flat, "analysis/y_test": torch.zeros(1)}) == ["mixunlearn"]


def test_mask_collapse_flags_only_uniform_extremes():
    snap = {"mask_mean": torch.full((3, 4), 0.99)}
    assert analysis.mask_collapse(snap) == "forget"
    assert analysis.mask_collapse({"mask_mean": torch.full((3, 4), 0.01)}) == "retain"
    assert analysis.mask_collapse({"mask_mean": torch.tensor([[0.5, 0.99]])}) is None
