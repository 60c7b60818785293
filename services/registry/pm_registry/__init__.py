"""The MCP registry: tool catalog, sessions to MCP servers, CallTool with safety and audit."""
