"""SimLoss, Sharpen, the batched contrastive sum S_τ and the objectives of METHOD.md §4
(acceptance properties 8, 9, 10 and 15)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mixunlearn.losses import contrastive_sum, gen_loss, mix_loss, pair_terms, real_loss, sharpen, sim_loss


def _probs(n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, c, generator=g), dim=1)


def test_property_10_simloss_range_identity_and_one_hot():
    a, b = _probs(64, 10, 0), _probs(64, 10, 1)
    s = sim_loss(a, b)
    assert s.shape == (64,)
    assert bool((s >= 0).all()) and bool((s <= 1).all())
    assert torch.allclose(sim_loss(a, a), torch.zeros(64), atol=1e-6)
    # Orthogonal probability vectors are as far apart as SimLoss allows.
    e0, e1 = F.one_hot(torch.tensor([0]), 3).float(), F.one_hot(torch.tensor([1]), 3).float()
    assert torch.allclose(sim_loss(e0, e1), torch.ones(1))
    # One-hot target: 1 - a_y / ||a||.
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    expected = 1 - a[torch.arange(64), y] / a.norm(dim=1)
    assert torch.allclose(sim_loss(a, F.one_hot(y, 10).float()), expected, atol=1e-6)
    # Cosine form: the same as 1 - cosine similarity.
    assert torch.allclose(sim_loss(a, b), 1 - F.cosine_similarity(a, b, dim=1), atol=1e-6)


def test_property_10_sharpen_rows_argmax_identity_entropy():
    logits = 2 * torch.randn(32, 10, generator=torch.Generator().manual_seed(3))
    q = sharpen(logits, 0.3)
    assert torch.allclose(q.sum(1), torch.ones(32), atol=1e-6)
    assert torch.equal(q.argmax(1), logits.argmax(1))
    assert torch.allclose(sharpen(logits, 1.0), torch.softmax(logits, 1), atol=1e-7)

    def entropy(p):
        return -(p * p.clamp_min(1e-30).log()).sum(1)

    assert bool((entropy(sharpen(logits, 0.3)) < entropy(sharpen(logits, 1.0))).all())
    assert bool((entropy(sharpen(logits, 0.1)) < entropy(sharpen(logits, 0.3))).all())
    # The textbook form q^{1/T} / sum q^{1/T} agrees where it does not underflow.
    p = torch.softmax(logits, 1)
    textbook = p ** (1 / 0.5) / (p ** (1 / 0.5)).sum(1, keepdim=True)
    assert torch.allclose(sharpen(logits, 0.5), textbook, atol=1e-6)
    # ... and softmax(logits / T) does not underflow where the textbook form does.
    extreme = torch.tensor([[0.0, -60.0, -80.0]])
    assert torch.isfinite(sharpen(extreme, 0.1)).all()
    with pytest.raises(ValueError):
        sharpen(logits, 0.0)


def _loop_s(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """Σ_k log(exp(a_k) / Σ_m exp(b_m / τ)) with plain Python loops (float64)."""
    a, b = a.double().tolist(), b.double().tolist()
    denom = sum(math.exp(bm / tau) for bm in b)
    return sum(math.log(math.exp(ak) / denom) for ak in a)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 5.0, 20.0])
def test_property_9_vectorised_s_equals_loop(tau):
    probs, p_r, p_f = _probs(16, 10, 4), _probs(16, 10, 5), _probs(16, 10, 6)
    lam = 0.3
    a, b = pair_terms(probs, p_r, p_f, lam)
    # The terms themselves, by hand.
    assert torch.allclose(a, 0.7 * sim_loss(probs, p_r))
    assert torch.allclose(b, 0.3 * sim_loss(probs, p_f))
    s_sum = contrastive_sum(a, b, tau, "sum")
    assert float(s_sum) == pytest.approx(_loop_s(a, b, tau), rel=1e-5)
    assert float(contrastive_sum(a, b, tau, "mean")) == pytest.approx(_loop_s(a, b, tau) / 16, rel=1e-5)


def test_property_8_gen_is_minus_mix_and_sum_is_n_times_mean():
    probs, p_r, p_f = _probs(12, 10, 7), _probs(12, 10, 8), _probs(12, 10, 9)
    lam = torch.tensor(0.62)
    for red in ("mean", "sum"):
        for tau in (0.5, 2.0):
            assert torch.equal(gen_loss(probs, p_r, p_f, lam, tau, red), -mix_loss(probs, p_r, p_f, lam, tau, red))
    assert torch.allclose(mix_loss(probs, p_r, p_f, lam, 1.0, "sum"), 12 * mix_loss(probs, p_r, p_f, lam, 1.0, "mean"))
    real_sum, real_mean = real_loss(probs, p_r, p_f, p_f, 1.0, "sum"), real_loss(probs, p_r, p_f, p_f, 1.0, "mean")
    assert torch.allclose(real_sum, 12 * real_mean)
    with pytest.raises(ValueError):
        mix_loss(probs, p_r, p_f, lam, 1.0, "max")


def test_real_loss_matches_eq6_by_hand():
    pr, tr, pf, tf = _probs(10, 10, 10), _probs(10, 10, 11), _probs(10, 10, 12), _probs(10, 10, 13)
    c = [float(sim_loss(pr[j:j + 1], tr[j:j + 1])) for j in range(10)]
    d = [float(sim_loss(pf[i:i + 1], tf[i:i + 1])) for i in range(10)]
    expected = sum(c) - 10 * math.log(sum(math.exp(x / 2.0) for x in d))
    assert float(real_loss(pr, tr, pf, tf, 2.0, "sum")) == pytest.approx(expected, rel=1e-5)


def test_gradient_directions_of_mix_loss():
    """Minimising L_mix pulls the mix towards the retain target and away from the forget target."""
    logits = torch.zeros(8, 4, requires_grad=True)
    p_r = F.one_hot(torch.full((8,), 1), 4).float()
    p_f = F.one_hot(torch.full((8,), 0), 4).float()
    mix_loss(torch.softmax(logits, 1), p_r, p_f, 0.5, 1.0).backward()
    g = logits.grad
    assert bool((g[:, 1] < 0).all())  # descent raises the retain class logit
    assert bool((g[:, 0] > 0).all())  # ... and lowers the forget class logit


def test_property_15_toy_l_real():
    """3-class 2-D blobs, an under-trained MLP, D_f = class 0: 100 Adam steps (lr 1e-2) on L_real
    alone with τ = 1 lower the retain SimLoss and raise the forget SimLoss by at least 0.2."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = torch.arange(3).repeat_interleave(100)
    x = centres[y] + 0.7 * torch.randn(300, 2, generator=g)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(3):  # under-trained: a few CE steps only
        opt.zero_grad()
        F.cross_entropy(mlp(x), y).backward()
        opt.step()
    targets = F.one_hot(y, 3).float()
    f, r = y == 0, y != 0

    def sims():
        with torch.no_grad():
            p = torch.softmax(mlp(x), 1)
            return float(sim_loss(p[r], targets[r]).mean()), float(sim_loss(p[f], targets[f]).mean())

    r0, f0 = sims()
    assert r0 >= 0.1, f"the MLP is too well trained for this toy ({r0:.3f})"
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    xr, xf = x[r], x[f]
    gi = torch.Generator().manual_seed(1)
    for _ in range(100):
        br = torch.randint(0, len(xr), (32,), generator=gi)
        bf = torch.randint(0, len(xf), (32,), generator=gi)
        loss = real_loss(torch.softmax(mlp(xr[br]), 1), targets[r][br], torch.softmax(mlp(xf[bf]), 1),
                         targets[f][bf], 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    r1, f1 = sims()
    assert r1 < r0
    assert f1 - f0 >= 0.2, (f0, f1)
