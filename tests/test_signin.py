"""Sign-in on a Space: a visitor signed in with Hugging Face keeps one workspace in any browser; guests keep theirs
by cookie. Gradio keeps the OAuth profile in the request's session; these requests carry one, as on a Space."""

import time

import gradio as gr
from starlette.requests import Request

from studio.ui.hosting import COOKIE, Hosting, identity
from studio.workspaces import Workspaces


def request(cookie: str | None = None, user: str | None = None, expires_in: float = 3600) -> gr.Request:
    session = {}
    if user:
        session["oauth_info"] = {"access_token": "t", "scope": "openid profile", "expires_at": time.time() + expires_in,
                                 "userinfo": {"name": user.title(), "preferred_username": user}}
    headers = [(b"cookie", f"{COOKIE}={cookie}".encode())] if cookie else []
    return gr.Request(request=Request({"type": "http", "headers": headers, "session": session}))


def test_a_signed_in_visitor_has_one_workspace_in_every_browser_and_guests_keep_theirs(tmp_path):
    laptop, phone = "l" * 32, "p" * 32  # the cookie each browser got
    assert identity(request(laptop, user="ada")) == identity(request(phone, user="ada")) == "hf:ada"
    assert identity(request(laptop)) == f"token:{laptop}" != identity(request(phone))
    assert identity(request(laptop, user="ada", expires_in=-1)) == f"token:{laptop}"  # an expired sign-in: a guest

    workspaces = Workspaces(tmp_path, public=True)
    on_laptop = workspaces.get(identity(request(laptop, user="ada")))
    assert workspaces.get(identity(request(phone, user="ada"))).root == on_laptop.root
    assert workspaces.get(identity(request(laptop))).root != on_laptop.root  # the guest's work stays the guest's
    assert workspaces.get(identity(request(phone, user="bob"))).root != on_laptop.root


def test_the_public_page_has_a_sign_in_button_where_oauth_is_set_up(tiny_catalog, tmp_path, monkeypatch):
    import gradio.oauth

    from studio.ui.app import build_app

    # Off a Space gradio mocks OAuth with the local Hugging Face token (a network call): stand in for it.
    monkeypatch.setattr(gradio.oauth, "_get_mocked_oauth_info", lambda: {
        "access_token": "t", "scope": "openid profile", "userinfo": {"preferred_username": "ada", "name": "Ada"}})
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
