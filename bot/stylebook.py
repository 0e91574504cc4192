"""The styles every place and user has (`StyleBook`), kept in SQLite beside the journal; what a
style is and how it applies is bot/styles.py (the parser's part)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from bot.prefs import connect
from bot.styles import Style, read_csv

BOT = "bot"  # the scope of the styles every place has ([moderation] styles_csv)
CSV_BYTES = 256 * 1024  # the most of a styles.csv a chat command reads


class StyleBook:
    """Styles in SQLite beside the journal, by scope: BOT, a place key ("discord:guild:ID",
    "telegram:chat:ID") or a requester ("discord:123")."""

    def __init__(self, path: str | Path) -> None:
        self._db = connect(path)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS styles (scope TEXT, name TEXT, prompt TEXT, "
                "negative TEXT, PRIMARY KEY (scope, name))"
            )

    def save(self, scope: str, styles: Iterable[Style]) -> int:
        """Add or replace styles in `scope`; how many."""
        rows = [(scope, s.name, s.prompt, s.negative_prompt) for s in styles]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO styles VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def import_csv(self, scope: str, text: str) -> int:
        return self.save(scope, read_csv(text))

    def styles(self, scopes: Sequence[str]) -> dict[str, Style]:
        """Every style `scopes` see by name, an earlier scope's winning over a later one's."""
        found: dict[str, Style] = {}
        with self._lock:
            for scope in scopes:
                rows = self._db.execute(
                    "SELECT name, prompt, negative FROM styles WHERE scope = ? ORDER BY name",
                    (scope,),
                ).fetchall()
                for name, prompt, negative in rows:
                    found.setdefault(name, Style(name, prompt, negative))
        return found

    def close(self) -> None:
        with self._lock:
            self._db.close()
