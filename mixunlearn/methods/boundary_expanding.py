"""Boundary Expanding (BE): send the forget set to a temporary "shadow" class, then delete it.

Chen, Gao, Wang, Yan and Wang, "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Space" (CVPR 2023). EVALUATION.md §4, "Boundary Expanding (BE)".

Rule:

1. widen the last linear layer from K to K+1 outputs: rows 0..K-1 are f_D's, the shadow row K
   is freshly initialised (PyTorch's Linear init, seeded);
2. fine-tune the whole widened model with ``CE(f(x), K)`` on D_f (every forget sample is
   labelled with the shadow class);
3. prune the shadow row: the last layer goes back to K outputs (the trained rows 0..K-1).

Pitfall guard: OPTML never removes the extra logit, so its scores come from K+1 outputs (a
forget sample "misclassified" as the shadow class counts as forgotten even though no real class
took it). We always prune, and the returned model has exactly the input model's architecture,
number of outputs and state-dict keys/shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..utils import GLOBAL_RNG_LOCK
from ._loop import MethodLoop, ce_epochs, make_optimizer, steps_per_epoch
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class BoundaryExpandingConfig(MethodConfig):
    lr: float = param(1e-5, "SGD learning rate (momentum 0.9). ResNet-18 and CNN 1e-5 [ref]; digits 1e-4, chosen "
                      "on the digits validation split, where 1e-5 left the forgotten class untouched; at data "
                      "level 1e-4 over-forgets (BE has no retain term)", min=1e-7, max=1.0, log=True)
    epochs: int = param(10, "passes over D_f [ref]", min=1, max=200)
    batch_size: int = param(64, "batch size", min=1, max=4096)
    augment: bool = param(False, "use the original training's augmentation (ResNet-18: on)")

    FAMILY_DEFAULTS = {"resnet": {"augment": True},
                       "digits": {"lr": 1e-4}}  # validation split, see the help of ``lr``


def last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the last ``nn.Linear`` of ``model.head``."""
    head = model.head
    found = None
    for name, mod in head.named_modules():
        if isinstance(mod, nn.Linear):
            found = name
    if found is None:
        raise ValueError("boundary_expanding needs a linear output layer in model.head")
    if found == "":
        return model, "head", head
    parent_name, _, attr = found.rpartition(".")
    parent = head.get_submodule(parent_name) if parent_name else head
    return parent, attr, getattr(parent, attr)


def _copy_rows(src: nn.Linear, dst: nn.Linear, rows: int) -> None:
    with torch.no_grad():
        dst.weight[:rows].copy_(src.weight[:rows])
        if src.bias is not None:
            dst.bias[:rows].copy_(src.bias[:rows])


def widen(model: nn.Module, generator: torch.Generator) -> int:
    """Replace the output layer by one with a shadow row; return K (the shadow class's index)."""
    parent, attr, old = last_linear(model)
    k = old.out_features
    with GLOBAL_RNG_LOCK:  # nn.Linear's own init draws from the global RNG (overwritten below)
        new = nn.Linear(old.in_features, k + 1, bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    _copy_rows(old, new, k)
    bound = 1.0 / math.sqrt(old.in_features)  # nn.Linear's default init range, drawn from our generator
    with torch.no_grad():
        gdev = generator.device
        new.weight[k].copy_((torch.rand(old.in_features, generator=generator, device=gdev) * 2 - 1) * bound)
        if new.bias is not None:
            new.bias[k].copy_((torch.rand((), generator=generator, device=gdev) * 2 - 1) * bound)
    setattr(parent, attr, new)
    return k


def prune(model: nn.Module, k: int) -> None:
    """Drop the shadow row: the output layer gets back its K outputs (rows 0..K-1 as trained)."""
    parent, attr, wide = last_linear(model)
    if wide.out_features != k + 1:
        raise RuntimeError(f"expected {k + 1} outputs before pruning, found {wide.out_features}")
    with GLOBAL_RNG_LOCK:  # nn.Linear's own init draws from the global RNG (every row is copied over)
        narrow = nn.Linear(wide.in_features, k, bias=wide.bias is not None).to(wide.weight.device, wide.weight.dtype)
    _copy_rows(wide, narrow, k)
    setattr(parent, attr, narrow)


@register_method(
    "boundary_expanding", config=BoundaryExpandingConfig, labels="aware", display="BE",
    summary="fine-tune D_f towards an extra shadow class, then remove that output",
    paper="Chen et al., CVPR 2023 (Boundary Expanding)",
)
def boundary_expanding(model, data, cfg: BoundaryExpandingConfig, *, device, callbacks):
    loop = MethodLoop("boundary_expanding", data, callbacks,
                      cfg.epochs * steps_per_epoch(len(data.forget_idx), cfg.batch_size), augment=cfg.augment,
                      model=model)
    keys = {k: v.shape for k, v in model.state_dict().items()}
    shadow = widen(model, loop.gen)
    # Every D_f sample is labelled with the shadow class; ``ce_epochs`` reads targets[idx] only.
    targets = torch.full((len(data.x_train),), shadow, dtype=torch.long, device=data.device)
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr)  # built after widening: sees the new layer
    try:
        ce_epochs(model, loop, data.forget_idx, targets, opt, cfg.epochs, cfg.batch_size, loss_name="shadow_ce")
    finally:
        prune(model, shadow)  # always, even when cancelled: never leave K+1 outputs behind
    if {k: v.shape for k, v in model.state_dict().items()} != keys:
        raise RuntimeError("boundary_expanding: the pruned model's state dict differs from the input's")
    return loop.finish(model)
