"""What the app shows beyond the metric table: per-model outputs on fixed evaluation subsets,
projections of penultimate features in one shared frame, per-sample losses and their KDEs,
a membership-AUC of forget vs unseen losses, and generator snapshots as storable tensors.

Everything here is pure (NumPy / torch / scipy / scikit-learn / umap-learn), seeded, and runs
on the CPU in seconds for the sizes used (a few hundred to ~1000 points per model).

**The shared frame.** Each model's penultimate features live in that model's own coordinate
system: Retrain is trained from scratch, so its feature dimension ``i`` means nothing relative to
dimension ``i`` of the original. Feeding one model's features into a projection fitted on
another model's (or fitting one projection on the concatenation) would mix unrelated
coordinates. So every model is projected on its *own* features, with the same settings and seed,
and the panels are then put into one frame by the samples they share (the same test images in
every panel):

1. the reference model (the original) is projected first and its layout centred and scaled to
   unit RMS radius;
2. every other model is projected with the reference layout as its starting point (UMAP and
   t-SNE accept an initial layout; PCA needs none), so the optimiser starts in the shared frame;
3. each layout is then aligned to the reference by orthogonal Procrustes -- rotation or
   reflection, one uniform scale and a translation, fitted on the shared samples -- which
   removes the arbitrary orientation of a projection without changing its shape.

Neighbourhoods inside a panel are the model's own; positions across panels are comparable
because identical geometry lands on identical coordinates (see ``tests/test_analysis.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

PROJECTIONS = ("umap", "tsne", "pca")
PROJECTION_TITLES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}
LOSS_SETS = ("forget", "unseen", "retain")
LOSS_SET_TITLES = {"forget": "forgotten (D_f)", "unseen": "unseen test, same class(es)", "retain": "retained (D_r)"}


# --------------------------------------------------------------------------- per-model outputs


@dataclass
class AnalysisPack:
    """Per-model outputs on fixed subsets, the same subsets for every model.

    Indices refer to the task's tensors: ``test_idx`` into ``x_test``, ``forget_idx`` and
    ``retain_idx`` into ``x_train``. Labels are as stored in D (noisy ones where the spec
    relabelled samples); images are kept as uint8 for display only.
    """

    models: list[str]
    forget_classes: tuple[int, ...]
    test_idx: torch.Tensor
    y_test: torch.Tensor
    x_test: torch.Tensor  # uint8, N x C x H x W
    forget_idx: torch.Tensor
    y_forget: torch.Tensor
    retain_idx: torch.Tensor
    y_retain: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    logits_test: dict[str, torch.Tensor] = field(default_factory=dict)
    logits_forget: dict[str, torch.Tensor] = field(default_factory=dict)
    logits_retain: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def unseen_mask(self) -> torch.Tensor:
        """Test samples of the forgotten class(es) ("unseen" in the paper's Fig. 4)."""
        return torch.isin(self.y_test, torch.tensor(self.forget_classes, dtype=self.y_test.dtype))

    def test_images(self) -> torch.Tensor:
        return self.x_test.float() / 255.0

    def to_tensors(self, prefix: str = "analysis/") -> dict[str, torch.Tensor]:
        out = {
            f"{prefix}forget_classes": torch.tensor(self.forget_classes, dtype=torch.long),
            f"{prefix}test_idx": self.test_idx, f"{prefix}y_test": self.y_test, f"{prefix}x_test": self.x_test,
            f"{prefix}forget_idx": self.forget_idx, f"{prefix}y_forget": self.y_forget,
            f"{prefix}retain_idx": self.retain_idx, f"{prefix}y_retain": self.y_retain,
        }
        for kind in ("features", "logits_test", "logits_forget", "logits_retain"):
            for name, t in getattr(self, kind).items():
                out[f"{prefix}{kind}/{name}"] = t
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], models: Sequence[str] | None = None,
                     prefix: str = "analysis/") -> AnalysisPack:
        """Rebuild a pack; ``models`` fixes the order (default: the order found)."""
        try:
            g = lambda k: tensors[prefix + k]  # noqa: E731
            pack = cls([], tuple(int(c) for c in g("forget_classes").tolist()), g("test_idx"), g("y_test"),
                       g("x_test"), g("forget_idx"), g("y_forget"), g("retain_idx"), g("y_retain"))
        except KeyError as exc:
            raise ValueError(f"this run has no analysis data ({exc.args[0]} missing); run it again") from None
        found: list[str] = []
        for kind in ("features", "logits_test", "logits_forget", "logits_retain"):
            start = f"{prefix}{kind}/"
            for k, v in tensors.items():
                if k.startswith(start):
                    name = k[len(start):]
                    getattr(pack, kind)[name] = v
                    if name not in found:
                        found.append(name)
        order = [m for m in (models or found) if m in pack.features]
        pack.models = order
        return pack


