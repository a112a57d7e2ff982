"""`python -m studio.toy.example`: choose the Compare tab's first example from the judge, not by hand.

Candidates: the evaluation set's distinct in-distribution two-object and color-attribution
prompts. Each is drawn as a first click on Compare draws it (recipe `fast`, the toy family's
guidance, the four models the tab ticks): the teacher at seed 0 first; where it passes, the
teacher at seeds 1-2 and the three students at seeds 0-2. Printed best first: the most teacher
passes, then the fewest student passes (the example should show what compression costs).
"""

import studio  # noqa: F401  (torchvision compatibility first)
from studio.inference.generation import Settings, compare_iter
from studio.inference.pipeline_cache import PipelineCache
from studio.inference.recipes import PRESETS
from studio.models.catalog import load_catalog
from studio.toy.judge import judge_images
from studio.toy.prompts import evaluation_set, parse

TEACHER = "toy-teacher"
STUDENTS = ("toy-bk-base", "toy-bk-small", "toy-bk-tiny")


def main() -> None:
    catalog = load_catalog()
    guidance = catalog.family("toy").guidance
    cache = PipelineCache(catalog)
    texts = list(dict.fromkeys(p.text for p in evaluation_set()
                               if not p.held_out and p.task in ("two_object", "color_attr")))
    print(f"{len(texts)} candidates", flush=True)

    def passes(models, text: str, seed: int) -> dict[str, bool]:
        settings = PRESETS["fast"].apply(Settings(text, seed=seed), guidance)
        return {r.model: judge_images([parse(text)], [r.image])["overall"] > 0.5
                for r in compare_iter(cache, list(models), settings, None, None, catalog)}

    rows = []
    for i, text in enumerate(texts):
        if not passes([TEACHER], text, 0)[TEACHER]:
            continue
        score = {TEACHER: 1, **{s: 0 for s in STUDENTS}}
        for seed in (0, 1, 2):
            for model, ok in passes(([TEACHER] if seed else []) + list(STUDENTS), text, seed).items():
                score[model] += ok
        rows.append((text, score))
        print(i, text, score, flush=True)
    rows.sort(key=lambda row: (-row[1][TEACHER], sum(row[1][s] for s in STUDENTS)))
    print("best first (teacher passes of 3, then student passes of 9):")
    for text, score in rows[:10]:
        print(f"  {text}: {score}")


if __name__ == "__main__":
    main()
