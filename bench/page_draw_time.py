"""How long the Compare page takes to draw once a run is stored (its newest complete run).

    MIXUNLEARN_HOME=DIR python bench/page_draw_time.py [--repeats 3]

Streamlit's AppTest opens the app, switches to Compare and times the page script: the first draw
(the run read from the store, the figures built) and ``--repeats`` redraws (as after a widget
click). Prints the seconds of each and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--page", default="pages/3_Compare.py")
    args = ap.parse_args()
    from streamlit.testing.v1 import AppTest

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(args.page)
    t = time.perf_counter()
    at.run()
    print(f"first draw of {args.page}: {time.perf_counter() - t:.2f} s")
    if at.exception or at.error:
        raise SystemExit(f"the page failed: {[e.value for e in at.exception] + [e.value for e in at.error]}")
    for i in range(args.repeats):
        t = time.perf_counter()
        at.run()
        print(f"redraw {i + 1}: {time.perf_counter() - t:.2f} s")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
