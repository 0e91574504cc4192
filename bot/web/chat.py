"""The web chat's state: the one user's jobs, the job watchers and open sockets they report
to, the settings and model actions, and the JSON shapes of all of it that the page is sent.

`bot/web/app.py` serves it over HTTP and WebSocket; this module knows no routes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from bot import messages
from bot.addons import OWN_VAE
from bot.advice import size_warning
from bot.classifier import Verdict
from bot.messages import LOCALES, Locale, caption, locale_of, sampler_help, text, worker_lines
from bot.parse import ParseError
from bot.pictures import (
    check_extras,
    check_upscale_size,
    extras_request,
    store_picture,
    upscale_choice,
    upscale_request,
)
from bot.places import Place
from bot.policy import Policy, Review
from bot.prefs import FIELDS, UserPrefs, UserSettingsStore, model_defaults
from bot.settings import Settings
from engine.checks import check_request
from engine.config import ConfigError, build
from engine.contracts import ModelInfo
from engine.engine import Engine
from engine.errors import EngineClosed, EngineError, InvalidRequest, JobCancelled
from engine.job import Job
from engine.journal import JobRecord, SavedImage
from engine.prompting.presets import LOW_QUALITY_BAD_ANATOMY
from engine.request import GenerationRequest, GenerationResult, Progress

log = logging.getLogger(__name__)

USER = "web:local"
PLACE = Place(frontend="web")  # the web chat's one place ([places.web])
HISTORY = 20  # finished drawings shown when the page opens
# Telegram's send_as_document means nothing here: the page always links the original PNG.
PREF_FIELDS = tuple(name for name in FIELDS if name != "send_as_document")
_DRAW = re.compile(r"/draw(?:@\w+)?(?=\s|$)\s*")
_UPSCALE = re.compile(r"/upscale(?:@\w+)?(?=\s|$)\s*", re.IGNORECASE)
_COMMAND = re.compile(r"/[A-Za-z]\w*")


@dataclass(frozen=True, kw_only=True)
class WebReply:
    """A web job's `reply_to` in the journal: what the chat showed for the job, so that a
    reload or a restart shows the same (its request keeps only the expanded prompt)."""

    said: str | None = None  # the chat text as typed, for a drawing from the composer
    of: int | None = None  # the job whose reroll, variations or upscale button made this one
    image: int | None = None  # that job's image, for variations and upscales
    upscale: bool | None = None  # made by the upscale button
    picture: bool | None = None  # the typed text came with a picture (img2img, /upscale)
    mask: bool | None = None  # and with a mask painted over it (inpainting)

    def __str__(self) -> str:
        kept = {name: value for name, value in vars(self).items() if value is not None}
        return f"{USER}:{json.dumps(kept, ensure_ascii=False)}"

    @classmethod
    def parse(cls, value: str) -> WebReply | None:
        """None if `value` is another frontend's; a bare USER = a job from before WebReply."""
        if value == USER:
            return cls()
        if not value.startswith(f"{USER}:"):
            return None
        try:
            data = json.loads(value.removeprefix(f"{USER}:"))
            names = ("said", "of", "image", "upscale", "picture", "mask")
            return cls(**{name: data[name] for name in names if name in data})
        except (ValueError, TypeError):
            log.warning("web chat: unreadable reply_to %r", value)
            return cls()

    @classmethod
    def view(cls, reply_to: str, request: GenerationRequest, job_id: int) -> dict[str, Any]:
        """The user's bubble ("said"; a job from before WebReply shows its prompt; "picture"
        and "mask": the addresses of the picture and mask sent with it) and the button that
        made the job ("origin")."""
        reply = cls.parse(reply_to) or cls()
        legacy = reply.said is None and reply.of is None
        origin = None
        if reply.of is not None:
            origin = {"job": reply.of, "image": reply.image, "upscale": bool(reply.upscale)}
        picture = f"/pictures/{job_id}.png" if reply.picture and request.init_image else None
        mask = f"/masks/{job_id}.png" if picture and reply.mask and request.mask_image else None
        return {
            "said": request.prompt if legacy else reply.said,
            "origin": origin,
            "picture": picture,
            "mask": mask,
        }