def _sample(idx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    idx = idx.cpu()
    if len(idx) <= n:
        return idx.clone()
    return idx[torch.randperm(len(idx), generator=gen)[:n]].sort().values


@torch.no_grad()
def model_outputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) in eval mode, batched, float32 on the CPU; the model's
    train/eval mode is restored. Logits are computed as ``head(features)`` -- one pass."""
    was_training = model.training
    model.eval()
    try:
        feats, logits = [], []
        for i in range(0, len(x), batch_size):
            f = model.features(x[i:i + batch_size])
            feats.append(f.float().cpu())
            logits.append(model.head(f).float().cpu())
        if not feats:
            return torch.zeros(0, 0), torch.zeros(0, 0)
        return torch.cat(feats), torch.cat(logits)
    finally:
        model.train(was_training)


def build_pack(
    models: Mapping[str, torch.nn.Module],
    data: Any,
    *,
    n_test: int = 1000,
    n_forget: int = 500,
    n_retain: int = 500,
    seed: int = 0,
) -> AnalysisPack:
    """Evaluate every model on the same fixed subsets of the task ``data`` (an UnlearnData).

    Subsets are drawn once with ``seed``: up to ``n_test`` test samples, ``n_forget`` samples of
    D_f and ``n_retain`` of D_r. Needs labels (use the labelled task, not an agnostic view).
    """
    if data.y_train is None or data.y_test is None:
        raise ValueError("the analysis needs the labelled task, not a label-agnostic view")
    gen = torch.Generator().manual_seed(10_007 + seed)
    test_idx = _sample(torch.arange(len(data.x_test)), n_test, gen)
    forget_idx = _sample(data.forget_idx, n_forget, gen)
    retain_idx = _sample(data.retain_idx, n_retain, gen)
    dev = data.x_train.device
    x_test = data.x_test[test_idx.to(dev)]
    x_forget = data.x_train[forget_idx.to(dev)]
    x_retain = data.x_train[retain_idx.to(dev)]
    pack = AnalysisPack(
        models=list(models),
        forget_classes=tuple(int(c) for c in data.spec.classes),
        test_idx=test_idx, y_test=data.y_test[test_idx.to(dev)].cpu(),
        x_test=(x_test.clamp(0, 1) * 255).round().to(torch.uint8).cpu(),
        forget_idx=forget_idx, y_forget=data.y_train[forget_idx.to(dev)].cpu(),
        retain_idx=retain_idx, y_retain=data.y_train[retain_idx.to(dev)].cpu(),
    )
    for name, model in models.items():
        pack.features[name], pack.logits_test[name] = model_outputs(model, x_test)
        pack.logits_forget[name] = model_outputs(model, x_forget)[1]
        pack.logits_retain[name] = model_outputs(model, x_retain)[1]
    return pack


# --------------------------------------------------------------------------- per-sample losses


def per_sample_ce(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Cross-entropy of every sample (natural log), as float64 NumPy."""
    if len(y) == 0:
        return np.zeros(0)
    return F.cross_entropy(logits.float(), y.long(), reduction="none").double().numpy()


def loss_sets(pack: AnalysisPack, model: str) -> dict[str, np.ndarray]:
    """Per-sample CE of one model on: the forgotten training samples (labels as stored in D),
    unseen test samples of the forgotten class(es), and retained training samples."""
    mask = pack.unseen_mask
    return {
        "forget": per_sample_ce(pack.logits_forget[model], pack.y_forget),
        "unseen": per_sample_ce(pack.logits_test[model][mask], pack.y_test[mask]),
        "retain": per_sample_ce(pack.logits_retain[model], pack.y_retain),
    }


