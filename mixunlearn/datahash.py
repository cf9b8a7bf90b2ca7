"""The data's fingerprint: a hash of the images and labels a task actually uses.

Cached models (the original, Retrain, retrained pool members) and resumable seed files are keyed on
it, so two data folders of the same name and size (say a copy with every label shifted by one) never
share a cached model or a finished seed. It is computed once per load: the loaded data set's content
(train and test images and labels, as tensors) is hashed once and kept with it
(``ImageDataset.extras``); a split adds only its cheap parts (which images the validation split held
out, the labels as stored after a noisy relabelling). SHA-256 over Fashion-MNIST's 220 MB of float
tensors takes about a tenth of the time its files take to load (docs/hardening.md, R3.1).
"""

from __future__ import annotations

import hashlib

import torch

_CONTENT = "content_sha256"
DATA_HASH = "data_hash"  # the key of a task's fingerprint in UnlearnData.meta


def _update(h, t: torch.Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes() if t.dtype == torch.bool else memoryview(t.numpy()).cast("B"))


def dataset_hash(ds) -> str:
    """SHA-256 of a loaded :class:`~mixunlearn.datasets.ImageDataset`'s tensors, computed once and
    kept in its ``extras``."""
    cached = ds.extras.get(_CONTENT) if isinstance(ds.extras, dict) else None
    if cached:
        return cached
    h = hashlib.sha256()
    for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        _update(h, t)
    value = h.hexdigest()
    if isinstance(ds.extras, dict):
        ds.extras[_CONTENT] = value
    return value


def split_hash(content: str, eval_split: str, held_out: torch.Tensor | None, y_stored: torch.Tensor) -> str:
    """The fingerprint of a task made from a data set of hash ``content``: which training images the
    validation split held out (``eval_split="val"``) and the training labels as stored."""
    h = hashlib.sha256(f"{content}|{eval_split}".encode())
    _update(h, held_out)
    _update(h, y_stored)
    return h.hexdigest()[:20]


def data_hash(data) -> str:
    """The fingerprint of an :class:`~mixunlearn.data.UnlearnData`: the one :func:`make_split` put in
    its ``meta``, else one computed from its tensors (a task built by hand) and kept there."""
    meta = data.meta if isinstance(data.meta, dict) else {}
    value = meta.get(DATA_HASH)
    if value:
        return value
    h = hashlib.sha256(b"tensors")
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        _update(h, t)
    value = h.hexdigest()[:20]
    if isinstance(data.meta, dict):
        data.meta[DATA_HASH] = value
    return value
