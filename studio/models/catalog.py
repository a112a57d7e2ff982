"""The model catalogue: which models the studio knows, as data.

Entries live in `studio/models/models.json`; a JSON file of the same form named by the
STUDIO_MODELS environment variable adds more (e.g. your own students). A
`source` is a hub id, or a local folder when it starts with `./`, `../` or `/`
(relative paths are relative to the project root).

A family (toy, v1, v2-base) is a teacher and its students; its defaults
(guidance, prompt set, validation prompts, which judge, ...) are data in the
same file, under "families", and reach the library as values.

This module also reads a model's architecture configs without its weights,
which is all profiling and block removal planning need.
"""

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent.parent
DEFAULT_CATALOG = PACKAGE_DIR / "models.json"
EXTRA_CATALOG_ENV = "STUDIO_MODELS"
ROLES = ("teacher", "student")
COMPONENTS = ("unet", "vae", "text_encoder")


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class CatalogError(ValueError):
    """A catalogue file that is malformed."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    role: str
    family: str
    teacher: str | None = None
    arch: str | None = None
    configs: str | None = None
    description: str = ""

    @property
    def is_local(self) -> bool:
        return self.source.startswith(("./", "../", "/"))

    @property
    def source_path(self) -> Path | None:
        return (PROJECT_ROOT / self.source).resolve() if self.is_local else None

    @property
    def config_dir(self) -> Path | None:
        """A folder in the pipeline layout holding this model's configs, if one is at hand."""
        if self.configs:
            return PACKAGE_DIR / self.configs
        return self.source_path


@dataclass(frozen=True)
class Family:
    """A model family's defaults; a family the catalogue does not describe gets these."""

    name: str
    description: str = ""
    guidance: float = 7.5  # the paper's
    steps: int = 25
    prompt: str = ""  # the app's first prompt
    prompt_set: str | None = None  # evaluation prompts when none are given (a path like a local source)
    judge: str | None = None  # a registered judge (studio.kinds.evaluation.judges) for this family's images
    train_data: str | None = None  # a registered data source for distillation
    train_lr: float = 5e-5
    train_steps: int = 1000
    train_batch_size: int = 8
    validation_prompts: tuple[str, ...] = ()
    dreambooth_class: str = "dog"
    dreambooth_prompt: str = "a sks dog in the snow"
    dreambooth_steps: int = 800
    class_images: int = 200
    eval_images: int = 1000
    tiny_decoder: str | None = None  # a tiny decoder (TAESD) for this family's latents: hub id or ./local folder
    recipe_report: str | None = None  # a measured models x recipes table (markdown; its plot beside it as .png)
    sensitivity_map: str | None = None  # the family teacher's block sensitivity (JSON; its heat map beside it as .png)
    lcm_adapter: str | None = None  # a published LCM-LoRA for the teacher (hub id or ./folder), for the lcm recipes
    safety_checker: str | None = None  # diffusers' safety checker for the family's images (studio/inference/safety.py)

    @property
    def prompt_set_path(self) -> Path | None:
        return (PROJECT_ROOT / self.prompt_set).resolve() if self.prompt_set else None

    @property
    def recipe_report_path(self) -> Path | None:
        return (PROJECT_ROOT / self.recipe_report).resolve() if self.recipe_report else None

    @property
    def sensitivity_map_path(self) -> Path | None:
        return (PROJECT_ROOT / self.sensitivity_map).resolve() if self.sensitivity_map else None

    @property
    def tiny_decoder_source(self) -> str | None:
        """The tiny decoder as from_pretrained takes it: a hub id, or a local folder made absolute."""
        return _source(self.tiny_decoder)

    @property
    def lcm_adapter_source(self) -> str | None:
        return _source(self.lcm_adapter)


def _source(value: str | None) -> str | None:
    if value and value.startswith(("./", "../", "/")):
        return str((PROJECT_ROOT / value).resolve())
    return value


def _family_from_dict(name: str, data: dict, origin: Path) -> Family:
    unknown = set(data) - {f.name for f in fields(Family)}
    if unknown:
        raise CatalogError(f"{origin}: family {name!r} has unknown fields {sorted(unknown)}")
    if "validation_prompts" in data:
        data = {**data, "validation_prompts": tuple(data["validation_prompts"])}
    return Family(name=name, **data)


class Catalog:
    def __init__(self, entries: list[ModelEntry], families: dict[str, Family] | None = None):
        self.families = dict(families or {})
        self._entries = {}
        for entry in entries:
            if entry.name in self._entries:
                raise CatalogError(f"model name {entry.name!r} appears twice in the catalogue")
            self._entries[entry.name] = entry
        for entry in entries:
            if entry.role == "student" and entry.teacher not in self._entries:
                raise CatalogError(f"student {entry.name!r} names teacher {entry.teacher!r}, which is not in the catalogue")

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownModelError(f"unknown model {name!r}; the catalogue has: {', '.join(self._entries)}") from None

    def with_entries(self, extra: list[ModelEntry]) -> "Catalog":
        """A new catalogue with `extra` entries added (names must be new)."""
        return Catalog([*self, *extra], self.families)

    def family(self, name: str) -> Family:
        return self.families.get(name) or Family(name)

    def teachers(self) -> list[ModelEntry]:
        return [e for e in self if e.role == "teacher"]

    def students_of(self, teacher: str) -> list[ModelEntry]:
        return [e for e in self if e.role == "student" and e.teacher == teacher]


