"""Image helpers every part shares: uploads to RGB squares, tensors, grids."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; RGBA, palette and grayscale turned RGB, transparency over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)  # transparent areas become white, not black
    return image.convert("RGB")


def square(image: Image.Image, size: int) -> Image.Image:
    """An RGB square of `size` pixels: `to_rgb`, then resized and center-cropped."""
    return ImageOps.fit(to_rgb(image), (size, size), Image.Resampling.LANCZOS)


def open_image(path: "str | Path") -> Image.Image:
    """A fully read image, or ValueError saying the file is not one."""
    if path is None:
        raise ValueError("no image given; upload a PNG, JPEG or WebP")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as problem:
        raise ValueError(f"the upload {Path(str(path)).name} is not a readable image ({problem})") from None


def to_tensor(image: Image.Image, flip: bool = False) -> torch.Tensor:
    """An RGB image as a (3, H, W) tensor in [-1, 1], optionally mirrored left to right."""
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return torch.from_numpy(array)


def from_tensor(tensor: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [-1, 1] as an RGB image."""
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def grid(rows: list[list[Image.Image]]) -> Image.Image:
    """Rows of equally sized images pasted into one image."""
    width, height = rows[0][0].size
    canvas = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)))
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            canvas.paste(image, (c * width, r * height))
    return canvas
