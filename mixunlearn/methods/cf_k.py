"""CF-k: catastrophic forgetting of the last k layers — fine-tune only the last k layers on D_r,
the trunk frozen.

Goel, Prabhu, Sanyal, Lim, Torr and Kumaraguru, "Towards Adversarial Evaluations for Inexact
Machine Unlearning" (arXiv 2201.06640, 2022; "Evaluating inexact unlearning requires revisiting
forgetting"). Reference implementation: SCRUB's MIA notebook (``meghdadk/SCRUB``,
``cfk_unlearn``); also ERASURE (``aiim-research/ERASURE``) and DeepUnlearn. EVALUATION.md §4, "EU-k
/ CF-k"; docs/baselines.md.

Rule: every parameter outside the last ``k`` layers (see :mod:`._last_k` for what a layer is per
model family) is frozen; the last k layers keep f_D's weights and are trained with CE on D_r
(SGD without momentum, no weight decay, lr ×0.1 at epochs 10/15/20, batch 64, 10 epochs).

Deviation [ours]: the frozen trunk runs in eval mode, so its BatchNorm running statistics stay
f_D's too (the reference calls ``model.train()`` on the whole network, which lets a frozen
trunk's BN statistics drift). The trunk is then bit-identical to f_D's after the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.nn import functional as F

from . import _last_k as lk
from ._loop import MethodLoop, make_optimizer, optimizer_step, steps_per_epoch
from .base import MethodConfig, MethodOutput, param, register_method


@dataclass(frozen=True)
class CFkConfig(MethodConfig):
    k: int = param(3, "layers counted from the output that are fine-tuned (digits 3, 2-conv CNN 4, ResNet-18 2: "
                   "the last conv stage and all after it) [ref]", min=1, max=6)
    lr: float = param(0.01, "SGD learning rate [ref 0.01]", min=1e-6, max=1.0, log=True)
    momentum: float = param(0.0, "SGD momentum (none in the reference)", min=0.0, max=0.99)
    weight_decay: float = param(0.0, "weight decay (none in the reference)", min=0.0, max=0.1)
    epochs: int = param(10, "passes over D_r [ref 10]", min=1, max=200)
    batch_size: int = param(64, "batch size [ref 64]", min=1, max=4096)
    lr_decay_epochs: tuple[int, ...] = param((10, 15, 20), "milestones: lr × lr_decay_rate for every one the "
                                             "epoch number exceeds [ref]")
    lr_decay_rate: float = param(0.1, "learning-rate factor per passed milestone [ref]", min=0.0, max=1.0)
    augment: bool = param(False, "use the original training's augmentation (ResNet-18: on)")

    # k cannot exceed the model's layer count (methods/_last_k.py: digits 5, 2-conv CNN 5, ResNet-18 6).
    TUNE_RANGES = {"digits": {"k": (1, 5)}, "cnn": {"k": (1, 5)}, "resnet": {"k": (1, 6)}}
    FAMILY_DEFAULTS = {
        "cnn": {"k": 4},
        "resnet": {"k": 2, "augment": True},
        # Fast recipe (cnn_fast): 1 pass over D_r at batch 256, momentum 0.9 to make up for the short budget.
        "cnn:fast": {"epochs": 1, "batch_size": 256, "lr": 0.02, "momentum": 0.9},
    }


def finetune_last_k(model, data, loop: MethodLoop, modules, cfg, epochs: int, batch_size: int) -> None:
    """CE epochs on D_r that train only ``modules`` (the trunk frozen, in eval mode) — shared with EU-k."""
    params = lk.freeze_trunk(model, modules)
    opt = make_optimizer(params, "sgd", cfg.lr, cfg.weight_decay, momentum=cfg.momentum)
    y = data.y_train
    for epoch in range(1, epochs + 1):
        for group in opt.param_groups:
            group["lr"] = lk.step_lr(cfg.lr, cfg.lr_decay_epochs, cfg.lr_decay_rate, epoch)
        lk.train_mode_last_k(model, modules)
        for b in loop.batches(data.retain_idx, batch_size):
            loss = F.cross_entropy(model(loop.images(b)), y[b])
            optimizer_step(opt, loss, params)
            loop.step({"ce": loss})
    for p in model.parameters():
        p.requires_grad_(True)


@register_method(
    "cf_k", config=CFkConfig, labels="aware", display="CF-k",
    summary="fine-tune only the last k layers on D_r (trunk frozen, BN statistics included)",
    paper="Goel et al., 2022",
)
def cf_k(model, data, cfg: CFkConfig, *, device, callbacks):
    names, modules = lk.split_last_k(model, cfg.k, "cf_k")
    loop = MethodLoop("cf_k", data, callbacks, cfg.epochs * steps_per_epoch(len(data.retain_idx), cfg.batch_size),
                      augment=cfg.augment, model=model)
    loop.message(f"fine-tuning {', '.join(names)}; the rest is frozen", phase="setup", layers=names)
    finetune_last_k(model, data, loop, modules, cfg, cfg.epochs, cfg.batch_size)
    return MethodOutput(loop.finish(model), {"layers": names})
