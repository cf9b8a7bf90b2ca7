"""SFR-on: saliency forgetting in the remain-preserving manifold, on-line (fast-slow updates).

Huang, Cheng, Zheng, Wang, He, Li and Huang, "Unified Gradient-Based Machine Unlearning with
Remain Geometry Enhancement" (NeurIPS 2024, arXiv 2409.19732; reference code
``K1nght/Unified-Unlearning-w-Remain-Geometry``, ``Classification/unlearn/sfron.py``).
EVALUATION.md §4, "SFR-on"; docs/baselines.md.

Rule (restated from the reference's classification code):

1. **Forget-remain balanced saliency mask**, at f_D in eval mode: diagonal empirical Fishers
   ``F_f = mean_B (∇_θ CE(B))²`` over batches of D_f and ``F_r`` likewise over D_r; an entry may
   be updated by the forget steps when ``(F_f + 1e-15) / (F_r + 1e-15) ≥ γ`` (γ = 1). The remain
   Fisher is the "remain geometry": weights the retained data relies on more than the forget data
   are shielded from the ascent.
2. **On-line fast-slow updates** for ``T`` iterations with one SGD optimiser (momentum 0.9, wd
   5e-4, lr cosine-annealed from ``lr`` to 0 over T), each iteration ``t``:
   - every ``forget_every``-th iteration (t = 0, 5, 10, ...), a *forget step* on the next D_f
     batch: loss ``−α_t · Σ_i w_i CE_i`` with adaptive weights ``w_i ∝ CE_i^{−λ}`` (detached,
     normalised to sum 1: samples not yet forgotten weigh more), ``α_t = α (1 + cos(π t/T)) / 2``;
     the gradient is multiplied by the mask and its norm clipped at ``clip``, then one step;
   - always, a *retain step*: CE on the next D_r batch, unmasked, unclipped, one step.
   The frequent retain descent steps are the paper's implicit, Hessian-free approximation of
   moving inside the remain-preserving manifold.

The reference's EMA of the weights uses β = 1, which leaves the weights unchanged, so it is not
restated. Its other schedules (linear, exponential) for α are offered as ``alpha_schedule``.

CPU-scale deviations [ours]: the reference runs T = 1500 iterations at batch 128 (CIFAR-10, 10%
random forgetting) and estimates both Fishers over the whole of D_f and D_r. Here T and the batch
are family defaults (digits 100 at 64; LAF's 2-conv CNN 1500 at 128; fast recipe 250 at 128) and
``fisher_batches`` may cap the batches of each Fisher (a seeded sample; 0 = all, the reference's
choice; fast recipe 20 — a full pass over D_r alone would cost a quarter of Retrain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._loop import MethodLoop, gradient_statistics, make_optimizer, side_stream, steps_per_epoch
from .base import MethodConfig, MethodOutput, param, register_method


@dataclass(frozen=True)
class SFRonConfig(MethodConfig):
    lr: float = param(0.01, "SGD learning rate (momentum 0.9), cosine-annealed to 0 over the iterations [ref 0.01]",
                      min=1e-6, max=1.0, log=True)
    weight_decay: float = param(5e-4, "weight decay [ref]", min=0.0, max=0.1)
    steps: int = param(1500, "iterations T; each has one retain step, every forget_every-th also a forget "
                            "step first [ref 1500]", min=1, max=100000, log=True)
    batch_size: int = param(128, "batch size of forget and retain steps and of the Fisher passes [ref 128]",
                            min=1, max=4096)
    forget_every: int = param(5, "a forget step every this many iterations [ref 5]", min=1, max=100)
    alpha: float = param(25.0, "α, weight of the forget ascent at t = 0, decayed by alpha_schedule [ref 25 "
                         "(CIFAR-10), 500 (Tiny-ImageNet)]", min=0.01, max=1000.0, log=True)
    alpha_schedule: str = param("cosine", "decay of α over the iterations [ref cosine]",
                                choices=("cosine", "linear", "expdecay"))
    lam: float = param(0.5, "λ, exponent of the adaptive forget weights w_i ∝ CE_i^−λ [ref 0.5]", min=0.0, max=5.0)
    clip: float = param(7.0, "gradient-norm clip of the forget step [ref 7]", min=0.01, max=1000.0, log=True)
    threshold: float = param(1.0, "γ: a weight takes forget steps where F_f / F_r ≥ γ [ref 1]", min=1e-3,
                             max=1000.0, log=True)
    mask: bool = param(True, "use the forget-remain saliency mask (off: every weight takes forget steps)")
    fisher_batches: int = param(0, "batches of each set for the Fishers, a seeded sample (0 = all, as the "
                                "reference) [ours]", min=0, max=100000)
    augment: bool = param(False, "use the original training's augmentation in the steps (ResNet-18: on)")

    FAMILY_DEFAULTS = {
        "digits": {"steps": 100, "batch_size": 64},
        "resnet": {"augment": True},
        # Fast recipe (cnn_fast): 250 iterations, Fishers on 20 batches each (Fashion-MNIST validation split).
        "cnn:fast": {"steps": 250, "fisher_batches": 20},
    }


def alpha_at(cfg: SFRonConfig, t: int) -> float:
    """``α_t``: the forget weight of iteration ``t`` under the configured schedule."""
    frac = t / max(1, cfg.steps)
    if cfg.alpha_schedule == "linear":
        return cfg.alpha * (1 - frac)
    if cfg.alpha_schedule == "expdecay":
        return cfg.alpha * (1 - frac) ** 2
    return cfg.alpha * (1 + math.cos(math.pi * frac)) / 2


def adaptive_forget_loss(logits: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """``Σ_i w_i CE_i`` with ``w_i = CE_i^−λ / Σ_j CE_j^−λ`` (weights detached)."""
    ce = F.cross_entropy(logits, y, reduction="none")
    coef = 1.0 / (ce.detach() ** lam + 1e-15)
    return (coef / coef.sum() * ce).sum()


def fisher_diag(model: nn.Module, loop: MethodLoop, idx: torch.Tensor, y: torch.Tensor, batch_size: int,
                max_batches: int) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared CE gradient, per parameter entry, at the current weights in
    eval mode; ``max_batches`` > 0 uses a seeded sample of that many batches."""
    if max_batches and len(idx) > max_batches * batch_size:
        perm = torch.randperm(len(idx), generator=loop.gen, device=loop.gen.device).to(idx.device)
        idx = idx[perm[: max_batches * batch_size]]

    def ce(m, b):
        return F.cross_entropy(m(loop.data.x_train[b]), y[b])

    return gradient_statistics(model, loop, idx, batch_size, ce, transform=torch.square, mean=True)


