"""bot/prefs.py: per-user defaults saved in SQLite, shared by every frontend."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.parse import PromptSettings, parse_request
from bot.prefs import UserPrefs, UserSettingsStore, connect
from engine.errors import InvalidRequest
from engine.request import GenerationRequest

ALICE = "telegram:1"
BOB = "discord:2"


@pytest.fixture
def store(tmp_path: Path) -> UserSettingsStore:
    return UserSettingsStore(tmp_path / "data" / "users.sqlite3")


def test_saved_settings_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "data" / "users.sqlite3"
    first = UserSettingsStore(path)
    first.update(ALICE, num_inference_steps=20, width=640, height=640)
    first.update(ALICE, negative_prompt="bad hands", quality_tags=False, locale="zh")
    first.close()

    second = UserSettingsStore(path)
    expected = UserPrefs(
        width=640,
        height=640,
        num_inference_steps=20,
        negative_prompt="bad hands",
        quality_tags=False,
        locale="zh",
    )
    assert second.get(ALICE) == expected
    assert second.get(BOB) == UserPrefs()  # users are independent
    second.close()


def test_update_merges_and_none_clears(store: UserSettingsStore) -> None:
    store.update(ALICE, num_inference_steps=20, guidance_scale=7.0)
    assert store.update(ALICE, num_inference_steps=None) == UserPrefs(guidance_scale=7.0)
    assert store.get(ALICE) == UserPrefs(guidance_scale=7.0)
    store.reset(ALICE)
    assert store.get(ALICE) == UserPrefs()


@pytest.mark.parametrize(
    ("name", "typed", "canonical"),
    [
        ("sampler", "euler_a", "Euler a"),
        ("sampler", "k_dpmpp_2m_ka", "DPM++ 2M Karras"),
        ("sampler", "DPM++ 2M Karras", "DPM++ 2M Karras"),
        ("sampler", "ddim", "DDIM"),
    ],
)
def test_sampler_names_are_canonicalised(
    store: UserSettingsStore, name: str, typed: str, canonical: str
) -> None:
    assert store.update(ALICE, **{name: typed}).sampler == canonical
    assert store.get(ALICE).sampler == canonical


@pytest.mark.parametrize(
    ("typed", "label"),
    [("karras", "Karras"), ("SGM Uniform", "SGM Uniform"), ("sgm_uniform", "SGM Uniform")]
    + [("Automatic", "Automatic"), (None, None)],
)
def test_a_schedule_type_is_saved_as_a1111_v19_labels_it(
    tmp_path: Path, typed: str | None, label: str | None
) -> None:
    path = tmp_path / "users.sqlite3"
    UserSettingsStore(path).update(ALICE, sampler="DPM++ 2M", schedule_type=typed)
    prefs = UserSettingsStore(path).get(ALICE)
    assert (prefs.sampler, prefs.schedule_type) == ("DPM++ 2M", label)
    defaults = prefs.request_defaults(ALICE)
    assert (defaults.sampler, defaults.schedule_type) == ("DPM++ 2M", label)


def test_an_old_sampler_name_drops_a_saved_schedule_type(store: UserSettingsStore) -> None:
    """ "DPM++ 2M Karras" carries its schedule; a saved "Exponential" would replace it."""
    store.update(ALICE, sampler="DPM++ 2M", schedule_type="Exponential")
    assert store.update(ALICE, sampler="Euler a").schedule_type == "Exponential"
    assert store.update(ALICE, sampler="k_dpmpp_2m_ka").schedule_type is None
    both = store.update(ALICE, sampler="DPM++ 2M Karras", schedule_type="Uniform")
    assert (both.sampler, both.schedule_type) == ("DPM++ 2M Karras", "Uniform")


def test_settings_saved_before_schedule_types_still_load(tmp_path: Path) -> None:
    path = tmp_path / "users.sqlite3"
    store = UserSettingsStore(path)
    store.close()
    old = connect(path)
    old.execute("INSERT INTO user_settings VALUES (?, ?)", (ALICE, '{"sampler": "DDIM"}'))
    old.close()
    assert UserSettingsStore(path).get(ALICE) == UserPrefs(sampler="DDIM")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stepz": 3}, r"^stepz: unknown key; allowed: width, height, num_inference_steps"),
        ({"width": "512"}, r"^width: expected int, got str '512'$"),
        ({"quality_tags": "yes"}, r"^quality_tags: expected bool, got str 'yes'"),
        # The key, the value and the choices are named (in typing's words: engine/config.py).
        ({"syntax": "koishi"}, r"^syntax: 'koishi' is not allowed; allowed: 'a1111', 'nai'$"),
        ({"locale": "fr"}, r"^locale: 'fr' is not allowed; allowed: 'en', 'zh'$"),
        ({"sampler": "Eular a"}, r"Unknown sampler 'Eular a'\. Did you mean 'Euler a'\?"),
        ({"schedule_type": "Beta"}, r"Unknown schedule type 'Beta'\. Choose one of: Automatic, "),
        ({"schedule_type": 7}, r"^schedule_type: expected str"),
    ],
)
def test_bad_values_are_rejected_and_not_saved(
    store: UserSettingsStore, values: dict[str, object], message: str
) -> None:
    store.update(ALICE, num_inference_steps=12)
    with pytest.raises(InvalidRequest, match=message):
        store.update(ALICE, **values)
    assert store.get(ALICE) == UserPrefs(num_inference_steps=12)


def test_prefs_are_applied_by_the_parser() -> None:
    prefs = UserPrefs(
        width=640,
        height=640,
        num_inference_steps=20,
        sampler="DPM++ 2M",
        negative_prompt="bad hands",
        quality_tags=False,
        uc_preset="None",
        syntax="nai",
    )
    settings = prefs.prompt_settings(PromptSettings())
    assert settings == PromptSettings(syntax="nai", quality_tags=False, uc_preset="None")
    template = prefs.request_defaults(ALICE)

    request = parse_request("1girl, [smile]", template, ALICE, settings=settings)
    assert request == GenerationRequest(
        prompt="1girl, (smile:0.9524)",  # NAI's [x] is ÷1.05
        negative_prompt="bad hands",
        width=640,
        height=640,
        num_inference_steps=20,
        sampler="DPM++ 2M",
        requester=ALICE,
    )
    # Flags in the text win over saved defaults; a negative prompt replaces the saved one.
    request = parse_request("1girl --steps 5 --neg lowres", template, ALICE, settings=settings)
    assert request == GenerationRequest(
        prompt="1girl",
        negative_prompt="lowres",
        width=640,
        height=640,
        num_inference_steps=5,
        sampler="DPM++ 2M",
        requester=ALICE,
    )


def test_unset_prefs_leave_the_bot_defaults() -> None:
    prefs = UserPrefs()
    base = PromptSettings(quality_tags=True, uc_preset="Low Quality")
    assert prefs.prompt_settings(base) == base
    request = parse_request("1girl", prefs.request_defaults(BOB), BOB, settings=base)
    assert request == GenerationRequest(
        prompt="masterpiece, best quality, 1girl",
        negative_prompt=(
            "lowres, text, cropped, worst quality, low quality, normal quality, jpeg artifacts, "
            "signature, watermark, username, blurry"
        ),
        requester=BOB,
        preset_quality=True,  # presets the parser added: a model's own replace them
        preset_negative="Low Quality",
    )
