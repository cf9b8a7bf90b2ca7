"""The Learn page's toy: unlearning one Gaussian blob in 2-D, with and without mixup
regularisation -- the idea of the paper's Fig. 1, small enough to run in about a second.

Two or three overlapping Gaussian blobs are classified by a small MLP. One blob is the forget
set D_f. Starting from the trained model, two unlearners run the same number of Adam steps with
the same forgetting term -- gradient ascent on D_f (NegGrad: maximise its cross-entropy), the
classic way to provoke *catastrophic unlearning* -- and a regulariser of the same expected
weight ``reg_weight``:

- **without mixup**: cross-entropy on real retained samples, ``reg_weight * CE(f(x_r), y_r)``;
- **with mixup**: cross-entropy on λ-mixes ``x~ = λ x_f + (1-λ) x_r`` of forget/retain pairs
  toward the retained sample's label, weighted by its share,
  ``2 * reg_weight * (1-λ) * CE(f(x~), y_r)`` (``E[2(1-λ)] = 1`` for λ ~ Beta(α, α)).

Mixes fill the region *between* D_f and D_r -- where gradient ascent drags the boundary into the
retained classes -- so they hold the boundary where it matters. This is MixUnlearn's idea in
its simplest form [ours]: the method itself uses contrastive SimLoss targets and learns the
mixing masks adversarially with a generator (METHOD.md); on 2-D points a mask is one number, so
the toy uses plain λ-mixes and cross-entropy.

Retrain (a fresh MLP trained on D_r only) is the yardstick, as everywhere in this project.
Accuracies are measured on a fresh draw of the same blobs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .utils import seeded


@dataclass(frozen=True)
class ToyConfig:
    n_blobs: int = 3
    forget: int = 0
    n_per_blob: int = 120
    spread: float = 1.1  # std of each blob; centres lie on a circle of radius 2.5
    hidden: int = 64
    train_steps: int = 300
    unlearn_steps: int = 60
    lr: float = 1e-2
    reg_weight: float = 1.5
    alpha: float = 0.75  # Beta(alpha, alpha) for lambda
    batch: int = 64
    seed: int = 0
    grid: int = 90

    def validate(self) -> None:
        if self.n_blobs not in (2, 3):
            raise ValueError(f"n_blobs must be 2 or 3, got {self.n_blobs}")
        if not 0 <= self.forget < self.n_blobs:
            raise ValueError(f"forget must be a blob index 0..{self.n_blobs - 1}, got {self.forget}")
        for name in ("n_per_blob", "hidden", "train_steps", "unlearn_steps", "batch", "grid"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("spread", "lr", "alpha"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v}")
        if not (self.reg_weight >= 0 and math.isfinite(self.reg_weight)):
            raise ValueError("reg_weight must be 0 or more")


def blob_centres(n_blobs: int) -> np.ndarray:
    angles = np.pi / 2 + 2 * np.pi * np.arange(n_blobs) / n_blobs
    return 2.5 * np.stack([np.cos(angles), np.sin(angles)], 1)


def make_blobs(cfg: ToyConfig, seed_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed * 7919 + seed_offset)
    centres = torch.tensor(blob_centres(cfg.n_blobs), dtype=torch.float32)
    y = torch.arange(cfg.n_blobs).repeat_interleave(cfg.n_per_blob)
    x = centres[y] + cfg.spread * torch.randn(len(y), 2, generator=g)
    return x, y


def make_mlp(cfg: ToyConfig, seed: int) -> nn.Module:
    with seeded(seed):
        return nn.Sequential(nn.Linear(2, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                             nn.Linear(cfg.hidden, cfg.n_blobs))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, forget_mask: torch.Tensor, cfg: ToyConfig,
            mixup: bool) -> tuple[nn.Module, list[dict[str, float]]]:
    """Adam steps on ``-CE(D_f)`` plus the retain (``mixup=False``) or mix (``mixup=True``)
    regulariser; both unlearners draw the same batches and λs. Returns the model and a log."""
    g = torch.Generator().manual_seed(cfg.seed * 104729 + 11)
    lam_rng = np.random.default_rng(cfg.seed * 104729 + 13)
    xf, yf = x[forget_mask], y[forget_mask]
    xr, yr = x[~forget_mask], y[~forget_mask]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    log: list[dict[str, float]] = []
    n = min(cfg.batch, len(xf), len(xr))
    for step in range(cfg.unlearn_steps):
        fi = torch.randperm(len(xf), generator=g)[:n]
        ri = torch.randperm(len(xr), generator=g)[:n]
        lam = float(lam_rng.beta(cfg.alpha, cfg.alpha))  # one λ per batch, as in the method
        forget_term = -F.cross_entropy(model(xf[fi]), yf[fi])
        if mixup:
            mix = lam * xf[fi] + (1 - lam) * xr[ri]
            reg = 2.0 * (1.0 - lam) * F.cross_entropy(model(mix), yr[ri])
        else:
            reg = F.cross_entropy(model(xr[ri]), yr[ri])
        loss = forget_term + cfg.reg_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append({"step": step, "forget_ce": -float(forget_term.detach()), "regulariser": float(reg.detach())})
    return model, log


@torch.no_grad()
def decision_grid(model: nn.Module, lim: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, ys, predicted class on the n x n grid [ys, xs])."""
    xs = np.linspace(-lim, lim, n, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs)
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))
    pred = model(pts).argmax(1).numpy().reshape(n, n)
    return xs, xs, pred


