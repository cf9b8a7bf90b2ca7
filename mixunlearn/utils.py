"""Small shared helpers: devices, seeding, timing, the home folder."""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import random
import stat
import threading
import time
import traceback
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._lazy import torch


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
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way. ``seed`` must be
    in ``0..SEED_MAX`` (:func:`check_seed`), the range every consumer of a run's seed accepts."""
    seed = check_seed(seed)
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


@functools.cache
def warm_lazy_imports() -> None:
    """Pay torch's one-time lazy imports now (once per process): the first optimizer a process
    builds imports ``torch._dynamo`` (1.3-2.3 s on the 2-core dev machine), which would otherwise
    land inside the first timed region, i.e. in whichever method or model trains first."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels, so wall-clock timings cover the work. Every timed region starts
    with this call, so it also pays torch's one-time lazy imports first (:func:`warm_lazy_imports`)."""
    warm_lazy_imports()
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


# --------------------------------------------------------------------------- input checks and safe writes

# Seeds reach torch (up to 2**64 - 1), NumPy (any non-negative integer), scikit-learn's random_state
# (HistGradientBoosting in the attacks, PCA in the projections: below 2**32) and the run store's
# SQLite INTEGER column (int64). 0..2**32 - 1 fits every one of them.
SEED_MAX = 2**32 - 1
SHOW_MAX = 60  # the longest user value an error message echoes in full


