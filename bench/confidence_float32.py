"""How far the strong evaluation's confidence (rule 1 of docs/metrics.md §2.2, computed in float64
with log-sum-exps) is from the NeurIPS 2023 unlearning challenge's, which (after LiRA's
``score.py``) takes ``exp(z - max z)`` of the float32 logits in float32 before moving to float64.

    python bench/confidence_float32.py [--rows 200000]

Random 10-class float32 logit rows at several scales; prints the largest absolute difference of
the two confidences where |c| <= 80 and over all rows (the far tail, where float32's exp goes
subnormal or to 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def challenge_confidence(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The challenge's formula (a restatement, not its code): float32 exp, float64 afterwards."""
    p = z - z.max(1, keepdims=True)
    p = np.array(np.exp(p), dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    rows = np.arange(len(y))
    true = p[rows, y].copy()
    p[rows, y] = 0
    return np.log(true + 1e-45) - np.log(p.sum(1) + 1e-45)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    import torch

    from mixunlearn.strong_eval import logit_scaled_confidence

    rng = np.random.default_rng(0)
    worst_mid = worst_all = 0.0
    for scale in (0.5, 2, 5, 10, 20, 40, 80):
        z = (rng.standard_normal((args.rows, 10)) * scale).astype(np.float32)
        y = rng.integers(0, 10, len(z))
        ours = logit_scaled_confidence(torch.from_numpy(z), torch.from_numpy(y))
        diff = np.abs(ours - challenge_confidence(z, y))
        mid = np.abs(ours) <= 80
        worst_mid, worst_all = max(worst_mid, float(diff[mid].max())), max(worst_all, float(diff.max()))
        print(f"logit scale {scale:>4}: max |diff| {diff[mid].max():.3g} where |c| <= 80, {diff.max():.3g} over all "
              f"({int((~mid).sum())} rows with |c| > 80)")
    print(f"largest: {worst_mid:.3g} where |c| <= 80; {worst_all:.3g} over all rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
