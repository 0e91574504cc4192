"""The A1111-compatible HTTP API (`/sdapi/v1/...`, A1111 v1.9's fields, defaults and answers)
on the web chat's aiohttp app and port, so that A1111's clients (the `webuiapi` package, AIYA,
koishi novelai-bot, editor plug-ins) draw with aidraw's queue, fairness, caps and engine."""
