"""L-Mix: LAF plus vanilla mixup, the MixUnlearn paper's second label-agnostic baseline.

Peng, Tang and Yang, "Adversarial Mixup Unlearning" (ICLR 2025), which reports it without giving
its details; built on LAF (Shen et al., ICLR 2024, see :mod:`mixunlearn.methods.laf`).
EVALUATION.md §4, "L-Mix".

Rule: LAF's pipeline (its two VAEs, then per batch pair an extractor-unlearning step and a
representation-alignment step), where the alignment step's loss gains a mixup term with weight 1::

    x̃_k = λ·x_f[k] + (1 − λ)·x_r[π(k)],   λ ~ Beta(0.75, 0.75) (one per batch), π a random permutation
    L_mix = Σ_k ‖softmax(f_U(x̃_k)) − (λ·one-hot(r_k) + (1 − λ)·softmax(f_D(x_r[π(k)])))‖²

with ``r_k`` a fresh uniform random class and ``f_D`` the frozen original; reduced over the batch
like LAF's terms (sum by default). No label is read.

Choices [ours; what the paper used is unknown]:

- the mixup term joins LAF's alignment step, so its optimiser is that step's Adam; its learning
  rate and the epoch budget default to MixUnlearn's (lr 5e-4 digits / 1e-4 CNN / 5e-5 ResNet-18;
  30 / 5 / 5 epochs; batch 32), while everything else keeps LAF's own schedule (VAEs, lr_UE, τ);
- the squared error is summed over classes (a squared distance between probability vectors), so
  with weight 1 it is on the scale of LAF's per-sample cosine terms;
- the forget part of the target is a random one-hot, as the card states; the released MixUnlearn
  code has a commented-out variant taking it from another (apparently random) network, which is
  not implemented.

Inherits LAF's simplifications (module docstring of :mod:`mixunlearn.methods.laf`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..utils import seeded
from ._loop import MethodLoop, freeze
from .base import param, register_method
from .laf import LAFConfig, laf_stage, laf_steps
from .randlabel import prob_sq_error, random_targets


@dataclass(frozen=True)
class LMixConfig(LAFConfig):
    mix_alpha: float = param(0.75, "α of λ ~ Beta(α, α), one λ per batch [ours]", min=0.01, max=10.0)
    mix_weight: float = param(1.0, "weight of the mixup term in the alignment step [ours]", min=0.0, max=100.0)
    exclude_argmax: bool = param(False, "draw r_k among the classes other than argmax f_D(x_f[k]) [ours]")

    FAMILY_DEFAULTS = {
        # MixUnlearn's optimiser and budget for the alignment+mixup step; LAF's values otherwise.
        "digits": {**LAFConfig.FAMILY_DEFAULTS["digits"], "epochs": 30, "lr_ra": 5e-4, "lr_ra_data": 5e-4},
        "cnn": {"epochs": 5, "lr_ra": 1e-4, "lr_ra_data": 1e-4},
        "resnet": {**LAFConfig.FAMILY_DEFAULTS["resnet"], "epochs": 5, "lr_ra": 5e-5, "lr_ra_data": 5e-5},
    }
    # Fast recipe: shipped 1.6x Retrain; budgets reach down to 1 so the space meets the 0.3x cap.
    TUNE_RANGES = {"cnn:fast": {"epochs": (1, 10), "vae_epochs": (1, 10)}}


def vanilla_mix(x_f: torch.Tensor, x_r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``λ·x_f + (1 − λ)·x_r``: a convex combination of each forget image with its retain partner."""
    return lam * x_f + (1.0 - lam) * x_r


def _mix_loss_fn(original, cfg: LMixConfig, loop: MethodLoop, n_classes: int):
    beta = torch.distributions.Beta(torch.tensor(cfg.mix_alpha), torch.tensor(cfg.mix_alpha))

    def mix_loss(model, x_f, x_r, b_f, b_r):
        # λ must come from the task seed: torch's Beta sampler takes no generator, so draw a seed
        # from the loop's generator and sample under it (the global RNG is restored afterwards).
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=loop.gen, device=loop.gen.device))
        with seeded(seed):
            lam = float(beta.sample())
        perm = torch.randperm(len(b_f), generator=loop.gen, device=loop.gen.device).to(x_r.device)
        x_r_perm = x_r[perm]
        with torch.no_grad():
            p_r = torch.softmax(original(x_r_perm).float(), dim=1)
            exclude = original(x_f).argmax(1) if cfg.exclude_argmax else None
        r = random_targets(len(b_f), n_classes, loop.gen, x_f.device, exclude)
        target = lam * F.one_hot(r, n_classes).float() + (1.0 - lam) * p_r
        mixed = vanilla_mix(x_f, x_r_perm, torch.tensor(lam, device=x_f.device))
        err = prob_sq_error(torch.softmax(model(mixed), dim=1), target)
        term = err.sum() if cfg.reduction == "sum" else err.mean()
        return cfg.mix_weight * term, {"l_mix": term, "lam": torch.tensor(lam)}

    return mix_loss


@register_method(
    "l_mix", config=LMixConfig, labels="agnostic", display="L-Mix", in_paper=True,
    summary="LAF plus vanilla mixup of D_f/D_r images with MSE to λ·random one-hot + (1−λ)·f_D output, no labels "
            "(our reading of the paper's baseline; LAF's simplifications apply)",
    paper="Peng, Tang and Yang, ICLR 2025 (the MixUnlearn paper's baseline), on LAF (Shen et al., ICLR 2024)",
)
def l_mix(model, data, cfg: LMixConfig, *, device, callbacks):
    loop = MethodLoop("l_mix", data, callbacks, laf_steps(data, cfg), model=model)
    original = freeze(copy.deepcopy(model))
    laf_stage(model, data, cfg, loop, extra_loss=_mix_loss_fn(original, cfg, loop, data.n_classes))
    return loop.finish(model)
