"""Metrics against hand-computed values on tiny tensors, and both attacks' direction on digits."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from mixunlearn.data import ForgetSpec, UnlearnData
from mixunlearn.datasets import DATASETS
from mixunlearn.metrics import (
    ProbeAccuracy,
    accuracy,
    attack_success_rate,
    evaluate,
    gap_to_retrain,
    mean_std,
    mia_efficacy,
    predict_logits,
    split_test_halves,
)
from mixunlearn.progress import ProgressEvent

INFO = DATASETS["digits"]


class LookupModel(nn.Module):
    """Predicts a fixed class per image; the image's id is stored in pixel (0, 0, 0)."""

    def __init__(self, predictions: dict[int, int]):
        super().__init__()
        table = torch.zeros(max(predictions) + 1, 10)
        for i, c in predictions.items():
            table[i, c] = 5.0
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 1000).round().long()]


def images(ids) -> torch.Tensor:
    x = torch.zeros(len(ids), 1, 8, 8)
    x[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32) / 1000
    return x


def task(spec: ForgetSpec, y_train, forget_idx, y_test) -> UnlearnData:
    n, m = len(y_train), len(y_test)
    forget = torch.tensor(forget_idx)
    retain = torch.tensor([i for i in range(n) if i not in forget_idx])
    return UnlearnData(INFO, spec, 0, images(range(n)), torch.tensor(y_train), torch.tensor(y_train), forget,
                       retain, images(range(100, 100 + m)), torch.tensor(y_test))


# train: ids 0..9, test: ids 100..104
Y_TRAIN = [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
P_TRAIN = [0, 1, 1, 1, 2, 0, 3, 0, 3, 1]
Y_TEST = [0, 1, 2, 3, 3]
P_TEST = [0, 2, 2, 3, 0]
MODEL = LookupModel({**dict(enumerate(P_TRAIN)), **{100 + i: p for i, p in enumerate(P_TEST)}})


def test_accuracies_per_split_class_level():
    d = task(ForgetSpec("class", (3,)), Y_TRAIN, [6, 7, 8, 9], Y_TEST)
    m = evaluate(MODEL, d, attacks=False)
    # D_r = ids 0..5, predictions right on 0, 2, 3, 4 -> 4/6; D_f = ids 6..9, right on 6, 8 -> 2/4
    assert m["train_r"] == pytest.approx(100 * 4 / 6)
    assert m["train_f"] == pytest.approx(50.0)
    # test: classes 0,1,2 (ids 100..102) right on 100, 102 -> 2/3; class 3 (103, 104) right on 103 -> 1/2
    assert m["test_r"] == pytest.approx(100 * 2 / 3)
    assert m["test_f"] == pytest.approx(50.0)
    assert m["test"] == pytest.approx(60.0)
    assert m["ua"] == pytest.approx(50.0) and m["ra"] == pytest.approx(100 * 4 / 6)
    assert m["ta"] == pytest.approx(100 * 2 / 3)  # class-wise: without the forgotten class
    assert "asr" not in m and "mia_efficacy" not in m


def test_accuracies_per_split_data_level():
    # Forget ids 1 and 8 (classes 0 and 3); the "unseen" test samples are those of classes 0 and 3.
    d = task(ForgetSpec("data", (0, 3), 0.5), Y_TRAIN, [1, 8], Y_TEST)
    m = evaluate(MODEL, d, attacks=False)
    assert m["train_f"] == pytest.approx(50.0)  # id 1 wrong, id 8 right
    assert m["train_r"] == pytest.approx(100 * 5 / 8)  # ids 0,2,3,4,5,6,7,9 -> right on 0,2,3,4,6
    assert m["test"] == pytest.approx(60.0)
    assert m["ta"] == pytest.approx(60.0)  # data-level: the whole test split
    assert m["test_f"] == pytest.approx(100 * 2 / 3)  # ids 100, 103, 104 -> right on 100, 103
    assert m["test_r"] == pytest.approx(50.0)  # ids 101, 102 -> right on 102


def test_noisy_train_f_uses_the_stored_labels():
    y_noisy = list(Y_TRAIN)
    y_noisy[7] = 0  # id 7 is predicted 0: right against the stored (noisy) label
    d = task(ForgetSpec("noisy", (3,), 0.5), y_noisy, [6, 7], Y_TEST)
    d.y_clean = torch.tensor(Y_TRAIN)
    assert evaluate(MODEL, d, attacks=False)["train_f"] == pytest.approx(100.0)


def test_empty_splits_give_nan_not_errors():
    assert math.isnan(accuracy(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)))
    d = task(ForgetSpec("class", (3,)), Y_TRAIN, [6, 7, 8, 9], [0, 1, 2])  # no test sample of class 3
    m = evaluate(MODEL, d, attacks=True)
    assert math.isnan(m["test_f"])
    assert m["test_r"] == pytest.approx(100 * 2 / 3)
    assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in m.values())


