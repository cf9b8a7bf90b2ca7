"""Forget specifications, splits (D_f, D_r, D_test, validation) and on-device batching.

A forget specification is text, as on the command line:

- ``class:K`` (or ``class:K1,K2``): every training sample of those classes;
- ``data:CLASSES:FRACTION`` such as ``data:5-9:0.4``: that share of each listed class,
  drawn per class without replacement, seeded (the paper's data-level setting);
- ``noisy:CLASSES:FRACTION`` such as ``noisy:0-4:0.6``: that share of each listed class gets a
  random *wrong* label before the original model is trained; D_f is the relabelled samples and
  Retrain uses the clean rest.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from .datahash import dataset_hash, split_hash
from .datasets import DatasetInfo, ImageDataset
from .utils import shorten

ForgetKind = Literal["class", "data", "noisy"]
FORGET_KINDS = ("class", "data", "noisy")
SPEC_HELP = (
    "use class:K (e.g. class:3), data:CLASSES:FRACTION (e.g. data:5-9:0.4) "
    "or noisy:CLASSES:FRACTION (e.g. noisy:0-4:0.6); CLASSES is K, K1,K2 or A-B"
)


@dataclass(frozen=True)
class ForgetSpec:
    """What to forget. Build it with :func:`parse_forget_spec`; ``str(spec)`` gives the text back."""

    kind: ForgetKind
    classes: tuple[int, ...]
    fraction: float = 1.0

    def __str__(self) -> str:
        classes = _format_classes(self.classes)
        if self.kind == "class":
            return f"class:{classes}"
        # repr() is the shortest text that parses back to the same float (":g" rounded to 6 digits).
        return f"{self.kind}:{classes}:{float(self.fraction)!r}"

    @property
    def level(self) -> str:
        """Protocol B's setting: ``class`` for class-level, ``data`` for data-level and noisy."""
        return "class" if self.kind == "class" else "data"


def _format_classes(classes: tuple[int, ...]) -> str:
    c = sorted(classes)
    if len(c) > 2 and c == list(range(c[0], c[-1] + 1)):
        return f"{c[0]}-{c[-1]}"
    return ",".join(str(k) for k in c)


# No data set has this many classes. A range is checked against it (or against the data set's
# class count) before it is expanded, so checking a spec costs O(its length), never O(its range).
MAX_CLASSES = 100_000
_BIG = 10**12  # stands for any class number with more than 12 digits (int() of a huge text is slow)


def _q(text: str) -> str:
    """A user's text quoted for a message, cut to 60 characters."""
    return repr(shorten(text))


def _class_number(text: str) -> int:
    """``-?\\d+`` as an int; numbers with more than 12 digits become +-_BIG (out of any range)."""
    negative = text.startswith("-")
    digits = text.lstrip("-").lstrip("0") or "0"
    value = int(digits) if len(digits) <= 12 else _BIG
    return -value if negative else value


