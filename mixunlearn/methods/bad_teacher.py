"""Bad Teacher (T-S): distil from a competent teacher on D_r and an incompetent one on D_f.

Chundawat, Tarun, Mandal and Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in Deep
Networks Using an Incompetent Teacher" (AAAI 2023; reference ``vikram2000b/bad-teaching-unlearning``).
EVALUATION.md §4, "Bad Teacher (T-S)".

Rule: the student starts as ``f_D``. The training set is D_f plus a random 30% of D_r (drawn once
per run, seeded); each sample carries only a forget/retain flag ``l``. For a batch, with teachers
in eval mode and at temperature ``T`` (1):

    target(x) = l·softmax(t_bad(x)/T) + (1 − l)·softmax(f_D(x)/T)
    loss      = mean_batch KL(target ‖ softmax(student(x)/T))

where ``t_bad`` is an **untrained, randomly initialised** copy of the architecture
(:func:`mixunlearn.models.fresh_copy`, seeded) and ``f_D`` a frozen copy of the original.

Labels: the method reads no class label — only which samples are in D_f — so it is registered as
label-*agnostic* and receives the label-free view of the task. The MixUnlearn paper lists T-S
among the label-aware methods; the app still shows it under the paper's grouping where it compares
with the paper's table.

Pitfall guards:

- the reference's *function* defaults (lr 0.01, 10 epochs) differ from its notebook; we use the
  notebook's Adam lr 1e-4, 1 epoch, batch 256;
- the bad teacher is never trained (a reviewer says the paper trained it): it is frozen at
  creation and stays bit-identical;
- the reference's ``F.kl_div`` default ("mean" over batch *and* classes) is replaced by the true
  batch-mean KL the card asks for (a constant factor 1/n_classes; Adam is nearly invariant to it).

Digits: the notebook's budget (1 epoch = 2 Adam steps on the ~470 digits samples) leaves the tiny
8x8 model unchanged, so the "digits" family uses a larger budget chosen on the digits
*validation* split (see ``FAMILY_DEFAULTS`` and the help texts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..models import fresh_copy
from ._loop import MethodLoop, distill_kl, freeze, make_optimizer, optimizer_step, steps_per_epoch
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class BadTeacherConfig(MethodConfig):
    lr: float = param(1e-4, "Adam learning rate [ref notebook; digits: 1e-3, chosen on the validation split]",
                      min=1e-7, max=1e-1, log=True)
    epochs: int = param(1, "passes over D_f ∪ retain subset [ref notebook: 1; digits: 10, chosen on the "
                        "validation split]", min=1, max=200)
    batch_size: int = param(256, "batch size [ref notebook]", min=1, max=4096)
    retain_fraction: float = param(0.3, "share of D_r drawn (once, seeded) into the unlearning set [ref]",
                                   min=0.0, max=1.0)
    temperature: float = param(1.0, "KL temperature of both teachers and the student [ref]", min=0.05, max=100.0)
    augment: bool = param(False, "use the original training's augmentation on the unlearning set")

    FAMILY_DEFAULTS = {"digits": {"lr": 1e-3, "epochs": 10}}


def make_incompetent_teacher(model: nn.Module, seed: int) -> nn.Module:
    """The bad teacher: the architecture with fresh random weights, frozen and never trained."""
    return freeze(fresh_copy(model, seed))


@register_method(
    "bad_teacher", config=BadTeacherConfig, labels="agnostic", display="T-S", in_paper=True,
    summary="distil from f_D on 30% of D_r and from an untrained random network on D_f (no class labels read; "
            "the paper lists it as label-aware)",
    paper="Chundawat et al., AAAI 2023",
)
def bad_teacher(model, data, cfg: BadTeacherConfig, *, device, callbacks):
    n_sub = int(round(cfg.retain_fraction * len(data.retain_idx)))
    total = len(data.forget_idx) + n_sub
    loop = MethodLoop("bad_teacher", data, callbacks, cfg.epochs * steps_per_epoch(total, cfg.batch_size),
                      augment=cfg.augment, model=model)
    # Draw the retain subset first, from the loop's generator, so it is fixed by the task seed.
    perm = torch.randperm(len(data.retain_idx), generator=loop.gen, device=loop.gen.device)
    retain_sub = data.retain_idx[perm[:n_sub].to(data.retain_idx.device)]
    idx = torch.cat([data.forget_idx, retain_sub])
    is_forget = torch.zeros(len(data.x_train), dtype=torch.bool, device=data.device)
    is_forget[data.forget_idx] = True

    competent = freeze(copy.deepcopy(model))
    # A seed different from the original's initialisation, so the bad teacher is not (even by
    # chance) the network f_D started from.
    incompetent = make_incompetent_teacher(model, data.seed * 7919 + 104729).to(device)
    opt = make_optimizer(model.parameters(), "adam", cfg.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.temperature
    for _ in range(cfg.epochs):
        model.train()
        for b in loop.batches(idx, cfg.batch_size):
            x = loop.images(b)
            with torch.no_grad():
                good = torch.softmax(competent(x).float() / t, dim=1)
                bad = torch.softmax(incompetent(x).float() / t, dim=1)
                target = torch.where(is_forget[b][:, None], bad, good)
            loss = distill_kl(model(x), target, t)
            optimizer_step(opt, loss, params)
            loop.step({"kl": loss})
    return loop.finish(model)
