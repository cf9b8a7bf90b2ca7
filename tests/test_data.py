"""Forget specifications, splits (D_f, D_r, noisy labels, validation split), label-free views,
batching and on-device augmentation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixunlearn.data import (
    EndlessBatches,
    ForgetSpec,
    augment_batch,
    batch_indices,
    make_split,
    parse_forget_spec,
)
from mixunlearn.datasets import DATASETS, ImageDataset

INFO = DATASETS["digits"]  # 1 x 8 x 8, 10 classes
SIZES = [20 + 3 * c for c in range(10)]  # class c has 20 + 3c training samples


def synthetic(sizes=SIZES, n_test_per_class=4) -> ImageDataset:
    """A tiny data set whose every training image carries its own id in pixel (0, 0)."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    x = torch.rand(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(6))
    x[:, 0, 0, 0] = torch.arange(len(y)) / 1000.0
    yt = torch.arange(10).repeat_interleave(n_test_per_class)
    xt = torch.full((len(yt), 1, 8, 8), 0.5)
    return ImageDataset(INFO, x, y, xt, yt, source="synthetic")


def ids(x: torch.Tensor) -> set[int]:
    return set((x[:, 0, 0, 0] * 1000).round().long().tolist())


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, kind, classes, fraction", [
    ("class:3", "class", (3,), 1.0),
    ("class:1,7", "class", (1, 7), 1.0),
    ("class:7,1", "class", (1, 7), 1.0),
    ("data:5-9:0.4", "data", (5, 6, 7, 8, 9), 0.4),
    ("data:2:0.25", "data", (2,), 0.25),
    ("noisy:0-4:0.6", "noisy", (0, 1, 2, 3, 4), 0.6),
    (" DATA : 5 - 6 , 9 : 0.5 ", "data", (5, 6, 9), 0.5),
])
def test_parse_every_kind(text, kind, classes, fraction):
    spec = parse_forget_spec(text, 10)
    assert (spec.kind, spec.classes, spec.fraction) == (kind, classes, fraction)
    assert parse_forget_spec(str(spec), 10) == spec


def test_canonical_text():
    assert str(parse_forget_spec("data:5,6,7,8,9:0.40")) == "data:5-9:0.4"
    assert str(parse_forget_spec("class:3")) == "class:3"
    assert str(parse_forget_spec("noisy:0-4:0.6")) == "noisy:0-4:0.6"
    assert parse_forget_spec("data:5-9:0.4").level == "data"
    assert parse_forget_spec("noisy:1:0.5").level == "data"
    assert parse_forget_spec("class:1").level == "class"


@pytest.mark.parametrize("text, allowed", [
    ("class:10", "0..9"),
    ("class:-1", "0..9"),
    ("class:2,11", "0..9"),
    ("data:5-10:0.4", "0..9"),
    ("data:5-9:0", "(0, 1)"),
    ("data:5-9:1", "(0, 1)"),
    ("data:5-9:1.5", "(0, 1)"),
    ("data:5-9:-0.2", "(0, 1)"),
    ("data:5-9:abc", "(0, 1)"),
    ("data:5-9:nan", "(0, 1)"),
    ("noisy:0-4:", "(0, 1)"),
    ("class:0-9", "retain set would be empty"),
    ("", "class:K"),
    ("class", "class:K"),
    ("class:", "class:K"),
    ("class:a", "class:K"),
    ("class:3:0.4", "class:K"),
    ("data:5-9", "CLASSES and FRACTION"),
    ("data:0.4", "CLASSES and FRACTION"),
    ("forget:3", "class:K"),
    ("data:9-5:0.4", "A <= B"),
    ("data:5-9:0.4:1", "class:K"),
])
def test_parse_errors_name_what_is_allowed(text, allowed):
    with pytest.raises(ValueError) as err:
        parse_forget_spec(text, 10)
    assert allowed in str(err.value)


def test_parse_rejects_non_text():
    with pytest.raises(ValueError, match="must be text"):
        parse_forget_spec(3)  # type: ignore[arg-type]


