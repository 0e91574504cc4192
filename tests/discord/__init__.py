"""Tests of `bot/discord/`."""
