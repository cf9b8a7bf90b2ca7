"""SCRUB: a student distilled from the original model, obeying it on D_r and disobeying it on D_f.

Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards Unbounded Machine Unlearning"
(NeurIPS 2023; reference code ``meghdadk/SCRUB``). EVALUATION.md §4, "SCRUB".

Setup: the teacher is ``f_D``, frozen (eval mode, no gradients, a private copy that nothing ever
updates); the student starts as a copy of ``f_D`` and is the model that is returned.

Each epoch ``e = 1..E`` (numbered from 1, as in the reference):

1. only while ``e ≤ msteps``, a *max* pass over D_f minimising ``−KL_T``;
2. always, a *min* pass over D_r minimising ``γ·CE(student(x), y) + α·KL_T``;

with ``KL_T = T² · mean_batch KL(softmax(teacher/T) ‖ softmax(student/T))`` (Hinton-style
distillation as in the reference's ``DistillKL``). One SGD optimiser (momentum 0.9) serves both
passes. The learning rate is multiplied by ``lr_decay_rate`` once for every milestone in
``lr_decay_epochs`` that the epoch number has passed (``e > m``), as the reference's
``adjust_learning_rate`` does.

Pitfall guard: SCRUB is very sensitive to its settings; the paper's near-chance CIFAR-10 / SVHN rows
look misconfigured, so the defaults are the reference's per family rather than one set for all.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._loop import MethodLoop, distill_kl, freeze, make_optimizer, optimizer_step, steps_per_epoch
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class ScrubConfig(MethodConfig):
    lr: float = param(5e-4, "SGD learning rate (momentum 0.9) [ref]", min=1e-7, max=1.0, log=True)
    weight_decay: float = param(5e-4, "weight decay [ref]", min=0.0, max=0.1)
    epochs: int = param(5, "epochs; each is a max pass over D_f (only while epoch ≤ msteps) then a min pass "
                        "over D_r (CNN 5, ResNet-18 3) [ref]", min=1, max=200)
    msteps: int = param(3, "epochs (counted from 1) that include the max pass over D_f (CNN 3, ResNet-18 2) "
                        "[ref]", min=0, max=200)
    gamma: float = param(1.0, "γ, weight of the CE on D_r in the min pass (CNN 1, ResNet-18 0.99) [ref]",
                         min=0.0, max=10.0)
    alpha: float = param(0.5, "α, weight of the distillation KL on D_r in the min pass (CNN 0.5, "
                         "ResNet-18 0.001) [ref]", min=0.0, max=10.0)
    temperature: float = param(4.0, "distillation temperature T (the KL is scaled by T²) [ref]", min=0.05, max=100.0)
    lr_decay_epochs: tuple[int, ...] = param((3, 5, 9), "milestones: the learning rate is multiplied by "
                                             "lr_decay_rate for every milestone the epoch number exceeds [ref]")
    lr_decay_rate: float = param(0.1, "learning-rate factor per passed milestone [ref]", min=0.0, max=1.0)
    forget_batch_size: int = param(512, "batch size of the max pass over D_f [ref]", min=1, max=4096)
    retain_batch_size: int = param(256, "batch size of the min pass over D_r [ref]", min=1, max=4096)
    augment: bool = param(False, "use the original training's augmentation on the student's and teacher's "
                          "inputs (ResNet-18: on)")
    clip: float = param(0.0, "gradient-norm clip in both passes, 0 = off [ours]; LAF's 2-conv CNN: 50 (without "
                        "it the max pass drove its large logits to NaN; 5 stopped it forgetting)", min=0.0, max=1e6)

    FAMILY_DEFAULTS = {
        "resnet": {"epochs": 3, "msteps": 2, "gamma": 0.99, "alpha": 0.001, "augment": True},
        "cnn": {"clip": 50.0},
        # Fast recipe (cnn_fast): budgets cut with Retrain's (Fashion-MNIST validation split).
        "cnn:fast": {"epochs": 3, "msteps": 2},
    }


def make_teacher(model: nn.Module) -> nn.Module:
    """The frozen teacher: a private copy of f_D in eval mode without gradients."""
    return freeze(copy.deepcopy(model))


def scrub_lr(cfg: ScrubConfig, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (counted from 1): one decay per milestone passed."""
    passed = sum(1 for m in cfg.lr_decay_epochs if epoch > m)
    return cfg.lr * cfg.lr_decay_rate ** passed


def scrub_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL_T``: batch-mean KL(teacher ‖ student) on temperature-``T`` softmaxes, times ``T²``."""
    teacher_probs = torch.softmax(teacher_logits.float() / temperature, dim=1)
    return distill_kl(student_logits, teacher_probs, temperature) * temperature ** 2


@register_method(
    "scrub", config=ScrubConfig, labels="aware", display="SCRUB", in_paper=True,
    summary="student of the frozen f_D: max KL on D_f (first msteps epochs), min γ·CE + α·KL on D_r",
    paper="Kurmanji et al., NeurIPS 2023",
)
def scrub(model, data, cfg: ScrubConfig, *, device, callbacks, name: str = "scrub"):
    """``name``: the method the progress and a failure name (SCRUB+R runs this function as itself)."""
    n_max = min(cfg.msteps, cfg.epochs) * steps_per_epoch(len(data.forget_idx), cfg.forget_batch_size)
    n_min = cfg.epochs * steps_per_epoch(len(data.retain_idx), cfg.retain_batch_size)
    loop = MethodLoop(name, data, callbacks, n_max + n_min, augment=cfg.augment, model=model)
    teacher = make_teacher(model)
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr, cfg.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    y = data.y_train

    def one_pass(idx: torch.Tensor, batch_size: int, maximise: bool, epoch: int) -> None:
        batches = loop.batches(idx, batch_size)
        for k, b in enumerate(batches):
            x = loop.images(b)
            with torch.no_grad():
                teacher_logits = teacher(x)
            logits = model(x)
            kl = scrub_kl(logits, teacher_logits, cfg.temperature)
            if maximise:
                loss, losses = -kl, {"max_kl": kl}
            else:
                ce = F.cross_entropy(logits, y[b])
                loss, losses = cfg.gamma * ce + cfg.alpha * kl, {"min_ce": ce, "min_kl": kl}
            optimizer_step(opt, loss, params, cfg.clip or None)
            # The last step of every pass flushes an event that names the pass and its epoch.
            last = k == len(batches) - 1
            loop.reporter.step(losses, phase="max" if maximise else "min",
                               data={"pass": "max" if maximise else "min", "epoch": epoch,
                                     "steps": len(batches)} if last else None)

    for epoch in range(1, cfg.epochs + 1):
        for group in opt.param_groups:
            group["lr"] = scrub_lr(cfg, epoch)
        model.train()
        if epoch <= cfg.msteps:
            one_pass(data.forget_idx, cfg.forget_batch_size, True, epoch)
        one_pass(data.retain_idx, cfg.retain_batch_size, False, epoch)
    return loop.finish(model)
