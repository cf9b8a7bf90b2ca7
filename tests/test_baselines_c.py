"""Defining mechanisms of DELETE, SFR-on, SCRUB+R, EU-k and CF-k: each test fails when its method's
mechanism is taken out (masked forget logit, Fisher-ratio mask, rewind, re-initialisation, frozen
trunk). Small subsets of the digits class-3 task and tiny budgets keep the file fast.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_baselines_b import _same_state, _state
from torch.nn import functional as F

from mixunlearn.methods import _last_k as lk
from mixunlearn.methods import delete as delete_mod
from mixunlearn.methods import make_config, run_method
from mixunlearn.methods import scrub_r as scrub_r_mod
from mixunlearn.methods import sfr_on as sfr_mod
from mixunlearn.methods._loop import MethodLoop
from mixunlearn.models import build_model


@torch.no_grad()
def _forget_acc(model, data) -> float:
    model.eval()
    return float((model(data.forget_x).argmax(1) == data.forget_y).float().mean())


# --------------------------------------------------------------------------- DELETE


@pytest.fixture(scope="module")
def task(digits_class3):
    """The same digits task as tests/test_baselines_b.py's."""
    data, original, _ = digits_class3
    return data.subset(300, 80, seed=1), original


def test_delete_target_puts_zero_mass_on_each_samples_own_label():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g) * 4
    y = torch.tensor([0, 1, 4, 4, 2, 3])  # data level: every sample masks its own label
    p = delete_mod.delete_targets(z, y)
    assert torch.equal(p[torch.arange(6), y], torch.zeros(6))
    assert torch.allclose(p.sum(1), torch.ones(6))
    # the rest is the teacher's softmax renormalised over the other classes
    q = torch.softmax(z, 1)
    q[torch.arange(6), y] = 0
    assert torch.allclose(p, q / q.sum(1, keepdim=True), atol=1e-6)


def test_delete_forgets_through_the_masked_teacher(task, monkeypatch):
    data, original = task
    cfg = {"epochs": 5, "lr": 0.01}
    calls = []
    real = delete_mod.delete_targets

    def spy(z, y):
        calls.append(y.clone())
        return real(z, y)

    monkeypatch.setattr(delete_mod, "delete_targets", spy)
    res = run_method("delete", original, data, cfg)
    assert calls and all(torch.isin(c, data.forget_y).all() for c in calls)  # D_f batches, their own labels
    assert _forget_acc(original, data) > 0.9
    # Without the mask the teacher's target equals the student's output: nothing would be forgotten.
    assert _forget_acc(res.model, data) < 0.5


# --------------------------------------------------------------------------- EU-k / CF-k


@pytest.mark.parametrize("model_name, names", [
    ("digits_cnn", ["block1.0", "block1.1", "block2.0", "embed.1", "head"]),
    ("cnn2", ["conv1", "conv2", "fc1", "head.0", "head.1"]),
    ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
])
def test_layers_per_model_family(model_name, names):
    model = build_model(model_name, seed=0)
    units = lk.layer_units(model)
    assert [n for n, _ in units] == names
    # every parameter belongs to exactly one layer
    owned = [id(p) for _, mods in units for m in mods for p in m.parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    with pytest.raises(ValueError, match=f"has {len(names)} layers"):
        lk.split_last_k(model, len(names) + 1, "eu_k")


def _last_k_keys(model, k):
    _, modules = lk.split_last_k(model, k, "test")
    return lk.trainable_names(model, modules)


def test_eu_k_reinitialises_the_last_k_layers_and_keeps_the_trunk(task):
    data, original = task
    cfg = make_config("eu_k", "digits", {"epochs": 1, "lr": 1e-6})
    res = run_method("eu_k", original, data, cfg)
    last = _last_k_keys(original, cfg.k)
    before, after = original.state_dict(), res.model.state_dict()
    assert res.extras["layers"] == ["block2.0", "embed.1", "head"]
    for key in after:
        if key in last:
            if after[key].is_floating_point() and after[key].numel() > 1 and "running" not in key:
                # re-initialised: far from f_D (1e-6 of SGD cannot move it this much)
                assert (after[key] - before[key]).abs().max() > 1e-2, key
        else:
            assert torch.equal(after[key], before[key]), key  # the trunk, BN statistics included


def test_cf_k_trains_only_the_last_k_layers(task):
    data, original = task
    cfg = make_config("cf_k", "digits", {"epochs": 1, "k": 2, "lr": 0.05})
    res = run_method("cf_k", original, data, cfg)
    last = _last_k_keys(original, 2)
    assert last == {"embed.1.weight", "embed.1.bias", "head.weight", "head.bias"}
    before, after = original.state_dict(), res.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k not in last)  # trunk bit-identical
    assert all(not torch.equal(after[k], before[k]) for k in last)  # the last k layers trained


# --------------------------------------------------------------------------- SCRUB+R


def test_rewind_rule():
    assert scrub_r_mod.rewind_index([0.0, 40.0, 90.0, 100.0], 85.0) == 2
    assert scrub_r_mod.rewind_index([0.0, 10.0, 10.0], 10.0) == 1  # first on ties
    assert scrub_r_mod.rewind_index([0.0, 10.0], float("nan")) == 1  # no held-out reference: the last


SCRUB_SHORT = {"epochs": 2, "msteps": 1, "forget_batch_size": 16, "retain_batch_size": 64, "lr": 0.01}


