"""Event handlers of the app: plain functions, no Gradio, called directly by the tests."""

from studio.catalog import Catalog, UnknownModelError
from studio.compression import CompressionError, StudentSpec, resolve_spec
from studio.generation import PipelineCache, generate
from studio.loading import ModelUnavailableError
from studio.profiling import profile_students

PRESET_CHOICES = ("base", "small", "tiny", "custom")
TABLE_HEADERS = ["student", "U-Net params", "x teacher", "G MACs (conv+linear)", "x teacher", "G MACs (+attention)", "x teacher"]


def spec_from_controls(preset: str, layers: str, keep_mid: bool, keep_innermost: bool) -> StudentSpec:
    """The spec the controls describe; the custom fields apply only to `custom`."""
    if preset != "custom":
        return resolve_spec(preset)
    layers = (layers or "").replace(" ", "") or "1"
    flags = ("" if keep_mid else ":no-mid") + ("" if keep_innermost else ":no-innermost")
    return StudentSpec.parse(f"custom:{layers}{flags}")


def design_table(teacher: str, preset: str, layers: str, keep_mid: bool, keep_innermost: bool,
                 resolution: int, catalog: Catalog) -> tuple[list[list], str]:
    """Rows comparing the teacher, the paper's students and the designed one."""
    if teacher not in {e.name for e in catalog.teachers()}:
        return [], f"**Error:** unknown teacher {teacher!r}; choose one of {', '.join(e.name for e in catalog.teachers())}."
    try:
        spec = spec_from_controls(preset, layers, keep_mid, keep_innermost)
        archs = tuple(dict.fromkeys(("base", "small", "tiny", str(spec))))
        report = profile_students(teacher, archs, int(resolution or 0) or None, 1, catalog)
    except (CompressionError, ValueError) as error:
        return [], f"**Error:** {error}"
    first = report["rows"][0]
    rows = [[
        row["arch"] + (" (yours)" if row["arch"] == str(spec) else ""),
        f"{row['unet_params']:,}", round(row["unet_params"] / first["unet_params"], 3),
        round(row["macs_paper"] / 1e9, 1), round(row["macs_paper"] / first["macs_paper"], 3),
        round(row["macs_total"] / 1e9, 1), round(row["macs_total"] / first["macs_total"], 3),
    ] for row in report["rows"]]
    summary = (f"{teacher} at {report['resolution']}x{report['resolution']}, batch 1, MACs per U-Net step. "
               "'conv+linear' is the paper's convention; '+attention' adds the attention matrix products.")
    return rows, summary


def catalogue_rows(catalog: Catalog) -> list[list]:
    return [[e.name, e.role, e.family, e.teacher or "", e.arch or "", e.source, e.description] for e in catalog]


def family_models(catalog: Catalog, family: str) -> list[str]:
    """The teacher(s) of a family first, then their students."""
    teachers = [e.name for e in catalog.teachers() if e.family == family]
    return teachers + [s.name for t in teachers for s in catalog.students_of(t)]


def generate_image(cache: PipelineCache, model: str, prompt: str, seed, steps, guidance):
    """(image or None, readout markdown) for one model."""
    try:
        pipeline = cache.get(model)
        result = generate(pipeline, prompt, int(seed), int(steps), float(guidance))
    except (ValueError, UnknownModelError, ModelUnavailableError) as error:
        return None, f"**Error:** {error}"
    params = sum(p.numel() for p in pipeline.unet.parameters())
    return result.image, (f"**{model}**: {result.seconds:.2f} s for {int(steps)} steps on {pipeline.device} "
                          f"(model loading not included); U-Net {params:,} parameters")