def _parse_classes(text: str, spec: str, n_classes: int | None = None) -> tuple[int, ...]:
    """The class numbers of ``text`` (``K``, ``K1,K2``, ``A-B``), each range checked against
    ``0..n_classes-1`` (or :data:`MAX_CLASSES`) before it is expanded."""
    text = text.strip()
    if not text:
        raise ValueError(f"forget spec {_q(spec)} names no class; {SPEC_HELP}")
    allowed = f"0..{n_classes - 1}" if n_classes is not None else "0 or more"
    limit = n_classes if n_classes is not None else MAX_CLASSES
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
        if not m and not re.fullmatch(r"-?\d+", part):
            raise ValueError(f"forget spec {_q(spec)}: {_q(part)} is not a class number or range; {SPEC_HELP}")
        lo_text, hi_text = (m.group(1), m.group(2)) if m else (part, part)
        lo, hi = _class_number(lo_text), _class_number(hi_text)
        if lo > hi:
            raise ValueError(f"forget spec {_q(spec)}: class range {_q(part)} runs backwards; "
                             "write A-B with A <= B")
        if lo < 0:
            raise ValueError(f"forget spec {_q(spec)}: class {shorten(lo_text)} is negative; "
                             f"classes must be {allowed}")
        if hi >= limit:  # checked before the range is built
            first = shorten(lo_text.lstrip("0") or "0") if lo >= limit else str(limit)
            where = (f"this dataset has classes 0..{n_classes - 1}" if n_classes is not None
                     else f"no data set has more than {MAX_CLASSES} classes")
            raise ValueError(f"class {first} is out of range in forget spec {_q(spec)}: {where}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def parse_forget_spec(text: str, n_classes: int | None = None) -> ForgetSpec:
    """Parse ``class:K``, ``data:CLASSES:FRACTION`` or ``noisy:CLASSES:FRACTION``.

    With ``n_classes``, class numbers are checked against ``0..n_classes-1``.
    Raises ValueError naming what is allowed.
    """
    if not isinstance(text, str):
        raise ValueError(f"forget spec must be text, got {type(text).__name__}; {SPEC_HELP}")
    raw = text.strip()
    parts = raw.split(":")
    kind = parts[0].strip().lower()
    if kind not in FORGET_KINDS:
        raise ValueError(f"unknown forget kind {_q(parts[0])} in {_q(text)}; {SPEC_HELP}")
    if kind == "class":
        if len(parts) != 2:
            raise ValueError(f"malformed forget spec {_q(text)}; {SPEC_HELP}")
        spec = ForgetSpec("class", _parse_classes(parts[1], text, n_classes), 1.0)
    else:
        if len(parts) != 3:
            raise ValueError(f"malformed forget spec {_q(text)}: {kind} needs CLASSES and FRACTION; {SPEC_HELP}")
        try:
            fraction = float(parts[2])
        except ValueError:
            raise ValueError(
                f"forget fraction {_q(parts[2])} in {_q(text)} is not a number; use a value in (0, 1)"
            ) from None
        if not (0.0 < fraction < 1.0):
            raise ValueError(f"forget fraction {fraction:g} in {_q(text)} is outside (0, 1); use e.g. 0.4")
        spec = ForgetSpec(kind, _parse_classes(parts[1], text, n_classes), fraction)  # type: ignore[arg-type]
    if n_classes is not None:
        check_classes(spec, n_classes)
    return spec


def check_classes(spec: ForgetSpec, n_classes: int) -> None:
    """Check a spec against a dataset (also specs built directly, not parsed); ValueError if bad."""
    if spec.kind not in FORGET_KINDS:
        raise ValueError(f"unknown forget kind {spec.kind!r}; {SPEC_HELP}")
    if not spec.classes:
        raise ValueError(f"forget spec {str(spec)!r} names no class; {SPEC_HELP}")
    if spec.kind != "class" and not (0.0 < spec.fraction < 1.0):
        raise ValueError(f"forget fraction {spec.fraction!r} is outside (0, 1); use e.g. 0.4")
    bad = [c for c in spec.classes if not 0 <= c < n_classes]
    if bad:
        raise ValueError(
            f"class {bad[0]} is out of range in forget spec {str(spec)!r}: this dataset has classes 0..{n_classes - 1}"
        )
    if spec.kind == "class" and len(spec.classes) >= n_classes:
        raise ValueError(f"forget spec {str(spec)!r} forgets every class: the retain set would be empty")


# --------------------------------------------------------------------------- splits


@dataclass
class UnlearnData:
    """One unlearning task: the training set D with its forget/retain split, and the test split.

    ``y_train`` holds the labels *as stored in D* (noisy ones where a noisy spec applies);
    ``y_clean`` the true labels. Label-agnostic methods get :meth:`without_labels`, a view whose
    label fields are None, so they cannot read labels even by mistake.

    When ``eval_split == "val"`` the test tensors hold a stratified validation split held out
    from D (for tuning), and D excludes it.
    """

    info: DatasetInfo
    spec: ForgetSpec
    seed: int
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    y_clean: torch.Tensor | None
    forget_idx: torch.Tensor
    retain_idx: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    eval_split: str = "test"
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return self.info.n_classes

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    @property
    def labels_visible(self) -> bool:
        return self.y_train is not None

    @property
    def forget_x(self) -> torch.Tensor:
        return self.x_train[self.forget_idx]

    @property
    def retain_x(self) -> torch.Tensor:
        return self.x_train[self.retain_idx]

    @property
    def forget_y(self) -> torch.Tensor:
        return self._labels()[self.forget_idx]

    @property
    def retain_y(self) -> torch.Tensor:
        return self._labels()[self.retain_idx]

    def _labels(self) -> torch.Tensor:
        if self.y_train is None:
            raise PermissionError("this is a label-agnostic view: training labels are not available")
        return self.y_train

    def test_forget_mask(self) -> torch.Tensor:
        """Test samples of the forgotten class(es): Test_f (class-level), 'unseen' samples otherwise."""
        if self.y_test is None:
            raise PermissionError("this is a label-agnostic view: test labels are not available")
        cls = torch.tensor(self.spec.classes, device=self.y_test.device)
        return torch.isin(self.y_test, cls)

    def without_labels(self) -> UnlearnData:
        return replace(self, y_train=None, y_clean=None, y_test=None)

    def to(self, device: torch.device | str) -> UnlearnData:
        def mv(t):
            return None if t is None else t.to(device)

        return replace(
            self, x_train=mv(self.x_train), y_train=mv(self.y_train), y_clean=mv(self.y_clean),
            forget_idx=mv(self.forget_idx), retain_idx=mv(self.retain_idx),
            x_test=mv(self.x_test), y_test=mv(self.y_test),
        )

    def subset(self, n_train: int, n_test: int, seed: int = 0) -> UnlearnData:
        """A smaller task with the same spec (for smoke tests): keeps forget/retain proportions."""
        g = torch.Generator().manual_seed(seed)
        f = self.forget_idx.cpu()[torch.randperm(len(self.forget_idx), generator=g)]
        r = self.retain_idx.cpu()[torch.randperm(len(self.retain_idx), generator=g)]
        share = len(f) / (len(f) + len(r))
        nf = max(1, min(len(f), round(n_train * share)))
        nr = max(1, min(len(r), n_train - nf))
        keep = torch.cat([f[:nf], r[:nr]])
        dev = self.x_train.device
        t = torch.randperm(len(self.x_test), generator=g)[:n_test].to(dev)
        return replace(
            self,
            x_train=self.x_train[keep.to(dev)],
            y_train=None if self.y_train is None else self.y_train[keep.to(dev)],
            y_clean=None if self.y_clean is None else self.y_clean[keep.to(dev)],
            forget_idx=torch.arange(nf, device=dev),
            retain_idx=torch.arange(nf, nf + nr, device=dev),
            x_test=self.x_test[t],
            y_test=None if self.y_test is None else self.y_test[t],
            meta={k: v for k, v in self.meta.items() if k != "data_hash"},  # other data: another fingerprint
        )


def _stratified_holdout(y: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Boolean mask of a stratified ``fraction`` of samples, drawn per class."""
    mask = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        k = int(round(fraction * len(idx)))
        mask[idx[torch.randperm(len(idx), generator=gen)[:k]]] = True
    return mask


def make_split(
    dataset: ImageDataset,
    spec: ForgetSpec | str,
    seed: int = 0,
    eval_split: str = "test",
    val_fraction: float = 0.1,
) -> UnlearnData:
    """Build D_f / D_r (and noisy labels) from a data set and a forget spec, on the CPU.

    ``eval_split="val"`` holds out a stratified ``val_fraction`` of D (seeded) and uses it in
    place of the test split, for hyper-parameter tuning that never touches D_test.
    """
    info = dataset.info
    if isinstance(spec, str):
        spec = parse_forget_spec(spec, info.n_classes)
    check_classes(spec, info.n_classes)
    if eval_split not in ("test", "val"):
        raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    x, y = dataset.x_train, dataset.y_train.clone()
    x_test, y_test = dataset.x_test, dataset.y_test
    # One generator per purpose, so changing one choice never shifts another's draws.
    if eval_split == "val":
        hold = _stratified_holdout(y, val_fraction, torch.Generator().manual_seed(10_000 + seed))
        x_test, y_test = x[hold], y[hold]
        x, y = x[~hold], y[~hold]
    else:
        hold = None
    gen = torch.Generator().manual_seed(seed)
    y_clean = y.clone()
    present = set(torch.unique(y).tolist())
    missing = [c for c in spec.classes if c not in present]
    if missing:
        raise ValueError(f"forget spec {str(spec)!r}: class {missing[0]} has no training samples: empty forget set")
    if spec.kind == "class":
        forget_mask = torch.isin(y, torch.tensor(spec.classes))
    else:
        forget_mask = torch.zeros(len(y), dtype=torch.bool)
        for c in spec.classes:
            idx = torch.nonzero(y == c).flatten()
            k = int(round(spec.fraction * len(idx)))
            forget_mask[idx[torch.randperm(len(idx), generator=gen)[:k]]] = True
    forget_idx = torch.nonzero(forget_mask).flatten()
    retain_idx = torch.nonzero(~forget_mask).flatten()
    if len(forget_idx) == 0:
        raise ValueError(f"forget spec {str(spec)!r} selects no training sample: empty forget set; raise the fraction")
    if len(retain_idx) == 0:
        raise ValueError(f"forget spec {str(spec)!r} selects every training sample: the retain set would be empty")
    if spec.kind == "noisy":
        # A random *wrong* label: shift by 1..n_classes-1, never 0.
        shift = torch.randint(1, info.n_classes, (len(forget_idx),), generator=gen)
        y[forget_idx] = (y[forget_idx] + shift) % info.n_classes
    return UnlearnData(
        info=info, spec=spec, seed=seed, x_train=x, y_train=y, y_clean=y_clean,
        forget_idx=forget_idx, retain_idx=retain_idx, x_test=x_test, y_test=y_test,
        eval_split=eval_split,
        meta={"source": dataset.source, "n_train": len(y), "n_forget": len(forget_idx),
              "n_retain": len(retain_idx), "n_test": len(x_test),
              "data_hash": split_hash(dataset_hash(dataset), eval_split, hold, y)},
    )


# --------------------------------------------------------------------------- batching and augmentation


def batch_indices(
    idx: torch.Tensor, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True
) -> list[torch.Tensor]:
    """Split index tensor ``idx`` into batches (shuffled with ``generator``); last batch may be short.

    The permutation is drawn on the generator's device (a CUDA generator cannot draw on the CPU
    and vice versa) and moved to ``idx``'s device.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if shuffle:
        gdev = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(len(idx), generator=generator, device=gdev)
        idx = idx[perm.to(idx.device)]
    return list(torch.split(idx, batch_size))


class EndlessBatches:
    """An endless stream of reshuffled batches over ``idx`` (e.g. the retain stream of MixUnlearn)."""

    def __init__(self, idx: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
        if len(idx) == 0:
            raise ValueError("cannot stream batches from an empty index set")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.idx, self.batch_size, self.generator = idx, batch_size, generator
        self._queue: deque[torch.Tensor] = deque()

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if not self._queue:
            self._queue.extend(batch_indices(self.idx, self.batch_size, self.generator))
        return self._queue.popleft()


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """On-device training augmentation: ``crop`` (random crop with zero padding),
    ``crop_flip`` (plus horizontal flip), ``none``. Vectorised, no per-sample loop."""
    if kind == "none" or x.numel() == 0:
        return x
    if kind not in ("crop", "crop_flip"):
        raise ValueError(f"unknown augmentation {kind!r}; use none, crop or crop_flip")
    n, c, h, w = x.shape
    dev = x.device
    gdev = generator.device if generator is not None else dev
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(dev)
    # Two gathers: first pick each sample's rows (all padded columns), then its columns.
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :].expand(n, c, h, w)
    out = xp.gather(2, rows).gather(3, cols)
    if kind == "crop_flip":
        flip = torch.rand(n, generator=generator, device=gdev).to(dev) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
