"""Dataset loaders: every data set as CPU tensors, pixels in [0, 1], shape N x C x H x W.

Normalisation lives inside the models (see :mod:`mixunlearn.models`), so that mixup,
adversarial steps and pictures all work in plain pixel space.

Files are read directly in their published on-disk formats:

- MNIST / Fashion-MNIST: IDX files, gzip-compressed or not;
- CIFAR-10: the "python version" batches (pickles of NumPy arrays), read with a restricted
  unpickler that can only build plain containers and NumPy arrays, never run code;
- SVHN: the cropped-digits ``.mat`` files (MATLAB v5, read by SciPy).

When the files are absent and downloading is allowed, torchvision fetches them; when that
fails too, :class:`DataNotFoundError` names the folders searched and the ways to get the data.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataNotFoundError(FileNotFoundError):
    """The data set's files are missing (and could not be downloaded)."""


class CorruptDataError(ValueError):
    """A data file exists but is not what it claims to be (truncated, wrong magic, wrong count)."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set."""

    name: str
    title: str
    channels: int
    size: int
    n_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_model: str
    augment: str  # "none", "crop", "crop_flip" (on-device, training only)
    offline: bool  # ships with the install (no files to fetch)
    description: str
    files_hint: str = ""


@dataclass
class ImageDataset:
    """Train and test tensors of one data set (CPU, float32 pixels in [0, 1], int64 labels)."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str = ""
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("x_train", "x_test"):
            x = getattr(self, name)
            if x.ndim != 4 or x.shape[1:] != (self.info.channels, self.info.size, self.info.size):
                raise CorruptDataError(
                    f"{self.info.name}: {name} has shape {tuple(x.shape)}, expected "
                    f"N x {self.info.channels} x {self.info.size} x {self.info.size}"
                )
        for xs, ys, split in ((self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")):
            if len(xs) != len(ys):
                raise CorruptDataError(f"{self.info.name}: {split} has {len(xs)} images but {len(ys)} labels")
            if len(ys) and (int(ys.min()) < 0 or int(ys.max()) >= self.info.n_classes):
                raise CorruptDataError(
                    f"{self.info.name}: {split} labels outside 0..{self.info.n_classes - 1}"
                )


_DIGIT_NAMES = tuple(str(i) for i in range(10))
_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", "Digits 8x8 (scikit-learn)", 1, 8, 10, _DIGIT_NAMES,
        (0.3057,), (0.3730,), "digits_cnn", "none", True,
        "scikit-learn's load_digits: 1,797 handwritten digits at 8x8, stratified 80/20 split "
        "(seed 0). Ships with scikit-learn; works offline.",
    ),
    "mnist": DatasetInfo(
        "mnist", "MNIST", 1, 28, 10, _DIGIT_NAMES, (0.1307,), (0.3081,), "cnn2", "none", False,
        "MNIST handwritten digits, 60k/10k at 28x28.",
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (gzip or not) in DATA_ROOT, DATA_ROOT/mnist or DATA_ROOT/MNIST/raw",
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", "Fashion-MNIST", 1, 28, 10, _FASHION_NAMES, (0.2860,), (0.3530,), "cnn2", "none",
        False,
        "Zalando's Fashion-MNIST, 60k/10k at 28x28. Offline on Debian/Ubuntu: "
        "apt-get install dataset-fashion-mnist.",
        "the four IDX files (as for MNIST) in DATA_ROOT, DATA_ROOT/fashion_mnist, "
        "DATA_ROOT/FashionMNIST/raw or /usr/share/datasets/fashion-mnist",
    ),
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR-10", 3, 32, 10, _CIFAR_NAMES,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "resnet18", "crop_flip", False,
        "CIFAR-10, 50k/10k colour images at 32x32.",
        "cifar-10-batches-py/{data_batch_1..5,test_batch} in DATA_ROOT or DATA_ROOT/cifar10",
    ),
    "svhn": DatasetInfo(
        "svhn", "SVHN", 3, 32, 10, _DIGIT_NAMES,
        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "resnet18", "crop", False,
        "Street View House Numbers (cropped digits), 73,257/26,032 at 32x32.",
        "train_32x32.mat and test_32x32.mat in DATA_ROOT, DATA_ROOT/svhn or DATA_ROOT/SVHN",
    ),
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def get_info(name: str) -> DatasetInfo:
    if _is_user(name):  # imagefolder:PATH, npz:FILE (mixunlearn.userdata): read to know its facts
        from .userdata import user_info

        return user_info(name)
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, imagefolder:PATH, "
                         "npz:FILE") from None


def _is_user(name: object) -> bool:
    from .userdata import is_user_dataset

    return is_user_dataset(name)


# --------------------------------------------------------------------------- IDX (MNIST family)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# The most data bytes one IDX file may declare (60,000 28x28 images are 47 MB): a header that
# promises more is refused before anything is allocated or decompressed.
MAX_IDX_BYTES = 1 << 30
_CHUNK = 1 << 20


def _idx_header(fh, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape an IDX file declares, read from its first bytes only."""
    head = fh.read(4)
    if len(head) < 4:
        raise CorruptDataError(f"{path}: only {len(head)} bytes; not an IDX file")
    zero1, zero2, type_code, ndim = head[0], head[1], head[2], head[3]
    if zero1 != 0 or zero2 != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise CorruptDataError(
            f"{path}: wrong magic number {head.hex()}; expected 0000 08 0N for an IDX file"
        )
    raw_dims = fh.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise CorruptDataError(f"{path}: truncated header")
    return np.dtype(_IDX_TYPES[type_code]), struct.unpack(">" + "I" * ndim, raw_dims)


