"""A procedural judge of toy scenes: it reads the objects off the pixels and scores prompts by GenEval's rules.

Reading a scene:
- background: the median of the border pixels, snapped to the backgrounds;
- each pixel is unmixed against the background: for every palette color C the
  best blend background + t (C - background) with t in [0, 1]; the pixel takes
  the color whose blend fits best, and counts as that color's when t >= 0.5
  (so an anti-aliased red-on-white edge is half red, not pink);
- objects: 8-connected regions of one color (scipy.ndimage.label), at least
  MIN_AREA pixels; the shape is the template (each shape drawn to fill a box)
  that best overlaps the region's box, scaled to the template's size; the
  position is the region's centroid.

Scoring (`score`): each task's binary rule (the table in prompts.py), and a
continuous score: the fraction of the prompt's requested attributes that are
right (background, each object's presence and color, the count, the relation).
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from studio.toy.prompts import TASKS, Prompt, parse
from studio.toy.scenes import BACKGROUNDS, COLORS, SHAPES, draw_shape

MIN_AREA = 24  # pixels; a small (14 px) triangle covers about 98
MAX_RESIDUAL = 60.0  # RGB distance from the best blend beyond which a pixel is no palette color
TEMPLATE = 24  # template side in pixels
MIN_IOU = 0.5  # below this against every template, a region is a blob, not a shape
RELATION_MARGIN = 3.0  # pixels: "left of" means a centroid at least this far left


@dataclass(frozen=True)
class Seen:
    shape: str | None
    color: str
    center: tuple[float, float]  # (x, y)
    area: int


@dataclass(frozen=True)
class Reading:
    background: str
    objects: tuple[Seen, ...]


def _templates() -> dict[str, np.ndarray]:
    """Each shape drawn to fill a TEMPLATE-pixel box, as coverage in [0, 1] (anti-aliased)."""
    templates = {}
    for shape in SHAPES:
        canvas = Image.new("L", (TEMPLATE * 4, TEMPLATE * 4), 0)
        draw_shape(ImageDraw.Draw(canvas), shape, (TEMPLATE * 2, TEMPLATE * 2), TEMPLATE * 4, 255)
        templates[shape] = np.asarray(canvas.resize((TEMPLATE, TEMPLATE), Image.Resampling.BOX), np.float32) / 255
    return templates


TEMPLATES = _templates()


def classify_shape(mask: np.ndarray, soft: np.ndarray | None = None) -> str | None:
    """The shape whose template best overlaps the region, both as coverage: the region's box (from `mask`) is
    scaled to the template's size, and soft IoU (sum of minima over sum of maxima) on its coverage `soft`
    keeps the sub-pixel edges that tell a small cross from a small diamond. None below MIN_IOU."""
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    soft = mask.astype(np.float32) if soft is None else soft
    crop = Image.fromarray(soft[box].astype(np.float32), mode="F")
    scaled = np.clip(np.asarray(crop.resize((TEMPLATE, TEMPLATE), Image.Resampling.BILINEAR)), 0.0, 1.0)
    ious = {shape: np.minimum(scaled, t).sum() / max(1e-6, np.maximum(scaled, t).sum())
            for shape, t in TEMPLATES.items()}
    best = max(ious, key=ious.get)
    return best if ious[best] >= MIN_IOU else None


def unmix(pixels: np.ndarray, background: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the index of the palette color whose blend with the background fits best, and its coverage t
    (0 where no blend fits within MAX_RESIDUAL)."""
    offset = pixels.reshape(-1, 3) - background  # (N, 3)
    direction = palette - background  # (K, 3)
    t = np.clip(offset @ direction.T / (direction**2).sum(axis=1), 0.0, 1.0)  # (N, K)
    residual = np.linalg.norm(offset[:, None, :] - t[..., None] * direction[None], axis=-1)
    best = residual.argmin(axis=1)
    coverage = t[np.arange(len(best)), best] * (residual[np.arange(len(best)), best] <= MAX_RESIDUAL)
    return best.reshape(pixels.shape[:2]), coverage.reshape(pixels.shape[:2])