def shorten(text: object, limit: int = SHOW_MAX) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for echoing user input in messages."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _show_int(value: int) -> str:
    """An integer for a message: in full up to about 60 digits (``str`` of a huge int is slow or refused)."""
    if abs(value).bit_length() > 200:
        return f"{'-' if value < 0 else ''}<a number of {int(abs(value).bit_length() * 0.30103) + 1} digits>"
    return str(value)


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` as an int when it is an integer in ``0..SEED_MAX``; else ValueError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{what} must be a non-negative integer, got {shorten(repr(seed))}")
    value = int(seed)
    if value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {_show_int(value)}")
    if value > SEED_MAX:
        raise ValueError(f"{what} {_show_int(value)} is out of range; seeds must be 0..{SEED_MAX} (2**32 - 1)")
    return value


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically: into a temporary file of a name no other writer uses
    (pid and a random part) in the same folder, flushed to disk, then renamed over ``path``. Readers
    see the old or the new content, never a part; of two concurrent writers one complete file wins;
    the temporary file never stays behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "x", encoding=encoding, newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


_WRITE_CHECK_TRIES = 20


def _is_other(path: Path) -> bool:
    """Whether ``path`` exists as something other than a folder (a single stat, so a folder that is
    removed meanwhile never counts as "not a folder")."""
    try:
        return not stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:  # missing, under a file, a loop of links, a name too long: said by the steps after
        return False


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist, innermost first."""
    missing: list[Path] = []
    parent = path
    while not parent.exists() and not parent.is_symlink():
        missing.append(parent)
        if parent.parent == parent:
            break
        parent = parent.parent
    return missing


def check_writable_dir(path: str | os.PathLike, what: str, files: tuple[str, ...] = ()) -> Path:
    """Make sure folder ``path`` exists or can be created and that a file can be written in it (and
    that none of ``files`` in it is a folder), leaving nothing behind: folders made for the test are
    removed again. Raises ValueError naming ``what`` (e.g. ``--out``) and the folder."""
    path = Path(path).expanduser()
    if _is_other(path):  # one stat: a folder another check removes meanwhile is not "not a folder"
        raise ValueError(f"{what} {path} exists and is not a folder")
    missing: list[Path] = []
    parent = path
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: mkdir would fail with a confusing "File exists"
            raise ValueError(f"{what} {path} cannot be created: {parent} is a broken link")
        missing.append(parent)
        if parent.parent == parent:
            break
        parent = parent.parent
    if _is_other(parent):
        raise ValueError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
    # Several checks of the same new folder may run at once (threads, processes): a folder another
    # check made is used as it is (never "File exists"), and one that another check removes again
    # between this check's mkdir and its probe is made once more (a few tries; each needs a removal
    # in exactly that gap). The probe's name is unique to this check.
    for attempt in range(_WRITE_CHECK_TRIES):
        created: list[Path] = []
        try:
            for folder in reversed(missing):
                try:
                    folder.mkdir()
                    created.append(folder)
                except FileExistsError:
                    if _is_other(folder):  # a file where the folder should be
                        raise
                    if not folder.is_dir():  # made and removed again by another check meanwhile
                        raise FileNotFoundError(2, "No such file or directory", str(folder)) from None
            probe = path / f".write-test.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:12]}"
            with open(probe, "x") as fh:
                fh.write("x")
            probe.unlink()
            break
        except FileNotFoundError as exc:
            if attempt + 1 < _WRITE_CHECK_TRIES:
                missing = _missing_folders(path)  # what is missing now (another check removed it)
                continue
            reason = exc.strerror or str(exc)
            raise ValueError(f"{what} {path} cannot be written ({reason}); choose another folder") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ValueError(f"{what} {path} cannot be written ({reason}); choose another folder") from None
        finally:
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()
    for name in files:
        if (path / name).is_dir():
            raise ValueError(f"{what} {path} cannot take {name}: {path / name} is a folder")
    return path


# --------------------------------------------------------------------------- the home folder


class HomeError(ValueError):
    """The home folder (``$MIXUNLEARN_HOME`` or its default) cannot be used; the message names it."""


HOME_SUBFOLDERS = ("store", "models", "data")
WRITTEN_SUBFOLDERS = ("models", "store", "store/runs")  # written after the work: checked before it


def _home_path() -> tuple[Path, str]:
    """The home folder and how to name it in a message."""
    env = os.environ.get("MIXUNLEARN_HOME")
    if env:
        path = Path(env).expanduser()
        return path, f"MIXUNLEARN_HOME={shorten(env, 200)}"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "mixunlearn"
    return path, f"the home folder {path} (MIXUNLEARN_HOME is not set)"


def _home_error(name: str, why: str) -> HomeError:
    return HomeError(f"{name} is not usable: {why}; set MIXUNLEARN_HOME to a folder you can write")


def home_dir() -> Path:
    """The folder for caches and the run store: ``$MIXUNLEARN_HOME`` or the user cache folder.
    Created when missing; :class:`HomeError` (naming MIXUNLEARN_HOME) when it cannot be."""
    path, name = _home_path()
    if path.exists() and not path.is_dir():
        raise _home_error(name, "it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _home_error(name, f"it cannot be created ({exc.strerror or exc})") from None
    return path


def check_home() -> Path:
    """Check, before any work, that the home folder can be used: it is (or can be made) a folder,
    a file can be written in it, and its ``store``, ``models`` and ``data`` entries are folders where
    they exist. Returns the folder; raises :class:`HomeError` (a ValueError) with one line naming
    MIXUNLEARN_HOME. The CLI calls it before a run; the app can call it before showing a page."""
    path = home_dir()
    _, name = _home_path()
    try:
        check_writable_dir(path, "home")
    except ValueError:
        raise _home_error(name, "no file can be written in it") from None
    for sub in HOME_SUBFOLDERS:
        if (path / sub).exists() and not (path / sub).is_dir():
            raise _home_error(name, f"{path / sub} is a file, not a folder")
    # The folders a run writes into after its training (the model cache, the run store's files),
    # where they exist: checked now, so that no finished work is lost to a folder it cannot write.
    for sub in WRITTEN_SUBFOLDERS:
        folder = path / sub
        if folder.is_symlink() and not folder.exists():
            raise _home_error(name, f"{folder} is a link that leads nowhere")
        if folder.exists():
            if not folder.is_dir():
                raise _home_error(name, f"{folder} is a file, not a folder")
            try:
                check_writable_dir(folder, sub)
            except ValueError:
                raise _home_error(name, f"no file can be written in its {sub} folder ({folder})") from None
    return path
