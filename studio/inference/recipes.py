"""Recipes: how to sample, as plain data, applied to any model.

A recipe fixes the scheduler, the number of steps, the guidance scale (None:
the model family's own) and the fraction of steps that use it, step caching,
token merging, the decoder and the dtype. Named presets live in
`studio/inference/recipes.json`; `paper` is the reference (the BK-SDM paper's sampling,
the model's own VAE, fp32). A recipe spec on the command line is a preset
name, optionally followed by `:knob=value` overrides, e.g.
`paper:scheduler=DPM++ 2M Karras:steps=12`.
"""

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from studio.inference.generation import Settings

PRESETS_FILE = Path(__file__).resolve().parent / "recipes.json"


@dataclass(frozen=True)
class Recipe:
    name: str
    scheduler: str = "PNDM"
    steps: int = 25
    guidance: float | None = None  # None: the model family's guidance
    guidance_stop: float = 1.0  # fraction of the steps with classifier-free guidance
    cache_interval: int = 1  # step caching (DeepCache): a full U-Net call every N calls; 1 is off
    tome_ratio: float = 0.0  # token merging (tomesd); 0 is off
    decoder: str = "vae"  # "vae" or "tiny" (TAESD)
    dtype: str = "fp32"
    description: str = ""

    def apply(self, settings: Settings, family_guidance: float) -> Settings:
        """`settings` (prompt, seed, resolution, ...) sampled the way this recipe says."""
        knobs = self.knobs()
        knobs["guidance"] = family_guidance if self.guidance is None else self.guidance
        return replace(settings, **knobs, recipe=self.name)

    def knobs(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("name", "description")}


def load_presets(path: Path = PRESETS_FILE) -> dict[str, Recipe]:
    return {name: Recipe(name=name, **data) for name, data in json.loads(path.read_text()).items()}


PRESETS = load_presets()


def _value(knob: str, text: str):
    kind = {f.name: f.type for f in fields(Recipe)}[knob]
    if text.lower() in ("none", "family") and "None" in str(kind):
        return None
    if "int" in str(kind):
        return int(text)
    if "float" in str(kind):
        return float(text)
    return text


def parse_recipe(spec: str) -> Recipe:
    """A preset name with optional `:knob=value` overrides; ValueError naming what is wrong."""
    name, *overrides = spec.split(":")
    if name not in PRESETS:
        raise ValueError(f"recipe: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    recipe = PRESETS[name]
    knobs = [f.name for f in fields(Recipe) if f.name not in ("name", "description")]
    changes = {}
    for override in overrides:
        knob, _, text = override.partition("=")
        knob = knob.strip().replace("-", "_")
        if knob not in knobs or not text:
            raise ValueError(f"recipe {spec!r}: {override!r} is not knob=value; knobs: {', '.join(knobs)}")
        try:
            changes[knob] = _value(knob, text.strip())
        except ValueError:
            raise ValueError(f"recipe {spec!r}: {knob} must be a number, got {text!r}") from None
    return replace(recipe, name=spec, **changes) if changes else recipe


def recipe_name(settings: Settings, family_guidance: float) -> Settings:
    """`settings` labelled with the preset whose knobs they are (with the family's guidance), else "custom"."""
    for recipe in PRESETS.values():
        if recipe.apply(settings, family_guidance) == replace(settings, recipe=recipe.name):
            return replace(settings, recipe=recipe.name)
    return replace(settings, recipe="custom")


def check_recipe(recipe: Recipe) -> None:
    """Every knob in range (the same checks as any generation settings); ValueError naming the knob."""
    recipe.apply(Settings("check"), 7.5).check()
