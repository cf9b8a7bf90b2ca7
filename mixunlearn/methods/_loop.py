"""Shared loop pieces for method files: seeded batching on the device, augmentation, progress,
NaN checks and cancellation (through the callbacks), optimisers and plain CE epochs.

A method file holds only what is specific to its method; everything repeated lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
    stop: Callable[[], bool] | None = None,
    loss_name: str = "ce",
) -> bool:
    """Plain epochs of ``sign * CE(model(x[idx]), labels[idx])`` (+ ``extra_loss(model, step)``).

    ``labels`` is indexed like the training set (so ``labels[idx]`` are the targets). ``stop`` is
    asked after every reported step; when it answers True the epochs end there and True is returned.
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
            if stop is not None and stop():
                return True
    return False


# --------------------------------------------------------------------------- appended for the baselines (issue 4)


def random_wrong_labels(y: torch.Tensor, n_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random label different from ``y`` for every sample (Random Label, SalUn).

    Drawn as ``(y + s) % n_classes`` with ``s`` uniform in ``1..n_classes-1``: uniform over the
    wrong classes and never ``y`` itself (OPTML's RL code can draw the true label; we forbid it).
    """
    if n_classes < 2:
        raise ValueError("random wrong labels need at least two classes")
    gdev = generator.device if generator is not None else y.device
    shift = torch.randint(1, n_classes, (len(y),), generator=generator, device=gdev).to(y.device)
    return (y + shift) % n_classes


def side_stream(loop: MethodLoop, idx: torch.Tensor, batch_size: int, salt: int = 1) -> EndlessBatches:
    """An endless batch stream with its *own* seeded generator, so drawing from it never shifts
    the main loop's shuffles (e.g. NegGrad+'s cycled forget loader next to the retain epochs)."""
    gen = device_generator(loop.data.seed * 1000 + 17 + 7919 * salt, loop.data.device)
    return EndlessBatches(idx, batch_size, gen)


def tensor_ce_epochs(
    model: nn.Module,
    loop: MethodLoop,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    *,
    loss_name: str = "ce",
) -> None:
    """Plain CE epochs over in-memory tensors ``x, y`` that are not part of D (e.g. UNSIR's noise
    mixed with a retain subset); shuffled with the loop's generator, no augmentation."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    every = torch.arange(len(x), device=x.device)
    for _ in range(epochs):
        for b in loop.batches(every, batch_size):
            loss = F.cross_entropy(model(x[b]), y[b])
            optimizer_step(opt, loss, params)
            loop.step({loss_name: loss})


def gradient_statistics(
    model: nn.Module,
    loop: MethodLoop,
    idx: torch.Tensor,
    batch_size: int,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mean: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-parameter sum (or mean, ``mean=True``) over mini-batches of ``transform(grad)`` of
    ``loss_fn(model, batch_indices)``, with the model in eval mode (no BN-statistics updates)
    and no optimiser step. Used for SalUn's saliency and SSD's importances.

    Batches run in index order (no shuffle), each through ``loop.step`` so progress and
    cancellation work. Gradients are cleared afterwards; the weights are never changed.
    """
    was_training = model.training
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros_like(p) for n, p in named}
    batches = loop.batches(idx, batch_size, shuffle=False)
    try:
        for b in batches:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, b)
            loss.backward()
            for n, p in named:
                if p.grad is not None:
                    acc[n] += p.grad if transform is None else transform(p.grad)
            loop.step({"stat_loss": loss})
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if mean and batches:
        for n in acc:
            acc[n] /= len(batches)
    return acc


# --------------------------------------------------------------------------- appended for the baselines, part 2


def paired_batches(
    loop: MethodLoop, forget_idx: torch.Tensor, retain_idx: torch.Tensor, batch_size: int, epochs: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(epoch, forget_batch, retain_batch)`` with one epoch = one shuffled pass over D_f.

    Each forget batch is paired with the next batch of an endless reshuffled retain stream, cut (or
    topped up from the stream) to the same length, so forget and retain batches always have equal
    sizes (LAF, RandLabel, L-Mix; LAF's reference zips the two loaders, so it too takes one retain
    batch per forget batch).
    """
    retain = loop.stream(retain_idx, batch_size)
    for epoch in range(epochs):
        for b_f in loop.batches(forget_idx, batch_size):
            b_r = next(retain)
            while len(b_r) < len(b_f):  # the stream's last batch of a reshuffle can be short
                b_r = torch.cat([b_r, next(retain)])
            yield epoch, b_f, b_r[: len(b_f)]


def paired_steps(n_forget: int, batch_size: int, epochs: int) -> int:
    """Number of pairs :func:`paired_batches` yields (for progress totals)."""
    return epochs * steps_per_epoch(n_forget, batch_size)


def distill_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Batch-mean ``KL(teacher ‖ softmax(student_logits / T))`` (no ``T²`` factor: callers that
    want Hinton's scaling multiply it in). ``teacher_probs`` are probabilities, already at
    temperature ``T`` when the teacher is a network."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, teacher_probs.float(), reduction="batchmean")
