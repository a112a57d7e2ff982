"""A tiny local stand-in for the Hugging Face Hub, for tests (standard library only).

Every folder ``root/<owner>/<name>/`` is served as the model repo ``"<owner>/<name>"`` at revision ``"main"``
(commit ``COMMIT``); every file below it, subfolders included, is a repo file. It answers what
huggingface_hub 2.4 asks for (``hf_hub_download``, ``snapshot_download``, ``model_info``, ``list_repo_files``)
and so what ``DiffusionPipeline.from_pretrained(repo_id)`` needs:

- ``GET /api/models/<repo>[/revision/<rev>]``      model info (``sha``, ``siblings``)
- ``GET /api/models/<repo>/tree/<rev>[/<path>]``   file listing (``?recursive=true``)
- ``HEAD|GET /<repo>/resolve/<rev>/<path>``        file: ``X-Repo-Commit``, ``ETag`` (git blob sha1),
  ``Content-Length``, ``Accept-Ranges``; ``Range`` answered with 206. No ``X-Xet-*`` header, so no Xet.

Errors carry ``X-Error-Code`` / ``X-Error-Message`` as the Hub's do, which is what ``hf_raise_for_status``
reads: a repo not on disk (or in ``private``) is ``RepoNotFound`` (401 without a token, 404 with one);
a repo in ``gated`` lists its files but refuses them with ``GatedRepo`` (401/403); a missing file is
``EntryNotFound`` (404, with ``X-Repo-Commit``); another revision is ``RevisionNotFound``.

``cut_after[path_in_repo] = n`` makes the next GET of that file send n bytes of the body and drop the
connection. huggingface_hub retries within the same call (after 1 s) with ``Range: bytes=k-`` (recorded in
``range_requests``), k being what it took in whole ``constants.DOWNLOAD_CHUNK_SIZE`` chunks (10 MiB; bytes
of a partial chunk are lost); with k = 0 the retry is a plain GET again. Patch the chunk size in tests.

    with HubServer(tmp_path / "hub") as hub:      # tmp_path/hub/owner/name/model_index.json, unet/...
        hub.point_hub_here(monkeypatch, cache_dir=tmp_path / "cache")   # or set HF_ENDPOINT=hub.url
        ...                                        # before huggingface_hub is first imported
"""

import hashlib
import json
import re
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+)|/tree/([^/]+)(?:/(.*))?)?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.gated: set[str] = set()       # repo ids: listed, but files refused (GatedRepo)
        self.private: set[str] = set()     # repo ids: answered as if absent (RepoNotFound)
        self.cut_after: dict[str, int] = {}  # path_in_repo -> bytes sent before the next GET is dropped
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.range_requests: list[tuple[str, str]] = []         # (path_in_repo, Range header)
        self.errors: list[str] = []  # tracebacks from the handler (kept off stderr)
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: self.errors.append(traceback.format_exc())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def point_hub_here(self, monkeypatch, cache_dir: Path | None = None) -> None:
        """Aim an already imported huggingface_hub at this server (it reads HF_ENDPOINT at import only)."""
        import huggingface_hub.hf_api as hf_api
        from huggingface_hub import constants

        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        template = self.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)  # behind huggingface_hub.model_info & co
        if cache_dir is not None:
            monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
            monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))

    def repo_files(self, repo_id: str) -> list[str]:
        folder = self.root / repo_id
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def repo_exists(self, repo_id: str) -> bool:
        return repo_id not in self.private and (self.root / repo_id).is_dir() and ".." not in repo_id


