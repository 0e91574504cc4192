"""Doctor: `aidraw doctor` checks an installation and explains what it finds on one screen.

Each check gives Findings: ok, a warning, a problem (with its fix), or skipped. Problems make
the exit code 1. Tokens are only ever said to be set or not; the chat APIs are asked who the
bot is (a short timeout; `--offline` skips them). Nothing is loaded onto a GPU unless
`--load` asks for each model to be loaded for real.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bot.settings import Settings, SettingsError, env_token, from_dict, load

Level = Literal["ok", "warn", "fail", "skip"]
GIB = 1024**3
MIN_FREE = 1 * GIB  # below this, finished images and journal writes start failing
LOW_FREE = 5 * GIB
TELEGRAM_API = "https://api.telegram.org/bot"
DISCORD_API = "https://discord.com/api/v10"
TOKENS = {
    "AIDRAW_DISCORD_TOKEN": "Discord bot",
    "AIDRAW_TELEGRAM_TOKEN": "Telegram bot",
    "AIDRAW_WEB_TOKEN": "web chat access",
    "AIDRAW_API_TOKEN": "API bearer token",
    "AIDRAW_API_AUTH": "API users",
}


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, what was found, and how to fix a problem."""

    area: str
    level: Level
    text: str
    fix: str = ""


async def examine(
    path: Path | None, *, offline: bool = False, load_models: bool = False, timeout_s: float = 5.0
) -> list[Finding]:
    """Every check, in the order the report shows them."""
    settings, findings = _settings(path)
    findings += _torch(settings)
    registry, model_findings = _models(settings, load_models)
    findings += model_findings
    findings += _meaning(settings, registry)
    findings += _tokens()
    if offline:
        findings.append(Finding("chat APIs", "skip", "--offline: Discord and Telegram not asked"))
    else:
        findings += await _chat_apis(timeout_s)
    findings += await _redis(settings, timeout_s)
    findings += _disk(settings)
    findings += _journal(settings)
    return findings


def report(findings: list[Finding]) -> str:
    """The findings as one screen of text, ending with the count of problems."""
    width = max(9, *(len(f.area) for f in findings))  # "chat APIs"
    marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}
    lines = []
    for f in findings:
        lines.append(f"{marks[f.level]}  {f.area:<{width}}  {f.text}")
        if f.fix:
            lines.append(f"      {'':<{width}}  fix: {f.fix}")
    problems = sum(1 for f in findings if f.level == "fail")
    lines.append(
        "no problems found" if not problems else f"{problems} problem(s) found (FAIL lines)"
    )
    return "\n".join(lines)


# --- settings ---------------------------------------------------------------------------------


def _settings(path: Path | None) -> tuple[Settings, list[Finding]]:
    """The settings, or their error and the tables that are right (so the other checks still
    run on what the file says, e.g. its models_dir)."""
    shown = path or os.environ.get("AIDRAW_SETTINGS") or "settings.toml"
    try:
        settings = load(path)
    except SettingsError as e:
        fix = (
            f"edit {shown}: the settings.toml shipped with aidraw lists every key, its default "
            "and what it allows"
        )
        return _good_tables(Path(shown)), [Finding("settings", "fail", str(e), fix)]
    if path is None and not os.environ.get("AIDRAW_SETTINGS") and not Path(shown).is_file():
        return settings, [Finding("settings", "ok", "no settings.toml here: every default")]
    return settings, [Finding("settings", "ok", f"{shown} read")]


def _good_tables(path: Path) -> Settings:
    """Settings from the tables of `path` that are right on their own; defaults for the rest."""
    root = path.resolve().parent
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8").removeprefix("\ufeff"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return Settings(root=root)
    good = {}
    for name, table in data.items():
        try:
            from_dict({name: table}, root=root)
        except SettingsError:
            continue
        good[name] = table
    try:
        return from_dict(good, root=root)
    except SettingsError:  # right one by one, wrong together
        return Settings(root=root)


