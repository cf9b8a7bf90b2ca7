"""The MixUnlearn generator (METHOD.md §3): MixBlock, the vanilla mixer and the pixel-space mix.

MixBlock is AdAutoMix's "AdaptiveMask" as MixUnlearn instantiates it. It reads feature maps
``z_i = h_D(x_i)`` (forget) and ``z_j = h_D(x_j)`` (retain) of the frozen original model and a
ratio ``λ``, and returns a two-channel per-pixel mask ``M`` at the input size with
``M[:, 0] = M_i`` (forget share) and ``M[:, 1] = 1 - M_i`` (retain share)::

    z' = [z, λ-channel]                       (lam_concat)
    q = ReLU(W_q z' + b_q), k = ReLU(W_k z' + b_k)      shared 1x1 convs, C' -> r = C // 2
    v = W_v z' + b_v                                    C' -> 1
    A_i = softmax(q_iᵀ k_j / √r),  A_j = softmax(q_jᵀ k_i / √r)     P x P, P = h·w
    m_i = A_i v_i,  m_j = A_j v_j                        each sample uses its own values
    M = softmax_channels(upsample([m_i, m_j]))           2 x H x W

The attention and both softmaxes always run in float32 (autocast is switched off inside the
block) and their results are checked to be finite -- never patched.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MixBlock", "mix_images", "vanilla_mask", "vanilla_mix", "check_finite", "mixblock_param_count"]

UPSAMPLE_MODES = ("bilinear", "nearest")


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


def mixblock_param_count(channels: int, lam_concat: bool = True) -> int:
    """``2·(C'·r + r) + (C'+1)`` with ``C' = C (+1 with lam_concat)`` and ``r = C // 2`` (METHOD.md §3.4)."""
    c = channels + (1 if lam_concat else 0)
    r = channels // 2
    return 2 * (c * r + r) + (c + 1)


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
    """

    def __init__(self, channels: int, lam_concat: bool = True, upsample: str = "bilinear", init_std: float = 0.01):
        super().__init__()
        if channels < 2:
            raise ValueError(f"MixBlock needs at least 2 feature channels, got {channels}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.channels, self.lam_concat, self.upsample = channels, lam_concat, upsample
        c_in = channels + (1 if lam_concat else 0)
        self.r = channels // 2
        self.query = nn.Conv2d(c_in, self.r, 1)
        self.key = nn.Conv2d(c_in, self.r, 1)
        self.value = nn.Conv2d(c_in, 1, 1)
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.01) -> None:
        for conv in (self.query, self.key, self.value):
            nn.init.normal_(conv.weight, 0.0, std)
            nn.init.zeros_(conv.bias)

    def _qkv(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = z.shape[0]
        q = F.relu(self.query(z)).reshape(n, self.r, -1)  # N x r x P
        k = F.relu(self.key(z)).reshape(n, self.r, -1)  # N x r x P
        v = self.value(z).reshape(n, 1, -1)  # N x 1 x P
        return q, k, v

    def mask_logits(self, z_i: torch.Tensor, z_j: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """The two mask logit maps ``[m_i, m_j]``, N x 2 x h x w (float32, before upsampling)."""
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
        return logits

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
