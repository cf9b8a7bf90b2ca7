"""SalUn: Random Label restricted to the weights most salient for the forget set.

Fan, Liu, Zhang, Wei, Wong and Liu, "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency in Both Image Classification and Generation" (ICLR 2024; OPTML-Group/
Unlearn-Saliency). EVALUATION.md §4, "SalUn".

Rule:

1. Saliency at the original model f_D, in eval mode:  ``s = |Σ_{B ⊂ D_f} ∇_θ CE(f_D(B), y)|``
   (gradients summed over all D_f batches), and the mask ``m = 1[s in the global top r]`` with
   ``r = 50%`` of all parameter entries (every parameter tensor competes in one ranking).
2. Random Label (see :mod:`.random_label`) with gradients multiplied by ``m``.
3. After every optimiser step the masked-out entries are restored to their f_D values and
   their momentum is zeroed, so nothing (weight decay included) moves a frozen weight.

Pitfall guards:

- OPTML's mask script silently falls back to a randomly initialised model when the checkpoint
  lacks a "state_dict" key. Here the mask is computed on the model as passed in (the private copy
  of f_D) before any optimiser exists, and we assert its weights were not changed by it; a digest
  of the weights it came from is returned in ``extras["mask_source_digest"]`` so callers can check
  it against f_D.
- Weight decay used to move the frozen weights: the restore step undoes it exactly.
- The mask computation runs inside the method call, so it is counted in the run time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._loop import MethodLoop, gradient_statistics, make_optimizer, steps_per_epoch
from .base import MethodConfig, MethodOutput, param, register_method
from .random_label import rl_epochs, rl_steps


@dataclass(frozen=True)
class SalUnConfig(MethodConfig):
    mask_ratio: float = param(0.5, "share of parameter entries SalUn may update (global top-|saliency|) [OPTML 0.5]",
                              min=0.01, max=1.0)
    lr: float = param(0.01, "SGD learning rate (momentum 0.9); CNN 0.01, ResNet-18 0.013 [OPTML, 10%-random]",
                      min=1e-6, max=1.0, log=True)
    epochs: int = param(5, "RL epochs (CNN 5, ResNet-18 10)", min=1, max=200)
    batch_size: int = param(64, "batch size of the mask pass and of RL (CNN 64, ResNet-18 256)", min=1, max=4096)
    weight_decay: float = param(0.0, "weight decay (ResNet-18 5e-4); masked-out weights are restored after "
                                "every step, so it never moves them", min=0.0, max=0.1)
    augment: bool = param(False, "use the original training's augmentation during RL (ResNet-18: on)")
    clip: float = param(0.0, "gradient-norm clip during RL, 0 = off [ours]; LAF's 2-conv CNN: 5 (as RL)",
                        min=0.0, max=1e6)

    FAMILY_DEFAULTS = {"resnet": {"lr": 0.013, "epochs": 10, "batch_size": 256, "weight_decay": 5e-4,
                                  "augment": True},
                       "cnn": {"clip": 5.0},
                       # Fast recipe (cnn_fast): budgets cut with Retrain's (Fashion-MNIST validation split).
                       "cnn:fast": {"epochs": 1, "batch_size": 128}}


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the parameter values, in parameter order (identifies the model a mask came from)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def saliency_mask(model: nn.Module, data, ratio: float, batch_size: int,
                  loop: MethodLoop | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks (name -> tensor like the parameter) of the global top ``ratio`` entries of
    ``|Σ_batches ∇ CE|`` on D_f, computed in eval mode without changing ``model``."""
    if loop is None:
        loop = MethodLoop("salun", data, None, steps_per_epoch(len(data.forget_idx), batch_size))
    y = data.y_train

    def ce(m, b):
        return F.cross_entropy(m(data.x_train[b]), y[b])

    grads = gradient_statistics(model, loop, data.forget_idx, batch_size, ce)
    names = list(grads)
    flat = torch.cat([grads[n].abs().flatten() for n in names])
    k = max(1, min(flat.numel(), int(round(ratio * flat.numel()))))
    # Exactly k entries by rank (a value threshold could admit more on ties).
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    out, start = {}, 0
    for n in names:
        size = grads[n].numel()
        out[n] = keep[start:start + size].view_as(grads[n])
        start += size
    return out


@register_method(
    "salun", config=SalUnConfig, labels="aware", display="SalUn",
    summary="Random Label on the top-50% most salient weights (gradient saliency on D_f at f_D)",
    paper="Fan et al., ICLR 2024",
)
def salun(model, data, cfg: SalUnConfig, *, device, callbacks):
    mask_steps = steps_per_epoch(len(data.forget_idx), cfg.batch_size)
    loop = MethodLoop("salun", data, callbacks, mask_steps + rl_steps(data, cfg.epochs, cfg.batch_size),
                      augment=cfg.augment, model=model)

    # 1. The mask, at f_D: ``model`` is the caller's private copy of f_D and nothing has touched it.
    source_digest = weights_digest(model)
    params = dict(model.named_parameters())
    original = {n: p.detach().clone() for n, p in params.items()}
    mask = saliency_mask(model, data, cfg.mask_ratio, cfg.batch_size, loop)
    if weights_digest(model) != source_digest:  # an assertion that survives ``python -O``
        raise RuntimeError("salun: the saliency mask must be computed on f_D, but the weights changed during it")
    share = float(sum(int(m.sum()) for m in mask.values())) / sum(m.numel() for m in mask.values())
    loop.message(f"saliency mask: {100 * share:.1f}% of the weights may change", phase="mask", mask_share=share)

    # 2. RL with masked gradients (a hook multiplies each gradient by its mask at backward time).
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr, cfg.weight_decay)
    hooks = [p.register_hook(lambda g, m=mask[n]: g * m) for n, p in params.items() if n in mask]

    # 3. After each step: frozen entries back to f_D, their momentum to zero (undoes weight decay).
    @torch.no_grad()
    def restore():
        for n, p in params.items():
            if n not in mask:
                continue
            p.copy_(torch.where(mask[n], p, original[n]))
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(mask[n])

    try:
        rl_epochs(model, loop, data, opt, cfg.epochs, cfg.batch_size, after_step=restore, clip=cfg.clip)
    finally:
        for h in hooks:
            h.remove()
    return MethodOutput(loop.finish(model), {"mask_share": share, "mask_source_digest": source_digest})