@torch.no_grad()
def accuracies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, forget: int) -> dict[str, float]:
    pred = model(x).argmax(1)
    f = y == forget
    return {"forget_acc": 100.0 * float((pred[f] == y[f]).float().mean()),
            "retain_acc": 100.0 * float((pred[~f] == y[~f]).float().mean())}


@dataclass
class ToyResult:
    config: dict
    x: np.ndarray
    y: np.ndarray
    forget_mask: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray
    panels: dict[str, np.ndarray]  # name -> predicted class on the grid
    metrics: dict[str, dict[str, float]]  # name -> forget_acc / retain_acc on a fresh draw
    logs: dict[str, list[dict[str, float]]]

    PANEL_TITLES = {"original": "Original (trained on all blobs)", "retrain": "Retrain (never saw the blob)",
                    "plain": "Unlearned without mixup", "mixup": "Unlearned with mixup"}
    PANEL_HELP = {"original": "the model before unlearning", "retrain": "trained from scratch without the blob",
                  "plain": "gradient ascent on the blob + CE on retained samples",
                  "mixup": "gradient ascent on the blob + CE on forget/retain mixes"}


def run_toy(cfg: ToyConfig | None = None, callback=None) -> ToyResult:
    """Train, unlearn both ways, retrain; everything seeded and on the CPU (about a second).

    ``callback(stage: str, fraction: float)`` is called between stages (e.g. a job's progress).
    """
    import copy

    cfg = cfg or ToyConfig()
    cfg.validate()
    report = callback or (lambda stage, frac: None)
    x, y = make_blobs(cfg)
    x_test, y_test = make_blobs(cfg, seed_offset=1)
    forget_mask = y == cfg.forget
    report("training the original MLP", 0.0)
    original = train(make_mlp(cfg, cfg.seed), x, y, cfg.train_steps, cfg.lr)
    report("retraining without the blob", 0.3)
    retrain = train(make_mlp(cfg, cfg.seed), x[~forget_mask], y[~forget_mask], cfg.train_steps, cfg.lr)
    report("unlearning without mixup", 0.55)
    plain, log_plain = unlearn(copy.deepcopy(original), x, y, forget_mask, cfg, mixup=False)
    report("unlearning with mixup", 0.75)
    mixed, log_mix = unlearn(copy.deepcopy(original), x, y, forget_mask, cfg, mixup=True)
    lim = float(np.abs(x.numpy()).max()) + 0.5
    models = {"original": original, "retrain": retrain, "plain": plain, "mixup": mixed}
    panels, metrics = {}, {}
    gx = gy = None
    for name, m in models.items():
        m.eval()
        gx, gy, panels[name] = decision_grid(m, lim, cfg.grid)
        metrics[name] = accuracies(m, x_test, y_test, cfg.forget)
    report("done", 1.0)
    return ToyResult(asdict(cfg), x.numpy(), y.numpy(), forget_mask.numpy(), gx, gy, panels, metrics,
                     {"plain": log_plain, "mixup": log_mix})


def boundary_agreement(result: ToyResult, name: str, reference: str = "retrain") -> float:
    """Share of grid points where ``name`` predicts the same class as ``reference`` (percent)."""
    return 100.0 * float((result.panels[name] == result.panels[reference]).mean())
