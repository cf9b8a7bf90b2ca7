"""What the diagnostics (per-class accuracy, prediction matrices, layer-wise CKA, the attack's
per-example scores; mixunlearn/diagnostics.py) add to the Home demo's time.

    python bench/analysis_cost.py [--repeats 2]

In one process, with a fresh MIXUNLEARN_HOME: the demo's job (``jobs.experiment_job`` on
``jobs.demo_config()``: data, original and Retrain, Retrain + MixUnlearn + FT + NegGrad, the
analysis pack, the store commit, the UMAP projection) runs once cold (it trains the original and
Retrain, as a first demo does), then ``--repeats`` times with and without the diagnostics,
interleaved, with the models from the cache. Prints the wall and CPU seconds (this process, all
threads) of every run, the cost of the diagnostics in seconds and as a share of the cached demo
(the worst case) and of the cold demo, and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_demo(analyses: bool) -> tuple[float, float]:
    from mixunlearn import jobs
    from mixunlearn.store import RunStore
    from mixunlearn.training import ModelCache

    runner = jobs.JobRunner()
    fn = jobs.experiment_job(jobs.demo_config(), store=RunStore(), cache=ModelCache(), analyses=analyses)
    wall, cpu = time.perf_counter(), time.process_time()
    job = runner.submit(fn, label="demo", kind="experiment")
    job.wait()
    if job.state != "done":
        raise SystemExit(f"the demo job ended {job.state}: {job.error}")
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ["MIXUNLEARN_HOME"] = tempfile.mkdtemp(prefix="mixunlearn-analysis-cost-")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    cold = one_demo(True)
    print(f"cold demo (trains the original and Retrain), with diagnostics: wall {cold[0]:.1f} s, cpu {cold[1]:.1f} s")
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for i in range(args.repeats):
        for flag in ((False, True) if i % 2 == 0 else (True, False)):
            runs[flag].append(one_demo(flag))
            print(f"cached demo, diagnostics {'on ' if flag else 'off'}: wall {runs[flag][-1][0]:.1f} s, "
                  f"cpu {runs[flag][-1][1]:.1f} s")
    mean = {f: [sum(r[k] for r in v) / len(v) for k in (0, 1)] for f, v in runs.items()}
    for k, what in ((0, "wall"), (1, "cpu")):
        extra = mean[True][k] - mean[False][k]
        print(f"{what}: diagnostics add {extra:.2f} s = {100 * extra / mean[False][k]:.1f} % of the cached demo "
              f"({mean[False][k]:.1f} s without), {100 * extra / (cold[k] - extra):.1f} % of the cold demo")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
