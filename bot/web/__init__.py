"""The local web chat: aiohttp routes, a WebSocket for progress, and the static page."""