def test_losses(pack: AnalysisPack, model: str) -> np.ndarray:
    return per_sample_ce(pack.logits_test[model], pack.y_test)


def test_predictions(pack: AnalysisPack, model: str) -> np.ndarray:
    return pack.logits_test[model].argmax(1).numpy()


# --------------------------------------------------------------------------- KDE and membership AUC


LOG_FLOOR = 1e-6


@dataclass
class KdeCurve:
    """A density of log10(CE + 1e-6) on ``grid`` (so ``trapz(density, grid) ~ 1``); ``x`` is the
    loss value at each grid point, for plotting on a log axis."""

    grid: np.ndarray
    density: np.ndarray
    n: int

    @property
    def x(self) -> np.ndarray:
        return 10.0 ** self.grid


def _log_losses(values: np.ndarray) -> np.ndarray:
    return np.log10(np.clip(np.asarray(values, dtype=float), 0.0, None) + LOG_FLOOR)


def kde_grid(sets: Sequence[np.ndarray], n_points: int = 256, pad: float = 0.75) -> np.ndarray:
    """A common grid (in log10 loss) covering every set with ``pad`` decades of margin."""
    logs = [_log_losses(v) for v in sets if len(v)]
    if not logs:
        return np.linspace(-6, 2, n_points)
    lo = min(float(v.min()) for v in logs) - pad
    hi = max(float(v.max()) for v in logs) + pad
    if hi - lo < 1.0:
        mid = (hi + lo) / 2
        lo, hi = mid - 0.5, mid + 0.5
    return np.linspace(lo, hi, n_points)


def kde_curve(values: np.ndarray, grid: np.ndarray | None = None, bw: str | float = "scott") -> KdeCurve:
    """Gaussian KDE (scipy) of log10 per-sample losses. Degenerate inputs (one value, or all
    equal) get a narrow Gaussian of width 0.05 decades, so the curve still integrates to 1."""
    from scipy.stats import gaussian_kde

    logs = _log_losses(values)
    if grid is None:
        grid = kde_grid([values])
    if len(logs) == 0:
        return KdeCurve(grid, np.zeros_like(grid), 0)
    if len(logs) < 2 or float(np.std(logs)) < 1e-6:
        sd = 0.05
        dens = np.exp(-0.5 * ((grid[:, None] - logs[None, :]) / sd) ** 2).mean(1) / (sd * np.sqrt(2 * np.pi))
        return KdeCurve(grid, dens, len(logs))
    kde = gaussian_kde(logs, bw_method=bw)
    return KdeCurve(grid, kde(grid), len(logs))


def kde_curves(sets: Mapping[str, np.ndarray], n_points: int = 256) -> dict[str, KdeCurve]:
    """One KDE per named loss set, all on one grid."""
    grid = kde_grid(list(sets.values()), n_points)
    return {name: kde_curve(v, grid) for name, v in sets.items()}


def membership_auc(forget_losses: np.ndarray, unseen_losses: np.ndarray) -> float:
    """AUC of a loss-threshold membership attack that calls low-loss samples members.

    ``AUC = P(L_unseen > L_forget) + 0.5 * P(L_unseen == L_forget)`` for a random forgotten
    training sample and a random unseen test sample of the same class(es) -- the Mann-Whitney U
    statistic divided by ``n_forget * n_unseen``, computed exactly from ranks (ties count half).
    0.5: the two loss sets cannot be told apart; near 1: forgotten samples still look like
    training data (low loss, remembered); near 0: they look *more* foreign than unseen data
    (over-forgetting, itself a membership signal). NaN when either set is empty.
    """
    from scipy.stats import rankdata

    f = np.asarray(forget_losses, dtype=float)
    u = np.asarray(unseen_losses, dtype=float)
    if len(f) == 0 or len(u) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([u, f]))  # average ranks for ties
    rank_sum_u = ranks[: len(u)].sum()
    u_stat = rank_sum_u - len(u) * (len(u) + 1) / 2  # pairs where unseen loss > forget loss (+ half ties)
    return float(u_stat / (len(u) * len(f)))


def distinguishability(forget_losses: np.ndarray, unseen_losses: np.ndarray) -> float:
    """``max(AUC, 1 - AUC)`` of :func:`membership_auc`, in [0.5, 1]: how well the best
    threshold on the loss separates forgotten from unseen samples, in either direction.
    Retrain's value is the target (about 0.5 when forgetting is exact)."""
    auc = membership_auc(forget_losses, unseen_losses)
    return float("nan") if auc != auc else max(auc, 1.0 - auc)