_classes = st.lists(st.integers(0, 9), min_size=1, max_size=10, unique=True).filter(lambda c: len(c) < 10)
_fraction = st.floats(min_value=1e-9, max_value=1 - 1e-9, allow_nan=False, allow_infinity=False)


def _class_text(classes, rng_ranges):
    """Write classes with a mix of single numbers and A-B ranges."""
    parts, c = [], sorted(classes)
    i = 0
    while i < len(c):
        j = i
        while j + 1 < len(c) and c[j + 1] == c[j] + 1:
            j += 1
        if rng_ranges and j > i:
            parts.append(f"{c[i]}-{c[j]}")
        else:
            parts.extend(str(k) for k in c[i:j + 1])
        i = j + 1
    return ",".join(parts)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["class", "data", "noisy"]), classes=_classes, fraction=_fraction,
       ranges=st.booleans())
def test_spec_text_round_trip(kind, classes, fraction, ranges):
    text = f"class:{_class_text(classes, ranges)}" if kind == "class" else \
        f"{kind}:{_class_text(classes, ranges)}:{fraction!r}"
    spec = parse_forget_spec(text, 10)
    assert spec.classes == tuple(sorted(classes))
    assert spec.fraction == (1.0 if kind == "class" else fraction)
    again = parse_forget_spec(str(spec), 10)
    assert again == spec and str(again) == str(spec)


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(["data", "noisy"]), classes=_classes, fraction=_fraction)
def test_spec_object_round_trip(kind, classes, fraction):
    spec = ForgetSpec(kind, tuple(sorted(classes)), fraction)
    assert parse_forget_spec(str(spec), 10) == spec


# --------------------------------------------------------------------------- splits


def test_class_level_split():
    d = make_split(synthetic(), "class:1,7", seed=0)
    y = d.y_train
    assert set(y[d.forget_idx].tolist()) == {1, 7}
    assert not set(y[d.retain_idx].tolist()) & {1, 7}
    assert len(d.forget_idx) == SIZES[1] + SIZES[7]
    assert len(d.forget_idx) + len(d.retain_idx) == sum(SIZES)
    assert not set(d.forget_idx.tolist()) & set(d.retain_idx.tolist())
    assert d.test_forget_mask().sum() == 8 and set(d.y_test[d.test_forget_mask()].tolist()) == {1, 7}
    assert torch.equal(d.forget_x, d.x_train[d.forget_idx]) and torch.equal(d.retain_y, y[d.retain_idx])


@pytest.mark.parametrize("kind", ["data", "noisy"])
def test_per_class_draw_counts_and_seeds(kind):
    ds = synthetic()
    spec = f"{kind}:2,5-9:0.4"
    a = make_split(ds, spec, seed=0)
    for c in range(10):
        n_forget = int((a.y_clean[a.forget_idx] == c).sum())
        expected = round(0.4 * SIZES[c]) if c in (2, 5, 6, 7, 8, 9) else 0
        assert n_forget == expected, (c, n_forget, expected)
    again = make_split(ds, spec, seed=0)
    assert torch.equal(again.forget_idx, a.forget_idx) and torch.equal(again.y_train, a.y_train)
    other = make_split(ds, spec, seed=1)
    assert len(other.forget_idx) == len(a.forget_idx)
    assert not torch.equal(other.forget_idx, a.forget_idx)


def test_noisy_labels():
    ds = synthetic()
    d = make_split(ds, "noisy:0-4:0.6", seed=3)
    f, r = d.forget_idx, d.retain_idx
    assert torch.equal(d.y_clean, ds.y_train)  # the true labels are kept
    assert bool((d.y_train[f] != d.y_clean[f]).all())  # never the true label
    assert bool((d.y_train[f] >= 0).all() and (d.y_train[f] < 10).all())
    assert torch.equal(d.y_train[r], d.y_clean[r])  # only D_f is relabelled: Retrain sees clean labels
    assert set(d.y_clean[f].tolist()) <= {0, 1, 2, 3, 4}
    assert len(set(d.y_train[f].tolist())) > 2  # wrong labels are spread, not one fixed class
    assert d.forget_y.tolist() == d.y_train[f].tolist()  # D_f as stored in D: the noisy labels


