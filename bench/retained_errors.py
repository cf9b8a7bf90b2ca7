"""Where a method's Test_r loss comes from: its errors on retained test images, against the original's.

For each setting, runs the method on the cached original (as the tables do) and counts, over the
retained test images (the classes the task keeps), the errors of the original, Retrain and the
method; the method's *new* errors (images the original got right) by (forgotten class, true class,
predicted class); and how many of them involve f_D's usual runner-up class for the forget set (the
class MixUnlearn's runner-up partners come from). Analysis only: nothing is tuned on it.

    python bench/retained_errors.py --classes 0-9 --seeds 0,1,2 --cache bench/out/digits_gen2/model_cache
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from retrain_floor import parse_ints as ints  # noqa: E402  (bench/, this script's folder)

from mixunlearn.experiment import ExperimentConfig, run_experiment  # noqa: E402
from mixunlearn.metrics import predict_logits  # noqa: E402
from mixunlearn.training import TABLE_RECIPE, ModelCache  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--method", default="mixunlearn")
    p.add_argument("--classes", default="0-9")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cache", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cache = ModelCache(args.cache) if args.cache else ModelCache()
    count: collections.Counter = collections.Counter()
    pairs: collections.Counter = collections.Counter()
    for seed in ints(args.seeds):
        for k in ints(args.classes):
            cfg = ExperimentConfig(dataset=args.dataset, forget=f"class:{k}", methods=("retrain", args.method),
                                   seed=seed, recipe=TABLE_RECIPE.get(args.dataset))
            res = run_experiment(cfg, cache=cache, keep_models=True)
            d = res.data
            keep = d.y_test != k
            x, y = d.x_test[keep], d.y_test[keep]
            second = predict_logits(res.models["original"], d.x_train[d.forget_idx]).topk(2, 1).indices[:, 1]
            runner = int(torch.bincount(second, minlength=int(d.y_test.max()) + 1).argmax())
            pred = {n: predict_logits(res.models[n], x).argmax(1) for n in ("original", "retrain", args.method)}
            for n, pr in pred.items():
                count[f"{n} errors"] += int((pr != y).sum())
            new = (pred[args.method] != y) & (pred["original"] == y)
            count["new errors"] += int(new.sum())
            count["new errors with the runner-up class (true or predicted)"] += int(
                (new & ((y == runner) | (pred[args.method] == runner))).sum())
            count["retained test images"] += int(keep.sum())
            for t, q in zip(y[new].tolist(), pred[args.method][new].tolist()):
                pairs[(k, t, q)] += 1
    for key, v in count.items():
        print(f"{key}: {v}")
    by_pair: collections.Counter = collections.Counter()
    for (_, t, q), v in pairs.items():
        by_pair[(t, q)] += v
    print("new errors by true -> predicted class:",
          ", ".join(f"{t}->{q} {v}" for (t, q), v in by_pair.most_common(args.top)))
    print("forgotten classes of the most frequent pair:",
          ", ".join(f"{k} ({v})" for (k, t, q), v in pairs.most_common() if (t, q) == by_pair.most_common(1)[0][0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
