"""Fine-tune (FT): cross-entropy on D_r only, so D_f is forgotten by catastrophic forgetting.

Used as a baseline by Jia et al. (NeurIPS 2023, "Model Sparsity Can Simplify Machine
Unlearning") and Fan et al. (ICLR 2024, SalUn). EVALUATION.md §4, "Fine-tune".
"""

from __future__ import annotations

from dataclasses import dataclass

from ._loop import MethodLoop, ce_epochs, make_optimizer, steps_per_epoch
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class FinetuneConfig(MethodConfig):
    lr: float = param(0.01, "SGD learning rate (momentum 0.9)", min=1e-6, max=1.0, log=True)
    epochs: int = param(5, "passes over D_r", min=1, max=200)
    batch_size: int = param(64, "batch size", min=1, max=4096)
    weight_decay: float = param(0.0, "weight decay", min=0.0, max=0.1)
    augment: bool = param(False, "use the original training's augmentation")

    FAMILY_DEFAULTS = {"resnet": {"lr": 0.01, "epochs": 10, "batch_size": 256, "weight_decay": 5e-4,
                                  "augment": True},
                       # Fast recipe (cnn_fast): one pass over D_r at batch 256 (Fashion-MNIST validation split).
                       "cnn:fast": {"epochs": 1, "batch_size": 256, "lr": 0.02}}


@register_method(
    "finetune", config=FinetuneConfig, labels="aware", display="FT",
    summary="fine-tune on D_r with cross-entropy (catastrophic forgetting of D_f)",
    paper="Jia et al., NeurIPS 2023; Fan et al., ICLR 2024",
)
def finetune(model, data, cfg: FinetuneConfig, *, device, callbacks):
    loop = MethodLoop("finetune", data, callbacks,
                      cfg.epochs * steps_per_epoch(len(data.retain_idx), cfg.batch_size), augment=cfg.augment,
                      model=model)
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr, cfg.weight_decay)
    ce_epochs(model, loop, data.retain_idx, data.y_train, opt, cfg.epochs, cfg.batch_size)
    return loop.finish(model)
