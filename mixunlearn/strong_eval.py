"""Strong evaluation (issue 14): per-example forgetting quality from model pools, a U-LiRA-style
attack, relearn time and a linear probe.

**Source.** The forget score, its ε and the final score restate the rules of the NeurIPS 2023
Machine Unlearning Challenge's scoring code (google-deepmind/unlearning_evaluation, ``metric.py``
and ``main.py``, commit ffae0ff), in our own code. The rules, as that code applies them:

1. *Confidence.* For a forget example (x, y) under one model, ``log p_y − log(1 − p_y)`` with
   ``1 − p_y`` summed over the wrong classes, each term's probability floored by adding 1e-45
   (``compute_logit_scaled_confidence``, adapted there from LiRA's ``score.py``).
2. *Per-example ε.* For each forget example, the N confidences under the retrained models and the
   N under the unlearned ones. The "positive" group is the one with the larger *median* (ties:
   the unlearned group). (``compute_forget_score_from_confs``)

   - *Zero-spread rule:* with the ranges (max − min) of the two groups, if smaller / larger < 0.01,
     ε = 50 (a peaky unlearned distribution is the worst case; the thresholds might miss it).
   - *Single-threshold family:* ``ceil((max − min) · 100)`` thresholds evenly from the smallest to
     the largest confidence of both groups; predict positive when ``conf ≥ t``.
   - *Double-threshold family:* the group of the smaller range is taken as positive ("peakier";
     on equal ranges, the median-negative group); ``w`` = the smaller range; right thresholds:
     ``ceil((max_ − min_) · 100)`` evenly from ``min_ = P.min + w − 2`` to ``max_ = P.max + 2``;
     for each right threshold ``r``, 400 left thresholds evenly from ``r − w − 2`` to
     ``r − w + 2``; predict positive when ``l ≤ conf ≤ r``.
   - For every threshold, FPR and FNR over the models. If FPR + FNR = 0 (and TPR + TNR = 2): ε = ∞
     (perfect separation). Else if FPR · FNR = 0 the threshold is discarded (too few samples).
     Else ε_t = max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR), NaN terms ignored,
     clipped below at 0, δ = 1e-5; a threshold where both terms are NaN is discarded.
   - ε = the largest ε_t, clipped to [0, 50].
3. *Bucket score.* ``E = ceil(ln(N − 1))`` (N = unlearned models); buckets [0, 0.5), [0.5, 1), …
   whose upper end is ≤ E are worth 1, ½, ¼, …; an example scores the points of the first
   bucket with ε < its upper end, 0 if ε lies past the last one. With N ≤ 2 there is no bucket
   and every example scores 0, so the CLI asks for N ≥ 3.
4. *Forget quality* = the mean over forget examples of the points; *final score* (``main.py``) =
   forget quality × (mean RA of the unlearned / mean RA of the retrained) × (mean TA of the
   unlearned / mean TA of the retrained), means over each pool's models, no cap at 1.

**Deviations (on purpose).**

- The confidence is computed from log-sum-exps of the logits (``z_y − logsumexp_{j≠y} z_j`` with
  the 1e-45 floor applied in log space), which equals the challenge's float64 value up to
  rounding; no probability is formed.
- Threshold rates are counted with sorted arrays (``searchsorted``) in float64 instead of
  comparing every threshold with every model on a GPU; our grids are float64 where the challenge's
  single-threshold grid is float32 (``torch.linspace``), which can only matter for a confidence
  sitting exactly on a threshold (docs/metrics.md §2.2).
- Where no threshold survives (the two groups are the same single point: both ranges 0) the
  challenge stops on an assertion; we return ε = 0 (nothing tells the groups apart). The
  released ``_get_epsilons`` also asserts on a NumPy array (``assert thr_eps``), which as
  written raises for more than one surviving threshold; we read it as "some threshold survives".
- TA is the test accuracy on the retained classes (``test_r``) for class-level forgetting (the
  project's ``ta``, EVALUATION.md §3): the challenge forgot random examples, and there a model
  that keeps the forgotten class would otherwise gain TA against Retrain. For data-level and
  noisy specs TA is the accuracy on the whole test split, as in the challenge.

**U-LiRA-style attack** (Hayes et al., 2024, "Inexact Unlearning Needs More Careful
Evaluations"): per forget example, Gaussians fitted to the confidences under the retrained and
under the unlearned pool; a target model is scored ``log N(c; μ_u, σ_u) − log N(c; μ_r, σ_r)``
(higher: "unlearned, not retrained"). Every model of both pools is a target in turn, and its own
confidences are left out of the fit (leave-one-out; unbiased variance, σ floored at 0.01). TPR at
1 % and 0.1 % FPR over all (model, example) pairs, in percent. Hayes et al. train shadow models
on random splits; here both pools share the task's forget set, which is what the issue asks.

**Relearn time.** Fine-tuning on D_f alone from the evaluated model, with the task recipe's
optimiser, learning rate, weight decay and batch size (batch ≤ |D_f|, no augmentation, no
schedule), in train mode; the accuracy on D_f (eval mode, at most 1,000 fixed examples) is
checked before the first step and after each step; relearn steps = the first count at which it is
≥ the original model's accuracy on the same examples − 5 points. Runs that reach ``cap`` steps
are reported at the cap and counted in ``relearn_capped``.

**Linear probe.** Frozen penultimate features (``model.features``), standardised, a multinomial
logistic regression (C = 1 in scikit-learn's sense, fitted with full-batch L-BFGS in torch);
class-level: trained on at most 5,000 examples of D
(labels as stored), scored on the test examples of the forgotten classes; data-level and noisy:
trained on D_r, scored on D_f (labels as stored). Percent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .estimate import format_seconds

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
DOUBLE_BUFFER = 2.0
SPREAD_RATIO = 0.01
PROB_FLOOR = 1e-45
BUCKET_SIZE = 0.5
RELEARN_MARGIN = 5.0  # percentage points
ULIRA_SIGMA_FLOOR = 1e-2
POOL_MIN, POOL_MAX = 3, 512


# --------------------------------------------------------------------------- confidences


def logit_scaled_confidence(logits: torch.Tensor, targets: torch.Tensor, floor: bool = True) -> np.ndarray:
    """``log p_y − log(1 − p_y)`` per row, float64, from the logits (challenge rule 1). With
    ``floor`` each probability gets the challenge's + 1e-45 (values stay within about ±103.6)."""
    z = logits.detach().to(torch.float64).cpu()
    y = targets.detach().to(torch.int64).cpu()
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"logits must be [n, classes] with one target per row, got {tuple(z.shape)} and {len(y)}")
    total = torch.logsumexp(z, 1)
    log_p = z.gather(1, y[:, None]).squeeze(1) - total
    others = z.clone()
    others[torch.arange(len(y)), y] = -math.inf
    log_q = torch.logsumexp(others, 1) - total
    if floor:
        f = torch.tensor(math.log(PROB_FLOOR), dtype=torch.float64)
        log_p, log_q = torch.logaddexp(log_p, f), torch.logaddexp(log_q, f)
    return (log_p - log_q).numpy()


