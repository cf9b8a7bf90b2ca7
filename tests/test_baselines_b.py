"""Defining behaviours of the baselines SCRUB, Bad Teacher (T-S), LAF, LAF+R, RandLabel and L-Mix.

Every run uses a small subset of the digits class-3 task and a short config, so the file stays fast.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from mixunlearn.methods import bad_teacher as bt_mod
from mixunlearn.methods import get_method, make_config, run_method
from mixunlearn.methods import laf as laf_mod
from mixunlearn.methods import lmix as lmix_mod
from mixunlearn.methods import randlabel as rl_mod
from mixunlearn.methods import scrub as scrub_mod
from mixunlearn.progress import RunCancelled

SHORT = {
    "scrub": {"epochs": 2, "msteps": 1, "forget_batch_size": 16, "retain_batch_size": 64},
    "bad_teacher": {"epochs": 1, "batch_size": 64, "lr": 1e-3},
    "laf": {"epochs": 2, "vae_epochs": 1, "batch_size": 16},
    "laf_r": {"epochs": 1, "vae_epochs": 1, "batch_size": 16, "head_epochs": 1},
    "randlabel": {"epochs": 2, "batch_size": 16},
    "l_mix": {"epochs": 2, "vae_epochs": 1, "batch_size": 16},
}


@pytest.fixture(scope="module")
def task(digits_class3):
    data, original, _ = digits_class3
    return data.subset(300, 80, seed=1), original


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _head_names(model) -> set[str]:
    return {f"head.{k}" for k in model.head.state_dict()}


def _rows_in(rows: torch.Tensor, pool: torch.Tensor) -> bool:
    """Every row of ``rows`` is (exactly) some row of ``pool``."""
    flat_rows, flat_pool = rows.flatten(1), pool.flatten(1)
    dist = torch.cdist(flat_rows, flat_pool, compute_mode="donot_use_mm_for_euclid_dist")
    return bool((dist.min(dim=1).values == 0).all())


# --------------------------------------------------------------------------- label-agnostic methods


def _garbage_labels(data):
    """``data`` with every label replaced by random classes (images, split and spec unchanged)."""
    g = torch.Generator().manual_seed(123)
    garbage = dataclasses.replace(
        data,
        y_train=torch.randint(0, 10, data.y_train.shape, generator=g),
        y_clean=torch.randint(0, 10, data.y_train.shape, generator=g),
        y_test=torch.randint(0, 10, data.y_test.shape, generator=g),
    )
    assert not torch.equal(garbage.y_train[data.forget_idx], data.y_train[data.forget_idx])
    assert not torch.equal(garbage.y_train[data.retain_idx], data.y_train[data.retain_idx])
    return garbage


def _call_directly(name, original, data, overrides):
    """The method's own function on a copy of ``original``, *not* through run_method (which hands
    label-agnostic methods a label-free view): the labels in ``data`` are there to be read."""
    out = get_method(name).fn(copy.deepcopy(original), data, make_config(name, original.family, overrides),
                              device=torch.device("cpu"), callbacks=[])
    return getattr(out, "model", out)


@pytest.mark.parametrize("name", ["laf", "randlabel", "l_mix", "bad_teacher"])
def test_label_agnostic_methods_ignore_garbage_labels(task, name):
    """Called with the true labels and with garbage labels in reach, a label-agnostic method gives
    the same weights bit for bit: any label it read would change them."""
    data, original = task
    assert get_method(name).labels == "agnostic"
    a = _call_directly(name, original, data, SHORT[name])
    b = _call_directly(name, original, _garbage_labels(data), SHORT[name])
    assert _same_state(_state(a), _state(b))
    # ...and the method did something: the weights moved away from f_D.
    assert not _same_state(_state(a), _state(original))


def test_garbage_labels_change_a_label_reading_method(task):
    """The control of the test above: the same harness tells a method that reads labels (SCRUB's CE
    on D_r) by its weights."""
    data, original = task
    assert get_method("scrub").labels == "aware"
    a = _call_directly("scrub", original, data, SHORT["scrub"])
    b = _call_directly("scrub", original, _garbage_labels(data), SHORT["scrub"])
    assert not _same_state(_state(a), _state(b))


@pytest.mark.parametrize("name", ["laf", "randlabel", "l_mix", "bad_teacher"])
def test_label_agnostic_methods_run_on_a_label_free_view(task, name):
    data, original = task
    view = data.without_labels()
    spec = get_method(name)
    # Called directly, bypassing run_method: reading any label would raise PermissionError.
    out = spec.fn(copy.deepcopy(original), view, make_config(name, original.family, SHORT[name]),
                  device=torch.device("cpu"), callbacks=[])
    model = getattr(out, "model", out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- SCRUB


def _record_forward_calls(model, data):
    """A pre-hook that logs, for every forward in *train* mode (the student; the teacher is always
    in eval mode), whether its batch consists of D_f images or of D_r images."""
    calls: list[str] = []
    forget_x, retain_x = data.forget_x, data.retain_x

    def hook(module, args):
        if module.training:
            x = args[0]
            if _rows_in(x, forget_x):
                calls.append("f")
            elif _rows_in(x, retain_x):
                calls.append("r")
            else:
                calls.append("?")

    return calls, hook


def test_scrub_max_steps_only_in_epochs_up_to_msteps(task):
    data, original = task
    model = copy.deepcopy(original)
    calls, hook = _record_forward_calls(model, data)
    model.register_forward_pre_hook(hook)
    cfg = {"epochs": 4, "msteps": 2, "forget_batch_size": 8, "retain_batch_size": 64}
    events = []
    run_method("scrub", model, data, cfg, device="cpu", callbacks=[events.append])

    n_f_batches = -(-len(data.forget_idx) // 8)
    n_r_batches = -(-len(data.retain_idx) // 64)
    assert "?" not in calls
    assert calls.count("f") == 2 * n_f_batches  # max passes in epochs 1 and 2 only
    assert calls.count("r") == 4 * n_r_batches  # a min pass in every epoch
    # Order: epoch 1 = f..f r..r, epoch 2 = f..f r..r, epochs 3-4 = r..r only.
    one = ["f"] * n_f_batches + ["r"] * n_r_batches
    assert calls == one + one + ["r"] * (2 * n_r_batches)
    max_epochs = [e.data["epoch"] for e in events if e.data.get("pass") == "max"]
    min_epochs = [e.data["epoch"] for e in events if e.data.get("pass") == "min"]
    assert max_epochs == [1, 2]
    assert min_epochs == [1, 2, 3, 4]


def test_scrub_without_max_steps_never_touches_forget_set(task):
    data, original = task
    model = copy.deepcopy(original)
    calls, hook = _record_forward_calls(model, data)
    model.register_forward_pre_hook(hook)
    run_method("scrub", model, data, {"epochs": 2, "msteps": 0, "retain_batch_size": 64}, device="cpu")
    assert calls and set(calls) == {"r"}


def test_scrub_teacher_is_frozen_copy_of_original(task, monkeypatch):
    data, original = task
    made = []

    real = scrub_mod.make_teacher

    def capture(model):
        teacher = real(model)
        made.append(teacher)
        return teacher

    monkeypatch.setattr(scrub_mod, "make_teacher", capture)
    student = run_method("scrub", original, data, SHORT["scrub"], device="cpu").model
    assert len(made) == 1
    teacher = made[0]
    assert _same_state(_state(teacher), _state(original))  # BN statistics included
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not _same_state(_state(student), _state(original))


def test_scrub_learning_rate_milestones():
    cfg = scrub_mod.ScrubConfig(lr=1.0, lr_decay_epochs=(3, 5, 9), lr_decay_rate=0.1)
    # One decay per milestone the epoch number has passed (epoch > milestone).
    expected = {1: 1.0, 3: 1.0, 4: 0.1, 5: 0.1, 6: 0.01, 9: 0.01, 10: 0.001}
    for epoch, lr in expected.items():
        assert scrub_mod.scrub_lr(cfg, epoch) == pytest.approx(lr)


def test_scrub_kl_is_teacher_to_student_times_t_squared():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    temp = 4.0
    p_t = torch.softmax(t / temp, 1)
    p_s = torch.softmax(s / temp, 1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * temp ** 2
    assert scrub_mod.scrub_kl(s, t, temp).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert scrub_mod.scrub_kl(t, t, temp).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- Bad Teacher


def test_bad_teacher_incompetent_teacher_is_random_and_never_trained(task, monkeypatch):
    data, original = task
    made = []
    real = bt_mod.make_incompetent_teacher

    def capture(model, seed):
        teacher = real(model, seed)
        made.append((teacher, _state(teacher)))
        return teacher

    monkeypatch.setattr(bt_mod, "make_incompetent_teacher", capture)
    student = run_method("bad_teacher", original, data.without_labels(), {"epochs": 3, "batch_size": 64,
                                                                           "lr": 1e-3}, device="cpu").model
    assert len(made) == 1
    teacher, at_creation = made[0]
    assert _same_state(_state(teacher), at_creation)  # never trained, BN statistics untouched
    assert all(not p.requires_grad for p in teacher.parameters())
    original_state = _state(original)
    differs = [k for k in at_creation if at_creation[k].is_floating_point()
               and not torch.equal(at_creation[k], original_state[k])]
    assert any(k.endswith("weight") for k in differs)  # a fresh network, not f_D
    # The student moved towards the bad teacher on D_f: KL(bad ‖ student) fell.
    with torch.no_grad():
        teacher.eval()
        p_bad = torch.softmax(teacher(data.forget_x), 1)

        def kl_to_bad(m):
            m.eval()
            return (p_bad * (p_bad.log() - torch.log_softmax(m(data.forget_x), 1))).sum(1).mean().item()

        assert kl_to_bad(student) < kl_to_bad(original)


# --------------------------------------------------------------------------- LAF / LAF+R


def test_laf_vaes_fit_on_original_embeddings_and_stay_frozen(task, monkeypatch):
    data, original = task
    fits = []
    real = laf_mod.fit_vae

    def capture(embeddings, cfg, loop, name):
        vae = real(embeddings, cfg, loop, name)
        fits.append((name, embeddings.clone(), vae, _state(vae)))
        return vae

    monkeypatch.setattr(laf_mod, "fit_vae", capture)
    out = run_method("laf", original, data, SHORT["laf"], device="cpu").model
    assert [f[0] for f in fits] == ["all", "f"]
    original.eval()
    with torch.no_grad():
        e_all = original.features(data.x_train)
        e_f = original.features(data.forget_x)
    torch.testing.assert_close(fits[0][1], e_all, rtol=1e-5, atol=1e-5)  # V_all: all of D, f_D's embeddings
    torch.testing.assert_close(fits[1][1], e_f, rtol=1e-5, atol=1e-5)  # V_f: D_f, f_D's embeddings
    for _, _, vae, state in fits:
        assert _same_state(_state(vae), state)  # frozen through the unlearning stage
        assert not vae.training
        assert all(not p.requires_grad and p.grad is None for p in vae.parameters())
    # The unlearning itself did run: the extractor moved.
    assert not _same_state(_state(out), _state(original))


def test_laf_changes_only_the_extractor(task):
    data, original = task
    out = run_method("laf", original, data, SHORT["laf"], device="cpu").model
    before, after = _state(original), _state(out)
    head = _head_names(original)
    assert all(torch.equal(before[k], after[k]) for k in head)  # its losses never reach the head
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in head)


def test_laf_r_head_stage_changes_only_the_head(task):
    data, original = task
    cfg = SHORT["laf_r"]
    laf_cfg = {k: v for k, v in cfg.items() if not k.startswith("head_")}
    after_laf = _state(run_method("laf", original, data, laf_cfg, device="cpu").model)
    after_laf_r = _state(run_method("laf_r", original, data, cfg, device="cpu").model)
    head = _head_names(original)
    # Same LAF stage (same seed), then only the head moves.
    assert all(torch.equal(after_laf[k], after_laf_r[k]) for k in after_laf if k not in head)
    assert any(not torch.equal(after_laf[k], after_laf_r[k]) for k in head)
    # With the LAF stage switched off, everything but the head is f_D's.
    only_head = _state(run_method("laf_r", original, data, {**cfg, "epochs": 0}, device="cpu").model)
    before = _state(original)
    assert all(torch.equal(before[k], only_head[k]) for k in before if k not in head)
    assert any(not torch.equal(before[k], only_head[k]) for k in head)


def test_laf_alignment_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    e_r, o_r, e_f, o_f = (torch.randn(5, 7, generator=g) for _ in range(4))
    tau = 3.0
    c_r = 1 - torch.nn.functional.cosine_similarity(e_r, o_r)
    c_f = 1 - torch.nn.functional.cosine_similarity(e_f, o_f)
    by_hand = sum(torch.log(torch.exp(c) / torch.exp(c_f / tau).sum()) for c in c_r)
    got = laf_mod.alignment_loss(e_r, o_r, e_f, o_f, tau, "sum")
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert laf_mod.alignment_loss(e_r, o_r, e_f, o_f, tau, "mean").item() == pytest.approx(by_hand.item() / 5,
                                                                                          rel=1e-5)


def test_laf_cancel_is_honoured_during_vae_training(task):
    data, original = task
    phases = []

    def cancel_in_vae(event):
        phases.append(event.phase)
        if event.phase == "vae":
            raise RunCancelled()

    with pytest.raises(RunCancelled):
        run_method("laf", original, data, {**SHORT["laf"], "vae_epochs": 50}, device="cpu",
                   callbacks=[cancel_in_vae])
    assert phases[-1] == "vae" and "unlearn" not in phases


# --------------------------------------------------------------------------- RandLabel


def test_randlabel_random_targets_exclude_argmax_of_original(task, monkeypatch):
    data, original = task
    draws = []
    real = rl_mod.random_targets

    def capture(n, n_classes, generator, device, exclude=None):
        r = real(n, n_classes, generator, device, exclude)
        draws.append((None if exclude is None else exclude.clone(), r.clone()))
        return r

    monkeypatch.setattr(rl_mod, "random_targets", capture)
    bs = 16
    run_method("randlabel", original, data, {"epochs": 2, "batch_size": bs, "exclude_argmax": True}, device="cpu")
    n_batches = -(-len(data.forget_idx) // bs)
    assert len(draws) == 2 * n_batches
    for excl, r in draws:
        assert excl is not None and not (r == excl).any()
    # What was excluded over one epoch is exactly f_D's predicted class of every D_f sample.
    original.eval()
    with torch.no_grad():
        pred = original(data.forget_x).argmax(1)
    epoch1 = torch.cat([d[0] for d in draws[:n_batches]])
    assert torch.equal(epoch1.sort().values, pred.sort().values)


def test_randlabel_plain_draw_is_uniform_over_all_classes():
    g = torch.Generator().manual_seed(0)
    r = rl_mod.random_targets(20000, 10, g, "cpu")
    counts = torch.bincount(r, minlength=10).float()
    assert (counts > 1700).all() and (counts < 2300).all()
    excl = torch.full((20000,), 4)
    r2 = rl_mod.random_targets(20000, 10, g, "cpu", excl)
    counts2 = torch.bincount(r2, minlength=10).float()
    assert counts2[4] == 0
    others = torch.cat([counts2[:4], counts2[5:]])
    assert (others > 1900).all() and (others < 2550).all()


def test_randlabel_is_not_label_reading_but_changes_forget_outputs(task):
    data, original = task
    cfg = {"epochs": 5, "batch_size": 16}
    out = _call_directly("randlabel", original, data, cfg)
    # The same call with garbage labels in reach gives the same weights: no label was read.
    assert _same_state(_state(out), _state(_call_directly("randlabel", original, _garbage_labels(data), cfg)))
    out.eval()
    original.eval()
    with torch.no_grad():
        conf_before = torch.softmax(original(data.forget_x), 1).max(1).values.mean()
        conf_after = torch.softmax(out(data.forget_x), 1).max(1).values.mean()
    assert conf_after < conf_before  # pulled towards random one-hots: less confident on D_f


# --------------------------------------------------------------------------- L-Mix


def test_lmix_vanilla_mix_by_hand():
    """λ weights the forget image, 1 − λ the retain image: values worked out by hand."""
    x_f = torch.tensor([[0.0, 1.0, 2.0, -4.0]])
    x_r = torch.tensor([[4.0, 5.0, 10.0, 4.0]])
    torch.testing.assert_close(lmix_mod.vanilla_mix(x_f, x_r, torch.tensor(0.25)),
                               torch.tensor([[3.0, 4.0, 8.0, 2.0]]))
    torch.testing.assert_close(lmix_mod.vanilla_mix(x_f, x_r, torch.tensor(0.5)),
                               torch.tensor([[2.0, 3.0, 6.0, 0.0]]))
    assert torch.equal(lmix_mod.vanilla_mix(x_f, x_r, torch.tensor(1.0)), x_f)
    assert torch.equal(lmix_mod.vanilla_mix(x_f, x_r, torch.tensor(0.0)), x_r)


def test_lmix_mixed_inputs_are_convex_combinations_of_forget_and_retain_images(task, monkeypatch):
    data, original = task
    mixes, targets = [], []
    real_mix, real_error = lmix_mod.vanilla_mix, lmix_mod.prob_sq_error

    def capture_mix(x_f, x_r, lam):
        out = real_mix(x_f, x_r, lam)
        mixes.append((x_f.clone(), x_r.clone(), float(lam), out.clone()))
        return out

    def capture_target(probs, target):
        targets.append(target.detach().clone())
        return real_error(probs, target)

    monkeypatch.setattr(lmix_mod, "vanilla_mix", capture_mix)
    monkeypatch.setattr(lmix_mod, "prob_sq_error", capture_target)
    run_method("l_mix", original, data, SHORT["l_mix"], device="cpu")
    assert len(mixes) == 2 * -(-len(data.forget_idx) // SHORT["l_mix"]["batch_size"]) == len(targets)
    original.eval()
    lams = []
    for (x_f, x_r, lam, out), target in zip(mixes, targets):
        assert 0.0 < lam < 1.0
        lams.append(lam)
        assert _rows_in(x_f, data.forget_x) and _rows_in(x_r, data.retain_x)
        # Each mixed image lies on the segment from its retain image to its forget image: its position
        # t along the segment (a least-squares fit per image) leaves no residual, and it is the
        # batch's λ, one for the whole batch.
        d, o = (x_f - x_r).flatten(1).double(), (out - x_r).flatten(1).double()
        moving = d.norm(dim=1) > 0
        t = (o * d).sum(1)[moving] / (d * d).sum(1)[moving]
        torch.testing.assert_close(o[moving], t[:, None] * d[moving], atol=1e-5, rtol=0)
        torch.testing.assert_close(t, torch.full_like(t, lam), atol=1e-5, rtol=0)
        lo, hi = torch.minimum(x_f, x_r), torch.maximum(x_f, x_r)
        assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()
        # The target weighs the random one-hot by the images' own mix weight t and f_D's output on
        # the retain partner by 1 - t: what is left after the retain part is t on one class, 0 elsewhere.
        with torch.no_grad():
            p_r = torch.softmax(original(x_r).double(), dim=1)
        rest = target.double() - (1 - t.mean()) * p_r
        top = rest.max(dim=1)
        torch.testing.assert_close(top.values, torch.full_like(top.values, float(t.mean())), atol=1e-5, rtol=0)
        off = rest.clone()
        off[torch.arange(len(off)), top.indices] = 0.0
        assert off.abs().max() < 1e-5
    assert len(set(lams)) > 1  # a fresh λ per batch


def test_lmix_mix_term_changes_the_result_and_weight_zero_is_laf(task):
    data, original = task
    cfg = {**SHORT["l_mix"], "lr_ra": 1e-4}
    with_mix = _state(run_method("l_mix", original, data, cfg, device="cpu").model)
    no_mix = _state(run_method("l_mix", original, data, {**cfg, "mix_weight": 0.0}, device="cpu").model)
    assert not _same_state(with_mix, no_mix)
    # With weight 0 the head receives no gradient at all, as in LAF.
    head = _head_names(original)
    before = _state(original)
    assert all(torch.equal(before[k], no_mix[k]) for k in head)


def test_lmix_with_weight_zero_gives_lafs_weights(task):
    """L-Mix with mix_weight 0 and LAF with the same LAF settings end on the same weights. One batch
    pair (D_f fits one batch, one epoch): the mix term draws λ, a permutation and targets from the
    method's generator even at weight 0, so from the second pair on the two runs' batches differ."""
    data, original = task
    assert len(data.forget_idx) <= 64
    lmix_cfg = make_config("l_mix", original.family, {"epochs": 1, "vae_epochs": 1, "batch_size": 64,
                                                      "mix_weight": 0.0})
    laf_cfg = make_config("laf", original.family, {f.name: getattr(lmix_cfg, f.name)
                                                   for f in dataclasses.fields(laf_mod.LAFConfig)})
    lmix0 = _state(run_method("l_mix", original, data, lmix_cfg, device="cpu").model)
    laf = _state(run_method("laf", original, data, laf_cfg, device="cpu").model)
    assert not _same_state(laf, _state(original))  # the step moved the weights
    assert _same_state(lmix0, laf)
    # Control: with its mix term on, the same single step lands elsewhere.
    lmix1 = _state(run_method("l_mix", original, data, dataclasses.replace(lmix_cfg, mix_weight=1.0),
                              device="cpu").model)
    assert not _same_state(lmix1, laf)
