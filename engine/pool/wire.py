"""What travels through Redis: key names and the JSON of batches, results and events.

Nothing read from Redis is trusted: every payload is parsed as JSON (never unpickled), checked
field by field, and a request is rebuilt only from GenerationRequest's own fields with their
types; the worker then submits it to its engine, whose door checks it as any submit does.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError
from engine.journal import _fits, _tuples
from engine.request import GenerationRequest

PREFIX = "aidraw:"
GROUP = "workers"  # the consumer group of every worker stream
EVENTS = PREFIX + "events"  # pub/sub: progress, done, cancel, hand-back
WORKERS = PREFIX + "workers"  # the set of worker names ever seen (until their stream is empty)
RESULT_TTL_S = 24 * 3600  # results, PNGs and sent pictures not taken stay this long in Redis
MAX_PNG_BYTES = 64 * 1024 * 1024  # one result image; a bigger one fails its job
MAX_PREVIEW_BYTES = 256 * 1024
MAX_PAYLOAD_BYTES = 1024 * 1024  # a batch entry (the requests' JSON; images travel apart)
IMAGE_FIELDS = ("init_image", "mask_image")

_TYPES = typing.get_type_hints(GenerationRequest)
_REQUIRED = frozenset(
    f.name
    for f in dataclasses.fields(GenerationRequest)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


class PoolUnreachable(EngineError):
    """Redis cannot be reached at start-up; the message (for the operator, not for users) names
    the URL without its password."""


class WireError(ValueError):
    """A payload from Redis is not what this version writes; the message says what is wrong."""


def stream(worker: str) -> str:
    """The stream of batches sent to one worker."""
    return f"{PREFIX}jobs:{worker}"


def heartbeat(worker: str) -> str:
    return f"{PREFIX}worker:{worker}"


def result_key(key: str) -> str:
    return f"{PREFIX}result:{key}"


def png_key(key: str, attempt: str, index: int) -> str:
    return f"{PREFIX}png:{key}:{attempt}:{index}"


def inflight_key(key: str) -> str:
    """Set while a job is in some worker's stream (the bot reads it after a restart)."""
    return f"{PREFIX}inflight:{key}"


def image_key(digest: str) -> str:
    return f"{PREFIX}image:{digest}"


def load_key(entry_id: str) -> str:
    """How a worker's load of a model (an admin's swap) went: "" or the error's text."""
    return f"{PREFIX}load:{entry_id}"


POOL_ADMIN = "pool:admin"  # who asks a worker's own engine for a model swap


@dataclass(frozen=True, kw_only=True)
class WireJob:
    """One job of a batch: its pool-wide key, the resolved request (seeds fixed), and the
    Redis keys of its pictures (img2img) by request field."""

    key: str
    request: GenerationRequest
    images: dict[str, str]


def encode_batch(jobs: list[WireJob]) -> str:
    items = []
    for job in jobs:
        fields = dataclasses.asdict(job.request)
        for name in IMAGE_FIELDS:
            fields[name] = None  # a path on the bot's disk means nothing to a worker
        items.append({"key": job.key, "request": fields, "images": job.images})
    return json.dumps({"jobs": items}, ensure_ascii=False)


def decode_batch(text: bytes | str) -> list[WireJob]:
    """The jobs of a stream entry; WireError if anything in it is not as written."""
    data = _json(text, MAX_PAYLOAD_BYTES)
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list) or not jobs or set(data) != {"jobs"}:
        raise WireError("a batch is {jobs: [...]} with at least one job")
    out = []
    for item in jobs:
        if not isinstance(item, dict) or set(item) != {"key", "request", "images"}:
            raise WireError("a job is {key, request, images}")
        key, images = item["key"], item["images"]
        if not _is_key(key):
            raise WireError(f"bad job key {key!r}")
        if not isinstance(images, dict) or not all(
            name in IMAGE_FIELDS and isinstance(digest, str) and digest.isalnum()
            for name, digest in images.items()
        ):
            raise WireError(f"job {key}: bad images {images!r}")
        out.append(WireJob(key=key, request=decode_request(item["request"]), images=images))
    return out


