"""LAF and LAF+R: label-agnostic forgetting by moving representations, without any label.

Shen, Zhang, Zhao, Bialkowski, Chen and Xu, "Label-Agnostic Forgetting: A Supervision-Free
Unlearning in Deep Models" (ICLR 2024; reference ``ShaofeiShen768/LAF``). EVALUATION.md §4,
"LAF / LAF+R". The MixUnlearn paper reports both as baselines.

Embedding ``e(x)`` = ``model.features(x)``, the penultimate embedding of our models (LAF's 2-conv
CNN: its 256-d ``fc1`` output, exactly LAF's; digits CNN: 128-d; ResNet-18: the 512-d pooled
features, where LAF's ResNet had an extra 512→256 ``fc1``). ``e_D`` is the frozen original's.

1. **VAEs** (inside the method call, so counted in its run time). Two VAEs on embeddings of the
   *original* model (computed once, eval mode): ``V_all`` on all of D, ``V_f`` on D_f. Each:
   encoder d→128→32→(μ, log σ²) with latent 16 and ReLU; decoder 16→32→128→d with ReLU and a
   sigmoid output; loss = Σ_dims (V(e) − e)² (batch mean) + 0.025·KL(q(z|e) ‖ N(0, I));
   Adam 1e-3, 10 epochs, batch 32. Both are then frozen (eval, no gradients) and never change.
2. **Unlearning**, one epoch = one pass over D_f in batches of 32, each paired with an equal-size
   D_r batch. Per batch pair, two steps with two Adam optimisers over all parameters:

   - extractor unlearning (lr_UE), with ``E_V(x) = ‖V(e(x)) − e(x)‖²`` of the *current*
     embedding (z sampled, as in the reference)::

         L_UE = Σ_{B_r} exp(E_all/(E_all+1)) − Σ_{B_f} exp(E_f/(E_f+1))

   - representation alignment (lr_RA), ``c = 1 − cos(e(x), e_D(x))``, τ = 20 (5 data-level)::

         L_RA = Σ_{j∈B_r} log( exp(c_j) / Σ_{i∈B_f} exp(c_i/τ) ) = Σ_j c_j − |B_r|·logsumexp_i(c_i/τ)

3. **LAF+R** (``laf_r``, label-aware) then fine-tunes only ``model.head`` with CE on D_r.

**Simplifications and choices — this is not a verbatim reproduction of the published method:**

- The paper does not fully specify extractor unlearning; we implement the rule above, which is
  the card's reading of the paper and matches the released code. Anything beyond it (e.g. a
  stopping rule) is not implemented.
- Batch pairing: equal-size pairs from an endless retain stream (the reference zips two loaders;
  its last forget batch can be shorter than its retain batch).
- VAE inputs are our models' own penultimate features (dimension d as above), not a 256-d
  projection; original-model embeddings are computed without augmentation (the reference's 32px
  pipelines embed augmented images).
- The model stays in eval mode during unlearning (BatchNorm statistics frozen, gradients still
  reach the affine weights): that is what the reference effectively does, since its VAE step
  leaves the model in eval mode. ``bn_train=True`` switches to train mode.
- Losses are summed over the batch as in the reference (``reduction="mean"`` divides by the batch).
- LAF+R's head stage: Adam on the head only, full passes over D_r on precomputed (eval-mode)
  features — identical to running the frozen extractor each step. Its epochs and learning rate
  are not given by the paper [ours].
- Data-level and noisy forgetting use ``tau_data`` / ``lr_ra_data`` (LAF's data-level values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..utils import seeded
from ._loop import (
    MethodLoop,
    freeze,
    make_optimizer,
    optimizer_step,
    paired_batches,
    paired_steps,
    steps_per_epoch,
)
from .base import MethodConfig, param, register_method

EMBED_CHUNK = 1024

_SIMPLIFIED = ("simplified: the extractor-unlearning step follows the card's reading of the paper (= released "
               "code), VAEs on our models' penultimate features; see the module docstring")


@dataclass(frozen=True)
class LAFConfig(MethodConfig):
    epochs: int = param(20, "unlearning epochs, each one pass over D_f paired with D_r batches (CNN 20, "
                        "ResNet-18 40) [LAF]; 0 skips the unlearning stage", min=0, max=500)
    lr_ue: float = param(5e-5, "Adam learning rate of extractor unlearning, lr_UE (CNN 5e-5, ResNet-18 1e-5) [LAF]",
                         min=1e-8, max=1e-1, log=True)
    lr_ra: float = param(1e-4, "Adam learning rate of representation alignment, lr_RA, class-level (CNN 1e-4, "
                         "ResNet-18 5e-5) [LAF]", min=1e-8, max=1e-1, log=True)
    lr_ra_data: float = param(1e-4, "lr_RA for data-level and noisy forgetting (CNN 1e-4, ResNet-18 4e-5) [LAF]",
                              min=1e-8, max=1e-1, log=True)
    tau: float = param(20.0, "τ of the alignment loss, class-level (20) [LAF]", min=0.01, max=100.0)
    tau_data: float = param(5.0, "τ for data-level and noisy forgetting (CNN 5, ResNet-18 20) [LAF]",
                            min=0.01, max=100.0)
    batch_size: int = param(32, "size of each forget and retain batch [LAF]", min=1, max=4096)
    reduction: str = param("sum", "how L_UE and L_RA reduce over the batch: 'sum' as the reference, or 'mean'",
                           choices=("sum", "mean"))
    bn_train: bool = param(False, "BatchNorm in train mode during unlearning (the reference runs in eval mode)")
    latent_dim: int = param(16, "VAE latent size (the card's 16; LAF's hyper-parameter file lists 8 for its CNN)",
                            min=1, max=256)
    vae_epochs: int = param(10, "epochs of each VAE's training [LAF]", min=1, max=200)
    vae_lr: float = param(1e-3, "Adam learning rate of the VAEs [LAF]", min=1e-6, max=1e-1, log=True)
    vae_batch_size: int = param(32, "VAE training batch size [LAF]", min=1, max=4096)
    vae_kl_weight: float = param(0.025, "weight of the VAE's KL term [LAF]", min=0.0, max=10.0)
    vae_output: str = param("sigmoid", "VAE decoder output: 'sigmoid' as LAF (cannot reach negative or >1 "
                            "features), or 'linear' [ours; the digits default, chosen on the validation split]",
                            choices=("sigmoid", "linear"))

    FAMILY_DEFAULTS = {
        # Digits: with a sigmoid decoder the tiny model's unbounded 128-d features cannot be
        # reconstructed, exp(E/(E+1)) saturates and LAF leaves the model unchanged on the digits
        # validation split (class 0: Test_f stays 100); a linear decoder with the card's learning
        # rates matches Retrain there at both levels. Chosen on the validation split, never on D_test.
        "digits": {"vae_output": "linear"},
        "resnet": {"epochs": 40, "lr_ue": 1e-5, "lr_ra": 5e-5, "lr_ra_data": 4e-5, "tau_data": 20.0},
    }
    # Fast recipe: the paper's budgets cost 3.3x Retrain and the derived ranges (default/3 .. 2x) stay
    # over the 0.3x cap, so every trial but the shipped one was stopped; the budgets reach down to 1.
    TUNE_RANGES = {"cnn:fast": {"epochs": (1, 20), "vae_epochs": (1, 10)}}


@dataclass(frozen=True)
class LAFRConfig(LAFConfig):
    head_epochs: int = param(3, "LAF+R: passes over D_r fine-tuning only the classifier head [ours; the paper "
                             "says only that the head is fine-tuned]", min=1, max=200)
    head_lr: float = param(1e-4, "LAF+R: Adam learning rate of the head fine-tuning [ours]", min=1e-7, max=1e-1,
                           log=True)
    head_batch_size: int = param(32, "LAF+R: head fine-tuning batch size", min=1, max=4096)

    TUNE_RANGES = {"cnn:fast": {**LAFConfig.TUNE_RANGES["cnn:fast"], "head_epochs": (1, 3)}}


# --------------------------------------------------------------------------- VAE on embeddings


class EmbeddingVAE(nn.Module):
    """LAF's VAE on d-dim embeddings: d→128→32→(μ, log σ²), latent→32→128→d."""

    def __init__(self, dim: int, latent_dim: int = 16, output: str = "sigmoid"):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU())
        self.mu = nn.Linear(32, latent_dim)
        self.logvar = nn.Linear(32, latent_dim)
        self.dec = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Linear(32, 128), nn.ReLU(),
                                 nn.Linear(128, dim))
        self.output = output

    def forward(self, e: torch.Tensor, generator: torch.Generator | None = None):
        h = self.enc(e)
        mu, logvar = self.mu(h), self.logvar(h)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # sampled in training *and* unlearning, as the reference
        out = self.dec(z)
        return (torch.sigmoid(out) if self.output == "sigmoid" else out), mu, logvar


