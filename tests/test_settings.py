"""settings.toml: defaults, the committed file, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from bot.places import PlaceRules
from bot.settings import Settings, SettingsError, from_dict, load

ROOT = Path(__file__).resolve().parent.parent


def test_committed_settings_equal_the_defaults() -> None:
    settings = load(ROOT / "settings.toml")
    assert settings == Settings(root=ROOT)
    assert settings.models_dir == ROOT / "models"


def test_every_key_in_the_committed_file_has_a_comment() -> None:
    text = (ROOT / "settings.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    keys = [f"{table}.{key}" for table, values in data.items() for key in values]
    for line in text.splitlines():
        if re.match(r"^\w+\s*=", line):
            assert "#" in line, f"no comment on: {line}"
    # Every settings field is written out, so the file documents them all.
    defaults = Settings()
    tables = [f.name for f in dataclasses.fields(Settings) if f.name not in ("root", "places")]
    assert len(tables) >= 8
    for table in tables:
        for key in vars(getattr(defaults, table)):
            assert f"{table}.{key}" in keys, f"{table}.{key} is not in settings.toml"
    # [places] holds a table per place: its example documents every key, commented out.
    for rule in dataclasses.fields(PlaceRules):
        assert re.search(rf"^# {rule.name} = .*#", text, re.M), f"places: {rule.name} is not shown"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"limits": {"max_stepz": 5}}, r"limits\.max_stepz: unknown key; allowed: .*max_steps"),
        ({"engine": {"models_dir": 5}}, r"engine\.models_dir: expected str, got int"),
        ({"limits": {"max_steps": 0}}, r"limits\.max_steps: 0 is out of range; allowed: 1 to 1000"),
        ({"limits": {"max_batch_size": True}}, r"limits\.max_batch_size: expected int, got bool"),
        ({"device": {"vram": "low"}}, r"device\.vram: 'low' is not allowed; allowed: 'normal'"),
        ({"device": {"device": "gpu"}}, r"device\.device: 'gpu' is not allowed; allowed: auto"),
        ({"defaults": {"sampler": "Eular a"}}, r"defaults\.sampler: .*Did you mean 'Euler a'"),
        ({"defaults": {"width": 500}}, r"defaults\.width: width 500 .* multiple of 8"),
        ({"discrod": {}}, r"unknown table \[discrod\]"),
        ({"limits": 3}, r"limits must be a table"),
    ],
)
def test_bad_settings_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_dict(data)  # type: ignore[arg-type]


def test_ints_are_accepted_for_floats() -> None:
    assert from_dict({"defaults": {"guidance_scale": 7}}).defaults.guidance_scale == 7.0


def test_bad_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[limits]\nmax_steps = \n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"settings\.toml: not valid TOML"):
        load(path)
    path.write_text('[engine]\nmodels_dir = "m"\n', encoding="utf-8")
    assert load(path).models_dir == tmp_path / "m"


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "custom.toml"
    path.write_text("[defaults]\nnum_inference_steps = 20\n", encoding="utf-8")
    monkeypatch.setenv("AIDRAW_SETTINGS", str(path))
    assert load().defaults.num_inference_steps == 20
    monkeypatch.setenv("AIDRAW_SETTINGS", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="missing.toml: cannot read"):
        load()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # Latin-1 "é" from an old editor, and a file PowerShell 5 wrote (UTF-16 with its BOM).
        (
            '[engine]\nmodels_dir = "mod\xe8les"\n'.encode("latin-1"),
            r"settings\.toml is not UTF-8 text \(byte 0xe8 at position 26\); save it as UTF-8$",
        ),
        (
            '[engine]\nmodels_dir = "m"\n'.encode("utf-16"),
            r"settings\.toml is not UTF-8 text \(byte 0xff at position 0\); save it as UTF-8$",
        ),
    ],
    ids=["latin-1", "utf-16"],
)
def test_a_file_that_is_not_utf8_is_one_line_naming_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "settings.toml"
    path.write_bytes(content)
    with pytest.raises(SettingsError, match=message) as error:
        load(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # Windows Notepad (before 2019) saves UTF-8 with a BOM, which tomllib refuses.
    path = tmp_path / "settings.toml"
    path.write_bytes('\ufeff[engine]\nmodels_dir = "modèles"\n'.encode())
    assert load(path).models_dir == tmp_path / "modèles"