def test_evaluate_needs_labels():
    d = task(ForgetSpec("class", (3,)), Y_TRAIN, [6, 7, 8, 9], Y_TEST)
    with pytest.raises(ValueError, match="label-agnostic"):
        evaluate(MODEL, d.without_labels())


def test_predict_logits_restores_mode_and_batches():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Dropout(0.9))
    x = torch.rand(7, 1, 8, 8)
    model.train()
    out = predict_logits(model, x, batch_size=3)
    assert model.training  # mode restored
    with torch.no_grad():
        assert torch.allclose(out, model.eval()(x))  # eval mode inside (dropout off), all batches


def test_gap_to_retrain_by_hand():
    method = {"test_r": 90.0, "test_f": 10.0, "asr": 50.0, "train_r": 0.0}
    retrain = {"test_r": 95.0, "test_f": 0.0, "asr": 40.0, "train_r": 100.0}
    assert gap_to_retrain(method, retrain, "class") == pytest.approx((5 + 10 + 10) / 3)
    method = {"train_r": 99.0, "train_f": 90.0, "test": 97.0, "asr": 52.0}
    retrain = {"train_r": 100.0, "train_f": 96.0, "test": 98.0, "asr": 50.0}
    assert gap_to_retrain(method, retrain, "data") == pytest.approx((1 + 6 + 1 + 2) / 4)
    a = {"ua": 10.0, "ra": 90.0, "ta": 80.0, "mia_efficacy": 20.0}
    b = {"ua": 20.0, "ra": 95.0, "ta": 85.0, "mia_efficacy": 40.0}
    assert gap_to_retrain(a, b, "A") == pytest.approx((10 + 5 + 5 + 20) / 4)
    assert gap_to_retrain(b, b, "A") == 0.0
    with pytest.raises(ValueError, match="asr"):
        gap_to_retrain({"test_r": 1.0, "test_f": 1.0}, retrain | {"test_r": 1.0, "test_f": 1.0}, "class")
    with pytest.raises(ValueError, match="unknown protocol"):
        gap_to_retrain(a, b, "B")


def test_mean_std_by_hand():
    out = mean_std([{"a": 1.0, "b": 5.0}, {"a": 3.0}, {"a": 8.0, "b": 5.0}])
    assert out["a"][0] == pytest.approx(4.0)
    assert out["a"][1] == pytest.approx(math.sqrt(((1 - 4) ** 2 + (3 - 4) ** 2 + (8 - 4) ** 2) / 2))  # ddof=1
    assert out["b"] == (5.0, 0.0)
    assert mean_std([{"a": 2.5}])["a"] == (2.5, 0.0)


# --------------------------------------------------------------------------- attacks on controlled inputs


def _confident(n, k=10):
    p = torch.full((n, k), 0.001)
    p[:, 0] = 1 - 0.001 * (k - 1)
    return p


def _flat(n, k=10):
    return torch.full((n, k), 1.0 / k)


