"""A procedural judge of toy images: which shape, which color, on which background.

Background: the median of the border pixels, snapped to the palette. The shape
is every pixel far from it; its color is the palette entry nearest their
median, and its kind follows from how much of its bounding box it fills
(square ~1.0, circle ~pi/4, triangle ~0.5).
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio.toy.data import COLORS

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)
_MIN_PALETTE_DISTANCE = min(
    float(np.linalg.norm(a - b)) for i, a in enumerate(_PALETTE) for b in _PALETTE[i + 1:]
)


@dataclass(frozen=True)
class Verdict:
    shape: str | None
    color: str | None
    background: str


def _nearest(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(np.linalg.norm(_PALETTE - rgb, axis=1)))]


def judge(image: Image.Image) -> Verdict:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = _nearest(background_rgb)
    distance = np.linalg.norm(pixels - COLORS[background], axis=-1)
    mask = distance > _MIN_PALETTE_DISTANCE / 2
    if mask.sum() < 8:
        return Verdict(None, None, background)
    color = _nearest(np.median(pixels[mask], axis=0))
    rows, cols = np.nonzero(mask)
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = mask.sum() / box_area
    shape = "triangle" if fill < 0.64 else "circle" if fill < 0.89 else "square"
    return Verdict(shape, color, background)
