"""Image helpers every part shares: uploads checked and turned into RGB squares, tensors, grids."""

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from studio.limits import MAX_IMAGE_PIXELS


class ImageTooLarge(ValueError):
    """An image whose header promises more pixels than the studio decodes."""


def check_pixels(image: Image.Image, field: str, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an opened (not yet decoded) image over `limit` pixels: PIL reads the size from the header, so a
    decompression bomb is turned away before it costs memory."""
    width, height = image.size
    if width * height > limit:
        raise ImageTooLarge(f"{field}: {width}x{height} pixels ({width * height / 1e6:.1f} Mpx) is over the limit "
                            f"of {limit / 1e6:.0f} Mpx; scale the image down first")


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


def open_image(path: "str | Path", field: str = "image", limit: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A fully read image, or ValueError naming `field`: no file, not an image, or over `limit` pixels (checked
    from the header, before decoding). Messages never show the server's path."""
    if path is None:
        raise ValueError(f"{field}: no image given; upload a PNG, JPEG or WebP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            with Image.open(path) as image:
                check_pixels(image, field, limit)
                image.load()
                return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as problem:
        reason = "not an image" if isinstance(problem, UnidentifiedImageError) else "corrupt or truncated"
        raise ValueError(f"{field}: the upload {Path(str(path)).name} is not a readable image ({reason}); upload a "
                         "PNG, JPEG or WebP") from None


def to_tensor(image: Image.Image, flip: bool = False) -> torch.Tensor:
    """An RGB image as a (3, H, W) tensor in [-1, 1], optionally mirrored left to right."""
    return to_unit_range(to_uint8_tensor(image, flip))


def to_uint8_tensor(image: Image.Image, flip: bool = False) -> torch.Tensor:
    """An RGB image as a (3, H, W) uint8 tensor (a quarter of the bytes to hand between processes)."""
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)))


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as floats in [-1, 1] (in place after one copy: allocating is what costs, at batch size)."""
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)


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
