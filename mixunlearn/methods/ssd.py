"""Selective Synaptic Dampening (SSD): shrink the weights far more important to D_f than to D.

Foster, Schoepf and Brintrup, "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening" (AAAI 2024). Optional label-free variant LF-SSD: Foster, Schoepf and
Brintrup, "Loss-Free Machine Unlearning" (ICLR 2024 Tiny Papers). EVALUATION.md §4, "SSD".

Rule (no optimiser step at all):

- importances ``I_D = mean_B (∇_θ CE(f(B), y))²`` over the mini-batches B of the whole training
  set D, and ``I_f`` the same over the mini-batches of D_f (diagonal Fisher estimates);
- wherever ``I_f > α · I_D``:  ``θ ← θ · min(λ · I_D / I_f, 1)``; every other entry is untouched.

LF-SSD (``label_free=True``) replaces CE by ``‖f(x)‖²`` (batch mean of the squared L2 norm of the
logits) and the squared gradient by its absolute value; it never reads a label.

Guards:

- The importances depend on the batch size, so it is fixed at 64 [ours] (not a setting).
- Every parameter takes part, BatchNorm weights and biases included, as in the reference.
- Importances are computed in eval mode [ours]: the gradients use f_D's BatchNorm statistics
  and the running statistics are never updated, so the only change SSD makes is the dampening.
- The factor is ``min(·, 1)``, so weights only shrink in magnitude and never change sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._loop import MethodLoop, gradient_statistics, steps_per_epoch
from .base import MethodConfig, MethodOutput, param, register_method

IMPORTANCE_BATCH_SIZE = 64  # importances depend on it; fixed [ours]


@dataclass(frozen=True)
class SSDConfig(MethodConfig):
    alpha: float = param(10.0, "selection threshold α: dampen where I_f > α·I_D. ResNet-18 10 [ref]; CNNs: the "
                         "card says tune over 1, 5, 10, 50, and 10 had the lowest gap to Retrain on the "
                         "validation split of both digits (class:0, seeds 0 and 1) and Fashion-MNIST (class:0)",
                         min=0.0, max=1e6, log=True)
    lam: float = param(1.0, "dampening constant λ: θ ← θ·min(λ·I_D/I_f, 1) [ref 1]", min=0.0, max=1e3)
    label_free: bool = param(False, "LF-SSD: importances from |∇‖f(x)‖²| instead of (∇CE)², no labels used")


def importances(model: nn.Module, data, idx: torch.Tensor, label_free: bool,
                loop: MethodLoop | None = None) -> dict[str, torch.Tensor]:
    """Mean over batches of 64 (in eval mode) of ``(∇CE)²``, or ``|∇‖f(x)‖²|`` when label-free."""
    if loop is None:
        loop = MethodLoop("ssd", data, None, steps_per_epoch(len(idx), IMPORTANCE_BATCH_SIZE))
    if label_free:
        def loss_fn(m, b):
            return m(data.x_train[b]).pow(2).sum(1).mean()

        return gradient_statistics(model, loop, idx, IMPORTANCE_BATCH_SIZE, loss_fn, torch.abs, mean=True)
    y = data.y_train

    def ce(m, b):
        return F.cross_entropy(m(data.x_train[b]), y[b])

    return gradient_statistics(model, loop, idx, IMPORTANCE_BATCH_SIZE, ce, torch.square, mean=True)


@torch.no_grad()
def dampen(model: nn.Module, imp_d: dict[str, torch.Tensor], imp_f: dict[str, torch.Tensor],
           alpha: float, lam: float) -> int:
    """Apply SSD's rule in place; return how many parameter entries were selected."""
    selected = 0
    for name, p in model.named_parameters():
        if name not in imp_f:
            continue
        i_d, i_f = imp_d[name], imp_f[name]
        sel = i_f > alpha * i_d
        # I_f > 0 wherever selected, so the division is safe there; elsewhere the factor is unused.
        # Unselected entries are multiplied by exactly 1.0, which leaves them bit-identical.
        one = torch.ones_like(i_f)
        factor = torch.where(sel, (lam * i_d / torch.where(sel, i_f, one)).clamp(max=1.0), one)
        p.mul_(factor)
        selected += int(sel.sum())
    return selected


@register_method(
    "ssd", config=SSDConfig, labels="aware", display="SSD",
    summary="dampen weights whose D_f importance exceeds α× their D importance (no training)",
    paper="Foster et al., AAAI 2024",
)
def ssd(model, data, cfg: SSDConfig, *, device, callbacks):
    every = torch.arange(len(data.x_train), device=data.device)  # D = D_r ∪ D_f
    total = steps_per_epoch(len(every), IMPORTANCE_BATCH_SIZE) + steps_per_epoch(len(data.forget_idx),
                                                                                 IMPORTANCE_BATCH_SIZE)
    loop = MethodLoop("ssd", data, callbacks, total, model=model)
    imp_d = importances(model, data, every, cfg.label_free, loop)
    imp_f = importances(model, data, data.forget_idx, cfg.label_free, loop)
    selected = dampen(model, imp_d, imp_f, cfg.alpha, cfg.lam)
    n = sum(p.numel() for p in model.parameters())
    loop.message(f"dampened {selected} of {n} weights ({100 * selected / n:.2f}%)", share=selected / n)
    return MethodOutput(loop.finish(model), {"selected": selected, "selected_share": selected / n})
