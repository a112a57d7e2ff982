"""Hosting the studio: local (one trusted user) or public (visitors kept apart, with quotas).

Who a visitor is, in public mode, first match wins:
  1. their Hugging Face account, when they logged in (OAuth on a Space, only with `--sign-in`);
  2. the `X-Studio-Visitor` header: an API client's secret token (16-128 letters, digits, '-' or '_');
  3. the `studio_visitor` cookie the app sets on a browser's first visit (it survives reloads);
  4. the page session, when cookies are off (its work is then reachable until the page is closed).
A token names a workspace; whoever holds it sees that work, so it is kept secret like a password.

An MCP call is relayed by gradio through one internal client shared by every MCP
caller, so its cookies and session stand for nobody: an MCP caller is known by
its header alone, and one without it is refused with a message saying how to
send it.

Where a visitor is (their client address) is read only where it is real: the
socket's peer, or with `--proxy-hops N` (on a Space: 1) the address the N-th
trusted proxy from the app wrote into X-Forwarded-For.
"""

import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass

import gradio as gr
import psutil

from studio.budget import GB, JobLimits
from studio.jobs.cpu import CpuBudget, machine_threads
from studio.models.catalog import Catalog
from studio.models.loading import ModelUnavailableError, check_at_hand
from studio.options import check_fields, option

HEADER = "x-studio-visitor"
MCP_CLIENT = ("x-gradio-user", "mcp")  # the header gradio's MCP relay sends on every call it makes
MCP_PATH = "/gradio_api/mcp"
MCP_NEEDS_HEADER = ("visitor: an MCP call to this public studio must carry an X-Studio-Visitor header, a secret "
                    "token of 16-128 letters, digits, '-' or '_' that names your workspace (e.g. from "
                    "secrets.token_urlsafe(32)); add it under `headers` in your MCP client's server entry")
RELAYED_FOR = "x-studio-relayed-for"  # the MCP caller's address, as the MCP door saw it, signed for the relay
_RELAY_KEY = secrets.token_bytes(32)  # per process: only this server's MCP door can vouch for an address
OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")
COOKIE = "studio_visitor"
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
COOKIE_MAX_AGE = 90 * 24 * 3600


