"""Where and why a model differs from Retrain (EVALUATION.md §2.5): per-class test accuracy, the
prediction matrix (true -> predicted) on D_f and on the test split, layer-wise linear CKA to
Retrain and to the original model on a fixed probe set, the membership attack's per-example
scores, and the tug-of-war score ToW.

Computed once in the run (``experiment.run_experiment``), stored with it; pages and the report
only lay the numbers out. Pure torch / NumPy; never imports Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import UnlearnData
from .metrics import asr_attacker, asr_features, predict_logits, split_test_halves

# The probe set of the layer-wise CKA: this many images of the evaluation split, drawn with a seed
# derived from the run's seed (the same images for every model of a run).
CKA_PROBE = 256
# The membership attack's per-example view: up to this many examples of each set (D_f, D_r and the
# attacker's held-out test half T_B), drawn with a seed derived from the run's seed.
ATTACK_SUBSET = 200
ATTACK_SETS = ("forget", "retain", "test")
ATTACK_SET_TITLES = {"forget": "forgotten (D_f)", "retain": "retained (D_r)", "test": "held-out test (T_B)"}

# The blocks whose outputs CKA compares, per model family (module attribute names, in forward order).
BLOCKS: dict[str, tuple[str, ...]] = {
    "digits": ("block1", "block2", "embed", "head"),
    "cnn": ("conv1", "conv2", "fc1", "head"),
    "resnet": ("layer1", "layer2", "layer3", "layer4", "head"),
}


def block_names(model: nn.Module) -> tuple[str, ...]:
    """The CKA blocks of ``model``'s family; a family not listed uses (features, logits)."""
    names = BLOCKS.get(getattr(model, "family", ""), ())
    if names and all(isinstance(getattr(model, n, None), nn.Module) for n in names):
        return names
    return ("features", "logits")