class WebChat:
    """The page's server side: the engine calls, the user's settings, sockets, job watchers."""

    def __init__(
        self,
        engine: Engine[Any],
        settings: Settings,
        store: UserSettingsStore,
        *,
        token: str | None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.store = store
        self.token = token
        self.sockets: dict[web.WebSocketResponse, Locale] = {}
        self.watchers: dict[int, asyncio.Task[None]] = {}
        self.policy = Policy(settings, engine)  # places, quotas, the image check, the log

    @property
    def admin(self) -> bool:
        return self.engine.is_admin(USER)

    def locale(self, request: web.Request) -> Locale:
        """The user's saved language, else the browser's."""
        return self.store.get(USER).locale or browser_locale(request)

    # --- drawing --------------------------------------------------------------------------

    async def draw(
        self,
        chat_text: str,
        locale: Locale,
        picture: bytes | None = None,
        mask: bytes | None = None,
    ) -> tuple[Job, list[str]]:
        """Chat text (`/draw ...` or a plain prompt), and a picture to draw from (img2img)
        with a mask over it (inpainting) → a queued job and the notes (the parser's, the
        picture's, the size warning). `/upscale [SCALE] [UPSCALER]` with a picture: that
        picture made bigger without drawing (A1111's Extras)."""
        stripped = chat_text.strip()
        if match := _UPSCALE.match(stripped):
            return await self.upscale_picture(stripped[match.end() :], locale, chat_text, picture)
        if match := _DRAW.match(stripped):
            stripped = stripped[match.end() :]
        elif match := _COMMAND.match(stripped):
            message = text("web_unknown_command", locale, command=match[0])
            raise ParseError(message, field="command")
        prefs = self.store.get(USER)
        parsed = self.policy.read(PLACE, stripped, prefs, USER, locale)
        self.policy.admit(PLACE, parsed.request, locale, picture=picture is not None)
        request, notes = parsed.request, [*parsed.notes]
        if picture is not None:  # after the prompt's checks: the engine's door
            path, picture_notes = await store_picture(self.engine, picture, locale)
            request = dataclasses.replace(request, init_image=path)
            notes += picture_notes
        if mask is not None:  # without a picture, the door says a mask needs one
            path, _ = await store_picture(self.engine, mask, locale, mask=True)
            request = dataclasses.replace(request, mask_image=path)
        reply = WebReply(
            said=chat_text,
            picture=picture is not None or None,
            mask=(picture is not None and mask is not None) or None,
        )
        job = self.submit(request, reply)
        warning = size_warning(self.engine, job, locale)
        return job, [*notes, *([warning] if warning else [])]

    async def upscale_picture(
        self, args: str, locale: Locale, chat_text: str, picture: bytes | None
    ) -> tuple[Job, list[str]]:
        """`/upscale [SCALE] [UPSCALER]` (defaults: ×2, [bot] upscaler) with a picture."""
        scale, upscaler = upscale_choice(self.engine, args, self.settings.bot.upscaler)
        request = extras_request("", scale=scale, upscaler=upscaler, requester=USER)
        check_extras(request, self.settings.limits)
        if picture is None:
            message = text("web_upscale_needs_picture", locale)
            raise InvalidRequest(message, field="image")
        self.policy.admit(PLACE, request, locale, picture=True)
        path, notes = await store_picture(self.engine, picture, locale)
        request = dataclasses.replace(request, init_image=path)
        check_upscale_size(request, self.settings.limits)
        job = self.submit(request, WebReply(said=chat_text, picture=True))
        return job, [*notes]

    def submit(self, request: GenerationRequest, reply: WebReply) -> Job:
        """Submit (the buttons' requests pass the policy here; a typed one passed it already,
        before its picture was stored), then follow the job."""
        if reply.of is not None:
            self.policy.admit(PLACE, request, self.store.get(USER).locale or "en")
        job = self.engine.submit(request, reply_to=str(reply))
        self.policy.started(request)
        self.watch(job)
        return job

    def finished(self, job_id: int) -> JobRecord:
        """A job of this user that the journal still remembers."""
        record = self.engine.record(job_id)
        if record is None or record.requester != USER:
            raise InvalidRequest(f"Job {job_id} is no longer in the history.", field="job")
        return record

    def reroll(self, job_id: int) -> Job:
        """The same request with a new seed (nothing is parsed again)."""
        record = self.finished(job_id)
        request = dataclasses.replace(record.request, seed=None, requester=USER)
        return self.submit(request, WebReply(of=job_id))

    def variations(self, job_id: int, image: int, *, strong: bool = False) -> Job:
        """Image `image` (1-based) of a job, varied subtly or strongly: its seed, a random
        variation seed at [bot] variation_strength or strong_variation_strength."""
        record = self.finished(job_id)
        if not 1 <= image <= len(record.images):
            raise InvalidRequest(f"Job {job_id} has no image {image}.", field="image")
        bot = self.settings.bot
        request = dataclasses.replace(
            record.request,
            seed=record.images[image - 1].seed,
            subseed=None,
            subseed_strength=bot.strong_variation_strength if strong else bot.variation_strength,
            requester=USER,
        )
        return self.submit(request, WebReply(of=job_id, image=image))

    async def upscale(self, job_id: int, image: int) -> Job:
        """Image `image` (1-based) of a job at twice its size (bot.pictures.upscale_request:
        hires fix, or img2img from the picture for one drawn from a picture, at [bot]
        upscale_strength; or its PNG upscaled without drawing, with [bot] upscale_with =
        "extras" and for an upscale of a picture)."""
        record = self.finished(job_id)
        if not 1 <= image <= len(record.images):
            raise InvalidRequest(f"Job {job_id} has no image {image}.", field="image")
        saved = record.images[image - 1]
        bot = self.settings.bot

        async def png() -> bytes:
            try:
                return await asyncio.to_thread(Path(saved.path).read_bytes)
            except OSError:
                raise InvalidRequest(
                    f"Job {job_id} is no longer in the history.", field="job"
                ) from None

        request = await upscale_request(
            self.engine,
            dataclasses.replace(record.request, requester=USER),
            seed=saved.seed,
            infotext=saved.infotext,
            strength=self.settings.bot.upscale_strength,
            png=png,
            extras=bot.upscaler if bot.upscale_with == "extras" else None,
        )
        check_upscale_size(request, self.settings.limits)
        return self.submit(request, WebReply(of=job_id, image=image, upscale=True))

    def watch(self, job: Job) -> None:
        """Tell every open page about the job until it ends, then confirm the reply."""
        task = asyncio.create_task(self._watch(job), name=f"web-job-{job.id}")
        self.watchers[job.id] = task
        task.add_done_callback(lambda _: self.watchers.pop(job.id, None))

    async def _watch(self, job: Job) -> None:
        shown: bytes | None = None
        try:
            async for progress in job.updates():
                if progress.state in ("queued", "running"):
                    preview = progress.preview if progress.preview is not shown else None
                    shown = progress.preview
                    await self.broadcast(
                        functools.partial(self.progress_event, job, progress, preview)
                    )
            results = await job.result()
            review = await self.policy.review(PLACE, results)
            self.policy.logged(job.id, job.request, PLACE, review, chat=None, messages=[])
        except EngineClosed:
            return  # shutting down: the job stays in the journal and comes back on restart
        except Exception as e:
            said = apology(e)
            final = job.progress
            await self.broadcast(
                lambda locale: {
                    "type": "failed",
                    "job": {**self.job_view(job, final, locale, None), "status": said[locale]},
                }
            )
        else:
            await self.broadcast(
                lambda locale: {
                    "type": "done",
                    "job": self.done_view(job.id, job.request, job.reply_to, results, locale),
                }
            )
        with contextlib.suppress(EngineClosed):
            self.engine.mark_delivered(job.id)

    def progress_event(
        self, job: Job, progress: Progress, preview: bytes | None, locale: Locale
    ) -> dict[str, Any]:
        return {"type": "progress", "job": self.job_view(job, progress, locale, preview)}

    async def broadcast(self, event: Callable[[Locale], dict[str, Any]]) -> None:
        saved = self.store.get(USER).locale
        for ws, asked in list(self.sockets.items()):
            try:
                await ws.send_json(event(saved or asked))
            except (ConnectionError, RuntimeError):  # the page went away meanwhile
                self.sockets.pop(ws, None)

    # --- settings and models --------------------------------------------------------------

    def save_prefs(self, values: Mapping[str, Any]) -> UserPrefs:
        """Check the whole new set (types, then what the engine would accept), then save."""
        unknown = sorted(set(values) - set(PREF_FIELDS))
        if unknown:
            raise InvalidRequest(f"Unknown setting {unknown[0]!r}.", field=unknown[0])
        try:
            prefs = build(UserPrefs, values, "settings", base=self.store.get(USER))
        except ConfigError as e:
            raise InvalidRequest(str(e).removeprefix("settings.")) from None

        check = dataclasses.replace(prefs.request_defaults(USER), prompt="x")
        check_request(
            check, self.settings.limits, model_defaults(self.engine, self.settings.defaults)
        )
        return self.store.update(USER, **values)

    async def swap_model(self, name: str) -> str:
        swapped = await self.engine.swap_model(name, by=USER)
        event = {"type": "model", **addons_view(self.engine.model_info(swapped))}
        await self.broadcast(lambda locale: event)
        return swapped

    async def set_addons(self, *, vae: str | None, hypernet: str | None) -> ModelInfo:
        """The default model's VAE and/or hypernetwork, once it drew a test image with them;
        every open page is told (as a model swap is)."""
        info = await self.engine.set_addon_defaults(USER, vae=vae, hypernet=hypernet)
        event = {"type": "addons", **addons_view(info)}
        await self.broadcast(lambda locale: event)
        return info

    def addons(self) -> dict[str, Any]:
        """The default model's VAE and hypernetwork, and the files there are to choose from."""
        model = self.engine.default_model
        current = addons_view(self.engine.model_info(model)) if model else {}
        return {
            "vae": current.get("vae", OWN_VAE),
            "hypernet": current.get("hypernet", ""),
            "vaes": self.engine.addon_names("VAE"),
            "hypernets": self.engine.addon_names("hypernetwork"),
        }

    # --- what the page shows --------------------------------------------------------------

    def state(self, locale: Locale) -> dict[str, Any]:
        """Everything the page needs to (re)draw itself."""
        from engine.sampling.samplers import SAMPLER_GROUPS, infotext_sampler
        from engine.sampling.schedules import SCHEDULE_LABELS

        prefs = self.store.get(USER)
        defaults = model_defaults(self.engine, self.settings.defaults)
        # No schedule type = the sampler name's own schedule, as A1111 v1.9 labels it.
        schedule = infotext_sampler(prefs.sampler or defaults.sampler, None)[1]
        records = reversed(self.engine.history(USER, HISTORY))
        return {
            "type": "state",
            "user": USER,
            "admin": self.admin,
            "locale": locale,
            "strings": strings(locale),
            "prefs": {name: getattr(prefs, name) for name in PREF_FIELDS},
            "defaults": {
                **dataclasses.asdict(defaults),
                "schedule_type": schedule,
                "negative_prompt": "",
                "uc_preset": self.settings.prompt.uc_preset,
                "quality_tags": self.settings.prompt.quality_tags,
                "syntax": self.settings.prompt.syntax,
                "locale": locale,
            },
            "choices": {
                # A1111 v1.9's names in groups, common first (old names are valid too).
                "sampler": [
                    {"label": text(f"web_samplers_{group}", locale), "names": list(names)}
                    for group, names in SAMPLER_GROUPS.items()
                ],
                "schedule_type": list(SCHEDULE_LABELS),
                "uc_preset": [LOW_QUALITY_BAD_ANATOMY, "Low Quality", "None"],
                "syntax": ["a1111", "nai"],
                "locale": list(LOCALES),
            },
            "models": self.engine.models(),
            "model": self.engine.default_model,
            "max_image_bytes": self.settings.limits.max_image_bytes,
            "quota": self.policy.quota_text(PLACE, USER, locale),
            "styles": self.policy.styles_text(PLACE, USER, locale),
            "sampler_help": sampler_help(locale),
            **self.addons(),
            "history": [
                self.done_view(r.id, r.request, r.reply_to, r.images, locale) for r in records
            ],
            "jobs": [self.snapshot(job, locale) for job in self.engine.jobs(USER)],
            "workers": worker_lines(self.engine.workers(), locale),
        }

    def job_view(
        self, job: Job, progress: Progress, locale: Locale, preview: bytes | None
    ) -> dict[str, Any]:
        """A waiting or drawing job; `preview` None = keep the one the page shows."""
        return {
            "id": job.id,
            "state": progress.state,
            "request": request_view(job.request),
            **WebReply.view(job.reply_to, job.request, job.id),
            "position": progress.position,
            "step": progress.step,
            "total": progress.total,
            "eta_s": progress.eta_s,
            "status": status_text(progress, locale, upscaling=job.request.extras_upscale),
            "preview": _data_url(preview) if preview is not None else None,
        }

    def snapshot(self, job: Job, locale: Locale) -> dict[str, Any]:
        progress = job.progress
        return self.job_view(job, progress, locale, progress.preview)

    def done_view(
        self,
        job_id: int,
        request: GenerationRequest,
        reply_to: str,
        images: Sequence[GenerationResult | SavedImage],
        locale: Locale,
    ) -> dict[str, Any]:
        """A finished job: just drawn (its results) or from the journal (its saved images)."""
        said = WebReply.view(reply_to, request, job_id)
        if images:  # the seed drawn, where the request left it to chance
            request = dataclasses.replace(request, seed=images[0].seed)
        status, outcome = text("done", locale), self.outcome(job_id, request)
        entry = self.policy.log.get(job_id)
        review = None
        if entry is not None:
            verdict = Verdict(entry.label, entry.score)
            review = Review(verdict, (verdict,), "refuse" if outcome == "refuse" else "send")
        output = self.policy.rules(PLACE).output
        if review is not None and outcome == "refuse":  # flagged; [places.web] refuses NSFW
            status = self.policy.withheld(job_id, review, locale)
            images = []
        elif review is not None and (output == "verbose" or outcome == "spoiler"):
            status = f"{status} {review.note(locale)}"
        views = [
            image_view(job_id, i, image.seed, image.infotext, request, locale)
            for i, image in enumerate(images, start=1)
        ]
        if output == "minimal":  # the images only
            views = [{**view, "caption": ""} for view in views]
        return {
            "id": job_id,
            "state": "done",
            "request": request_view(request),
            **said,
            "status": status,
            "spoiler": outcome == "spoiler",
            "images": views,
        }

    def outcome(self, job_id: int, request: GenerationRequest) -> str:
        """What the policy did with a finished job: the moderation log's word, else the
        prompt's NSFW words ("send", "spoiler" or "refuse")."""
        entry = self.policy.log.get(job_id)
        if entry is not None:
            return entry.outcome
        rule = self.policy.nsfw(PLACE)
        word = self.policy.nsfw_word(PLACE, request.prompt)
        return rule if word is not None and rule != "allow" else "send"


def browser_locale(request: web.Request) -> Locale:
    """The browser's language: the page's ?lang=, else its Accept-Language."""
    asked = request.query.get("lang") or request.headers.get("Accept-Language") or ""
    return locale_of(asked.split(",")[0])


def request_view(request: GenerationRequest) -> dict[str, Any]:
    """What the page says of a request ("extras_upscale": an upscale of a picture, by
    "hr_scale" with "hr_upscaler"; nothing was drawn)."""
    fields = ("prompt", "negative_prompt", "width", "height", "num_inference_steps")
    more = ("guidance_scale", "sampler", "seed", "model", "batch_size", "subseed_strength")
    upscale = ("extras_upscale", "hr_scale", "hr_upscaler")
    return {name: getattr(request, name) for name in (*fields, *more, *upscale)}


def image_view(
    job_id: int, index: int, seed: int, infotext: str, request: GenerationRequest, locale: Locale
) -> dict[str, Any]:
    return {
        "index": index,
        "url": f"/images/{job_id}/{index}.png",
        "filename": f"aidraw-{job_id}-{index}-{seed}.png",
        "seed": seed,
        "caption": caption(request, [seed], [infotext], locale),
        "infotext": infotext,
    }


def status_text(progress: Progress, locale: Locale, *, upscaling: bool = False) -> str:
    """A job's status line (`upscaling`: an upscale of a picture, which has no steps)."""
    eta = "" if progress.eta_s is None else text("eta", locale, seconds=round(progress.eta_s))
    if progress.state == "queued":
        if progress.position is None:
            return text("web_waiting", locale)
        return text("queued", locale, position=progress.position, eta=eta)
    if progress.state == "running" and upscaling:
        return text("upscaling", locale, eta=eta)
    if progress.state == "running":
        return text("drawing", locale, step=progress.step, total=progress.total, eta=eta)
    if progress.state == "cancelled":
        return text("cancelled", locale)
    if progress.state == "done":
        return text("done", locale)
    return text("error", locale, message=progress.error or "")


def addons_view(info: ModelInfo) -> dict[str, Any]:
    return {"model": info.name, "vae": info.defaults.vae, "hypernet": info.defaults.hypernet}


def strings(locale: Locale) -> dict[str, str]:
    """The page's own strings, plus the shared ones it shows by itself."""
    keys = [key for key in messages.MESSAGES if key.startswith("web_")]
    keys += ["failed", "cancelled", "done"]
    return {key: messages.MESSAGES[key][locale] for key in keys}


def apology(error: Exception) -> dict[Locale, str]:
    """The one error handler: what to tell the user about `error`, in each language."""
    if isinstance(error, JobCancelled):
        return {locale: text("cancelled", locale) for locale in LOCALES}
    if isinstance(error, EngineError):
        return {locale: messages.error_text(error, locale) for locale in LOCALES}
    log.error("web chat: unexpected error", exc_info=error)
    return {locale: text("failed", locale) for locale in LOCALES}


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
