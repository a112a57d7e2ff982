"""The folders are the layers, and dependencies flow one way, down them:

    cli -> ui -> bench -> jobs -> kinds -> inference -> models -> the ground (options, progress, limits, images,
    budget, compat)

The toy world is a client of the library: only the command line, app.py and studio/toy/ import it. A job kind's
package imports no other kind's. No file imports itself back through others (no circle)."""

import ast
from pathlib import Path

import pytest

STUDIO = Path(__file__).resolve().parent.parent / "studio"
# Bottom to top; a module may import its own layer and those below it.
LAYERS = [
    ("studio.options", "studio.progress", "studio.limits", "studio.images", "studio.budget", "studio.compat"),
    ("studio.models",),
    ("studio.inference",),
    ("studio.kinds",),
    ("studio.jobs",),
    ("studio.bench",),
    ("studio.ui",),
    ("studio.toy",),
    ("studio.cli", "studio.__main__"),
]
KIND_PACKAGES = ("studio.kinds.distillation", "studio.kinds.consistency", "studio.kinds.personalization",
                 "studio.kinds.evaluation")


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


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer(name: str) -> int | None:
    return next((i for i, prefixes in enumerate(LAYERS) for p in prefixes if under(name, p)), None)


FILES = sorted(STUDIO.rglob("*.py"))
MODULES = {module_name(p): p for p in FILES}


def test_the_scan_sees_imports_and_every_module_has_a_layer():
    assert "studio.toy" in imports(STUDIO / "cli.py")  # the rules below would pass vacuously otherwise
    assert {"studio.kinds.training", "studio.inference.generation"} <= \
        imports(STUDIO / "kinds" / "distillation" / "train.py")
    assert not [m for m in MODULES if m != "studio" and layer(m) is None]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(STUDIO)))
def test_dependencies_flow_down_the_layers(path):
    name = module_name(path)
    if name == "studio":
        return
    mine = layer(name)
    upward = [i for i in imports(path) if i != "studio" and (layer(i) or 0) > mine]
    assert not upward, f"{name} (layer {mine}) imports {sorted(upward)} from above"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(STUDIO)))
def test_only_the_command_line_and_the_toy_world_import_the_toy_world(path):
    name = module_name(path)
    if under(name, "studio.cli") or under(name, "studio.toy"):
        return
    assert not [i for i in imports(path) if under(i, "studio.toy")], name


def test_a_kind_imports_no_other_kind():
    crossing = {name: sorted(i for i in imports(path) for other in KIND_PACKAGES
                             if under(i, other) and not under(name, other))
                for name, path in MODULES.items() if any(under(name, k) for k in KIND_PACKAGES)}
    assert not {name: found for name, found in crossing.items() if found}


def test_no_circles():
    """Files that import each other, directly or round a loop (imports inside functions count)."""
    graph = {name: {m for m in MODULES if m != name and m in imports(path)} for name, path in MODULES.items()}
    graph = {name: {m for m in targets if not (name.startswith(m + ".") and m in MODULES
                                                and MODULES[m].name == "__init__.py")}
             for name, targets in graph.items()}  # a module's own package face is not a loop
    state, circles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, circles


def test_the_top_of_the_library_stays_small():
    top = [p.stem for p in STUDIO.glob("*.py") if p.stem not in ("__init__", "__main__")]
    assert len(top) <= 10, sorted(top)


def test_files_stay_readable():
    long = {str(p.relative_to(STUDIO)): n for p in FILES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