def test_validation_split_is_stratified_disjoint_and_replaces_test():
    ds = synthetic()
    d = make_split(ds, "class:3", seed=0, eval_split="val")
    assert d.eval_split == "val"
    assert len(d.x_train) + len(d.x_test) == sum(SIZES)
    for c in range(10):
        assert int((d.y_test == c).sum()) == round(0.1 * SIZES[c])
    assert not ids(d.x_train) & ids(d.x_test)  # disjoint from D
    assert ids(d.x_train) | ids(d.x_test) == ids(ds.x_train)
    assert not ids(d.x_test) & ids(ds.x_test)  # the official test split is not used
    # labels travel with their images
    lookup = dict(zip((ds.x_train[:, 0, 0, 0] * 1000).round().long().tolist(), ds.y_train.tolist(), strict=True))
    got = dict(zip((d.x_test[:, 0, 0, 0] * 1000).round().long().tolist(), d.y_test.tolist(), strict=True))
    assert all(lookup[k] == v for k, v in got.items())
    assert set(d.y_train[d.forget_idx].tolist()) == {3}
    # The held-out part depends on the seed, and is reproducible.
    assert ids(make_split(ds, "class:3", seed=0, eval_split="val").x_test) == ids(d.x_test)
    assert ids(make_split(ds, "class:3", seed=1, eval_split="val").x_test) != ids(d.x_test)


def test_bad_eval_split():
    with pytest.raises(ValueError, match="'test' or 'val'"):
        make_split(synthetic(), "class:3", eval_split="train")


