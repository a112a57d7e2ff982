"""The app's tools over MCP (`python app.py --mcp`): a real MCP client lists them and draws on the toy world."""

import asyncio
import io
import re

import httpx
import pytest
from conftest import serve_app
from PIL import Image

TOOLS = {"compare", "img2img", "design", "train_start", "train_cancel", "train_resume", "train_status",
         "consistency_start", "consistency_cancel", "consistency_resume", "consistency_status",
         "dreambooth_start", "dreambooth_cancel", "dreambooth_results", "dreambooth_status", "evaluate_start",
         "evaluate_status"}


async def list_and_call(url: str, tool: str, arguments: dict):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            return tools, await session.call_tool(tool, arguments)


@pytest.mark.slow
def test_an_mcp_client_lists_the_tools_and_compares_on_the_toy_world(catalog, tmp_path):
    with serve_app(catalog, tmp_path / "data", family="toy", mcp=True) as url:
        arguments = {"chosen": ["toy-teacher", "toy-bk-tiny"], "prompt": "a red circle on a white background",
                     "steps": 4, "recipes": []}
        tools, result = asyncio.run(list_and_call(url + "gradio_api/mcp/", "compare", arguments))
        assert not result.isError, result.content
        # gradio 6.31's MCP server sends a top-level image output as image content; a gallery (compare's first
        # output) arrives as text holding each image's URL, which the client fetches from the app
        text = " ".join(c.text for c in result.content if c.type == "text")
        urls = list(dict.fromkeys(re.findall(r"'url': '(http[^']+?\.png)'", text)))
        images = [Image.open(io.BytesIO(httpx.get(u, timeout=30).raise_for_status().content)) for u in urls[:2]]
    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) == TOOLS  # the private events (page loads, polling helpers) are not tools
    compare = by_name["compare"]
    assert "same seed" in compare.description
    assert "catalogue model names" in compare.inputSchema["properties"]["chosen"]["description"]
    assert "request" not in compare.inputSchema["properties"] and "progress" not in compare.inputSchema["properties"]
    assert by_name["design"].inputSchema["properties"]["preset"]["description"].startswith("base, small, tiny")
    assert "toy-bk-tiny" in text  # the readout's row for each model
    assert len(images) == 2 and all(image.size == (64, 64) for image in images)  # one per model, the toy's size
    assert all(len(image.convert("RGB").getcolors(1024) or [0, 0]) > 1 for image in images)  # drawn, not blank