def vae_loss(recon: torch.Tensor, e: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float) -> torch.Tensor:
    """Σ_dims squared error + kl_weight·KL(q ‖ N(0, I)), both averaged over the batch."""
    rec = (recon - e).pow(2).sum(1).mean()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
    return rec + kl_weight * kl


def embed(model: nn.Module, x: torch.Tensor, loop: MethodLoop, phase: str = "embed") -> torch.Tensor:
    """``model.features`` of ``x`` in eval mode, without gradients, in chunks that each go through the
    reporter (so a cancel lands within one chunk)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), EMBED_CHUNK):
                out.append(model.features(x[i:i + EMBED_CHUNK]).float())
                loop.reporter.step(phase=phase)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def embed_steps(n: int) -> int:
    return -(-n // EMBED_CHUNK)


def fit_vae(embeddings: torch.Tensor, cfg: LAFConfig, loop: MethodLoop, name: str) -> EmbeddingVAE:
    """Fit a fresh VAE on fixed ``embeddings`` (of the original model); return it frozen."""
    # The VAE's initial weights come from the loop's generator, so a run never reads global RNG.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=loop.gen, device=loop.gen.device))
    with seeded(seed):
        vae = EmbeddingVAE(embeddings.shape[1], cfg.latent_dim, cfg.vae_output)
    vae = vae.to(embeddings.device).train()
    opt = make_optimizer(vae.parameters(), "adam", cfg.vae_lr)
    params = list(vae.parameters())
    every = torch.arange(len(embeddings), device=embeddings.device)
    for _ in range(cfg.vae_epochs):
        for b in loop.batches(every, cfg.vae_batch_size):
            e = embeddings[b]
            recon, mu, logvar = vae(e, loop.gen)
            loss = vae_loss(recon, e, mu, logvar, cfg.vae_kl_weight)
            optimizer_step(opt, loss, params)
            loop.reporter.step({f"vae_{name}": loss}, phase="vae")
    vae.zero_grad(set_to_none=True)  # nothing may carry over into the unlearning stage
    return freeze(vae)


def vae_steps(n: int, cfg: LAFConfig) -> int:
    return cfg.vae_epochs * steps_per_epoch(n, cfg.vae_batch_size)


# --------------------------------------------------------------------------- the two LAF losses


def _reduce(t: torch.Tensor, reduction: str) -> torch.Tensor:
    return t.sum() if reduction == "sum" else t.mean()


def recon_energy(vae: EmbeddingVAE, e: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``exp(E/(E+1))`` per sample with ``E = ‖V(e) − e‖²``: bounded in [1, e), so no single sample's
    reconstruction error can dominate the batch."""
    recon, _, _ = vae(e, generator)
    err = (recon - e).pow(2).sum(1)
    return torch.exp(err / (err + 1.0))


