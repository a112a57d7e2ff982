"""Sign-in on a Space: a visitor signed in with Hugging Face keeps one workspace in any browser; guests keep theirs
by cookie. Gradio keeps the OAuth profile in the request's session; these requests carry one, as on a Space."""

import time

import gradio as gr
import pytest
from starlette.requests import Request

from studio.ui.hosting import COOKIE, OAUTH_VARIABLES, Hosting, identity
from studio.ui.workspaces import Workspaces


def request(cookie: str | None = None, user: str | None = None, expires_in: float = 3600, headers=()) -> gr.Request:
    session = {}
    if user:
        session["oauth_info"] = {"access_token": "t", "scope": "openid profile", "expires_at": time.time() + expires_in,
                                 "userinfo": {"name": user.title(), "preferred_username": user}}
    headers = [*headers, *([(b"cookie", f"{COOKIE}={cookie}".encode())] if cookie else [])]
    return gr.Request(request=Request({"type": "http", "headers": headers, "session": session}))


def signed_in(request: gr.Request) -> str | None:
    return identity(request, sign_in=True)


def test_a_signed_in_visitor_has_one_workspace_in_every_browser_and_guests_keep_theirs(tmp_path):
    laptop, phone = "l" * 32, "p" * 32  # the cookie each browser got
    assert signed_in(request(laptop, user="ada")) == signed_in(request(phone, user="ada")) == "hf:ada"
    assert signed_in(request(laptop)) == f"token:{laptop}" != signed_in(request(phone))
    assert signed_in(request(laptop, user="ada", expires_in=-1)) == f"token:{laptop}"  # an expired sign-in: a guest

    workspaces = Workspaces(tmp_path, public=True)
    on_laptop = workspaces.get(signed_in(request(laptop, user="ada")))
    assert workspaces.get(signed_in(request(phone, user="ada"))).root == on_laptop.root
    assert workspaces.get(signed_in(request(laptop))).root != on_laptop.root  # the guest's work stays the guest's
    assert workspaces.get(signed_in(request(phone, user="bob"))).root != on_laptop.root


def test_a_session_names_nobody_where_the_host_has_no_sign_in():
    """Without real OAuth (no --sign-in) a session cookie that says 'ada' is not believed: the guest's cookie counts."""
    laptop = "l" * 32
    assert identity(request(laptop, user="ada")) == f"token:{laptop}"


def test_the_mcp_relay_cookie_and_session_stand_for_nobody():
    relay = [(b"x-gradio-user", b"mcp")]
    shared = "r" * 32  # the cookie the relay picked up once, sent with every caller's call
    with pytest.raises(ValueError, match="MCP call to this public studio must carry an X-Studio-Visitor header"):
        identity(request(shared, headers=relay))
    with pytest.raises(ValueError, match="X-Studio-Visitor header"):
        signed_in(request(shared, user="ada", headers=relay))
    token = "t" * 32
    assert identity(request(shared, headers=[*relay, (b"x-studio-visitor", token.encode())])) == f"token:{token}"


def test_public_sign_in_is_refused_at_start_without_a_real_oauth_set_up(monkeypatch):
    import gradio.oauth

    for name in OAUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(gradio.oauth, name, None, raising=False)
    monkeypatch.delenv("SYSTEM", raising=False)
    with pytest.raises(ValueError, match=r"--sign-in: needs a real OAuth set-up .*SYSTEM=spaces.*OAUTH_CLIENT_SECRET"):
        Hosting(public=True, sign_in=True).check()
    Hosting(public=False, sign_in=True).check()  # locally sign-in is never used
    Hosting(public=True, sign_in=False).check()
    # On a Space with hf_oauth every variable is set: accepted. The secret alone missing: refused.
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "acme/studio")
    for name in OAUTH_VARIABLES:
        monkeypatch.setenv(name, "x")
    Hosting(public=True, sign_in=True).check()
    monkeypatch.delenv("OAUTH_CLIENT_SECRET")
    with pytest.raises(ValueError, match=r"missing: OAUTH_CLIENT_SECRET\."):
        Hosting(public=True, sign_in=True).check()


def test_the_public_page_has_a_sign_in_button_where_oauth_is_set_up(tiny_catalog, tmp_path, monkeypatch):
    import gradio.oauth

    from studio.ui.app import build_app

    # A Space with hf_oauth: true (gradio reads the OAuth variables when it is imported, so both are set).
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "acme/studio")
    for name, value in zip(OAUTH_VARIABLES, ["id", "secret", "openid profile", "https://huggingface.co"]):
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(gradio.oauth, name, value, raising=False)
    signed = build_app(tiny_catalog, "tiny", data_dir=tmp_path / "a", hosting=Hosting(public=True, sign_in=True))
    guests_only = build_app(tiny_catalog, "tiny", data_dir=tmp_path / "b", hosting=Hosting(public=True, sign_in=False))
    local = build_app(tiny_catalog, "tiny", data_dir=tmp_path / "c", hosting=Hosting(public=False, sign_in=True))

    def buttons(app):
        return [block for block in app.blocks.values() if isinstance(block, gr.LoginButton)]

    assert len(buttons(signed)) == 1 and not buttons(guests_only) and not buttons(local)
    assert any(r.path == "/login/huggingface" for r in signed.app.routes)


def test_the_space_asks_for_oauth():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "hf_oauth: true" in readme.split("---")[1].splitlines()  # the Space's front matter
