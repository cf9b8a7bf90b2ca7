"""Draw assets/home.png, the Home page's picture: the 2-D toy of the Learn page (mixunlearn.toy)
before unlearning, unlearned without mixup, and unlearned with mixup. Run from the repository
root: ``python assets/make_home_picture.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mixunlearn.toy import ToyConfig, run_toy

REGION = ((166, 206, 227), (253, 191, 111), (178, 223, 138))
POINT = ((0, 114, 178), (230, 159, 0), (0, 158, 115))
RING = (214, 39, 40)
PANEL, PAD, HEAD = 240, 12, 34


def panel(result, name: str, title: str) -> Image.Image:
    pred = result.panels[name][::-1]  # image rows go top-down, grid rows bottom-up
    rgb = np.array(REGION, dtype=np.uint8)[pred]
    img = Image.fromarray(rgb).resize((PANEL, PANEL), Image.NEAREST)
    out = Image.new("RGB", (PANEL, PANEL + HEAD), "white")
    out.paste(img, (0, HEAD))
    d = ImageDraw.Draw(out)
    lo, hi = float(result.grid_x[0]), float(result.grid_x[-1])
    to_px = lambda v: (v - lo) / (hi - lo) * (PANEL - 1)  # noqa: E731
    for (x, y), c, f in zip(result.x, result.y, result.forget_mask):
        px, py = to_px(x), HEAD + (PANEL - 1) - to_px(y)
        r = 2.6
        d.ellipse((px - r, py - r, px + r, py + r), fill=POINT[int(c)], outline=RING if f else None,
                  width=1)
    font = ImageFont.load_default(size=15)
    m = result.metrics[name]
    d.text((4, 1), title, fill="black", font=font)
    d.text((4, 18), f"retained classes: {m['retain_acc']:.0f}% correct", fill=(60, 60, 60),
           font=ImageFont.load_default(size=12))
    return out


def main() -> None:
    result = run_toy(ToyConfig(seed=3, grid=160))
    panels = [panel(result, "original", "before unlearning"), panel(result, "plain", "unlearned, no mixup"),
              panel(result, "mixup", "unlearned with mixup")]
    width = len(panels) * PANEL + (len(panels) + 1) * PAD
    canvas = Image.new("RGB", (width, PANEL + HEAD + 2 * PAD), "white")
    for i, p in enumerate(panels):
        canvas.paste(p, (PAD + i * (PANEL + PAD), PAD))
    path = Path(__file__).resolve().parent / "home.png"
    canvas.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
