"""Local fake chat APIs (Telegram Bot API, Discord REST + gateway) for driving the real clients.

See shared/notes/chat-testing.md; tests/test_fakes.py shows both in use.
"""

from tests.fakes.discord import FakeDiscord, point_at
from tests.fakes.telegram import FakeTelegram

__all__ = ["FakeDiscord", "FakeTelegram", "point_at"]