# --------------------------------------------------------------------------- ε per example


def _linspace(start: float, stop: float, num: int) -> np.ndarray:
    return np.linspace(start, stop, num=num)


def _count_ge(sorted_x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return len(sorted_x) - np.searchsorted(sorted_x, t, side="left")


def _count_between(sorted_x: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """How many values lie in [left, right] (0 where left > right)."""
    return np.maximum(np.searchsorted(sorted_x, right, side="right") - np.searchsorted(sorted_x, left, side="left"), 0)


def _single_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tpr, fnr, fpr, tnr) of the single-threshold family: positive when conf ≥ t."""
    lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
    t = _linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
    tp = _count_ge(np.sort(pos), t)
    fp = _count_ge(np.sort(neg), t)
    return tp / len(pos), (len(pos) - tp) / len(pos), fp / len(neg), (len(neg) - fp) / len(neg)


def _double_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tpr, fnr, fpr, tnr) of the double-threshold family: positive when l ≤ conf ≤ r, the
    positive group being the one of the smaller range (the peakier distribution)."""
    pos_range, neg_range = np.ptp(pos), np.ptp(neg)
    width = min(pos_range, neg_range)
    if pos_range >= neg_range:
        pos, neg = neg, pos
    lo = pos.min() + width - DOUBLE_BUFFER
    hi = pos.max() + DOUBLE_BUFFER
    right = _linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
    n_left = int(math.ceil(2 * DOUBLE_BUFFER * THRESHOLDS_PER_UNIT))
    # For each right threshold r, n_left left thresholds from r - w - 2 to r - w + 2, computed as
    # np.linspace does (start + i * step, the last one set to stop exactly).
    start = right - width - DOUBLE_BUFFER
    stop = right - width + DOUBLE_BUFFER
    step = (stop - start) / (n_left - 1)
    left = start[:, None] + np.arange(n_left)[None, :] * step[:, None]
    left[:, -1] = stop
    right_b = np.broadcast_to(right[:, None], left.shape)
    tp = _count_between(np.sort(pos), left, right_b).ravel()
    fp = _count_between(np.sort(neg), left, right_b).ravel()
    return tp / len(pos), (len(pos) - tp) / len(pos), fp / len(neg), (len(neg) - fp) / len(neg)


def threshold_epsilons(tpr, fnr, fpr, tnr, delta: float = DELTA) -> np.ndarray:
    """ε per threshold (challenge rule 2): ∞ on perfect separation, NaN for discarded thresholds."""
    tpr, fnr, fpr, tnr = (np.asarray(a, dtype=np.float64) for a in (tpr, fnr, fpr, tnr))
    perfect = (fpr + fnr == 0) & (tpr + tnr == 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(1 - delta - fpr) - np.log(fnr)
        b = np.log(1 - delta - fnr) - np.log(fpr)
        both = np.where(np.isnan(a), b, np.where(np.isnan(b), a, np.maximum(a, b)))
    eps = np.maximum(both, 0.0)  # NaN stays NaN
    eps = np.where(fpr * fnr == 0, np.nan, eps)
    return np.where(perfect, np.inf, eps)


def example_epsilon(retrained: Sequence[float], unlearned: Sequence[float], delta: float = DELTA) -> float:
    """The challenge's ε for one forget example from its confidences under the retrained and the
    unlearned models (any numbers of each, at least one)."""
    r = np.asarray(retrained, dtype=np.float64).ravel()
    u = np.asarray(unlearned, dtype=np.float64).ravel()
    if len(r) == 0 or len(u) == 0:
        raise ValueError("each group needs at least one confidence")
    if not (np.isfinite(r).all() and np.isfinite(u).all()):
        raise ValueError("confidences must be finite")
    if np.median(r) > np.median(u):
        pos, neg = r, u
    else:
        pos, neg = u, r
    largest, smallest = max(np.ptp(pos), np.ptp(neg)), min(np.ptp(pos), np.ptp(neg))
    if largest > 0 and smallest / largest < SPREAD_RATIO:
        return EPSILON_CAP  # the zero-spread rule
    rates = [np.concatenate(parts) for parts in zip(_double_rates(pos, neg), _single_rates(pos, neg))]
    eps = threshold_epsilons(*rates, delta=delta)
    kept = eps[~np.isnan(eps)]
    if len(kept) == 0:  # both groups one and the same point (the challenge asserts here)
        return 0.0
    return float(np.clip(kept.max(), 0.0, EPSILON_CAP))


def epsilons(retrained_confs: np.ndarray, unlearned_confs: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """ε per forget example; both arrays are [models, examples]."""
    r, u = np.asarray(retrained_confs, dtype=np.float64), np.asarray(unlearned_confs, dtype=np.float64)
    if r.ndim != 2 or u.ndim != 2 or r.shape[1] != u.shape[1]:
        raise ValueError(f"confidences must be [models, examples] with the same examples, got {r.shape} and {u.shape}")
    return np.array([example_epsilon(r[:, j], u[:, j], delta) for j in range(r.shape[1])])


# --------------------------------------------------------------------------- scores


def bucket_points(n_models: int) -> list[tuple[float, float]]:
    """(upper end, points) of each ε bucket for ``n_models`` unlearned models (challenge rule 3)."""
    if n_models < 2:
        return []
    max_eps = math.ceil(math.log(n_models - 1))
    out, start, points = [], 0.0, 1.0
    while start + BUCKET_SIZE <= max_eps:
        out.append((start + BUCKET_SIZE, points))
        points /= 2
        start += BUCKET_SIZE
    return out


def example_points(eps: float, n_models: int) -> float:
    for upper, points in bucket_points(n_models):
        if eps < upper:
            return points
    return 0.0


def forget_quality(eps: Sequence[float], n_models: int) -> float:
    """Mean bucket points over forget examples (challenge rule 4), in [0, 1]."""
    eps = list(eps)
    if not eps:
        raise ValueError("no forget example")
    return float(sum(example_points(e, n_models) for e in eps) / len(eps))


def final_score(fq: float, ra_unlearned: float, ra_retrained: float, ta_unlearned: float, ta_retrained: float) -> float:
    """forget quality × RA_u / RA_r × TA_u / TA_r (the challenge's ``main.py``; means over pools)."""
    if ra_retrained <= 0 or ta_retrained <= 0:
        return float("nan")
    return float(fq * (ra_unlearned / ra_retrained) * (ta_unlearned / ta_retrained))


# --------------------------------------------------------------------------- U-LiRA


def _loo_gaussians(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per model m and example j: mean and std of column j without row m (unbiased)."""
    m = x.shape[0]
    if m < 3:
        raise ValueError("leave-one-out Gaussians need at least 3 models per pool")
    mu = x.mean(0, keepdims=True)
    ss = ((x - mu) ** 2).sum(0, keepdims=True)
    d = x - mu
    mu_loo = mu - d / (m - 1)
    ss_loo = np.maximum(ss - d ** 2 * m / (m - 1), 0.0)
    sd = np.sqrt(ss_loo / (m - 2))
    return mu_loo, np.maximum(sd, ULIRA_SIGMA_FLOOR)


def _log_normal(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


def ulira_scores(retrained_confs: np.ndarray, unlearned_confs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log likelihood ratios "unlearned vs retrained" for every (model, example) of both pools:
    (scores of retrained models = negatives, scores of unlearned models = positives)."""
    r, u = np.asarray(retrained_confs, dtype=np.float64), np.asarray(unlearned_confs, dtype=np.float64)
    r_mu_loo, r_sd_loo = _loo_gaussians(r)
    u_mu_loo, u_sd_loo = _loo_gaussians(u)
    r_mu, r_sd = r.mean(0), np.maximum(r.std(0, ddof=1), ULIRA_SIGMA_FLOOR)
    u_mu, u_sd = u.mean(0), np.maximum(u.std(0, ddof=1), ULIRA_SIGMA_FLOOR)
    neg = _log_normal(r, u_mu, u_sd) - _log_normal(r, r_mu_loo, r_sd_loo)
    pos = _log_normal(u, u_mu_loo, u_sd_loo) - _log_normal(u, r_mu, r_sd)
    return neg.ravel(), pos.ravel()


def tpr_at_fpr(neg_scores: np.ndarray, pos_scores: np.ndarray, fpr: float) -> float:
    """Largest TPR (percent) over thresholds whose FPR is at most ``fpr`` (a fraction)."""
    from sklearn.metrics import roc_curve

    y = np.concatenate([np.zeros(len(neg_scores)), np.ones(len(pos_scores))])
    s = np.concatenate([neg_scores, pos_scores])
    f, t, _ = roc_curve(y, s)
    ok = f <= fpr + 1e-12
    return 100.0 * float(t[ok].max()) if ok.any() else 0.0


# --------------------------------------------------------------------------- depth checks


def _forget_check_set(data, n: int = 1000, seed: int = 0) -> torch.Tensor:
    idx = data.forget_idx
    if len(idx) > n:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(len(idx), generator=g)[:n].to(idx.device)]
    return idx


def relearn_steps(model: nn.Module, data, recipe, target_acc: float, seed: int, cap: int = 500) -> tuple[int, bool]:
    """Fine-tuning steps on D_f until the D_f accuracy is ≥ ``target_acc`` (percent); (steps,
    reached the cap). ``model`` is not changed."""
    import copy

    from .data import EndlessBatches
    from .metrics import accuracy, predict_logits
    from .training import make_optimizer
    from .utils import device_generator

    check = _forget_check_set(data)
    xc, yc = data.x_train[check], data.y_train[check]
    m = copy.deepcopy(model)
    if accuracy(predict_logits(m, xc), yc) >= target_acc:
        return 0, False
    opt = make_optimizer(m.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum)
    batches = EndlessBatches(data.forget_idx, min(recipe.batch_size, len(data.forget_idx)),
                             device_generator(seed, data.device))
    for step in range(1, cap + 1):
        m.train()
        b = next(batches)
        loss = F.cross_entropy(m(data.x_train[b]), data.y_train[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if accuracy(predict_logits(m, xc), yc) >= target_acc:
            return step, False
    return cap, True


def _fit_linear_probe(f: torch.Tensor, y: torch.Tensor, n_classes: int, c: float = 1.0,
                      max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression on ``f`` (already standardised): full-batch L-BFGS from
    zero weights on mean cross-entropy + ||W||² / (2·C·n) (scikit-learn's objective divided by
    C·n; the bias is not penalised). Deterministic; float64."""
    lin = nn.Linear(f.shape[1], n_classes).to(torch.float64)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
    reg = 1.0 / (2.0 * c * len(f))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(f), y) + reg * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return lin


def probe_forget_accuracy(model: nn.Module, data, seed: int, max_train: int = 5000) -> float:
    """Linear-probe accuracy (percent) on the forget examples from frozen penultimate features."""
    from .metrics import predict_features

    if data.spec.kind == "class":
        train_idx = torch.arange(len(data.x_train), device=data.device)
        mask = data.test_forget_mask()
        x_eval, y_eval = data.x_test[mask], data.y_test[mask]
    else:
        train_idx = data.retain_idx
        x_eval, y_eval = data.x_train[data.forget_idx], data.y_train[data.forget_idx]
    if len(train_idx) > max_train:
        g = torch.Generator().manual_seed(seed)
        train_idx = train_idx[torch.randperm(len(train_idx), generator=g)[:max_train].to(train_idx.device)]
    if len(y_eval) == 0:
        return float("nan")
    f_train = predict_features(model, data.x_train[train_idx]).flatten(1).to(torch.float64)
    f_eval = predict_features(model, x_eval).flatten(1).to(torch.float64)
    mu, sd = f_train.mean(0), f_train.std(0, unbiased=False)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))  # constant features (dead ReLUs) stay 0
    lin = _fit_linear_probe((f_train - mu) / sd, data.y_train[train_idx], data.n_classes)
    with torch.no_grad():
        pred = lin((f_eval - mu) / sd).argmax(1)
    return 100.0 * float((pred == y_eval).to(torch.float64).mean())


# --------------------------------------------------------------------------- the evaluation


@dataclass
class StrongEvalConfig:
    """Everything that defines a strong evaluation (replayable from evaluation.json)."""

    dataset: str = "digits"
    forget: str = "class:3"
    methods: tuple[str, ...] = ("retrain", "finetune", "mixunlearn")
    pool: int = 16
    seed: int = 0
    model: str | None = None
    recipe: str | None = None
    epochs: int | None = None  # None: the recipe's; else the original's and every Retrain's epochs
    device: str = "auto"
    data_root: str | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_split: str = "test"
    download: bool = True
    depth_models: int = 3  # models per pool that get the relearn and probe checks
    relearn_cap: int = 500
    pool_batch: int | None = None  # retrained models trained at once (None: pools.pool_batch_size's default)

    def resolved(self) -> StrongEvalConfig:
        """Validate every field (the shared ones through ExperimentConfig) and fill in defaults;
        ValueError naming the problem."""
        from .experiment import ExperimentConfig

        raw = self.methods.split(",") if isinstance(self.methods, str) else list(self.methods)
        if not all(isinstance(m, str) for m in raw):
            raise ValueError(f"methods must be names (text), got {self.methods!r}")
        methods = list(dict.fromkeys(m.strip() for m in raw if m.strip()))
        exp = ExperimentConfig(dataset=self.dataset, forget=self.forget, methods=tuple(methods), seed=self.seed,
                               model=self.model, recipe=self.recipe, device=self.device, data_root=self.data_root,
                               params=self.params, eval_split=self.eval_split, attacks=False,
                               download=self.download).resolved()
        _check_int(self.pool, "pool size", POOL_MIN, POOL_MAX,
                   "with 2 models or fewer the challenge's score has no bucket (every example scores 0)")
        if self.epochs is not None:
            _check_int(self.epochs, "epochs", 1, 500)
        _check_int(self.depth_models, "depth_models", 0, POOL_MAX)
        _check_int(self.relearn_cap, "relearn_cap", 1, 100_000)
        if self.pool_batch is not None:
            from .pools import pool_batch_size

            _check_int(self.pool_batch, "pool_batch", 1, POOL_MAX)
            pool_batch_size(exp.model, self.pool_batch)  # batched training applies to this model
        return dataclasses.replace(self, model=exp.model, recipe=exp.recipe, forget=exp.forget, seed=exp.seed,
                                   methods=tuple(methods), params=exp.params,
                                   depth_models=min(self.depth_models, self.pool))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        return d


def _check_int(value: Any, what: str, lo: int, hi: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} {value} is out of range; allowed {lo}..{hi}" + (f" ({why})" if why else ""))


def _model_stats(model: nn.Module, data, ta_mask: torch.Tensor) -> dict[str, Any]:
    from .metrics import accuracy, predict_logits

    lt = predict_logits(model, data.x_train)
    le = predict_logits(model, data.x_test)
    f, r = data.forget_idx, data.retain_idx
    return {
        "conf": logit_scaled_confidence(lt[f], data.y_train[f]),
        "ra": accuracy(lt[r], data.y_train[r]),
        "ta": accuracy(le[ta_mask], data.y_test[ta_mask]),
        "forget_acc": accuracy(lt[f], data.y_train[f]),
    }


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def run_strong_evaluation(cfg: StrongEvalConfig, callbacks=None, cache=None, data=None,
                          with_confidences: bool = False) -> dict[str, Any]:
    """Build the pools and score every method of ``cfg``; returns the evaluation.json document.

    ``with_confidences`` adds ``confidences``: {"reference": [N][|D_f|], method: [N][|D_f|]}, each
    pool's logit-scaled confidences (rounded to 1e-4; the app's per-example view).

    A method whose run fails with NaN/inf is recorded as failed and the others go on;
    :class:`~mixunlearn.progress.RunCancelled` raised by a callback stops everything.
    """
    from . import __version__
    from .experiment import json_safe
    from .methods import get_method, make_config
    from .metrics import accuracy, predict_logits
    from .pools import pool_seeds, retrained_pool, unlearned_pool
    from .progress import NonFiniteLossError, ProgressEvent, emit
    from .training import ModelCache, get_recipe, get_trained
    from .utils import device_name, resolve_device, seed_everything

    cfg = cfg.resolved()
    callbacks = list(callbacks or [])
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    started = time.perf_counter()
    if data is None:
        from .data import make_split
        from .datasets import load_dataset

        emit(callbacks, ProgressEvent("evaluate", "data", 0, 1, message=f"loading {cfg.dataset}"))
        ds = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
        data = make_split(ds, cfg.forget, cfg.seed, eval_split=cfg.eval_split)
    data = data.to(device)
    recipe = get_recipe(cfg.recipe)
    if cfg.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=cfg.epochs)
    cache = cache or ModelCache()
    ta_mask = ~data.test_forget_mask() if data.spec.kind == "class" else torch.ones_like(data.test_forget_mask())

    original = get_trained("original", data, cfg.model, recipe, callbacks, cache)
    check = _forget_check_set(data)
    orig_forget_acc = accuracy(predict_logits(original.model, data.x_train[check]), data.y_train[check])
    target = orig_forget_acc - RELEARN_MARGIN

    def measure(depth_seed_stream: str):
        def fn(i: int, model: nn.Module) -> dict[str, Any]:
            stats = _model_stats(model, data, ta_mask)
            if i < cfg.depth_models:
                s = pool_seeds(cfg.seed, i + 1, depth_seed_stream)[i]
                stats["relearn_steps"], stats["relearn_capped"] = relearn_steps(model, data, recipe, target, s,
                                                                                cfg.relearn_cap)
                stats["probe_forget_acc"] = probe_forget_accuracy(model, data, s)
            return stats
        return fn

    reference = retrained_pool(data, cfg.model, recipe, cfg.pool, cfg.seed, stream="reference", cache=cache,
                               callbacks=callbacks, measure=measure("reference"), batch=cfg.pool_batch)
    r_conf = np.stack(reference.stat("conf"))
    r_ra, r_ta = _mean(reference.stat("ra")), _mean(reference.stat("ta"))
    ref_depth = reference.members[:cfg.depth_models]
    ref_relearn = _mean(m.stats["relearn_steps"] for m in ref_depth)
    ref_probe = _mean(m.stats["probe_forget_acc"] for m in ref_depth)

    family = original.model.family
    out_methods: dict[str, Any] = {}
    confs: dict[str, Any] = {"reference": np.round(r_conf, 4).tolist()} if with_confidences else {}
    for name in cfg.methods:
        spec = get_method(name)
        emit(callbacks, ProgressEvent(name, "start", 0, 1, message=f"pool of {cfg.pool} for {spec.display}"))
        t0 = time.perf_counter()
        try:
            if name == "retrain":
                pool = retrained_pool(data, cfg.model, recipe, cfg.pool, cfg.seed, stream="unlearner", cache=cache,
                                      callbacks=callbacks, measure=measure("unlearner"), batch=cfg.pool_batch)
                mcfg: dict[str, Any] = {"recipe": dataclasses.asdict(recipe)}
            else:
                c = make_config(name, family, cfg.params.get(name))
                pool = unlearned_pool(name, original.model, data, cfg.pool, cfg.seed, cfg=c, device=device,
                                      callbacks=callbacks, measure=measure("runs"))
                from .methods import config_to_dict

                mcfg = config_to_dict(c)
        except NonFiniteLossError as exc:
            out_methods[name] = {"status": "failed", "error": str(exc), "seconds": time.perf_counter() - t0}
            emit(callbacks, ProgressEvent(name, "failed", 0, 1, message=str(exc)))
            continue
        emit(callbacks, ProgressEvent(name, "evaluate", 0, 1, message=f"scoring {spec.display}"))
        u_conf = np.stack(pool.stat("conf"))
        if with_confidences:
            confs[name] = np.round(u_conf, 4).tolist()
        eps = epsilons(r_conf, u_conf)
        fq = forget_quality(eps, cfg.pool)
        u_ra, u_ta = _mean(pool.stat("ra")), _mean(pool.stat("ta"))
        neg, pos = ulira_scores(r_conf, u_conf)
        depth = pool.members[:cfg.depth_models]
        relearn = _mean(m.stats["relearn_steps"] for m in depth)
        out_methods[name] = {
            "status": "done",
            "score": final_score(fq, u_ra, r_ra, u_ta, r_ta) if None not in (u_ra, r_ra, u_ta, r_ta) else None,
            "forget_quality": fq,
            "eps_per_example": [round(float(e), 4) for e in eps],
            "eps_mean": float(np.mean(eps)),
            "ulira_tpr_at_1pct_fpr": tpr_at_fpr(neg, pos, 0.01),
            "ulira_tpr_at_0.1pct_fpr": tpr_at_fpr(neg, pos, 0.001),
            "relearn_steps": relearn,
            "relearn_capped": sum(bool(m.stats["relearn_capped"]) for m in depth),
            "relearn_vs_retrain": (relearn / ref_relearn) if relearn is not None and ref_relearn else None,
            "probe_forget_acc": _mean(m.stats["probe_forget_acc"] for m in depth),
            "ra": u_ra, "ta": u_ta, "forget_acc": _mean(pool.stat("forget_acc")),
            "seconds": time.perf_counter() - t0,
            "seconds_per_run": _mean(m.seconds for m in pool.members),
            "cached_runs": pool.n_cached,
            "seeds": pool.seeds,
            "config": mcfg,
        }
    doc = {
        "config": cfg.to_dict(),
        "original": {"forget_acc": orig_forget_acc, "relearn_target": target, "seconds": original.seconds,
                     "cached": original.cached, "key": original.key},
        "reference": {"ra": r_ra, "ta": r_ta, "forget_acc": _mean(reference.stat("forget_acc")),
                      "relearn_steps": ref_relearn,
                      "relearn_capped": sum(bool(m.stats["relearn_capped"]) for m in ref_depth),
                      "probe_forget_acc": ref_probe, "seconds": reference.seconds,
                      "cached_models": reference.n_cached, "seeds": reference.seeds},
        "methods": out_methods,
        "info": {"version": __version__, "device": device_name(device), "level": data.spec.level,
                 "n_forget": int(len(data.forget_idx)), "n_retain": int(len(data.retain_idx)),
                 "n_test": int(len(data.x_test)), "ta": "test_r" if data.spec.kind == "class" else "test",
                 "recipe": dataclasses.asdict(recipe), "seconds_total": time.perf_counter() - started,
                 "units": "score, forget_quality in [0, 1]; eps in nats (cap 50); accuracies and TPRs in percent; "
                          "relearn in optimiser steps (mean over depth_models per pool)",
                 "source": "NeurIPS 2023 Machine Unlearning Challenge scoring (google-deepmind/unlearning_evaluation "
                           "metric.py, main.py); U-LiRA after Hayes et al. 2024; see docs/metrics.md"},
    }
    if with_confidences:
        doc["confidences"] = confs
    return json_safe(doc)


def write_evaluation(doc: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """``out_dir/evaluation.json``, written atomically (never NaN: those are null)."""
    from .utils import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / "evaluation.json", json.dumps(doc, indent=1, allow_nan=False))


def format_table(doc: Mapping[str, Any]) -> str:
    """The methods of an evaluation.json document as a text table."""
    head = (f"{'method':<20}{'score':>7}{'FQ':>7}{'mean ε':>8}{'ULiRA@1%':>10}{'@0.1%':>7}"
            f"{'relearn':>9}{'probe':>7}{'RA':>7}{'TA':>7}{'seconds':>9}")
    lines = [head]

    def cell(v, w, fmt):
        return f"{v:>{w}{fmt}}" if isinstance(v, (int, float)) else f"{'n/a':>{w}}"

    ref = doc.get("reference", {})
    lines.append(f"{'(reference pool)':<20}{'':>7}{'':>7}{'':>8}{'':>10}{'':>7}"
                 + cell(ref.get("relearn_steps"), 9, ".1f") + cell(ref.get("probe_forget_acc"), 7, ".1f")
                 + cell(ref.get("ra"), 7, ".1f") + cell(ref.get("ta"), 7, ".1f") + cell(ref.get("seconds"), 9, ".1f"))
    for name, rec in doc["methods"].items():
        if rec.get("status") == "failed":
            lines.append(f"{name:<20} FAILED: {rec.get('error', '')}")
            continue
        lines.append(f"{name:<20}" + cell(rec["score"], 7, ".3f") + cell(rec["forget_quality"], 7, ".3f")
                     + cell(rec["eps_mean"], 8, ".2f") + cell(rec["ulira_tpr_at_1pct_fpr"], 10, ".1f")
                     + cell(rec["ulira_tpr_at_0.1pct_fpr"], 7, ".1f") + cell(rec["relearn_steps"], 9, ".1f")
                     + cell(rec["probe_forget_acc"], 7, ".1f") + cell(rec["ra"], 7, ".1f") + cell(rec["ta"], 7, ".1f")
                     + cell(rec["seconds"], 9, ".1f"))
    n = doc["config"]["pool"]
    lines.append(f"(pool N = {n}; score = FQ x RA_u/RA_r x TA_u/TA_r; ε per forget example, cap 50; U-LiRA TPR in % at "
                 f"1% / 0.1% FPR; relearn = steps on D_f back to the original's accuracy - 5 pt, cap "
                 f"{doc['config']['relearn_cap']}; probe = linear-probe accuracy on forget examples, %)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- time estimate

RELEARN_STEPS_ASSUMED = 10  # relearn steps counted per depth-checked model in the estimate (digits: 0-8)
METHOD_PROBE_SECONDS = 0.6  # wall time a method's timed probe may take before it is extrapolated
TRAIN_PROBE_STEPS = 16  # steps of each timed training run of the estimate


@dataclass
class EvalEstimate:
    """A time estimate of a strong evaluation before it starts, from timed probes on this machine.

    ``parts``: seconds per part ("original", "reference pool", a method name, "measurements");
    ``to_train``/``cached``: retrained models that must be trained / are in the cache already;
    ``batch``: retrained models trained at once; ``rates``: the probe's numbers (seconds per
    training step of one model, or of a batch of ``batch`` models, and each method's seconds per run).
    """

    seconds: float
    parts: dict[str, float]
    to_train: int
    cached: int
    batch: int
    rates: dict[str, float]
    load: float | None = None  # the 1-minute load average when the probes ran (None: unknown)
    cores: int = 1

    def text(self) -> str:
        return format_seconds(self.seconds)


class _ProbeStop(Exception):
    """Ends a timed probe run (raised by the probe's own callback)."""


_RATES: dict[str, float] = {}  # in-process cache of timed probes (keyed by what they depend on)


def _timed_train_steps(data, model_name: str, recipe, group: int) -> tuple[float, float]:
    """(seconds per training step of one model, of ``group`` models at once), timed with the
    pools' own trainers (``train_supervised``, ``train_supervised_batched``: their batching,
    reporting and stacking included) on short runs of up to :data:`TRAIN_PROBE_STEPS` steps:
    after a warm-up, three rounds alternating one model and the group (so both see the same
    load), each round's total time over its steps, the median round."""
    from .models import build_model
    from .pools import train_supervised_batched
    from .training import train_supervised

    steps = max(1, min(TRAIN_PROBE_STEPS, len(data.retain_idx) // recipe.batch_size))
    idx = data.retain_idx[:steps * recipe.batch_size] if len(data.retain_idx) >= recipe.batch_size else data.retain_idx
    probe = dataclasses.replace(recipe, epochs=1, schedule="none")

    def once(k: int) -> float:
        models = [build_model(model_name, data.info, seed=i).to(data.device) for i in range(k)]
        start = time.perf_counter()
        if k == 1:
            train_supervised(models[0], data.x_train, data.y_train, idx, probe, 0)
        else:
            train_supervised_batched(models, data.x_train, data.y_train, idx, probe, list(range(k)))
        return (time.perf_counter() - start) / steps

    once(1)
    if group > 1:
        once(group)  # warm-up: first-call allocations, kernel selection
    rounds = [(once(1), once(group) if group > 1 else 0.0) for _ in range(3)]
    one = float(np.median([r[0] for r in rounds]))
    return one, (float(np.median([r[1] for r in rounds])) if group > 1 else one)


def _timed_method_run(name: str, data, model_name: str, mcfg, device) -> float:
    """Seconds of one run of ``name``: a run from a freshly initialised model of the task's
    architecture, stopped after :data:`METHOD_PROBE_SECONDS` and extrapolated over its reported
    total steps (methods report ``step``/``total`` as they go); a run that ends sooner is timed whole."""
    from .methods import run_method
    from .models import build_model

    model = build_model(model_name, data.info, seed=0).to(device).eval()
    seen: list[tuple[float, int, int]] = []
    start = time.perf_counter()

    def cb(ev: Any) -> None:
        now = time.perf_counter() - start
        if ev.total and ev.step > 0 and ev.phase not in ("cache", "pool", "start", "evaluate"):
            if seen and ev.total != seen[-1][2]:
                seen.clear()  # a new phase: extrapolate within the newest one
            seen.append((now, ev.step, ev.total))
        if now > METHOD_PROBE_SECONDS and len(seen) >= 2:
            raise _ProbeStop

    try:
        run_method(name, model, dataclasses.replace(data, seed=1), mcfg, device=device, callbacks=[cb])
    except _ProbeStop:
        # seconds per step from the first to the last report (after the method's own setup)
        (t1, s1, _), (t_last, s_last, total) = seen[0], seen[-1]
        per_step = (t_last - t1) / (s_last - s1) if s_last > s1 else t_last / s_last
        return t_last + per_step * max(0, total - s_last)
    return time.perf_counter() - start



_DATA: dict[str, Any] = {}  # the last task an estimate loaded (a page re-estimates on every change)


def _estimate_data(cfg: StrongEvalConfig):
    from .data import make_split
    from .datasets import load_dataset

    key = json.dumps([cfg.dataset, cfg.data_root, cfg.forget, cfg.seed, cfg.eval_split])
    if key not in _DATA:
        data = make_split(load_dataset(cfg.dataset, cfg.data_root, download=cfg.download), cfg.forget, cfg.seed,
                          eval_split=cfg.eval_split)
        _DATA.clear()
        _DATA[key] = data
    return _DATA[key]


def estimate_evaluation(cfg: StrongEvalConfig, data=None, cache=None) -> EvalEstimate:
    """Estimated wall seconds of :func:`run_strong_evaluation` for ``cfg`` on this machine, before
    it starts: cached retrained models are counted as free; every other model is priced with timed
    probes taken here and now (a few training steps of the model, batched as the pools will be; a
    one-second start of each method's run, extrapolated over its steps; one measurement and one
    linear probe; relearn counted at :data:`RELEARN_STEPS_ASSUMED` steps per checked model). Probes
    are cached per process, so changing the pool size re-prices without probing again. Validates
    ``cfg`` (ValueError). Rough: the machine's load can change the real time either way."""
    from .methods import get_method, make_config
    from .models import build_model
    from .pools import pool_batch_size, pool_cache_parts, pool_seeds
    from .training import ModelCache, cache_parts, get_recipe
    from .utils import resolve_device

    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    for name in cfg.methods:
        get_method(name)
    if data is None:
        data = _estimate_data(cfg)
    data = data.to(device)
    recipe = get_recipe(cfg.recipe)
    if cfg.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=cfg.epochs)
    cache = cache or ModelCache()
    group = pool_batch_size(cfg.model, cfg.pool_batch)
    # What a rate depends on: the task and device; training steps also on the recipe but its epochs
    # (per step), method runs not on the recipe at all. Pool size and epochs re-price without probing.
    base = json.dumps([cfg.dataset, cfg.data_root, cfg.forget, cfg.seed, cfg.eval_split, cfg.model, str(device)])
    step_recipe = json.dumps(dataclasses.asdict(dataclasses.replace(recipe, epochs=0)), default=str)

    def rkey(what: str) -> str:
        return base + "|" + (step_recipe + what if what.startswith("train") or what == "depth" else what)

    def rate(what: str, fn) -> float:
        key = rkey(what)
        if key not in _RATES:
            _RATES[key] = float(fn())
        return _RATES[key]

    def is_cached(parts: dict) -> bool:
        return all(p.is_file() for p in cache.paths(cache.key(parts)))

    steps = recipe.epochs * -(-len(data.retain_idx) // recipe.batch_size)
    g = min(group, cfg.pool)
    if rkey("train-1") not in _RATES or rkey(f"train-x{g}") not in _RATES:
        # one interleaved probe prices one model and a group of g under the same load
        _RATES[rkey("train-1")], _RATES[rkey(f"train-x{g}")] = _timed_train_steps(data, cfg.model, recipe, g)
        try:
            _RATES[rkey("load")] = os.getloadavg()[0]  # the load the probes ran under
        except (AttributeError, OSError):  # not on every platform
            pass
    seq_step = _RATES[rkey("train-1")]
    rates = {"train_step_seconds": seq_step}
    per_model = steps * seq_step
    if g > 1:
        batch_step = _RATES[rkey(f"train-x{g}")]
        rates[f"train_step_seconds_x{g}"] = batch_step
        per_model = steps * batch_step / g
    streams = ["reference"] + (["unlearner"] if "retrain" in cfg.methods else [])
    parts: dict[str, float] = {}
    full_steps = recipe.epochs * -(-len(data.x_train) // recipe.batch_size)
    orig_cached = is_cached(cache_parts("original", data, cfg.model, recipe))
    parts["original"] = 0.0 if orig_cached else full_steps * seq_step
    to_train = cached = 0
    for stream in streams:
        seeds = pool_seeds(cfg.seed, cfg.pool, stream)
        hit = sum(is_cached(pool_cache_parts(data, cfg.model, recipe, s)) for s in seeds)
        cached += hit
        to_train += cfg.pool - hit
        parts["reference pool" if stream == "reference" else "retrain"] = (cfg.pool - hit) * per_model
    family = build_model(cfg.model, data.info).family
    for name in cfg.methods:
        if name == "retrain":
            continue
        mcfg = make_config(name, family, cfg.params.get(name))
        settings = dataclasses.asdict(mcfg) if dataclasses.is_dataclass(mcfg) else str(mcfg)
        what = f"method-{name}-" + json.dumps(settings, sort_keys=True, default=str)
        per_run = rate(what, lambda n=name, c=mcfg: _timed_method_run(n, data, cfg.model, c, device))
        rates[f"{name}_seconds_per_run"] = per_run
        parts[name] = cfg.pool * per_run
    ta_mask = torch.ones(len(data.x_test), dtype=torch.bool, device=data.device)
    probe_model = build_model(cfg.model, data.info, seed=0).to(device).eval()

    def timed(fn, warm_up: bool) -> float:  # a cheap call is timed after one untimed call (one-time costs)
        if warm_up:
            fn()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def time_stats() -> float:
        return timed(lambda: _model_stats(probe_model, data, ta_mask), True)

    def time_depth() -> float:
        return timed(lambda: (probe_forget_accuracy(probe_model, data, 0),
                              relearn_steps(probe_model, data, recipe, 101.0, 0, cap=RELEARN_STEPS_ASSUMED)), False)

    n_pools = 1 + len(cfg.methods)
    stats = rate("stats", time_stats)
    depth = rate("depth", time_depth) if cfg.depth_models else 0.0
    parts["measurements"] = n_pools * (cfg.pool * stats + cfg.depth_models * depth)
    rates.update(measure_seconds=stats, depth_check_seconds=depth)
    return EvalEstimate(sum(parts.values()), parts, to_train, cached, group, rates, _RATES.get(rkey("load")),
                        os.cpu_count() or 1)


# --------------------------------------------------------------------------- the app's job and views


def evaluation_key(cfg: StrongEvalConfig) -> str:
    """The identity of an evaluation job: its resolved config as canonical JSON."""
    return "strong-eval:" + json.dumps(cfg.resolved().to_dict(), sort_keys=True, default=str)


class PoolProgress:
    """Turns the evaluation's progress events into a few steady progress bars for the app: one
    per pool (``"<pool> pool"``: members done / N), one for the model being trained or unlearned
    (``"training"`` / the method's own source), and ``"overall"`` (weighted by the estimate's
    parts when given, else by models) with the time left. Hands every event on to ``forward``."""

    def __init__(self, forward, cfg: StrongEvalConfig, estimate: EvalEstimate | None = None):
        from .progress import ProgressEvent

        self._event = ProgressEvent
        self.forward = forward
        self.cfg = cfg.resolved()
        n = self.cfg.pool
        pools = ["reference pool"] + [("retrain" if m == "retrain" else m) for m in self.cfg.methods]
        parts = estimate.parts if estimate is not None else {}
        weights = {p: max(parts.get(p, 0.0) + (parts.get("measurements", 0.0) / len(pools)), 1e-3)
                   if parts else 1.0 for p in pools}
        total = sum(weights.values())
        self.weight = {p: w / total / n for p, w in weights.items()}  # share of the work per member
        self.done: dict[str, int] = dict.fromkeys(pools, 0)
        self.start = time.perf_counter()

    def _pool_name(self, source: str) -> str:
        if source == "retrain":
            return "reference pool"
        if source == "retrain (as unlearner)":
            return "retrain"
        return source

    def __call__(self, ev) -> None:
        import re

        if ev.phase == "pool":
            name = self._pool_name(ev.source)
            shown = "Retrain (as unlearner)" if name == "retrain" else name
            self.forward(dataclasses.replace(ev, source=f"{shown} pool" if name != "reference pool" else name))
            if name in self.done and ev.step > self.done[name]:
                self.done[name] = ev.step
                self._overall()
            return
        if re.match(r"^retrain( \(as unlearner\))? \d", ev.source) and ev.phase in ("train", "cache"):
            self.forward(dataclasses.replace(ev, source="training", phase=f"{ev.phase} {ev.source}"))
            return
        self.forward(ev)

    def fraction(self) -> float:
        return min(1.0, sum(self.weight[p] * d for p, d in self.done.items()))

    def _overall(self) -> None:
        f = self.fraction()
        elapsed = time.perf_counter() - self.start
        left = f"about {format_seconds(elapsed * (1 - f) / f)} left" if 0 < f < 1 else ""
        models = sum(self.done.values())
        total = self.cfg.pool * len(self.done)
        self.forward(self._event("overall", "models" + (f" ({left})" if left else ""), models, total,
                                 data={"fraction": f}))


def forget_examples(data, doc: Mapping[str, Any], per_method: int = 24) -> dict[str, Any]:
    """The forget examples the app shows: for every method its ``per_method`` least-forgotten
    (largest ε; ties: the larger distance between the two pools' median confidences), as
    positions in D_f with images ([n, C, H, W], NumPy, in [0, 1]) and labels of those positions."""
    chosen: dict[str, list[int]] = {}
    for name in doc.get("methods", {}):
        chosen[name] = least_forgotten(doc, name, per_method)
    keep = sorted({j for v in chosen.values() for j in v})
    idx = data.forget_idx[torch.as_tensor(keep, dtype=torch.long, device=data.forget_idx.device)]
    images = data.x_train[idx].detach().cpu().numpy() if keep else np.zeros((0,))
    labels = data.y_train[idx].detach().cpu().tolist() if keep and data.y_train is not None else []
    return {"positions": keep, "train_index": idx.detach().cpu().tolist(), "images": images, "labels": labels,
            "least_forgotten": chosen}


def least_forgotten(doc: Mapping[str, Any], method: str, k: int = 24) -> list[int]:
    """Positions in D_f of ``method``'s ``k`` least-forgotten examples: the largest ε first; ties
    broken by the distance between the medians of the example's confidences under the two pools
    (when the document holds them), then by position."""
    rec = doc["methods"][method]
    eps = np.asarray(rec.get("eps_per_example") or [], dtype=np.float64)
    if len(eps) == 0:
        return []
    confs = doc.get("confidences") or {}
    if method in confs and "reference" in confs:
        gap = np.abs(np.median(np.asarray(confs[method]), 0) - np.median(np.asarray(confs["reference"]), 0))
    else:
        gap = np.zeros_like(eps)
    order = np.lexsort((np.arange(len(eps)), -gap, -eps))
    return [int(j) for j in order[:k]]


def score_rows(doc: Mapping[str, Any], display: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The per-method score table (the reference pool last): one dict per row, keys as shown."""
    display = display or {}
    rows = []
    for name, rec in doc.get("methods", {}).items():
        title = "Retrain (other seeds)" if name == "retrain" else display.get(name, name)
        if rec.get("status") == "failed":
            rows.append({"method": title, "status": f"failed: {rec.get('error', '')}"})
            continue
        rows.append({"method": title, "status": "done", "score": rec.get("score"),
                     "forget quality": rec.get("forget_quality"), "mean ε": rec.get("eps_mean"),
                     "U-LiRA TPR @1% FPR": rec.get("ulira_tpr_at_1pct_fpr"),
                     "U-LiRA TPR @0.1% FPR": rec.get("ulira_tpr_at_0.1pct_fpr"),
                     "RA": rec.get("ra"), "TA": rec.get("ta"), "Acc(D_f)": rec.get("forget_acc"),
                     "seconds": rec.get("seconds")})
    return rows


def depth_rows(doc: Mapping[str, Any], display: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Relearn and linear-probe results, the reference pool (Retrain) first."""
    display = display or {}
    ref = doc.get("reference", {})
    rows = [{"model": "Retrain (reference pool)", "relearn steps": ref.get("relearn_steps"), "relearn vs Retrain": 1.0,
             "runs at the cap": ref.get("relearn_capped"), "probe acc on forget (%)": ref.get("probe_forget_acc")}]
    for name, rec in doc.get("methods", {}).items():
        if rec.get("status") == "failed":
            continue
        rows.append({"model": "Retrain (other seeds)" if name == "retrain" else display.get(name, name),
                     "relearn steps": rec.get("relearn_steps"), "relearn vs Retrain": rec.get("relearn_vs_retrain"),
                     "runs at the cap": rec.get("relearn_capped"),
                     "probe acc on forget (%)": rec.get("probe_forget_acc")})
    return rows


# One line per column of the app's tables; the full definitions are docs/metrics.md §2 (METRIC_SECTIONS).
METRIC_HELP = {
    "score": "forget quality × RA_u/RA_r × TA_u/TA_r (the NeurIPS 2023 challenge's final score)",
    "forget quality": "mean over forget examples of the ε bucket points 1, ½, ¼, … (0 past ⌈ln(N−1)⌉)",
    "mean ε": "mean per-example ε: how well the best threshold test tells the unlearned from the retrained "
              "models on that example (0 = indistinguishable, 50 = the cap)",
    "U-LiRA TPR @1% FPR": "U-LiRA-style attack: % of (unlearned model, example) pairs caught at 1 % false positives",
    "U-LiRA TPR @0.1% FPR": "the same at 0.1 % false positives",
    "RA": "mean accuracy on D_r over the pool (%)",
    "TA": "mean test accuracy over the pool (%; retained classes only for class-level forgetting)",
    "Acc(D_f)": "mean accuracy on D_f over the pool (%)",
    "relearn steps": "fine-tuning steps on D_f until its accuracy is back within 5 points of the original's",
    "probe acc on forget (%)": "linear probe on frozen penultimate features, accuracy on the forget examples",
}

# The sections of docs/metrics.md that define each metric of the page (by heading prefix).
METRIC_SECTIONS = {"pools": "### 2.1", "score": "### 2.2", "ulira": "### 2.3", "relearn": "### 2.4",
                   "probe": "### 2.5"}


def markdown_sections(text: str, prefixes: Mapping[str, str]) -> dict[str, str]:
    """The sections of a Markdown text whose heading starts with each prefix (heading included, up to
    the next heading of the same or a higher level); a missing section is an empty string."""
    lines = text.splitlines()
    out = {}
    for key, prefix in prefixes.items():
        start = next((i for i, line in enumerate(lines) if line.startswith(prefix)), None)
        if start is None:
            out[key] = ""
            continue
        level = len(prefix.split()[0])

        def heading_level(line: str) -> int:
            mark = line.split()[0] if line.strip() else ""
            return len(mark) if mark and set(mark) == {"#"} else 0

        end = next((i for i in range(start + 1, len(lines)) if 0 < heading_level(lines[i]) <= level), len(lines))
        out[key] = "\n".join(lines[start:end]).strip()
    return out


def evaluation_job(cfg: StrongEvalConfig, *, cache=None, estimate: EvalEstimate | None = None,
                   examples_per_method: int = 24):
    """A job function (see :mod:`mixunlearn.jobs`) running :func:`run_strong_evaluation` with the
    confidences kept and :class:`PoolProgress` bars; returns {"doc", "examples", "class_names",
    "display"}. Cancel works through the job's callback (RunCancelled at the next event)."""

    def run(job) -> dict[str, Any]:
        from .data import make_split
        from .datasets import get_info, load_dataset
        from .methods import get_method
        from .utils import resolve_device

        resolved = cfg.resolved()
        job.say(f"loading {resolved.dataset}")
        data = make_split(load_dataset(resolved.dataset, resolved.data_root, download=resolved.download),
                          resolved.forget, resolved.seed, eval_split=resolved.eval_split)
        data = data.to(resolve_device(resolved.device))
        progress = PoolProgress(job.callback, resolved, estimate)
        doc = run_strong_evaluation(resolved, callbacks=[progress], cache=cache, data=data, with_confidences=True)
        job.raise_if_cancelled()
        job.say("picking the least-forgotten examples")
        examples = forget_examples(data, doc, examples_per_method)
        display = {m: get_method(m).display for m in resolved.methods}
        job.say("done")
        return {"doc": doc, "examples": examples, "class_names": list(get_info(resolved.dataset).class_names),
                "display": display}

    return run