def extractor_unlearning_loss(e_r: torch.Tensor, e_f: torch.Tensor, vae_all: EmbeddingVAE, vae_f: EmbeddingVAE,
                              generator: torch.Generator | None, reduction: str = "sum") -> torch.Tensor:
    """L_UE: keep retain embeddings where V_all reconstructs them well, push forget embeddings away
    from where V_f does."""
    return (_reduce(recon_energy(vae_all, e_r, generator), reduction)
            - _reduce(recon_energy(vae_f, e_f, generator), reduction))


def alignment_loss(e_r: torch.Tensor, e_r_orig: torch.Tensor, e_f: torch.Tensor, e_f_orig: torch.Tensor,
                   tau: float, reduction: str = "sum") -> torch.Tensor:
    """L_RA = Σ_j c_j − |B_r|·logsumexp_i(c_i/τ) with c = 1 − cos(current, original) embeddings
    (the stable form of the reference's Σ_j log(exp(c_j) / Σ_i exp(c_i/τ)))."""
    c_r = 1.0 - F.cosine_similarity(e_r, e_r_orig, dim=1, eps=1e-8)
    c_f = 1.0 - F.cosine_similarity(e_f, e_f_orig, dim=1, eps=1e-8)
    total = c_r.sum() - len(c_r) * torch.logsumexp(c_f / tau, dim=0)
    return total if reduction == "sum" else total / len(c_r)


# --------------------------------------------------------------------------- the LAF stage


ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                     tuple[torch.Tensor, dict]]


def laf_steps(data, cfg: LAFConfig) -> int:
    """Reporter steps of :func:`laf_stage` (embedding chunks, VAE training, unlearning pairs)."""
    n = len(data.x_train)
    return (embed_steps(n) + vae_steps(n, cfg) + vae_steps(len(data.forget_idx), cfg)
            + paired_steps(len(data.forget_idx), cfg.batch_size, cfg.epochs))


