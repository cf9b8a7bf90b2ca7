"""DELETE: decoupled distillation to erase — distil f_D into the student on D_f with the forget
class's logit masked out of the teacher.

Zhou et al., "Decoupled Distillation to Erase: A General Unlearning Method for Any Class-centric
Tasks" (CVPR 2025, arXiv 2503.23751; reference code ``shaaaaron/DELETE``, ``method/delete.py``).
EVALUATION.md §4, "DELETE"; docs/baselines.md.

Rule (restated from the reference; only D_f is used, no D_r):

- teacher = f_D, frozen (eval mode, no gradients); student = a copy of f_D, returned;
- for every batch ``(x, y)`` of D_f, the teacher's logits ``z = f_D(x)`` get ``z[i, y_i] = −∞``
  (the reference writes −1e10), so the target ``p = softmax(z)`` puts exactly zero mass on the
  sample's label and keeps the teacher's relative "dark knowledge" over the other classes;
- loss = batch-mean ``KL(p ‖ softmax(student(x)))`` (temperature 1, no T² factor), SGD with
  momentum 0.9 and no weight decay.

"The forget class" per sample. The reference masks ``y`` from the forget loader, i.e. each
sample's own stored label. We do the same at every forget level: class-level forgetting masks the
forgotten class; data-level forgetting masks each forget sample's own label (so different samples
of a batch can have different masked classes); with noisy labels the stored (possibly wrong) label
is masked — the label the model was trained to output for that sample, which is what it must stop
predicting. That reading is ours; the paper only states class-centric tasks.

Pitfall guard: the reference's batch-norm switch (``disable_bn``, BN layers in eval mode while the
student trains) is on only for single-class Tiny-ImageNet; here it is ``freeze_bn`` (off).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ._loop import MethodLoop, distill_kl, freeze, make_optimizer, optimizer_step, steps_per_epoch
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class DeleteConfig(MethodConfig):
    lr: float = param(1e-4, "SGD learning rate (momentum 0.9); ResNet-18 CIFAR-10 1e-4, CIFAR-100 / "
                      "Tiny-ImageNet 5e-5 [ref]; LAF's 2-conv CNN 1e-3 [ours, validation split]",
                      min=1e-7, max=1.0, log=True)
    epochs: int = param(20, "passes over D_f (20 in every reference config) [ref]", min=1, max=200)
    batch_size: int = param(128, "batch size over D_f (ResNet-18 128) [ref]", min=1, max=4096)
    weight_decay: float = param(0.0, "weight decay (none in the reference)", min=0.0, max=0.1)
    freeze_bn: bool = param(False, "keep BatchNorm layers in eval mode while the student trains (the "
                            "reference's disable_bn, on only for single-class Tiny-ImageNet; digits: on)")
    augment: bool = param(False, "use the original training's augmentation on the forget images (ResNet-18: on)")

    FAMILY_DEFAULTS = {
        # Digits (tiny BN CNN, ~150 forget images): BN in eval mode, batch 64 (validation split: with
        # BN in train mode the statistics drift to the forget class alone, Test_r 46.9 at batch 128).
        "digits": {"freeze_bn": True, "batch_size": 64},
        "cnn": {"lr": 1e-3},
        "resnet": {"augment": True},
        # Fast recipe (cnn_fast): 5 passes over D_f at batch 256 (a class of Fashion-MNIST is 6,000 images).
        "cnn:fast": {"epochs": 5, "batch_size": 256, "lr": 3e-3},
    }


def delete_targets(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The teacher's distribution with each sample's own label masked: ``softmax(z)`` after
    ``z[i, labels[i]] = −∞``, so row ``i`` puts exactly zero mass on ``labels[i]`` and the rest is
    the teacher's softmax renormalised over the other classes."""
    z = teacher_logits.float().clone()
    z[torch.arange(len(z), device=z.device), labels] = float("-inf")
    return torch.softmax(z, dim=1)


def _bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@register_method(
    "delete", config=DeleteConfig, labels="aware", display="DELETE",
    summary="distil f_D on D_f with each sample's own label masked out of the teacher's softmax (no D_r)",
    paper="Zhou et al., CVPR 2025",
)
def delete(model, data, cfg: DeleteConfig, *, device, callbacks):
    loop = MethodLoop("delete", data, callbacks, cfg.epochs * steps_per_epoch(len(data.forget_idx), cfg.batch_size),
                      augment=cfg.augment, model=model)
    teacher = freeze(copy.deepcopy(model))
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr, cfg.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    y = data.y_train
    for _ in range(cfg.epochs):
        model.train()
        if cfg.freeze_bn:
            _bn_eval(model)
        for b in loop.batches(data.forget_idx, cfg.batch_size):
            x = loop.images(b)
            with torch.no_grad():
                target = delete_targets(teacher(x), y[b])
            loss = distill_kl(model(x), target)
            optimizer_step(opt, loss, params)
            loop.step({"kl": loss})
    return loop.finish(model)
