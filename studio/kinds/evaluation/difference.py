"""How far a student's image is from its teacher's for the same prompt, seed and recipe: PSNR, SSIM, a heat map."""

import numpy as np
import torch
from PIL import Image

from studio.kinds.evaluation.metrics import psnr

MIN_MAP_SIDE = 256  # small (toy) images are scaled up, pixel for pixel, so the map can be read


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Structural similarity of two 8-bit RGB images (torchmetrics; Gaussian window 11, sigma 1.5), in [-1, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    def tensor(image):  # float64: in float32 the variances lose enough that an image scores 0.998 against itself
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float64) / 255).permute(2, 0, 1)[None]

    window = min(11, *a.size) // 2 * 2 - 1  # odd, and no larger than a small image
    return float(structural_similarity_index_measure(tensor(a), tensor(b), data_range=1.0, kernel_size=window))


def difference_map(a: Image.Image, b: Image.Image) -> Image.Image:
    """Per-pixel difference (RGB distance, 0 to its largest possible value) drawn with the magma colormap."""
    from matplotlib import colormaps

    first = np.asarray(a.convert("RGB"), dtype=np.float32)
    second = np.asarray(b.convert("RGB"), dtype=np.float32)
    distance = np.linalg.norm(first - second, axis=-1) / (255 * np.sqrt(3))
    picture = Image.fromarray((colormaps["magma"](distance)[..., :3] * 255).astype(np.uint8))
    scale = max(1, -(-MIN_MAP_SIDE // max(picture.size)))
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def fidelity(teacher: Image.Image, student: Image.Image) -> dict:
    return {"psnr": psnr(teacher, student), "ssim": ssim(teacher, student)}
