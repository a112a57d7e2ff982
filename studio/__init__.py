"""BK-SDM Studio: compress Stable Diffusion U-Nets and see what it costs."""

# Must run before anything imports transformers (and through it, torchvision).
from studio.compat import TORCHVISION_STATUS  # noqa: F401

__version__ = "0.1.0"
