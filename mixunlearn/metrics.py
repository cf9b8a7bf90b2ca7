"""Metrics (EVALUATION.md §2-3): accuracies on the protocol's splits, two membership-inference
attacks, and the gap to Retrain. All values are percentages (0-100).

Every split, train splits included, is scored in eval mode on un-augmented pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import UnlearnData

METRIC_SETS: dict[str, tuple[str, ...]] = {
    "class": ("test_r", "test_f", "asr"),
    "data": ("train_r", "train_f", "test", "asr"),
    "A": ("ua", "ra", "ta", "mia_efficacy"),
}
ALL_METRICS = ("test_r", "test_f", "train_r", "train_f", "test", "asr", "mia_efficacy", "ua", "ra", "ta", "tow",
               "tow_mia")
METRIC_HELP = {
    "test_r": "test accuracy on the retained classes",
    "test_f": "test accuracy on the forgotten class(es)",
    "train_r": "accuracy on the retain set D_r",
    "train_f": "accuracy on the forget set D_f (labels as stored in D)",
    "test": "accuracy on the whole test split",
    "asr": "membership-inference attack success on D_f vs held-out test samples (Shokri-style, LAF)",
    "mia_efficacy": "share of D_f an SVC confidence attacker calls non-member (SalUn/OPTML)",
    "ua": "unlearning accuracy: 100 - accuracy on D_f",
    "ra": "remaining accuracy: accuracy on D_r",
    "ta": "testing accuracy (without the forgotten class when class-wise)",
    "tow": "tug of war: 100 × Π over Train_f, Train_r, TA of (1 − |m − m_Retrain|/100); 100 = Retrain's accuracies",
    "tow_mia": "ToW with the forget-accuracy factor replaced by the attack's (ASR)",
}


def _channels_last(model: nn.Module) -> bool:
    """Whether the model's convolutions run in channels-last format (the fast recipes)."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits in eval mode, batched; restores the model's train/eval mode afterwards. Default batch:
    256 images for a channels-last model (about 2x faster on a CPU than 1024), else 1024 (as
    always: the reference recipes' numbers stay bit for bit)."""
    if batch_size is None:
        batch_size = 256 if _channels_last(model) else 1024
    was_training = model.training
    model.eval()
    try:
        if len(x) == 0:
            return model(x).float()
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_features(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        if len(x) == 0:
            return model.features(x).float()
        return torch.cat([model.features(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent; NaN for an empty split."""
    if len(y) == 0:
        return float("nan")
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def split_test_halves(n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint halves T_A / T_B of the test split, fixed per seed (EVALUATION.md §2.1)."""
    perm = np.random.default_rng(seed).permutation(n_test)
    return perm[: n_test // 2], perm[n_test // 2:]


def asr_features(probs: torch.Tensor) -> np.ndarray:
    """The ASR attacker's features: softmax outputs sorted in descending order."""
    return np.sort(_np(probs), axis=1)[:, ::-1]


def asr_attacker(probs_retain: torch.Tensor, probs_test: torch.Tensor, seed: int, max_train: int = 5000,
                 rng: np.random.Generator | None = None):
    """The ASR attacker of one model (EVALUATION.md §2.1), fitted on members = D_r vs non-members
    = T_A (``n = min(max_train, |D_r|, |T_A|)`` of each, drawn with ``rng``, default a fresh
    ``default_rng(seed)``); None when either side is empty. ``predict_proba(asr_features(p))[:, 1]``
    is its per-example membership score."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed) if rng is None else rng
    t_a, _ = split_test_halves(len(probs_test), seed)
    n = min(max_train, len(probs_retain), len(t_a))
    if n == 0:
        return None
    r_idx = rng.choice(len(probs_retain), n, replace=False)
    a_idx = rng.choice(t_a, n, replace=False)
    x_train = np.concatenate([asr_features(probs_retain[torch.as_tensor(r_idx)]),
                              asr_features(probs_test[torch.as_tensor(a_idx)])])
    y_train = np.concatenate([np.ones(n), np.zeros(n)])
    clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    clf.fit(x_train, y_train)
    return clf


def attack_success_rate(
    probs_retain: torch.Tensor,
    probs_forget: torch.Tensor,
    probs_test: torch.Tensor,
    seed: int,
    max_train: int = 5000,
    keep: dict | None = None,
) -> float:
    """ASR (EVALUATION.md §2.1). Features: softmax outputs sorted in descending order.

    The attacker learns members = D_r vs non-members = T_A, and is scored on D_f (members)
    vs T_B (non-members), balanced. A fresh attacker for every evaluated model. ``keep``: a dict
    that receives the fitted attacker as ``keep["attacker"]`` (for the per-example view).
    """
    rng = np.random.default_rng(seed)
    t_a, t_b = split_test_halves(len(probs_test), seed)
    n = min(max_train, len(probs_retain), len(t_a))
    m = min(len(probs_forget), len(t_b))
    if n == 0 or m == 0:
        return float("nan")
    clf = asr_attacker(probs_retain, probs_test, seed, max_train, rng=rng)
    if keep is not None:
        keep["attacker"] = clf
    f_idx = rng.choice(len(probs_forget), m, replace=False)
    b_idx = rng.choice(t_b, m, replace=False)
    x_eval = np.concatenate([asr_features(probs_forget[torch.as_tensor(f_idx)]),
                             asr_features(probs_test[torch.as_tensor(b_idx)])])
    y_eval = np.concatenate([np.ones(m), np.zeros(m)])
    return 100.0 * float((clf.predict(x_eval) == y_eval).mean())


def mia_efficacy(
    conf_retain: torch.Tensor,
    conf_nonmember: torch.Tensor,
    conf_forget: torch.Tensor,
    seed: int,
    cap: int = 5000,
) -> float:
    """MIA-Efficacy (EVALUATION.md §2.2): an RBF SVC on the true-label confidence, trained on
    D_r (member) vs test samples T' (non-member), equal numbers; the score is the share of D_f
    predicted non-member."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed + 1)
    n = min(cap, len(conf_retain), len(conf_nonmember))
    if n == 0 or len(conf_forget) == 0:
        return float("nan")
    mem = _np(conf_retain)[rng.choice(len(conf_retain), n, replace=False)]
    non = _np(conf_nonmember)[rng.choice(len(conf_nonmember), n, replace=False)]
    x = np.concatenate([mem, non])[:, None]
    y = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    pred = clf.predict(_np(conf_forget)[:, None])
    return 100.0 * float((pred == 0).mean())


def evaluate(
    model: nn.Module,
    data: UnlearnData,
    seed: int | None = None,
    attacks: bool = True,
    keep: dict | None = None,
    mia: bool = True,
) -> dict[str, float]:
    """Every metric of EVALUATION.md for one model on one task (labels are read here even for
    label-agnostic methods: evaluation may use them). ``keep``: a dict that receives the logits
    (``logits_train``, ``logits_test``) and the fitted ASR attacker (``attacker``), so the run's
    diagnostics reuse them instead of computing them again. ``mia=False`` leaves out MIA-efficacy
    (its SVM is about half of this function's time and in no gap's metric set; tuning skips it)."""
    if data.y_train is None or data.y_test is None:
        raise ValueError("evaluation needs the labelled task, not a label-agnostic view")
    seed = data.seed if seed is None else seed
    logits_train = predict_logits(model, data.x_train)
    logits_test = predict_logits(model, data.x_test)
    y_train, y_test = data.y_train, data.y_test
    f_idx, r_idx = data.forget_idx, data.retain_idx
    test_f_mask = data.test_forget_mask()
    if keep is not None:
        keep.update(logits_train=logits_train, logits_test=logits_test)
    out = {
        "test_r": accuracy(logits_test[~test_f_mask], y_test[~test_f_mask]),
        "test_f": accuracy(logits_test[test_f_mask], y_test[test_f_mask]),
        "train_r": accuracy(logits_train[r_idx], y_train[r_idx]),
        "train_f": accuracy(logits_train[f_idx], y_train[f_idx]),
        "test": accuracy(logits_test, y_test),
    }
    out["ua"] = 100.0 - out["train_f"]
    out["ra"] = out["train_r"]
    out["ta"] = out["test_r"] if data.spec.kind == "class" else out["test"]
    if attacks:
        p_train, p_test = logits_train.softmax(1), logits_test.softmax(1)
        out["asr"] = attack_success_rate(p_train[r_idx], p_train[f_idx], p_test, seed, keep=keep)
        if mia:
            conf_train = p_train.gather(1, y_train[:, None]).squeeze(1)
            conf_test = p_test.gather(1, y_test[:, None]).squeeze(1)
            nonmember = ~test_f_mask if data.spec.kind == "class" else torch.ones_like(test_f_mask)
            out["mia_efficacy"] = mia_efficacy(conf_train[r_idx], conf_test[nonmember], conf_train[f_idx], seed)
    return out


def metric_set(level: str) -> tuple[str, ...]:
    try:
        return METRIC_SETS[level]
    except KeyError:
        raise ValueError(f"unknown protocol {level!r}; known: {', '.join(METRIC_SETS)}") from None


def gap_to_retrain(method: Mapping[str, float], retrain: Mapping[str, float], level: str) -> float:
    """Mean over the protocol's metric set of |m_method - m_Retrain| (EVALUATION.md §2.3)."""
    keys = metric_set(level)
    diffs = [abs(float(method[k]) - float(retrain[k])) for k in keys if k in method and k in retrain]
    if len(diffs) != len(keys):
        missing = [k for k in keys if k not in method or k not in retrain]
        raise ValueError(f"gap to Retrain needs metrics {missing}")
    return float(np.mean(diffs))


def mean_std(values: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and (population-free, ddof=1 when n>1) standard deviation per metric over seeds."""
    keys = sorted({k for v in values for k in v})
    out = {}
    for k in keys:
        arr = np.array([v[k] for v in values if k in v], dtype=float)
        out[k] = (float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)
    return out


class ProbeAccuracy:
    """A progress callback that, on events carrying the model under training, measures its
    accuracy on small fixed probe sets of D_f and D_r and adds them to ``event.data["probe"]``
    (percent). Runs in the training thread; the model's train/eval mode is restored."""

    def __init__(self, data: UnlearnData, n: int = 64, every: int = 1, seed: int = 0):
        if data.y_train is None:
            raise ValueError("probe accuracies need the labelled task")
        g = torch.Generator().manual_seed(seed)
        f = data.forget_idx[torch.randperm(len(data.forget_idx), generator=g)[:n].to(data.forget_idx.device)]
        r = data.retain_idx[torch.randperm(len(data.retain_idx), generator=g)[:n].to(data.retain_idx.device)]
        self.xf, self.yf = data.x_train[f], data.y_train[f]
        self.xr, self.yr = data.x_train[r], data.y_train[r]
        self.every, self._count = max(1, every), 0

    def __call__(self, event) -> None:
        if event.model is None or not event.losses:
            return
        self._count += 1
        if self._count % self.every:
            return
        event.data["probe"] = {
            "forget_acc": accuracy(predict_logits(event.model, self.xf), self.yf),
            "retain_acc": accuracy(predict_logits(event.model, self.xr), self.yr),
        }