def remain_balanced_mask(f_forget: dict[str, torch.Tensor], f_remain: dict[str, torch.Tensor],
                         threshold: float) -> dict[str, torch.Tensor]:
    """``(F_f + 1e-15) / (F_r + 1e-15) ≥ threshold`` per entry."""
    return {n: (f_forget[n] + 1e-15) / (f_remain[n] + 1e-15) >= threshold for n in f_forget}


def fisher_steps(data, cfg: SFRonConfig) -> int:
    def n(size):
        s = steps_per_epoch(size, cfg.batch_size)
        return min(s, cfg.fisher_batches) if cfg.fisher_batches else s

    return (n(len(data.forget_idx)) + n(len(data.retain_idx))) if cfg.mask else 0


def forget_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, alpha: float,
                cfg: SFRonConfig, mask: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """One masked, clipped, adaptive-weighted ascent step; returns the (positive) weighted CE."""
    opt.zero_grad(set_to_none=True)
    weighted = adaptive_forget_loss(model(x), y, cfg.lam)
    (-alpha * weighted).backward()
    if mask is not None:
        for n, p in model.named_parameters():
            if p.grad is not None:
                p.grad.mul_(mask[n])
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.clip)
    opt.step()
    return weighted.detach()


@register_method(
    "sfr_on", config=SFRonConfig, labels="aware", display="SFR-on",
    summary="adaptive gradient ascent on D_f through a forget/remain Fisher-ratio mask, interleaved with "
            "descent on D_r (fast-slow)",
    paper="Huang et al., NeurIPS 2024",
)
def sfr_on(model, data, cfg: SFRonConfig, *, device, callbacks):
    n_forget_steps = -(-cfg.steps // cfg.forget_every)
    loop = MethodLoop("sfr_on", data, callbacks, fisher_steps(data, cfg) + cfg.steps + n_forget_steps,
                      augment=cfg.augment, model=model)
    y = data.y_train
    mask, share = None, 1.0
    if cfg.mask:
        f_forget = fisher_diag(model, loop, data.forget_idx, y, cfg.batch_size, cfg.fisher_batches)
        f_remain = fisher_diag(model, loop, data.retain_idx, y, cfg.batch_size, cfg.fisher_batches)
        mask = remain_balanced_mask(f_forget, f_remain, cfg.threshold)
        share = float(sum(int(m.sum()) for m in mask.values())) / sum(m.numel() for m in mask.values())
        loop.message(f"saliency mask: {100 * share:.1f}% of the weights take forget steps", phase="mask",
                     mask_share=share)
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr, cfg.weight_decay)
    forget_stream = side_stream(loop, data.forget_idx, cfg.batch_size, salt=3)
    retain_stream = loop.stream(data.retain_idx, cfg.batch_size)
    for t in range(cfg.steps):
        for group in opt.param_groups:  # torch's CosineAnnealingLR, stepped once per iteration
            group["lr"] = cfg.lr * (1 + math.cos(math.pi * t / cfg.steps)) / 2
        model.train()
        if t % cfg.forget_every == 0:
            b = next(forget_stream)
            weighted = forget_step(model, opt, loop.images(b), y[b], alpha_at(cfg, t), cfg, mask)
            loop.step({"forget_ce": weighted})
        b = next(retain_stream)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(loop.images(b)), y[b])
        loss.backward()
        opt.step()
        loop.step({"retain_ce": loss})
    return MethodOutput(loop.finish(model), {"mask_share": share})