def decode_request(data: Any) -> GenerationRequest:
    """A request from its JSON fields: no unknown field, each of its declared type."""
    if not isinstance(data, dict):
        raise WireError("a request is a JSON object")
    unknown = set(data) - set(_TYPES)
    if unknown:
        raise WireError(f"unknown request fields {sorted(unknown)}")
    missing = _REQUIRED - set(data)
    if missing:
        raise WireError(f"request has no {', '.join(sorted(missing))}")
    values = {name: _tuples(value) for name, value in data.items()}
    for name, value in values.items():
        if not _fits(value, _TYPES[name]):
            raise WireError(f"request field {name} is {value!r}")
    return GenerationRequest(**values)


@dataclass(frozen=True, kw_only=True)
class WireImage:
    seed: int
    infotext: str
    png: str  # the Redis key of its bytes


@dataclass(frozen=True, kw_only=True)
class WireResult:
    """How a job ended on a worker: its images, or the user-safe error (key and simple params
    for translations when they are plain JSON values)."""

    state: str  # "done", "failed" or "cancelled"
    images: tuple[WireImage, ...] = ()
    error: str = ""
    error_key: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    worker: str = ""
    request: dict[str, Any] | None = None  # as drawn (defaults and seed filled), when done


def encode_result(result: WireResult) -> str:
    return json.dumps(dataclasses.asdict(result), ensure_ascii=False)


def decode_result(text: bytes | str) -> WireResult:
    data = _json(text, MAX_PAYLOAD_BYTES)
    names = {f.name for f in dataclasses.fields(WireResult)}
    if not isinstance(data, dict) or set(data) != names:
        raise WireError("a result has exactly the fields " + ", ".join(sorted(names)))
    state, images = data["state"], data["images"]
    if state not in ("done", "failed", "cancelled") or not isinstance(images, list):
        raise WireError(f"bad result state {state!r}")
    if not all(isinstance(data[k], str) for k in ("error", "worker")):
        raise WireError("a result's error and worker are text")
    if not (data["error_key"] is None or isinstance(data["error_key"], str)):
        raise WireError("a result's error_key is text")
    params = data["params"]
    if not isinstance(params, dict) or not all(
        name not in ("key", "message") and isinstance(value, str | int | float | bool)
        for name, value in params.items()
    ):
        raise WireError("a result's params are an object of plain values")
    if data["request"] is not None:
        decode_request(data["request"])  # checked here; the reader decodes it again
    parsed = []
    for image in images:
        if (
            not isinstance(image, dict)
            or set(image) != {"seed", "infotext", "png"}
            or not isinstance(image["seed"], int)
            or isinstance(image["seed"], bool)
            or not isinstance(image["infotext"], str)
            or not (isinstance(image["png"], str) and image["png"].startswith(PREFIX + "png:"))
        ):
            raise WireError(f"bad result image {image!r}")
        parsed.append(WireImage(**image))
    if state == "done" and not parsed:
        raise WireError("a done result without images")
    return WireResult(
        state=state,
        images=tuple(parsed),
        error=data["error"],
        error_key=data["error_key"],
        params=data["params"],
        worker=data["worker"],
        request=data["request"],
    )


def encode_event(kind: str, key: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "key": key, **fields})


def decode_event(text: bytes | str) -> dict[str, Any]:
    """An event as a dict with a known "type" and a job "key"; WireError otherwise."""
    data = _json(text, 2 * MAX_PREVIEW_BYTES)
    if (
        not isinstance(data, dict)
        or data.get("type")
        not in ("progress", "done", "cancel", "finish_early", "handback", "loaded")
        or not _is_key(data.get("key"))
    ):
        raise WireError("not an event")
    return data


def encode_png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_png(text: Any, limit: int) -> bytes | None:
    """Base64 PNG bytes of an event, or None when absent, too big or not a PNG."""
    if not isinstance(text, str) or len(text) > limit * 4 // 3 + 4:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(b"\x89PNG\r\n\x1a\n") else None


def _is_key(key: Any) -> bool:
    """Job keys are "<journal id>-<submitted ms>" (see dispatcher.job_key)."""
    if not isinstance(key, str) or len(key) > 40:
        return False
    first, _, second = key.partition("-")
    return first.isdigit() and second.isdigit()


def _json(text: bytes | str, limit: int) -> Any:
    if len(text) > limit:
        raise WireError(f"payload of {len(text)} bytes is over {limit}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WireError(f"not JSON ({e})") from None