def _meaning(settings: Settings, registry: Any) -> list[Finding]:
    """Settings that are valid one by one but not together with this machine."""
    from bot.api.access import Credentials, is_loopback

    findings = []
    default = settings.engine.default_model
    if default and registry is not None and registry.models:
        try:
            registry.get(default)
        except Exception:
            names = ", ".join(registry.models)
            findings.append(
                Finding(
                    "settings",
                    "fail",
                    f"[engine] default_model = {default!r} is not in {settings.models_dir}",
                    f'set default_model to one of: {names} (or "" for the first one)',
                )
            )
    try:
        credentials = Credentials.from_env()
    except SettingsError as e:
        findings.append(Finding("settings", "fail", str(e), "fix the variable and restart"))
        credentials = None
    host = settings.web.host
    if not is_loopback(host) and (
        env_token("AIDRAW_WEB_TOKEN") is None or credentials is None or not credentials.required
    ):
        findings.append(
            Finding(
                "settings",
                "fail",
                f"[web] host = {host!r} is reachable from other machines without access tokens",
                "set AIDRAW_WEB_TOKEN and AIDRAW_API_TOKEN (or AIDRAW_API_AUTH), "
                'or use host = "127.0.0.1"',
            )
        )
    bots = env_token("AIDRAW_DISCORD_TOKEN") or env_token("AIDRAW_TELEGRAM_TOKEN")
    if settings.web.serve == "never" and not bots:
        findings.append(
            Finding(
                "settings",
                "fail",
                '[web] serve = "never" and no bot token: `aidraw run` would serve nothing',
                'set AIDRAW_DISCORD_TOKEN or AIDRAW_TELEGRAM_TOKEN, or serve = "auto"',
            )
        )
    return findings


# --- torch and the device ---------------------------------------------------------------------


def _torch(settings: Settings) -> list[Finding]:
    try:
        import torch
    except ImportError as e:
        return [Finding("torch", "fail", f"cannot import torch: {e}", "run `make install`")]
    build = f"torch {torch.__version__}"
    build += f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU build)"
    wanted = settings.device.device
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        fix = (
            "install the CUDA build of torch (`make install` on a machine where nvidia-smi works)"
            if not torch.version.cuda
            else "check the NVIDIA driver (nvidia-smi)"
        )
        return [
            Finding(
                "torch",
                "fail",
                f"{build}: [device] device = {wanted!r} but CUDA is not available",
                f'{fix}, or set [device] device = "auto" to draw on the CPU',
            )
        ]
    try:
        device = settings.device.resolve_device()
        dtype = str(settings.device.resolve_dtype(device)).removeprefix("torch.")
    except (RuntimeError, ValueError) as e:
        return [Finding("torch", "fail", f"{build}: device {wanted!r}: {e}", "fix [device] device")]
    if device.type == "cuda":
        index = device.index or 0
        if index >= torch.cuda.device_count():
            return [
                Finding(
                    "torch",
                    "fail",
                    f"{build}: {wanted} but only {torch.cuda.device_count()} GPU(s)",
                    "set [device] device to cuda:0 … cuda:N-1",
                )
            ]
        props = torch.cuda.get_device_properties(index)
        where = f"GPU {index}: {props.name}, {props.total_memory / GIB:.1f} GiB"
    else:
        where = (
            f"{device.type.upper()}: {torch.get_num_threads()} threads of {os.cpu_count()} cores"
        )
    return [Finding("torch", "ok", f"{build}; draws on {where}, {dtype}")]


# --- models -----------------------------------------------------------------------------------


def _models(settings: Settings, load_models: bool) -> tuple[Any, list[Finding]]:
    from engine.models import ModelRegistry

    folder = settings.models_dir
    if not folder.is_dir():
        return None, [
            Finding(
                "models",
                "fail",
                f"the models folder {folder} does not exist",
                "run `aidraw build-demo` (or `make demo`) to make it with the demo model, or "
                "set [engine] models_dir to the folder that holds your checkpoints",
            )
        ]
    registry = ModelRegistry(folder, settings.defaults)
    findings = []
    if not registry.models:
        findings.append(
            Finding(
                "models",
                "fail",
                f"no model in {folder}",
                "run `aidraw build-demo`, or put a .safetensors checkpoint (or a diffusers "
                "folder) there",
            )
        )
    for entry in registry.models.values():
        problem = _model_problem(entry) if not load_models else None
        if load_models and problem is None:
            problem = _load_problem(registry, entry, settings)
        if problem is None:
            findings.append(Finding("models", "ok", f"{entry.name} [{entry.kind}]"))
        else:
            findings.append(
                Finding(
                    "models",
                    "fail",
                    f"{entry.name} ({entry.path.name}): {problem}",
                    f"replace {entry.path.name} with a complete copy, or move it out of {folder}",
                )
            )
    for problem in registry.problems:
        findings.append(Finding("models", "warn", problem, "see `aidraw models`"))
    return registry, findings


