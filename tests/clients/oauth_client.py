"""Connects to an mcpod endpoint protected by OAuth with the official Python
SDK's client-credentials provider (mcp.client.auth.extensions): the SDK's own
flow (401 -> Protected Resource Metadata -> authorization server metadata ->
token with a resource indicator -> call). Prints one JSON object.
Usage: oauth_client.py URL ISSUER CLIENT_ID CLIENT_SECRET"""
import asyncio
import base64
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client


class MemoryStorage:
    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


async def main():
    url, issuer, client_id, client_secret = sys.argv[1:5]
    storage = MemoryStorage()
    provider = ClientCredentialsOAuthProvider(
        server_url=url, storage=storage, client_id=client_id, client_secret=client_secret, issuer=issuer
    )
    out = {}
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=60) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    init = await session.initialize()
                    out["server"] = init.server_info.name
                    tools = await session.list_tools()
                    out["tools"] = sorted(t.name for t in tools.tools)
                    result = await session.call_tool("echo", {"text": "hello over oauth"})
                    out["echo"] = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        token = storage.tokens.access_token
        payload = token.split(".")[1]
        out["token"] = token
        out["claims"] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except BaseException as error:  # an ExceptionGroup from the task group, too
        out["error"] = repr(error)
    print(json.dumps(out))


asyncio.run(main())
