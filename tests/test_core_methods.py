"""Behaviour that defines the core issue's two simple baselines: Fine-tune (trains on D_r only) and
NegGrad (gradient ascent on D_f only, optionally stopped early at a forget-accuracy target)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from mixunlearn.methods import make_config, run_method
from mixunlearn.metrics import predict_logits


@pytest.fixture(scope="module")
def task(digits_class3):
    data, original, _ = digits_class3
    return data.subset(400, 120, seed=2), original


def _ce(model, x, y) -> float:
    return float(F.cross_entropy(predict_logits(model, x), y))


def _acc(model, x, y) -> float:
    return 100.0 * float((predict_logits(model, x).argmax(1) == y).float().mean())


def _with_train_labels(data, y_new):
    return dataclasses.replace(data, y_train=y_new)


def _messages(events):
    return [e.message for e in events if e.message]


def test_neggrad_ascends_the_forget_loss_and_reads_only_forget_labels(task):
    data, original = task
    cfg = make_config("neggrad", "digits", {"epochs": 1, "lr": 5e-2, "batch_size": 8})
    res = run_method("neggrad", original, data, cfg)
    assert _ce(res.model, data.forget_x, data.forget_y) > _ce(original, data.forget_x, data.forget_y) + 0.5
    # Garbage labels on the retain set change nothing: NegGrad never reads them.
    y = data.y_train.clone()
    y[data.retain_idx] = (y[data.retain_idx] + 1) % data.n_classes
    again = run_method("neggrad", original, _with_train_labels(data, y), cfg)
    for a, b in zip(res.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_finetune_changes_the_model_and_reads_no_forget_label(task):
    data, original = task
    cfg = make_config("finetune", "digits", {"epochs": 1})
    res = run_method("finetune", original, data, cfg)
    y = data.y_train.clone()
    y[data.forget_idx] = (y[data.forget_idx] + 1) % data.n_classes
    again = run_method("finetune", original, _with_train_labels(data, y), cfg)
    for a, b in zip(res.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(res.model.parameters(), original.parameters()))


def test_neggrad_stops_within_an_epoch_when_checked_every_few_steps(task):
    data, original = task
    total = {}
    events = []

    def seen(ev):
        events.append(ev)
        total["n"] = ev.total

    cfg = make_config("neggrad", "digits", {"epochs": 5, "lr": 5e-2, "batch_size": 8, "stop_forget_acc": 50.0,
                                            "check_every": 2})
    res = run_method("neggrad", original, data, cfg, callbacks=[seen])
    stops = [m for m in _messages(events) if m.startswith("stopped early at step")]
    assert len(stops) == 1
    step = int(stops[0].split("at step ")[1].split(":")[0])
    assert step % 2 == 0 and step < total["n"]  # checked on every 2nd step, long before the budget ran out
    assert _acc(res.model, data.forget_x, data.forget_y) <= 50.0
    assert max(e.step for e in events) == step  # nothing ran after the stop


def test_neggrad_epoch_checks_and_no_target(task):
    data, original = task
    events = []
    cfg = make_config("neggrad", "digits", {"epochs": 5, "lr": 5e-2, "batch_size": 8, "stop_forget_acc": 50.0})
    run_method("neggrad", original, data, cfg, callbacks=[events.append])
    assert any(m.startswith("stopped early after epoch") for m in _messages(events))
    events.clear()
    cfg = make_config("neggrad", "digits", {"epochs": 1, "lr": 5e-2, "batch_size": 8, "check_every": 2})
    run_method("neggrad", original, data, cfg, callbacks=[events.append])  # no target: check_every is inert
    assert not any("stopped early" in m for m in _messages(events))
