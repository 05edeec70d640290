"""Drives mcpod with the official Python MCP SDK (PyPI `mcp`), printing one JSON
object with what it observed. Usage: py_client.py SCENARIO URL."""
import asyncio
import json
import sys

import anyio
import mcp_types as types
from mcp import Client, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

ROOT = "file:///workspace/python-client"


async def list_roots(context):
    return types.ListRootsResult(roots=[types.Root(uri=ROOT, name="python-client")])


async def sample(context, params):
    asked = params.messages[0].content.text if params.messages else ""
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"sampled by python: {asked[:40]}"),
        model="mcpod-test-model",
        stop_reason="endTurn",
    )


def texts(result):
    return [c.text for c in result.content if getattr(c, "type", "") == "text"]


async def everything(session, out):
    init = await session.initialize()
    out["server"] = init.server_info.name
    out["protocol"] = init.protocol_version
    tools = await session.list_tools()
    out["tools"] = sorted(t.name for t in tools.tools)
    out["echo"] = texts(await session.call_tool("echo", {"message": "hello from python"}))
    out["sum"] = texts(await session.call_tool("get-sum", {"a": 2, "b": 40}))
    resources = await session.list_resources()
    first = resources.resources[0]
    read = await session.read_resource(first.uri)
    out["resource"] = {"uri": str(first.uri), "contents": len(read.contents)}
    prompts = await session.list_prompts()
    out["prompts"] = sorted(p.name for p in prompts.prompts)
    prompt = await session.get_prompt("simple-prompt")
    out["prompt_messages"] = len(prompt.messages)
    progress = []

    async def on_progress(value, total, message):
        progress.append(value)

    await session.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress)
    out["progress"] = progress
    out["sampling"] = texts(await session.call_tool("trigger-sampling-request", {"prompt": "tell me", "maxTokens": 20}))
    out["roots"] = texts(await session.call_tool("get-roots-list", {}))


async def time(session, out):
    init = await session.initialize()
    out["server"] = init.server_info.name
    out["time"] = texts(await session.call_tool("get_current_time", {"timezone": "Asia/Tokyo"}))


async def aggregate_list(session, out):
    """The aggregated endpoint /mcp: the namespaced union of every server's tools and prompts."""
    init = await session.initialize()
    out["server"] = init.server_info.name
    out["capabilities"] = sorted(k for k, v in init.capabilities.model_dump(exclude_none=True).items())
    out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
    out["prompts"] = sorted(p.name for p in (await session.list_prompts()).prompts)


async def aggregate_legacy(session, out):
    """The aggregated endpoint over legacy HTTP+SSE (2024-11-05): list the union, call one member."""
    init = await session.initialize()
    out["server"] = init.server_info.name
    out["protocol"] = init.protocol_version
    out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
    out["echo"] = texts(await session.call_tool("everything__echo", {"message": "over legacy sse"}))


async def aggregate_modern(url, out):
    """The aggregated endpoint in protocol 2026-07-28: discover, list the union, call one member."""
    client = Client(url, sampling_callback=sample, list_roots_callback=list_roots, elicitation_callback=elicit)
    async with client:
        out["protocol"] = client.protocol_version
        out["server"] = client.server_info.name if client.server_info else None
        out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        out["echo"] = texts(await client.call_tool("everything__echo", {"message": "hello from 2026"}))
        out["sampling"] = texts(await client.call_tool("everything__trigger-sampling-request",
                                                       {"prompt": "tell me", "maxTokens": 20}))


async def elicit(context, params):
    return types.ElicitResult(action="decline")


async def modern(url, out):
    """Protocol 2026-07-28 through `Client` in its default mode: discover, no handshake."""
    logs = []

    async def on_log(params):
        logs.append(params.level)

    client = Client(url, sampling_callback=sample, list_roots_callback=list_roots, elicitation_callback=elicit,
                    log_level="debug", logging_callback=on_log)
    async with client:
        out["protocol"] = client.protocol_version
        out["discovered"] = client.session.discover_result is not None
        out["server"] = client.server_info.name if client.server_info else None
        out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        out["echo"] = texts(await client.call_tool("echo", {"message": "hello from 2026"}))
        progress = []

        async def on_progress(value, total, message):
            progress.append(value)

        await client.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress)
        out["progress"] = progress
        out["sampling"] = texts(await client.call_tool("trigger-sampling-request", {"prompt": "tell me", "maxTokens": 20}))
        resources = (await client.list_resources()).resources
        first = str(resources[0].uri)
        out["resource"] = {"uri": first, "contents": len((await client.read_resource(first)).contents)}
        out["prompt_messages"] = len((await client.get_prompt("simple-prompt")).messages)
        async with client.listen(resource_subscriptions=[first], tools_list_changed=True) as subscription:
            out["honored"] = subscription.honored.model_dump(by_alias=True, exclude_none=True)
            await client.call_tool("toggle-subscriber-updates", {})
            with anyio.fail_after(20):
                async for event in subscription:
                    out["updated"] = event.uri
                    break
            await client.call_tool("toggle-subscriber-updates", {})
    out["logs"] = len(logs)


async def main():
    scenario, url = sys.argv[1], sys.argv[2]
    out = {}
    if scenario in ("modern", "aggregate-modern"):
        await (modern if scenario == "modern" else aggregate_modern)(url, out)
        print(json.dumps(out))
        return
    transport = sse_client(url) if scenario.endswith("-legacy") else streamable_http_client(url)
    async with transport as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write, list_roots_callback=list_roots, sampling_callback=sample) as session:
            if scenario.startswith("everything"):
                await everything(session, out)
            elif scenario == "aggregate-list":
                await aggregate_list(session, out)
            elif scenario == "aggregate-legacy":
                await aggregate_legacy(session, out)
            else:
                await time(session, out)
    print(json.dumps(out))


asyncio.run(main())
