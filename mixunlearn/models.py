"""Model zoo. Every model takes pixels in [0, 1] (normalisation is its first layer) and exposes:

- ``forward(x)`` -> logits, equal to ``head(features(x))``;
- ``features(x)`` -> the penultimate embedding (what the projections and LAF use);
- ``head`` -> the module after the embedding (LAF+R fine-tunes only this);
- ``mix_feature_map(x)`` -> the intermediate feature map MixBlock reads (METHOD.md §3.5).

Models are built by name through :func:`build_model`; unknown names list the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .utils import seeded


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, as fixed buffers (saved with the model)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class UnlearnModel(nn.Module):
    """Base class: subclasses set ``self.head`` and implement ``_trunk`` / ``_mix``."""

    family: str = "cnn"
    head: nn.Module

    def mix_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features_from_map(self, z: torch.Tensor) -> torch.Tensor:
        """The embedding from MixBlock's feature map ``z = mix_feature_map(x)``."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_from_map(self.mix_feature_map(x))

    def logits_from_map(self, z: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` from ``z = mix_feature_map(x)``, the same operations in the same order, so
        a caller that needs both the map and the logits runs the trunk once."""
        return self.head(self.features_from_map(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def num_classes(self) -> int:
        last = [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1]
        return last.out_features


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DigitsCNN(UnlearnModel):
    """Tiny CNN for 8x8 digits: 8x8 -> conv -> conv+pool (4x4, MixBlock's map) -> conv+pool (2x2)
    -> 128-d embedding -> linear classifier. BatchNorm throughout, so BN-state rules are exercised
    on the small models too."""

    family = "digits"

    def __init__(self, mean=(0.3057,), std=(0.3730,), in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.block1 = nn.Sequential(_conv_bn(in_channels, width), _conv_bn(width, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(_conv_bn(width, 2 * width), nn.MaxPool2d(2))
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, 128), nn.ReLU(inplace=True))
        self.head = nn.Linear(128, num_classes)

    def mix_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.block1(self.normalize(x))

    def features_from_map(self, z: torch.Tensor) -> torch.Tensor:
        return self.embed(self.block2(z))


class CNN2(UnlearnModel):
    """The 2-conv CNN of LAF for 28x28 inputs (EVALUATION.md §6).

    Conv(1->16, 5x5, pad 2)-ReLU-MaxPool -> Conv(16->32, 5x5, pad 2)-ReLU-MaxPool (32x7x7, MixBlock's
    map) -> fc1 1568->256 (the embedding) -> 256->128 -> 128->10. As in LAF's reference model there
    is no activation after fc1 nor inside the head: the head is linear.
    """

    family = "cnn"

    def __init__(self, mean=(0.1307,), std=(0.3081,), in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 16, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(32 * 7 * 7, 256)
        self.head = nn.Sequential(nn.Linear(256, 128), nn.Linear(128, num_classes))

    def mix_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(self.normalize(x)))

    def features_from_map(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc1(torch.flatten(z, 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(UnlearnModel):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool) for 32x32 inputs.

    MixBlock reads ``layer3`` (256 x 8 x 8); ``features`` is the 512-d pooled embedding.
    """

    family = "resnet"

    def __init__(self, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), in_channels: int = 3,
                 num_classes: int = 10):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._layer(64, 64, 1)
        self.layer2 = self._layer(64, 128, 2)
        self.layer3 = self._layer(128, 256, 2)
        self.layer4 = self._layer(256, 512, 2)
        self.head = nn.Linear(512, num_classes)

    @staticmethod
    def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    def mix_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        return self.layer3(self.layer2(self.layer1(out)))

    def features_from_map(self, z: torch.Tensor) -> torch.Tensor:
        out = self.layer4(z)
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., UnlearnModel]
    input_size: int
    summary: str


MODELS: dict[str, ModelEntry] = {
    "digits_cnn": ModelEntry("digits_cnn", DigitsCNN, 8, "tiny BatchNorm CNN for 8x8 digits (MixBlock map 32x4x4)"),
    "cnn2": ModelEntry("cnn2", CNN2, 28, "LAF's 2-conv CNN for 28x28 (MixBlock map 32x7x7)"),
    "resnet18": ModelEntry("resnet18", ResNet18, 32, "ResNet-18, CIFAR stem, 32x32 (MixBlock map 256x8x8)"),
}


def model_names() -> list[str]:
    return list(MODELS)


def build_model(name: str, info=None, seed: int | None = None) -> UnlearnModel:
    """Build a freshly initialised model; ``info`` (a DatasetInfo) sets channels, classes and
    normalisation; ``seed`` makes the initialisation reproducible."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    entry = MODELS[name]
    kwargs = {}
    if info is not None:
        if info.size != entry.input_size:
            raise ValueError(
                f"model {name!r} takes {entry.input_size}x{entry.input_size} inputs but dataset "
                f"{info.name!r} has {info.size}x{info.size}; use model {info.default_model!r}"
            )
        kwargs = dict(mean=info.mean, std=info.std, in_channels=info.channels, num_classes=info.n_classes)
    if seed is not None:
        with seeded(seed):
            return entry.builder(**kwargs)
    return entry.builder(**kwargs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with freshly (and reproducibly) initialised weights and BN statistics,
    e.g. Retrain's starting point or Bad Teacher's incompetent teacher."""
    import copy

    new = copy.deepcopy(model)
    with seeded(seed):
        for m in new.modules():
            if m is not new and hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
    return new
