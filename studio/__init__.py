"""BK-SDM Studio: compress Stable Diffusion U-Nets and see what it costs."""

# The torchvision patch must run before anything imports transformers (and through it, torchvision): it runs
# when the first such library is imported (studio/compat.py).
from studio.compat import install

install()

__version__ = "0.1.0"
