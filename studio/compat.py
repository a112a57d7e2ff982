"""Make torchvision importable when its compiled ops don't match torch.

The only torchvision wheel some machines can install is a CUDA build whose
`_C` extension fails to load next to the CPU torch. torchvision's
`_meta_registrations` then registers fake kernels for ops that were never
defined and raises `RuntimeError: operator torchvision::nms does not exist`.
transformers imports torchvision whenever it is installed, so that one error
breaks diffusers pipelines, peft and open_clip.

Meta kernels only matter when the compiled ops exist, so when (and only when)
the import fails that way we skip that module and import again. The
pure-Python parts (transforms, datasets, io helpers) then work; calling a
compiled op such as `torchvision.ops.nms` still raises torchvision's own clear
error.
"""

import importlib.abc
import sys
import types

_MISSING_OP = "operator torchvision::"
_META_MODULE = "torchvision._meta_registrations"


def ensure_torchvision_importable() -> str:
    """Import torchvision, patching around mismatched compiled ops.

    Returns "absent", "ok" (imported untouched) or "patched".
    """
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name == "torchvision":
            return "absent"
        raise
    except RuntimeError as error:
        if _MISSING_OP not in str(error):
            raise
        _forget_partial_import()
        sys.modules[_META_MODULE] = types.ModuleType(_META_MODULE)
        import torchvision  # noqa: F401

        return "patched"
    return "ok"


def _forget_partial_import() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


# Libraries that import torchvision. The patch runs when the first of them is imported, not with `import studio`,
# so commands that need no torch (python -m studio --help, models, jobs list) start at once.
IMPORTERS_OF_TORCHVISION = ("transformers", "diffusers", "peft", "open_clip", "timm", "torchmetrics", "torch_fidelity")
_status: str | None = None


def torchvision_status() -> str:
    """The patch's outcome ("absent", "ok" or "patched"), running it first if nothing has yet."""
    global _status
    if _status is None:
        _status = "running"  # a library imported inside the check must not start it again
        try:
            _status = ensure_torchvision_importable()
        except BaseException:
            _status = None  # not patched: the next import of such a library tries again (and fails the same way)
            raise
    return _status


class _PatchBeforeImporters(importlib.abc.MetaPathFinder):
    """Runs the patch just before the first library that imports torchvision loads; finds no module itself."""

    def find_spec(self, name, path=None, target=None):
        if _status is None and name.partition(".")[0] in IMPORTERS_OF_TORCHVISION:
            torchvision_status()
        return None


def install() -> None:
    if not any(isinstance(finder, _PatchBeforeImporters) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchBeforeImporters())


def __getattr__(name: str):
    if name == "TORCHVISION_STATUS":  # as before: reading it runs the patch
        return torchvision_status()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
