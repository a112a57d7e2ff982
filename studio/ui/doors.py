"""What stands at the server's doors in public mode (ASGI middleware): the visitor cookie, the MCP door, and the
count of open result streams (who is still listening)."""

import json
import os
import secrets
import time

from studio.ui.hosting import (COOKIE, COOKIE_MAX_AGE, HEADER, MCP_CLIENT, MCP_PATH, RELAYED_FOR, TOKEN, Hosting,
                               forwarded_address, relay_signature)


class VisitorCookie:
    """ASGI middleware: a request for the page or its config without the visitor cookie gets one (a random token)."""

    def __init__(self, app, secure: bool = False):
        self.app = app
        # In a Space the app runs in an iframe on huggingface.co: only a partitioned, secure cookie is kept there.
        self.attributes = f"Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; " + \
            ("SameSite=None; Secure; Partitioned" if secure else "SameSite=Lax")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or not _is_entry(scope["path"]) or _has_cookie(scope) \
                or _from_mcp_relay(scope):
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


def _from_mcp_relay(scope) -> bool:
    """Gradio's MCP relay: a cookie set on it would stand for every MCP caller."""
    return (MCP_CLIENT[0].encode(), MCP_CLIENT[1].encode()) in scope["headers"]


def _has_cookie(scope) -> bool:
    return any(name == b"cookie" and f"{COOKIE}=".encode() in value for name, value in scope["headers"])


class McpDoor:
    """ASGI middleware on the MCP server's paths (public mode): a body over the upload limit is refused before it is
    read (gradio would write an inline file to disk first); open connections are bounded per visitor (their token,
    else their address) and in all; the caller's address is handed to the relay, signed."""

    def __init__(self, app, hosting: "Hosting"):
        self.app, self.hosting = app, hosting
        self.max_body = int(hosting.max_upload_mb * 1024**2 * 4 / 3) + 64 * 1024  # base64 of the largest upload
        self.open: dict[str, int] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(MCP_PATH):
            return await self.app(scope, receive, send)
        headers = [(k, v) for k, v in scope["headers"] if k != RELAYED_FOR.encode()]
        found = dict(headers)
        peer = (scope.get("client") or (None,))[0]
        address = forwarded_address(found.get(b"x-forwarded-for", b"").decode("latin-1"), peer, self.hosting.proxy_hops)
        if address:
            headers.append((RELAYED_FOR.encode(), f"{address} {relay_signature(address)}".encode()))
        scope = {**scope, "headers": headers}
        length = found.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            return await _refuse(send, 413, f"upload: the request is {int(length) / 1024**2:.1f} MB; this studio "
                                            f"takes uploads up to {self.hosting.max_upload_mb} MB")
        token = found.get(HEADER.encode(), b"").decode("latin-1")
        visitor = f"token:{token}" if TOKEN.fullmatch(token) else f"address:{address}"
        if sum(self.open.values()) >= self.hosting.max_mcp_connections:
            return await _refuse(send, 429, f"MCP: {self.hosting.max_mcp_connections} connections are open, the "
                                            "most this studio serves at once; try again shortly")
        if self.open.get(visitor, 0) >= self.hosting.max_mcp_connections_per_visitor:
            return await _refuse(send, 429, f"MCP: you have {self.open[visitor]} connections open; each visitor "
                                            f"may have {self.hosting.max_mcp_connections_per_visitor}. Close one")
        self.open[visitor] = self.open.get(visitor, 0) + 1
        try:
            await self.app(scope, _capped(receive, self.max_body), send)
        finally:
            self.open[visitor] -= 1
            if not self.open[visitor]:
                del self.open[visitor]


class BodyTooLarge(Exception):
    pass


def _capped(receive, limit: int):
    """`receive` that stops a body (sent without a length) once it passes `limit` bytes."""
    seen = 0

    async def capped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"upload: the request passed {limit / 1024**2:.0f} MB")
        return message
    return capped


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Listeners:
    """Who is listening for results: the open result streams, by session (/queue/data, the page's and
    gradio_client's) or by event (/call/API/EVENT, the plain API's; its events' session is their id). Gradio drops
    an event whose stream closes, but runs one whose caller never opened a stream; public handlers ask here first."""

    def __init__(self):
        self.open: dict[str, int] = {}

    def listening(self, key: str | None, wait: float = 0.0) -> bool:
        """Whether a stream for `key` is open, waiting up to `wait` seconds for one (a client opens it just after
        joining the queue)."""
        deadline = time.monotonic() + wait
        while not self.open.get(key or ""):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def middleware(self, app):
        async def counted(scope, receive, send):
            key = _stream_key(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
            if key is None:
                return await app(scope, receive, send)
            self.open[key] = self.open.get(key, 0) + 1
            try:
                await app(scope, receive, send)
            finally:
                self.open[key] -= 1
                if not self.open[key]:
                    del self.open[key]
        return counted


def _stream_key(scope) -> str | None:
    path = scope["path"]
    if path.endswith("/gradio_api/queue/data"):
        query = dict(part.partition("=")[::2] for part in scope.get("query_string", b"").decode().split("&"))
        return query.get("session_hash")
    parts = path.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-3] == "call" and "gradio_api" in parts:
        return parts[-1]
    return None


LISTENERS = Listeners()
LISTEN_SECONDS = 5.0  # how long a queued request's handler waits for its caller to listen (they join, then listen;
# a busy 2-core machine can take a second or more between the two)


def check_listening(public: bool, request) -> None:
    """Public mode: refuse to start work whose caller never opened a result stream (a plain API call that is never
    read); gradio itself drops work whose stream closes."""
    if public and request is not None and not LISTENERS.listening(request.session_hash, LISTEN_SECONDS):
        raise ValueError(f"request: nobody opened its result stream within {LISTEN_SECONDS:g} s, so it was dropped "
                         "without running; read the result (the GET that follows the POST) or use gradio_client")


def launch_options(hosting: Hosting) -> dict:
    """Keyword arguments for `Blocks.launch`: the upload cap, the page's CSS and, in public mode, the visitor cookie
    and the MCP door."""
    from starlette.middleware import Middleware

    from studio.ui.common import PAGE_CSS

    options = {"max_file_size": f"{hosting.max_upload_mb}mb", "css": PAGE_CSS}
    if hosting.public:
        options["app_kwargs"] = {"middleware": [Middleware(VisitorCookie, secure=bool(os.environ.get("SPACE_ID"))),
                                                Middleware(McpDoor, hosting=hosting),
                                                Middleware(LISTENERS.middleware)]}
    return options
