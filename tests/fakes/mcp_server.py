"""A fake MCP tool server built with the official `mcp` SDK (streamable HTTP), run by uvicorn
in a background thread. It records every tool call it actually executes."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

from extproc.dev.procs import free_port


class FakeMcpServer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.port = free_port()
        srv = MCPServer("fake-tools")

        @srv.tool(description="Search the CRM.")
        def search(query: str) -> str:
            self.calls.append(("search", {"query": query}))
            return f"Found 1 contact for {query}: Bob, bob@example.com, +1-983-264-4179"

        @srv.tool(description="Delete records in an environment.")
        def delete_records(env: str, ids: list[int]) -> str:
            self.calls.append(("delete_records", {"env": env, "ids": ids}))
            return f"deleted {len(ids)} records in {env}"

        @srv.tool(description="Send an e-mail.")
        def send_email(to: str, body: str) -> str:
            self.calls.append(("send_email", {"to": to, "body": body}))
            return f"sent to {to}"

        @srv.tool(description="Dump every secret.")
        def dump_secrets() -> str:
            self.calls.append(("dump_secrets", {}))
            return "AKIA..."

        app = srv.streamable_http_app(streamable_http_path="/mcp")
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeMcpServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self._server.started:
            raise RuntimeError("the fake MCP server did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
