"""The Generator page's health curves and debug views (figures.generator_health_curves,
figures.generator_debug_figure) and their data helpers, on synthetic snapshots with the schema of
MixUnlearnTrainer.snapshot, on snapshots stored before those keys existed, and on a real MixBlock's
debug views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixunlearn import analysis, figures
from mixunlearn.generator import MixBlock

L, P, H, W, h, w = 3, 4, 8, 8, 4, 4
LAMS = (0.25, 0.5, 0.75)


def _snap(update: int, *, seed: int = 0, new: bool = True) -> dict:
    """A snapshot with the keys the Generator page reads; ``new=False`` gives an old run's one."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(L, P, H, W, generator=g)
    snap = {"update": update, "step": 4 * update, "lams": torch.tensor(LAMS), "mask": mask,
            "mask_mean": mask.mean((-2, -1)), "x_f": torch.rand(P, 1, H, W, generator=g),
            "x_r": torch.rand(P, 1, H, W, generator=g)}
    if new:
        snap.update({f"h_{k}": torch.tensor(float(update) + j / 10) for j, k in enumerate(analysis.HEALTH_KEYS)})
        snap.update({"gain_r": torch.randn(L, P, generator=g), "gain_f": torch.randn(L, P, generator=g),
                     "debug_lam": torch.tensor(0.5), "debug_value_f": torch.randn(P, h, w, generator=g),
                     "debug_value_r": torch.randn(P, h, w, generator=g),
                     "debug_attn_f": torch.softmax(torch.randn(P, h * w, h * w, generator=g), -1),
                     "debug_logit_diff": torch.randn(P, h, w, generator=g)})
    return snap


def _z(trace) -> np.ndarray:
    return np.asarray(trace.z, dtype=float)


# --------------------------------------------------------------------------- data helpers


def test_snapshot_health_reads_the_scalars_and_is_empty_for_an_old_snapshot():
    health = analysis.snapshot_health(_snap(2))
    assert list(health) == list(analysis.HEALTH_KEYS)
    assert health["share_err"] == pytest.approx(2.0) and health["gain_forget"] == pytest.approx(2.4)
    assert all(isinstance(v, float) for v in health.values())
    assert analysis.snapshot_health(_snap(2, new=False)) == {}
    assert analysis.has_debug_views(_snap(2)) and not analysis.has_debug_views(_snap(2, new=False))


def test_snapshots_round_trip_through_stored_tensors_with_the_new_keys():
    snaps = [_snap(0), _snap(3, seed=1)]
    back = analysis.snapshots_from_tensors(analysis.snapshots_to_tensors("mixunlearn", snaps), "mixunlearn")
    assert [s["update"] for s in back] == [0, 3]
    assert analysis.snapshot_health(back[1]) == pytest.approx(analysis.snapshot_health(snaps[1]))
    assert analysis.has_debug_views(back[1])
    assert torch.equal(back[1]["debug_attn_f"], snaps[1]["debug_attn_f"])


# --------------------------------------------------------------------------- health curves


def test_health_curves_draw_one_line_per_health_number_over_updates():
    snaps = [_snap(u, seed=u) for u in (4, 0, 2)]  # out of order: drawn sorted by update
    fig = figures.generator_health_curves(snaps, selected_update=2)
    assert [t.name for t in fig.data] == [figures.HEALTH_TITLES[k] for k in analysis.HEALTH_KEYS]
    for j, t in enumerate(fig.data):
        assert list(t.x) == [0, 2, 4]
        assert np.allclose(t.y, [0 + j / 10, 2 + j / 10, 4 + j / 10])
    # both gains share the fourth panel; the others one each
    axes = [t.xaxis for t in fig.data]
    assert axes[3] == axes[4] and len(set(axes[:4])) == 4
    # a reference line per panel (slope at 1, the rest at 0) and the selected update in each panel
    hlines = [s for s in fig.layout.shapes if s.xref.endswith("domain")]
    vlines = [s for s in fig.layout.shapes if s.yref.endswith("domain")]
    assert sorted(s.y0 for s in hlines) == [0, 0, 0, 1] and [s.x0 for s in vlines] == [2] * 4
    assert len(figures.generator_health_curves(snaps).layout.shapes) == 4


def test_health_curves_skip_old_snapshots_and_say_when_there_is_nothing():
    fig = figures.generator_health_curves([_snap(0, new=False), _snap(2), _snap(4, seed=1)])
    assert len(fig.data) == 5 and all(list(t.x) == [2, 4] for t in fig.data)
    empty = figures.generator_health_curves([_snap(0, new=False), _snap(2, new=False)])
    assert len(empty.data) == 0 and "no generator health" in empty.layout.title.text
    assert len(figures.generator_health_curves([]).data) == 0
    partial = _snap(2)
    del partial["h_gain_forget"]
    assert [t.name for t in figures.generator_health_curves([partial]).data][-1] == figures.HEALTH_TITLES[
        "gain_retain"]


