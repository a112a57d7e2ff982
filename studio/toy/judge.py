"""A procedural judge of toy images: which shape, which color, on which background.

Background: the median of the border pixels, snapped to the palette. The shape
is the largest 8-connected region of pixels far from it (so a few stray pixels
elsewhere do not stretch its bounding box); its color is the palette entry
nearest their median, and its kind follows from how much of its bounding box
it fills (square ~1.0, circle ~pi/4, triangle ~0.5).
"""

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio.toy.data import COLORS


class Palette:
    """Named colors, and half the smallest distance between two of them (what counts as "far")."""

    def __init__(self, colors: dict):
        self.names = list(colors)
        self.rgb = np.array([colors[n] for n in self.names], dtype=np.float32)
        self.threshold = min(float(np.linalg.norm(a - b)) for i, a in enumerate(self.rgb) for b in self.rgb[i + 1:]) / 2

    def nearest(self, rgb: np.ndarray) -> str:
        return self.names[int(np.argmin(np.linalg.norm(self.rgb - rgb, axis=1)))]


TOY_PALETTE = Palette(COLORS)


@dataclass(frozen=True)
class Verdict:
    shape: str | None
    color: str | None
    background: str


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a boolean mask, as a mask."""
    seen = np.zeros(mask.shape, dtype=bool)
    best: list = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        region, stack = [], [start]
        while stack:
            r, c = stack.pop()
            region.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < height and 0 <= nc < width and mask[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        stack.append((nr, nc))
        if len(region) > len(best):
            best = region
    result = np.zeros(mask.shape, dtype=bool)
    if best:
        result[tuple(np.array(best).T)] = True
    return result


def judge(image: Image.Image, palette: Palette = TOY_PALETTE) -> Verdict:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = palette.nearest(np.median(border, axis=0))
    distance = np.linalg.norm(pixels - palette.rgb[palette.names.index(background)], axis=-1)
    mask = distance > palette.threshold
    if mask.sum() < 8:
        return Verdict(None, None, background)
    mask = largest_region(mask)
    color = palette.nearest(np.median(pixels[mask], axis=0))
    rows, cols = np.nonzero(mask)
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = mask.sum() / box_area
    shape = "triangle" if fill < 0.64 else "circle" if fill < 0.89 else "square"
    return Verdict(shape, color, background)


def judge_accuracy(targets, images, palette: Palette = TOY_PALETTE) -> dict:
    """Accuracies in [0, 1] of "color", "shape", "background" and "all" (all three right) over (shape, color,
    background) targets."""
    hits = {"color": 0, "shape": 0, "background": 0, "all": 0}
    for (shape, color, background), image in zip(targets, images):
        verdict = judge(image, palette)
        right = {"shape": verdict.shape == shape, "color": verdict.color == color,
                 "background": verdict.background == background}
        for key, ok in right.items():
            hits[key] += ok
        hits["all"] += all(right.values())
    return {key: count / len(targets) for key, count in hits.items()}


TOY_CAPTION = re.compile(r"^a (\w+) (circle|square|triangle) on a (\w+) background$")


def caption_accuracy(prompts: list[str], images) -> float | None:
    """The toy judge as the evaluation protocol calls it: all-three-right accuracy, None for non-toy captions."""
    matches = [TOY_CAPTION.match(p) for p in prompts]
    if not all(matches):
        return None
    return judge_accuracy([(m.group(2), m.group(1), m.group(3)) for m in matches], images)["all"]
