"""Places: where a request comes from (`Place`: a Discord channel or DM, a Telegram chat, the
web chat) and the rules a moderator set for it (`PlaceRules`, the `[places]` settings table).

`[places."KEY"]` tables are read by `read_places`; KEY is `default` (every place), a frontend
(`discord`, `telegram`, `web`), `discord:guild:ID`, `discord:channel:ID` or `telegram:chat:ID`.
The rules of a place are those tables merged from the widest to the narrowest
(`bot.policy.Policy.rules`), a key left out keeping the wider table's value.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engine.config import ConfigError, build

NsfwRule = Literal["allow", "spoiler", "refuse"]
OutputMode = Literal["minimal", "default", "verbose"]
Frontend = Literal["discord", "telegram", "web"]

_KEY = re.compile(r"default|discord|telegram|web|discord:(guild|channel):\d+|telegram:chat:-?\d+")


@dataclass(frozen=True, kw_only=True)
class PlaceRules:
    """A moderator's rules for a place; None = the wider place's (then the bot's) value.

    Args:
        enabled: False: the bot does not draw here (admins still may).
        nsfw: NSFW results and prompts: "allow", "spoiler" (sent hidden) or "refuse". On
            Discord "allow" holds in age-restricted channels only (elsewhere: refused).
        model: the model a request that names none draws with.
        width: default image width.
        height: default image height.
        steps: default steps.
        uc_preset: default NAI undesired-content preset.
        max_steps: most steps a request may ask for.
        max_side: most pixels an image side may have.
        max_count: most images one request may ask for (`--n`).
        img2img: whether drawing from a picture (and upscaling one) is allowed.
        roles: Discord: only server members with one of these role ids may draw (DMs have no
            roles: they are not limited by it); empty = everyone.
        daily_quota: most images a user draws in any 24 hours; 0 = no limit.
        cooldown_s: seconds a user waits between two drawings; 0 = none.
        styles: whether `--style NAME` (saved prompt presets) may be used.
        output: how much a result's reply says: "minimal", "default" or "verbose".
        delete_after_s: in groups, results are deleted after this many seconds; 0 = kept.
    """

    enabled: bool | None = None
    nsfw: NsfwRule | None = None
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    uc_preset: Literal["Low Quality + Bad Anatomy", "Low Quality", "None"] | None = None
    max_steps: int | None = None
    max_side: int | None = None
    max_count: int | None = None
    img2img: bool | None = None
    roles: tuple[int, ...] | None = None
    daily_quota: int | None = None
    cooldown_s: float | None = None
    styles: bool | None = None
    output: OutputMode | None = None
    delete_after_s: float | None = None

    def over(self, wider: PlaceRules) -> PlaceRules:
        """These rules on top of `wider` (a None here keeps the wider value)."""
        mine = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(wider, **mine)


# What a place gets where no table says otherwise.
BUILT_IN = PlaceRules(
    enabled=True,
    nsfw="spoiler",
    img2img=True,
    roles=(),
    daily_quota=0,
    cooldown_s=0.0,
    styles=True,
    output="default",
    delete_after_s=0.0,
)

RANGES: dict[str, tuple[float, float]] = {
    "width": (64, 8192),
    "height": (64, 8192),
    "steps": (1, 1000),
    "max_steps": (1, 1000),
    "max_side": (64, 8192),
    "max_count": (1, 64),
    "daily_quota": (0, 1_000_000),
    "cooldown_s": (0.0, 86_400.0),
    "delete_after_s": (0.0, 172_800.0),
}


def read_places(table: Mapping[str, Any], source: str) -> dict[str, PlaceRules]:
    """The `[places]` table: each key checked (what it may be is named), each value built."""
    places: dict[str, PlaceRules] = {}
    for key, value in table.items():
        if not _KEY.fullmatch(key):
            raise ConfigError(
                f"{source}: places.{key}: unknown place; allowed: default, discord, telegram, "
                "web, discord:guild:ID, discord:channel:ID, telegram:chat:ID"
            )
        if not isinstance(value, Mapping):
            raise ConfigError(f'{source}: places."{key}" must be a table ([places."{key}"])')
        places[key] = build(PlaceRules, value, f'{source}: places."{key}"', ranges=RANGES)
    return places


@dataclass(frozen=True, kw_only=True)
class Place:
    """Where a request comes from, as the policy needs it.

    `chat` is the Discord channel or Telegram chat id (None: a Discord DM, the web chat);
    `age_restricted` is Discord's NSFW flag on the channel; `roles` the member's role ids.
    """

    frontend: Frontend
    chat: int | None = None
    guild: int | None = None
    group: bool = False
    age_restricted: bool = False
    roles: tuple[int, ...] = ()

    def keys(self) -> list[str]:
        """The `[places]` keys that apply here, the widest first."""
        keys = ["default", self.frontend]
        if self.frontend == "discord":
            if self.guild is not None:
                keys.append(f"discord:guild:{self.guild}")
            if self.chat is not None:
                keys.append(f"discord:channel:{self.chat}")
        elif self.frontend == "telegram" and self.chat is not None:
            keys.append(f"telegram:chat:{self.chat}")
        return keys

    @property
    def key(self) -> str:
        """The narrowest key: how the moderation log names the place."""
        if self.frontend == "discord" and self.chat is not None and self.guild is None:
            return f"discord:dm:{self.chat}"
        return self.keys()[-1]