def read_idx(path: str | os.PathLike, *, shape: tuple[int | None, ...] | None = None,
             max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read one IDX file (gzip-compressed when its name ends in .gz) into a NumPy array.

    Nothing is allocated before the header is checked: the magic number, the declared shape
    (against ``shape``, where ``None`` allows any size), the declared size (at most ``max_bytes``)
    and, for an uncompressed file, the file's real size. A gzip stream is decompressed in chunks
    into the declared size and refused when it holds more (a gzip bomb never expands in memory)."""
    path = Path(path)
    try:
        st = path.stat()
        if not path.is_file():
            raise CorruptDataError(f"{path}: not a regular file")
        gz = path.suffix == ".gz"
        opener: Callable = gzip.open if gz else open
        with opener(path, "rb") as fh:
            dtype, dims = _idx_header(fh, path)
            header = 4 + 4 * len(dims)
            if shape is not None and (len(dims) != len(shape)
                                      or any(w is not None and d != w for d, w in zip(dims, shape))):
                want = " x ".join("N" if w is None else str(w) for w in shape)
                raise CorruptDataError(f"{path}: its header declares shape {dims}, expected {want}; "
                                       "the file is corrupt or of another data set")
            expected = math.prod(dims) * dtype.itemsize  # Python ints: a huge header cannot wrap around
            if expected > max_bytes:
                raise CorruptDataError(f"{path}: its header declares {expected:,} data bytes (shape {dims}), more "
                                       f"than the {max_bytes:,} allowed; the file is corrupt")
            if not gz and st.st_size - header != expected:
                raise CorruptDataError(
                    f"{path}: holds {st.st_size - header} data bytes, its header promises {expected} "
                    f"(shape {dims}); the file is truncated or corrupt"
                )
            buf = np.empty(expected, dtype=np.uint8)
            view, got = memoryview(buf), 0
            while got < expected:
                n = fh.readinto(view[got:got + _CHUNK])
                if not n:
                    break
                got += n
            if got != expected:
                raise CorruptDataError(
                    f"{path}: holds {got} data bytes, its header promises {expected} "
                    f"(shape {dims}); the file is truncated or corrupt"
                )
            if fh.read(1):
                raise CorruptDataError(f"{path}: holds more data than its header declares ({expected} bytes, "
                                       f"shape {dims}); the file is corrupt")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise CorruptDataError(_read_problem(path, exc)) from exc
    return buf.view(dtype).reshape(dims)


def _read_problem(path: Path, exc: BaseException) -> str:
    """Why a data file could not be read, said as it is (a permission, a missing file, damage)."""
    if isinstance(exc, PermissionError):
        return f"{path}: cannot be read (permission denied); give this user read access to it"
    if isinstance(exc, FileNotFoundError):
        return f"{path}: does not exist (any more)"
    return f"{path}: cannot read ({exc}); the file looks truncated or corrupt"


_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_idx_folder(folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        if all(_idx_path(folder, stem) is not None for stem in _IDX_FILES.values()):
            return folder
    return None


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = folder / name
        if p.is_file():
            return p
    return None


def load_idx_folder(folder: Path, info: DatasetInfo) -> ImageDataset:
    arrays = {}
    for key, stem in _IDX_FILES.items():
        p = _idx_path(folder, stem)
        if p is None:
            raise DataNotFoundError(f"{folder}: missing {stem}(.gz)")
        arrays[key] = read_idx(p, shape=(None, 28, 28) if key.startswith("x_") else (None,))
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise CorruptDataError(f"{folder}: {split} images have shape {x.shape}, expected N x 28 x 28")
        if y.ndim != 1 or len(y) != len(x):
            raise CorruptDataError(
                f"{folder}: {split} has {len(x)} images but {len(y)} labels (wrong image count)"
            )
    return ImageDataset(
        info,
        torch.from_numpy(arrays["x_train"].astype(np.float32) / 255.0).unsqueeze(1),
        torch.from_numpy(arrays["y_train"].astype(np.int64)),
        torch.from_numpy(arrays["x_test"].astype(np.float32) / 255.0).unsqueeze(1),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
        source=str(folder),
    )


# --------------------------------------------------------------------------- CIFAR-10 (python batches)

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds containers, strings, numbers and NumPy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a plain data object")


# The largest file a CIFAR-10 batch (31 MB) or an SVHN .mat (train 182 MB, extra 1.3 GB) may be:
# a bigger one is refused before it is read.
MAX_CIFAR_BATCH_BYTES = 256 << 20
MAX_SVHN_MAT_BYTES = 4 << 30


def _check_file_size(path: Path, max_bytes: int, what: str) -> None:
    """Refuse a file that is not a regular file or is bigger than ``what`` can be, before reading it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise CorruptDataError(_read_problem(path, exc)) from exc
    if not path.is_file():
        raise CorruptDataError(f"{path}: not a regular file")
    if st.st_size > max_bytes:
        raise CorruptDataError(f"{path}: {st.st_size:,} bytes, more than a {what} can be ({max_bytes:,}); "
                               f"the file is corrupt or not a {what}")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 N x 3 x 32 x 32, int64 labels)."""
    path = Path(path)
    _check_file_size(path, MAX_CIFAR_BATCH_BYTES, "CIFAR-10 batch")
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CorruptDataError(f"{path}: not a readable CIFAR-10 batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{path}: not a CIFAR-10 batch (top-level object is {type(obj).__name__})")
    obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise CorruptDataError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'")
    try:
        data = np.asarray(obj["data"])
        labels = np.asarray(obj["labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CorruptDataError(f"{path}: CIFAR-10 batch has unreadable data or labels ({exc})") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise CorruptDataError(
            f"{path}: data has shape {data.shape} for {len(labels)} labels; expected N x 3072"
        )
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


def load_cifar10_folder(folder: Path, info: DatasetInfo) -> ImageDataset:
    xs, ys = [], []
    for i in range(1, 6):
        x, y = read_cifar_batch(folder / f"data_batch_{i}")
        xs.append(x)
        ys.append(y)
    xt, yt = read_cifar_batch(folder / "test_batch")
    return ImageDataset(
        info,
        torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0),
        torch.from_numpy(np.concatenate(ys)),
        torch.from_numpy(xt.astype(np.float32) / 255.0),
        torch.from_numpy(yt),
        source=str(folder),
    )


def _find_cifar_folder(folders: Sequence[Path]) -> Path | None:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for folder in folders:
        for cand in (folder / "cifar-10-batches-py", folder):
            if all((cand / n).is_file() for n in names):
                return cand
    return None


# --------------------------------------------------------------------------- SVHN (.mat)

def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN cropped-digits .mat -> (uint8 N x 3 x 32 x 32, int64 labels with 10 mapped to 0)."""
    import scipy.io

    path = Path(path)
    _check_file_size(path, MAX_SVHN_MAT_BYTES, "SVHN .mat file")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several unrelated types for bad files
        raise CorruptDataError(f"{path}: not a readable SVHN .mat file ({exc})") from exc
    if "X" not in mat or "y" not in mat:
        raise CorruptDataError(f"{path}: .mat file lacks the 'X' and 'y' arrays of SVHN")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise CorruptDataError(f"{path}: X has shape {x.shape} for {len(y)} labels; expected 32x32x3xN")
    y = np.where(y == 10, 0, y)
    return np.transpose(x, (3, 2, 0, 1)).astype(np.uint8), y


