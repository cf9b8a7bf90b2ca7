"""Every loader on tiny files written here in the real on-disk formats, and their error cases."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mixunlearn import datasets as ds
from mixunlearn.datasets import CorruptDataError, DataNotFoundError, load_dataset, read_cifar_batch, read_idx

RNG = np.random.default_rng(1234)


# --------------------------------------------------------------------------- writers (real formats)


def write_idx(path: Path, array: np.ndarray, *, gz: bool, magic: int | None = None, truncate: int = 0) -> Path:
    """IDX: big-endian magic 0x000008NN (NN = number of dims), dims as uint32, then uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    blob = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    if truncate:
        blob = blob[:-truncate]
    path = Path(str(path) + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def make_idx_folder(folder: Path, n_train=12, n_test=5, gz=True, **overrides) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays.update(overrides)
    for stem, arr in arrays.items():
        write_idx(folder / stem, arr, gz=gz)
    return arrays


def write_cifar_folder(root: Path, per_batch=3, n_test=4) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = RNG.integers(0, 10, per_batch).tolist()
        write_cifar_batch(folder / f"data_batch_{i}", x, y)
        xs.append(x)
        ys += y
    xt = RNG.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = RNG.integers(0, 10, n_test).tolist()
    write_cifar_batch(folder / "test_batch", xt, yt)
    return {"x": np.concatenate(xs), "y": np.array(ys), "xt": xt, "yt": np.array(yt)}


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    # As the published batches: a pickled dict with byte-string keys, data uint8 N x 3072 (R, G, B planes).
    obj = {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": data,
           b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_svhn(folder: Path, n: int, labels: np.ndarray | None = None, name="train_32x32.mat") -> dict:
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (RNG.integers(1, 11, (n, 1)) if labels is None else labels.reshape(n, 1)).astype(np.uint8)
    scipy.io.savemat(str(folder / name), {"X": x, "y": y})
    return {"X": x, "y": y}


# --------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_round_trip(tmp_path, name, gz):
    arrays = make_idx_folder(tmp_path / "files", gz=gz)
    d = load_dataset(name, data_root=tmp_path / "files", download=False)
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    # Pixels are exactly byte / 255, labels exactly the stored bytes.
    np.testing.assert_array_equal((d.x_train[:, 0].numpy() * 255).round().astype(np.uint8),
                                  arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(d.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal((d.x_test[:, 0].numpy() * 255).round().astype(np.uint8),
                                  arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0


def test_idx_magic_numbers_are_the_published_ones(tmp_path):
    img = write_idx(tmp_path / "img", np.zeros((2, 28, 28), np.uint8), gz=False)
    lab = write_idx(tmp_path / "lab", np.zeros(2, np.uint8), gz=False)
    assert img.read_bytes()[:4] == bytes.fromhex("00000803")
    assert lab.read_bytes()[:4] == bytes.fromhex("00000801")
    assert read_idx(img).shape == (2, 28, 28) and read_idx(lab).shape == (2,)


def test_idx_wrong_magic(tmp_path):
    p = write_idx(tmp_path / "img", np.zeros((2, 28, 28), np.uint8), gz=False, magic=0x12340803)
    with pytest.raises(CorruptDataError, match="magic"):
        read_idx(p)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(tmp_path, gz):
    p = write_idx(tmp_path / "img", np.ones((3, 28, 28), np.uint8), gz=gz, truncate=100)
    with pytest.raises(CorruptDataError, match="truncated"):
        read_idx(p)


def test_idx_truncated_gzip_stream(tmp_path):
    p = write_idx(tmp_path / "img", RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8), gz=True)
    p.write_bytes(p.read_bytes()[:-30])  # the gzip stream itself is cut
    with pytest.raises(CorruptDataError):
        read_idx(p)


def test_idx_image_label_count_mismatch(tmp_path):
    make_idx_folder(tmp_path / "f", **{"train-labels-idx1-ubyte": np.zeros(11, np.uint8)})
    with pytest.raises(CorruptDataError, match="12 images but 11 labels"):
        load_dataset("mnist", data_root=tmp_path / "f", download=False)


def test_idx_label_out_of_range(tmp_path):
    make_idx_folder(tmp_path / "f", **{"t10k-labels-idx1-ubyte": np.array([0, 1, 2, 3, 10], np.uint8)})
    with pytest.raises(CorruptDataError, match="labels outside"):
        load_dataset("mnist", data_root=tmp_path / "f", download=False)


def test_idx_wrong_image_size(tmp_path):
    make_idx_folder(tmp_path / "f", **{"t10k-images-idx3-ubyte": np.zeros((5, 27, 28), np.uint8)})
    with pytest.raises(CorruptDataError, match="28 x 28"):
        load_dataset("mnist", data_root=tmp_path / "f", download=False)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_round_trip(tmp_path):
    ref = write_cifar_folder(tmp_path)
    d = load_dataset("cifar10", data_root=tmp_path, download=False)
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    # The 3072 bytes of a row are the red, green and blue 32x32 planes, row-major.
    got = (d.x_train.numpy() * 255).round().astype(np.uint8).reshape(15, 3072)
    np.testing.assert_array_equal(got, ref["x"])
    np.testing.assert_array_equal(d.y_train.numpy(), ref["y"])
    np.testing.assert_array_equal((d.x_test.numpy() * 255).round().astype(np.uint8).reshape(4, 3072), ref["xt"])
    np.testing.assert_array_equal(d.y_test.numpy(), ref["yt"])
    assert float(d.x_train[0, 1, 0, 0]) * 255 == pytest.approx(ref["x"][0, 1024])  # green plane, pixel (0, 0)


def test_cifar_str_keys_as_loaded_with_latin1(tmp_path):
    # A batch whose keys are text (as Python-2 pickles read with encoding="latin1") loads too.
    p = tmp_path / "b"
    with open(p, "wb") as fh:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 4]}, fh, protocol=2)
    x, y = read_cifar_batch(p)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 4]


