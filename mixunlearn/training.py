"""Training recipes, the original model f_D, the retrained oracle f_{D_r}, and their cache.

The original model and Retrain share recipe and seed; Retrain sees only D_r (EVALUATION.md §6).
Both are cached on disk as safetensors (no pickle), keyed by (dataset, model, recipe, seed,
forget spec, evaluation split, the data's fingerprint: :mod:`mixunlearn.datahash`). An entry's
metadata names its key's parts and its weights' SHA-256; an entry whose metadata is of another key
(files copied from another entry) or whose weights are not the ones it names is refused. A cache
file that is corrupt, truncated or of another architecture is reported through the callbacks,
deleted and rebuilt -- never executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .data import UnlearnData, augment_batch, batch_indices
from .models import UnlearnModel, build_model
from .progress import Callback, ProgressEvent, Reporter, check_finite_weights, emit
from .utils import device_generator, device_name, home_dir, synchronize

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Recipe:
    """How the original model (and Retrain) are trained. Stored in every run's config."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"  # adam | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "none"  # none | multistep | cosine | onecycle (per step: warm-up to lr, cosine down)
    milestones: tuple[int, ...] = ()
    augment: str = "none"  # none | crop | crop_flip
    description: str = ""  # part of the identity: changing it retrains every cached model of the recipe
    # Fields added with the fast recipes. At their defaults they are left out of to_dict(), so the
    # identity (cache key, stored config) of every older recipe is what it was.
    warmup: float = 0.25  # onecycle: share of the steps spent rising to lr
    channels_last: bool = False  # train and run the model in channels-last memory format
    budget: str = ""  # method budget profile: "" = the family's defaults, "fast" = FAMILY_DEFAULTS["<family>:fast"]
    paper: bool = False  # a recipe taken from a paper (the fidelity tables); slow on a laptop

    def to_dict(self) -> dict:
        """What trains the model, as stored in configs and cache keys: the training fields added with
        the fast recipes only when not at their default, and never the labels (``budget``, ``paper``)."""
        d = asdict(self)
        for f in _LABEL_FIELDS:
            del d[f]
        for f, default in _NEW_FIELDS.items():
            if d[f] == default:
                del d[f]
        return d

    def steps(self, n_train: int) -> int:
        """Optimiser steps of one training run on ``n_train`` images."""
        return self.epochs * -(-n_train // self.batch_size)


_NEW_FIELDS = {"warmup": 0.25, "channels_last": False}
_LABEL_FIELDS = ("budget", "paper")


RECIPES: dict[str, Recipe] = {
    "digits_fast": Recipe("digits_fast", 15, 64, 3e-3, "adam", schedule="onecycle",
                          description="fast [ours], digits default: Adam one-cycle to 3e-3, 15 epochs, batch 64"),
    "digits": Recipe("digits", 40, 64, 1e-3, "adam",
                     description="Adam 1e-3, 40 epochs, batch 64 [ours]"),
    "cnn_fast": Recipe("cnn_fast", 4, 256, 5e-3, "adam", weight_decay=1e-4, schedule="onecycle",
                       channels_last=True, budget="fast",
                       description="fast [ours], MNIST/Fashion-MNIST default: Adam one-cycle to 5e-3, wd 1e-4, "
                                   "4 epochs, batch 256, channels-last"),
    "laf_cnn": Recipe("laf_cnn", 20, 32, 1e-4, "adam", weight_decay=1e-4, paper=True,
                      description="LAF's MNIST/Fashion-MNIST recipe: Adam 1e-4, wd 1e-4, 20 epochs, batch 32"),
    "laf_cnn_fast": Recipe("laf_cnn_fast", 10, 128, 1e-3, "adam", weight_decay=1e-4,
                           description="a fast preset [ours]: Adam 1e-3, wd 1e-4, 10 epochs, batch 128"),
    "cifar_fast": Recipe("cifar_fast", 40, 256, 0.1, "sgd", 5e-4, 0.9, "cosine", augment="crop_flip",
                         description="32px fast preset [ours]: SGD 0.1, wd 5e-4, cosine, 40 epochs, crop+flip"),
    "cifar_full": Recipe("cifar_full", 182, 256, 0.1, "sgd", 5e-4, 0.9, "multistep", (91, 136), "crop_flip",
                         paper=True,
                         description="OPTML's 32px recipe: SGD 0.1, wd 5e-4, 182 epochs, lr x0.1 at 91/136"),
    "svhn_fast": Recipe("svhn_fast", 40, 256, 0.1, "sgd", 5e-4, 0.9, "cosine", augment="crop",
                        description="32px fast preset [ours] for SVHN: as cifar_fast, crop only (no flip)"),
}

# The default for interactive use (app and CLI). The fidelity tables name their recipe explicitly
# (laf_cnn for MNIST/Fashion-MNIST, digits for digits), so their numbers do not move with this.
DEFAULT_RECIPE = {"digits": "digits_fast", "mnist": "cnn_fast", "fashion_mnist": "cnn_fast",
                  "cifar10": "cifar_fast", "svhn": "svhn_fast"}
# The recipe of the paper-fidelity tables, per dataset.
TABLE_RECIPE = {"digits": "digits", "mnist": "laf_cnn", "fashion_mnist": "laf_cnn",
                "cifar10": "cifar_full", "svhn": "cifar_full"}


# Which model family each recipe trains (the Setup page offers these; any recipe runs on any model).
RECIPE_FAMILY = {"digits_fast": "digits", "digits": "digits", "cnn_fast": "cnn", "laf_cnn": "cnn",
                 "laf_cnn_fast": "cnn", "cifar_fast": "resnet", "cifar_full": "resnet", "svhn_fast": "resnet"}


def recipe_label(name: str, dataset: str | None = None) -> str:
    """A recipe's name as offered in the app: the dataset's fast default and the slow references say so."""
    r = RECIPES[name]
    if r.paper:
        whose = "the paper's" if name == "laf_cnn" else "a reference"
        return f"{name} — {whose} recipe (slow)"
    if dataset is not None and DEFAULT_RECIPE.get(dataset) == name:
        return f"{name} — fast (default)"
    return name


def recipes_for(family: str) -> list[str]:
    """The recipes made for a model family, fast ones first and paper ones last."""
    names = [n for n, f in RECIPE_FAMILY.items() if f == family]
    return sorted(names, key=lambda n: (RECIPES[n].paper, n != f"{family}_fast" and not n.endswith("_fast"), n))


def default_recipe(dataset: str) -> Recipe:
    """The interactive default recipe of a dataset (the app's and the CLI's when none is given)."""
    if dataset not in DEFAULT_RECIPE and ":" in str(dataset):  # imagefolder:PATH, npz:FILE
        from .userdata import default_recipe_name, is_user_dataset

        if is_user_dataset(dataset):
            return RECIPES[default_recipe_name(dataset)]
    if dataset not in DEFAULT_RECIPE:
        raise ValueError(f"no default recipe for dataset {dataset!r}; known: {', '.join(DEFAULT_RECIPE)}")
    return RECIPES[DEFAULT_RECIPE[dataset]]


def get_recipe(name_or_dataset: str) -> Recipe:
    """A recipe by name; a dataset name that is not also a recipe name gives its default recipe.
    ("digits" is both: it names the digits tables' recipe; use :func:`default_recipe` for a dataset.)"""
    name = name_or_dataset if name_or_dataset in RECIPES else DEFAULT_RECIPE.get(name_or_dataset, name_or_dataset)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name_or_dataset!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def budget_profile(family: str, recipe: Recipe | str | None) -> str:
    """The key of the method defaults for ``family`` trained with ``recipe`` (see methods.make_config):
    the family itself, or ``family:budget`` when the recipe names a budget profile."""
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    return f"{family}:{recipe.budget}" if recipe is not None and recipe.budget else family


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """SGD always uses momentum (EVALUATION.md §4); Adam otherwise."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r}; use adam or sgd")


def _scheduler(opt, recipe: Recipe, total_steps: int = 0):
    """The recipe's schedule; ``onecycle`` is stepped per optimiser step, the others per epoch."""
    if recipe.schedule == "onecycle":
        # torch's OneCycleLR needs at least two steps in each of its phases (it divides by their
        # length - 1); a shorter run (a test, a tiny forget set) keeps the recipe's lr constant.
        up = float(recipe.warmup * total_steps) - 1
        if up < 1 or total_steps - up - 2 < 1:
            return None
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total_steps,
                                                   pct_start=recipe.warmup)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    if recipe.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(recipe.milestones), gamma=0.1)
    return None


