"""RandLabel: the MixUnlearn paper's own label-agnostic baseline.

Peng, Tang and Yang, "Adversarial Mixup Unlearning" (ICLR 2025), which reports it in its Tables
1–2 without giving its details. EVALUATION.md §4, "RandLabel".

Rule, per pair of equal-size batches (one epoch = one pass over D_f, each forget batch paired
with the next batch of an endless reshuffled D_r stream)::

    L = MSE(softmax(f_U(x_i)), one-hot(r_i))  +  MSE(softmax(f_U(x_j)), softmax(f_D(x_j)))
        x_i ∈ B_f, r_i a fresh uniform random class          x_j ∈ B_r, f_D the frozen original

No label is read: the forget targets are random, the retain targets are f_D's own outputs.

Details [ours; the paper's exact choices are unknown]: weights 1 : 1; MSE on probability vectors
(squared error summed over classes, averaged over the batch); the optimiser and budget of
MixUnlearn (Adam; lr 5e-4 digits / 1e-4 CNN / 5e-5 ResNet-18; 30 / 5 / 5 epochs; batch 32); an
option ``exclude_argmax`` that draws ``r_i`` uniformly among the classes other than
``argmax f_D(x_i)`` (off by default: the plain rule draws from every class, so about 1/K of the
forget samples get their own predicted class as target).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ._loop import MethodLoop, freeze, make_optimizer, optimizer_step, paired_batches, paired_steps
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class RandLabelConfig(MethodConfig):
    lr: float = param(5e-4, "Adam learning rate, as MixUnlearn's (digits 5e-4, CNN 1e-4, ResNet-18 5e-5) [ours]",
                      min=1e-7, max=1e-1, log=True)
    epochs: int = param(30, "epochs, each one pass over D_f paired with D_r batches, as MixUnlearn's (digits 30, "
                        "CNN 5, ResNet-18 5) [ours]", min=1, max=500)
    batch_size: int = param(32, "size of each forget and retain batch [ours, as MixUnlearn]", min=1, max=4096)
    exclude_argmax: bool = param(False, "draw the random class among the classes other than argmax f_D(x_i) "
                                 "[ours; off = the plain uniform draw]")
    augment: bool = param(False, "use the original training's augmentation")

    FAMILY_DEFAULTS = {
        "cnn": {"lr": 1e-4, "epochs": 5},
        "resnet": {"lr": 5e-5, "epochs": 5},
    }
    # Fast recipe: 5 epochs cost 0.4x Retrain and the derived range starts at 2; it reaches down to 1.
    TUNE_RANGES = {"cnn:fast": {"epochs": (1, 10)}}


def random_targets(n: int, n_classes: int, generator: torch.Generator | None, device,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` uniform random classes; with ``exclude`` (one class per sample), uniform over the other
    ``n_classes − 1`` classes, drawn as ``(exclude + s) % n_classes`` with ``s ~ U{1..n_classes−1}``."""
    gdev = generator.device if generator is not None else device
    if exclude is None:
        return torch.randint(0, n_classes, (n,), generator=generator, device=gdev).to(device)
    shift = torch.randint(1, n_classes, (n,), generator=generator, device=gdev).to(device)
    return (exclude.to(device) + shift) % n_classes


def prob_sq_error(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error between probability vectors, summed over classes."""
    return (probs.float() - target.float()).pow(2).sum(1)


@register_method(
    "randlabel", config=RandLabelConfig, labels="agnostic", display="RandLabel", in_paper=True,
    summary="MSE of softmax outputs to random one-hot classes on D_f and to f_D's outputs on D_r, no labels",
    paper="Peng, Tang and Yang, ICLR 2025 (the MixUnlearn paper's baseline)",
)
def randlabel(model, data, cfg: RandLabelConfig, *, device, callbacks):
    loop = MethodLoop("randlabel", data, callbacks, paired_steps(len(data.forget_idx), cfg.batch_size, cfg.epochs),
                      augment=cfg.augment, model=model)
    original = freeze(copy.deepcopy(model))
    opt = make_optimizer(model.parameters(), "adam", cfg.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    n_cls = data.n_classes
    model.train()
    for _, b_f, b_r in paired_batches(loop, data.forget_idx, data.retain_idx, cfg.batch_size, cfg.epochs):
        x_f, x_r = loop.images(b_f), loop.images(b_r)
        with torch.no_grad():
            p_r = torch.softmax(original(x_r).float(), dim=1)
            exclude = original(x_f).argmax(1) if cfg.exclude_argmax else None
        r = random_targets(len(b_f), n_cls, loop.gen, x_f.device, exclude)
        forget = prob_sq_error(torch.softmax(model(x_f), dim=1), F.one_hot(r, n_cls)).mean()
        retain = prob_sq_error(torch.softmax(model(x_r), dim=1), p_r).mean()
        optimizer_step(opt, forget + retain, params)
        loop.step({"forget_mse": forget, "retain_mse": retain})
    return loop.finish(model)
