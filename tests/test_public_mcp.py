"""Public mode through MCP (issue 33), with the `mcp` package's client: gradio relays queued MCP calls through one
internal client, so callers are told apart by their X-Studio-Visitor header alone; connections and request bodies
are bounded at the door; job ids and a visitor's own students pass the tool schemas."""

import asyncio
import base64
import io
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from conftest import serve_app
from gradio_client.exceptions import AppError
from PIL import Image
from test_public import COMPARE, TOKEN_A, TOKEN_B, fake_student, visitor

from studio.ui.hosting import Hosting

pytestmark = pytest.mark.slow
MCP = "gradio_api/mcp/"
SERVER_INSIDES = re.compile(r"/tmp|/visitors/|[0-9a-f]{32}|Traceback")
COMPARE_ARGS = {"chosen": ["tiny-teacher"], "prompt": "a cat", "steps": 2, "guidance": 2.0, "scheduler": "Euler",
                "recipes": []}


async def _calls(url: str, token: str | None, calls: list[tuple[str, dict]]):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"X-Studio-Visitor": token} if token else None
    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        async with streamable_http_client(url + MCP, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = {tool.name: tool for tool in (await session.list_tools()).tools}
                return tools, [await session.call_tool(name, arguments) for name, arguments in calls]


def mcp_calls(url: str, token: str | None, *calls: tuple[str, dict]):
    """(tools by name, results) of one MCP connection making `calls` in turn."""
    return asyncio.run(_calls(url, token, list(calls)))


def text(result) -> str:
    return " ".join(c.text for c in result.content if c.type == "text")


def history_count(result) -> int:
    """Images in a compare's third output (the caller's history): gradio's MCP text holds each output's items; the
    gallery's captions say the recipe ("tiny-teacher · custom: 0.12 s"), the history's the prompt and seed."""
    return text(result).count("'caption': 'tiny-teacher: a cat (seed ")


@pytest.fixture
def public_mcp(tiny_catalog, tmp_path):
    hosting = Hosting(public=True, max_upload_mb=1, max_mcp_connections=6, max_mcp_connections_per_visitor=2)
    with serve_app(tiny_catalog, tmp_path / "data", queue_size=8, hosting=hosting, mcp=True) as url:
        yield url, tmp_path / "data"


def test_mcp_callers_without_a_header_are_refused_and_with_one_kept_apart(public_mcp):
    url, _ = public_mcp
    # A browser-like visitor first: the relay must not pick up a cookie that later stands for MCP callers.
    visitor(url).predict(["tiny-teacher"], *COMPARE, api_name="/compare")
    for _ in range(2):  # two connections, no header: neither gets a workspace, let alone the other's
        _, (compare, status) = mcp_calls(url, None, ("compare", COMPARE_ARGS), ("train_status", {"selected": ""}))
        for result in (compare, status):
            assert result.isError and "must carry an X-Studio-Visitor header" in text(result), text(result)
    _, (first, second) = mcp_calls(url, TOKEN_A, ("compare", COMPARE_ARGS), ("compare", COMPARE_ARGS))
    _, (other,) = mcp_calls(url, TOKEN_B, ("compare", COMPARE_ARGS))
    assert not first.isError and not other.isError, (text(first), text(other))
    assert history_count(first) == 1 and history_count(second) == 2  # A's own images
    assert history_count(other) == 1  # B sees only B's image


def test_mcp_job_ids_and_own_students_pass_the_schemas(public_mcp, tiny_catalog):
    url, data = public_mcp
    job_id = fake_student(data, f"token:{TOKEN_A}", tiny_catalog)
    tools, (mine, status, theirs) = mcp_calls(
        url, TOKEN_A, ("compare", {**COMPARE_ARGS, "chosen": [f"job-{job_id}"]}), ("train_status", {"selected": job_id}),
        ("compare", {**COMPARE_ARGS, "chosen": ["sd-v1.4"]}))
    for name in ("train_status", "train_cancel", "dreambooth_results"):
        schema = json.dumps(tools[name].inputSchema)
        assert '"enum": []' not in schema, (name, schema)
    assert not mine.isError and f"job-{job_id}" in text(mine), text(mine)
    assert not status.isError and job_id in text(status), text(status)
    assert theirs.isError and "models: unknown 'sd-v1.4'" in text(theirs), text(theirs)  # not the family's
    _, (stranger,) = mcp_calls(url, TOKEN_B, ("compare", {**COMPARE_ARGS, "chosen": [f"job-{job_id}"]}))
    assert stranger.isError and "unknown" in text(stranger)  # A's student is A's


def test_an_mcp_body_over_the_upload_limit_is_refused_before_it_is_written(public_mcp, tmp_path):
    import gradio.mcp

    url, _ = public_mcp
    buffer = io.BytesIO()
    Image.frombytes("RGB", (1000, 1000), os.urandom(3_000_000)).save(buffer, "PNG")  # noise: ~3 MB
    picture = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()  # over 1 MB
    temp = Path(gradio.mcp.DEFAULT_TEMP_DIR)
    before = {p for p in temp.rglob("*") if p.is_file()} if temp.is_dir() else set()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "img2img", "arguments": {"chosen": ["tiny-teacher"], "image": picture, "prompt": "a"}}}
    refused = httpx.post(url + MCP, json=call, headers={"X-Studio-Visitor": TOKEN_A, "Accept":
                                                         "application/json, text/event-stream"}, timeout=60)
    after = {p for p in temp.rglob("*") if p.is_file()} if temp.is_dir() else set()
    assert refused.status_code == 413, refused.text
    assert "this studio takes uploads up to 1 MB" in refused.text and not SERVER_INSIDES.search(refused.text)
    assert after == before  # nothing written


def test_open_mcp_connections_are_bounded_per_visitor_and_in_all(public_mcp):
    url, _ = public_mcp
    stream = {"Accept": "text/event-stream"}

    async def open_streams(tokens):
        async with httpx.AsyncClient(timeout=10) as http:
            streams, statuses = [], []
            for token in tokens:
                request = http.build_request("GET", url + MCP + "sse", headers={**stream, "X-Studio-Visitor": token})
                response = await http.send(request, stream=True)
                statuses.append(response.status_code)
                (streams if response.status_code == 200 else []).append(response)
                if response.status_code != 200:
                    statuses[-1] = (response.status_code, (await response.aread()).decode())
            for response in streams:
                await response.aclose()
            return statuses

    one_visitor = asyncio.run(open_streams([TOKEN_A] * 3))
    assert one_visitor[:2] == [200, 200] and one_visitor[2][0] == 429, one_visitor
    assert "each visitor may have 2" in one_visitor[2][1]
    many = asyncio.run(open_streams([f"visitor{n:02d}" + "x" * 16 for n in range(8)]))
    assert many[:6] == [200] * 6 and all(s[0] == 429 and "6 connections are open" in s[1] for s in many[6:]), many
    # Closed connections are counted out: the visitor connects again.
    assert asyncio.run(open_streams([TOKEN_A]))[0] == 200


def test_an_api_call_is_refused_from_other_families_models(public_mcp):
    url, _ = public_mcp
    with pytest.raises(AppError, match=r"models: unknown 'sd-v1.4'; choose from tiny-teacher, tiny-small"):
        visitor(url, TOKEN_A).predict(["sd-v1.4"], *COMPARE, api_name="/compare")
