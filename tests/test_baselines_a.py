"""Behaviour that defines each baseline of part 1 (issue 4): neggrad_plus, random_label,
boundary_shrink, boundary_expanding, l1_sparse, salun, ssd, unsir.

Every run uses a small subset of the session's digits task (forget class 3) and a short config.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mixunlearn.methods import get_method, make_config, run_method
from mixunlearn.methods import random_label as rl_module
from mixunlearn.methods._loop import MethodLoop, freeze, random_wrong_labels
from mixunlearn.progress import RunCancelled

MINE = ["neggrad_plus", "random_label", "boundary_shrink", "boundary_expanding", "l1_sparse", "salun", "ssd", "unsir"]


@pytest.fixture(scope="module")
def task(digits_class3):
    data, original, _ = digits_class3
    return data.subset(400, 120, seed=1), original


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("name", MINE)
def test_registered_with_family_defaults_and_cancellable(task, name):
    data, original = task
    spec = get_method(name)
    assert spec.labels == "aware"
    for family in ("digits", "cnn", "resnet"):
        make_config(name, family)  # every family's defaults pass the field bounds
    events = []

    def cancel(event):
        events.append(event)
        raise RunCancelled()

    with pytest.raises(RunCancelled):
        run_method(name, original, data, callbacks=[cancel])
    assert len(events) == 1  # stopped at the first report, not after the whole run


# --------------------------------------------------------------------------- random_label


def test_random_wrong_labels_are_uniform_over_wrong_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (20_000,), generator=g)
    drawn = random_wrong_labels(y, 10, g)
    assert not bool((drawn == y).any())
    assert int(drawn.min()) >= 0 and int(drawn.max()) <= 9
    for c in range(10):
        counts = torch.bincount(drawn[y == c], minlength=10).float()
        assert counts[c] == 0
        share = counts / counts.sum()
        others = share[torch.arange(10) != c]
        assert bool((others > 0.07).all()) and bool((others < 0.16).all())  # ~1/9 each


def test_random_label_never_assigns_the_true_label(task, monkeypatch):
    data, original = task
    seen = []

    def spy(y, n_classes, generator=None):
        out = random_wrong_labels(y, n_classes, generator)
        seen.append((y.clone(), out.clone()))
        return out

    monkeypatch.setattr(rl_module, "random_wrong_labels", spy)
    res = run_method("random_label", original, data, {"epochs": 3})
    assert len(seen) == 3  # fresh draws every epoch
    for y_in, y_out in seen:
        assert torch.equal(y_in, data.y_train[data.forget_idx])
        assert bool((y_out != y_in).all())
    assert not torch.equal(seen[0][1], seen[1][1])
    assert not _same_state(res.model, original)


# --------------------------------------------------------------------------- neggrad_plus


def test_neggrad_plus_with_beta_one_is_finetuning(task):
    data, original = task
    common = {"lr": 0.02, "epochs": 2, "batch_size": 32}
    ft = run_method("finetune", original, data, common).model
    ng1 = run_method("neggrad_plus", original, data, {**common, "beta": 1.0}).model
    assert _same_state(ft, ng1)
    ng = run_method("neggrad_plus", original, data, {**common, "beta": 0.9}).model
    assert not _same_state(ft, ng)
    # The ascent term raises the loss on D_f compared with plain fine-tuning.
    x, y = data.forget_x, data.forget_y
    with torch.no_grad():
        ce = [torch.nn.functional.cross_entropy(m.eval()(x), y).item() for m in (ft, ng)]
    assert ce[1] > ce[0]


# --------------------------------------------------------------------------- boundary_shrink


def test_boundary_shrink_targets_are_never_the_true_class(task):
    from mixunlearn.methods.boundary_shrink import nearest_wrong_class

    data, original = task
    f_d = freeze(copy.deepcopy(original))
    x, y = data.forget_x, data.forget_y
    for eps in (0.0, 0.1, 0.5):
        t = nearest_wrong_class(f_d, x, y, eps)
        assert bool((t != y).all())
    # With ε = 0 the attack is a no-op, so the target is the best class other than y on clean x.
    with torch.no_grad():
        top2 = f_d(x).topk(2, dim=1).indices
    expected = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    assert torch.equal(nearest_wrong_class(f_d, x, y, 0.0), expected)
    assert all(p.grad is None for p in f_d.parameters())


def test_boundary_shrink_moves_forget_samples_off_their_class(task):
    data, original = task
    res = run_method("boundary_shrink", original, data, {"lr": 1e-3, "epochs": 3})
    with torch.no_grad():
        before = (original.eval()(data.forget_x).argmax(1) == data.forget_y).float().mean()
        after = (res.model(data.forget_x).argmax(1) == data.forget_y).float().mean()
    assert after < before


# --------------------------------------------------------------------------- boundary_expanding


def test_boundary_expanding_prunes_the_shadow_output(task):
    data, original = task
    n = original.num_classes
    widths, shadow_prob = [], []

    def probe(event):
        if event.model is not None and event.losses:  # training steps (not the final flush)
            with torch.no_grad():
                out = event.model.eval()(data.forget_x)
            event.model.train()
            widths.append(out.shape[1])
            shadow_prob.append(float(out.softmax(1)[:, -1].mean()))

    cfg = {"lr": 1e-3, "epochs": 3, "batch_size": 4}  # ~30 steps: progress events every 10
    res = run_method("boundary_expanding", original, data, cfg, callbacks=[probe])
    assert len(widths) >= 2 and set(widths) == {n + 1}  # trained with the extra output ...
    assert shadow_prob[-1] > shadow_prob[0]  # ... towards the shadow class
    model = res.model
    assert type(model) is type(original) and model.num_classes == n  # ... and evaluated without it
    so, sm = original.state_dict(), model.state_dict()
    assert list(sm) == list(so) and all(sm[k].shape == so[k].shape for k in so)
    assert model(data.x_test[:7]).shape == (7, n)
    assert not _same_state(model, original)


# --------------------------------------------------------------------------- l1_sparse


def test_l1_gamma_decays_linearly_to_zero():
    from mixunlearn.methods.l1_sparse import L1SparseConfig, l1_gamma

    total, g = 37, 1e-4
    values = [l1_gamma(t, total, g) for t in range(total)]
    assert values[0] == pytest.approx(g) and values[-1] == 0.0
    steps = [a - b for a, b in zip(values, values[1:])]
    assert all(s == pytest.approx(g / (total - 1)) for s in steps)
    assert L1SparseConfig().gamma != 0.2
    with pytest.raises(ValueError):
        make_config("l1_sparse", "digits", {"gamma": 0.2})


def test_l1_term_lowers_the_parameter_norm_versus_finetuning(task):
    from mixunlearn.methods.l1_sparse import l1_norm

    data, original = task
    common = {"lr": 0.02, "epochs": 2, "batch_size": 32}
    ft = run_method("finetune", original, data, common).model
    l1 = run_method("l1_sparse", original, data, {**common, "gamma": 1e-3}).model
    with torch.no_grad():
        assert float(l1_norm(l1)) < float(l1_norm(ft))
    # With γ = 0 the penalty vanishes and l1_sparse is plain fine-tuning, step for step.
    assert _same_state(run_method("l1_sparse", original, data, {**common, "gamma": 0.0}).model, ft)


# --------------------------------------------------------------------------- salun


def test_salun_changes_only_the_weights_its_f_d_mask_selects(task):
    from mixunlearn.methods.salun import saliency_mask, weights_digest

    data, original = task
    cfg = {"lr": 0.05, "epochs": 2, "batch_size": 32, "weight_decay": 5e-3, "mask_ratio": 0.5}
    res = run_method("salun", original, data, cfg)
    assert res.extras["mask_source_digest"] == weights_digest(original)
    assert res.extras["mask_share"] == pytest.approx(0.5, abs=1e-3)

    f_d = copy.deepcopy(original)
    mask = saliency_mask(f_d, data, 0.5, 32)
    assert _same_state(f_d, original)  # computing the mask changes nothing
    before, after = _params(original), _params(res.model)
    changed_inside = 0
    for name, m in mask.items():
        assert torch.equal(after[name][~m], before[name][~m]), name  # bit-identical outside the mask
        changed_inside += int((after[name][m] != before[name][m]).sum())
    assert changed_inside > 0
    # The mask comes from f_D in eval mode: a mask at a different model would differ.
    other = run_method("finetune", original, data, {"epochs": 1}).model
    other_mask = saliency_mask(other, data, 0.5, 32)
    assert any(not torch.equal(mask[n], other_mask[n]) for n in mask)


# --------------------------------------------------------------------------- ssd


def test_ssd_only_shrinks_the_weights_it_selects(task):
    from mixunlearn.methods.ssd import importances

    data, original = task
    alpha, lam = 2.0, 1.0
    res = run_method("ssd", original, data, {"alpha": alpha, "lam": lam})
    before, after = _params(original), _params(res.model)
    f_d = copy.deepcopy(original)
    every = torch.arange(len(data.x_train))
    imp_d = importances(f_d, data, every, False)
    imp_f = importances(f_d, data, data.forget_idx, False)
    n_changed = n_selected = 0
    for name in before:
        b, a = before[name], after[name]
        assert bool((a.abs() <= b.abs()).all()), name  # magnitudes only shrink
        assert bool((a * b >= 0).all()), name  # and never change sign
        selected = imp_f[name] > alpha * imp_d[name]
        assert torch.equal(a[~selected], b[~selected]), name  # nothing outside the selection moves
        n_changed += int((a != b).sum())
        n_selected += int(selected.sum())
    assert 0 < n_changed <= n_selected == res.extras["selected"]
    # No optimiser step and no BatchNorm statistics update: every buffer is identical.
    bo, ba = dict(original.named_buffers()), dict(res.model.named_buffers())
    assert all(torch.equal(bo[k], ba[k]) for k in bo)


def test_ssd_dampens_batchnorm_parameters_too(task):
    data, original = task
    res = run_method("ssd", original, data, {"alpha": 0.0, "lam": 0.1})
    bn = [n for n, m in original.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn
    before, after = _params(original), _params(res.model)
    assert any(not torch.equal(before[f"{n}.weight"], after[f"{n}.weight"]) for n in bn)


def test_lf_ssd_reads_no_label(task):
    data, original = task
    spec = get_method("ssd")
    cfg = make_config("ssd", "digits", {"label_free": True, "alpha": 1.0})
    model = copy.deepcopy(original)
    out = spec.fn(model, data.without_labels(), cfg, device="cpu", callbacks=[])
    assert not _same_state(out.model, original)


# --------------------------------------------------------------------------- unsir


def test_unsir_refuses_data_level_specs(digits_dataset, task):
    from mixunlearn.data import make_split

    _, original = task  # never used for training: the refusal comes first
    data = make_split(digits_dataset, "data:5-9:0.4", seed=0)
    assert get_method("unsir").kinds == ("class",)
    with pytest.raises(ValueError, match="class"):
        run_method("unsir", original, data)
    spec = get_method("unsir")
    with pytest.raises(ValueError, match="class-wise"):
        spec.fn(copy.deepcopy(original), data, make_config("unsir", "digits"), device="cpu", callbacks=[])


def test_unsir_noise_is_a_full_batch_labelled_with_the_forgotten_class(task):
    from mixunlearn.methods.unsir import UnsirConfig, learn_noise

    data, original = task
    forgotten = data.spec.classes[0]
    assert forgotten != 0  # the reference's bug (label 0) would go unnoticed otherwise
    cfg = UnsirConfig(noise_size=48, noise_steps=15)
    f_d = freeze(copy.deepcopy(original))
    loop = MethodLoop("unsir", data, None, cfg.noise_steps)
    x, y = learn_noise(f_d, data, forgotten, cfg, loop)
    assert x.shape == (48, *data.x_train.shape[1:])
    assert bool((y == forgotten).all())
    assert len(torch.unique(x.flatten(1), dim=0)) == 48  # distinct images, not 3 repeated
    # The noise maximises f_D's error on the forgotten class, compared with its starting point.
    loop0 = MethodLoop("unsir", data, None, 1)
    x0, _ = learn_noise(f_d, data, forgotten, UnsirConfig(noise_size=48, noise_steps=1, noise_lr=1e-5), loop0)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy
        assert ce(f_d(x), y) > ce(f_d(x0), y)

    res = run_method("unsir", original, data, {"noise_size": 48, "noise_steps": 10, "noise_copies": 2,
                                               "retain_per_class": 30})
    assert res.extras["noise_classes"] == [forgotten] and res.extras["noise_images"] == 48
    with torch.no_grad():
        acc_f = (res.model(data.forget_x).argmax(1) == data.forget_y).float().mean()
        acc_f0 = (original.eval()(data.forget_x).argmax(1) == data.forget_y).float().mean()
    assert acc_f < acc_f0


# --------------------------------------------------------------------------- gradient-norm clip (RL, SalUn, SCRUB)


@pytest.mark.parametrize("name", ["random_label", "salun", "scrub"])
def test_gradient_clip_bounds_every_update(task, name):
    """``clip`` bounds each step's gradient norm: with a tiny clip the weights barely move, without it
    (0 = off, the default outside LAF's CNN) the same run moves them far more."""
    data, original = task
    common = {"lr": 0.01, "epochs": 1}
    free = run_method(name, original, data, {**common, "clip": 0.0}).model
    tight = run_method(name, original, data, {**common, "clip": 1e-6}).model
    start = _params(original)

    def moved(model):
        return max((p.detach() - start[n]).abs().max().item() for n, p in model.named_parameters())

    assert moved(free) > 1e-3
    assert moved(tight) < 1e-4 < moved(free)


def test_cnn_family_clips_the_methods_that_collapsed_on_fashion_mnist():
    for name, clip in (("random_label", 5.0), ("salun", 5.0), ("scrub", 50.0)):
        assert make_config(name, "cnn").clip == clip and make_config(name, "digits").clip == 0.0
