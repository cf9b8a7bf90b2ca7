"""Generator health at the last snapshot, summarised over saved runs, against issue 11's bars.

Reads ``methods.<name>.generator`` (the last snapshot's health, METHOD.md §9) from result files:
a run's ``results.json``, a ``bench`` seed file (``seedN.json``), or a seed file of
``bench/mixunlearn_digits.py`` / ``bench/mixunlearn_fashion.py`` (``runs/*.json``). Rows per method,
then all the named methods pooled:

    python bench/generator_health.py bench/out/f18_class0/seed*.json
    python bench/generator_health.py "bench/out/digits_gen2/runs/*.json" --methods mixunlearn

Bars (issue 11, last snapshot): mean |share − λ| ≤ 0.05, spatial std at λ = 0.5 ≥ 0.05, retain gain
≥ 0.02 (the mean over runs), no collapse.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixunlearn.analysis import HEALTH_KEYS as KEYS  # noqa: E402

# Issue 11's bars on the mean over runs: (health key, "<=" or ">=", bound); and no run collapsed.
BARS = (("share_err", "<=", 0.05), ("std_mid", ">=", 0.05), ("gain_retain", ">=", 0.02))


def expand(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat]
        if not hits:
            raise SystemExit(f"no file matches {pat!r}")
        paths += [Path(h) for h in hits]
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"not a file: {p}")
    return paths


def collect(paths: list[Path], methods: list[str]) -> dict[str, list[dict]]:
    """{method: [health dict + 'file']} for every file that ran the method with a generator."""
    out: dict[str, list[dict]] = {m: [] for m in methods}
    for p in paths:
        try:
            res = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{p}: not a readable results file ({exc})") from exc
        if not isinstance(res, dict) or not isinstance(res.get("methods"), dict):
            raise SystemExit(f"{p}: no 'methods' block (expected a results.json or a bench seed file)")
        for m in methods:
            h = (res["methods"].get(m) or {}).get("generator")
            if h:
                out[m].append({**h, "file": str(p)})
    return out


def summary_row(label: str, hs: list[dict]) -> tuple[str, dict[str, bool]]:
    col = {k: np.array([h[k] for h in hs if h.get(k) is not None], dtype=float) for k in KEYS}
    collapsed = sum(bool(h.get("collapse")) for h in hs)
    met = {k: bool(col[k].size) and (float(col[k].mean()) <= bound if op == "<=" else float(col[k].mean()) >= bound)
           for k, op, bound in BARS}
    met["collapse"] = collapsed == 0

    def mmm(k: str) -> str:
        v = col[k]
        return "–" if not v.size else f"{v.mean():+.3f} ({v.min():+.3f} … {v.max():+.3f})"

    updates = sorted({int(h["update"]) for h in hs if "update" in h})
    row = (f"| {label} | {len(hs)} | {mmm('share_err')} | {mmm('share_slope')} | {mmm('std_mid')} | "
           f"{mmm('gain_retain')} | {mmm('gain_forget')} | {collapsed} | "
           f"{', '.join(map(str, updates[:4]))}{' …' if len(updates) > 4 else ''} |")
    return row, met


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="results files or glob patterns (quote globs)")
    p.add_argument("--methods", default="mixunlearn,mixunlearn_agnostic")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise SystemExit("--methods names no method")
    runs = collect(expand(args.files), methods)
    if not any(runs.values()):
        raise SystemExit(f"none of the files has generator health for {', '.join(methods)}")
    print("| method | runs | share err mean (min … max) | slope | std at λ 0.5 | retain gain | forget gain "
          "| collapsed | last update |")
    print("|---|---|---|---|---|---|---|---|---|")
    verdicts = {}
    for m, hs in runs.items():
        if hs:
            row, met = summary_row(m, hs)
            print(row)
            verdicts[m] = met
    pooled = [h for hs in runs.values() for h in hs]
    if len([m for m in runs if runs[m]]) > 1:
        row, met = summary_row("all", pooled)
        print(row)
        verdicts["all"] = met
    print()
    for m, met in verdicts.items():
        print(f"{m}: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in met.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
