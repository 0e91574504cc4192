"""Tests of `bot/telegram/`."""