@torch.no_grad()
def block_outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    """Each CKA block's output on ``x``, flattened to ``[n, d]`` float64 on the CPU, in eval mode
    (the model's mode is restored)."""
    names = block_names(model)
    was_training = model.training
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    try:
        if names == ("features", "logits"):
            for i in range(0, len(x), batch_size):
                f = model.features(x[i:i + batch_size])
                outs["features"].append(f.flatten(1).double().cpu())
                outs["logits"].append(model.head(f).flatten(1).double().cpu())
        else:
            for n in names:
                hooks.append(getattr(model, n).register_forward_hook(
                    lambda _m, _i, o, n=n: outs[n].append(o.detach().flatten(1).double().cpu())))
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [torch.cat(outs[n]) if outs[n] else torch.zeros(0, 0, dtype=torch.float64) for n in names]


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same ``n`` examples
    (``[n, p]`` and ``[n, q]``): with column-centred X and Y,
    ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)``, computed through the n x n Gram matrices (cheap for
    wide conv maps). In [0, 1]; invariant to orthogonal transforms and isotropic scaling of either
    side, not to general invertible linear maps. NaN when either side is constant."""
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double().reshape(len(x), -1)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).double().reshape(len(y), -1)
    if len(xt) != len(yt):
        raise ValueError(f"CKA needs the same examples on both sides; got {len(xt)} and {len(yt)} rows")
    xc, yc = xt - xt.mean(0), yt - yt.mean(0)
    k, l_ = xc @ xc.T, yc @ yc.T  # centred features give centred Gram matrices
    den = float(torch.linalg.norm(k) * torch.linalg.norm(l_))
    if not den > 1e-300:
        return float("nan")
    return float((k * l_).sum()) / den


def per_class_accuracy(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> dict[str, float | None]:
    """Top-1 accuracy (%) per true class, keyed by the class index as text; None for a class with
    no example."""
    pred = logits.argmax(1).cpu()
    y = y.cpu()
    out: dict[str, float | None] = {}
    for c in range(n_classes):
        m = y == c
        out[str(c)] = 100.0 * float((pred[m] == c).float().mean()) if bool(m.any()) else None
    return out


def prediction_matrix(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> list[list[int]]:
    """Counts ``M[true][predicted]`` (labels as stored in D)."""
    pred = logits.argmax(1).cpu().long()
    idx = y.cpu().long() * n_classes + pred
    return torch.bincount(idx, minlength=n_classes * n_classes).view(n_classes, n_classes).tolist()


def tow(metrics: Mapping[str, float], retrain: Mapping[str, float], *, mia: bool = False) -> float:
    """Tug of war (RUM, Zhao et al. 2024), in percent: ``100 · Π (1 − |acc − acc_Retrain| / 100)``
    over the forget set (Train_f), the retain set (Train_r) and the test split (TA: the retained
    classes' test accuracy when a whole class is forgotten, else the whole test split). 100: every
    accuracy equals Retrain's. ``mia=True``: ToW-MIA, the forget-accuracy factor replaced by the
    attack's (ASR). NaN when a needed metric is missing."""
    keys = ("asr" if mia else "train_f", "train_r", "ta")
    prod = 1.0
    for k in keys:
        a, b = metrics.get(k), retrain.get(k)
        if a is None or b is None or a != a or b != b:
            return float("nan")
        prod *= max(0.0, 1.0 - abs(float(a) - float(b)) / 100.0)
    return 100.0 * prod


def add_tow(metrics: dict[str, float], retrain: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` with ``tow`` (and ``tow_mia`` when the attack ran) added in place."""
    metrics["tow"] = tow(metrics, retrain)
    if "asr" in metrics and "asr" in retrain:
        metrics["tow_mia"] = tow(metrics, retrain, mia=True)
    return metrics


# --------------------------------------------------------------------------- fixed subsets


def probe_indices(n_eval: int, seed: int, n: int = CKA_PROBE) -> torch.Tensor:
    """The CKA probe: ``n`` indices into the evaluation split, sorted, fixed per seed."""
    g = torch.Generator().manual_seed(20_011 + int(seed))
    return torch.randperm(n_eval, generator=g)[:n].sort().values


def attack_subsets(data: UnlearnData, seed: int, n: int = ATTACK_SUBSET) -> dict[str, torch.Tensor]:
    """Fixed seeded subsets of the attack's per-example view: ``forget`` and ``retain`` index
    ``x_train``, ``test`` indexes ``x_test`` and is drawn from the attacker's held-out half T_B."""
    rng = np.random.default_rng(30_011 + int(seed))
    _, t_b = split_test_halves(len(data.x_test), seed)

    def pick(idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx)
        if len(idx) > n:
            idx = rng.choice(idx, n, replace=False)
        return torch.as_tensor(np.sort(idx), dtype=torch.long)

    return {"forget": pick(data.forget_idx.cpu().numpy()), "retain": pick(data.retain_idx.cpu().numpy()),
            "test": pick(t_b)}


# --------------------------------------------------------------------------- one run's diagnostics


@dataclass
class RunDiagnostics:
    """What :func:`diagnose` leaves: per model the JSON parts (``per_class``, ``prediction_matrix``,
    ``cka``) and the attack's per-example tensors (see :meth:`to_tensors`)."""

    layers: tuple[str, ...]
    probe_size: int
    json: dict[str, dict[str, Any]] = field(default_factory=dict)
    subsets: dict[str, torch.Tensor] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    scores: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    losses: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def to_tensors(self, prefix: str = "diag/") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for s, idx in self.subsets.items():
            out[f"{prefix}idx/{s}"] = idx
            out[f"{prefix}x/{s}"] = self.images[s]
            out[f"{prefix}y/{s}"] = self.labels[s]
        for kind in ("scores", "losses"):
            for model, sets in getattr(self, kind).items():
                for s, t in sets.items():
                    out[f"{prefix}{kind}/{model}/{s}"] = t
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}


@dataclass
class AttackView:
    """The attack's per-example view read back from a run's tensors (:func:`attack_view`)."""

    models: list[str]
    images: dict[str, torch.Tensor]  # set -> uint8 N x C x H x W
    labels: dict[str, np.ndarray]
    indices: dict[str, np.ndarray]
    scores: dict[str, dict[str, np.ndarray]]  # model -> set -> P(member)
    losses: dict[str, dict[str, np.ndarray]]  # model -> set -> cross-entropy


def attack_view(tensors: Mapping[str, torch.Tensor], models: Sequence[str] | None = None,
                prefix: str = "diag/") -> AttackView | None:
    """The stored per-example attack view of a run, or None when the run has none (stored before
    it existed, or run without the attacks)."""
    sets = [s for s in ATTACK_SETS if f"{prefix}idx/{s}" in tensors]
    if not sets:
        return None
    found: list[str] = []
    for k in tensors:
        if k.startswith(f"{prefix}scores/"):
            m = k[len(prefix) + 7:].rsplit("/", 1)[0]
            if m not in found:
                found.append(m)
    order = [m for m in (models or found) if m in found] + [m for m in found if models and m not in models]
    if not order:
        return None
    return AttackView(
        models=order,
        images={s: tensors[f"{prefix}x/{s}"] for s in sets},
        labels={s: tensors[f"{prefix}y/{s}"].numpy() for s in sets},
        indices={s: tensors[f"{prefix}idx/{s}"].numpy() for s in sets},
        scores={m: {s: tensors[f"{prefix}scores/{m}/{s}"].double().numpy() for s in sets} for m in order},
        losses={m: {s: tensors[f"{prefix}losses/{m}/{s}"].double().numpy() for s in sets} for m in order},
    )


class Diagnoser:
    """Diagnoses one model after another against the fixed references (Retrain and the original)
    of one run: ``d = Diagnoser(data, seed, original, retrain, attacks)``, then ``d.add(name, model)``
    for every model (the references too), then ``d.result``."""

    def __init__(self, data: UnlearnData, seed: int, original: nn.Module, retrain: nn.Module, attacks: bool = True):
        if data.y_train is None or data.y_test is None:
            raise ValueError("the diagnostics need the labelled task, not a label-agnostic view")
        self.data, self.seed, self.attacks = data, int(seed), attacks
        self.n_classes = int(original.num_classes)
        dev = data.x_test.device
        self.probe = data.x_test[probe_indices(len(data.x_test), seed).to(dev)]
        self.ref = {"to_retrain": block_outputs(retrain, self.probe),
                    "to_original": block_outputs(original, self.probe)}
        self.result = RunDiagnostics(block_names(original), len(self.probe))
        if attacks:
            subsets = attack_subsets(data, seed)
            self.result.subsets = subsets
            for s, idx in subsets.items():
                x = (data.x_train if s != "test" else data.x_test)[idx.to(dev)]
                y = (data.y_train if s != "test" else data.y_test)[idx.to(dev)]
                self.result.images[s] = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                self.result.labels[s] = y.cpu()

    def add(self, name: str, model: nn.Module, kept: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Diagnose ``model``; ``kept``: what ``metrics.evaluate(..., keep=kept)`` left for this model
        (its logits and its fitted ASR attacker), reused instead of computed again."""
        data = self.data
        kept = kept or {}
        logits_train = kept.get("logits_train")
        logits_train = predict_logits(model, data.x_train) if logits_train is None else logits_train
        logits_test = kept.get("logits_test")
        logits_test = predict_logits(model, data.x_test) if logits_test is None else logits_test
        f_idx = data.forget_idx
        part: dict[str, Any] = {
            "per_class": {c: (None if v is None else round(v, 4))
                          for c, v in per_class_accuracy(logits_test, data.y_test, self.n_classes).items()},
            "prediction_matrix": {"forget": prediction_matrix(logits_train[f_idx], data.y_train[f_idx], self.n_classes),
                                  "test": prediction_matrix(logits_test, data.y_test, self.n_classes)},
        }
        outs = block_outputs(model, self.probe)
        part["cka"] = {k: [round(linear_cka(a, b), 6) for a, b in zip(outs, ref)] for k, ref in self.ref.items()}
        self.result.json[name] = part
        if self.attacks:
            p_train, p_test = logits_train.softmax(1), logits_test.softmax(1)
            clf = kept["attacker"] if "attacker" in kept else asr_attacker(p_train[data.retain_idx], p_test, self.seed)
            scores, losses = {}, {}
            for s, idx in self.result.subsets.items():
                logits = (logits_train if s != "test" else logits_test)[idx.to(logits_train.device)]
                y = self.result.labels[s].to(logits.device)
                losses[s] = torch.nn.functional.cross_entropy(logits, y, reduction="none").float().cpu()
                if clf is None or len(idx) == 0:
                    scores[s] = torch.full((len(idx),), float("nan"))
                else:
                    prob = clf.predict_proba(asr_features(logits.softmax(1)))
                    scores[s] = torch.from_numpy(np.ascontiguousarray(prob[:, 1], dtype=np.float32))
            self.result.scores[name], self.result.losses[name] = scores, losses
        return part


def examples_by_disagreement(view: AttackView, which: str, reference: str = "retrain") -> list[int]:
    """Positions of the examples of set ``which``, the one whose attack score differs most from
    ``reference``'s (over the other models) first."""
    ref = view.scores.get(reference, {}).get(which)
    n = len(view.indices[which])
    if ref is None or len(view.models) < 2:
        return list(range(n))
    gaps = np.zeros(n)
    for m in view.models:
        if m != reference:
            gaps = np.fmax(gaps, np.abs(view.scores[m][which] - ref))
    return [int(i) for i in np.argsort(-gaps, kind="stable")]


def example_rows(view: AttackView, which: str, pos: int, reference: str = "retrain",
                 titles: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per model for one example: its loss, its attack score and the score's difference to
    ``reference``'s."""
    ref = view.scores.get(reference, {}).get(which)
    rows = []
    for m in view.models:
        score = float(view.scores[m][which][pos])
        rows.append({"model": (titles or {}).get(m, m), "loss (CE)": float(view.losses[m][which][pos]),
                     "attack score P(member)": score,
                     "Δ score to Retrain": None if ref is None else score - float(ref[pos])})
    return rows


def row_normalised(matrix: Sequence[Sequence[int]]) -> np.ndarray:
    """A prediction matrix as shares (%) of each true class's examples (NaN rows where a class has
    none)."""
    m = np.asarray(matrix, dtype=float)
    tot = m.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, 100.0 * m / np.where(tot > 0, tot, 1), np.nan)


def enlarged(img: torch.Tensor, size: int = 112) -> np.ndarray:
    """A uint8 ``C x H x W`` image as ``H x W`` (grey) or ``H x W x 3``, enlarged with square pixels to
    about ``size`` pixels for display."""
    a = img.detach().cpu().numpy()
    a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    k = max(1, size // max(1, a.shape[0]))
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)
