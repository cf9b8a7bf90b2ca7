"""Shared loop pieces for method files: seeded batching on the device, augmentation, progress,
NaN checks and cancellation (through the callbacks), optimisers and plain CE epochs.

A method file holds only what is specific to its method; everything repeated lives here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..data import EndlessBatches, UnlearnData, augment_batch, batch_indices
from ..progress import Callback, Reporter, check_finite_weights
from ..training import make_optimizer
from ..utils import device_generator

__all__ = ["MethodLoop", "steps_per_epoch", "make_optimizer", "optimizer_step", "ce_epochs", "freeze"]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, -(-n // max(1, batch_size)))


class MethodLoop:
    """Per-run helpers: a device generator seeded from the task seed, a progress reporter,
    the task's training augmentation, and index batching."""

    def __init__(self, name: str, data: UnlearnData, callbacks: list[Callback] | None, total_steps: int,
                 *, seed_offset: int = 0, log_every: int = 10, augment: bool = False, model: nn.Module | None = None):
        self.name, self.data = name, data
        self.gen = device_generator(data.seed * 1000 + 17 + seed_offset, data.device)
        # ``model`` rides along on progress events so in-process callbacks can probe it.
        self.reporter = Reporter(name, callbacks, max(1, total_steps), log_every=log_every, model=model)
        self.augment_kind = data.info.augment if augment else "none"

    def batches(self, idx: torch.Tensor, batch_size: int, shuffle: bool = True) -> list[torch.Tensor]:
        return batch_indices(idx, batch_size, self.gen, shuffle)

    def stream(self, idx: torch.Tensor, batch_size: int) -> EndlessBatches:
        return EndlessBatches(idx, batch_size, self.gen)

    def images(self, idx: torch.Tensor) -> torch.Tensor:
        """Training images at ``idx``, with the task's augmentation when enabled."""
        return augment_batch(self.data.x_train[idx], self.augment_kind, self.gen)

    def step(self, losses: dict | None = None, **data) -> None:
        self.reporter.step(losses, data=data or None)

    def message(self, text: str, **data) -> None:
        self.reporter.message(text, **data)

    def finish(self, model: nn.Module) -> nn.Module:
        self.reporter.flush()
        check_finite_weights(model, self.name, self.reporter.step_count)
        model.eval()
        return model


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params=None, clip: float | None = None) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None and params is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: for teachers and the frozen original f_D."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def ce_epochs(
    model: nn.Module,
    loop: MethodLoop,
    idx: torch.Tensor,
    labels: torch.Tensor,
    opt: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    *,
    sign: float = 1.0,
    extra_loss: Callable[[nn.Module, int], torch.Tensor] | None = None,
    clip: float | None = None,
    after_step: Callable[[], None] | None = None,
    loss_name: str = "ce",
) -> None:
    """Plain epochs of ``sign * CE(model(x[idx]), labels[idx])`` (+ ``extra_loss(model, step)``).

    ``labels`` is indexed like the training set (so ``labels[idx]`` are the targets).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(epochs):
        for b in loop.batches(idx, batch_size):
            loss = sign * F.cross_entropy(model(loop.images(b)), labels[b])
            losses = {loss_name: loss}
            if extra_loss is not None:
                extra = extra_loss(model, loop.reporter.step_count)
                loss = loss + extra
                losses["extra"] = extra
            optimizer_step(opt, loss, params, clip)
            if after_step is not None:
                after_step()
            loop.step(losses)