def train_supervised(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    recipe: Recipe,
    seed: int,
    callbacks: list[Callback] | None = None,
    source: str = "train",
) -> nn.Module:
    """Train ``model`` with cross-entropy on ``x[idx], y[idx]`` following ``recipe``."""
    device = x.device
    gen = device_generator(seed, device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum)
    steps_per_epoch = -(-len(idx) // recipe.batch_size)
    sched = _scheduler(opt, recipe, recipe.epochs * steps_per_epoch)
    per_step = recipe.schedule == "onecycle"  # (a None schedule -- too few steps -- is never stepped)
    rep = Reporter(source, callbacks, recipe.epochs * steps_per_epoch, phase="train",
                   log_every=max(1, steps_per_epoch // 4), model=model)
    model.train()
    for _ in range(recipe.epochs):
        for b in batch_indices(idx, recipe.batch_size, gen):
            xb = augment_batch(x[b], recipe.augment, gen)
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if per_step and sched is not None:
                sched.step()
            rep.step({"loss": loss})
        if sched is not None and not per_step:
            sched.step()
    check_finite_weights(model, source, rep.step_count)
    model.eval()
    return model


# --------------------------------------------------------------------------- cache


class CacheWriteError(OSError):
    """A trained model could not be written into the model cache (the message names the cache)."""

    def __str__(self) -> str:
        return str(self.strerror)


class ModelCache:
    """Checkpoints as ``<key>.safetensors`` plus ``<key>.json`` (metadata, written last)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else home_dir() / "models"
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(parts: dict) -> str:
        blob = json.dumps({**parts, "format": CACHE_FORMAT}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def load(self, key: str, model: nn.Module) -> tuple[dict | None, str | None]:
        """Load weights into ``model``. Returns (meta, None) on success, (None, reason) when the
        entry is missing or unusable (an unusable entry is deleted)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        wpath, mpath = self.paths(key)
        if not mpath.is_file() or not wpath.is_file():
            return None, None
        try:
            meta = json.loads(mpath.read_text())
            if not isinstance(meta, dict):
                raise ValueError(f"metadata {mpath.name} is not a JSON object")
            float(meta.get("seconds", 0.0))  # a garbage value here would crash the caller later
            _check_entry(self, key, meta, wpath)
            state = load_file(str(wpath), device="cpu")
            load_state_checked(model, state)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as exc:
            self.remove(key)
            return None, f"cached checkpoint {wpath.name} is unusable ({_short(exc)}); it was removed and is rebuilt"
        return meta, None

    def save(self, key: str, model: nn.Module, meta: dict) -> None:
        from safetensors.torch import save_file

        wpath, mpath = self.paths(key)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        digest: dict[str, str] = {}

        def write_weights(p) -> None:
            save_file(state, str(p))
            digest["sha256"] = _file_sha256(Path(p))

        meta = {**meta}
        try:
            _atomic_write(wpath, write_weights)
            meta["weights_sha256"] = digest["sha256"]
            _atomic_write(mpath, lambda p: Path(p).write_text(json.dumps(meta, indent=1, default=str)))
        except OSError as exc:  # one clear line, not the errno text of a temporary file
            with contextlib.suppress(OSError):
                self.remove(key)
            raise CacheWriteError(exc.errno, f"the model cache at {self.root} cannot be written "
                                  f"({exc.strerror or type(exc).__name__})") from None

    def remove(self, key: str) -> None:
        for p in self.paths(key):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_entry(cache: ModelCache, key: str, meta: dict, wpath: Path) -> None:
    """An entry must be the one its key names: its metadata's parts give its key, and its weights
    are the file whose SHA-256 the metadata holds (ValueError otherwise)."""
    parts = meta.get("parts")
    if not isinstance(parts, dict) or cache.key(parts) != key:
        other = cache.key(parts) if isinstance(parts, dict) else "no parts"
        raise ValueError(f"its metadata belongs to another entry ({other}, not {key}): files copied from "
                         "another model")
    if meta.get("weights_sha256") != _file_sha256(wpath):
        raise ValueError("its weights are not the ones its metadata names (replaced or damaged)")


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _atomic_write(path: Path, writer) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict only if its names and shapes match ``model`` exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(str(k) for k in set(state) - set(own))
    if missing or extra:
        raise ValueError(
            f"checkpoint is of another architecture (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"checkpoint tensor {k} has shape {tuple(state[k].shape)}, model expects {tuple(v.shape)}"
                             " (another architecture or number of classes)")
        if not torch.isfinite(state[k].float()).all():
            raise ValueError(f"checkpoint tensor {k} holds NaN or inf")
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a user-supplied checkpoint safely: safetensors, or a plain tensor dict via
    ``torch.load(weights_only=True)``. Pickles that would run code are refused."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except PermissionError:
        raise PermissionError(f"checkpoint {path} cannot be read (permission denied)") from None
    except OSError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"checkpoint {path} is not a file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse is the same answer for the user
        raise ValueError(f"checkpoint {path.name} cannot be loaded safely: {_short(exc)}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path.name} holds a {type(state).__name__}, not a dictionary of tensors")
    # Training checkpoints often wrap the weights next to non-tensor entries (epoch, optimizer, ...).
    for wrapper in _CHECKPOINT_WRAPPERS:
        inner = state.get(wrapper)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"checkpoint {path.name} is not a dictionary of tensors (non-tensor entries: "
            f"{', '.join(not_tensors[:5])}); save model.state_dict()"
        )
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from nn.DataParallel
    load_state_checked(model, state)
    return model


_CHECKPOINT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")


@dataclass
class TrainedModel:
    model: UnlearnModel
    seconds: float
    cached: bool
    key: str
    meta: dict = field(default_factory=dict)


def cache_parts(kind: str, data: UnlearnData, model_name: str, recipe: Recipe) -> dict:
    """What identifies a trained model: the original ignores the forget spec unless the spec
    changed the labels it was trained on (noisy); Retrain always depends on it."""
    from .datahash import data_hash

    return model_parts(kind, data.info.name, str(data.spec), data.spec.kind, data.seed, data.eval_split,
                       int(len(data.x_train)), model_name, recipe, data_hash(data))


def model_parts(kind: str, dataset: str, spec: str, spec_kind: str, seed: int, eval_split: str, n_train: int,
                model_name: str, recipe: Recipe, data_hash: str | None = None) -> dict:
    """:func:`cache_parts` from plain values (e.g. to ask whether a model is cached); ``data_hash`` is
    the data's fingerprint (:func:`mixunlearn.datahash.data_hash`): the same name and size with other
    images or labels is another model."""
    depends_on_spec = kind == "retrain" or spec_kind == "noisy"
    return {
        "kind": kind,
        "dataset": dataset,
        "model": model_name,
        "recipe": recipe.to_dict(),
        "seed": seed,
        "eval_split": eval_split,
        "forget": spec if depends_on_spec else None,
        "n_train": n_train,
        "data": data_hash,
    }


def get_trained(
    kind: str,
    data: UnlearnData,
    model_name: str,
    recipe: Recipe,
    callbacks: list[Callback] | None = None,
    cache: ModelCache | None = None,
    use_cache: bool = True,
) -> TrainedModel:
    """The original model (``kind="original"``, trained on D) or Retrain (``"retrain"``, on D_r),
    from the cache when present, else trained and cached."""
    if kind not in ("original", "retrain"):
        raise ValueError(f"kind must be 'original' or 'retrain', got {kind!r}")
    if data.y_train is None:
        raise ValueError("training the original model or Retrain needs labels")
    device = data.device
    cache = cache or ModelCache()
    parts = cache_parts(kind, data, model_name, recipe)
    key = cache.key(parts)
    seed = data.seed
    model = build_model(model_name, data.info, seed=seed)
    if use_cache:
        meta, problem = cache.load(key, model)
        if problem:
            emit(callbacks, ProgressEvent(kind, "cache", 0, 0, message=problem))
            # A failed load may have left some weights behind: start again from the seeded init.
            model = build_model(model_name, data.info, seed=seed)
        if meta is not None:
            emit(callbacks, ProgressEvent(kind, "cache", 1, 1, message=f"reusing cached {kind} model ({key})"))
            if recipe.channels_last:  # safetensors stores contiguous (NCHW) tensors
                model.to(memory_format=torch.channels_last)
            return TrainedModel(model.to(device).eval(), float(meta.get("seconds", 0.0)), True, key, meta)
    if kind == "original":
        idx = torch.arange(len(data.x_train), device=device)
    else:
        idx = data.retain_idx
    model = model.to(device)
    synchronize(device)
    start = time.perf_counter()
    train_supervised(model, data.x_train, data.y_train, idx, recipe, seed, callbacks, source=kind)
    synchronize(device)
    seconds = time.perf_counter() - start
    meta = {"parts": parts, "seconds": seconds, "device": device_name(device), "created": time.time()}
    if use_cache:
        try:
            cache.save(key, model, meta)
        except CacheWriteError as exc:  # the trained model is not lost: the run goes on without caching it
            emit(callbacks, ProgressEvent(kind, "cache", 0, 0, message=f"{exc}; the {kind} model is used "
                                          "without being cached"))
    return TrainedModel(model.eval(), seconds, False, key, meta)
