"""settings.toml → frozen dataclasses. An unknown key, wrong type or bad value stops start-up."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.parse import PromptSettings
from engine.config import ConfigError, build
from engine.device import DeviceOptions
from engine.errors import InvalidRequest
from engine.queue import QueueConfig
from engine.request import Limits, RequestDefaults

SETTINGS_ENV = "AIDRAW_SETTINGS"


class SettingsError(ConfigError):
    """settings.toml is wrong; the message names the file, the key and what is allowed."""


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """Where models live and which one serves by default.

    Args:
        models_dir: folder of models, relative to settings.toml.
        default_model: model for requests that name none; "" = the first one found.
        output_dir: where `aidraw draw` writes images, relative to the working directory.
    """

    models_dir: str = "models"
    default_model: str = ""
    output_dir: str = "out"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything in settings.toml; each table is a dataclass passed to a constructor."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    device: DeviceOptions = field(default_factory=DeviceOptions)
    limits: Limits = field(default_factory=Limits)
    defaults: RequestDefaults = field(default_factory=RequestDefaults)
    prompt: PromptSettings = field(default_factory=PromptSettings)
    queue: QueueConfig = field(default_factory=QueueConfig)
    # The folder settings.toml was read from; relative paths in it are relative to this.
    root: Path = field(default_factory=Path.cwd)

    @property
    def models_dir(self) -> Path:
        return (self.root / self.engine.models_dir).resolve()


# Inclusive numeric ranges; keys not listed only need the right type.
RANGES: dict[str, tuple[float, float]] = {
    "limits.max_pixels": (64 * 64, 4096 * 4096),
    "limits.max_side": (64, 8192),
    "limits.max_steps": (1, 1000),
    "limits.max_batch_size": (1, 64),
    "limits.max_prompt_chars": (1, 100_000),
    "defaults.width": (64, 8192),
    "defaults.height": (64, 8192),
    "defaults.num_inference_steps": (1, 1000),
    "defaults.guidance_scale": (1.0, 30.0),
    "defaults.clip_skip": (1, 12),
    "defaults.ensd": (0, 2**32 - 1),
    "queue.max_queued": (1, 100_000),
    "queue.max_queued_per_user": (1, 10_000),
    "queue.max_batch": (1, 64),
    "queue.max_batch_pixels": (0, 2**31),
    "queue.max_model_wait_s": (0, 86_400),
    "queue.preview_every_steps": (0, 1000),
    "queue.shutdown_grace_s": (0, 3600),
    "queue.history_size": (0, 1_000_000),
    "queue.max_attempts": (1, 100),
}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def load(path: Path | None = None) -> Settings:
    """Read settings: `path`, else $AIDRAW_SETTINGS, else ./settings.toml, else all defaults."""
    if path is None:
        env = os.environ.get(SETTINGS_ENV)
        path = Path(env) if env else Path("settings.toml")
        if not env and not path.is_file():
            return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SettingsError(f"{path}: cannot read: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML: {e}") from e
    return from_dict(data, source=str(path), root=path.resolve().parent)


def from_dict(
    data: dict[str, Any], *, source: str = "settings", root: Path | None = None
) -> Settings:
    """Build Settings from parsed TOML, checking every key, type and range."""
    tables: dict[str, Any] = {}
    hints = typing.get_type_hints(Settings)
    allowed = [f.name for f in dataclasses.fields(Settings) if f.name != "root"]
    for name, value in data.items():
        if name not in allowed:
            raise SettingsError(f"{source}: unknown table [{name}]; allowed: {', '.join(allowed)}")
        if not isinstance(value, dict):
            raise SettingsError(f"{source}: {name} must be a table ([{name}])")
        ranges = {k.partition(".")[2]: v for k, v in RANGES.items() if k.startswith(f"{name}.")}
        try:
            tables[name] = build(hints[name], value, f"{source}: {name}", ranges=ranges)
        except ConfigError as e:
            raise SettingsError(str(e)) from None
    settings = Settings(**tables, root=root or Path.cwd())
    _check_meaning(settings, source)
    return settings


def _check_meaning(settings: Settings, source: str) -> None:
    """Checks no type can express: device names, samplers, defaults within the limits."""
    if not _DEVICE.fullmatch(settings.device.device):
        raise SettingsError(
            f"{source}: device.device: {settings.device.device!r} is not allowed; "
            "allowed: auto, cpu, cuda, cuda:N, mps"
        )
    # Imported here: it pulls in torch and diffusers, which a bare settings read does not need.
    from engine.generate import check_request
    from engine.request import GenerationRequest

    try:
        check_request(GenerationRequest(prompt=""), settings.limits, settings.defaults)
    except InvalidRequest as e:
        raise SettingsError(f"{source}: defaults.{e.field}: {e}") from e


def env_token(name: str) -> str | None:
    """A bot token from the environment (never from settings.toml)."""
    value = os.environ.get(name, "").strip()
    return value or None