class _EvilSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import builtins

        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("evil", [_EvilSystem, _EvilEval])
def test_cifar_pickle_that_runs_code_is_refused(tmp_path, evil):
    marker = tmp_path / "pwned"
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": evil(marker)}, fh, protocol=2)
    with pytest.raises(CorruptDataError, match="refusing"):
        read_cifar_batch(p)
    assert not marker.exists()
    # Sanity of the test itself: an ordinary unpickler *would* run it.
    with open(p, "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


def test_cifar_truncated_and_bad_shape(tmp_path):
    ref = write_cifar_folder(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptDataError):
        load_dataset("cifar10", data_root=tmp_path, download=False)
    write_cifar_batch(folder / "test_batch", ref["xt"][:, :3000], ref["yt"].tolist())
    with pytest.raises(CorruptDataError, match="3072"):
        load_dataset("cifar10", data_root=tmp_path, download=False)
    write_cifar_batch(folder / "test_batch", ref["xt"], ref["yt"].tolist()[:-1])
    with pytest.raises(CorruptDataError):
        load_dataset("cifar10", data_root=tmp_path, download=False)


def test_cifar_batch_that_is_not_a_dict(tmp_path):
    p = tmp_path / "b"
    p.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(CorruptDataError, match="not a CIFAR-10 batch"):
        read_cifar_batch(p)


# --------------------------------------------------------------------------- SVHN


def test_svhn_round_trip_and_label_10_is_digit_0(tmp_path):
    labels = np.array([10, 1, 2, 9, 10, 5])
    tr = write_svhn(tmp_path / "svhn", 6, labels)
    te = write_svhn(tmp_path / "svhn", 3, np.array([10, 3, 7]), name="test_32x32.mat")
    d = load_dataset("svhn", data_root=tmp_path, download=False)
    assert d.x_train.shape == (6, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.y_train.tolist() == [0, 1, 2, 9, 0, 5] and d.y_test.tolist() == [0, 3, 7]
    # X is height x width x channel x N: sample n's pixel (row r, col c, channel k) is X[r, c, k, n].
    got = (d.x_train.numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, np.transpose(tr["X"], (3, 2, 0, 1)))
    assert got[4, 2, 7, 11] == tr["X"][7, 11, 2, 4]
    assert (d.x_test.numpy() * 255).round().astype(np.uint8)[1, 0, 31, 0] == te["X"][31, 0, 0, 1]


def test_svhn_count_mismatch_and_garbage(tmp_path):
    import scipy.io

    folder = tmp_path / "svhn"
    write_svhn(folder, 3, name="test_32x32.mat")
    scipy.io.savemat(str(folder / "train_32x32.mat"), {"X": np.zeros((32, 32, 3, 4), np.uint8),
                                                        "y": np.ones((3, 1), np.uint8)})
    with pytest.raises(CorruptDataError, match="3 labels"):
        load_dataset("svhn", data_root=tmp_path, download=False)
    (folder / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 20)
    with pytest.raises(CorruptDataError):
        load_dataset("svhn", data_root=tmp_path, download=False)


# --------------------------------------------------------------------------- search order and missing data


def test_missing_folder_names_searched_folders_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", data_root=missing, download=False)
    text = str(err.value)
    assert str(missing) in text and str(tmp_path / "no-debian") in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert "--data-root" in text and "MIXUNLEARN_DATA" in text
    assert "not allowed" in text  # download=False is stated, no download attempted


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_empty_folder(tmp_path, name):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="Searched"):
        load_dataset(name, data_root=tmp_path / "empty", download=False)


def test_missing_data_is_not_downloaded_when_forbidden(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(ds, "_torchvision_download", lambda *a: called.append(a))
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist", data_root=tmp_path, download=False)
    assert called == []


def test_search_order_data_root_then_env_then_debian(tmp_path, monkeypatch):
    a = make_idx_folder(tmp_path / "root_a", n_train=3)
    b = make_idx_folder(tmp_path / "root_b", n_train=4)
    debian = make_idx_folder(tmp_path / "debian", n_train=5)
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setenv("MIXUNLEARN_DATA", str(tmp_path / "root_b"))
    d = load_dataset("fashion_mnist", data_root=tmp_path / "root_a", download=False)
    assert len(d.y_train) == 3 and d.y_train.tolist() == a["train-labels-idx1-ubyte"].tolist()
    d = load_dataset("fashion_mnist", download=False)
    assert len(d.y_train) == 4 and d.y_train.tolist() == b["train-labels-idx1-ubyte"].tolist()
    monkeypatch.delenv("MIXUNLEARN_DATA")
    d = load_dataset("fashion_mnist", download=False)
    assert len(d.y_train) == 5 and d.y_train.tolist() == debian["train-labels-idx1-ubyte"].tolist()
    assert d.source == str(tmp_path / "debian")


def test_subfolder_layouts(tmp_path):
    make_idx_folder(tmp_path / "MNIST" / "raw", n_train=6)
    assert len(load_dataset("mnist", data_root=tmp_path, download=False).y_train) == 6
    make_idx_folder(tmp_path / "fashion_mnist", n_train=7)
    assert len(load_dataset("fashion_mnist", data_root=tmp_path, download=False).y_train) == 7


def test_digits_offline():
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (1, 8, 8)
    assert len(d.x_train) + len(d.x_test) == 1797
    assert float(d.x_train.max()) <= 1.0 and float(d.x_train.min()) >= 0.0
    assert sorted(torch.unique(d.y_test).tolist()) == list(range(10))


def test_unknown_dataset_lists_known():
    with pytest.raises(ValueError, match="known: digits, mnist"):
        load_dataset("imagenet")


@pytest.mark.skipif(not ds.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    d = load_dataset("fashion_mnist", download=False)
    assert d.x_train.shape == (60_000, 1, 28, 28) and d.x_test.shape == (10_000, 1, 28, 28)
    assert sorted(torch.unique(d.y_train).tolist()) == list(range(10))
    assert torch.bincount(d.y_train, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(d.y_test, minlength=10).tolist() == [1000] * 10