def _model_problem(entry: Any) -> str | None:
    """Why a model cannot load, from its files' headers only (no weights are read)."""
    from safetensors import safe_open

    from engine.models import check_ckpt, load_problem

    path: Path = entry.path
    files = [path] if path.is_file() else sorted(path.glob("*/*.safetensors"))
    try:
        if path.is_dir() and (problem := _missing_parts(path)) is not None:
            return problem
        for file in files:
            if file.suffix == ".ckpt":
                check_ckpt(file)
                continue
            with safe_open(str(file), framework="pt") as f:  # reads the header only
                keys = list(f.keys())
            if file is path and not any(k.startswith("model.diffusion_model.") for k in keys):
                return (
                    "no UNet weights (model.diffusion_model.*): not a full checkpoint (a LoRA, "
                    "VAE or embedding belongs in models/Lora, models/VAE, models/embeddings)"
                )
    except Exception as e:
        return str(load_problem(e, path))
    return None


def _missing_parts(path: Path) -> str | None:
    from engine.models import load_problem

    phrase = load_problem(RuntimeError("incomplete"), path)
    return None if str(phrase).startswith("RuntimeError") else str(phrase)


def _load_problem(registry: Any, entry: Any, settings: Settings) -> str | None:
    """Load the model for real, as the bot would (seconds to minutes per model)."""
    try:
        registry.load(entry.name, settings.device)
    except Exception as e:
        return str(getattr(e, "problem", None) or e)
    return None


# --- tokens and the chat APIs -----------------------------------------------------------------


def _tokens() -> list[Finding]:
    present = [label for name, label in TOKENS.items() if env_token(name) is not None]
    missing = [label for name, label in TOKENS.items() if env_token(name) is None]
    text = f"set: {', '.join(present) or 'none'}; not set: {', '.join(missing) or 'none'}"
    findings = [Finding("tokens", "ok", text)]
    if env_token("AIDRAW_DISCORD_TOKEN") is None and env_token("AIDRAW_TELEGRAM_TOKEN") is None:
        findings.append(
            Finding(
                "tokens",
                "warn",
                "no bot token: `aidraw run` serves the local web chat only",
                "set AIDRAW_DISCORD_TOKEN and/or AIDRAW_TELEGRAM_TOKEN in the environment",
            )
        )
    return findings


async def _chat_apis(timeout_s: float) -> list[Finding]:
    import aiohttp

    checks = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if (token := env_token("AIDRAW_TELEGRAM_TOKEN")) is not None:
            root = os.environ.get("AIDRAW_TELEGRAM_API_URL") or TELEGRAM_API
            checks.append(_ask(session, "telegram", f"{root}{token}/getMe", {}, token))
        if (token := env_token("AIDRAW_DISCORD_TOKEN")) is not None:
            root = os.environ.get("AIDRAW_DISCORD_API_URL") or DISCORD_API
            headers = {"Authorization": f"Bot {token}"}
            checks.append(_ask(session, "discord", f"{root}/users/@me", headers, token))
        if not checks:
            return [Finding("chat APIs", "skip", "no bot token to try")]
        return list(await asyncio.gather(*checks))


async def _ask(
    session: Any, platform: str, url: str, headers: dict[str, str], token: str
) -> Finding:
    """Ask a chat API who the bot is; the token never appears in what is said."""
    import aiohttp

    variable = f"AIDRAW_{platform.upper()}_TOKEN"
    where = url.replace(token, "<token>")
    try:
        async with session.get(url, headers=headers) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        reason = (str(e) or type(e).__name__).replace(token, "<token>")
        return Finding(
            platform,
            "fail",
            f"{where} did not answer: {reason}",
            "check the network (or a proxy), or run `aidraw doctor --offline`",
        )
    if response.status in (401, 403, 404):
        return Finding(
            platform,
            "fail",
            f"the API refused the token (HTTP {response.status})",
            f"make a new token ({_TOKEN_HOME[platform]}) and set {variable}",
        )
    if response.status != 200:
        return Finding(platform, "warn", f"the API answered HTTP {response.status}", "try later")
    user = body.get("result", body) if isinstance(body, dict) else {}
    name = user.get("username", "?") if isinstance(user, dict) else "?"
    return Finding(platform, "ok", f"the API answers: the bot is {name}")


_TOKEN_HOME = {
    "telegram": "Telegram's @BotFather",
    "discord": "Discord developer portal, Bot page",
}


