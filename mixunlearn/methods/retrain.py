"""Retrain: exact unlearning, the yardstick (EVALUATION.md §4, "Retrain").

Trains the architecture from scratch on D_r with the original recipe and seed. The experiment
runner takes Retrain from the oracle cache (its run time is then its recorded training time);
this registry entry trains one directly when called as a method.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models import fresh_copy
from ..training import default_recipe, get_recipe, train_supervised
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class RetrainConfig(MethodConfig):
    recipe: str = param("default", "training recipe name; 'default' is the dataset's own recipe")
    epochs: int = param(0, "epochs (0 = the recipe's)", min=0, max=500)


@register_method(
    "retrain", config=RetrainConfig, labels="aware", display="Retrain", in_paper=True,
    summary="train from scratch on D_r with the original recipe (the gold standard)",
    paper="exact unlearning; the yardstick of every metric",
)
def retrain(model, data, cfg: RetrainConfig, *, device, callbacks):
    import dataclasses

    recipe = default_recipe(data.info.name) if cfg.recipe == "default" else get_recipe(cfg.recipe)
    if cfg.epochs:
        recipe = dataclasses.replace(recipe, epochs=cfg.epochs)
    fresh = fresh_copy(model, data.seed).to(device)
    return train_supervised(fresh, data.x_train, data.y_train, data.retain_idx, recipe, data.seed,
                            callbacks, source="retrain")
