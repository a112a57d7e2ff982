"""The toy world's prompts, in the six task families of GenEval (Ghosh et al., NeurIPS 2023).

| task          | example                                               | right when (the judge)                 |
| ------------- | ----------------------------------------------------- | -------------------------------------- |
| single_object | a circle on a white background                        | a circle is there                      |
| two_object    | a circle and a square on a gray background            | both are there                         |
| counting      | two green triangles on a white background             | exactly two green triangles            |
| colors        | a red circle on a black background                    | a red circle is there                  |
| position      | a circle left of a square on a white background       | both, and the circle is left of it     |
| color_attr    | a red circle and a blue square on a gray background   | a red circle and a blue square         |

A prompt is a `Prompt` (what it asks for, structured) with its text; `parse`
reads the text back. The evaluation set is fixed: 100 prompts per task drawn
from the training distribution, and a held-out part (prompts that ask for a
color-shape pair training never draws).
"""

import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from studio.toy.scenes import (BACKGROUNDS, COLORS, HELD_OUT, OBJECT_SIZES, PLURALS, SHAPES, Scene, Thing, place,
                               training_color)

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {"two": 2, "three": 3}
PER_TASK = 100
HELD_OUT_PER_TASK = 24  # for each task that names colors


@dataclass(frozen=True)
class Prompt:
    task: str
    background: str
    objects: tuple[tuple[str, str | None], ...]  # (shape, color or None when the prompt names none)
    count: int = 1  # counting: how many of objects[0]
    relation: str | None = None  # position: objects[0] `relation` objects[1]

    @property
    def text(self) -> str:
        def noun(shape, color):
            words = f"{color} {shape}" if color else shape
            return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"

        tail = f"on a {self.background} background"
        if self.task == "counting":
            shape, color = self.objects[0]
            number = next(word for word, n in NUMBERS.items() if n == self.count)
            return f"{number} {color} {PLURALS[shape]} {tail}"
        if self.task == "position":
            return f"{noun(*self.objects[0])} {self.relation} {noun(*self.objects[1])} {tail}"
        return " and ".join(noun(*o) for o in self.objects) + f" {tail}"

    @property
    def held_out(self) -> bool:
        return any((color, shape) in HELD_OUT for shape, color in self.objects if color)


_SHAPE = "|".join(SHAPES)
_COLOR = "|".join(COLORS)
_TAIL = rf" on a (?P<bg>{'|'.join(BACKGROUNDS)}) background$"
_PATTERNS = {
    "single_object": rf"^a (?P<s1>{_SHAPE}){_TAIL}",
    "colors": rf"^an? (?P<c1>{_COLOR}) (?P<s1>{_SHAPE}){_TAIL}",
    "two_object": rf"^a (?P<s1>{_SHAPE}) and a (?P<s2>{_SHAPE}){_TAIL}",
    "color_attr": rf"^an? (?P<c1>{_COLOR}) (?P<s1>{_SHAPE}) and an? (?P<c2>{_COLOR}) (?P<s2>{_SHAPE}){_TAIL}",
    "counting": rf"^(?P<n>{'|'.join(NUMBERS)}) (?P<c1>{_COLOR}) (?P<p1>{'|'.join(PLURALS.values())}){_TAIL}",
    "position": rf"^a (?P<s1>{_SHAPE}) (?P<rel>{'|'.join(RELATIONS)}) a (?P<s2>{_SHAPE}){_TAIL}",
}


