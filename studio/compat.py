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


TORCHVISION_STATUS = ensure_torchvision_importable()
