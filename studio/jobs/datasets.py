"""Uploaded datasets: an imagefolder zip, unpacked into a job's folder only when it is safe and within the limits."""

import zipfile
import zlib
from pathlib import Path

from studio.budget import JobLimits, size_text
from studio.jobs.store import JobError

MAX_ZIP_MEMBERS = 100_000


def _open_zip(upload: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError):
        raise JobError(f"data: the upload {Path(upload).name} is not a valid zip file; upload a .zip in the "
                       "imagefolder layout") from None


def unpacked_bytes(upload: Path) -> int:
    """What a zip unpacks to, read from its central directory (nothing is extracted): the disk budget counts it."""
    with _open_zip(upload) as archive:
        return sum(m.file_size for m in archive.infolist())


def extract_dataset_zip(upload: Path, dest: Path, limits: JobLimits = JobLimits()) -> Path:
    """Unpack an uploaded imagefolder zip into `dest`; refuses unsafe, oversized, bomb-like or damaged archives.

    Returns the folder holding metadata.jsonl (the zip's root or its single top folder).
    """
    with _open_zip(upload) as archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise JobError(f"data: the zip holds {len(members)} entries; the most allowed is {MAX_ZIP_MEMBERS}")
        total, packed = sum(m.file_size for m in members), sum(m.compress_size for m in members)
        if total > limits.max_zip_bytes:
            raise JobError(f"data: the zip unpacks to {size_text(total)}; at most "
                           f"{size_text(limits.max_zip_bytes)} is allowed")
        if total > limits.max_zip_ratio * max(packed, 1) and total > 1024**2:
            raise JobError(f"data: the zip unpacks to {total / max(packed, 1):.0f} times its size; at most "
                           f"{limits.max_zip_ratio:.0f} times is allowed (images barely compress; is it a zip bomb?)")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for member in members:
            target = (dest / member.filename).resolve()
            if not target.is_relative_to(root) or member.filename.startswith("/"):
                raise JobError(f"data: the zip entry {member.filename!r} points outside the archive; refused")
        try:
            archive.extractall(dest)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:  # a bad CRC, a cut file
            raise JobError(f"data: the zip is damaged ({error}); zip the folder again and upload it") from None
    candidates = [dest] + [p for p in dest.iterdir() if p.is_dir()]
    for folder in candidates:
        if (folder / "metadata.jsonl").is_file():
            return folder
    raise JobError("data: the zip has no metadata.jsonl (at its root or in one top folder); the imagefolder layout needs "
                   "one line per image with file_name and text")


def place_shards(upload: Path, dest: Path, limits: JobLimits = JobLimits()) -> Path:
    """An uploaded webdataset shard (.tar), or a tar whose members are shards, as a folder of shards in `dest`. The
    trainer streams the shards' members without unpacking them; a tar of shards is unpacked, its members as plain
    files by their base names only."""
    import shutil
    import tarfile

    size = Path(upload).stat().st_size
    if size > limits.max_zip_bytes:
        raise JobError(f"data: the upload is {size_text(size)}; at most {size_text(limits.max_zip_bytes)} is allowed")
    try:
        with tarfile.open(upload, "r:") as archive:  # uncompressed only: no gzip bomb
            members = archive.getmembers()
            inner = [m for m in members if m.isfile() and m.name.endswith(".tar")]
            dest.mkdir(parents=True, exist_ok=True)
            if inner and len(inner) == len([m for m in members if m.isfile()]):
                if len(inner) > MAX_ZIP_MEMBERS:
                    raise JobError(f"data: the tar holds {len(inner)} shards; the most allowed is {MAX_ZIP_MEMBERS}")
                for number, member in enumerate(sorted(inner, key=lambda m: m.name)):
                    with archive.extractfile(member) as source, open(dest / f"{number:05d}.tar", "wb") as target:
                        shutil.copyfileobj(source, target)
                return dest
    except (tarfile.TarError, OSError) as error:
        raise JobError(f"data: the upload is not a readable tar file ({error}); upload webdataset shards") from None
    shutil.copyfile(upload, dest / "00000.tar")  # one shard, streamed as it is
    return dest
