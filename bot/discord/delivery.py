"""Discord: job delivery (`Delivery`): following each submitted job to its result.

A job's one message (see `bot.discord.reply.Reply`) shows its queue position and ETA, then its
steps and preview, then the images with their buttons; a job the journal hands back after a
restart is delivered in its channel. The status lines carry the parser's notes and the size
warning (`bot.advice.size_warning`); the result keeps the notes. A job is marked delivered once
its result is shown. The result is tried again through transient failures
(`Reply.show(retry=True)`); progress edits are best effort (the next one comes anyway), and
never hold up the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

import discord

from bot.advice import size_warning
from bot.discord.client import AidrawBot
from bot.discord.reply import TRANSIENT, Attachment, Reply
from bot.discord.views import job_view, result_actions
from bot.messages import Locale, error_text, text
from bot.messages import caption as result_line
from bot.places import Place, PlaceRules
from engine.errors import EngineClosed, EngineError, JobCancelled
from engine.job import Job
from engine.request import GenerationRequest, Progress

log = logging.getLogger(__name__)

SHUTDOWN_EDIT_S = 2.0  # at shutdown, how long a status message may take to say so


class Delivery:
    """The jobs being followed, one background task each; `close` cancels them (each status
    message then says the bot is restarting, and the journal keeps the job)."""

    def __init__(self, bot: AidrawBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.store = bot.store
        self.settings = bot.settings
        self.config = bot.settings.discord
        self._tasks: set[asyncio.Task[None]] = set()

    def follow(
        self,
        reply: Reply,
        job: Job,
        notes: Iterable[str],
        locale: Locale,
        spoiler: bool,
        place: Place,
        rules: PlaceRules,
    ) -> None:
        """Follow a job just submitted, in the background; its status warns about a size far
        above the model's own."""
        warning = size_warning(self.engine, job, locale)
        advice = (warning,) if warning else ()
        work = self._deliver(reply, job, tuple(notes), locale, spoiler, place, rules, advice)
        self._spawn(work)

    def recover(self) -> None:
        """Follow the Discord jobs from before a restart that were not delivered."""
        for job in self.engine.recovered():
            if job.reply_to.startswith("discord:"):
                record = self.engine.record(job.id)
                if record is None or not record.delivered:
                    self._spawn(self._deliver_recovered(job))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(_logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self,
        reply: Reply,
        job: Job,
        notes: tuple[str, ...],
        locale: Locale,
        spoiler: bool,
        place: Place,
        rules: PlaceRules,
        advice: tuple[str, ...] = (),
    ) -> None:
        """Status edits while the job waits and draws (with the notes and `advice` under
        them), then the result in the same message (with the notes), once the image check
        (bot/policy.py) has judged it: sent, spoilered, or withheld."""
        finished = asyncio.Event()
        status_notes = (*notes, *advice)
        watcher = asyncio.create_task(self._watch(reply, job, status_notes, locale, finished))
        try:
            try:
                results = await job.result()
            except asyncio.CancelledError:
                watcher.cancel()
                await asyncio.wait({watcher})
                raise
            finally:
                # Not cancelled: an edit in flight must land first (or a status message created
                # at this moment would be left behind, and the result sent as another one).
                finished.set()
                if not watcher.cancelled():
                    await watcher
        except EngineClosed:
            return  # shutting down: the journal keeps the job and close() said so
        except asyncio.CancelledError:
            with contextlib.suppress(discord.HTTPException, *TRANSIENT):
                restarting = text("discord_restarting", locale)
                await asyncio.wait_for(reply.show(restarting, files=[], view=None), SHUTDOWN_EDIT_S)
            raise
        except JobCancelled:
            await self._finish(reply, job, text("cancelled", locale), [], None)
            return
        except EngineError as e:
            await self._finish(reply, job, error_text(e, locale), [], None)
            return
        policy = self.bot.policy
        review = await policy.review(place, results)
        spoiler = spoiler or review.outcome == "spoiler"
        files = [Attachment(f"aidraw-{job.id}-{r.seed}.png", r.png, spoiler) for r in results]
        view: discord.ui.View | None = job_view(result_actions(results[0].request), job.id, locale)
        seeds = [r.seed for r in results]
        infotexts = [r.infotext for r in results]
        content = caption(job.id, results[0].request, seeds, infotexts, notes, locale)
        if rules.output == "minimal":
            content = text("policy_minimal", locale, job=job.id)
        elif rules.output == "verbose" or review.outcome == "spoiler":
            content = "\n".join([content, review.note(locale)])
        if review.outcome == "refuse":
            content, files, view = policy.withheld(job.id, review, locale), [], None
        if await self._finish(reply, job, content, files, view):
            channel = reply.channel_id
            messages = [reply.message_id] if reply.message_id else []
            policy.logged(job.id, job.request, place, review, chat=channel, messages=messages)
            if rules.delete_after_s and place.group:
                self._spawn(self._recall(reply, job.id, rules.delete_after_s))

    async def _recall(self, reply: Reply, job_id: int, after_s: float) -> None:
        """Auto-delete a group's result after `after_s` seconds ([places] delete_after_s)."""
        await asyncio.sleep(after_s)
        try:
            await reply.delete()
        except (discord.HTTPException, *TRANSIENT) as e:
            log.warning("discord: job %d: auto-delete failed: %r", job_id, e)

    async def _finish(
        self,
        reply: Reply,
        job: Job,
        content: str,
        files: list[Attachment],
        view: discord.ui.View | None,
    ) -> bool:
        """Show the job's last message; whether it was shown."""
        shown = True
        try:
            await reply.show(content, files=files, view=view, retry=True)
        except (discord.Forbidden, discord.NotFound) as e:
            log.warning("discord: job %d: cannot reply to %s: %s", job.id, job.reply_to, e)
            shown = False
        except (discord.HTTPException, *TRANSIENT) as e:
            # Left undelivered: after the next restart the journal hands the job out again.
            log.error("discord: job %d: reply failed, kept for later: %r", job.id, e)
            return False
        with contextlib.suppress(EngineClosed):
            self.engine.mark_delivered(job.id)
        return shown

    async def _watch(
        self,
        reply: Reply,
        job: Job,
        notes: tuple[str, ...],
        locale: Locale,
        finished: asyncio.Event,
    ) -> None:
        """Queue position and ETA, then steps and the preview: at most every interval, until
        `finished` is set."""
        view = job_view(("cancel",), job.id, locale)
        shown: tuple[str, bytes | None] | None = None
        async for progress in job.updates():
            if finished.is_set() or progress.state not in ("queued", "running"):
                return
            content = "\n".join([_status(job, progress, locale), *notes])
            if shown is not None and (content, progress.preview) == shown:
                continue
            preview = progress.preview
            files = None
            if preview is not None and (shown is None or preview != shown[1]):
                files = [Attachment("preview.png", preview)]
            try:
                await reply.show(content, files=files, view=view)
            except (discord.HTTPException, *TRANSIENT) as e:  # best effort; the result is not
                log.warning("discord: job %d: status edit failed: %r", job.id, e)
            shown = (content, preview)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), self.settings.bot.progress_interval_s)

    async def _deliver_recovered(self, job: Job) -> None:
        """A job from before a restart: its result (or a new status message) in the channel."""
        _, channel_id, user_id = (job.reply_to.split(":") + ["0", "0"])[:3]
        locale = self.store.get(job.requester).locale or "en"
        # The channel's server and age restriction are not known here: its own rules hold.
        place = Place(frontend="discord", chat=int(channel_id))
        rules = self.bot.policy.rules(place)
        found = self.bot.policy.nsfw_word(place, job.request.prompt)
        spoiler = found is not None and self.bot.policy.nsfw(place, rules) != "allow"
        reply = Reply(self.bot, channel_id=int(channel_id), user_id=int(user_id))
        note = (text("discord_after_restart", locale),)
        await self._deliver(reply, job, note, locale, spoiler, place, rules)


def caption(
    job_id: int,
    request: GenerationRequest,
    seeds: Sequence[int],
    infotexts: Sequence[str],
    notes: Iterable[str],
    locale: Locale,
) -> str:
    """What a result's images say (also /history's): the job, then every frontend's result
    line (seeds, model, steps, a variation's seed and strength), then the notes."""
    line = result_line(request, seeds, infotexts, locale)
    return "\n".join([text("discord_job_line", locale, job=job_id, text=line), *notes])


def _status(job: Job, progress: Progress, locale: Locale) -> str:
    eta = text("eta", locale, seconds=round(progress.eta_s)) if progress.eta_s else ""
    if progress.state == "running" and job.request.extras_upscale:
        line = text("upscaling", locale, eta=eta)  # nothing is drawn: no steps
    elif progress.state == "running":
        line = text("drawing", locale, step=progress.step, total=progress.total, eta=eta)
    else:
        line = text("queued", locale, position=progress.position or 1, eta=eta)
    return text("discord_job_line", locale, job=job.id, text=line)


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    """A background task's work; a failure is logged, not lost with the task."""
    try:
        await work
    except Exception:
        log.exception("discord: a reply task failed")