def load_svhn_folder(folder: Path, info: DatasetInfo) -> ImageDataset:
    x, y = read_svhn_mat(folder / "train_32x32.mat")
    xt, yt = read_svhn_mat(folder / "test_32x32.mat")
    return ImageDataset(
        info,
        torch.from_numpy(x.astype(np.float32) / 255.0),
        torch.from_numpy(y),
        torch.from_numpy(xt.astype(np.float32) / 255.0),
        torch.from_numpy(yt),
        source=str(folder),
    )


def _find_svhn_folder(folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        if (folder / "train_32x32.mat").is_file() and (folder / "test_32x32.mat").is_file():
            return folder
    return None


# --------------------------------------------------------------------------- digits (offline)

def load_digits_dataset(info: DatasetInfo) -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    # A fixed split (seed 0) plays the role of an official train/test split: the test set
    # stays the same across experiment seeds.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return ImageDataset(
        info, torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te),
        source="sklearn.datasets.load_digits",
    )


# --------------------------------------------------------------------------- search and download

def _candidate_folders(name: str, data_root: str | os.PathLike | None) -> list[Path]:
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root).expanduser())
    env = os.environ.get("MIXUNLEARN_DATA")
    if env:
        roots.append(Path(env).expanduser())
    subdirs = {
        "mnist": ["", "mnist", "MNIST/raw"],
        "fashion_mnist": ["", "fashion_mnist", "fashion-mnist", "FashionMNIST/raw"],
        "cifar10": ["", "cifar10"],
        "svhn": ["", "svhn", "SVHN"],
    }[name]
    folders = [r / s if s else r for r in roots for s in subdirs]
    if name == "fashion_mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    return folders


