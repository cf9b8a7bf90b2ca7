"""MixBlock and the mixers (METHOD.md §3; acceptance properties 1-4)."""

from __future__ import annotations

import pytest
import torch

from mixunlearn.generator import (
    MixBlock,
    check_finite,
    mix_images,
    mixblock_param_count,
    project_share,
    share_penalty,
    vanilla_mask,
    vanilla_mix,
)
from mixunlearn.models import build_model


def _feats(n=6, c=32, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, c, h, w, generator=g)), torch.relu(torch.randn(n, c, h, w, generator=g))


@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
@pytest.mark.parametrize("lam_concat", [True, False])
def test_property_1_mask_shape_range_sum_and_init(upsample, lam_concat):
    torch.manual_seed(0)
    block = MixBlock(32, lam_concat=lam_concat, upsample=upsample)
    z_i, z_j = _feats(c=32, h=7, w=7)
    m = block(z_i, z_j, 0.3, (28, 28)).detach()
    assert m.shape == (6, 2, 28, 28)
    assert m.dtype == torch.float32
    assert bool((m >= 0).all()) and bool((m <= 1).all())
    assert torch.allclose(m.sum(1), torch.ones(6, 28, 28), atol=1e-6)
    assert float((m - 0.5).abs().max()) < 0.05  # N(0, 0.01²) init: a near-uniform 50/50 mask


def test_property_1_mask_at_trained_scale_still_valid():
    torch.manual_seed(1)
    block = MixBlock(16)
    block.reset_parameters(std=1.0)
    z_i, z_j = _feats(c=16, h=4, w=4, seed=2)
    m = block(z_i, z_j, torch.tensor(0.8), (8, 8)).detach()
    assert bool((m >= 0).all()) and bool((m <= 1).all())
    assert torch.allclose(m.sum(1), torch.ones(6, 8, 8), atol=1e-6)
    assert float((m - 0.5).abs().max()) > 0.05  # with big weights the mask is not flat any more


def test_mixblock_reads_model_feature_maps():
    """The feature map each model exposes has the size METHOD.md §3.5 names, and MixBlock accepts it."""
    for name, size, (c, h) in [("digits_cnn", 8, (32, 4)), ("cnn2", 28, (32, 7))]:
        model = build_model(name, seed=0).eval()
        z = model.mix_feature_map(torch.rand(3, 1, size, size))
        assert tuple(z.shape[1:]) == (c, h, h)
        m = MixBlock(c)(z, z.flip(0), 0.5, (size, size))
        assert m.shape == (3, 2, size, size)


def test_property_2_convex_mix():
    g = torch.Generator().manual_seed(3)
    x_i, x_j = torch.rand(5, 3, 8, 8, generator=g), torch.rand(5, 3, 8, 8, generator=g)
    torch.manual_seed(3)
    block = MixBlock(16)
    block.reset_parameters(std=1.0)  # a far-from-uniform mask
    z_i, z_j = _feats(n=5, c=16, seed=4)
    mask = block(z_i, z_j, 0.5, (8, 8)).detach()
    mixed = mix_images(x_i, x_j, mask)
    lo, hi = torch.minimum(x_i, x_j), torch.maximum(x_i, x_j)
    assert bool((mixed >= lo - 1e-7).all()) and bool((mixed <= hi + 1e-7).all())
    # The written form x_i ⊙ M0 + x_j ⊙ M1, with the mask broadcast over colour channels.
    assert torch.allclose(mixed, x_i * mask[:, :1] + x_j * mask[:, 1:], atol=1e-6)
    # x_i = x_j gives x_i back.
    assert torch.equal(mix_images(x_i, x_i, mask), x_i)