def read_scene(image: Image.Image, colors: dict = COLORS) -> Reading:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    backgrounds = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
    background = list(BACKGROUNDS)[int(np.linalg.norm(backgrounds - np.median(border, axis=0), axis=1).argmin())]
    names = list(colors)
    nearest, coverage = unmix(pixels, np.array(BACKGROUNDS[background], dtype=np.float32),
                              np.array([colors[n] for n in names], dtype=np.float32))
    objects = []
    for index, name in enumerate(names):
        ours = nearest == index
        regions, count = ndimage.label(ours & (coverage >= 0.5), structure=np.ones((3, 3)))
        for label in range(1, count + 1):
            mask = regions == label
            if (area := int(mask.sum())) >= MIN_AREA:
                rows, cols = np.nonzero(mask)
                rim = ndimage.binary_dilation(mask, structure=np.ones((3, 3))) & ours  # its soft edge too
                objects.append(Seen(classify_shape(mask, np.where(rim, coverage, 0.0)), name,
                                    (float(cols.mean()), float(rows.mean())), area))
    return Reading(background, tuple(sorted(objects, key=lambda o: -o.area)))


def relation_holds(relation: str, a: tuple, b: tuple) -> bool:
    dx, dy = a[0] - b[0], a[1] - b[1]
    along = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[relation]
    return along >= RELATION_MARGIN


def score(prompt: Prompt, reading: Reading) -> tuple[bool, float]:
    """(right by the task's rule, fraction of requested attributes right)."""
    def matching(shape, color=None):
        return [o for o in reading.objects if o.shape == shape and (color is None or o.color == color)]

    checks = [reading.background == prompt.background]
    if prompt.task == "counting":
        (shape, color), = prompt.objects
        found = len(matching(shape, color))
        checks += [bool(matching(shape)), found > 0, found == prompt.count]
        return found == prompt.count, float(np.mean(checks))
    present = [bool(matching(shape)) for shape, _ in prompt.objects]
    colored = [bool(matching(shape, color)) for shape, color in prompt.objects if color]
    checks += present + colored
    right = all(present) and all(colored)
    if prompt.task == "position":
        (first, _), (second, _) = prompt.objects
        related = any(relation_holds(prompt.relation, a.center, b.center)
                      for a in matching(first) for b in matching(second))
        checks.append(related)
        right = right and related
    return right, float(np.mean(checks))


def judge_images(prompts: list[Prompt], images) -> dict:
    """Scores of images against their prompts, GenEval-style: each task's accuracy over the in-distribution
    prompts, "overall" the mean of the task accuracies, "held_out" the accuracy over held-out prompts (None if
    none), "attributes" the mean continuous score, and "n"."""
    verdicts = [(prompt, *score(prompt, read_scene(image))) for prompt, image in zip(prompts, images)]
    tasks = {}
    for task in TASKS:
        rights = [right for p, right, _ in verdicts if p.task == task and not p.held_out]
        if rights:
            tasks[task] = float(np.mean(rights))
    held = [right for p, right, _ in verdicts if p.held_out]
    return {"tasks": tasks, "overall": float(np.mean(list(tasks.values()))) if tasks else None,
            "held_out": float(np.mean(held)) if held else None,
            "attributes": float(np.mean([fraction for _, _, fraction in verdicts])), "n": len(verdicts)}


def caption_accuracy(prompts: list[str], images) -> float | None:
    """The toy judge as the evaluation protocol calls it: the share of images right by their task's rule; None
    when a caption is not a toy prompt."""
    parsed = [parse(p) for p in prompts]
    if not all(parsed):
        return None
    return float(np.mean([score(p, read_scene(image))[0] for p, image in zip(parsed, images)]))
