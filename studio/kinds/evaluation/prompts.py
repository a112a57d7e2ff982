"""Prompt files: the BK-SDM MS-COCO `metadata.csv` (file_name, text) or one prompt per line."""

import csv
from pathlib import Path


def read_prompts(path: Path | str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist; give a metadata.csv (file_name,text) or a text file "
                         "with one prompt per line")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "text" not in rows[0]:
            raise ValueError(f"{path} has no 'text' column; the BK-SDM metadata.csv has columns file_name,text")
        prompts = [row["text"].strip() for row in rows]
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts
