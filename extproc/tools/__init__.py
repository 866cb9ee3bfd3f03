"""Governance of AI tool use: tool policy and the streaming tool-call guard (``policy``) and the
MCP (JSON-RPC) data path (``mcp``)."""
