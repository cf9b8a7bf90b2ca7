"""Data of your own: ``imagefolder:PATH`` and ``npz:FILE`` as dataset names.

**imagefolder:PATH** -- torchvision's ImageFolder layout, either

- ``PATH/train/CLASS/*`` and ``PATH/test/CLASS/*`` (the same class folders in both), or
- ``PATH/CLASS/*``: then a seeded, stratified split holds out ``TEST_SHARE`` (20 %, at least one
  image) of each class as the test set: each class's files, sorted by path, are shuffled with
  NumPy's ``default_rng(0)`` and the first ``max(1, round(0.2 * n))`` go to test. The split never
  changes with the experiment seed, like the official test sets of the built-in data sets.

Class names are the folder names, sorted (class K is the K-th name). Image files are those with a
known extension (:data:`IMAGE_EXTENSIONS`), found recursively under each class folder; hidden
files and other files are ignored. Every image is converted to grayscale (1 channel) when all of
them are grayscale, else to RGB (3 channels; alpha dropped, grayscale repeated), and resized to
``IMAGE_SIZE`` x ``IMAGE_SIZE`` (28, bilinear with antialiasing) whatever its size, so images of
mixed sizes are fine; the default model is ``cnn2`` (28x28), the default recipe ``cnn_fast``
(``digits_fast`` below 5,000 training images: :func:`default_recipe_name`).
The normalisation (per-channel mean and std) is measured on the training images.

**npz:FILE** -- a NumPy ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``, read with
``allow_pickle=False``. Images are N x H x W (grayscale), N x C x H x W or N x H x W x C with C in
{1, 3}; uint8 (0..255) or floats in [0, 1]; labels integers 0..K-1. Images of a size a zoo model
takes (8, 28, 32) keep it (default model: digits_cnn, cnn2, resnet18); others are resized to 28.

Bad input is one line (:class:`~mixunlearn.datasets.CorruptDataError` or
:class:`~mixunlearn.datasets.DataNotFoundError`) before any work: a missing folder, fewer than
two classes, an empty class, an unreadable image (naming the file), a symlink loop, too many
images, or arrays of the wrong shape or type.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import numpy as np
import torch

PREFIXES = ("imagefolder", "npz")
IMAGE_SIZE = 28
TEST_SHARE = 0.2
SPLIT_SEED = 0
MAX_IMAGES = 500_000  # about 1.2 GB of float32 at 28x28 RGB: beyond, convert the data offline
MAX_FILE_PIXELS = 50_000_000  # per image; a larger one (a decompression bomb) is refused by name
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L"}
ZOO_SIZES = {8: "digits_cnn", 28: "cnn2", 32: "resnet18"}
DEFAULT_RECIPE = {"digits_cnn": "digits_fast", "cnn2": "cnn_fast", "resnet18": "cifar_fast"}


def is_user_dataset(name: object) -> bool:
    return isinstance(name, str) and ":" in name and name.split(":", 1)[0] in PREFIXES


def _errors():
    from .datasets import CorruptDataError, DataNotFoundError

    return CorruptDataError, DataNotFoundError


# --------------------------------------------------------------------------- cache

_LOCK = threading.Lock()
_CACHE: dict[str, tuple[tuple, object]] = {}  # name -> (signature, ImageDataset), the last four


def _signature(name: str) -> tuple:
    """Cheap change detector: mtimes and sizes of the file, or of the folder and its class folders
    (adding, removing or renaming an image changes its folder's mtime)."""
    kind, path = name.split(":", 1)
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return ("missing",)
    sig = [st.st_mtime_ns, st.st_size]
    if kind == "imagefolder" and p.is_dir():
        try:
            for d in sorted(os.scandir(p), key=lambda e: e.name):
                if d.is_dir():
                    sig.append((d.name, d.stat().st_mtime_ns))
                    if d.name in ("train", "test"):
                        sig += [(d.name, c.name, c.stat().st_mtime_ns) for c in os.scandir(d.path) if c.is_dir()]
        except OSError:
            pass
    return tuple(sig)


def load_user_dataset(name: str):
    """The :class:`~mixunlearn.datasets.ImageDataset` of ``imagefolder:PATH`` or ``npz:FILE``
    (read once per process while the files do not change)."""
    sig = _signature(name)
    with _LOCK:
        hit = _CACHE.get(name)
        if hit is not None and hit[0] == sig:
            return hit[1]
    kind, path = name.split(":", 1)
    if not path.strip():
        raise ValueError(f"dataset {name!r} names no {'folder' if kind == 'imagefolder' else 'file'}; "
                         f"use {kind}:PATH")
    ds = _load_folder(name, path) if kind == "imagefolder" else _load_npz(name, path)
    with _LOCK:
        _CACHE[name] = (sig, ds)
        while len(_CACHE) > 4:
            _CACHE.pop(next(iter(_CACHE)))
    return ds


def user_info(name: str):
    return load_user_dataset(name).info


SMALL_TRAIN = 5_000  # fewer training images: the small-data recipe (batch 64, 15 epochs)


def default_recipe_name(name: str) -> str:
    """``digits_fast`` for fewer than :data:`SMALL_TRAIN` training images (the model's own fast recipe
    would take a handful of steps there), else the default model's fast recipe."""
    ds = load_user_dataset(name)
    if len(ds.x_train) < SMALL_TRAIN:
        return "digits_fast"
    return DEFAULT_RECIPE[ds.info.default_model]


def _make_info(name: str, title: str, channels: int, size: int, class_names, x_train: torch.Tensor,
               description: str):
    from .datasets import DatasetInfo

    dims = (0, 2, 3)
    mean = tuple(round(float(v), 4) for v in x_train.mean(dim=dims))
    std = tuple(max(1e-3, round(float(v), 4)) for v in x_train.std(dim=dims))
    return DatasetInfo(name, title, channels, size, len(class_names), tuple(class_names), mean, std,
                       ZOO_SIZES[size], "none", True, description)


# --------------------------------------------------------------------------- image folders


def _walk_images(root: Path, top: Path) -> list[Path]:
    """Image files under ``root`` (recursively, following links), sorted; a symlink loop is an error."""
    corrupt, _ = _errors()
    out: list[Path] = []
    seen: set[str] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            real = os.path.realpath(d, strict=True)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise corrupt(f"imagefolder:{top}: symlink loop at {d}") from None
            raise corrupt(f"imagefolder:{top}: cannot read {d} ({exc.strerror or exc})") from None
        if real in seen:
            raise corrupt(f"imagefolder:{top}: symlink loop at {d} (it leads back to {real})")
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise corrupt(f"imagefolder:{top}: cannot list {d} ({exc.strerror or exc})") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()  # follows links
                if not is_dir and e.is_symlink():
                    os.stat(e.path)  # a dangling or looping link to a file
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise corrupt(f"imagefolder:{top}: symlink loop at {e.path}") from None
                if e.name.lower().endswith(IMAGE_EXTENSIONS):
                    raise corrupt(f"imagefolder:{top}: cannot read {e.path} ({exc.strerror or exc})") from None
                continue
            if is_dir:
                stack.append(Path(e.path))
            elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                out.append(Path(e.path))
                if len(out) > MAX_IMAGES:
                    raise corrupt(f"imagefolder:{top}: more than {MAX_IMAGES:,} images; use a smaller folder "
                                  "or an npz file")
    return sorted(out)


def _class_folders(folder: Path, top: Path, where: str) -> dict[str, list[Path]]:
    corrupt, _ = _errors()
    try:
        classes = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise corrupt(f"imagefolder:{top}: cannot list {folder} ({exc.strerror or exc})") from None
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise corrupt(f"imagefolder:{top}: {where} needs at least 2 class folders (found {found}); "
                      "lay it out as CLASS/image files, one folder per class")
    out = {}
    total = 0
    for c in classes:
        files = _walk_images(folder / c, top)
        if not files:
            raise corrupt(f"imagefolder:{top}: class folder {folder / c} has no images "
                          f"({', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
        total += len(files)
        if total > MAX_IMAGES:
            raise corrupt(f"imagefolder:{top}: more than {MAX_IMAGES:,} images; use a smaller folder or an npz file")
        out[c] = files
    return out


def _fail(top: Path, f: Path, exc: Exception):
    corrupt, _ = _errors()
    text = " ".join(str(exc).split())[:160] or type(exc).__name__
    return corrupt(f"imagefolder:{top}: image {f} cannot be read ({text})")


def _all_gray(files: list[Path], top: Path) -> bool:
    """Whether every image is grayscale, from the headers (no pixels decoded)."""
    from PIL import Image

    gray = True
    for f in files:
        try:
            with Image.open(f) as im:
                mode = im.mode
                if mode == "P":  # a palette image counts as colour
                    mode = "RGB"
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
            raise _fail(top, f, exc) from None
        gray = gray and mode in _GRAY_MODES
    return gray


def _to_tensor(files: list[Path], channels: int, top: Path) -> torch.Tensor:
    """Decode, convert and resize one image at a time (full-size images are never all in memory)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_FILE_PIXELS  # larger: PIL's DecompressionBombError, reported by name
    out = np.empty((len(files), channels, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.load()
                if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale -> 0..255
                    a = np.asarray(im, dtype=np.float32)
                    hi = 65535.0 if im.mode.startswith("I") and a.max(initial=0) > 255 else 255.0
                    im = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8), "L")
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except Exception as exc:  # noqa: BLE001
            raise _fail(top, f, exc) from None
        out[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return torch.from_numpy(out)


def _split_flat(by_class: dict[str, list[Path]], top: Path):
    corrupt, _ = _errors()
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = {}, {}
    for c, files in by_class.items():
        if len(files) < 2:
            raise corrupt(f"imagefolder:{top}: class {c!r} has 1 image; the held-out test split needs at least "
                          "2 per class (or give train/ and test/ folders)")
        order = rng.permutation(len(files))
        n_test = max(1, int(round(TEST_SHARE * len(files))))
        test[c] = [files[i] for i in sorted(order[:n_test])]
        train[c] = [files[i] for i in sorted(order[n_test:])]
    return train, test


def _load_folder(name: str, path: str):
    from .datasets import ImageDataset

    corrupt, missing = _errors()
    top = Path(path).expanduser()
    if not top.is_dir():
        raise missing(f"imagefolder:{path}: no such folder")
    split_layout = (top / "train").is_dir() and (top / "test").is_dir()
    if split_layout:
        train = _class_folders(top / "train", top, "train/")
        test = _class_folders(top / "test", top, "test/")
        if list(train) != list(test):
            only = sorted(set(train) ^ set(test))
            raise corrupt(f"imagefolder:{path}: train/ and test/ must hold the same class folders "
                          f"(only in one: {', '.join(only[:5])})")
        layout = "train/ and test/ folders"
    else:
        train, test = _split_flat(_class_folders(top, top, "the folder"), top)
        layout = f"one folder per class, {int(TEST_SHARE * 100)}% of each held out as test (seed {SPLIT_SEED})"
    classes = list(train)
    tr_files = [f for c in classes for f in train[c]]
    te_files = [f for c in classes for f in test[c]]
    channels = 1 if _all_gray(tr_files + te_files, top) else 3
    x_train, x_test = _to_tensor(tr_files, channels, top), _to_tensor(te_files, channels, top)
    y_train = torch.tensor([k for k, c in enumerate(classes) for _ in train[c]], dtype=torch.int64)
    y_test = torch.tensor([k for k, c in enumerate(classes) for _ in test[c]], dtype=torch.int64)
    info = _make_info(name, f"Image folder {top.name}", channels, IMAGE_SIZE, classes, x_train,
                      f"Images from {top} ({layout}): {len(tr_files)} train / {len(te_files)} test, "
                      f"{len(classes)} classes, {'grayscale' if channels == 1 else 'RGB'}, resized to "
                      f"{IMAGE_SIZE}x{IMAGE_SIZE}.")
    return ImageDataset(info, x_train, y_train, x_test, y_test, source=str(top))


# --------------------------------------------------------------------------- npz


def _npz_images(a: np.ndarray, key: str, where: str) -> torch.Tensor:
    corrupt, _ = _errors()
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise corrupt(f"{where}: {key} has shape {a.shape}; expected N x H x W, N x C x H x W or N x H x W x C")
    if a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.shape[1] not in (1, 3) or a.shape[2] != a.shape[3] or a.shape[2] < 1:
        raise corrupt(f"{where}: {key} has shape {a.shape}; expected square images with 1 or 3 channels")
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32)
        if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise corrupt(f"{where}: {key} holds values outside [0, 1] (or NaN); give floats in [0, 1] or uint8")
    else:
        raise corrupt(f"{where}: {key} has dtype {a.dtype}; use uint8 (0..255) or floats in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(x))


def _load_npz(name: str, path: str):
    from torch.nn import functional as F

    from .datasets import ImageDataset

    corrupt, missing = _errors()
    p = Path(path).expanduser()
    if not p.is_file():
        raise missing(f"npz:{path}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            need = ("x_train", "y_train", "x_test", "y_test")
            if not set(need) <= keys:
                raise corrupt(f"npz:{path}: lacks {', '.join(k for k in need if k not in keys)} "
                              f"(has {', '.join(sorted(keys)) or 'nothing'})")
            arrays = {k: z[k] for k in need}
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, corrupt):
            raise
        raise corrupt(f"npz:{path}: not a readable .npz without pickles ({' '.join(str(exc).split())[:160]})") \
            from None
    xs = {k: _npz_images(arrays[k], k, f"npz:{path}") for k in ("x_train", "x_test")}
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise corrupt(f"npz:{path}: x_train images are {tuple(xs['x_train'].shape[1:])}, x_test's "
                      f"{tuple(xs['x_test'].shape[1:])}")
    ys = {}
    for k in ("y_train", "y_test"):
        y = arrays[k]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise corrupt(f"npz:{path}: {k} must be a 1-D array of integer labels, got {y.dtype} {y.shape}")
        ys[k] = torch.from_numpy(y.astype(np.int64))
    for s in ("train", "test"):
        if len(xs[f"x_{s}"]) != len(ys[f"y_{s}"]):
            raise corrupt(f"npz:{path}: {len(xs[f'x_{s}'])} {s} images but {len(ys[f'y_{s}'])} labels")
    if len(ys["y_train"]) == 0 or len(ys["y_test"]) == 0:
        raise corrupt(f"npz:{path}: the train and test sets must not be empty")
    n_classes = int(max(ys["y_train"].max(), ys["y_test"].max())) + 1
    if int(min(ys["y_train"].min(), ys["y_test"].min())) < 0:
        raise corrupt(f"npz:{path}: labels must be 0..K-1 (found a negative one)")
    present = set(ys["y_train"].tolist())
    if len(present) < 2:
        raise corrupt(f"npz:{path}: y_train has {len(present)} class; at least 2 are needed")
    absent = [k for k in range(n_classes) if k not in present]
    if absent:
        raise corrupt(f"npz:{path}: class {absent[0]} has no training image (labels must be 0..K-1, each used)")
    size = xs["x_train"].shape[2]
    if size not in ZOO_SIZES:
        xs = {k: F.interpolate(v, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True,
                               align_corners=False).clamp_(0, 1) for k, v in xs.items()}
        size = IMAGE_SIZE
    channels = xs["x_train"].shape[1]
    info = _make_info(name, f"Arrays {p.name}", channels, size, [str(k) for k in range(n_classes)], xs["x_train"],
                      f"Arrays from {p}: {len(ys['y_train'])} train / {len(ys['y_test'])} test, {n_classes} "
                      f"classes, {channels} channel(s) at {size}x{size}.")
    return ImageDataset(info, xs["x_train"], ys["y_train"], xs["x_test"], ys["y_test"], source=str(p))


def name_for_path(path: str) -> str:
    """The dataset name of a path typed in the app: ``npz:PATH`` for a .npz file, else ``imagefolder:PATH``."""
    return f"npz:{path}" if path.lower().endswith(".npz") else f"imagefolder:{path}"


def check_path(path: str) -> tuple[str, str | None]:
    """(dataset name, None) when the folder or file loads, else (name, one-line reason)."""
    from .datasets import CorruptDataError, DataNotFoundError

    path = (path or "").strip()
    if not path:
        return "", "Enter the path of a folder of images (one folder per class) or of a .npz file."
    name = name_for_path(path)
    try:
        load_user_dataset(name)
    except (CorruptDataError, DataNotFoundError, ValueError, OSError) as exc:
        return name, " ".join(str(exc).split())
    return name, None