def _download_root(data_root: str | os.PathLike | None) -> Path:
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("MIXUNLEARN_DATA")
    if env:
        return Path(env).expanduser()
    from .utils import home_dir

    return home_dir() / "data"


def _torchvision_download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        tvd.MNIST(str(root), train=True, download=True)
        tvd.MNIST(str(root), train=False, download=True)
    elif name == "fashion_mnist":
        tvd.FashionMNIST(str(root), train=True, download=True)
        tvd.FashionMNIST(str(root), train=False, download=True)
    elif name == "cifar10":
        tvd.CIFAR10(str(root), train=True, download=True)
    elif name == "svhn":
        tvd.SVHN(str(root / "svhn"), split="train", download=True)
        tvd.SVHN(str(root / "svhn"), split="test", download=True)


_FINDERS = {
    "mnist": (_find_idx_folder, load_idx_folder),
    "fashion_mnist": (_find_idx_folder, load_idx_folder),
    "cifar10": (_find_cifar_folder, load_cifar10_folder),
    "svhn": (_find_svhn_folder, load_svhn_folder),
}


def _root_problem(data_root: str | os.PathLike | None) -> str | None:
    """Why an explicitly given data folder cannot hold files (a FIFO, a file, a link to nowhere or a
    loop of links), or None; a folder that does not exist yet is no problem here (downloads go there)."""
    if not data_root:
        return None
    root = Path(data_root).expanduser()
    # (an OSError such as a name too long propagates: the callers say what it means)
    if root.is_symlink() and not root.exists():
        return f"the data folder {root} is a link that leads nowhere (missing target or a loop of links)"
    if root.exists() and not root.is_dir():
        what = "a FIFO" if root.is_fifo() else "a file" if root.is_file() else "a special file"
        return f"the data folder {root} is {what}, not a folder"
    return None


