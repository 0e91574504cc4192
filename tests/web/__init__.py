"""Tests of `bot/web/`."""
