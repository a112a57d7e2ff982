"""The registry of job kinds: every command that can run as a background job (studio/kinds/base.py).

A new kind is a package with its config dataclass and a `kind.py` declaring
`KIND`, and one line here. The command line, the job store and launcher, the
budget and the app read what they need from `KINDS` and name no kind themselves.
"""

from studio.kinds.base import JobKind
from studio.kinds.consistency.kind import KIND as CONSISTENCY
from studio.kinds.distillation.kind import KIND as DISTILL
from studio.kinds.evaluation.kind import KIND as EVALUATE
from studio.kinds.personalization.kind import KIND as DREAMBOOTH
from studio.options import from_dict

KINDS: dict[str, JobKind] = {kind.name: kind for kind in (DISTILL, CONSISTENCY, DREAMBOOTH, EVALUATE)}


def job_kind(name: str) -> JobKind:
    if name not in KINDS:
        raise ValueError(f"kind: {name!r} is not a job kind; jobs run: {', '.join(KINDS)}")
    return KINDS[name]


def config_from_json(kind: str, data: dict):
    """A job's config from the JSON it was stored as, checked again (the job's process trusts no file)."""
    config = from_dict(job_kind(kind).config, data)
    config.check()
    return config