@pytest.mark.parametrize("lam", [0.0, 0.2, 0.75, 1.0])
def test_property_2_vanilla_mixer(lam):
    g = torch.Generator().manual_seed(5)
    x_i, x_j = torch.rand(4, 1, 8, 8, generator=g), torch.rand(4, 1, 8, 8, generator=g)
    expected = lam * x_i + (1 - lam) * x_j
    assert torch.allclose(vanilla_mix(x_i, x_j, lam), expected, atol=1e-6)
    mask = vanilla_mask(lam, 4, (8, 8))
    assert mask.shape == (4, 2, 8, 8)
    assert torch.allclose(mix_images(x_i, x_j, mask), expected, atol=1e-6)
    # Per-sample λ.
    lams = torch.tensor([0.1, 0.4, 0.6, 0.9])
    per = lams.view(4, 1, 1, 1) * x_i + (1 - lams.view(4, 1, 1, 1)) * x_j
    assert torch.allclose(vanilla_mix(x_i, x_j, lams), per, atol=1e-6)


@pytest.mark.parametrize("c,off,on", [(256, 66_048, 66_305), (32, 1_088, 1_121)])
def test_property_3_parameter_counts(c, off, on):
    """METHOD.md §3.4's counts less the dead value bias b_v; with ``value_bias`` it is back (+1)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(MixBlock(c, lam_concat=False)) == off
    assert count(MixBlock(c, lam_concat=True)) == on
    assert mixblock_param_count(c, False) == off and mixblock_param_count(c, True) == on
    assert count(MixBlock(c, value_bias=True)) == on + 1 == mixblock_param_count(c, True, value_bias=True)


def test_property_4_lambda_is_an_input_only_with_lam_concat():
    z_i, z_j = _feats(c=32, seed=6)
    torch.manual_seed(7)
    on = MixBlock(32, lam_concat=True)
    on.reset_parameters(std=1.0)
    m1, m2 = on(z_i, z_j, 0.1, (8, 8)).detach(), on(z_i, z_j, 0.9, (8, 8)).detach()
    assert float((m1 - m2).abs().max()) > 1e-3
    torch.manual_seed(7)
    off = MixBlock(32, lam_concat=False)
    off.reset_parameters(std=1.0)
    assert torch.equal(off(z_i, z_j, 0.1, (8, 8)), off(z_i, z_j, 0.9, (8, 8)))
    # A per-sample λ equals the per-batch λ for every sample.
    lam = torch.full((6,), 0.9)
    assert torch.allclose(on(z_i, z_j, lam, (8, 8)), m2, atol=1e-6)


def test_mask_gradient_reaches_generator_only_through_mask():
    torch.manual_seed(8)
    block = MixBlock(16)
    z_i, z_j = _feats(c=16, seed=9)
    x_i, x_j = torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8)
    mix_images(x_i, x_j, block(z_i, z_j, 0.5, (8, 8))).sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    assert float(block.value.weight.grad.abs().sum()) > 0


def test_nonfinite_features_are_reported_not_patched():
    block = MixBlock(16)
    z_i, z_j = _feats(c=16, seed=10)
    z_i[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        block(z_i, z_j, 0.5, (8, 8))
    with pytest.raises(FloatingPointError):
        check_finite(torch.tensor([1.0, float("inf")]), "x")


def test_attention_stays_float32_under_autocast():
    block = MixBlock(16)
    z_i, z_j = _feats(c=16, seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = block(z_i.bfloat16(), z_j.bfloat16(), 0.5, (8, 8))
    assert m.dtype == torch.float32
    assert torch.allclose(m.sum(1), torch.ones(6, 8, 8), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError):
        MixBlock(16, upsample="bicubic")
    with pytest.raises(ValueError):
        MixBlock(16)(*_feats(c=16), torch.ones(3), (8, 8))


# --------------------------------------------------------------------------- the share constraint (§3.3)


@pytest.mark.parametrize("lam", [0.02, 0.25, 0.5, 0.7, 0.98])
@pytest.mark.parametrize("init", ["normal", "kaiming"])
def test_projection_ties_the_share_to_lambda_at_init(lam, init):
    torch.manual_seed(12)
    block = MixBlock(16, init=init, project=True)
    z_i, z_j = _feats(c=16, seed=13)
    m = block(z_i, z_j, lam, (8, 8)).detach()
    assert float((m[:, 0].flatten(1).mean(1) - lam).abs().max()) < 1e-4
    assert bool((m >= 0).all()) and bool((m <= 1).all())
    assert torch.allclose(m.sum(1), torch.ones(6, 8, 8), atol=1e-6)
    # Per-sample λ: each sample gets its own share.
    lams = torch.linspace(0.05, 0.95, 6)
    m = block(z_i, z_j, lams, (8, 8)).detach()
    assert float((m[:, 0].flatten(1).mean(1) - lams).abs().max()) < 1e-4


def test_projection_keeps_the_tie_after_training_and_gradients_reach_q_k_v():
    torch.manual_seed(14)
    block = MixBlock(16, init="kaiming", project=True)
    opt = torch.optim.Adam(block.parameters(), lr=3e-2)
    z_i, z_j = _feats(c=16, seed=15)
    target = torch.zeros(8, 8)
    target[:, :4] = 1.0  # something to learn: forget pixels on the left half
    for step in range(40):
        lam = torch.rand(6, generator=torch.Generator().manual_seed(step)) * 0.9 + 0.05
        m = block(z_i, z_j, lam, (8, 8))
        loss = -(m[:, 0] * target).mean()
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for name in ("query", "key", "value"):
                grad = getattr(block, name).weight.grad
                assert grad is not None and float(grad.abs().sum()) > 0, name
        opt.step()
    for lam in (0.1, 0.5, 0.9):
        m = block(z_i, z_j, lam, (8, 8)).detach()[:, 0]
        assert float((m.flatten(1).mean(1) - lam).abs().max()) < 1e-4
    m = block(z_i, z_j, 0.5, (8, 8)).detach()[:, 0]
    assert float(m[:, :, :4].mean()) > float(m[:, :, 4:].mean()) + 0.1  # it learned where, not how much


def test_project_share_by_hand():
    m = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])  # mean 0.5
    down = project_share(m, 0.25)  # mean > λ: M·λ/m
    assert torch.allclose(down, m * 0.5, atol=1e-7)
    up = project_share(m, 0.75)  # mean < λ: 1 − (1 − M)(1 − λ)/(1 − m)
    assert torch.allclose(up, 1 - (1 - m) * 0.5, atol=1e-7)
    assert torch.allclose(project_share(m, 0.5), m, atol=1e-7)
    flat = torch.zeros(1, 2, 2)  # an all-retain mask still reaches λ
    assert abs(float(project_share(flat, 0.3).mean()) - 0.3) < 1e-4


def test_share_penalty_is_automix_mask_loss():
    m_i = torch.stack([torch.full((4, 4), 0.9), torch.full((4, 4), 0.5), torch.full((4, 4), 0.2)])
    mask = torch.stack([m_i, 1 - m_i], 1)
    lam = torch.tensor([0.5, 0.55, 0.5])
    # |0.9-0.5| - 0.1 = 0.3; |0.5-0.55| - 0.1 < 0 -> 0; |0.2-0.5| - 0.1 = 0.2
    assert float(share_penalty(mask, lam, 0.1)) == pytest.approx((0.3 + 0.0 + 0.2) / 3, abs=1e-6)
    assert float(share_penalty(mask, lam, 0.0)) == pytest.approx((0.4 + 0.05 + 0.3) / 3, abs=1e-6)


def test_kaiming_init_gives_structure_from_the_first_step():
    z_i, z_j = _feats(c=16, seed=16)
    torch.manual_seed(17)
    flat = MixBlock(16, init="normal", project=True)(z_i, z_j, 0.5, (8, 8)).detach()[:, 0]
    torch.manual_seed(17)
    he = MixBlock(16, init="kaiming", project=True)(z_i, z_j, 0.5, (8, 8)).detach()[:, 0]
    spread = lambda m: float(m.flatten(1).std(1).mean())  # noqa: E731
    assert spread(flat) < 1e-5 and spread(he) > 100 * spread(flat)  # N(0, 0.01²): flat attention, flat mask
    with pytest.raises(ValueError, match="init"):
        MixBlock(16, init="xavier")