def test_asr_on_separable_inputs():
    # Members (D_r) are confident, non-members (test) are flat; the attacker learns that exactly.
    members, test = _confident(40), _flat(40)
    assert attack_success_rate(members, _confident(10), test, seed=0) == pytest.approx(100.0)
    # A forget set that looks like unseen data is called non-member: only the T_B half is right.
    assert attack_success_rate(members, _flat(10), test, seed=0) == pytest.approx(50.0)
    assert math.isnan(attack_success_rate(members, _flat(0), test, seed=0))


def test_asr_features_are_sorted_probabilities():
    # Confidence in class 0 or in class 7 is the same feature once sorted: still a member.
    members, test = _confident(40), _flat(40)
    rolled = torch.roll(_confident(10), 7, dims=1)
    assert attack_success_rate(members, rolled, test, seed=0) == pytest.approx(100.0)


def test_mia_efficacy_on_separable_inputs():
    member_conf, nonmember_conf = torch.full((30,), 0.99), torch.full((30,), 0.2)
    assert mia_efficacy(member_conf, nonmember_conf, torch.full((5,), 0.2), seed=0) == pytest.approx(100.0)
    assert mia_efficacy(member_conf, nonmember_conf, torch.full((5,), 0.99), seed=0) == pytest.approx(0.0)
    mixed = torch.tensor([0.99, 0.2, 0.2, 0.99])
    assert mia_efficacy(member_conf, nonmember_conf, mixed, seed=0) == pytest.approx(50.0)
    assert math.isnan(mia_efficacy(member_conf, nonmember_conf, torch.zeros(0), seed=0))


def test_test_halves_are_disjoint_and_seeded():
    a, b = split_test_halves(11, seed=3)
    assert len(a) == 5 and len(b) == 6 and not set(a) & set(b) and set(a) | set(b) == set(range(11))
    a2, _ = split_test_halves(11, seed=3)
    assert np.array_equal(a, a2)
    assert not np.array_equal(split_test_halves(100, 1)[0], split_test_halves(100, 2)[0])


def test_attacks_direction_on_digits(digits_class3):
    data, original, retrain = digits_class3
    m_orig = evaluate(original, data, seed=0)
    m_retr = evaluate(retrain, data, seed=0)
    # The original memorised D_f: the attacker calls it member far more often than for Retrain.
    assert m_orig["asr"] > m_retr["asr"] + 10
    # ... and the SVC calls D_f non-member far less often.
    assert m_orig["mia_efficacy"] < m_retr["mia_efficacy"] - 10
    for m in (m_orig, m_retr):
        assert all(0.0 <= m[k] <= 100.0 for k in ("asr", "mia_efficacy"))
    # Deterministic per seed: a fresh attacker with the same seed gives the same score.
    again = evaluate(original, data, seed=0)
    assert again["asr"] == m_orig["asr"] and again["mia_efficacy"] == m_orig["mia_efficacy"]


def test_probe_accuracy_callback(digits_class3):
    data, original, _ = digits_class3
    probe = ProbeAccuracy(data, n=32, seed=0)
    training = copy.deepcopy(original).train()
    ev = ProgressEvent("m", "unlearn", 1, 10, losses={"l": 1.0}, model=training)
    probe(ev)
    assert training.training  # the model under training is left in train mode
    p = ev.data["probe"]
    assert set(p) == {"forget_acc", "retain_acc"}
    assert p["forget_acc"] == pytest.approx(accuracy(predict_logits(original, probe.xf), probe.yf))
    assert p["forget_acc"] >= 90.0 and p["retain_acc"] >= 90.0  # the original knows both
    assert (probe.yf == 3).all() and not (probe.yr == 3).any()
    no_model = ProgressEvent("m", "unlearn", 1, 10, losses={"l": 1.0})
    probe(no_model)
    assert "probe" not in no_model.data
    every_other = ProbeAccuracy(data, n=8, every=2)
    evs = [ProgressEvent("m", "unlearn", i, 10, losses={"l": 1.0}, model=original) for i in range(4)]
    for e in evs:
        every_other(e)
    assert ["probe" in e.data for e in evs] == [False, True, False, True]