def _entry_from_dict(data: dict, origin: Path) -> ModelEntry:
    missing = [key for key in ("name", "source", "role", "family") if not data.get(key)]
    if missing:
        raise CatalogError(f"{origin}: entry {data.get('name', data)!r} lacks {', '.join(missing)}")
    if data["role"] not in ROLES:
        raise CatalogError(f"{origin}: {data['name']!r} has role {data['role']!r}; allowed: {', '.join(ROLES)}")
    if data["role"] == "student" and not data.get("teacher"):
        raise CatalogError(f"{origin}: student {data['name']!r} must name its teacher")
    unknown = set(data) - set(ModelEntry.__dataclass_fields__)
    if unknown:
        raise CatalogError(f"{origin}: {data['name']!r} has unknown fields {sorted(unknown)}")
    return ModelEntry(**data)


def load_catalog(*extra_files: "str | Path") -> Catalog:
    """The packaged catalogue, plus $STUDIO_MODELS and any `extra_files`."""
    files = [DEFAULT_CATALOG]
    if os.environ.get(EXTRA_CATALOG_ENV):
        files.append(Path(os.environ[EXTRA_CATALOG_ENV]))
    files.extend(Path(f) for f in extra_files)
    entries, families = [], {}
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CatalogError(f"can't read model catalogue {path}: {error}") from None
        entries.extend(_entry_from_dict(item, path) for item in data.get("models", []))
        families.update({name: _family_from_dict(name, item, path) for name, item in data.get("families", {}).items()})
    return Catalog(entries, families)


def packaged_family(name: str) -> Family:
    """A family's defaults from the packaged catalogue alone (no environment, no extra files)."""
    data = json.loads(DEFAULT_CATALOG.read_text()).get("families", {})
    return _family_from_dict(name, data[name], DEFAULT_CATALOG) if name in data else Family(name)


def write_catalog(entries: list[ModelEntry], path: Path) -> Path:
    """A catalogue file (the form $STUDIO_MODELS takes) holding `entries`."""
    from dataclasses import asdict

    items = [{k: v for k, v in asdict(e).items() if v not in (None, "")} for e in entries]
    path.write_text(json.dumps({"models": items}, indent=2) + "\n")
    return path


def entries_beyond_packaged(catalog: Catalog) -> list[ModelEntry]:
    """The entries a catalogue adds to the packaged one (from $STUDIO_MODELS, jobs, tests)."""
    packaged = {item["name"] for item in json.loads(DEFAULT_CATALOG.read_text()).get("models", [])}
    return [e for e in catalog if e.name not in packaged]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_configs(ref: str, catalog: Catalog | None = None) -> dict:
    """Architecture configs {"unet", "vae", "text_encoder", "scheduler"} of a model, without weights.

    ref: a catalogue name, a pipeline folder (with unet/, vae/, ...) or a
    U-Net folder (config.json). A hub student with no configs at hand gets its
    U-Net config derived from its teacher's, which the tests check against the
    published configs. Missing components are None.
    """
    catalog = catalog or load_catalog()
    if ref in catalog:
        entry = catalog.get(ref)
        folder = entry.config_dir
        if folder is None and entry.role == "student":
            from studio.models.compression import student_config

            configs = read_configs(entry.teacher, catalog)
            configs["unet"] = student_config(configs["unet"], entry.arch)
            return configs
        if folder is None:
            raise UnknownModelError(f"model {ref!r} ({entry.source}) has no configs in the project; give a local folder")
    else:
        folder = Path(ref)
        if not folder.is_dir():
            raise UnknownModelError(
                f"{ref!r} is neither a catalogue model ({', '.join(catalog.names())}) nor a folder"
            )
    configs = {part: _read_json(folder / part / "config.json") for part in COMPONENTS}
    configs["scheduler"] = _read_json(folder / "scheduler" / "scheduler_config.json")
    if configs["unet"] is None:
        configs["unet"] = _read_json(folder / "config.json")  # a bare U-Net folder
    if configs["unet"] is None:
        raise UnknownModelError(f"no U-Net config in {folder} (looked for unet/config.json and config.json)")
    if ref in catalog and catalog.get(ref).role == "student":  # a student folder holds only its U-Net
        teacher = read_configs(catalog.get(ref).teacher, catalog)
        configs.update({part: configs[part] or teacher[part] for part in ("vae", "text_encoder")})
    return configs
