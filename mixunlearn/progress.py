"""Progress events and cancellation.

Methods and trainers never print: they emit :class:`ProgressEvent` objects to callbacks. A
callback may stop the run by raising :class:`RunCancelled`; the exception travels out of the
method untouched. :class:`Reporter` batches the work of reporting: it keeps per-step losses on
the device, syncs only every ``log_every`` steps, and turns NaN/inf losses into
:class:`NonFiniteLossError` naming the method and step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._lazy import torch


class RunCancelled(Exception):
    """Raised (by a callback) to stop a run; nothing it produced is kept as a result."""


class NonFiniteLossError(RuntimeError):
    """A loss or a weight became NaN or infinite."""

    def __init__(self, method: str, step: int, what: str, *, after: bool = False):
        self.method, self.step, self.what = method, step, what
        # A negative step: found only when the method had returned (e.g. a final weight check).
        # ``after``: the exact step is unknown, ``step`` is the last one the method reported.
        where = "when the method ended" if step < 0 else (f"after step {step}" if after else f"at step {step}")
        super().__init__(
            f"{method}: {what} became NaN or infinite {where}; the run was stopped and no metrics "
            f"were written. Try a smaller learning rate."
        )


@dataclass
class ProgressEvent:
    """One report from a running method or trainer."""

    source: str  # method name or "original" / "retrain"
    phase: str  # e.g. "train", "unlearn", "generator", "mask", "evaluate", "cache"
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # extras: lambda, mask share, snapshots
    # The model being trained, for in-process callbacks (e.g. probe accuracies); never serialised.
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


Callback = Callable[[ProgressEvent], Any]


def emit(callbacks: Iterable[Callback] | None, event: ProgressEvent) -> None:
    for cb in callbacks or ():
        cb(event)


class Reporter:
    """Counts steps, emits events every ``log_every`` steps, checks losses for NaN/inf."""

    def __init__(
        self,
        source: str,
        callbacks: Iterable[Callback] | None,
        total: int,
        phase: str = "unlearn",
        log_every: int = 10,
        model: Any = None,
    ):
        self.source, self.callbacks, self.total, self.phase = source, list(callbacks or ()), total, phase
        self.model = model
        self.log_every = max(1, log_every)
        self.step_count = 0
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._bad: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []

    def message(self, text: str, phase: str | None = None, **data: Any) -> None:
        emit(self.callbacks, ProgressEvent(self.source, phase or self.phase, self.step_count, self.total,
                                           message=text, data=data))

    def step(self, losses: Mapping[str, torch.Tensor | float] | None = None, data: dict | None = None,
             phase: str | None = None, force: bool = False) -> None:
        """Record one optimisation step; every ``log_every`` steps (or when forced) emit an event."""
        self.step_count += 1
        for name, value in (losses or {}).items():
            t = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            # A non-scalar loss (e.g. per-sample values) is reported by its mean; NaN checks see all of it.
            bad = ~torch.isfinite(t).all()
            self._pending.setdefault(name, []).append(t.mean() if t.numel() != 1 else t.reshape(()))
            self._bad = bad if self._bad is None else (self._bad | bad.to(self._bad.device))
        if force or data or self.step_count % self.log_every == 0 or self.step_count >= self.total:
            self.flush(data=data, phase=phase)

    def flush(self, data: dict | None = None, phase: str | None = None) -> None:
        pending = {n: v for n, v in self._pending.items() if v}
        bad = self._bad
        # One host transfer per flush (one CUDA sync, not one per loss): every mean and the NaN flag
        # travel together. Values may come from different devices (a Python float next to a CUDA loss).
        dev = next(iter(pending.values()))[0].device if pending else (bad.device if bad is not None else None)
        parts = [torch.stack([t.to(dev) for t in v]).mean() for v in pending.values()]
        if bad is not None:
            parts.append(bad.to(dev).float())
        host = torch.stack(parts).tolist() if parts else []
        if bad is not None and host[-1]:
            # A mean is non-finite exactly when one of its values is (NaN and inf propagate).
            names = [n for n, m in zip(pending, host) if not math.isfinite(m)]
            raise NonFiniteLossError(self.source, self.step_count, f"loss {'/'.join(names) or '?'}")
        means = dict(zip(pending, host[:len(pending)]))
        self._pending = {}
        self._bad = None
        if means:
            self.history.append({"step": self.step_count, **means})
        emit(self.callbacks, ProgressEvent(self.source, phase or self.phase, self.step_count, self.total,
                                           losses=means, data=dict(data or {}), model=self.model))


def check_finite_weights(model: torch.nn.Module, source: str, step: int) -> None:
    """Raise :class:`NonFiniteLossError` when any parameter is NaN/inf."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    if flags and not bool(torch.stack(flags).all()):
        raise NonFiniteLossError(source, step, "a model weight")
