"""Random Label (RL): relabel the forget set at random, then repair on the retain set.

Used as a baseline by Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency in Both Image Classification and Generation" (ICLR 2024); usually attributed to
Golatkar et al., "Eternal Sunshine of the Spotless Net" (CVPR 2020). EVALUATION.md §4, "Random
Label (RL)".

Rule, per epoch:

1. one pass over D_f minimising ``CE(f(x), y')`` with fresh labels ``y' ~ U({0..K-1} \\ {y})``;
2. one pass over D_r minimising ``CE(f(x), y)`` with the stored labels.

Pitfall guard: OPTML's code draws ``y'`` from all K classes, so about 1/K of the forget samples
are "relabelled" with their own label and keep being learned. We draw from the K-1 wrong
classes only (:func:`~mixunlearn.methods._loop.random_wrong_labels`).

:func:`rl_epochs` is also SalUn's inner loop (SalUn = RL with a saliency mask on the gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ._loop import MethodLoop, ce_epochs, make_optimizer, random_wrong_labels, steps_per_epoch
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class RandomLabelConfig(MethodConfig):
    lr: float = param(0.01, "SGD learning rate (momentum 0.9); CNN 0.01, ResNet-18 0.01 (within OPTML's "
                      "1e-4..1e-1 search)", min=1e-6, max=1.0, log=True)
    epochs: int = param(5, "epochs; each is one pass over D_f (random wrong labels) then one over D_r "
                        "(CNN 5, ResNet-18 10)", min=1, max=200)
    batch_size: int = param(64, "batch size (CNN 64, ResNet-18 256)", min=1, max=4096)
    weight_decay: float = param(0.0, "weight decay (ResNet-18 5e-4)", min=0.0, max=0.1)
    augment: bool = param(False, "use the original training's augmentation (ResNet-18: on)")
    clip: float = param(0.0, "gradient-norm clip, 0 = off [ours]; LAF's 2-conv CNN: 5 (its large logits make "
                        "the first random-label steps explode and the model collapse to one class)",
                        min=0.0, max=1e6)

    FAMILY_DEFAULTS = {"resnet": {"lr": 0.01, "epochs": 10, "batch_size": 256, "weight_decay": 5e-4,
                                  "augment": True},
                       "cnn": {"clip": 5.0},
                       # Fast recipe (cnn_fast): budgets cut with Retrain's (Fashion-MNIST validation split).
                       "cnn:fast": {"epochs": 1, "batch_size": 128}}


def rl_steps(data, epochs: int, batch_size: int) -> int:
    """Optimiser steps of :func:`rl_epochs` (for progress totals)."""
    return epochs * (steps_per_epoch(len(data.forget_idx), batch_size)
                     + steps_per_epoch(len(data.retain_idx), batch_size))


def rl_epochs(
    model: nn.Module,
    loop: MethodLoop,
    data,
    opt: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    *,
    after_step: Callable[[], None] | None = None,
    clip: float = 0.0,
) -> None:
    """RL's epochs: D_f with fresh random *wrong* labels, then D_r with the stored labels
    (gradient norm clipped at ``clip`` when it is positive)."""
    y = data.y_train
    for _ in range(epochs):
        # Fresh draws every epoch; only the D_f entries of ``targets`` are ever read.
        targets = y.clone()
        targets[data.forget_idx] = random_wrong_labels(y[data.forget_idx], data.n_classes, loop.gen)
        ce_epochs(model, loop, data.forget_idx, targets, opt, 1, batch_size, after_step=after_step,
                  loss_name="forget_ce_random", clip=clip or None)
        ce_epochs(model, loop, data.retain_idx, y, opt, 1, batch_size, after_step=after_step,
                  loss_name="retain_ce", clip=clip or None)


@register_method(
    "random_label", config=RandomLabelConfig, labels="aware", display="RL",
    summary="CE on D_f with random wrong labels, then CE on D_r, each epoch",
    paper="Fan et al., ICLR 2024 (SalUn's RL baseline); Golatkar et al., CVPR 2020",
)
def random_label(model, data, cfg: RandomLabelConfig, *, device, callbacks):
    loop = MethodLoop("random_label", data, callbacks, rl_steps(data, cfg.epochs, cfg.batch_size),
                      augment=cfg.augment, model=model)
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr, cfg.weight_decay)
    rl_epochs(model, loop, data, opt, cfg.epochs, cfg.batch_size, clip=cfg.clip)
    return loop.finish(model)