def laf_stage(model: nn.Module, data, cfg: LAFConfig, loop: MethodLoop, *, lr_ra: float | None = None,
              extra_loss: ExtraLoss | None = None) -> dict:
    """VAE training then extractor unlearning + representation alignment per batch pair.

    ``extra_loss(model, x_f, x_r, b_f, b_r) -> (loss, losses)`` is added to the alignment step's
    loss (L-Mix's mixup term). Returns the fitted, frozen VAEs and the original embeddings.
    """
    data_level = data.spec.level == "data"
    tau = cfg.tau_data if data_level else cfg.tau
    if lr_ra is None:
        lr_ra = cfg.lr_ra_data if data_level else cfg.lr_ra
    # Original-model embeddings of all of D: V_all's data, V_f's (rows of D_f) and the alignment's
    # targets e_D(x), all from the untouched model before any step.
    emb_orig = embed(model, data.x_train, loop)
    vae_all = fit_vae(emb_orig, cfg, loop, "all")
    vae_f = fit_vae(emb_orig[data.forget_idx], cfg, loop, "f")

    opt_ue = make_optimizer(model.parameters(), "adam", cfg.lr_ue)
    opt_ra = make_optimizer(model.parameters(), "adam", lr_ra)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train(cfg.bn_train)
    for _, b_f, b_r in paired_batches(loop, data.forget_idx, data.retain_idx, cfg.batch_size, cfg.epochs):
        x_f, x_r = loop.images(b_f), loop.images(b_r)
        # Extractor unlearning: gradients reach the extractor through e(x) (the VAEs are frozen).
        l_ue = extractor_unlearning_loss(model.features(x_r), model.features(x_f), vae_all, vae_f, loop.gen,
                                         cfg.reduction)
        optimizer_step(opt_ue, l_ue, params)
        # Representation alignment on fresh embeddings, after the extractor step.
        l_ra = alignment_loss(model.features(x_r), emb_orig[b_r], model.features(x_f), emb_orig[b_f], tau,
                              cfg.reduction)
        losses = {"l_ue": l_ue, "l_ra": l_ra}
        loss = l_ra
        if extra_loss is not None:
            extra, extra_losses = extra_loss(model, x_f, x_r, b_f, b_r)
            loss = loss + extra
            losses.update(extra_losses)
        optimizer_step(opt_ra, loss, params)
        loop.reporter.step(losses, phase="unlearn")
    return {"vae_all": vae_all, "vae_f": vae_f, "emb_orig": emb_orig}


def head_finetune(model: nn.Module, data, cfg: LAFRConfig, loop: MethodLoop) -> None:
    """LAF+R's repair: CE on D_r updating only ``model.head``, on eval-mode features of the
    (now fixed) extractor."""
    feats = embed(model, data.retain_x, loop, phase="head")
    y = data.retain_y
    head = model.head.train()
    opt = make_optimizer(head.parameters(), "adam", cfg.head_lr)
    params = list(head.parameters())
    every = torch.arange(len(feats), device=feats.device)
    for _ in range(cfg.head_epochs):
        for b in loop.batches(every, cfg.head_batch_size):
            loss = F.cross_entropy(head(feats[b]), y[b])
            optimizer_step(opt, loss, params)
            loop.reporter.step({"head_ce": loss}, phase="head")


@register_method(
    "laf", config=LAFConfig, labels="agnostic", display="LAF", in_paper=True,
    summary="two VAEs on f_D's embeddings, then extractor unlearning + contrastive representation alignment, "
            "no labels (" + _SIMPLIFIED + ")",
    paper="Shen et al., ICLR 2024",
)
def laf(model, data, cfg: LAFConfig, *, device, callbacks):
    loop = MethodLoop("laf", data, callbacks, laf_steps(data, cfg), model=model)
    laf_stage(model, data, cfg, loop)
    return loop.finish(model)


@register_method(
    "laf_r", config=LAFRConfig, labels="aware", display="LAF+R", in_paper=True,
    summary="LAF, then CE fine-tuning of the classifier head only on D_r (label-aware repair; " + _SIMPLIFIED + ")",
    paper="Shen et al., ICLR 2024",
)
def laf_r(model, data, cfg: LAFRConfig, *, device, callbacks):
    total = (laf_steps(data, cfg) + embed_steps(len(data.retain_idx))
             + cfg.head_epochs * steps_per_epoch(len(data.retain_idx), cfg.head_batch_size))
    loop = MethodLoop("laf_r", data, callbacks, total, model=model)
    laf_stage(model, data, cfg, loop)
    head_finetune(model, data, cfg, loop)
    return loop.finish(model)
