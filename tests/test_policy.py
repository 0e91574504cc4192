"""The shared policy layer (bot/policy.py), table-driven: place × settings × request →
allowed (with or without a spoiler) or refused with its message; the image check's verdicts
→ send / spoiler / refuse; quotas and cooldowns across a restart."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.classifier import Verdict
from bot.places import Place
from bot.policy import Policy, Refused
from bot.prefs import UserPrefs
from bot.settings import SettingsError, from_dict
from engine.engine import Engine
from engine.queue import QueueConfig
from engine.request import GenerationRequest
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry

USER = "discord:5"
ADMIN = "discord:9"
CHANNEL, GUILD = 100, 200
NSFW_CHANNEL = Place(frontend="discord", chat=101, guild=GUILD, age_restricted=True)
PLAIN_CHANNEL = Place(frontend="discord", chat=CHANNEL, guild=GUILD)
OTHER_CHANNEL = Place(frontend="discord", chat=102, guild=GUILD)
DM = Place(frontend="discord", chat=7)
GROUP = Place(frontend="telegram", chat=-500, group=True)
PRIVATE = Place(frontend="telegram", chat=5)
WEB = Place(frontend="web")


def _engine(tmp: Path, *, journal: str | None = None) -> Engine[Any]:
    queue = QueueConfig(
        journal=journal or ":memory:",
        results_dir=str(tmp / "results"),
        warm_up=False,
        admins=(ADMIN, "telegram:9", "web:admin"),
    )
    return Engine(queue, registry=FakeRegistry(), load=FakeLoader(), generate=FakeGenerate())


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[Policy] = []

    def build(settings: dict[str, Any]) -> Policy:
        policy = Policy(from_dict(settings), _engine(tmp_path))
        made.append(policy)
        return policy

    yield build
    for policy in made:
        policy.close()


def req(prompt: str = "a cat", user: str = USER, **fields: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, requester=user, **fields)


PLACES = {
    "places": {
        "discord:guild:200": {"max_steps": 30, "nsfw": "spoiler"},
        "discord:channel:100": {"max_side": 768, "max_count": 2, "img2img": False},
        "discord:channel:102": {"enabled": False},
        "telegram": {"nsfw": "refuse"},
        "telegram:chat:-500": {"nsfw": "spoiler", "roles": []},
        "web": {"nsfw": "allow", "max_steps": 10},
    }
}
ROLES = {"places": {"discord:guild:200": {"roles": [11, 12]}}}
STRICT = {"discord": {"nsfw_policy": "refuse"}}
ALLOW = {"places": {"discord": {"nsfw": "allow"}}}

# (case, settings, place, request, picture, expected): "ok", "spoiler", or the refusal's text.
CASES: list[tuple[str, dict[str, Any], Place, GenerationRequest, bool, str]] = [
    ("plain prompt", PLACES, PLAIN_CHANNEL, req(), False, "ok"),
    ("nsfw word, guild spoilers", PLACES, PLAIN_CHANNEL, req("nsfw, a cat"), False, "spoiler"),
    ("age-restricted channel allows", PLACES, NSFW_CHANNEL, req("nsfw, a cat"), False, "ok"),
    (
        "refused outside age-restricted",
        STRICT,
        PLAIN_CHANNEL,
        req("nude"),
        False,
        "This channel is not marked NSFW, so the bot does not draw 'nude' here.",
    ),
    ("strict legacy key, nsfw channel", STRICT, NSFW_CHANNEL, req("nude"), False, "ok"),
    (
        "allow holds only in age-restricted channels",
        ALLOW,
        DM,
        req("nsfw"),
        False,
        "This channel is not marked NSFW, so the bot does not draw 'nsfw' here.",
    ),
    ("allow in an age-restricted channel", ALLOW, NSFW_CHANNEL, req("nsfw"), False, "ok"),
    (
        "guild max steps",
        PLACES,
        OTHER_CHANNEL.__class__(frontend="discord", chat=103, guild=GUILD),
        req(num_inference_steps=31),
        False,
        "At most 30 steps here; you asked for 31.",
    ),
    (
        "channel max side",
        PLACES,
        PLAIN_CHANNEL,
        req(width=1024, height=512),
        False,
        "At most 768 pixels a side here; you asked for 1024x512.",
    ),
    (
        "channel max count",
        PLACES,
        PLAIN_CHANNEL,
        req(batch_size=3),
        False,
        "At most 2 image(s) per request here; you asked for 3.",
    ),
    (
        "no img2img in the channel",
        PLACES,
        PLAIN_CHANNEL,
        req(),
        True,
        "Drawing from a picture is not allowed here.",
    ),
    ("img2img elsewhere", PLACES, NSFW_CHANNEL, req(), True, "ok"),
    ("channel switched off", PLACES, OTHER_CHANNEL, req(), False, "The bot does not draw here."),
    ("admin where it is off", PLACES, OTHER_CHANNEL, req(user=ADMIN), False, "ok"),
    (
        "admin keeps the word lists",
        STRICT,
        PLAIN_CHANNEL,
        req("nude", user=ADMIN),
        False,
        "This channel is not marked NSFW, so the bot does not draw 'nude' here.",
    ),
    (
        "roles: none of them",
        ROLES,
        PLAIN_CHANNEL,
        req(),
        False,
        "Only members with one of this server's drawing roles may draw here.",
    ),
    ("roles: has one", ROLES, dataclasses.replace(PLAIN_CHANNEL, roles=(12,)), req(), False, "ok"),
    ("roles: DMs are not the server", ROLES, DM, req(), False, "ok"),
    (
        "telegram refuses",
        PLACES,
        PRIVATE,
        req("hentai", user="telegram:5"),
        False,
        "This bot does not draw NSFW prompts ('hentai').",
    ),
    ("telegram group spoilers", PLACES, GROUP, req("hentai", user="telegram:5"), False, "spoiler"),
    ("web allows", PLACES, WEB, req("nsfw", user="web:local"), False, "ok"),
    (
        "web max steps",
        PLACES,
        WEB,
        req(user="web:local", num_inference_steps=11),
        False,
        "At most 10 steps here; you asked for 11.",
    ),
    ("defaults: nothing refused", {}, PLAIN_CHANNEL, req(batch_size=8), True, "ok"),
    ("defaults: nsfw is spoilered", {}, GROUP, req("nsfw", user="telegram:1"), False, "spoiler"),
]


@pytest.mark.parametrize(
    ("settings", "place", "request_", "picture", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_admission(
    make: Any,
    settings: dict[str, Any],
    place: Place,
    request_: GenerationRequest,
    picture: bool,
    expected: str,
) -> None:
    policy = make(settings)
    if expected in ("ok", "spoiler"):
        admission = policy.admit(place, request_, "en", picture=picture)
        assert admission.spoiler == (expected == "spoiler")
    else:
        with pytest.raises(Refused) as refused:
            policy.admit(place, request_, "en", picture=picture)
        assert refused.value.message == expected


FLAGGED = [Verdict("safe", 0.1), Verdict("FEMALE_BREAST_EXPOSED", 0.8)]
SAFE = [Verdict("safe", 0.1)]
JUDGED: list[tuple[str, dict[str, Any], Place, list[Verdict], str]] = [
    ("safe is sent", STRICT, PLAIN_CHANNEL, SAFE, "send"),
    ("flagged, discord default", {}, PLAIN_CHANNEL, FLAGGED, "spoiler"),
    ("flagged, discord refuses", STRICT, PLAIN_CHANNEL, FLAGGED, "refuse"),
    ("flagged, age-restricted", STRICT, NSFW_CHANNEL, FLAGGED, "send"),
    ("flagged, allow outside age-restricted", ALLOW, PLAIN_CHANNEL, FLAGGED, "refuse"),
    ("flagged, telegram refuses", PLACES, PRIVATE, FLAGGED, "refuse"),
    ("flagged, telegram group", PLACES, GROUP, FLAGGED, "spoiler"),
    ("flagged, web allows", PLACES, WEB, FLAGGED, "send"),
    ("flagged, web default", {}, WEB, FLAGGED, "spoiler"),
    ("unchecked is sent", STRICT, PLAIN_CHANNEL, [Verdict("unchecked", 0.0)], "send"),
]


@pytest.mark.parametrize(
    ("settings", "place", "verdicts", "expected"),
    [case[1:] for case in JUDGED],
    ids=[case[0] for case in JUDGED],
)
def test_judging_the_image_check(
    make: Any, settings: dict[str, Any], place: Place, verdicts: list[Verdict], expected: str
) -> None:
    assert make(settings).judge(place, verdicts) == expected


def test_place_defaults_fill_what_the_user_left(make: Any) -> None:
    policy = make(
        {
            "places": {
                "telegram": {"width": 640, "steps": 12, "uc_preset": "None"},
                "telegram:chat:-500": {"model": "anime", "width": 768},
            }
        }
    )
    template = policy.template(GROUP, UserPrefs(num_inference_steps=20), "telegram:5")
    assert (template.model, template.width, template.num_inference_steps) == ("anime", 768, 20)
    assert policy.prompt_settings(GROUP, UserPrefs()).uc_preset == "None"
    assert policy.template(WEB, UserPrefs(), "web:local").width is None


async def test_quota_and_cooldown_hold_across_a_restart(tmp_path: Path) -> None:
    settings = from_dict({"places": {"telegram": {"daily_quota": 2, "cooldown_s": 60}}})
    journal = str(tmp_path / "journal.sqlite3")
    engine = _engine(tmp_path, journal=journal)
    policy = Policy(settings, engine)
    user = "telegram:5"
    policy.admit(PRIVATE, req(user=user), "en")
    policy.started(req(user=user))
    with pytest.raises(Refused, match=r"Please wait (59|60) s"):
        policy.admit(PRIVATE, req(user=user), "en")
    assert "Cooldown: 60 s" in policy.quota_text(PRIVATE, user, "en")
    policy.close()
    await engine.close()

    again = Policy(settings, _engine(tmp_path, journal=journal))  # a new start
    with pytest.raises(Refused, match="Please wait"):
        again.admit(PRIVATE, req(user=user), "en")
    again.quotas.started(user, at=time.time() - 61)
    again.admit(PRIVATE, req(user=user), "en")
    with pytest.raises(Refused, match="You have drawn 0 of your 2 images"):
        again.admit(PRIVATE, req(user=user, batch_size=3), "en")
    again.quotas.set(user, 5)  # an admin's override beats the place's
    again.admit(PRIVATE, req(user=user, batch_size=3), "en")
    assert again.quota_text(WEB, "web:admin", "en") == "Quota: none (you are an admin)."
    again.close()
    await again.engine.close()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"slack": {}}, "places.slack: unknown place; allowed: default"),
        ({"discord:channel:x": {}}, "places.discord:channel:x: unknown place"),
        ({"web": {"nsfw": "maybe"}}, "places.\"web\".nsfw: 'maybe' is not allowed"),
        ({"web": {"max_steps": 0}}, 'places."web".max_steps: 0 is out of range'),
        ({"web": {"colour": 1}}, 'places."web".colour: unknown key'),
        ({"web": 3}, 'places."web" must be a table'),
    ],
)
def test_places_settings_are_checked(table: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        from_dict({"places": table})
    assert message in str(error.value)


def test_image_check_setting_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="moderation.image_check: 'nudity' is not allowed"):
        from_dict({"moderation": {"image_check": "nudity"}})
    missing = from_dict({"moderation": {"image_check": "tests.classifier_stub:Nope"}})
    with pytest.raises(SettingsError, match="cannot load 'tests.classifier_stub:Nope'"):
        Policy(missing, _engine(tmp_path))


def test_a_styles_csv_that_cannot_be_read_stops_start_up(tmp_path: Path) -> None:
    settings = from_dict({"moderation": {"styles_csv": "styles.csv"}}, root=tmp_path)
    with pytest.raises(SettingsError, match=r"moderation.styles_csv: cannot import .*styles.csv"):
        Policy(settings, _engine(tmp_path))
    (tmp_path / "styles.csv").write_text("title\nx\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="needs the columns name,prompt,negative_prompt"):
        Policy(settings, _engine(tmp_path))
