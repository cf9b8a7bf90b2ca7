"""EU-k: exact unlearning of the last k layers — re-initialise the last k layers and train them
from scratch on D_r, the trunk frozen.

Goel, Prabhu, Sanyal, Lim, Torr and Kumaraguru, "Towards Adversarial Evaluations for Inexact
Machine Unlearning" (arXiv 2201.06640, 2022). Reference implementation: SCRUB's MIA notebook
(``meghdadk/SCRUB``, ``euk_unlearn``); also ERASURE (``aiim-research/ERASURE``, ``eu_k``) and
DeepUnlearn. EVALUATION.md §4, "EU-k / CF-k"; docs/baselines.md.

Rule: the last ``k`` layers (see :mod:`._last_k`) get a fresh initialisation; every other
parameter is frozen at f_D's value; the last k layers are trained with CE on D_r exactly as in
CF-k (:func:`.cf_k.finetune_last_k`), for as long as the original training (the reference uses
its training epochs, 25).

Deviations [ours]: the fresh weights come from the layers' own ``reset_parameters`` under a seed
derived from the task seed (the reference copies them from the checkpoint saved at the original
training's initialisation, which we do not keep; ERASURE also calls ``reset_parameters``); the
frozen trunk runs in eval mode, so its BatchNorm statistics stay f_D's (see CF-k).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _last_k as lk
from ._loop import MethodLoop, steps_per_epoch
from .base import MethodConfig, MethodOutput, param, register_method
from .cf_k import finetune_last_k


@dataclass(frozen=True)
class EUkConfig(MethodConfig):
    k: int = param(3, "layers counted from the output that are re-initialised and retrained (digits 3, 2-conv "
                   "CNN 4, ResNet-18 2: the last conv stage and all after it) [ref]", min=1, max=6)
    lr: float = param(0.01, "SGD learning rate [ref 0.01]", min=1e-6, max=1.0, log=True)
    momentum: float = param(0.0, "SGD momentum (none in the reference)", min=0.0, max=0.99)
    weight_decay: float = param(0.0, "weight decay (none in the reference)", min=0.0, max=0.1)
    epochs: int = param(15, "passes over D_r: the original training's length (ref: 25 = its training epochs; "
                        "digits 15 = digits_fast's)", min=1, max=300)
    batch_size: int = param(64, "batch size [ref 64]", min=1, max=4096)
    lr_decay_epochs: tuple[int, ...] = param((10, 15, 20), "milestones: lr × lr_decay_rate for every one the "
                                             "epoch number exceeds [ref]")
    lr_decay_rate: float = param(0.1, "learning-rate factor per passed milestone [ref]", min=0.0, max=1.0)
    augment: bool = param(False, "use the original training's augmentation (ResNet-18: on)")

    # k cannot exceed the model's layer count (methods/_last_k.py: digits 5, 2-conv CNN 5, ResNet-18 6).
    TUNE_RANGES = {"digits": {"k": (1, 5)}, "cnn": {"k": (1, 5)}, "resnet": {"k": (1, 6)}}
    FAMILY_DEFAULTS = {
        "cnn": {"k": 4, "epochs": 20},
        "resnet": {"k": 2, "epochs": 25, "augment": True},
        # Fast recipe (cnn_fast): 1 pass over D_r at batch 256, lr 0.05 with momentum 0.9 (Fashion-MNIST
        # validation split, class 0: Test_r 89.7; 2 passes at lr 0.02: 89.4 at twice the cost).
        "cnn:fast": {"epochs": 1, "batch_size": 256, "lr": 0.05, "momentum": 0.9},
    }


@register_method(
    "eu_k", config=EUkConfig, labels="aware", display="EU-k",
    summary="re-initialise the last k layers and train them from scratch on D_r (trunk frozen)",
    paper="Goel et al., 2022",
)
def eu_k(model, data, cfg: EUkConfig, *, device, callbacks):
    names, modules = lk.split_last_k(model, cfg.k, "eu_k")
    loop = MethodLoop("eu_k", data, callbacks, cfg.epochs * steps_per_epoch(len(data.retain_idx), cfg.batch_size),
                      augment=cfg.augment, model=model)
    lk.reinit_last_k(modules, data.seed * 1000 + 29)
    loop.message(f"re-initialised {', '.join(names)}; the rest is frozen", phase="setup", layers=names)
    finetune_last_k(model, data, loop, modules, cfg, cfg.epochs, cfg.batch_size)
    return MethodOutput(loop.finish(model), {"layers": names})