def test_scrub_r_returns_the_checkpoint_its_rule_picks(task, monkeypatch):
    data, original = task
    res = run_method("scrub_r", original, data, SCRUB_SHORT)
    errors, ref, chosen = (res.extras[k] for k in ("forget_errors", "reference_error", "rewind_epoch"))
    assert len(errors) == SCRUB_SHORT["epochs"] + 1
    assert chosen == scrub_r_mod.rewind_index(errors, ref)
    if chosen == 0:
        expected = original
    else:
        expected = run_method("scrub", original, data, {**SCRUB_SHORT, "epochs": chosen}).model
    assert _same_state(_state(res.model), _state(expected))

    # Force a rewind: a reference error of 0 picks the first checkpoint with the lowest D_f error,
    # f_D itself, which differs from SCRUB's final student.
    monkeypatch.setattr(scrub_r_mod, "reference_error", lambda model, data: 0.0)
    forced = run_method("scrub_r", original, data, SCRUB_SHORT)
    assert forced.extras["rewind_epoch"] == 0 and forced.extras["forget_errors"][0] == 0.0
    assert _same_state(_state(forced.model), _state(original))
    final = run_method("scrub", original, data, SCRUB_SHORT).model
    assert not _same_state(_state(final), _state(original))


class _NoEvalSplit:
    """Evaluation tensors that fail on any use."""

    def __getattr__(self, name):
        raise AssertionError("SCRUB+R read the evaluation split")

    def __getitem__(self, item):
        raise AssertionError("SCRUB+R read the evaluation split")


def test_scrub_r_with_a_fixed_rewind_epoch_reads_no_evaluation_data(task):
    """``rewind_epoch = e`` (chosen on validation) returns the student after e epochs without reading
    the evaluation split; the held-out rule (-1) does read it."""
    data, original = task
    blind = copy.copy(data)
    blind.x_test, blind.y_test = _NoEvalSplit(), _NoEvalSplit()
    fixed = run_method("scrub_r", original, blind, {**SCRUB_SHORT, "rewind_epoch": 1}, device="cpu")
    assert fixed.extras["rewind_epoch"] == 1 and fixed.extras["rewind_rule"] == "fixed"
    expected = run_method("scrub", original, data, {**SCRUB_SHORT, "epochs": 1}).model
    assert _same_state(_state(fixed.model), _state(expected))
    assert run_method("scrub_r", original, blind, {**SCRUB_SHORT, "rewind_epoch": 99},
                      device="cpu").extras["rewind_epoch"] == SCRUB_SHORT["epochs"]  # at most `epochs`
    with pytest.raises((AssertionError, TypeError)):  # the rule reads the evaluation split's labels
        run_method("scrub_r", original, blind, SCRUB_SHORT, device="cpu")


# --------------------------------------------------------------------------- SFR-on


def _fisher(model, data, idx, batch_size):
    """Mean over index-order batches of the squared CE gradient, in eval mode (written out here)."""
    model = copy.deepcopy(model).eval()
    acc, n = {k: torch.zeros_like(p) for k, p in model.named_parameters()}, 0
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        model.zero_grad()
        F.cross_entropy(model(data.x_train[b]), data.y_train[b]).backward()
        for k, p in model.named_parameters():
            acc[k] += p.grad ** 2
        n += 1
    return {k: v / n for k, v in acc.items()}


def test_sfr_on_mask_is_the_forget_to_remain_fisher_ratio(task, monkeypatch):
    data, original = task
    cfg = make_config("sfr_on", "digits", {"steps": 5, "forget_every": 1})
    seen = []
    real = sfr_mod.forget_step

    def spy(model, opt, x, y, alpha, cfg_, mask):
        seen.append(mask)
        return real(model, opt, x, y, alpha, cfg_, mask)

    monkeypatch.setattr(sfr_mod, "forget_step", spy)
    res = run_method("sfr_on", original, data, cfg)
    f_f = _fisher(original, data, data.forget_idx, cfg.batch_size)
    f_r = _fisher(original, data, data.retain_idx, cfg.batch_size)
    ratio = {k: (f_f[k] + 1e-15) / (f_r[k] + 1e-15) for k in f_f}
    assert len(seen) == 5 and all(m is seen[0] for m in seen)
    mask = seen[0]
    # Entries far from the threshold must agree (rounding may flip those at ratio ≈ 1).
    for k in ratio:
        clear = (ratio[k] - 1).abs() > 1e-3
        assert torch.equal(mask[k][clear], (ratio[k] >= 1)[clear]), k
    # The remain geometry matters: the forget Fisher alone (F_r := 1) would give another mask.
    alone = {k: f_f[k] + 1e-15 >= 1.0 * (1 + 1e-15) for k in f_f}
    assert any(not torch.equal(mask[k], alone[k]) for k in mask)
    share = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert 0.0 < share < 1.0 and res.extras["mask_share"] == pytest.approx(share)


def test_sfr_on_forget_step_moves_only_salient_weights(task):
    data, original = task
    cfg = make_config("sfr_on", "digits")
    model = copy.deepcopy(original)
    loop = MethodLoop("sfr_on", data, None, 100)
    mask = sfr_mod.remain_balanced_mask(
        sfr_mod.fisher_diag(model, loop, data.forget_idx, data.y_train, 64, 0),
        sfr_mod.fisher_diag(model, loop, data.retain_idx, data.y_train, 64, 0), cfg.threshold)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # no weight decay: only gradients move
    model.train()
    b = data.forget_idx[:32]
    sfr_mod.forget_step(model, opt, data.x_train[b], data.y_train[b], 25.0, cfg, mask)
    moved_in = 0
    for k, p in model.named_parameters():
        assert torch.equal(p.detach()[~mask[k]], before[k][~mask[k]]), k  # outside the mask: untouched
        moved_in += int((p.detach()[mask[k]] != before[k][mask[k]]).sum())
    assert moved_in > 0