def _under(folder: Path, data_root: str | os.PathLike) -> bool:
    root = Path(data_root).expanduser()
    return folder == root or root in folder.parents


def locate(name: str, data_root: str | os.PathLike | None = None) -> Path | None:
    """The folder holding the data set's files, or None; digits needs none. An explicit
    ``data_root`` is the only place searched for a hit (another copy elsewhere does not count)."""
    if _is_user(name):
        p = Path(name.split(":", 1)[1]).expanduser()
        return p if p.exists() else None
    info = get_info(name)
    if info.offline:
        return Path("sklearn")
    if _root_problem(data_root):
        return None
    finder, _ = _FINDERS[name]
    folder = finder(_candidate_folders(name, data_root))
    return None if data_root and folder is not None and not _under(folder, data_root) else folder


def is_available(name: str, data_root: str | os.PathLike | None = None) -> bool:
    return locate(name, data_root) is not None


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = True) -> ImageDataset:
    """Load a data set by name. See the module docstring for where files are looked for."""
    if _is_user(name):
        from .userdata import load_user_dataset

        return load_user_dataset(name)
    info = get_info(name)
    if info.offline:
        return load_digits_dataset(info)
    problem = _root_problem(data_root)
    if problem:
        raise DataNotFoundError(f"{problem}; give a folder that holds the files of {info.title}")
    finder, loader = _FINDERS[name]
    folders = _candidate_folders(name, data_root)
    folder = finder(folders)
    if data_root and folder is not None and not _under(folder, data_root):
        # An explicit folder without the files is an error, never silently replaced by another copy.
        raise DataNotFoundError(
            f"the data folder {Path(data_root).expanduser()} holds no usable files of {info.title} "
            f"(expected {info.files_hint}); a copy was found at {folder}: give that folder, or none to use it")
    download_error = None
    if folder is None and download:
        root = _download_root(data_root)
        try:
            _torchvision_download(name, root)
        except Exception as exc:  # no network, refused, bad checksum...
            download_error = exc
        folders = folders + [p for p in _candidate_folders(name, root) if p not in folders]
        folder = finder(folders)
    if folder is None:
        searched = "\n  ".join(str(f) for f in folders) or "(no folder given)"
        how = [
            f"put {info.files_hint}",
            "pass --data-root DIR (app: the data folder field) or set MIXUNLEARN_DATA=DIR",
        ]
        if name == "fashion_mnist":
            how.insert(0, "on Debian/Ubuntu: apt-get install dataset-fashion-mnist (offline)")
        how.append("or run once with network access: torchvision downloads it")
        why = f"\nDownload failed: {download_error}" if download_error else (
            "" if download else "\nDownloading was not allowed.")
        raise DataNotFoundError(
            f"Dataset {name!r} not found. Searched:\n  {searched}{why}\nTo get it:\n  - " + "\n  - ".join(how)
        )
    return loader(folder, info)