def _make_handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a dropped download closes cleanly

        def log_message(self, format, *args):  # quiet
            pass

        def do_HEAD(self):
            self._dispatch(body=False)

        def do_GET(self):
            self._dispatch(body=True)

        def _dispatch(self, body: bool) -> None:
            split = urlsplit(self.path)
            path, query = unquote(split.path), parse_qs(split.query)
            with hub.lock:
                hub.requests.append((self.command, path, self.headers.get("Range")))
            if path == "/api/agent-harnesses":  # fetched once a day by huggingface_hub's agent detection
                self._send(200, b'{"standardEnvVars": [], "harnesses": {}}', body)
            elif m := _API.match(path):
                repo_id, info_rev, tree_rev, sub = m.groups()
                if self._check(repo_id, info_rev or tree_rev or "main", files=False, body=body):
                    if tree_rev is None:
                        self._model_info(repo_id, body)
                    else:
                        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                        self._tree(repo_id, sub or "", recursive, body)
            elif m := _RESOLVE.match(path):
                repo_id, rev, file = m.groups()
                if self._check(repo_id, rev, files=True, body=body):
                    self._file(repo_id, file, body)
            else:
                self._error(404, None, "Not found", body)

        def _check(self, repo_id: str, rev: str, files: bool, body: bool) -> bool:
            authed = "authorization" in self.headers
            if not hub.repo_exists(repo_id):
                message = "Repository not found" if authed else "Invalid username or password."
                self._error(404 if authed else 401, "RepoNotFound", message, body)
            elif rev not in ("main", COMMIT):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", body, commit=False)
            elif files and repo_id in hub.gated:
                message = (f"Access to model {repo_id} is restricted and you are not in the authorized list."
                           if authed else f"Access to model {repo_id} is restricted. You must have access to it "
                           "and be authenticated to access it. Please log in.")
                self._error(403 if authed else 401, "GatedRepo", message, body)
            else:
                return True
            return False

        def _error(self, status, code, message, body, commit=True) -> None:
            headers = {"X-Error-Message": message} | ({"X-Error-Code": code} if code else {})
            if commit and code in ("EntryNotFound", "GatedRepo"):
                headers["X-Repo-Commit"] = COMMIT
            self._send(status, json.dumps({"error": message}).encode(), body, "application/json", headers)

        def _send(self, status, data: bytes, body: bool, ctype="application/json", headers=None, length=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data) if length is None else length))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _model_info(self, repo_id: str, body: bool) -> None:
            info = {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": COMMIT,
                    "private": False, "gated": "auto" if repo_id in hub.gated else False, "disabled": False,
                    "tags": [], "library_name": "diffusers",
                    "siblings": [{"rfilename": f} for f in hub.repo_files(repo_id)]}
            self._send(200, json.dumps(info).encode(), body)

        def _tree(self, repo_id: str, sub: str, recursive: bool, body: bool) -> None:
            folder = hub.root / repo_id
            base = folder / sub
            if ".." in sub or not base.is_dir():
                return self._error(404, "EntryNotFound", f"{sub} does not exist on \"main\"", body)
            entries = []
            for p in sorted(base.rglob("*") if recursive else base.iterdir()):
                rel = p.relative_to(folder).as_posix()
                if p.is_dir():
                    entries.append({"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(),
                                    "size": 0, "path": rel})
                else:
                    data = p.read_bytes()
                    entries.append({"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": rel})
            self._send(200, json.dumps(entries).encode(), body)

        def _file(self, repo_id: str, file: str, body: bool) -> None:
            path = hub.root / repo_id / file
            if ".." in file.split("/") or not path.is_file():
                return self._error(404, "EntryNotFound", "Entry not found", body)
            data = path.read_bytes()
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes"}
            status, start, end = 200, 0, len(data)
            if body and (range_header := self.headers.get("Range")):
                with hub.lock:
                    hub.range_requests.append((file, range_header))
                m = _RANGE.match(range_header.strip())
                if m and m.group(1):
                    start, end = int(m.group(1)), min(int(m.group(2) or len(data) - 1) + 1, len(data))
                elif m and m.group(2):
                    start = max(len(data) - int(m.group(2)), 0)
                if not m or start >= end:
                    headers = {"Content-Range": f"bytes */{len(data)}"}
                    return self._send(416, b"", body, "text/plain", headers)
                status, headers["Content-Range"] = 206, f"bytes {start}-{end - 1}/{len(data)}"
            with hub.lock:
                cut = hub.cut_after.pop(file, None) if body else None
            if cut is None:
                return self._send(status, data[start:end], body, "application/octet-stream", headers)
            self._send(status, b"", False, "application/octet-stream", headers, length=end - start)
            self.wfile.write(data[start:start + cut])  # then drop the connection mid-body
            self.wfile.flush()
            self.close_connection = True

    return Handler
