"""MixUnlearn's losses (METHOD.md §4): SimLoss, Sharpen, the batched contrastive sum ``S_τ`` and
the three objectives built from it.

Notation (METHOD.md §4.2), N pairs per batch, pair k = (forget k, retain π(k))::

    P_k = softmax(f(x̃_k))
    a_k = (1-λ)·SimLoss(P_k, p(x_r[π(k)]))        retain term
    b_k =   λ  ·SimLoss(P_k, p(x_f[k]))           forget term
    S_τ = Σ_k a_k - N·logsumexp_k(b_k / τ)

    L_gen  = -S_{τ_gen}        (generator, mask not detached, fixed unlearner)
    L_mix  =  S_{τ_mix}        (unlearner, mask detached)
    L_real =  Σ_j c_j - |B_r|·logsumexp_i(d_i / τ_real)     c, d: SimLoss on real retain / forget

``reduction="mean"`` divides ``S`` and ``L_real`` by N (the default); ``"sum"`` is the authors'
code. All inputs are probability vectors (rows), computed in float32.
"""

from __future__ import annotations

import torch

__all__ = [
    "EPS", "REDUCTIONS", "sim_loss", "sharpen", "pair_terms", "contrastive_sum", "gen_loss", "mix_loss",
    "real_loss",
]

EPS = 1e-8
REDUCTIONS = ("mean", "sum")


def sim_loss(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Row-wise ``1 - <a, b> / (‖a‖·‖b‖ + ε)``; in [0, 1] for non-negative rows (METHOD.md §4.1)."""
    a, b = a.float(), b.float()
    dot = (a * b).sum(-1)
    return 1.0 - dot / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


def sharpen(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``Sharpen(softmax(logits), T)_c = q_c^{1/T} / Σ q^{1/T}``, computed as ``softmax(logits / T)``
    (identical, and it cannot underflow)."""
    if temperature <= 0:
        raise ValueError(f"Sharpen temperature must be positive, got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=-1)


def _lam(lam: torch.Tensor | float, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(lam, dtype=torch.float32, device=ref.device)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def pair_terms(probs: torch.Tensor, p_retain: torch.Tensor, p_forget: torch.Tensor,
               lam: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-pair terms ``a`` (retain, weighted 1-λ) and ``b`` (forget, weighted λ).

    ``p_retain`` must already be ordered like the mixes (``p_r[π]``), ``p_forget`` likewise.
    """
    lam = _lam(lam, probs)
    a = (1.0 - lam) * sim_loss(probs, p_retain)
    b = lam * sim_loss(probs, p_forget)
    return a, b


def contrastive_sum(a: torch.Tensor, b: torch.Tensor, tau: float, reduction: str = "mean") -> torch.Tensor:
    """``S_τ = Σ_k a_k - N·logsumexp_k(b_k / τ)`` (divided by N for ``reduction="mean"``)."""
    _check_reduction(reduction)
    if tau <= 0:
        raise ValueError(f"temperature τ must be positive, got {tau}")
    n = a.shape[0]
    lse = torch.logsumexp(b / tau, dim=0)
    if reduction == "mean":
        return a.mean() - lse
    return a.sum() - n * lse


def gen_loss(probs, p_retain, p_forget, lam, tau: float, reduction: str = "mean") -> torch.Tensor:
    """Eq. 3: ``L_gen = -S_{τ_gen}``, minimised w.r.t. the generator only."""
    return -contrastive_sum(*pair_terms(probs, p_retain, p_forget, lam), tau, reduction)


def mix_loss(probs, p_retain, p_forget, lam, tau: float, reduction: str = "mean") -> torch.Tensor:
    """Eq. 5 (sum over B_r, not the paper's typo B_f): ``L_mix = S_{τ_mix}``, minimised w.r.t. f_U."""
    return contrastive_sum(*pair_terms(probs, p_retain, p_forget, lam), tau, reduction)


def real_loss(probs_retain: torch.Tensor, p_retain: torch.Tensor, probs_forget: torch.Tensor,
              p_forget: torch.Tensor, tau: float, reduction: str = "mean") -> torch.Tensor:
    """Eq. 6: ``L_real = Σ_j c_j - |B_r|·logsumexp_i(d_i / τ_real)`` with
    ``c_j = SimLoss(f_U(x_r[j]), p(x_r[j]))`` and ``d_i = SimLoss(f_U(x_f[i]), p(x_f[i]))``; no λ."""
    c = sim_loss(probs_retain, p_retain)
    d = sim_loss(probs_forget, p_forget)
    return contrastive_sum(c, d, tau, reduction)
