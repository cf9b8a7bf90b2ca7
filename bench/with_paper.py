"""Put the paper's reported rows beside a bench table (``python -m mixunlearn bench`` → table.csv).

For every method of the table: our mean ± std over the protocol's metrics (class level: Test_r,
Test_f, ASR; data level: Train_r, Train_f, Test, ASR), our gap to our Retrain, wall time as a ratio
of Retrain's, then the paper's row for the same method and setting (Tables 1-2, from
``mixunlearn/resources/paper_tables.json``), the paper's own gap, and the mean absolute
difference between our row and the paper's. Methods the paper reports but we do not implement
are listed after, marked †. Prints Markdown; ``--out`` also writes it.

    python bench/with_paper.py bench/out/fashion_class0/table.csv --dataset fashion_mnist --level class \
        --out bench/out/fashion_class0/with_paper.md
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixunlearn.methods import get_method  # noqa: E402
from mixunlearn.metrics import metric_set  # noqa: E402
from mixunlearn.paper import paper_rows  # noqa: E402

NAMES = {"test_r": "Test_r", "test_f": "Test_f", "train_r": "Train_r", "train_f": "Train_f", "test": "Test",
         "asr": "ASR"}


def render(rows: list[dict], dataset: str, level: str) -> str:
    keys = metric_set(level)
    paper = paper_rows(dataset, level)
    by_key = {r.key: r for r in paper if r.key}
    head = ("| method | " + " | ".join(NAMES[k] for k in keys) + " | gap | × Retrain | paper: "
            + " / ".join(NAMES[k] for k in keys) + " | paper's gap | abs(ours − paper) |")
    lines = [head, "|---|" + "---|" * (len(keys) + 5)]
    for r in rows:
        m = r["method"]
        display = m if m == "original" else get_method(m).display
        ours = " | ".join(f"{float(r[k]):.2f} ± {float(r[k + '_std']):.2f}" for k in keys)
        ratio = r.get("time_ratio_to_retrain") or ""
        ratio = f"{float(ratio):.3f}" if ratio not in ("", "nan") else "–"
        pr = by_key.get(m)
        if pr:
            ptxt = " / ".join(f"{pr.metrics[k][0]:.2f}" for k in keys)
            pgap = f"{pr.gap:.2f}" if pr.gap is not None else "–"
            diff = f"{sum(abs(float(r[k]) - pr.metrics[k][0]) for k in keys) / len(keys):.2f}"
        else:
            ptxt, pgap, diff = "–", "–", "–"
        lines.append(f"| {display} (`{m}`) | {ours} | {float(r['gap_to_retrain']):.2f} | {ratio} | {ptxt} | "
                     f"{pgap} | {diff} |")
    ours_names = {r["method"] for r in rows}
    for pr in paper:
        if pr.key is None or pr.key not in ours_names:
            ptxt = " / ".join(f"{pr.metrics[k][0]:.2f}" for k in keys)
            pgap = f"{pr.gap:.2f}" if pr.gap is not None else "–"
            mark = "†" if pr.key is None else " (not run here)"
            blanks = " | ".join("–" for _ in keys)
            lines.append(f"| {pr.method}{mark} | {blanks} | – | – | {ptxt} | {pgap} | – |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", help="table.csv written by `python -m mixunlearn bench`")
    p.add_argument("--dataset", required=True, help="the paper's dataset name (fashion_mnist, mnist, cifar10, svhn)")
    p.add_argument("--level", choices=("class", "data"), required=True, help="class-level or data-level table")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    with open(args.table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    text = render(rows, args.dataset, args.level)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
