"""Generated images on disk, each PNG carrying its settings, and the recent ones listed.

Settings go into two PNG text chunks: `parameters` (a readable line, the form
other SD tools show) and `studio` (JSON, exact). `read_settings` gets them back.
"""

import json
import time
import uuid
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def describe(settings: dict) -> str:
    negative = f"\nNegative prompt: {settings['negative_prompt']}" if settings.get("negative_prompt") else ""
    return (f"{settings['prompt']}{negative}\nSteps: {settings['steps']}, Sampler: {settings['scheduler']}, "
            f"CFG scale: {settings['guidance']}, Seed: {settings['seed']}, "
            f"Size: {settings['resolution']}x{settings['resolution']}, Model: {settings['model']}")


def read_settings(path: Path | str) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["studio"])


class History:
    """PNGs under one folder, newest first; only the `keep` most recent are kept."""

    def __init__(self, folder: Path | str, keep: int = 200):
        self.folder = Path(folder)
        self.keep = keep  # the folder is made by the first image (a visitor who only looks writes nothing)

    def save(self, image: Image.Image, settings: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        info.add_text("parameters", describe(settings))
        info.add_text("studio", json.dumps(settings))
        path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.png"
        image.save(path, pnginfo=info)
        for old in self.paths()[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("*.png"), key=lambda p: p.stat().st_mtime_ns, reverse=True)

    def recent(self, n: int = 24) -> list[tuple[str, str]]:
        """(path, caption) of the n newest images."""
        items = []
        for path in self.paths()[:n]:
            try:
                settings = read_settings(path)
            except (OSError, KeyError, ValueError):
                continue
            items.append((str(path), f"{settings['model']}: {settings['prompt']} (seed {settings['seed']})"))
        return items