def parse(text: str) -> Prompt | None:
    """The Prompt a toy caption asks for, or None when it is not one."""
    for task, pattern in _PATTERNS.items():
        if match := re.match(pattern, text.strip()):
            groups = match.groupdict()
            if task == "counting":
                shape = next(s for s, plural in PLURALS.items() if plural == groups["p1"])
                return Prompt(task, groups["bg"], ((shape, groups["c1"]),), count=NUMBERS[groups["n"]])
            objects = tuple((groups[f"s{i}"], groups.get(f"c{i}")) for i in (1, 2) if groups.get(f"s{i}"))
            return Prompt(task, groups["bg"], objects, relation=groups.get("rel"))
    return None


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def task_mix(weights: dict[str, float]) -> np.ndarray:
    """Probabilities of the tasks from relative weights (a task not named weighs 1)."""
    unknown = set(weights) - set(TASKS)
    if unknown:
        raise ValueError(f"task weights: unknown task {', '.join(sorted(unknown))}; the tasks are {', '.join(TASKS)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"task weights must not be negative, got {weights}")
    raw = np.array([float(weights.get(task, 1.0)) for task in TASKS])
    if raw.sum() <= 0:
        raise ValueError("task weights: at least one task must weigh more than 0")
    return raw / raw.sum()


def parse_task_weights(items: list[str]) -> dict[str, float]:
    """`toy train --task-weight TASK=W` items as a dict, checked by task_mix."""
    weights = {}
    for item in items:
        task, _, value = item.partition("=")
        try:
            weights[task] = float(value)
        except ValueError:
            raise ValueError(f"--task-weight: {item!r} is not TASK=WEIGHT (e.g. single_object=3)") from None
    task_mix(weights)
    return weights


def random_prompt(rng, training: bool = True, task: str | None = None, mix: np.ndarray | None = None) -> Prompt:
    """A prompt of `task` (or a random one: uniform, or drawn with the probabilities `mix` from task_mix) with
    random attributes; training prompts never name a held-out pair."""
    if task is None:
        task = _pick(rng, TASKS) if mix is None else TASKS[int(rng.choice(len(TASKS), p=mix))]
    background = _pick(rng, list(BACKGROUNDS))
    shapes = [str(s) for s in rng.choice(SHAPES, size=2, replace=False)]

    def color_for(shape):
        return training_color(shape, rng) if training else _pick(rng, list(COLORS))

    if task == "single_object":
        return Prompt(task, background, ((shapes[0], None),))
    if task == "colors":
        return Prompt(task, background, ((shapes[0], color_for(shapes[0])),))
    if task == "two_object":
        return Prompt(task, background, ((shapes[0], None), (shapes[1], None)))
    if task == "color_attr":
        return Prompt(task, background, tuple((s, color_for(s)) for s in shapes))
    if task == "counting":
        return Prompt(task, background, ((shapes[0], color_for(shapes[0])),), count=int(rng.integers(2, 4)))
    if task == "position":
        return Prompt(task, background, ((shapes[0], None), (shapes[1], None)), relation=_pick(rng, RELATIONS))
    raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(TASKS)}")


def scene_for(prompt: Prompt, rng) -> Scene:
    """A scene that satisfies the prompt; what it leaves open (colors, sizes, places) is drawn at random."""
    wanted = [prompt.objects[0]] * prompt.count if prompt.task == "counting" else list(prompt.objects)
    sizes = [float(_pick(rng, OBJECT_SIZES)) for _ in wanted]
    centers = place(sizes, rng, prompt.relation)
    things = tuple(Thing(shape, color or training_color(shape, rng), center, size)
                   for (shape, color), center, size in zip(wanted, centers, sizes))
    return Scene(prompt.background, things)


@cache
def evaluation_set() -> tuple[Prompt, ...]:
    """The fixed evaluation set: PER_TASK in-distribution prompts per task, interleaved (prompt i is of task
    i mod 6, so any prefix is balanced), then HELD_OUT_PER_TASK held-out prompts for each task that names
    colors, interleaved the same way. A text may repeat (single_object has only 15); each place in the set has
    its own seed, so a repeat is another image."""
    rng = np.random.default_rng(2026)

    def draw(task, held_out):
        while (prompt := random_prompt(rng, training=not held_out, task=task)).held_out != held_out:
            pass
        return prompt

    prompts = [draw(task, False) for _ in range(PER_TASK) for task in TASKS]
    prompts += [draw(task, True) for _ in range(HELD_OUT_PER_TASK) for task in ("colors", "counting", "color_attr")]
    return tuple(prompts)
