"""Small shared helpers: devices, seeding, timing, the home folder."""

from __future__ import annotations

import os
import random
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def resolve_device(name: str | None = "auto") -> torch.device:
    """Resolve ``auto`` to cuda, then mps, then cpu; validate an explicit name.

    Raises ValueError when an explicit accelerator is asked for but absent.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"unknown device {name!r}; use one of: auto, cpu, cuda, cuda:N, mps") from None
        if device.type != "cuda":
            raise ValueError(f"unknown device {name!r}; use one of: auto, cpu, cuda, cuda:N, mps")
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' asked for, but MPS is not available here; use 'cpu' or 'auto'")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; use one of: auto, cpu, cuda, cuda:N, mps")


# torch's global RNG is shared by every thread of the process. Code that seeds it to build
# something reproducibly (models, MixBlock, VAEs) holds this lock for the whole seeded section, so
# two runs in two threads (two app sessions) cannot reseed or draw from it in between.
GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int):
    """Run the block with torch's global RNG seeded to ``seed``, holding :data:`GLOBAL_RNG_LOCK`;
    the global RNG state is restored afterwards."""
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    with GLOBAL_RNG_LOCK:  # never reseed inside another thread's seeded section
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def device_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator living on ``device`` (so random draws need no host round-trip)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels, so wall-clock timings cover the work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextmanager
def timed(device: torch.device | str) -> Iterator[dict[str, float]]:
    """Measure wall-clock seconds of a block, with a device sync at both ends."""
    out: dict[str, float] = {}
    synchronize(device)
    start = time.perf_counter()
    try:
        yield out
    finally:
        synchronize(device)
        out["seconds"] = time.perf_counter() - start


class SyncCount:
    """What :func:`count_cuda_syncs` saw: ``count`` syncs, and where (``sites()``, most frequent first)."""

    def __init__(self) -> None:
        self.count = 0
        self._sites: Counter[str] = Counter()

    def sites(self) -> list[tuple[str, int]]:
        return self._sites.most_common()


@contextmanager
def count_cuda_syncs() -> Iterator[SyncCount]:
    """Count the CUDA operations that make the host wait for the GPU inside the block, with the
    Python line that caused each (torch's sync debug mode in "warn"). For tests and benchmarks:
    it swaps the process's warning handler, so do not use it around concurrent work."""
    seen = SyncCount()
    if not torch.cuda.is_available():
        yield seen
        return
    here = os.path.abspath(__file__)

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return previous(message, category, filename, lineno, file, line)
        seen.count += 1
        frames = [f for f in traceback.extract_stack()[:-1]
                  if os.path.abspath(f.filename) != here and "warnings" not in os.path.basename(f.filename)]
        site = frames[-1] if frames else None
        seen._sites[f"{site.filename}:{site.lineno} ({site.name})" if site else "?"] += 1

    mode = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        previous = warnings.showwarning
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield seen
        finally:
            torch.cuda.set_sync_debug_mode(mode)


def device_name(device: torch.device | str) -> str:
    """A human-readable name of the device, for run-time reports."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def home_dir() -> Path:
    """The folder for caches and the run store: ``$MIXUNLEARN_HOME`` or the user cache folder."""
    env = os.environ.get("MIXUNLEARN_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "mixunlearn"
    path.mkdir(parents=True, exist_ok=True)
    return path
