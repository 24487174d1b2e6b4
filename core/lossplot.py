"""The training plot (PATH.train.png): loss per epoch, and validation AP on a second axis when there is one.

Drawn with Pillow rather than matplotlib, which `pupick train` then never imports: a few milliseconds instead of
matplotlib's import and render, 0.24 s off the median whole process in an interleaved A/B (BENCHMARKS.md, "A first
model in ≤ 10 s").
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .io import atomic_path

SIZE = (600, 350)
BLUE, RED, INK, GRID = (31, 119, 180), (214, 39, 40), (40, 40, 40), (225, 225, 225)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values (steps of 1, 2, 2.5 or 5 × 10^k), the first ≤ lo and the last ≥ hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo, lo + 1.0]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks = [math.floor(lo / step + 1e-9) * step]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(ticks[0] + len(ticks) * step)
    return [round(t, 12) for t in ticks]


def _label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    decimals += step > 0 and abs(round(step, decimals) - step) > step * 1e-6  # 0.25, 2.5e-3: one digit more
    return f"{value:.{decimals}f}" if step < 1 or value != int(value) else str(int(value))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow before 10.1 or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def _vertical(image, text: str, font, colour: tuple, centre: tuple[int, int]) -> None:
    """Paste `text` rotated by 90° (reading upwards) centred on `centre`."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(image)
    w, h = _text_size(probe, text, font)
    tile = Image.new("RGBA", (w + 4, h + 6), (255, 255, 255, 0))
    ImageDraw.Draw(tile).text((2, 0), text, font=font, fill=colour)
    tile = tile.rotate(90, expand=True)
    image.paste(tile, (centre[0] - tile.width // 2, centre[1] - tile.height // 2), tile)


def write_training_plot(epochs: Sequence[float], loss: Sequence[float], ap: Sequence[float | None],
                        target: Path) -> None:
    """Write the plot as a PNG at `target` (atomically); `ap` entries that are None or NaN are left out."""
    from PIL import Image, ImageDraw

    points = [(float(e), float(v)) for e, v in zip(epochs, loss) if math.isfinite(float(v))]
    aps = [(float(e), float(a)) for e, a in zip(epochs, ap) if a is not None and math.isfinite(float(a))]
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(11)
    left, top, bottom = 70, 34, SIZE[1] - 48
    right = SIZE[0] - (62 if aps else 18)

    xs = [e for e, _ in points] or [1.0]
    x_lo, x_hi = min(xs) - 0.5, max(xs) + 0.5
    ys = [v for _, v in points] or [0.0]
    pad = (max(ys) - min(ys)) * 0.08 or max(abs(ys[0]) * 0.05, 0.05)
    y_ticks = nice_ticks(min(ys) - pad, max(ys) + pad)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(e: float) -> float:
        return left + (e - x_lo) / (x_hi - x_lo) * (right - left)

    def py(v: float, lo: float = y_lo, hi: float = y_hi) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    step = max(1, math.ceil((max(xs) - min(xs) + 1) / 12))
    for e in range(math.ceil(min(xs)), math.floor(max(xs)) + 1, step):
        x = px(e)
        draw.line([(x, bottom), (x, bottom + 4)], fill=INK)
        w, _ = _text_size(draw, str(e), small)
        draw.text((x - w / 2, bottom + 7), str(e), font=small, fill=INK)
    for v in y_ticks:
        y = py(v)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.line([(left - 4, y), (left, y)], fill=BLUE)
        text = _label(v, y_ticks[1] - y_ticks[0])
        w, h = _text_size(draw, text, small)
        draw.text((left - 7 - w, y - h / 2 - 2), text, font=small, fill=BLUE)
    if aps:
        for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            y = py(v, 0.0, 1.0)
            draw.line([(right, y), (right + 4, y)], fill=RED)
            _, h = _text_size(draw, f"{v:.1f}", small)
            draw.text((right + 7, y - h / 2 - 2), f"{v:.1f}", font=small, fill=RED)
        _vertical(image, "validation AP", font, RED, (SIZE[0] - 14, (top + bottom) // 2))
    draw.rectangle([left, top, right, bottom], outline=INK)

    line = [(px(e), py(v)) for e, v in points]
    if len(line) > 1:
        draw.line(line, fill=BLUE, width=2)
    for x, y in line:
        draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=BLUE)
    if aps:
        curve = [(px(e), py(a, 0.0, 1.0)) for e, a in aps]
        if len(curve) > 1:
            draw.line(curve, fill=RED, width=2)
        for x, y in curve:
            draw.rectangle([x - 3, y - 3, x + 3, y + 3], fill=RED)

    w, _ = _text_size(draw, "epoch", font)
    draw.text(((left + right - w) / 2, SIZE[1] - 22), "epoch", font=font, fill=INK)
    _vertical(image, "loss", font, BLUE, (14, (top + bottom) // 2))
    w, _ = _text_size(draw, "pupick training", font)
    draw.text(((left + right - w) / 2, 10), "pupick training", font=font, fill=INK)
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")
