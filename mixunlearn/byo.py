"""A model of your own: start from the user's trained weights instead of training the original.

``--original FILE --model NAME`` (and ``--retrained FILE`` for Retrain): the architecture comes
from the zoo (:mod:`mixunlearn.models`), the weights from the file -- safetensors, or a plain
tensor dictionary read with ``torch.load(weights_only=True)``; nothing that would run code is
loaded (:func:`mixunlearn.training.load_checkpoint`). Weights the project saved itself load
directly: the model cache (``$MIXUNLEARN_HOME/models/<key>.safetensors``, the key is in
results.json's ``info.cache``) and the run store hold the same state dictionaries.

The file's SHA-256 is part of the run's config, so the store, bench's resume check and the
models' identity (``TrainedModel.key``) all follow the weights, not the file name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .progress import Callback, ProgressEvent, emit

_FLAG = {"original": "--original", "retrained": "--retrained", "retrain": "--retrained"}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_weights_file(kind: str, path: str, sha: str | None, model_name: str, info) -> tuple[str, str]:
    """Before any work: the file exists, loads safely and fits ``model_name`` built for ``info``
    (one line naming the first tensor that does not). Returns (absolute path, SHA-256); a given
    ``sha`` that the file no longer has is an error (the weights changed since the run was set up)."""
    from .models import build_model
    from .training import load_checkpoint

    flag = _FLAG[kind]
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    try:
        digest = file_sha256(p)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot be read ({exc.strerror or exc})") from None
    if sha is not None and sha != digest:
        raise ValueError(f"{flag} {path}: the file changed since this run was set up (SHA-256 {digest[:12]}..., "
                         f"expected {sha[:12]}...)")
    try:
        load_checkpoint(p, build_model(model_name, info, seed=0))
    except ValueError as exc:
        raise ValueError(f"{flag} {p.name} does not fit model {model_name!r} for {info.name!r}: {exc}") from None
    return str(p.resolve()), digest


def load_weights(kind: str, path: str, sha: str | None, data, model_name: str, recipe,
                 callbacks: list[Callback] | None = None):
    """The user's model as a :class:`~mixunlearn.training.TrainedModel` (not trained: 0 seconds),
    keyed by its file's hash."""
    from .models import build_model
    from .training import TrainedModel, load_checkpoint

    digest = file_sha256(path)
    if sha is not None and digest != sha:
        raise ValueError(f"{_FLAG[kind]} {path}: the file changed since this run was set up")
    model = build_model(model_name, data.info, seed=data.seed)
    load_checkpoint(path, model)
    if recipe is not None and recipe.channels_last:  # as get_trained gives a cached model
        model.to(memory_format=torch.channels_last)
    emit(callbacks, ProgressEvent(kind, "cache", 1, 1, message=f"{kind}: the weights of {Path(path).name}"))
    meta = {"file": str(path), "sha256": digest}
    return TrainedModel(model.to(data.device).eval(), 0.0, False, f"sha256:{digest[:24]}", meta)
