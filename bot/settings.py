"""settings.toml → frozen dataclasses. An unknown key, wrong type or bad value stops start-up."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bot.parse import PromptSettings
from bot.places import PlaceRules, read_places
from engine.checks import check_request
from engine.config import ConfigError, build
from engine.device import DeviceOptions
from engine.errors import InvalidRequest
from engine.queue import QueueConfig
from engine.request import HIRES_ONLY_UPSCALERS, GenerationRequest, Limits, RequestDefaults

SETTINGS_ENV = "AIDRAW_SETTINGS"
REDIS_URL_ENV = "AIDRAW_REDIS_URL"  # overrides [queue] redis_url (it may hold a password)


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
class BotSettings:
    """What every chat frontend shares.

    Args:
        progress_interval_s: edit a status message at most this often (chat rate limits).
        variation_strength: how far the "Vary (subtle)" button moves from the image (A1111
            variation strength, 0 to 1).
        strong_variation_strength: the same for "Vary (strong)".
        upscale_strength: the denoising strength of the "Upscale" button's second pass
            (hires fix, or img2img at twice the size for a picture drawn from a picture).
        upscale_with: what the "Upscale" button does: "hires" (draws the image again at
            twice the size, at upscale_strength) or "extras" (A1111's Extras: the image's
            PNG upscaled ×2 with `upscaler`, nothing drawn).
        upscaler: the upscaler of /upscale (when none is named) and of upscale_with =
            "extras": "Lanczos", "Nearest" or a file in models/ESRGAN.
    """

    progress_interval_s: float = 2.0
    variation_strength: float = 0.35
    strong_variation_strength: float = 0.7
    upscale_strength: float = 0.45
    upscale_with: Literal["hires", "extras"] = "hires"
    upscaler: str = "Lanczos"


# What the [telegram] table judges NSFW: these words or tags in the (positive) prompt.
NSFW_WORDS = ("nsfw", "nude", "naked", "nipples", "pussy", "penis", "sex", "hentai", "porn")


@dataclass(frozen=True, kw_only=True)
class TelegramSettings:
    """The Telegram bot: where it answers, what it refuses, how it sends.

    Args:
        allowed_chats: chat ids it answers in (groups are negative); empty = every chat.
            Admins' private chats are always allowed.
        banned_words: a prompt containing any of these words (case-insensitive) is refused.
        nsfw_policy: a prompt with an `nsfw_words` word: "allow", "spoiler" (photo hidden
            behind Telegram's spoiler) or "refuse".
        nsfw_words: the words that make a prompt NSFW (the negative prompt is not judged).
        send_as_document: also send the original PNG (with infotext) as a file by default.
        group_progress_interval_s: progress_interval_s in groups (20 messages/minute there).
        previews: show the low-cost latent preview in private chats' status messages.
    """

    allowed_chats: tuple[int, ...] = ()
    banned_words: tuple[str, ...] = ()
    nsfw_policy: Literal["allow", "spoiler", "refuse"] = "spoiler"
    nsfw_words: tuple[str, ...] = NSFW_WORDS
    send_as_document: bool = False
    group_progress_interval_s: float = 6.0
    previews: bool = True


@dataclass(frozen=True, kw_only=True)
class DiscordSettings:
    """The Discord bot: where it draws, what it refuses, how much a user may draw.

    Args:
        allowed_guilds: server ids it draws in; empty = every server it is in.
        allowed_channels: channel ids it draws in; empty = every channel. Admins draw anywhere.
        allow_dms: whether it draws in direct messages.
        banned_words: a prompt containing any of these words (case-insensitive) is refused.
        nsfw_policy: in channels not marked NSFW, a prompt with an `nsfw_words` word: "allow",
            "spoiler" (the images are sent as spoilers) or "refuse".
        nsfw_words: the words that make a prompt NSFW (the negative prompt is not judged).
        daily_quota: most images a user draws in any 24 hours; 0 = no limit. Cancelled and
            failed drawings do not count; admins have none; /quota set overrides it per user.
        cooldown_s: seconds a user waits between two drawings; 0 = none; admins wait none.
    """

    allowed_guilds: tuple[int, ...] = ()
    allowed_channels: tuple[int, ...] = ()
    allow_dms: bool = True
    banned_words: tuple[str, ...] = ()
    nsfw_policy: Literal["allow", "spoiler", "refuse"] = "spoiler"
    nsfw_words: tuple[str, ...] = NSFW_WORDS
    daily_quota: int = 0
    cooldown_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class WebSettings:
    """The web server: the web chat and the A1111 API (access token: AIDRAW_WEB_TOKEN).

    Args:
        serve: "auto" runs it when no bot token is set; "always" beside the Discord and
            Telegram bots too (so A1111 API clients share the bots' queue); "never" not at all.
        host: address to listen on; anything but loopback needs AIDRAW_WEB_TOKEN set.
        port: TCP port; 0 = any free port (the address is printed at start-up).
        local_admin: the web chat's user ("web:local") may swap models and cancel any job.
    """

    serve: Literal["auto", "always", "never"] = "auto"
    host: str = "127.0.0.1"
    port: int = 7860
    local_admin: bool = True


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    """What `aidraw run` logs (one-off commands log warnings only; -v: INFO).

    Args:
        level: aidraw's own log lines while serving: "DEBUG", "INFO" (one line per job start
            and end, model loads, frontends up), "WARNING" or "ERROR"; libraries log warnings.
        format: "text" (one line each) or "json" (JSON lines: time, level, logger, message,
            and each job line's fields: job, requester, frontend, model, size, steps, …).
    """

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, kw_only=True)
class BackupSettings:
    """Backups of the journal and the per-user settings (SQLite's online backup).

    Args:
        dir: folder for the running bot's backups (on SIGUSR1 and every `every_h` hours),
            relative to settings.toml; each goes into its own dated folder.
        every_h: hours between automatic backups while the bot runs; 0 = only on SIGUSR1.
        keep: how many dated backups in `dir` are kept (the oldest go first).
    """

    dir: str = "data/backups"
    every_h: float = 0.0
    keep: int = 7


@dataclass(frozen=True, kw_only=True)
class ModerationSettings:
    """What moderators get on every frontend (the rules of each place are [places]).

    Args:
        image_check: the classifier every result goes through before it is sent: "nudenet"
            (NudeNet's small ONNX detector, on the CPU, offline), "none", or another
            classifier as "package.module:ClassName" (bot/classifier.py's interface).
        threshold: a NudeNet detection of an exposed part at this score or more flags an image.
        log_days: days the moderation log keeps a job (who, where, prompt, label, message ids);
            0 = nothing is logged.
        styles_csv: an A1111 styles.csv imported as the bot's styles at start-up ("" = none),
            relative to settings.toml.
    """

    image_check: str = "nudenet"
    threshold: float = 0.5
    log_days: int = 30
    styles_csv: str = ""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything in settings.toml; each table is a dataclass passed to a constructor."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    device: DeviceOptions = field(default_factory=DeviceOptions)
    limits: Limits = field(default_factory=Limits)
    defaults: RequestDefaults = field(default_factory=RequestDefaults)
    prompt: PromptSettings = field(default_factory=PromptSettings)
    queue: QueueConfig = field(default_factory=QueueConfig)
    bot: BotSettings = field(default_factory=BotSettings)
    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    web: WebSettings = field(default_factory=WebSettings)
    log: LogSettings = field(default_factory=LogSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    # [places."KEY"]: each place's rules (bot/places.py), the widest first.
    places: dict[str, PlaceRules] = field(default_factory=dict)
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
    "limits.max_image_bytes": (64 * 1024, 200 * 1024 * 1024),
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
    "queue.claim_timeout_s": (5, 86_400),
    "bot.progress_interval_s": (0.1, 3600.0),
    "bot.variation_strength": (0.0, 1.0),
    "bot.strong_variation_strength": (0.0, 1.0),
    "bot.upscale_strength": (0.0, 1.0),
    "telegram.group_progress_interval_s": (0.1, 3600.0),
    "discord.daily_quota": (0, 1_000_000),
    "discord.cooldown_s": (0.0, 86_400.0),
    "web.port": (0, 65535),
    "backup.every_h": (0.0, 24.0 * 365),
    "backup.keep": (1, 10_000),
    "moderation.threshold": (0.0, 1.0),
    "moderation.log_days": (0, 3650),
}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_IMAGE_CHECK = re.compile(r"nudenet|none|[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def load(path: Path | None = None) -> Settings:
    """Read settings: `path`, else $AIDRAW_SETTINGS, else ./settings.toml, else all defaults.
    $AIDRAW_REDIS_URL, when set, replaces [queue] redis_url."""
    return _with_redis_url(_read(path))


def _with_redis_url(settings: Settings) -> Settings:
    url = os.environ.get(REDIS_URL_ENV, "").strip()
    if not url:
        return settings
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            f"{REDIS_URL_ENV}: not a Redis URL; allowed: redis://, rediss:// (TLS) or unix://"
        )
    return dataclasses.replace(settings, queue=dataclasses.replace(settings.queue, redis_url=url))


def _read(path: Path | None) -> Settings:
    if path is None:
        env = os.environ.get(SETTINGS_ENV)
        path = Path(env) if env else Path("settings.toml")
        if not env and not path.is_file():
            return Settings()
    try:
        # Windows Notepad (before 2019) starts UTF-8 files with a BOM, which TOML refuses.
        data = tomllib.loads(path.read_text(encoding="utf-8").removeprefix("\ufeff"))
    except OSError as e:
        raise SettingsError(f"{path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise SettingsError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); "
            "save it as UTF-8"
        ) from e
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
        if name == "places":
            try:
                tables[name] = read_places(value, source)
            except ConfigError as e:
                raise SettingsError(str(e)) from None
            continue
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
    if not DEVICE.fullmatch(settings.device.device):
        raise SettingsError(
            f"{source}: device.device: {settings.device.device!r} is not allowed; "
            "allowed: auto, cpu, cuda, cuda:N, mps"
        )
    try:
        check_request(GenerationRequest(prompt=""), settings.limits, settings.defaults)
    except InvalidRequest as e:
        raise SettingsError(f"{source}: defaults.{e.field}: {e}") from e
    if not _IMAGE_CHECK.fullmatch(settings.moderation.image_check):
        raise SettingsError(
            f"{source}: moderation.image_check: {settings.moderation.image_check!r} is not "
            'allowed; allowed: "nudenet", "none", "package.module:ClassName"'
        )
    if not settings.queue.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            f"{source}: queue.redis_url: not a Redis URL; allowed: redis://, rediss:// (TLS) or "
            "unix://"
        )
    upscaler = settings.bot.upscaler
    if not upscaler.strip() or upscaler in HIRES_ONLY_UPSCALERS:
        raise SettingsError(
            f"{source}: bot.upscaler: {upscaler!r} is not allowed: it upscales pictures, so "
            'use "Lanczos", "Nearest" or a file in models/ESRGAN'
        )


def env_token(name: str) -> str | None:
    """A bot token from the environment (never from settings.toml)."""
    value = os.environ.get(name, "").strip()
    return value or None