# --------------------------------------------------------------------------- debug views


def test_debug_figure_shows_the_six_views_of_the_chosen_pair():
    snap = _snap(6, seed=3)
    fig = figures.generator_debug_figure(snap, 2)
    assert [t.type for t in fig.data] == ["heatmap"] * 6
    v_f, v_r, diff, mask, attn, received = (_z(t) for t in fig.data)
    assert np.allclose(v_f, snap["debug_value_f"][2].numpy()) and np.allclose(v_r, snap["debug_value_r"][2].numpy())
    assert np.allclose(diff, snap["debug_logit_diff"][2].numpy())
    assert np.allclose(mask, snap["mask"][LAMS.index(0.5), 2].numpy())  # the mask at λ = 0.5, this pair
    assert attn.shape == (h * w, h * w) and np.allclose(attn, snap["debug_attn_f"][2].numpy())
    assert received.shape == (h, w)
    assert np.allclose(received, snap["debug_attn_f"][2].mean(0).reshape(h, w).numpy() * h * w)
    assert received.mean() == pytest.approx(1.0)  # rows sum to 1: the mean received weight is uniform's
    # value maps and logits on a diverging scale centred at 0; the mask on the fixed 0-1 scale
    for t in fig.data[:3]:
        assert t.zmid == 0 and t.zmin == -t.zmax
    assert (fig.data[3].zmin, fig.data[3].zmax) == (0, 1)
    assert "pair 2" in fig.layout.title.text and "λ = 0.5" in fig.layout.title.text
    titles = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("attention A_f") and "1/P = 0.062" in t for t in titles)


def test_debug_figure_flat_attention_gives_a_uniform_received_map():
    snap = _snap(0)
    snap["debug_attn_f"] = torch.full((P, h * w, h * w), 1.0 / (h * w))
    received = _z(figures.generator_debug_figure(snap, 0).data[5])
    assert np.allclose(received, 1.0)


def test_debug_figure_handles_old_snapshots_missing_keys_and_a_pair_out_of_range():
    old = figures.generator_debug_figure(_snap(0, new=False), 0)
    assert len(old.data) == 0 and "no generator debug views" in old.layout.title.text
    partial = _snap(0)
    del partial["debug_attn_f"]  # no attention: the value, logit and mask views remain
    assert len(figures.generator_debug_figure(partial, 0).data) == 4
    snap = _snap(0)
    last = figures.generator_debug_figure(snap, 99)
    assert "pair 3" in last.layout.title.text
    assert np.allclose(_z(last.data[0]), snap["debug_value_f"][P - 1].numpy())


def test_debug_figure_reads_a_real_mixblocks_inspect_output():
    torch.manual_seed(0)
    block = MixBlock(6).eval()
    z_f, z_r = torch.randn(P, 6, h, w), torch.randn(P, 6, h, w)
    with torch.no_grad():
        debug = block.inspect(z_f, z_r, 0.5)
        mask = block(z_f.repeat(L, 1, 1, 1), z_r.repeat(L, 1, 1, 1), torch.tensor(LAMS).repeat_interleave(P),
                     (H, W))[:, 0]
    snap = {"update": 1, "lams": torch.tensor(LAMS), "mask": mask.reshape(L, P, H, W), "debug_lam": torch.tensor(0.5),
            **{f"debug_{k}": v for k, v in debug.items()}}
    assert analysis.has_debug_views(snap)
    fig = figures.generator_debug_figure(snap, 1)
    assert [_z(t).shape for t in fig.data] == [(h, w), (h, w), (h, w), (H, W), (h * w, h * w), (h, w)]
    assert np.allclose(_z(fig.data[4]).sum(1), 1.0, atol=1e-5)


def test_health_curves_do_not_magnify_float_noise():
    """Under the projection the share error is ~1e-8 and the slope 1 − 6e-8: the panels keep a least
    range (0-0.1, −0.1-1.2), so noise reads as the constant it is; real values widen the range."""
    snaps = [_snap(u) for u in range(4)]
    for k, s in enumerate(snaps):
        s["h_share_err"] = torch.tensor(1e-8 * (k + 1))
        s["h_share_slope"] = torch.tensor(1.0 - 6e-8 * k)
        s["h_std_mid"] = torch.tensor(0.4)  # beyond the least range: widened
    fig = figures.generator_health_curves(snaps)
    lo, hi = fig.layout.yaxis.range
    assert lo <= 0.0 and hi >= 0.1
    lo, hi = fig.layout.yaxis2.range
    assert lo <= -0.1 and hi >= 1.2
    lo, hi = fig.layout.yaxis3.range
    assert lo <= 0.0 and hi > 0.4