@dataclass(frozen=True)
class Hosting:
    """How the app is hosted; every quota is a flag (`python app.py --help`) and a STUDIO_<NAME> variable."""

    public: bool = option(bool(os.environ.get("SPACE_ID")), "keep visitors apart and apply the quotas below "
                          "(default: on when the SPACE_ID variable is set, as on a Hugging Face Space)")
    max_jobs_per_visitor: int = option(1, "public: jobs one visitor may run at once", min=1)
    max_jobs: int = option(max(1, (os.cpu_count() or 2) // 2), "public: jobs running at once in all "
                           "(half the cores by default, so generation keeps the rest)", min=1)
    max_steps: int = option(2000, "public: training steps per job (distillation, DreamBooth)", min=1)
    max_batch_size: int = option(16, "public: training batch size", min=1)
    max_class_images: int = option(100, "public: DreamBooth class images per job", min=0)
    max_eval_images: int = option(100, "public: evaluation images per model", min=1)
    max_photos: int = option(20, "public: DreamBooth photos per upload", min=1)
    max_photo_mb: float = option(10.0, "public: size of one photo (MB)", above=0)
    max_zip_mb: float = option(1024.0, "public: a dataset zip, unpacked (MB)", above=0)
    max_zip_ratio: float = option(100.0, "unpacked / packed size of a dataset zip (both modes)", above=1)
    visitor_disk_gb: float = option(2.0, "public: what one visitor's jobs and images may hold (GB)", above=0)
    expire_hours: float = option(24.0, "public: jobs, uploads and images unchanged this long are deleted", above=0)
    max_queued_per_visitor: int = option(2, "public: requests one visitor may have waiting or running at once",
                                         min=1)
    max_request_cost: float = option(8.0, "public: what one Compare or img2img request may cost, in teacher images "
                                     "with `paper` at the model's size (models x recipes x steps x guidance batch "
                                     "x pixels)", above=0)
    safety_checker: bool | None = option(None, "run the family's safety checker on every image shown or returned "
                                         "(default: on in public mode, off locally; the toy world has none)")
    model_memory_gb: float = option(round(psutil.virtual_memory().total / GB / 2, 1), "memory the loaded models may "
                                    "hold (GB; default: half the machine's, the rest for Python, the page and "
                                    "jobs); least recently used models are evicted to make room", above=0)
    threads: int = option(machine_threads(), "CPU threads the app and its jobs share (default: the cores this "
                          "process may use); a job gets an equal part, generation what running jobs leave", min=1)
    max_upload_mb: int = option(200, "larger uploads are refused before they reach the app (both modes)", min=1)
    sign_in: bool = option(bool(os.environ.get("OAUTH_CLIENT_ID")), "public: a 'Sign in with Hugging Face' button, so "
                           "a visitor's work follows their account across browsers (default: on where the Space "
                           "has hf_oauth: true, which sets OAUTH_CLIENT_ID)")

    allow_download: bool = option(False, "public: let a visitor's request download the family's models from the hub "
                                  "(default: off; only models on this server's disk, shipped or preloaded, are "
                                  "served)")
    preload: bool = option(False, "public: download the family's models at start, before serving (the operator's "
                           "allowance; visitors' requests still download nothing without --allow-download)")
    download_disk_gb: float = option(40.0, "public, with --allow-download: what the Hugging Face cache may hold "
                                     "(GB); a download past it is refused", above=0)
    max_queued_per_address: int = option(4, "public: requests one client address may have waiting or running at "
                                         "once, whatever visitor tokens it sends", min=1)
    proxy_hops: int = option(1 if os.environ.get("SPACE_ID") else 0, "public: trusted proxies in front of the app; "
                             "the client address is the one the outermost wrote into X-Forwarded-For (0: the "
                             "socket's peer; default: 1 on a Space, else 0)", min=0)
    max_mcp_connections: int = option(64, "public: open MCP connections in all", min=1)
    max_mcp_connections_per_visitor: int = option(4, "public: open MCP connections per visitor (token, else client "
                                                  "address)", min=1)

    def check(self) -> None:
        check_fields(self)
        if self.public and self.sign_in:
            check_oauth()

    def limits(self) -> JobLimits:
        """The job limits: the public quotas, or the local defaults (no caps) with the upload checks."""
        if not self.public:
            return JobLimits(max_zip_ratio=self.max_zip_ratio)
        return JobLimits(
            max_running=self.max_jobs_per_visitor, max_running_total=self.max_jobs, max_steps=self.max_steps,
            max_batch_size=self.max_batch_size, max_processes=1, max_class_images=self.max_class_images,
            max_eval_images=self.max_eval_images, max_photos=self.max_photos,
            max_photo_bytes=int(self.max_photo_mb * 1024**2), max_zip_bytes=int(self.max_zip_mb * 1024**2),
            max_zip_ratio=self.max_zip_ratio, max_owner_bytes=int(self.visitor_disk_gb * GB))

    @property
    def screens_images(self) -> bool:
        return self.public if self.safety_checker is None else self.safety_checker

    @property
    def cpu(self) -> CpuBudget:
        return CpuBudget(self.threads)

    @property
    def expire_seconds(self) -> float | None:
        return self.expire_hours * 3600 if self.public else None


def check_oauth() -> None:
    """Public sign-in needs gradio's real OAuth: on a Space (SYSTEM=spaces, SPACE_ID), with every OAuth variable the
    Space sets for hf_oauth. Without the secret gradio signs sessions with a key anyone can derive, and off a Space it
    mocks sign-in as the server owner's account for every visitor, so either is refused at start."""
    import gradio.oauth
    from gradio.utils import get_space

    missing = [name for name in OAUTH_VARIABLES if not getattr(gradio.oauth, name, None) and not os.environ.get(name)]
    if not get_space():
        missing.insert(0, "SYSTEM=spaces and SPACE_ID (off a Space gradio mocks sign-in as one account)")
    if missing:
        raise ValueError(f"--sign-in: needs a real OAuth set-up (a Space with hf_oauth: true); missing: "
                         f"{', '.join(missing)}. Start without --sign-in (visitors keep their work by cookie)")


def public_catalog(catalog: Catalog, family: str, allow_download: bool) -> Catalog:
    """What a public studio serves: the family's teachers and their students, and without `allow_download` only
    those on this server's disk (a local folder, or a hub model in the Hugging Face cache); a visitor's own students
    join per workspace (`Studio.current_catalog`). Every endpoint looks models up here, so nothing else can be
    loaded, trained from or downloaded on a visitor's request."""
    def at_hand(name: str) -> bool:
        try:
            check_at_hand(name, catalog)
            return True
        except ModelUnavailableError:
            return False

    teachers = [e for e in catalog.teachers() if e.family == family and (allow_download or at_hand(e.name))]
    students = [s for t in teachers for s in catalog.students_of(t.name) if allow_download or at_hand(s.name)]
    return Catalog([*teachers, *students], catalog.families)


# An absolute path of two or more parts (not a URL's, not a hub id's "owner/name").
_SERVER_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"():,;]+){2,}/?")