def test_empty_and_total_forget_sets():
    ds = synthetic()
    with pytest.raises(ValueError, match="empty forget set"):
        make_split(ds, "data:0:0.01", seed=0)  # round(0.01 * 20) = 0
    tiny = synthetic(sizes=[1] + [0] * 9)  # a single class with one sample
    with pytest.raises(ValueError, match="retain set would be empty"):
        make_split(tiny, "data:0:0.6", seed=0)  # round(0.6 * 1) = 1: everything
    missing = synthetic(sizes=[5] * 9 + [0])
    with pytest.raises(ValueError, match="no training samples"):
        make_split(missing, "class:9", seed=0)
    with pytest.raises(ValueError, match="0..9"):
        make_split(ds, ForgetSpec("class", (12,)), seed=0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        make_split(ds, ForgetSpec("data", (1,), 1.5), seed=0)


def test_without_labels_hides_every_label():
    d = make_split(synthetic(), "data:5-9:0.4", seed=0)
    v = d.without_labels()
    assert v.y_train is None and v.y_clean is None and v.y_test is None
    assert not v.labels_visible and d.labels_visible
    for attr in ("forget_y", "retain_y"):
        with pytest.raises(PermissionError):
            getattr(v, attr)
    with pytest.raises(PermissionError):
        v.test_forget_mask()
    assert torch.equal(v.forget_x, d.forget_x)  # images stay available
    assert d.y_train is not None  # the labelled task itself is untouched


def test_subset_keeps_spec_and_proportions():
    d = make_split(synthetic(), "class:3", seed=0)
    s = d.subset(60, 10, seed=0)
    assert len(s.x_train) == 60 and len(s.x_test) == 10
    share = len(d.forget_idx) / len(d.x_train)
    assert len(s.forget_idx) == round(60 * share)
    assert set(s.y_train[s.forget_idx].tolist()) == {3} and 3 not in s.y_train[s.retain_idx].tolist()


# --------------------------------------------------------------------------- batching


def test_batch_indices_cover_each_index_once():
    idx = torch.arange(100, 137)
    g = torch.Generator().manual_seed(0)
    batches = batch_indices(idx, 10, g)
    assert [len(b) for b in batches] == [10, 10, 10, 7]
    assert sorted(torch.cat(batches).tolist()) == idx.tolist()
    assert torch.cat(batches).tolist() != idx.tolist()  # shuffled
    again = batch_indices(idx, 10, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert torch.equal(torch.cat(batch_indices(idx, 8, shuffle=False)), idx)
    with pytest.raises(ValueError, match="batch size"):
        batch_indices(idx, 0, g)


def test_endless_batches_reshuffle_every_pass():
    idx = torch.arange(10)
    s = EndlessBatches(idx, 4, torch.Generator().manual_seed(0))
    first = [next(s) for _ in range(3)]
    second = [next(s) for _ in range(3)]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert sorted(torch.cat(second).tolist()) == list(range(10))
    assert torch.cat(first).tolist() != torch.cat(second).tolist()
    with pytest.raises(ValueError, match="empty"):
        EndlessBatches(torch.arange(0), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batching_with_cuda_generators():  # pragma: no cover - CPU-only machines
    idx_cpu = torch.arange(50)
    g = torch.Generator(device="cuda").manual_seed(0)
    b = batch_indices(idx_cpu, 7, g)
    assert b[0].device.type == "cpu" and sorted(torch.cat(b).tolist()) == list(range(50))
    s = EndlessBatches(idx_cpu.cuda(), 7, torch.Generator().manual_seed(0))
    assert next(s).device.type == "cuda"
    x = torch.rand(5, 3, 8, 8, device="cuda")
    assert augment_batch(x, "crop_flip", torch.Generator().manual_seed(0)).device.type == "cuda"


# --------------------------------------------------------------------------- augmentation


def test_crop_with_zero_offset_is_a_padded_shift(monkeypatch):
    x = torch.rand(3, 2, 6, 5)
    real_randint = torch.randint

    def zeros(low, high, size, **kw):
        real_randint(low, high, size, **kw)
        return torch.zeros(size, dtype=torch.long, device=kw.get("device"))

    monkeypatch.setattr(torch, "randint", zeros)
    out = augment_batch(x, "crop", torch.Generator().manual_seed(0), pad=2)
    # Offset (0, 0) of the zero-padded image: the picture moves 2 pixels down and right.
    expected = torch.zeros_like(x)
    expected[:, :, 2:, 2:] = x[:, :, :-2, :-2]
    assert torch.equal(out, expected)


def test_crop_offsets_are_real_crops():
    x = torch.rand(64, 1, 6, 6)
    pad = 2
    out = augment_batch(x, "crop", torch.Generator().manual_seed(1), pad=pad)
    xp = torch.nn.functional.pad(x, (pad,) * 4)
    seen = set()
    for i in range(len(x)):
        hits = [(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                if torch.equal(out[i], xp[i, :, oy:oy + 6, ox:ox + 6])]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 10  # offsets vary across the batch


def test_flip_is_an_exact_mirror(monkeypatch):
    x = torch.rand(4, 3, 5, 5)
    monkeypatch.setattr(torch, "randint", lambda low, high, size, **kw: torch.full(size, 4, device=kw.get("device")))
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.zeros(*size, device=kw.get("device")))
    assert torch.equal(augment_batch(x, "crop_flip", None, pad=4), x.flip(3))
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.ones(*size, device=kw.get("device")))
    assert torch.equal(augment_batch(x, "crop_flip", None, pad=4), x)


def test_augment_mix_of_flips_and_determinism():
    x = torch.rand(200, 1, 4, 4)
    out = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0), pad=0)
    flipped = sum(bool(torch.equal(out[i], x[i].flip(2))) for i in range(200))
    assert 60 < flipped < 140
    again = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0), pad=0)
    assert torch.equal(out, again)
    assert augment_batch(x, "none") is x
    with pytest.raises(ValueError, match="none, crop or crop_flip"):
        augment_batch(x, "rotate")
