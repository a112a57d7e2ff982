"""Hub downloads before loading: what a model needs, fetched into the Hugging Face cache with progress in bytes,
and every way it can fail named.

`from_pretrained` downloads on its own, silently; on a Space a first click would
then wait minutes for gigabytes with no word. So a hub model is fetched first:
a dry run lists the files `from_pretrained` reads (configs, tokenizer files,
safetensors weights: no pickles, no fp16 or EMA variants) with their sizes,
then `snapshot_download` fetches the missing ones while a thread reports the
bytes that have arrived (files in the cache, and the partial ones).
"""

import errno
import shutil
import threading
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (DryRunError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                    RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

from studio.budget import folder_bytes
from studio.models.catalog import Catalog
from studio.models.loading import ModelUnavailableError
from studio.progress import Callback, report

GB = 1024**3
PIPELINE_FILES = ["model_index.json", "scheduler/*.json", "tokenizer/*", "text_encoder/config.json",
                  "text_encoder/model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                  "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
UNET_FILES = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
POLL_SECONDS = 0.5


class DownloadError(ModelUnavailableError):
    """A hub model that can't be downloaded; the message says why and what to do."""


def _named(source: str, error: Exception) -> DownloadError:
    while isinstance(error, DryRunError) and error.__cause__ is not None:  # a dry run wraps what the hub said
        error = error.__cause__
    if isinstance(error, GatedRepoError):
        return DownloadError(f"{source} is gated or private on the Hugging Face hub: accept its terms on "
                             f"https://huggingface.co/{source} with your account, then give this server a token "
                             "(the HF_TOKEN variable, or `hf auth login`)")
    if isinstance(error, RepositoryNotFoundError):
        return DownloadError(f"{source} was not found on the Hugging Face hub (a typo, a deleted repository, or a "
                             "private one without a token)")
    if isinstance(error, (RemoteEntryNotFoundError, RevisionNotFoundError)):
        return DownloadError(f"{source} has no {error.__class__.__name__.removesuffix('Error')} the studio needs: "
                             f"{str(error).splitlines()[0][:200]}")
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return DownloadError(f"the disk filled up while downloading {source}; free space in the Hugging Face "
                             f"cache ({hub_constants.HF_HUB_CACHE}) or point HF_HOME at a larger disk")
    if isinstance(error, LocalEntryNotFoundError) or not isinstance(error, HfHubHTTPError):  # no answer from the hub
        return DownloadError(f"{source} is not in the Hugging Face cache and the hub can't be reached"
                             + (" (HF_HUB_OFFLINE is set)" if hub_constants.HF_HUB_OFFLINE else "")
                             + ": download it once where the hub is reachable, or give a local folder")
    return DownloadError(f"{source} could not be downloaded: {str(error).splitlines()[0][:300]}")


def _arrived(folder: Path) -> int:
    """Bytes in a repo's cache folder: finished blobs and partial downloads."""
    return sum(p.stat().st_size for p in (folder / "blobs").glob("*") if p.is_file()) if folder.is_dir() else 0


def fetch(source: str, patterns: list[str], label: str, callback: Callback | None = None,
          budget: int | None = None) -> None:
    """Download what matches `patterns` of hub repo `source` that the cache lacks, reporting ("download", bytes
    done, bytes total, model=label). Raises DownloadError, named, when that can't be done, or when the cache would
    then hold more than `budget` bytes."""
    try:
        planned = snapshot_download(source, allow_patterns=patterns, dry_run=True)
    except Exception as error:  # noqa: BLE001  every hub failure becomes one named error
        raise _named(source, error) from error
    weights = [f for f in planned if f.filename.endswith(".safetensors")]
    if not weights:
        raise DownloadError(f"{source} has no safetensors weights where the studio looks ({', '.join(patterns)}); "
                            "the studio loads safetensors only")
    missing = [f for f in planned if f.will_download]
    if not missing:
        return
    total = sum(f.file_size or 0 for f in missing)
    free = shutil.disk_usage(_existing(Path(hub_constants.HF_HUB_CACHE))).free
    if total > free:
        raise DownloadError(f"{source} needs {total / GB:.2f} GB and the disk of the Hugging Face cache has "
                            f"{free / GB:.2f} GB free; free space or point HF_HOME at a larger disk")
    if budget is not None:
        held = folder_bytes(Path(hub_constants.HF_HUB_CACHE))
        if held + total > budget:
            raise DownloadError(f"{source} needs {total / GB:.2f} GB and the Hugging Face cache holds {held / GB:.2f} "
                                f"GB of this server's {budget / GB:.2f} GB download budget (--download-disk-gb)")
    folder = Path(hub_constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}"
    start, done = _arrived(folder), threading.Event()

    def watch():
        while not done.wait(POLL_SECONDS):
            report(callback, "download", min(_arrived(folder) - start, total), total, model=label)

    watcher = threading.Thread(target=watch, daemon=True, name=f"download-{label}")
    watcher.start()
    try:
        snapshot_download(source, allow_patterns=[f.filename for f in missing])
    except Exception as error:  # noqa: BLE001
        raise _named(source, error) from error
    finally:
        done.set()
        watcher.join()
    report(callback, "download", total, total, model=label)


def _existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def ensure_downloaded(name: str, catalog: Catalog, callback: Callback | None = None,
                      budget: int | None = None) -> None:
    """Fetch the hub repositories a catalogue model loads from (a student's U-Net and its teacher's pipeline),
    with progress, within `budget` bytes of cache; local folders, and everything while HF_HUB_OFFLINE is set, are
    left to the loader."""
    if hub_constants.HF_HUB_OFFLINE:
        return
    entry = catalog.get(name)
    needs = [(entry, UNET_FILES if entry.role == "student" else PIPELINE_FILES)]
    if entry.role == "student":
        needs.append((catalog.get(entry.teacher), [f for f in PIPELINE_FILES if not f.startswith("unet/")]))
    for model, patterns in needs:
        if not model.is_local:
            fetch(model.source, patterns, model.name, callback, budget)


def preload_family(catalog: Catalog, family: str, callback: Callback | None = None,
                   budget: int | None = None) -> list[str]:
    """Fetch every hub model of `family` (its teachers and their students) before a public studio serves it, which
    then downloads nothing on a visitor's request; returns the names fetched or found."""
    names = [t.name for t in catalog.teachers() if t.family == family]
    names += [s.name for t in names for s in catalog.students_of(t)]
    for name in names:
        ensure_downloaded(name, catalog, callback, budget)
    return names