def without_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part: a message for a visitor names the file, never where the
    server keeps it (a visitor's folder is named by their key)."""
    return _SERVER_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def _oauth_username(request: gr.Request) -> str | None:
    """The logged-in Hugging Face user (gradio keeps OAuth in the session), or None."""
    raw = getattr(request, "request", None)
    try:
        info = raw.session.get("oauth_info") if raw is not None else None
    except (AssertionError, AttributeError):  # no SessionMiddleware: OAuth is not set up
        return None
    if not info or (info.get("expires_at") or float("inf")) < time.time():
        return None
    return (info.get("userinfo") or {}).get("preferred_username")


def is_mcp(request: gr.Request) -> bool:
    """A call through gradio's MCP server: relayed by its internal client, or made by it directly."""
    if request.headers.get(MCP_CLIENT[0]) == MCP_CLIENT[1]:
        return True
    raw = request.request if isinstance(request, gr.Request) else request  # gradio's MCP fast path hands starlette's
    scope = getattr(raw, "scope", None) or {}
    return str(scope.get("path", "")).startswith(MCP_PATH)


def identity(request: gr.Request | None, sign_in: bool = False) -> str | None:
    """Who is asking (see the module's docstring); None without a request (a direct call). `sign_in`: the host has
    real OAuth, so a signed-in session names the visitor."""
    if request is None:
        return None
    mcp = is_mcp(request)
    user = _oauth_username(request) if sign_in and not mcp else None
    if user:
        return f"hf:{user}"
    header = request.headers.get(HEADER)
    if header is not None:
        if not TOKEN.fullmatch(header):
            raise ValueError("X-Studio-Visitor header: must be 16-128 letters, digits, '-' or '_' (a secret "
                             "token you keep, e.g. from secrets.token_urlsafe(32))")
        return f"token:{header}"
    if mcp:  # the relay's cookie and session are shared by every MCP caller
        raise ValueError(MCP_NEEDS_HEADER)
    cookie = request.cookies.get(COOKIE)
    if cookie and TOKEN.fullmatch(cookie):
        return f"token:{cookie}"
    session = getattr(request, "session_hash", None)
    return f"session:{session}" if session else None


def forwarded_address(forwarded_for: str | None, peer: str | None, proxy_hops: int) -> str | None:
    """The caller's address: the socket's peer, or what the outermost of `proxy_hops` trusted proxies wrote into
    X-Forwarded-For (each proxy appends the address it saw; anything before that is the caller's own word)."""
    if not proxy_hops:
        return peer
    hops = [part.strip() for part in (forwarded_for or "").split(",") if part.strip()]
    return hops[-proxy_hops] if len(hops) >= proxy_hops else None


def relay_signature(address: str) -> str:
    return hmac.new(_RELAY_KEY, address.encode(), "sha256").hexdigest()[:32]


def client_address(request: gr.Request, proxy_hops: int) -> str | None:
    """Where the caller is, where that is real (see the module's docstring); for a call relayed from MCP, the
    address the MCP door saw and signed."""
    relayed = request.headers.get(RELAYED_FOR)
    if relayed and is_mcp(request):
        address, _, signature = relayed.rpartition(" ")
        if hmac.compare_digest(signature, relay_signature(address)):
            return address
    client = getattr(request, "client", None)
    return forwarded_address(request.headers.get("x-forwarded-for"), getattr(client, "host", None), proxy_hops)
