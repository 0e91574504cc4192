"""Every user-facing error in both languages (bot/messages.py, issue item 16).

The English of an error is its raise site's message (`str(e)`); its Chinese is the template of
its `key` in ERRORS_ZH, formatted with its `params`. Checked here: every key a raise site in
bot/ or engine/ gives has a template whose placeholders are exactly that site's params; every
user-facing raise site gives one; and real errors from the chat parser, the request checks,
the model lookup and the engine come out in Chinese with no English left but names and values.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import errno
import re
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.messages import ERRORS_ZH, error_text, text
from bot.parse import read_request
from engine.checks import check_request
from engine.contracts import pick_model
from engine.engine import Engine
from engine.errors import EngineError, Phrase, QueueFull
from engine.prompting import check_emphasis, to_a1111
from engine.prompting.presets import nai_size, uc_preset_name
from engine.queue import QueueConfig
from engine.request import GenerationRequest, GenerationResult, Limits
from engine.results import ResultFiles
from tests.engine_fakes import FakeClock, FakeGenerate, FakeLoader, FakeRegistry

ROOT = Path(__file__).resolve().parent.parent
ERROR_CLASSES = {
    "EngineError",
    "InvalidRequest",
    "ModelNotFound",
    "QueueFull",
    "JobCancelled",
    "EngineClosed",
    "GenerationFailed",
    "ParseError",
}
# Raise sites whose message is not for chat users, so it has no key: (file, why).
NOT_FOR_USERS = {
    "engine/models/checkpoints.py": "a model's .toml sidecar is wrong: logged for the admin",
    "engine/models/sidecar.py": "a model's .toml sidecar is wrong: logged for the admin",
    "engine/job.py": "the message a finished job left in the journal, in the words it was saved",
}
# Names that Chinese text uses as they are (formats, acronyms, A1111's terms).
KEPT = {"CFG", "CLIP", "CPU", "ENSD", "GPU", "LoRA", "NAI", "NaN", "VAE", "pickle", "safetensors"}
# What users type as it is: tag and setting names, folders, an example name.
KEPT |= {"None", "models", "lora", "hypernet", "vram", "lowvram", "medvram", "anime"}
KEPT |= {"Latent", "Lanczos", "Nearest", "PNG", "JPEG", "WebP"}  # A1111's upscalers; image formats
FLAG = re.compile(r"--[a-z][a-z-]*")


# --- the raise sites ------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    path: str
    line: int
    key: str
    params: frozenset[str]

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.key}"


def _calls(package: str) -> Iterator[tuple[str, ast.Call]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                yield path.relative_to(ROOT).as_posix(), node


def _name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def find_sites() -> list[Site]:
    """Every `key="..."` given to an error (or to `super().__init__` in one), and every
    `Phrase(english, "key", ...)`, in bot/ and engine/; the params are the other keywords."""
    sites = []
    for package in ("bot", "engine"):
        for path, call in _calls(package):
            keywords = {k.arg: k.value for k in call.keywords}
            name = _name(call)
            if name == "Phrase" and len(call.args) >= 2:
                key, params = call.args[1], set(keywords)
            elif name in ERROR_CLASSES | {"__init__"} and "key" in keywords:
                key, params = keywords["key"], set(keywords) - {"key", "field"}
            else:
                continue
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                assert None not in params, f"{path}:{call.lineno}: **params hide the names"
                sites.append(Site(path, call.lineno, key.value, frozenset(params)))
    return sites


SITES = find_sites()


def placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def test_the_scan_finds_the_raise_sites() -> None:
    keys = {site.key for site in SITES}
    assert len(SITES) > 100
    assert {"unknown_flag", "steps_range", "queue_full", "did_you_mean", "needs_value"} <= keys


@pytest.mark.parametrize("site", SITES, ids=str)
def test_each_key_has_a_zh_template_with_the_sites_params(site: Site) -> None:
    assert site.key in ERRORS_ZH, f"{site}: no Chinese text in bot/messages.py ERRORS_ZH"
    template = ERRORS_ZH[site.key]
    assert placeholders(template) == site.params, f"{site}: {template!r}"
    template.format(**dict.fromkeys(site.params, 1))  # numbers, as most params are


def test_every_zh_template_is_used() -> None:
    assert set(ERRORS_ZH) == {site.key for site in SITES}


@pytest.mark.parametrize("key", sorted(ERRORS_ZH))
def test_zh_templates_have_no_english(key: str) -> None:
    said = ERRORS_ZH[key].format(**dict.fromkeys(placeholders(ERRORS_ZH[key]), 1))
    assert english_in(said) == [], said


def test_every_user_facing_error_has_a_key() -> None:
    """Errors built in engine/ and the chat parser pass `key=` (a re-raised one its own)."""
    missing = [
        f"{path}:{call.lineno} {ast.unparse(call)[:80]}"
        for package in ("engine", "bot")
        for path, call in _calls(package)
        if (package == "engine" or path in ("bot/parse.py", "bot/messages.py"))
        and _name(call) in ERROR_CLASSES - {"ModelNotFound", "QueueFull"}  # they set their own
        and "key" not in {k.arg for k in call.keywords}
        and path not in NOT_FOR_USERS
    ]
    assert missing == []


# --- real errors in Chinese -----------------------------------------------------------------


def param_texts(part: EngineError | Phrase) -> Iterator[str]:
    """The text of every value a message was made from (shown as it is in every language)."""
    for value in part.params.values():
        yield from _texts(value)


def _texts(value: object) -> Iterator[str]:
    if isinstance(value, EngineError | Phrase):
        if value.key is None:  # no translation: its text is shown as it is
            yield str(value)
        yield from param_texts(value)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    else:
        yield from (str(value), repr(value))


def english_in(said: str, error: EngineError | None = None) -> list[str]:
    """Words of three or more ASCII letters left once the params' values and flag names are
    taken out (names in KEPT are fine)."""
    values = sorted(param_texts(error), key=len, reverse=True) if error is not None else []
    for value in values:
        said = said.replace(value, " ")
    said = FLAG.sub(" ", said)
    return [word for word in re.findall(r"[A-Za-z]{3,}", said) if word not in KEPT]


LIMITS = Limits(max_steps=50)


def parsed(chat: str, **options: Any) -> Callable[[], object]:
    return lambda: read_request(chat, **options)


def checked(**fields: Any) -> Callable[[], object]:
    return lambda: check_request(GenerationRequest(**{"prompt": "cat", **fields}), LIMITS)


def picked(registry: FakeRegistry, default: str = "alpha", **fields: Any) -> Callable[[], object]:
    return lambda: pick_model(registry, GenerationRequest(prompt="cat", **fields), default)


SYNC_CASES: dict[str, Callable[[], object]] = {
    # the chat parser
    "unknown flag, close to one": parsed("cat --sede 3"),
    "unknown flag": parsed("cat --zzzzzz 1"),
    "not a whole number": parsed("cat --steps many"),
    "not a number": parsed("cat --scale high"),
    "not finite": parsed("cat --scale inf"),
    "bad size": parsed("cat --size huge"),
    "bad ratio": parsed("cat --ar wide"),
    "ratio too wide": parsed("cat --ar 9:1"),
    "ratio too tall": parsed("cat --ar 1:9"),
    "bad uc preset": parsed("cat --uc nothing"),
    "bad syntax": parsed("cat --syntax markdown"),
    "empty prompt": parsed("--seed 3"),
    "prompt too long": parsed("cat " * 30, max_chars=100),
    "negative prompt too long": parsed("cat --neg " + "bad " * 30, max_chars=100),
    "size and ar": parsed("cat --size 512x512 --ar 1:1"),
    "open quote": parsed('cat --neg "ugly'),
    "lone backslash": parsed("cat --neg ugly\\"),
    "hires scale": parsed("cat --hires big"),
    "hypernetwork flag": parsed("cat --hn a:b:c"),
    "hypernetwork strength": parsed("cat --hn anime:loud"),
    "strength": parsed("cat --strength half"),
    "word after a flag": parsed("cat --seed 1 dog"),
    "switch with a value": parsed("cat --no-quality=yes"),
    "flag without a value": parsed("cat --seed"),
    "flag without a value, with help params": parsed("cat --size"),
    "flag without a value, with the sampler groups": parsed("cat --sampler"),
    "weight not a number": parsed("(cat:1.2.3)"),
    "weight too large": parsed("(cat:" + "9" * 400 + ")"),
    "infotext number": parsed("cat\nSteps: twenty, Sampler: Euler a, Seed: 1"),
    "infotext emphasis": parsed("cat\nSteps: 20, Sampler: Euler a, Emphasis: Loud"),
    # the request checks
    "width": checked(width=100),
    "height": checked(height=4096),
    "too many pixels": checked(width=2048, height=2048),
    "steps": checked(num_inference_steps=500),
    "cfg": checked(guidance_scale=50.0),
    "count": checked(batch_size=99),
    "seed": checked(seed=2**40),
    "clip skip": checked(clip_skip=20),
    "prompt too long (engine)": lambda: check_request(
        GenerationRequest(prompt="cat " * 30), Limits(max_prompt_chars=100)
    ),
    "weight out of range": checked(negative_prompt="(((((ugly:90)))))"),
    "lora weight": checked(prompt="cat <lora:style:x>"),
    "unknown tag": checked(prompt="cat <wildcard:style>"),
    "empty vae": checked(vae=" "),
    "ensd": checked(ensd=-1),
    "rng": checked(rng="dice"),
    "variation seed": checked(subseed=-5),
    "variation strength": checked(subseed_strength=2.0),
    "seed resize": checked(seed_resize_from_w=10, seed_resize_from_h=10),
    "sampler, close to one": checked(sampler="Eulr a"),
    "sampler": checked(sampler="Warp drive"),
    # prompt presets and syntax
    "uc preset": lambda: uc_preset_name("everything"),
    "nai size": lambda: nai_size("enormous"),
    "prompt syntax": lambda: to_a1111("cat", "markdown"),
    "emphasis": lambda: check_emphasis("Loud"),
    # models
    "model hash not here": picked(FakeRegistry(), model="delta", model_hash="0123456789"),
    "model hash only": picked(FakeRegistry(), model_hash="0123456789"),
    "no models": picked(FakeRegistry(()), default=""),
    "unknown model, close to one": picked(FakeRegistry(), model="alpah"),
    "unknown model": picked(FakeRegistry(), model="zeta"),
}


@contextlib.asynccontextmanager
async def engine_at(tmp_path: Path, **config: Any) -> AsyncIterator[Engine[Any]]:
    engine: Engine[Any] = Engine(
        QueueConfig(
            **{
                "journal": str(tmp_path / "journal.sqlite3"),
                "results_dir": str(tmp_path / "results"),
                "warm_up": False,
                "admins": ("admin",),
                **config,
            }
        ),
        registry=FakeRegistry(),
        load=FakeLoader(broken=["gamma"]),
        generate=FakeGenerate(),
        limits=LIMITS,
        clock=FakeClock(),
    )
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        await engine.close(grace_s=5)
        await asyncio.wait_for(task, 5)


def req(user: str = "u1", **fields: Any) -> GenerationRequest:
    return GenerationRequest(prompt="cat", requester=user, seed=7, **fields)


async def queue_full_for_user(engine: Engine[Any]) -> None:
    engine.pause()
    engine.submit(req())
    engine.submit(req())


async def queue_full(engine: Engine[Any]) -> None:
    engine.pause()
    engine.submit(req("u1"))
    engine.submit(req("u2"))


async def no_such_job(engine: Engine[Any]) -> None:
    engine.cancel(999, by="u1")


async def not_your_job(engine: Engine[Any]) -> None:
    engine.pause()
    engine.cancel(engine.submit(req("u1")).id, by="u2")


async def cancelled(engine: Engine[Any], by: str = "u1") -> None:
    engine.pause()
    job = engine.submit(req("u1"))
    engine.cancel(job.id, by=by)
    await job.result()


async def cancelled_by_admin(engine: Engine[Any]) -> None:
    await cancelled(engine, by="admin")


async def swap_by_user(engine: Engine[Any]) -> None:
    await engine.swap_model("beta", by="u1")


async def swap_fails(engine: Engine[Any]) -> None:
    await engine.swap_model("gamma", by="admin")


async def model_does_not_load(engine: Engine[Any]) -> None:
    await engine.submit(req(model="gamma")).result()


async def shutting_down(engine: Engine[Any]) -> None:
    await engine.close()
    engine.submit(req())


async def restarting(engine: Engine[Any]) -> None:
    engine.pause()
    job = engine.submit(req())
    await engine.close()
    await job.result()


ENGINE_CASES: dict[str, Callable[[Engine[Any]], Awaitable[None]]] = {
    "queue full for the user": queue_full_for_user,
    "queue full": queue_full,
    "no such job": no_such_job,
    "not your job": not_your_job,
    "cancelled": cancelled,
    "cancelled by an admin": cancelled_by_admin,
    "swap by a user": swap_by_user,
    "swap fails": swap_fails,
    "model does not load": model_does_not_load,
    "shutting down": shutting_down,
    "restarting": restarting,
}
ENGINE_CONFIG = {
    "queue full for the user": {"max_queued_per_user": 1},
    "queue full": {"max_queued": 1},
}


def assert_said_in_both(error: EngineError) -> None:
    assert error.key is not None, f"no message key: {error}"
    zh = error_text(error, "zh")
    assert english_in(zh, error) == [], zh
    # English is what it was before keys: the message itself, framed as before.
    en = str(error) if isinstance(error, QueueFull) else text("error", "en", message=str(error))
    assert error_text(error, "en") == en


@pytest.mark.parametrize("case", SYNC_CASES)
def test_parser_and_check_errors_in_zh(case: str) -> None:
    with pytest.raises(EngineError) as raised:
        SYNC_CASES[case]()
    assert_said_in_both(raised.value)


@pytest.mark.parametrize("case", ENGINE_CASES)
async def test_engine_errors_in_zh(case: str, tmp_path: Path) -> None:
    async with engine_at(tmp_path, **ENGINE_CONFIG.get(case, {})) as engine:
        with pytest.raises(EngineError) as raised:
            await asyncio.wait_for(ENGINE_CASES[case](engine), 5)
    assert_said_in_both(raised.value)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_save_errors_in_zh(code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: Path, data: bytes) -> int:
        raise OSError(code, "cannot write")

    monkeypatch.setattr(Path, "write_bytes", fail)
    result = GenerationResult(png=b"png", seed=1, request=req(), infotext="cat")
    with pytest.raises(EngineError) as raised:
        ResultFiles(tmp_path).save(1, [result])
    assert_said_in_both(raised.value)
    assert ("磁盘已满" in error_text(raised.value, "zh")) == (code == errno.ENOSPC)


def test_zh_examples() -> None:
    """A few whole messages, as a Chinese user reads them."""
    with pytest.raises(EngineError) as unknown:
        read_request("cat --sede 3")
    assert error_text(unknown.value, "zh").startswith(
        "出错了：未知参数 --sede。你是不是想写 --seed？已知参数：--seed、--steps、"
    )
    with pytest.raises(EngineError) as steps:
        check_request(GenerationRequest(prompt="cat", num_inference_steps=500), LIMITS)
    assert error_text(steps.value, "zh") == "出错了：步数 500 不可用：请用 1 到 50。"
    with pytest.raises(EngineError) as pixels:
        check_request(GenerationRequest(prompt="cat", width=2048, height=2048), LIMITS)
    assert "最多 1,048,576 像素（例如 1024x1024）" in error_text(pixels.value, "zh")


def test_a_key_without_zh_text_falls_back_to_english() -> None:
    error = QueueFull(3, 3)
    error.key = "no_such_key"
    assert error_text(error, "zh") == str(error)


def test_english_is_the_message_as_before() -> None:
    with pytest.raises(EngineError) as raised:
        read_request("cat --hires-steps many")
    assert str(raised.value) == "--hires-steps needs a whole number, not 'many'."
    assert (
        error_text(raised.value, "en") == "Error: --hires-steps needs a whole number, not 'many'."
    )
    assert error_text(raised.value, "zh") == "出错了：--hires-steps 需要一个整数，而不是 'many'。"


def test_every_flag_a_help_text_names_works_and_the_add_on_flags_are_named() -> None:
    """Show only what works: a flag in any help text is one the parser reads; and the help
    texts name the flags of the add-ons and hires fix."""
    from bot.messages import MESSAGES
    from bot.parse import FLAGS

    for key, texts in MESSAGES.items():
        for locale, template in texts.items():
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", template):
                if flag != "--flags":  # "/draw <prompt> --flags": a placeholder
                    assert flag in FLAGS, f"{key} ({locale}) names {flag}, which does not parse"
    for key in ("tg_help", "web_welcome"):
        for locale in ("en", "zh"):
            for flag in ("--hn", "--vae", "--hires", "--strength"):
                assert flag in MESSAGES[key][locale], f"{key} ({locale}) lacks {flag}"
