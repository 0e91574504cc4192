"""Discord: /draw and friends, and what the job buttons and the edit modal do (`DrawCog`).

`bot.discord.bot.run_discord` runs the bot; admin commands are `bot.discord.admin`. A job's
status message is the interaction's own reply while its token lasts (15 minutes), then a
channel message; buttons carry `aidraw:<action>:<job id>` custom ids, so they keep working
after a restart. Requesters are "discord:<user id>"; a job's reply address is
"discord:<channel id>:<user id>".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import shlex
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, Literal

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.ext import commands

from bot.discord.client import AidrawBot
from bot.discord.interactions import (
    NotAllowed,
    command_name,
    description,
    interaction_locale,
    model_choices,
    requester_of,
)
from bot.discord.reply import Reply, clip
from bot.discord.views import DRAW_COG, EditModal, job_view
from bot.messages import Locale, error_text, text
from bot.parse import FLAGS, ParsedRequest, PromptSettings, read_request
from bot.wordlist import find_word
from engine.errors import EngineClosed, EngineError, JobCancelled
from engine.generate import check_request
from engine.infotext import infotext_from_image
from engine.job import Job
from engine.journal import SavedImage
from engine.prompting.presets import NAI_SIZES
from engine.request import GenerationRequest, Progress
from engine.sampling.samplers import SAMPLERS

log = logging.getLogger(__name__)

SHUTDOWN_EDIT_S = 2.0  # at shutdown, how long a status message may take to say so


class DrawCog(commands.Cog, name=DRAW_COG):
    """Drawing and everything around it: /draw, /queue, /cancel, /settings, /history, /help, the
    job buttons and the edit modal. Admin commands are `bot.discord.admin.AdminCog`."""

    def __init__(self, bot: AidrawBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.settings = bot.settings
        self.store = bot.store
        self.config = bot.settings.discord
        self.quotas = bot.quotas
        self._last_submit: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def cog_load(self) -> None:
        self.bot.tree.on_error = self.on_tree_error  # type: ignore[method-assign]
        for job in self.engine.recovered():
            if job.reply_to.startswith("discord:"):
                record = self.engine.record(job.id)
                if record is None or not record.delivered:
                    self._spawn(self._deliver_recovered(job))

    async def cog_unload(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.type != discord.InteractionType.autocomplete:
            self._check_place(interaction)
        return True

    # --- the one error handler ----------------------------------------------------------------

    async def on_tree_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        await self.report(interaction, original)

    async def report(self, interaction: discord.Interaction, error: BaseException) -> None:
        """Tell the user what went wrong (only them); log what is not their doing."""
        locale = self._locale(interaction)
        if isinstance(error, NotAllowed):
            message = error.message
        elif isinstance(error, EngineError):
            message = error_text(error, locale)
        else:
            log.error("discord: %s failed", command_name(interaction), exc_info=error)
            message = text("failed", locale)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(clip(message), ephemeral=True)
            else:
                await interaction.response.send_message(clip(message), ephemeral=True)
        except discord.HTTPException as e:
            log.warning("discord: could not report %r to %s: %s", error, interaction.user.id, e)

    async def guard(
        self, interaction: discord.Interaction, work: Coroutine[Any, Any, None]
    ) -> None:
        """Run a button's or modal's work through the error handler (commands have the tree's)."""
        try:
            self._check_place(interaction)
            await work
        except Exception as e:
            work.close()
            await self.report(interaction, e)

    # --- /draw ----------------------------------------------------------------------------------

    @app_commands.command(name="draw", description=description("discord_cmd_draw"))
    @app_commands.describe(
        prompt=description("discord_opt_prompt"),
        negative=description("discord_opt_negative"),
        size=description("discord_opt_size"),
        seed=description("discord_opt_seed"),
        steps=description("discord_opt_steps"),
        scale=description("discord_opt_scale"),
        sampler=description("discord_opt_sampler"),
        model=description("discord_opt_model"),
        count=description("discord_opt_count"),
    )
    @app_commands.choices(sampler=[Choice(name=name, value=name) for name in SAMPLERS])
    async def draw(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 6000],
        negative: str | None = None,
        size: str | None = None,
        seed: app_commands.Range[int, -1, 2**32 - 1] | None = None,
        steps: app_commands.Range[int, 1, 1000] | None = None,
        scale: app_commands.Range[float, 1.0, 30.0] | None = None,
        sampler: str | None = None,
        model: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
    ) -> None:
        options: dict[str, Any] = {"--neg": negative, "--size": size, "--seed": seed}
        options |= {"--steps": steps, "--scale": scale, "--sampler": sampler}
        options |= {"--model": model, "--n": count}
        parsed = self._read(interaction, prompt, options)
        await self._start(interaction, parsed.request, parsed.notes)

    @draw.autocomplete("size")
    async def _sizes(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return _size_choices(current)

    @draw.autocomplete("model")
    async def _models(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return model_choices(self.engine, current)

    def _read(
        self, interaction: discord.Interaction, prompt: str, options: dict[str, Any]
    ) -> ParsedRequest:
        """The prompt and the typed options (as the flags they stand for) through the grammar."""
        user = requester_of(interaction.user)
        prefs = self.store.get(user)
        flags = [f"{flag} {shlex.quote(str(v))}" for flag, v in options.items() if v is not None]
        chat = "\n".join([prompt, " ".join(flags)]) if flags else prompt
        settings = prefs.prompt_settings(self.settings.prompt)
        return read_request(chat, prefs.request_defaults(user), user, settings=settings)

    async def _start(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        notes: Iterable[str] = (),
    ) -> None:
        """Admit and submit (a refusal is ephemeral, nothing queued), then defer and follow."""
        locale = self._locale(interaction)
        spoiler = self._admit(interaction, request, locale)
        reply_to = f"discord:{interaction.channel_id}:{interaction.user.id}"
        job = self.engine.submit(request, reply_to=reply_to)
        self._last_submit[request.requester] = time.monotonic()
        reply = Reply(
            self.bot,
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            interaction=interaction,
            moved=text("discord_moved", locale, job=job.id),
        )
        try:
            await interaction.response.defer(thinking=True)
        except discord.HTTPException as e:  # the interaction expired: answer in the channel
            log.warning("discord: job %d: cannot defer (%s); replying in the channel", job.id, e)
            reply.interaction = None
        self._spawn(self._deliver(reply, job, tuple(notes), locale, spoiler))

    def _admit(
        self, interaction: discord.Interaction, request: GenerationRequest, locale: Locale
    ) -> bool:
        """Banned words, NSFW policy, cooldown and quota: NotAllowed, or whether to spoiler."""
        user = request.requester
        if word := find_word(request.prompt, self.config.banned_words):
            raise NotAllowed(text("discord_banned", locale, word=word))
        spoiler = False
        nsfw_channel = getattr(interaction.channel, "is_nsfw", lambda: False)()
        word = find_word(request.prompt, self.config.nsfw_words)
        if word and not nsfw_channel and self.config.nsfw_policy != "allow":
            if self.config.nsfw_policy == "refuse":
                raise NotAllowed(text("discord_nsfw_refused", locale, word=word))
            spoiler = True
        if self.engine.is_admin(user):
            return spoiler
        wait = self._last_submit.get(user, -1e9) + self.config.cooldown_s - time.monotonic()
        if wait > 0:
            raise NotAllowed(text("discord_cooldown", locale, seconds=max(1, round(wait))))
        limit = self.quotas.limit(user)
        used = self.quotas.used(user, limit) if limit else 0
        if limit and used + request.batch_size > limit:
            raise NotAllowed(text("discord_quota_reached", locale, used=used, limit=limit))
        return spoiler

    # --- following a job ------------------------------------------------------------------------

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
    ) -> None:
        """Status edits while the job waits and draws, then the result in the same message."""
        finished = asyncio.Event()
        watcher = asyncio.create_task(self._watch(reply, job, notes, locale, finished))
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
            return  # shutting down: the journal keeps the job and cog_unload said so
        except asyncio.CancelledError:
            with contextlib.suppress(discord.HTTPException, TimeoutError):
                restarting = text("discord_restarting", locale)
                await asyncio.wait_for(reply.show(restarting, files=[], view=None), SHUTDOWN_EDIT_S)
            raise
        except JobCancelled:
            await self._finish(reply, job, text("cancelled", locale), [], None)
            return
        except EngineError as e:
            await self._finish(reply, job, error_text(e, locale), [], None)
            return
        files = [
            discord.File(io.BytesIO(r.png), f"aidraw-{job.id}-{r.seed}.png", spoiler=spoiler)
            for r in results
        ]
        view = job_view(("reroll", "vary", "edit", "delete"), job.id, locale)
        seeds = [r.seed for r in results]
        caption = self._caption(job.id, results[0].request, seeds, notes, locale)
        await self._finish(reply, job, caption, files, view)

    async def _finish(
        self,
        reply: Reply,
        job: Job,
        content: str,
        files: list[discord.File],
        view: discord.ui.View | None,
    ) -> None:
        try:
            await reply.show(content, files=files, view=view)
        except (discord.Forbidden, discord.NotFound) as e:
            log.warning("discord: job %d: cannot reply to %s: %s", job.id, job.reply_to, e)
        except discord.HTTPException as e:
            # Left undelivered: after the next restart the journal hands the job out again.
            log.warning("discord: job %d: reply failed, kept for later: %s", job.id, e)
            return
        with contextlib.suppress(EngineClosed):
            self.engine.mark_delivered(job.id)

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
            content = "\n".join([self._status(job.id, progress, locale), *notes])
            if shown is not None and (content, progress.preview) == shown:
                continue
            preview = progress.preview
            files = None
            if preview is not None and (shown is None or preview != shown[1]):
                files = [discord.File(io.BytesIO(preview), "preview.png")]
            try:
                await reply.show(content, files=files, view=view)
            except discord.HTTPException as e:  # progress is best effort; the result is not
                log.warning("discord: job %d: status edit failed: %s", job.id, e)
            shown = (content, preview)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), self.settings.bot.progress_interval_s)

    def _status(self, job_id: int, progress: Progress, locale: Locale) -> str:
        eta = text("eta", locale, seconds=round(progress.eta_s)) if progress.eta_s else ""
        if progress.state == "running":
            line = text("drawing", locale, step=progress.step, total=progress.total, eta=eta)
        else:
            line = text("queued", locale, position=progress.position or 1, eta=eta)
        return text("discord_job_line", locale, job=job_id, text=line)

    def _caption(
        self,
        job_id: int,
        request: GenerationRequest,
        seeds: Iterable[int],
        notes: Iterable[str],
        locale: Locale,
    ) -> str:
        seed = ", ".join(map(str, seeds))
        steps = request.num_inference_steps
        caption = text("caption", locale, seed=seed, model=request.model, steps=steps)
        return "\n".join([text("discord_job_line", locale, job=job_id, text=caption), *notes])

    async def _deliver_recovered(self, job: Job) -> None:
        """A job from before a restart: its result (or a new status message) in the channel."""
        _, channel_id, user_id = (job.reply_to.split(":") + ["0", "0"])[:3]
        locale = self.store.get(job.requester).locale or "en"
        found = find_word(job.request.prompt, self.config.nsfw_words)
        spoiler = found is not None and self.config.nsfw_policy != "allow"
        reply = Reply(self.bot, channel_id=int(channel_id), user_id=int(user_id))
        note = (text("discord_after_restart", locale),)
        await self._deliver(reply, job, note, locale, spoiler)

    # --- buttons and the edit modal -------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction, action: str, job_id: int) -> None:
        by = requester_of(interaction.user)
        locale = self._locale(interaction)
        if action == "cancel":
            if self.engine.cancel(job_id, by):
                await interaction.response.edit_message(
                    content=text("cancelled", locale), attachments=[], view=None
                )
            else:
                message = text("discord_already_finished", locale, job=job_id)
                await interaction.response.send_message(message, ephemeral=True)
        elif action == "delete":
            if by != self._owner(interaction, job_id) and not self.engine.is_admin(by):
                raise NotAllowed(text("discord_not_yours", locale))
            await interaction.response.defer()
            await interaction.delete_original_response()
            log.info("discord: %s deleted the message of job %d", by, job_id)
        else:
            request = await self._request_of(interaction, job_id, locale)
            request = dataclasses.replace(request, requester=by)
            if action == "edit":
                await interaction.response.send_modal(EditModal(self, request, locale))
                return
            if action == "reroll":
                request = dataclasses.replace(request, seed=None, subseed=None, subseed_strength=0)
            else:  # variations of the first image: its seed, a new variation seed (as A1111)
                strength = request.subseed_strength or self.settings.bot.variation_strength
                request = dataclasses.replace(request, subseed=None, subseed_strength=strength)
            await self._start(interaction, request)

    def _owner(self, interaction: discord.Interaction, job_id: int) -> str | None:
        """Who asked for the job: the journal, else whoever ran the message's command."""
        record = self.engine.record(job_id)
        if record is not None:
            return record.requester
        message = interaction.message
        metadata = message.interaction_metadata if message is not None else None
        return requester_of(metadata.user) if metadata is not None else None

    async def _request_of(
        self, interaction: discord.Interaction, job_id: int, locale: Locale
    ) -> GenerationRequest:
        """The job's request with its first image's seed: from the journal, or (once the
        journal has forgotten it) from the infotext in the clicked message's PNG."""
        record = self.engine.record(job_id)
        if record is not None and record.images:
            return dataclasses.replace(record.request, seed=record.images[0].seed)
        message = interaction.message
        for attachment in message.attachments if message else []:
            if attachment.filename.lower().endswith(".png"):
                infotext = _infotext(await attachment.read())
                if infotext:
                    parsed = read_request(infotext, requester=requester_of(interaction.user))
                    return parsed.request
        raise NotAllowed(text("discord_gone", locale, job=job_id))

    async def edited(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        prompt: str,
        negative: str,
    ) -> None:
        """The edit modal's text on top of the old request (same seed); flags work in it."""
        base = dataclasses.replace(request, negative_prompt=negative)
        # The old prompt already holds the quality tags and the preset: add none again.
        plain = PromptSettings(quality_tags=False, uc_preset="None")
        parsed = read_request(prompt, base, request.requester, settings=plain)
        await self._start(interaction, parsed.request, parsed.notes)

    # --- /queue, /cancel, /settings, /history, /help --------------------------------------------

    @app_commands.command(name="queue", description=description("discord_cmd_queue"))
    async def queue(self, interaction: discord.Interaction) -> None:
        user = requester_of(interaction.user)
        locale = self._locale(interaction)
        lines = [self._job_line(job, locale) for job in self.engine.jobs(user)]
        status = self.engine.status()
        paused = text("discord_paused_note", locale) if status.paused else ""
        lines.append(text("discord_queue_total", locale, queued=status.queued, paused=paused))
        limit = self.quotas.limit(user)
        if limit and not self.engine.is_admin(user):
            used = self.quotas.used(user, limit)
            lines.append(text("discord_quota_today", locale, used=used, limit=limit))
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    def _job_line(self, job: Job, locale: Locale) -> str:
        p = job.progress
        eta = text("eta", locale, seconds=round(p.eta_s)) if p.eta_s else ""
        if p.state == "running":
            return text(
                "discord_queue_drawing", locale, job=job.id, step=p.step, total=p.total, eta=eta
            )
        return text("discord_queue_waiting", locale, job=job.id, position=p.position, eta=eta)

    @app_commands.command(name="cancel", description=description("discord_cmd_cancel"))
    @app_commands.describe(job=description("discord_opt_job"))
    async def cancel(self, interaction: discord.Interaction, job: int | None = None) -> None:
        user = requester_of(interaction.user)
        locale = self._locale(interaction)
        if job is None:
            mine = self.engine.jobs(user)
            if not mine:
                raise NotAllowed(text("discord_nothing_to_cancel", locale))
            job = max(j.id for j in mine)
        key = (
            "discord_cancelled_job" if self.engine.cancel(job, user) else "discord_already_finished"
        )
        await interaction.response.send_message(text(key, locale, job=job), ephemeral=True)

    @app_commands.command(name="settings", description=description("discord_cmd_settings"))
    @app_commands.describe(
        size=description("discord_opt_size"),
        steps=description("discord_opt_steps"),
        scale=description("discord_opt_scale"),
        sampler=description("discord_opt_sampler"),
        negative=description("discord_opt_negative"),
        uc_preset=description("discord_opt_uc"),
        quality_tags=description("discord_opt_quality"),
        syntax=description("discord_opt_syntax"),
        language=description("discord_opt_language"),
        reset=description("discord_opt_reset"),
    )
    @app_commands.choices(sampler=[Choice(name=name, value=name) for name in SAMPLERS])
    async def user_settings(
        self,
        interaction: discord.Interaction,
        size: str | None = None,
        steps: app_commands.Range[int, 1, 1000] | None = None,
        scale: app_commands.Range[float, 1.0, 30.0] | None = None,
        sampler: str | None = None,
        negative: str | None = None,
        uc_preset: Literal["Low Quality + Bad Anatomy", "Low Quality", "None"] | None = None,
        quality_tags: bool | None = None,
        syntax: Literal["a1111", "nai"] | None = None,
        language: Literal["en", "zh"] | None = None,
        reset: bool = False,
    ) -> None:
        user = requester_of(interaction.user)
        if reset:
            self.store.reset(user)
        changes = {
            "num_inference_steps": steps,
            "guidance_scale": scale,
            "sampler": sampler,
            "negative_prompt": negative,
            "uc_preset": uc_preset,
            "quality_tags": quality_tags,
            "syntax": syntax,
            "locale": language,
        }
        self._save_settings(user, size, {k: v for k, v in changes.items() if v is not None})
        locale = self._locale(interaction)
        prefs = dataclasses.asdict(self.store.get(user))
        values = "\n".join(f"{k} = {v}" for k, v in prefs.items() if v is not None)
        message = text("discord_settings_show", locale, values=values)
        if not values:
            key = "discord_settings_reset" if reset else "discord_settings_none"
            message = text("discord_settings_show", locale, values=text(key, locale))
        await interaction.response.send_message(clip(message), ephemeral=True)

    def _save_settings(self, user: str, size: str | None, changes: dict[str, Any]) -> None:
        """Check that /draw will accept these defaults (InvalidRequest says why not), save."""
        if size is not None:
            sized = read_request(f"x --size {shlex.quote(size)}").request
            changes |= {"width": sized.width, "height": sized.height}
        if not changes:
            return
        fields = {k: v for k, v in changes.items() if k in _REQUEST_FIELDS}
        template = self.store.get(user).request_defaults(user)
        request = dataclasses.replace(template, prompt="x", **fields)
        check_request(request, self.settings.limits, self.settings.defaults)
        self.store.update(user, **changes)

    @user_settings.autocomplete("size")
    async def _settings_sizes(
        self, interaction: discord.Interaction, current: str
    ) -> list[Choice[str]]:
        return _size_choices(current)

    @app_commands.command(name="history", description=description("discord_cmd_history"))
    @app_commands.describe(job=description("discord_opt_job"))
    async def history(self, interaction: discord.Interaction, job: int | None = None) -> None:
        user = requester_of(interaction.user)
        locale = self._locale(interaction)
        if job is None:
            lines = [
                text(
                    "discord_history_line",
                    locale,
                    job=record.id,
                    when=f"<t:{int(record.submitted_at)}:R>",
                    seed=", ".join(str(image.seed) for image in record.images),
                    prompt=clip(record.request.prompt, 80),
                )
                for record in self.engine.history(user, limit=10)
            ]
            message = "\n".join(lines) or text("discord_history_empty", locale)
            await interaction.response.send_message(clip(message), ephemeral=True)
            return
        record = self.engine.record(job)
        if (
            record is None
            or record.state != "done"
            or (record.requester != user and not self.engine.is_admin(user))
        ):
            raise NotAllowed(text("discord_gone", locale, job=job))
        files = await asyncio.to_thread(_saved_files, job, record.images)
        if not files:
            raise NotAllowed(text("discord_gone", locale, job=job))
        view = job_view(("reroll", "vary", "edit", "delete"), job, locale)
        seeds = [image.seed for image in record.images]
        caption = self._caption(job, record.request, seeds, (), locale)
        await interaction.response.send_message(caption, files=files, view=view, ephemeral=True)

    @app_commands.command(name="help", description=description("discord_cmd_help"))
    async def help(self, interaction: discord.Interaction) -> None:
        flags = ", ".join(f"`{name}` ({flag.help})" for name, flag in FLAGS.items())
        message = text("discord_help", self._locale(interaction), flags=flags)
        await interaction.response.send_message(clip(message), ephemeral=True)

    # --- where and in which language ------------------------------------------------------------

    def _check_place(self, interaction: discord.Interaction) -> None:
        """allowed_guilds / allowed_channels / allow_dms (admins may use the bot anywhere)."""
        config = self.config
        if self.engine.is_admin(requester_of(interaction.user)):
            return
        if interaction.guild_id is None:
            if not config.allow_dms:
                raise NotAllowed(text("discord_no_dms", self._locale(interaction)))
            return
        if (config.allowed_guilds and interaction.guild_id not in config.allowed_guilds) or (
            config.allowed_channels and interaction.channel_id not in config.allowed_channels
        ):
            raise NotAllowed(text("discord_not_here", self._locale(interaction)))

    def _locale(self, interaction: discord.Interaction) -> Locale:
        return interaction_locale(self.store, interaction)


_REQUEST_FIELDS = {"width", "height", "num_inference_steps", "guidance_scale", "sampler"}


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    """A background task's work; a failure is logged, not lost with the task."""
    try:
        await work
    except Exception:
        log.exception("discord: a reply task failed")


def _size_choices(current: str) -> list[Choice[str]]:
    labels = [f"{name} ({w}x{h})" for name, (w, h) in NAI_SIZES.items()]
    found = [label for label in labels if current.lower() in label.lower()]
    return [Choice(name=label, value=label.split()[0]) for label in found[:25]]


def _saved_files(job_id: int, images: Iterable[SavedImage]) -> list[discord.File]:
    """The journal's PNGs that are still on disk, as attachments."""
    return [
        discord.File(io.BytesIO(Path(image.path).read_bytes()), f"aidraw-{job_id}-{image.seed}.png")
        for image in images
        if Path(image.path).is_file()
    ]


def _infotext(png: bytes) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as image:
            return infotext_from_image(image)
    except (UnidentifiedImageError, OSError):
        return None
