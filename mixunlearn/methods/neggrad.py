"""NegGrad / GA: gradient ascent on the forget set, minimising -CE on D_f.

Usually attributed to Golatkar et al. (CVPR 2020, "Eternal Sunshine of the Spotless Net");
the MixUnlearn paper uses it without defining it. EVALUATION.md §4, "NegGrad / GA". The
objective is unbounded, so the gradient norm is clipped and the run may stop early once the
forget-set accuracy falls to a target, checked after each epoch or every ``check_every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..metrics import predict_logits
from ._loop import MethodLoop, ce_epochs, make_optimizer, steps_per_epoch
from .base import MethodConfig, param, register_method


@dataclass(frozen=True)
class NegGradConfig(MethodConfig):
    lr: float = param(1e-4, "SGD learning rate (momentum 0.9)", min=1e-7, max=1.0, log=True)
    epochs: int = param(5, "passes over D_f", min=1, max=200)
    batch_size: int = param(64, "batch size", min=1, max=4096)
    clip: float = param(100.0, "gradient-norm clip (the objective is unbounded)", min=0.01, max=1e6)
    stop_forget_acc: float = param(-1.0, "stop once accuracy on D_f is at or below this percentage "
                                   "(-1: never stop early)", min=-1.0, max=100.0)
    check_every: int = param(0, "with stop_forget_acc set: check D_f accuracy every this many steps "
                             "(0: after each epoch)", min=0, max=100000, tune=False)

    FAMILY_DEFAULTS = {"resnet": {"batch_size": 256},
                       # Fast recipe (cnn_fast): one pass over D_f with the per-step early stop (at the card's
                       # settings the model collapses to one class; Fashion-MNIST validation split).
                       "cnn:fast": {"epochs": 1, "stop_forget_acc": 5.0, "check_every": 5}}


@register_method(
    "neggrad", config=NegGradConfig, labels="aware", display="NegGrad", in_paper=True,
    summary="gradient ascent on D_f (minimise -CE), gradient norm clipped",
    paper="Golatkar et al., CVPR 2020 (as commonly attributed)",
)
def neggrad(model, data, cfg: NegGradConfig, *, device, callbacks):
    loop = MethodLoop("neggrad", data, callbacks, cfg.epochs * steps_per_epoch(len(data.forget_idx), cfg.batch_size),
                      model=model)
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr)
    early = cfg.stop_forget_acc >= 0

    def forgotten(when: str) -> bool:
        logits = predict_logits(model, data.forget_x)
        model.train()
        acc = 100.0 * float((logits.argmax(1) == data.forget_y).float().mean())
        if acc <= cfg.stop_forget_acc:
            loop.message(f"stopped early {when}: D_f accuracy {acc:.1f}%")
            return True
        return False

    def every_k_steps() -> bool:
        step = loop.reporter.step_count
        return step % cfg.check_every == 0 and forgotten(f"at step {step}")

    per_step = every_k_steps if early and cfg.check_every > 0 else None
    for epoch in range(cfg.epochs):
        if ce_epochs(model, loop, data.forget_idx, data.y_train, opt, 1, cfg.batch_size, sign=-1.0, clip=cfg.clip,
                     stop=per_step, loss_name="neg_ce"):
            break
        if early and per_step is None and forgotten(f"after epoch {epoch + 1}"):
            break
    return loop.finish(model)