def loss_summary(pack: AnalysisPack) -> list[dict[str, Any]]:
    """One row per model: median losses per set, the membership AUC and distinguishability."""
    rows = []
    for m in pack.models:
        s = loss_sets(pack, m)
        auc = membership_auc(s["forget"], s["unseen"])
        rows.append({
            "model": m,
            **{f"median_{k}": (float(np.median(v)) if len(v) else float("nan")) for k, v in s.items()},
            "auc": auc, "distinguishability": float("nan") if auc != auc else max(auc, 1 - auc),
        })
    return rows


# --------------------------------------------------------------------------- projections


def procrustes_align(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Map ``y`` onto ``ref`` (same rows) by rotation/reflection, uniform scale and translation,
    minimising the squared distance (orthogonal Procrustes)."""
    y = np.asarray(y, dtype=float)
    ref = np.asarray(ref, dtype=float)
    mu_y, mu_r = y.mean(0), ref.mean(0)
    yc, rc = y - mu_y, ref - mu_r
    norm = float((yc ** 2).sum())
    if norm < 1e-24:
        return np.tile(mu_r, (len(y), 1))
    u, s, vt = np.linalg.svd(yc.T @ rc)
    rot = u @ vt
    scale = float(s.sum()) / norm
    return scale * yc @ rot + mu_r


def _normalise_layout(y: np.ndarray) -> np.ndarray:
    yc = y - y.mean(0)
    rms = float(np.sqrt((yc ** 2).sum(1).mean()))
    return yc / rms if rms > 1e-12 else yc


def _project_one(x: np.ndarray, method: str, seed: int, init: np.ndarray | None, n_neighbors: int,
                 n_epochs: int | None) -> np.ndarray:
    n = len(x)
    if n < 3:
        return np.zeros((n, 2))
    if method == "pca":
        from sklearn.decomposition import PCA

        out = PCA(n_components=2, random_state=seed).fit_transform(x)
        return out
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        start = init if init is not None else "pca"
        if isinstance(start, np.ndarray):
            start = (start / max(1e-12, float(np.std(start[:, 0])))) * 1e-4  # sklearn's scale for inits
        return TSNE(n_components=2, perplexity=perplexity, init=start, random_state=seed,
                    learning_rate="auto", max_iter=500).fit_transform(x)
    if method == "umap":
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reducer = umap.UMAP(n_components=2, n_neighbors=int(min(n_neighbors, n - 1)), min_dist=0.1,
                                random_state=seed, init=init if init is not None else "spectral",
                                n_epochs=n_epochs or 200, transform_seed=seed)
            return reducer.fit_transform(x)
    raise ValueError(f"unknown projection {method!r}; use one of {', '.join(PROJECTIONS)}")


def project(
    features: Mapping[str, np.ndarray | torch.Tensor],
    method: str = "umap",
    *,
    reference: str | None = None,
    seed: int = 0,
    n_neighbors: int = 15,
    n_epochs: int | None = None,
) -> dict[str, np.ndarray]:
    """2-D layouts of every model's features, all in the reference model's frame (see the
    module docstring). Every array must have the same rows (the same samples). Deterministic for
    a given ``seed``. Returns float32 arrays of shape ``[n, 2]``, keyed like ``features``."""
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; use one of {', '.join(PROJECTIONS)}")
    feats = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.float32)
             for k, v in features.items()}
    if not feats:
        return {}
    sizes = {len(v) for v in feats.values()}
    if len(sizes) != 1:
        raise ValueError(f"every model must be evaluated on the same samples; got sizes {sorted(sizes)}")
    reference = reference if reference in feats else next(iter(feats))
    ref = _normalise_layout(_project_one(feats[reference], method, seed, None, n_neighbors, n_epochs))
    out = {reference: ref.astype(np.float32)}
    for name, x in feats.items():
        if name == reference:
            continue
        init = ref if method in ("umap", "tsne") else None
        y = _project_one(x, method, seed, init, n_neighbors, n_epochs)
        out[name] = procrustes_align(y, ref).astype(np.float32)
    return {k: out[k] for k in feats}


def projections_to_tensors(layouts: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for name, v in layouts.items()}


def projections_from_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in tensors.items()}


def warm_up_umap() -> None:
    """Compile umap-learn's numba kernels once (about 15-20 s on a CPU), e.g. in a background
    thread while the first models train, so the first real projection is fast."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    _project_one(x, "umap", 0, None, 10, 20)
    _project_one(x, "umap", 0, _normalise_layout(x[:, :2].astype(float)), 10, 20)


# --------------------------------------------------------------------------- generator snapshots

SNAP_INT_KEYS = ("update", "step")


def snapshots_to_tensors(method: str, snapshots: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Flatten a list of generator snapshots into ``{method}/snap/{i:02d}/{key}`` tensors."""
    out: dict[str, torch.Tensor] = {}
    for i, snap in enumerate(snapshots):
        for key, value in snap.items():
            if isinstance(value, torch.Tensor):
                t = value.detach().cpu()
            elif isinstance(value, (int, float, bool)):
                t = torch.tensor(value)
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
                t = torch.tensor(value)
            else:
                continue
            out[f"{method}/snap/{i:02d}/{key}"] = t.contiguous()
    return out


def snapshots_from_tensors(tensors: Mapping[str, torch.Tensor], method: str) -> list[dict[str, Any]]:
    prefix = f"{method}/snap/"
    by_index: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if not k.startswith(prefix):
            continue
        idx, key = k[len(prefix):].split("/", 1)
        by_index.setdefault(int(idx), {})[key] = int(v) if key in SNAP_INT_KEYS and v.numel() == 1 else v
    return [by_index[i] for i in sorted(by_index)]


def history_to_tensors(method: str, history: Sequence[Mapping[str, float]]) -> dict[str, torch.Tensor]:
    """A list of loss dicts as ``{method}/history/{key}`` float64 columns (NaN where absent)."""
    keys = sorted({k for row in history for k, v in row.items() if isinstance(v, (int, float))})
    return {f"{method}/history/{k}": torch.tensor([float(row.get(k, float("nan"))) for row in history],
                                                  dtype=torch.float64) for k in keys}


def history_from_tensors(tensors: Mapping[str, torch.Tensor], method: str) -> dict[str, np.ndarray]:
    prefix = f"{method}/history/"
    return {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}


def snapshot_methods(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Methods of a stored run that have generator snapshots."""
    out: list[str] = []
    for k in tensors:
        if "/snap/" in k:
            m = k.split("/snap/", 1)[0]
            if m not in out:
                out.append(m)
    return out


def mask_collapse(snap: Mapping[str, Any], low: float = 0.05, high: float = 0.95) -> str | None:
    """'forget' / 'retain' when every mask's mean forget share is beyond ``high`` / below ``low``
    (the generator collapsed to one image), else None."""
    mm = snap.get("mask_mean")
    if mm is None:
        mask = snap.get("mask")
        if mask is None:
            return None
        mm = mask.float().mean(dim=(-2, -1))
    mm = torch.as_tensor(mm).float()
    if mm.numel() == 0:
        return None
    if bool((mm > high).all()):
        return "forget"
    if bool((mm < low).all()):
        return "retain"
    return None


# Generator health (METHOD.md §9): the scalars each snapshot carries as ``h_{key}``, in this order.
HEALTH_KEYS = ("share_err", "share_slope", "std_mid", "gain_retain", "gain_forget")
# The debug views at λ = ``debug_lam`` a snapshot carries (runs stored before they existed lack them).
DEBUG_KEYS = ("debug_value_f", "debug_value_r", "debug_attn_f", "debug_logit_diff")


def snapshot_health(snap: Mapping[str, Any]) -> dict[str, float]:
    """One snapshot's health scalars as floats, keyed as :data:`HEALTH_KEYS`; the keys the
    snapshot lacks are left out ({} for a run stored before they were recorded)."""
    return {k: float(snap[f"h_{k}"]) for k in HEALTH_KEYS if f"h_{k}" in snap}


def has_debug_views(snap: Mapping[str, Any]) -> bool:
    """Whether a snapshot carries the generator's debug views (value maps, attention, logits)."""
    return all(k in snap for k in DEBUG_KEYS)
