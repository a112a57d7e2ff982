"""Uploaded photos: checked all together, then normalized into the job's own folder.

A bad upload is rejected as a whole, with one message listing every bad file
and why, before anything is written; accepted photos are saved as
`photo-NN.png` (names the studio chooses) inside the job's folder only.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from studio.images import square
from studio.limits import MAX_IMAGE_PIXELS as MAX_PIXELS, MAX_PHOTO_BYTES as MAX_BYTES, MAX_PHOTOS

FORMATS = {"JPEG", "PNG", "WEBP", "HEIF"}  # HEIF (HEIC) only where pillow-heif is installed
MIN_PHOTOS = 1

try:  # optional: HEIC from phones
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:
    pass


class PhotoError(ValueError):
    """An upload that can't be used; the message lists each bad file and why."""


@dataclass(frozen=True)
class PhotoLimits:
    min_side: int  # the model's resolution: smaller photos would be upscaled into mush
    min_photos: int = MIN_PHOTOS
    max_photos: int = MAX_PHOTOS
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS


def _problem(path: Path, limits: PhotoLimits) -> str | None:
    size = path.stat().st_size
    if size > limits.max_bytes:
        return f"{size / 1e6:.1f} MB, over the {limits.max_bytes / 1e6:.0f} MB limit"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format not in FORMATS:
                    return f"a {image.format} image; allowed: JPEG, PNG, WebP (HEIC with pillow-heif)"
                width, height = image.size
                if width * height > limits.max_pixels:
                    return f"{width}x{height} pixels, over the {limits.max_pixels:,} pixel limit"
                image.load()  # decode fully: truncated files fail here
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return "too many pixels (a decompression bomb?)"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as error:
        return f"corrupt ({error})"
    if min(width, height) < limits.min_side:
        return f"{width}x{height}, smaller than {limits.min_side} pixels on its short side"
    return None


def check_photos(paths: list[Path | str], limits: PhotoLimits) -> None:
    """Raise PhotoError listing every problem; nothing is read beyond what checking needs."""
    paths = [Path(p) for p in paths]
    problems = []
    if not limits.min_photos <= len(paths) <= limits.max_photos:
        problems.append(f"{len(paths)} files uploaded; between {limits.min_photos} and {limits.max_photos} are allowed")
    for path in paths:
        if not path.is_file():
            problems.append(f"{path.name}: missing")
            continue
        problem = _problem(path, limits)
        if problem:
            problems.append(f"{path.name}: {problem}")
    if problems:
        raise PhotoError("photos: the upload was rejected; nothing was changed:\n- " + "\n- ".join(problems))


def import_photos(paths: list[Path | str], dest: Path, resolution: int, limits: PhotoLimits | None = None) -> list[Path]:
    """Check every upload, then write them normalized as dest/photo-NN.png; returns the new paths."""
    limits = limits or PhotoLimits(min_side=resolution)
    check_photos(paths, limits)
    dest.mkdir(parents=True, exist_ok=True)
    saved = []
    for number, path in enumerate(paths):
        with Image.open(path) as image:
            target = dest / f"photo-{number:02d}.png"
            square(image, resolution).save(target)
            saved.append(target)
    return saved
