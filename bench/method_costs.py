"""Measure each method's run time as a multiple of Retrain's training time (same run, same machine),
the numbers behind the time estimates (mixunlearn/estimate.py), and merge them into
mixunlearn/resources/method_costs.json under "<model>/<recipe>".

    python bench/method_costs.py --dataset digits --forget class:3 --recipe digits_fast
    python bench/method_costs.py --dataset fashion_mnist --forget class:0 --recipe cnn_fast --methods finetune,...
    python bench/method_costs.py --from runs/x/results.json   # take the ratios of a finished run instead

A fresh model cache is used so Retrain is trained inside the run (its time is measured here, not
read from an older cache entry); attacks are skipped (they are scoring, estimated separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixunlearn.experiment import ExperimentConfig, run_experiment  # noqa: E402
from mixunlearn.methods import method_names  # noqa: E402
from mixunlearn.training import ModelCache  # noqa: E402
from mixunlearn.utils import atomic_write_text  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "mixunlearn" / "resources" / "method_costs.json"


def ratios_of(doc: dict) -> tuple[str, dict[str, float], float]:
    """(key, {method: ratio}, Retrain seconds) of a results.json document."""
    cfg = doc["config"]
    retrain = doc["methods"]["retrain"]["seconds"]
    if not retrain:
        raise ValueError("Retrain's training time is missing or zero; rerun with a fresh cache")
    out = {m: round(rec["seconds"] / retrain, 4) for m, rec in doc["methods"].items()
           if m != "retrain" and rec.get("status") == "done" and rec.get("seconds") is not None}
    return f"{cfg['model']}/{cfg['recipe']}", out, retrain


def merge_provenance(old: dict | list | None, entry: dict) -> list[dict]:
    """The key's provenance after an update of ``entry["methods"]``: one entry per measurement, newest
    last. An update of some methods keeps the entries behind the others (it used to replace them all);
    an entry is dropped once every method it measured has been measured again."""
    kept = [] if old is None else [old] if isinstance(old, dict) else list(old)
    new = set(entry["methods"])
    kept = [e for e in kept if "methods" not in e or not set(e["methods"]) <= new]
    return [*kept, entry]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--forget", default="class:3")
    ap.add_argument("--recipe", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=None, help="comma list (default: every registered method)")
    ap.add_argument("--from", dest="from_files", nargs="*", default=None,
                    help="results.json files of finished runs whose Retrain was trained in the run")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    docs = []
    if args.from_files:
        docs = [json.loads(Path(f).read_text()) for f in args.from_files]
    else:
        methods = args.methods.split(",") if args.methods else [m for m in method_names() if m != "retrain"]
        cfg = ExperimentConfig(dataset=args.dataset, forget=args.forget, recipe=args.recipe, seed=args.seed,
                               methods=("retrain", *methods), attacks=False, download=False)
        with tempfile.TemporaryDirectory() as tmp:
            res = run_experiment(cfg, cache=ModelCache(tmp))
        docs = [res.to_json()]
    path = Path(args.out)
    table = json.loads(path.read_text()) if path.is_file() else {"about": "", "ratios": {}, "provenance": {}}
    # Several documents of one key (e.g. seeds of a bench): the mean ratio per method.
    grouped: dict[str, list[tuple[dict, dict[str, float], float]]] = {}
    for doc in docs:
        key, ratios, retrain = ratios_of(doc)
        grouped.setdefault(key, []).append((doc, ratios, retrain))
        print(f"{key} seed {doc['config']['seed']}: Retrain {retrain:.1f} s; "
              + ", ".join(f"{m} {r:.3f}" for m, r in sorted(ratios.items())))
    for key, items in grouped.items():
        methods = sorted({m for _, ratios, _ in items for m in ratios})
        mean = {m: round(sum(r[m] for _, r, _ in items if m in r) / sum(m in r for _, r, _ in items), 4)
                for m in methods}
        table["ratios"].setdefault(key, {}).update(mean)
        doc = items[0][0]
        entry = {
            "methods": methods, "dataset": doc["config"]["dataset"], "forget": doc["config"]["forget"],
            "seeds": [d["config"]["seed"] for d, _, _ in items],
            "retrain_seconds": [round(r, 2) for _, _, r in items], "device": doc["info"]["device"],
            "machine": platform.node(), "cpus": os.cpu_count(),
            # --from: the runs ended earlier; this process's load and date are not theirs.
            "load_average": ("not recorded (--from: finished runs)" if args.from_files
                             else " ".join(f"{v:.2f}" for v in os.getloadavg())),
            "date": time.strftime("%Y-%m-%d", time.localtime(doc["info"].get("started", time.time()))),
        }
        table["provenance"][key] = merge_provenance(table["provenance"].get(key), entry)
    table["about"] = ("seconds of each method / seconds of Retrain's training, measured in the same run "
                      "(bench/method_costs.py); used by mixunlearn/estimate.py")
    atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
