"""`python -m studio data shards`: an imagefolder or a URL list (through img2dataset, against a local HTTP server
with broken links and files that are not images) into webdataset shards the trainers stream."""

import csv
import functools
import http.server
import json
import threading
from itertools import islice

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.kinds.data import DataError
from studio.kinds.shards import ShardData, make_shards


@pytest.fixture
def image_server(tmp_path):
    """A local web server with 44 JPEGs of assorted sizes and 3 files that are not images."""
    root = tmp_path / "www"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(44):
        size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"{i}.jpg")
    for i in range(3):
        (root / f"text{i}.jpg").write_text("<html>not an image</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_url_list_becomes_shards_of_the_good_images_and_the_rest_is_counted(image_server, tmp_path):
    rows = [(f"{image_server}/{i}.jpg", f"picture {i}") for i in range(44)]
    rows += [(f"{image_server}/missing{i}.jpg", f"gone {i}") for i in range(3)]  # broken links (404)
    rows += [(f"{image_server}/text{i}.jpg", f"text {i}") for i in range(3)]  # not images
    urls = tmp_path / "urls.csv"
    with open(urls, "w", newline="") as file:
        csv.writer(file).writerows([("url", "caption"), *rows])
    assert main(["data", "shards", "--source", str(urls), "--out", str(tmp_path / "shards"), "--resolution", "32",
                 "--per-shard", "20", "--threads", "4"]) == 0
    counts = [json.loads(p.read_text()) for p in (tmp_path / "shards").glob("*_stats.json")]
    assert sum(c["successes"] for c in counts) == 44 and sum(c["count"] for c in counts) == 50
    data = ShardData(str(tmp_path / "shards"), 32)
    samples = list(islice(data.stream(0), 44))
    assert {caption for _, caption in samples} == {f"picture {i}" for i in range(44)}
    assert all(pixels.shape == (3, 32, 32) for pixels, _ in samples)


def test_an_imagefolder_becomes_shards_and_bad_inputs_are_named(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    rng = np.random.default_rng(4)
    lines = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"thing {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    counts = make_shards(str(folder), tmp_path / "shards", 32, per_shard=5)
    assert counts == {"written": 12, "failed": 0, "shards": 3}
    assert {c for _, c in islice(ShardData(str(tmp_path / "shards"), 32).stream(0), 12)} == \
        {f"thing {i}" for i in range(12)}
    with pytest.raises(DataError, match="already holds shards"):
        make_shards(str(folder), tmp_path / "shards", 32)
    no_captions = tmp_path / "urls.csv"
    no_captions.write_text("url\nhttp://127.0.0.1:9/a.jpg\n")
    with pytest.raises(DataError, match=r"no column 'caption' \(--caption-column\); its columns: url"):
        make_shards(str(no_captions), tmp_path / "none", 32)


def test_the_train_tab_takes_a_path_in_a_local_studio_only(tiny_catalog, tmp_path):
    from studio.jobs import JobManager
    from studio.ui.train import train_start

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(b"junk" * 100)
    jobs = JobManager(tmp_path / "jobs")

    def start(path, allow_paths):
        return train_start(jobs, tiny_catalog, "tiny-teacher", "tiny", "1", False, True, "path", None, 10, 1e-4, 1.0,
                           1.0, 1.0, 2, 1, str(path), allow_paths=allow_paths)

    with pytest.raises(ValueError, match=r"data: must be one of .*upload, got 'path'"):
        start(shards, allow_paths=False)  # public mode: no server paths
    with pytest.raises(DataError, match=r"shard .*00000.tar is not a readable tar file"):
        start(shards, allow_paths=True)  # the trainer's own checks, before a job folder is made
    with pytest.raises(ValueError, match="data path: empty"):
        start("  ", allow_paths=True)
    assert not jobs.root.exists() or not any(jobs.root.iterdir())


def test_an_uploaded_imagefolder_is_read_as_one_whatever_else_it_holds(tmp_path):
    """A visitor's zip unpacks with metadata.jsonl (the upload check needs it): a parquet, a feature index or tar
    files beside it do not turn it into a datasets table, a cache or shards the trainer would read instead."""
    from studio.kinds.data import ImageFolderData
    from studio.kinds.sources import open_source

    folder = tmp_path / "upload"
    folder.mkdir()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(folder / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a thing"}) + "\n")
    (folder / "table.parquet").write_bytes(b"PAR1")
    (folder / "features.json").write_text("{}")
    (folder / "00000.tar").write_bytes(b"x")
    assert isinstance(open_source(str(folder), 32), ImageFolderData)


@pytest.mark.slow
def test_a_visitor_uploads_shards_as_a_tar_and_a_job_streams_them(tiny_catalog, tmp_path):
    """Public mode (no paths): a webdataset shard, or a tar of shards, uploaded; the job streams them from its own
    folder. A tar that is not one is named."""
    import tarfile

    import webdataset as wds

    from studio.jobs import JobError, JobManager
    from studio.ui.train import train_start

    rng = np.random.default_rng(5)
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"{shard:05d}.tar")) as sink:
            for i in range(4):
                picture = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
                sink.write({"__key__": f"{shard}{i:03d}", "png": picture, "txt": f"shape {shard}-{i}"})
    with tarfile.open(tmp_path / "shards.tar", "w") as bundle:
        for shard in range(2):
            bundle.add(tmp_path / f"{shard:05d}.tar", arcname=f"part/{shard:05d}.tar")
    (tmp_path / "junk.tar").write_bytes(b"no tar here" * 50)
    jobs = JobManager(tmp_path / "jobs")

    def start(upload):
        return train_start(jobs, tiny_catalog, "tiny-teacher", "tiny", "1", False, True, "upload", str(upload), 2,
                           1e-4, 1.0, 1.0, 1.0, 2, 1, "", allow_paths=False)[0]

    for upload, shards in ((tmp_path / "00000.tar", 1), (tmp_path / "shards.tar", 2)):
        job_id = start(upload)
        assert jobs.wait(job_id, timeout=240) == "finished", (jobs.folder(job_id) / "log.txt").read_text()
        assert len(list((jobs.folder(job_id) / "shards").glob("*.tar"))) == shards
    with pytest.raises(JobError, match="not a readable tar file"):
        start(tmp_path / "junk.tar")
