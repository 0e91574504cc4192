"""Per-user defaults (/settings), shared by every frontend, in SQLite beside the journal."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bot.parse import PromptSettings
from engine.config import ConfigError, build
from engine.errors import InvalidRequest
from engine.request import GenerationRequest, RequestDefaults
from engine.sampling.samplers import SAMPLERS, canonical_sampler
from engine.sampling.schedules import canonical_schedule_type

if TYPE_CHECKING:
    from engine.engine import Engine


def model_defaults(engine: Engine[Any], fallback: RequestDefaults) -> RequestDefaults:
    """What a request that sets nothing gets from the current default model (its sidecar over
    [defaults]): what /settings shows and checks against; `fallback` while no model is here."""
    try:
        return engine.model_info(engine.default_model).defaults
    except InvalidRequest:  # no model installed (yet)
        return fallback


# The settings that are a request's own fields (the rest shape the prompt or the reply).
REQUEST_FIELDS = (
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "sampler",
    "schedule_type",
)


@dataclass(frozen=True, kw_only=True)
class UserPrefs:
    """What a user saved with /settings; None = the bot's default.

    Args:
        width: default image width.
        height: default image height.
        num_inference_steps: default steps.
        guidance_scale: default CFG scale.
        sampler: default sampler (A1111 name).
        schedule_type: default A1111 v1.9 schedule type label ("Karras", "Automatic", …); None
            = the sampler name's own schedule.
        negative_prompt: negative prompt added to every request.
        uc_preset: NAI undesired-content preset.
        quality_tags: prepend NAI's quality tags.
        syntax: "a1111" or "nai" bracket weights.
        locale: "en" or "zh" for replies (None = from the chat client).
        send_as_document: Telegram: send the original PNG as a document.
    """

    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    schedule_type: str | None = None
    negative_prompt: str | None = None
    uc_preset: Literal["Low Quality + Bad Anatomy", "Low Quality", "None"] | None = None
    quality_tags: bool | None = None
    syntax: Literal["a1111", "nai"] | None = None
    locale: Literal["en", "zh"] | None = None
    send_as_document: bool | None = None

    def request_defaults(self, requester: str) -> GenerationRequest:
        """The template `parse_request` fills unset fields from."""
        values: dict[str, Any] = {f: getattr(self, f) for f in REQUEST_FIELDS}
        return GenerationRequest(
            prompt="", negative_prompt=self.negative_prompt or "", requester=requester, **values
        )

    def prompt_settings(self, base: PromptSettings) -> PromptSettings:
        """The bot's [prompt] settings with this user's choices over them."""
        mine = {f: getattr(self, f) for f in ("syntax", "quality_tags", "uc_preset")}
        return dataclasses.replace(base, **{k: v for k, v in mine.items() if v is not None})


def connect(path: str | Path) -> sqlite3.Connection:
    """A bot-side SQLite file beside the journal (":memory:" = none), in autocommit WAL mode.

    Frontends call its users from the event loop; each guards the connection with one lock.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    return db


FIELDS = tuple(f.name for f in dataclasses.fields(UserPrefs))


class UserSettingsStore:
    """`get(user)` / `update(user, **values)` / `reset(user)`; user ids like "telegram:1234"."""

    def __init__(self, path: str | Path) -> None:
        self._db = connect(path)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS user_settings (user TEXT PRIMARY KEY, data TEXT)"
            )

    def get(self, user: str) -> UserPrefs:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM user_settings WHERE user = ?", (user,)
            ).fetchone()
        if row is None:
            return UserPrefs()
        stored = {k: v for k, v in json.loads(row[0]).items() if k in FIELDS}
        return build(UserPrefs, stored, "user settings")

    def update(self, user: str, **values: Any) -> UserPrefs:
        """Save some fields (None clears one); InvalidRequest names a bad field or value."""
        try:
            changed = build(UserPrefs, values, "settings", base=self.get(user))
        except ConfigError as e:
            raise InvalidRequest(str(e).removeprefix("settings.")) from None
        if changed.sampler is not None:
            row = SAMPLERS[canonical_sampler(changed.sampler)]
            changed = dataclasses.replace(changed, sampler=row.name)
            if "sampler" in values and "schedule_type" not in values and row.name != row.base:
                # An old name ("DPM++ 2M Karras") carries its schedule: a saved schedule type
                # would replace it.
                changed = dataclasses.replace(changed, schedule_type=None)
        if changed.schedule_type is not None:
            label = canonical_schedule_type(changed.schedule_type)
            changed = dataclasses.replace(changed, schedule_type=label)
        data = {k: v for k, v in dataclasses.asdict(changed).items() if v is not None}
        with self._lock:
            self._db.execute(
                "INSERT INTO user_settings (user, data) VALUES (?, ?) "
                "ON CONFLICT(user) DO UPDATE SET data = excluded.data",
                (user, json.dumps(data, ensure_ascii=False)),
            )
        return changed

    def reset(self, user: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM user_settings WHERE user = ?", (user,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
