"""The MixUnlearn generator (METHOD.md §3): MixBlock, the vanilla mixer and the pixel-space mix.

MixBlock is AdAutoMix's "AdaptiveMask" as MixUnlearn instantiates it. It reads feature maps
``z_i = h_D(x_i)`` (forget) and ``z_j = h_D(x_j)`` (retain) of the frozen original model and a
ratio ``λ``, and returns a two-channel per-pixel mask ``M`` at the input size with
``M[:, 0] = M_i`` (forget share) and ``M[:, 1] = 1 - M_i`` (retain share)::

    z' = [z, λ-channel]                       (lam_concat)
    q = ReLU(W_q z' + b_q), k = ReLU(W_k z' + b_k)      shared 1x1 convs, C' -> r = C // 2
    v = W_v z'                                          C' -> 1 (no bias, see below)
    A_i = softmax(q_iᵀ k_j / √r),  A_j = softmax(q_jᵀ k_i / √r)     P x P, P = h·w
    m_i = A_i v_i,  m_j = A_j v_j                        each sample uses its own values
    M = softmax_channels(upsample([m_i, m_j]))           2 x H x W
    M_i ← project(M_i, λ)                                only with share="project" (METHOD.md §3.3)

The value bias ``b_v`` adds the same constant to ``m_i`` and ``m_j`` (the attention rows sum to 1)
and so cancels in the two-channel softmax: it is dead, and Adam turns its rounding-noise
gradient into full-size steps. It is off by default; ``value_bias=True`` keeps it only to
reproduce the first build bit for bit.

The share projection (AutoMix's ``mask_adjust``, restated): with ``m = mean(M_i)`` per sample,
``M_i ← M_i·λ/m`` when ``m > λ`` and ``M_i ← 1 − (1 − M_i)(1 − λ)/(1 − m)`` when ``m < λ``. Afterwards
``mean(M_i) = λ`` exactly, every pixel stays in [0, 1], the spatial pattern is kept and the
map is differentiable, so the generator still learns *where* the forget pixels go.

The attention and both softmaxes always run in float32 (autocast is switched off inside the
block) and their results are checked to be finite -- never patched.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MixBlock", "mix_images", "vanilla_mask", "vanilla_mix", "check_finite", "mixblock_param_count",
           "project_share", "share_penalty", "INITS"]

UPSAMPLE_MODES = ("bilinear", "nearest")
INITS = ("normal", "kaiming")
SHARE_EPS = 1e-6


def check_finite(t: torch.Tensor, what: str) -> None:
    """Fail loudly when ``t`` holds NaN/inf. On the CPU this raises at once. On an accelerator it
    does nothing here: a device-side assertion would leave the whole process's CUDA context unusable
    (every other session of the app included), and a host check would add a sync per step. A
    non-finite mask makes the mixes, and so the losses, non-finite, and the method loop's finiteness
    check on the losses stops the run with a message naming the method and step."""
    if t.device.type != "cpu":
        return
    if not bool(torch.isfinite(t).all()):
        raise FloatingPointError(f"MixBlock: {what} is not finite (NaN or inf)")


def mixblock_param_count(channels: int, lam_concat: bool = True, value_bias: bool = False) -> int:
    """``2·(C'·r + r) + C' (+1 with value_bias)`` with ``C' = C (+1 with lam_concat)`` and ``r = C // 2``
    (METHOD.md §3.4)."""
    c = channels + (1 if lam_concat else 0)
    r = channels // 2
    return 2 * (c * r + r) + c + (1 if value_bias else 0)


def project_share(m_i: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Rescale each forget-share map ``m_i`` (N x H x W or N x 1 x H x W, values in [0, 1]) so its
    spatial mean equals its ``λ`` (a scalar or [N]); differentiable, pattern-preserving (METHOD.md §3.3)."""
    n = m_i.shape[0]
    lam_n = _lam_tensor(lam, n, m_i).view(n, *([1] * (m_i.dim() - 1)))
    mean = m_i.flatten(1).mean(1).view_as(lam_n).clamp(SHARE_EPS, 1.0 - SHARE_EPS)
    down = m_i * (lam_n / mean)  # mean > λ: shrink the forget share
    up = 1.0 - (1.0 - m_i) * ((1.0 - lam_n) / (1.0 - mean))  # mean < λ: shrink the retain share
    return torch.where(mean > lam_n, down, up)


def share_penalty(mask: torch.Tensor, lam: torch.Tensor | float, margin: float) -> torch.Tensor:
    """AutoMix's mask loss in our notation: the batch mean of ``max(|mean(M_i) − λ| − margin, 0)``."""
    m_i = mask[:, 0]
    n = m_i.shape[0]
    share = m_i.flatten(1).mean(1)
    return torch.clamp((share - _lam_tensor(lam, n, m_i)).abs() - margin, min=0.0).mean()


def _lam_tensor(lam: torch.Tensor | float, n: int, ref: torch.Tensor) -> torch.Tensor:
    """λ as a float32 [n] tensor on ``ref``'s device: a scalar is broadcast, a [n] tensor kept."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=ref.device)
    if lam.dim() == 0:
        return lam.expand(n)
    if lam.shape != (n,):
        raise ValueError(f"λ must be a scalar or have shape [{n}], got {tuple(lam.shape)}")
    return lam


class MixBlock(nn.Module):
    """The adversarial mask generator (METHOD.md §3.2).

    Args:
        channels: C, the channel count of the feature map ``h_D``.
        lam_concat: append a constant λ channel to ``z_i`` and ``1 - λ`` to ``z_j`` (on by default).
        upsample: ``"bilinear"`` (align_corners=False) or ``"nearest"``, from h x w to the input size.
        init_std: standard deviation of the N(0, std²) conv-weight initialisation (biases 0).
        init: ``"normal"`` (N(0, init_std²), AutoMix's and the release's) or ``"kaiming"`` (He normal,
            fan-in: the attention is not uniform from the first step).
        project: rescale the forget share so ``mean(M_i) = λ`` for each sample (METHOD.md §3.3).
        value_bias: keep the dead value bias ``b_v`` (only to reproduce the first build exactly).
    """

    def __init__(self, channels: int, lam_concat: bool = True, upsample: str = "bilinear", init_std: float = 0.01,
                 *, init: str = "normal", project: bool = False, value_bias: bool = False):
        super().__init__()
        if channels < 2:
            raise ValueError(f"MixBlock needs at least 2 feature channels, got {channels}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.channels, self.lam_concat, self.upsample = channels, lam_concat, upsample
        self.project = bool(project)
        c_in = channels + (1 if lam_concat else 0)
        self.r = channels // 2
        self.query = nn.Conv2d(c_in, self.r, 1)
        self.key = nn.Conv2d(c_in, self.r, 1)
        self.value = nn.Conv2d(c_in, 1, 1, bias=value_bias)
        if init == "kaiming":
            self.reset_kaiming()
        else:
            self.reset_parameters(init_std)

    def _convs(self) -> tuple[nn.Conv2d, ...]:
        return (self.query, self.key, self.value)

    def reset_parameters(self, std: float = 0.01) -> None:
        for conv in self._convs():
            nn.init.normal_(conv.weight, 0.0, std)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def reset_kaiming(self) -> None:
        """He-normal weights (fan-in; gain √2 before the ReLUs of q and k, 1 for the linear v), biases 0."""
        for conv in self._convs():
            nonlinearity = "linear" if conv is self.value else "relu"
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity=nonlinearity)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def _qkv(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = z.shape[0]
        q = F.relu(self.query(z)).reshape(n, self.r, -1)  # N x r x P
        k = F.relu(self.key(z)).reshape(n, self.r, -1)  # N x r x P
        v = self.value(z).reshape(n, 1, -1)  # N x 1 x P
        return q, k, v

    def mask_logits(self, z_i: torch.Tensor, z_j: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """The two mask logit maps ``[m_i, m_j]``, N x 2 x h x w (float32, before upsampling)."""
        return self._attend(z_i, z_j, lam)[0]

    @torch.no_grad()
    def inspect(self, z_i: torch.Tensor, z_j: torch.Tensor, lam: torch.Tensor | float) -> dict[str, torch.Tensor]:
        """Debug views (AdAutoMix-style): the value maps ``v_i``, ``v_j`` (N x h x w), the attention
        ``A_i`` (N x P x P; row p = where forget position p looks in the retain image's keys) and the
        logit difference ``m_i − m_j`` (N x h x w) that the mask is a softmax of."""
        logits, v_i, v_j, a_i = self._attend(z_i, z_j, lam)
        n, _, h, w = logits.shape
        return {"value_f": v_i.reshape(n, h, w), "value_r": v_j.reshape(n, h, w), "attn_f": a_i,
                "logit_diff": logits[:, 0] - logits[:, 1]}

    def _attend(self, z_i: torch.Tensor, z_j: torch.Tensor, lam: torch.Tensor | float):
        if z_i.shape != z_j.shape:
            raise ValueError(f"feature maps differ in shape: {tuple(z_i.shape)} vs {tuple(z_j.shape)}")
        n, _, h, w = z_i.shape
        with torch.autocast(device_type=z_i.device.type, enabled=False):
            z_i, z_j = z_i.float(), z_j.float()
            if self.lam_concat:
                lam_n = _lam_tensor(lam, n, z_i).view(n, 1, 1, 1)
                z_i = torch.cat([z_i, lam_n.expand(n, 1, h, w)], 1)
                z_j = torch.cat([z_j, (1.0 - lam_n).expand(n, 1, h, w)], 1)
            q_i, k_i, v_i = self._qkv(z_i)
            q_j, k_j, v_j = self._qkv(z_j)
            scale = 1.0 / math.sqrt(self.r)
            a_i = torch.softmax(torch.bmm(q_i.transpose(1, 2), k_j) * scale, dim=-1)  # N x P x P
            a_j = torch.softmax(torch.bmm(q_j.transpose(1, 2), k_i) * scale, dim=-1)
            m_i = torch.bmm(a_i, v_i.transpose(1, 2)).reshape(n, 1, h, w)  # own values v_i
            m_j = torch.bmm(a_j, v_j.transpose(1, 2)).reshape(n, 1, h, w)
            logits = torch.cat([m_i, m_j], 1)
        check_finite(logits, "attention output")
        return logits, v_i, v_j, a_i

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor, lam: torch.Tensor | float,
                size: tuple[int, int]) -> torch.Tensor:
        """The mask ``M`` (N x 2 x H x W, float32) at the input size ``size = (H, W)``; channel 0
        is the forget share, channel 1 the retain share; they sum to 1."""
        logits = self.mask_logits(z_i, z_j, lam)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if self.upsample == "bilinear":
                up = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
            else:
                up = F.interpolate(logits, size=tuple(size), mode="nearest")
            mask = torch.softmax(up, dim=1)
            if self.project:
                m_i = project_share(mask[:, :1], lam)
                mask = torch.cat([m_i, 1.0 - m_i], 1)
        check_finite(mask, "mask")
        return mask


def mix_images(x_i: torch.Tensor, x_j: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixel-space mix ``x_i ⊙ M[:,0] + x_j ⊙ M[:,1]``, the mask broadcast over colour channels.

    Written as ``x_j + M_i (x_i - x_j)`` (identical because ``M[:,1] = 1 - M[:,0]``): every pixel
    then lies between ``x_i`` and ``x_j`` and ``x_i = x_j`` gives back ``x_i`` exactly.
    """
    m = mask[:, :1].to(x_i.dtype)
    return torch.lerp(x_j, x_i, m)


def vanilla_mask(lam: torch.Tensor | float, n: int, size: tuple[int, int], device=None) -> torch.Tensor:
    """The vanilla mixer's constant mask ``[λ, 1 - λ]`` (N x 2 x H x W): ordinary mixup."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=device)
    lam = lam.expand(n) if lam.dim() == 0 else lam
    m = lam.view(n, 1, 1, 1).expand(n, 1, *size)
    return torch.cat([m, 1.0 - m], 1)


def vanilla_mix(x_i: torch.Tensor, x_j: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Ordinary mixup ``λ x_i + (1 - λ) x_j`` (λ a scalar or one value per sample)."""
    lam = torch.as_tensor(lam, dtype=x_i.dtype, device=x_i.device)
    if lam.dim() == 1:
        lam = lam.view(-1, *([1] * (x_i.dim() - 1)))
    return torch.lerp(x_j, x_i, lam)
