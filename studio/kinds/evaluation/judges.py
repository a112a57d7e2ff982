"""Judges: functions that read generated images back and say whether they follow their prompts.

A family names its judge in the catalogue ("judge": "toy"); the judge itself is
registered by whoever provides it (the toy world registers "toy"), so the
evaluation protocol knows judges only by name.

A judge is `judge(prompts, images) -> accuracy in [0, 1] | None` (None: it
can't read these prompts).
"""

from typing import Callable

JUDGES: dict[str, Callable] = {}


def register_judge(name: str, judge: Callable) -> None:
    JUDGES[name] = judge


def get_judge(name: str) -> Callable:
    if name not in JUDGES:
        raise KeyError(f"no judge {name!r} is registered (known: {', '.join(JUDGES) or 'none'}); the module that "
                       "provides it registers it when imported (the toy world's package registers 'toy')")
    return JUDGES[name]