# --- disk and the journal ---------------------------------------------------------------------


# --- Redis (the worker pool) --------------------------------------------------------------------


async def _redis(settings: Settings, timeout_s: float) -> list[Finding]:
    """With `[queue] backend = "redis"`: Redis answers, keeps what it is told (the journal's
    promises need its append-only file and no eviction), and how many workers are alive."""
    if settings.queue.backend != "redis":
        return [Finding("redis", "skip", '[queue] backend = "local": no Redis used')]
    import redis.asyncio as aioredis  # only a pool needs it
    from redis.exceptions import RedisError, ResponseError

    from engine.pool import wire
    from engine.pool.dispatcher import safe_url

    url = safe_url(settings.queue.redis_url)
    client: Any = aioredis.from_url(
        settings.queue.redis_url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry_on_timeout=False,
    )
    try:
        await client.ping()
        try:
            config = {
                **await client.config_get("appendonly"),
                **await client.config_get("maxmemory-policy"),
            }
        except ResponseError:  # CONFIG renamed or forbidden (managed Redis): cannot tell
            config = {}
        names = sorted(n.decode() for n in await client.smembers(wire.WORKERS))
        beats = await client.mget([wire.heartbeat(n) for n in names]) if names else []
    except (RedisError, OSError) as e:
        return [
            Finding(
                "redis",
                "fail",
                f"{url} does not answer: {e}",
                "start redis-server there, or set [queue] redis_url / AIDRAW_REDIS_URL to it "
                "(with its password: redis://:PASSWORD@HOST:6379/0; TLS: rediss://)",
            )
        ]
    finally:
        await client.aclose()
    findings = [Finding("redis", "ok", f"{url} answers")]
    if config.get("appendonly", "yes") != "yes":
        findings.append(
            Finding(
                "redis",
                "warn",
                "append-only file off: queued jobs and results are lost if Redis restarts",
                "appendonly yes and appendfsync everysec in redis.conf (README: the worker pool)",
            )
        )
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        findings.append(
            Finding(
                "redis",
                "fail",
                f"maxmemory-policy {policy}: Redis may evict queued jobs and results",
                "maxmemory-policy noeviction in redis.conf",
            )
        )
    alive = [n for n, beat in zip(names, beats, strict=True) if beat is not None]
    if alive:
        findings.append(Finding("workers", "ok", f"{len(alive)} alive: {', '.join(alive)}"))
    else:
        findings.append(
            Finding(
                "workers",
                "warn",
                "no `aidraw worker` is alive: jobs wait until one starts",
                "start `aidraw worker` (one per GPU), or `aidraw run --worker`",
            )
        )
    return findings


def _disk(settings: Settings) -> list[Finding]:
    findings = []
    journal = settings.queue.journal
    places = {"results": settings.root / settings.queue.results_dir}
    if journal != ":memory:":
        places["journal"] = (settings.root / journal).parent
    for label, place in places.items():
        existing = place
        while not existing.exists():
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        text = f"{label} ({place}): {free / GIB:.1f} GiB free"
        if not os.access(existing, os.W_OK):
            findings.append(
                Finding("disk", "fail", f"{text}, not writable", f"let aidraw's user write {place}")
            )
        elif free < MIN_FREE:
            findings.append(
                Finding("disk", "fail", text, "free space there, or move it ([queue] in settings)")
            )
        elif free < LOW_FREE:
            findings.append(Finding("disk", "warn", text, "free some space soon"))
        else:
            findings.append(Finding("disk", "ok", text))
    return findings


def _journal(settings: Settings) -> list[Finding]:
    journal = settings.queue.journal
    if journal == ":memory:":
        return [Finding("journal", "warn", 'journal = ":memory:": jobs are lost at a restart')]
    path = settings.root / journal
    if not path.is_file():
        return [Finding("journal", "ok", f"{path} (made at the first start)")]
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            jobs = db.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            return [Finding("journal", "ok", f"{path}: in use by a running aidraw")]
        result = str(e)
    except sqlite3.DatabaseError as e:
        result = str(e)
    if result != "ok":
        return [
            Finding(
                "journal",
                "fail",
                f"{path} is damaged: {result}",
                "stop aidraw, then `aidraw restore BACKUP_DIR`, or move the file away (the "
                "bot starts a new, empty one)",
            )
        ]
    size = path.stat().st_size
    return [Finding("journal", "ok", f"{path}: {size / 1024:.0f} KiB, {jobs} job(s) waiting")]
