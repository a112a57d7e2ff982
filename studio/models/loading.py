"""Loading weights: ordinary `from_pretrained`, safetensors only.

Hub ids and local folders in the hub layout go through the same code. A
student loads only its U-Net and shares every other component (text encoder,
tokenizer, VAE, scheduler: the same objects) with its teacher's pipeline.
"""

import os
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline, UNet2DConditionModel
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

from studio.models.catalog import Catalog, ModelEntry, UnknownModelError, load_catalog


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class ModelUnavailableError(RuntimeError):
    """A model whose weights can't be had here."""


def _how_to_provide(entry: ModelEntry | None, source: str) -> str:
    hub_id = None if _is_folder(entry, source) else source
    lines = [
        "To provide it: save the model in the hub layout to a local folder and pass that folder"
        + (" (or set its catalogue `source` to the folder)" if entry else ""),
    ]
    if hub_id:
        lines.append(
            f"or download {hub_id} once where the hub is reachable and point HF_HOME at that cache "
            "(set HF_HUB_OFFLINE=1 to stop looking online)"
        )
    return "; ".join(lines) + "."


def _where_looked(entry: ModelEntry | None, source: str) -> str:
    if _is_folder(entry, source):
        return f"in the folder {source}"
    offline = hub_constants.HF_HUB_OFFLINE
    return (
        f"as hub id {source} in the Hugging Face cache {hub_constants.HF_HUB_CACHE}"
        + (" (HF_HUB_OFFLINE is set, so not online)" if offline else " and online")
    )


def _is_folder(entry: ModelEntry | None, source: str) -> bool:
    return (entry is not None and entry.is_local) or os.path.isabs(source) or Path(source).exists()


def _cause(entry: ModelEntry | None, source: str, error: Exception) -> str:
    if _is_folder(entry, source):
        folder = Path(source)
        if not folder.is_dir():
            return "the folder does not exist"
        pickled = [p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickled and not any(folder.rglob("*.safetensors")):
            return (
                f"it holds only pickled weights ({', '.join(sorted(pickled))}); the studio loads safetensors only, "
                "so convert them once where you trust the file (load, then save_pretrained(safe_serialization=True))"
            )
    elif try_to_load_from_cache(source, "model_index.json") is None and try_to_load_from_cache(
        source, "unet/config.json"
    ) is None:
        return "it is not in the cache" + ("" if hub_constants.HF_HUB_OFFLINE else " and the hub could not be reached")
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


def _unavailable(label: str, entry: ModelEntry | None, source: str, error: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Model {label} could not be loaded; looked {_where_looked(entry, source)}. "
        f"Cause: {_cause(entry, source, error)}. {_how_to_provide(entry, source)}"
    )


def _resolve(ref: str, catalog: Catalog) -> tuple[ModelEntry | None, str]:
    if ref in catalog:
        entry = catalog.get(ref)
        return entry, str(entry.source_path) if entry.is_local else entry.source
    if Path(ref).is_dir():
        return None, ref
    raise UnknownModelError(f"{ref!r} is neither a catalogue model ({', '.join(catalog.names())}) nor a folder")


def load_unet(ref: str, catalog: Catalog | None = None, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """A U-Net from a catalogue name, a pipeline folder (unet/) or a U-Net folder."""
    catalog = catalog or load_catalog()
    entry, source = _resolve(ref, catalog)
    bare_unet_folder = entry is None and (Path(source) / "config.json").is_file()
    subfolder = None if bare_unet_folder else "unet"
    try:
        return UNet2DConditionModel.from_pretrained(
            source, subfolder=subfolder, use_safetensors=True, dtype=dtype
        )
    except (OSError, ValueError) as error:  # hub and file errors are OSErrors
        raise _unavailable(repr(ref), entry, source, error) from error


def load_pipeline(
    ref: str,
    catalog: Catalog | None = None,
    dtype: torch.dtype = torch.float32,
    teacher: StableDiffusionPipeline | None = None,
    without_unet: bool = False,
) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline for a catalogue name or a pipeline folder.

    Weights are cast to `dtype` (float32 by default, whatever they were stored in).

    `teacher`: a pipeline of the same teacher (the teacher's, or a sibling student's) whose components other than
    the U-Net are used, not loaded again. A catalogue student gets its own U-Net and those components (loaded here
    from its teacher, without the teacher's U-Net, when not given). `without_unet`: the other components only.
    """
    catalog = catalog or load_catalog()
    entry, source = _resolve(ref, catalog)
    if entry is not None and entry.role == "student":
        teacher = teacher or load_pipeline(entry.teacher, catalog, dtype, without_unet=True)
        unet = load_unet(ref, catalog, dtype).to(teacher.device)
        return share_components(teacher, unet)
    given = {name: part for name, part in teacher.components.items() if name != "unet"} if teacher else {}
    try:
        return StableDiffusionPipeline.from_pretrained(source, use_safetensors=True, dtype=dtype, **given,
                                                       **({"unet": None} if without_unet else {}))
    except (OSError, ValueError) as error:
        raise _unavailable(repr(ref), entry, source, error) from error


def load_tiny_decoder(source: str, dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    """A tiny autoencoder (TAESD layout, diffusers' AutoencoderTiny) from a hub id or a local folder."""
    try:
        return AutoencoderTiny.from_pretrained(source, use_safetensors=True, dtype=dtype)
    except (OSError, ValueError) as error:
        raise _unavailable(f"tiny decoder {source!r}", None, source, error) from error


def in_reach(source: str, filename: str = "config.json") -> bool:
    """Whether `source` can be loaded without the network: a local folder, or a hub id in the cache."""
    return Path(source).is_dir() or try_to_load_from_cache(source, filename) is not None


def check_at_hand(ref: str, catalog: Catalog) -> None:
    """Raise ModelUnavailableError when a catalogue model (or, for a student, its teacher) can't be loaded without
    the network; nothing is loaded."""
    for name in (ref, catalog.get(ref).teacher):
        if name:
            entry, source = _resolve(name, catalog)
            if not in_reach(source, "model_index.json" if entry.role == "teacher" else "config.json") \
                    and not in_reach(source, "unet/config.json"):
                raise _unavailable(repr(name), entry, source, FileNotFoundError(f"{source} is not at hand"))


def share_components(teacher: StableDiffusionPipeline, unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    """A pipeline that runs `unet` with the teacher's very own other components."""
    components = {**teacher.components, "unet": unet}
    return StableDiffusionPipeline(
        **components, requires_safety_checker=teacher.config.get("requires_safety_checker", False)
    )


def load_lora(pipeline: StableDiffusionPipeline, folder: Path | str) -> StableDiffusionPipeline:
    """`pipeline` with the LoRA weights of a diffusers LoRA folder applied (safetensors only)."""
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelUnavailableError(f"no LoRA weights in {folder}: the studio loads .safetensors files only")
    pipeline.load_lora_weights(folder, weight_name=weights[0].name, use_safetensors=True)
    return pipeline
