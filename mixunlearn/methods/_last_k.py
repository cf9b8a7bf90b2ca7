"""What "the last k layers" are, per model family, for EU-k and CF-k (Goel et al. 2022).

A *layer* is one parameterised stage of the network as it is built in :mod:`mixunlearn.models`,
counted from the input; BatchNorm belongs to the convolution it follows, and a ResNet stage
(two BasicBlocks, shortcut included) is one layer, as in SCRUB's reference code, which resets /
fine-tunes ``layer4`` of ResNet-18 as one unit:

- ``digits_cnn`` (5): ``block1.0`` (conv+BN), ``block1.1`` (conv+BN), ``block2.0`` (conv+BN),
  ``embed.1`` (linear 256->128), ``head`` (linear 128->10);
- ``cnn2`` (5): ``conv1``, ``conv2``, ``fc1``, ``head.0``, ``head.1``;
- ``resnet18`` (6): ``stem`` (conv1 + bn1), ``layer1``, ``layer2``, ``layer3``, ``layer4``, ``head``.

Another model (e.g. a user's) falls back to its top-level children that hold parameters, in
registration order (how ERASURE's ``eu_k`` counts). Normalisation (a fixed buffer) is never a layer.

The default k of both methods is "the last convolutional stage and everything after it", the
reference's choice on its CNN (``features[9]`` + classifier) and on ResNet-18 (``layer4`` + fc):
digits 3, LAF's 2-conv CNN 4, ResNet-18 2.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import CNN2, DigitsCNN, ResNet18
from ..utils import seeded


def layer_units(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """``(name, modules)`` per layer, from the input to the output."""
    if isinstance(model, DigitsCNN):
        return [("block1.0", [model.block1[0]]), ("block1.1", [model.block1[1]]), ("block2.0", [model.block2[0]]),
                ("embed.1", [model.embed[1]]), ("head", [model.head])]
    if isinstance(model, CNN2):
        return [("conv1", [model.conv1]), ("conv2", [model.conv2]), ("fc1", [model.fc1]),
                ("head.0", [model.head[0]]), ("head.1", [model.head[1]])]
    if isinstance(model, ResNet18):
        return [("stem", [model.conv1, model.bn1]), ("layer1", [model.layer1]), ("layer2", [model.layer2]),
                ("layer3", [model.layer3]), ("layer4", [model.layer4]), ("head", [model.head])]
    return [(name, [child]) for name, child in model.named_children()
            if any(True for _ in child.parameters())]


def split_last_k(model: nn.Module, k: int, method: str) -> tuple[list[str], list[nn.Module]]:
    """(names, modules) of the last ``k`` layers; a clear error when the model has fewer."""
    units = layer_units(model)
    if not 1 <= k <= len(units):
        raise ValueError(f"{method}: k = {k}, but this model has {len(units)} layers "
                         f"({', '.join(n for n, _ in units)}); use 1..{len(units)}")
    last = units[len(units) - k:]
    return [n for n, _ in last], [m for _, mods in last for m in mods]


def trainable_names(model: nn.Module, modules: list[nn.Module]) -> set[str]:
    """Parameter and buffer names (state-dict keys) that live inside ``modules``."""
    inside = {id(p) for m in modules for p in list(m.parameters()) + list(m.buffers())}
    named = list(model.named_parameters()) + list(model.named_buffers())
    return {n for n, t in named if id(t) in inside}


def freeze_trunk(model: nn.Module, modules: list[nn.Module]) -> list[nn.Parameter]:
    """``requires_grad`` off for every parameter outside ``modules``; returns the trainable ones."""
    inside = {id(p) for m in modules for p in m.parameters()}
    trainable = []
    for p in model.parameters():
        p.requires_grad_(id(p) in inside)
        if id(p) in inside:
            trainable.append(p)
    return trainable


def train_mode_last_k(model: nn.Module, modules: list[nn.Module]) -> None:
    """Train mode for the last k layers only: the trunk (BatchNorm statistics included) stays as f_D."""
    model.eval()
    for m in modules:
        m.train()


def reinit_last_k(modules: list[nn.Module], seed: int) -> None:
    """Fresh, seeded initialisation of ``modules`` (each submodule's ``reset_parameters``; BatchNorm
    running statistics reset), as at the start of training."""
    with seeded(seed), torch.no_grad():
        for top in modules:
            for m in top.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()


def step_lr(lr: float, milestones: tuple[int, ...], rate: float, epoch: int) -> float:
    """``lr`` times ``rate`` for every milestone the epoch (counted from 1) has passed."""
    return lr * rate ** sum(1 for m in milestones if epoch > m)
