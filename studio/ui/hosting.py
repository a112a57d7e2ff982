"""Hosting the studio: local (one trusted user) or public (visitors kept apart, with quotas).

Who a visitor is, in public mode, first match wins:
  1. their Hugging Face account, when they logged in (OAuth on a Space);
  2. the `X-Studio-Visitor` header: an API client's secret token (16-128 letters, digits, '-' or '_');
  3. the `studio_visitor` cookie the app sets on a browser's first visit (it survives reloads);
  4. the page session, when cookies are off (its work is then reachable until the page is closed).
A token names a workspace; whoever holds it sees that work, so it is kept secret like a password.
"""

import os
import re
import secrets
import time
from dataclasses import dataclass

import gradio as gr
import psutil

from studio.budget import GB, JobLimits
from studio.cpu import CpuBudget, machine_threads
from studio.options import check_fields, option

HEADER = "x-studio-visitor"
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

    def check(self) -> None:
        check_fields(self)

    def limits(self) -> JobLimits:
        """The job limits: the public quotas, or the local defaults (no caps) with the upload checks."""
        if not self.public:
            return JobLimits(max_zip_ratio=self.max_zip_ratio)
        return JobLimits(
            max_running=self.max_jobs_per_visitor, max_running_total=self.max_jobs, max_steps=self.max_steps,
            max_batch_size=self.max_batch_size, max_class_images=self.max_class_images,
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


def identity(request: gr.Request | None) -> str | None:
    """Who is asking (see the module's docstring); None without a request (a direct call)."""
    if request is None:
        return None
    user = _oauth_username(request)
    if user:
        return f"hf:{user}"
    header = request.headers.get(HEADER)
    if header is not None:
        if not TOKEN.fullmatch(header):
            raise ValueError("X-Studio-Visitor header: must be 16-128 letters, digits, '-' or '_' (a secret "
                             "token you keep, e.g. from secrets.token_urlsafe(32))")
        return f"token:{header}"
    cookie = request.cookies.get(COOKIE)
    if cookie and TOKEN.fullmatch(cookie):
        return f"token:{cookie}"
    return f"session:{request.session_hash}" if request.session_hash else None


class VisitorCookie:
    """ASGI middleware: a request for the page or its config without the visitor cookie gets one (a random token)."""

    def __init__(self, app, secure: bool = False):
        self.app = app
        # In a Space the app runs in an iframe on huggingface.co: only a partitioned, secure cookie is kept there.
        self.attributes = f"Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; " + \
            ("SameSite=None; Secure; Partitioned" if secure else "SameSite=Lax")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or not _is_entry(scope["path"]) or _has_cookie(scope):
            return await self.app(scope, receive, send)
        cookie = f"{COOKIE}={secrets.token_urlsafe(32)}; {self.attributes}".encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _is_entry(path: str) -> bool:
    """The page itself or its config: what a browser and gradio_client fetch first."""
    return path.endswith("/") or path.endswith("/config")


def _has_cookie(scope) -> bool:
    return any(name == b"cookie" and f"{COOKIE}=".encode() in value for name, value in scope["headers"])


def launch_options(hosting: Hosting) -> dict:
    """Keyword arguments for `Blocks.launch`: the upload cap and, in public mode, the visitor cookie."""
    from starlette.middleware import Middleware

    options = {"max_file_size": f"{hosting.max_upload_mb}mb"}
    if hosting.public:
        options["app_kwargs"] = {"middleware": [Middleware(VisitorCookie, secure=bool(os.environ.get("SPACE_ID")))]}
    return options
