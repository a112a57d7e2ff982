"""The toy world's scenes: five shapes, eight colors, two sizes and three backgrounds, drawn at 64x64.

The vocabulary both the training data (studio/toy/data.py) and the prompts
(studio/toy/prompts.py) speak. Some color-shape pairs (HELD_OUT) are never drawn
in training: the evaluation set asks for them apart, to measure composition
rather than recall.
"""

from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4  # draw large, then downsample: smooth edges like real photos
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses"}
COLORS = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 230, 40),
    "green": (30, 170, 60),
    "cyan": (30, 200, 220),
    "blue": (30, 60, 220),
    "purple": (140, 50, 200),
    "pink": (250, 120, 200),
}
BACKGROUNDS = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (20, 20, 20)}
OBJECT_SIZES = (14.0, 22.0)  # side or diameter in pixels: the two sizes (captions do not name them)
CROSS_ARM = 0.4  # a cross's bar width, as a fraction of its size
GAP = 3.0  # pixels between two objects' boxes, so each one reads as its own region
# One color-shape pair per color (8 of 40) never appears in training; the evaluation set asks for them apart.
HELD_OUT = frozenset((color, SHAPES[i % len(SHAPES)]) for i, color in enumerate(COLORS))


@dataclass(frozen=True)
class Thing:
    shape: str
    color: str
    center: tuple[float, float]  # (x, y) in pixels
    size: float


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, center, size: float, fill) -> None:
    """One shape filling the square box of side `size` around `center` (a triangle points up)."""
    cx, cy, half = center[0], center[1], size / 2
    if shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
    elif shape == "cross":
        arm = size * CROSS_ARM / 2
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; the toy world has {', '.join(SHAPES)}")


def render(scene: Scene, colors: dict = COLORS) -> Image.Image:
    scale = SUPERSAMPLE
    image = Image.new("RGB", (SIZE * scale, SIZE * scale), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for thing in scene.things:
        draw_shape(draw, thing.shape, (thing.center[0] * scale, thing.center[1] * scale), thing.size * scale,
                   colors[thing.color])
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)


def _apart(a: tuple, b: tuple) -> bool:
    """Boxes (center, size) at least GAP apart on some axis."""
    (ax, ay), asize = a
    (bx, by), bsize = b
    reach = (asize + bsize) / 2 + GAP
    return abs(ax - bx) >= reach or abs(ay - by) >= reach


def holds(relation: str, a, b, margin: float = 8.0) -> bool:
    """Whether center a is `relation` center b, clearly: by `margin` pixels, along the relation's axis more than
    across it. (Training scenes are drawn with this; the judge uses a looser test, see judge.relation_holds.)"""
    dx, dy = a[0] - b[0], a[1] - b[1]
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along >= margin and along > abs(across)


def place(sizes: list[float], rng, relation: str | None = None, tries: int = 100) -> list[tuple[float, float]]:
    """Centers for objects of these sizes, inside the image and apart, placed one by one (starting over when
    one finds no room); with a relation, object 0 is `relation` object 1."""
    def inside(size):
        return float(rng.uniform(size / 2 + 1, SIZE - size / 2 - 1))

    for _ in range(tries):
        centers: list[tuple[float, float]] = []
        for size in sizes:
            for _ in range(tries):
                center = (inside(size), inside(size))
                if all(_apart((center, size), (c, s)) for c, s in zip(centers, sizes)):
                    centers.append(center)
                    break
            else:
                break
        if len(centers) == len(sizes) and (relation is None or holds(relation, centers[0], centers[1])):
            return centers
    raise RuntimeError(f"no placement found for sizes {sizes} and relation {relation!r}")


def training_color(shape: str, rng, exclude: tuple = ()) -> str:
    """A color the training set draws this shape in (never a held-out pair)."""
    choices = [c for c in COLORS if (c, shape) not in HELD_OUT and c not in exclude]
    return str(rng.choice(choices))
