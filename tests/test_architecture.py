"""Dependencies flow one way: ui -> jobs/commands -> trainers, evaluation -> generation, loading -> compression,
profiling, catalog. The toy world is a client of the library: only cli.py and studio/toy/ import it."""

import ast
from pathlib import Path

import pytest

STUDIO = Path(__file__).resolve().parent.parent / "studio"
# What each part of the library may not import (beyond itself), as dotted prefixes.
TRAINERS = ("studio.distillation", "studio.consistency", "studio.personalization", "studio.evaluation")
ABOVE_TRAINERS = ("studio.jobs", "studio.commands", "studio.ui", "studio.cli", "studio.toy")
FORBIDDEN = {
    "studio.catalog": TRAINERS + ABOVE_TRAINERS + ("studio.loading", "studio.generation", "studio.training"),
    "studio.compression": TRAINERS + ABOVE_TRAINERS + ("studio.loading", "studio.generation"),
    "studio.profiling": TRAINERS + ABOVE_TRAINERS + ("studio.loading", "studio.generation"),
    "studio.loading": TRAINERS + ABOVE_TRAINERS + ("studio.generation",),
    "studio.acceleration": TRAINERS + ABOVE_TRAINERS + ("studio.loading", "studio.generation", "studio.recipes"),
    "studio.generation": TRAINERS + ABOVE_TRAINERS + ("studio.recipes", "studio.pipeline_bench"),
    "studio.adapters": TRAINERS + ABOVE_TRAINERS + ("studio.generation",),
    "studio.recipes": TRAINERS + ABOVE_TRAINERS + ("studio.pipeline_bench",),
    "studio.pipeline_bench": TRAINERS + ABOVE_TRAINERS,
    "studio.training": TRAINERS + ABOVE_TRAINERS,
    "studio.images": TRAINERS + ABOVE_TRAINERS,
    "studio.options": TRAINERS + ABOVE_TRAINERS,
    "studio.progress": TRAINERS + ABOVE_TRAINERS,
    "studio.safety": TRAINERS + ABOVE_TRAINERS + ("studio.generation",),
    "studio.downloads": TRAINERS + ABOVE_TRAINERS + ("studio.generation", "studio.pipelines"),
    "studio.pipelines": TRAINERS + ABOVE_TRAINERS + ("studio.recipes", "studio.pipeline_bench", "studio.generation"),
    "studio.cpu": TRAINERS + ABOVE_TRAINERS + ("studio.loading", "studio.generation"),
    "studio.distillation": ABOVE_TRAINERS + ("studio.consistency", "studio.personalization", "studio.evaluation"),
    # consistency distillation reads the KD job's data sources (studio.distillation.data), and nothing else of it
    "studio.consistency": ABOVE_TRAINERS + ("studio.personalization", "studio.evaluation"),
    "studio.personalization": ABOVE_TRAINERS + ("studio.distillation", "studio.consistency", "studio.evaluation"),
    "studio.evaluation": ABOVE_TRAINERS + ("studio.distillation", "studio.consistency", "studio.personalization"),
    "studio.sensitivity": ABOVE_TRAINERS + ("studio.distillation", "studio.personalization"),
    "studio.jobs": ("studio.ui", "studio.cli", "studio.toy"),
    "studio.commands": ("studio.ui", "studio.cli", "studio.jobs", "studio.toy"),
    "studio.budget": ("studio.ui", "studio.cli", "studio.jobs", "studio.workspaces", "studio.toy"),
    "studio.workspaces": ("studio.ui", "studio.cli", "studio.toy"),
    "studio.contention": ("studio.ui", "studio.cli", "studio.toy"),
    "studio.ui": ("studio.cli", "studio.toy"),
    "studio.toy": ("studio.ui", "studio.cli", "studio.jobs"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(STUDIO.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every studio module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "studio" or name.startswith("studio.")}


FILES = sorted(STUDIO.rglob("*.py"))


def test_the_scan_sees_imports():
    assert "studio.toy" in imports(STUDIO / "cli.py")  # the rule below would pass vacuously otherwise
    assert {"studio.training", "studio.generation"} <= imports(STUDIO / "distillation" / "train.py")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(STUDIO)))
def test_only_the_command_line_and_the_toy_world_import_the_toy_world(path):
    name = module_name(path)
    if name == "studio.cli" or name.startswith("studio.toy"):
        return
    assert not [i for i in imports(path) if i == "studio.toy" or i.startswith("studio.toy.")], name


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(STUDIO)))
def test_dependencies_flow_one_way(path):
    name = module_name(path)
    rules = [forbidden for prefix, forbidden in FORBIDDEN.items() if name == prefix or name.startswith(prefix + ".")]
    bad = [i for i in imports(path) for forbidden in rules for f in forbidden
           if (i == f or i.startswith(f + ".")) and not (name == f or name.startswith(f + "."))]
    assert not bad, f"{name} imports {sorted(set(bad))}"


def test_files_stay_readable():
    long = {str(p.relative_to(STUDIO)): n for p in FILES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
