"""torchvision compatibility: patch only when the compiled ops fail to load."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, path_first: Path | None = None) -> subprocess.CompletedProcess:
    paths = [str(path_first)] if path_first else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [str(ROOT)])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)


def fake_torchvision(root: Path, meta_error: str | None) -> Path:
    """A stand-in torchvision whose meta registrations fail (or not) like the real one."""
    package = root / "torchvision"
    (package / "transforms").mkdir(parents=True)
    (package / "__init__.py").write_text("from torchvision import _meta_registrations, transforms\n")
    body = f"raise RuntimeError({meta_error!r})\n" if meta_error else "REGISTERED = True\n"
    (package / "_meta_registrations.py").write_text(body)
    (package / "transforms" / "__init__.py").write_text("def Compose(ts):\n    return ts\n")
    return root


def test_libraries_that_import_torchvision_work_after_import_studio():
    result = python("""
        import studio
        from studio.compat import TORCHVISION_STATUS
        import torchvision.transforms as T
        from diffusers import StableDiffusionPipeline
        import open_clip, peft, transformers
        T.Compose([T.Resize(8), T.ToTensor()])
        print(TORCHVISION_STATUS)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("ok", "patched")


def test_patches_when_compiled_ops_are_missing(tmp_path):
    root = fake_torchvision(tmp_path, "operator torchvision::nms does not exist")
    result = python("""
        from studio.compat import TORCHVISION_STATUS
        import torchvision, torchvision.transforms
        assert torchvision.transforms.Compose([1]) == [1]
        print(TORCHVISION_STATUS)
    """, root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "patched"


def test_does_nothing_when_builds_match(tmp_path):
    root = fake_torchvision(tmp_path, None)
    result = python("""
        from studio.compat import TORCHVISION_STATUS
        import torchvision._meta_registrations as meta
        print(TORCHVISION_STATUS, meta.REGISTERED)
    """, root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok True"


@pytest.mark.parametrize("error", ["something else broke"])
def test_other_errors_are_not_hidden(tmp_path, error):
    result = python("import studio, transformers", fake_torchvision(tmp_path, error))
    assert result.returncode != 0 and error in result.stderr
