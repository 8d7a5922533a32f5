"""Serve: chat in the terminal and in the browser (an OpenAI-compatible API)."""
