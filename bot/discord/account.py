"""Discord: a user's own jobs and defaults (`AccountCog`): /queue, /cancel, /settings, /history.

Drawing itself (/draw, /help, the job buttons) is `bot.discord.draw.DrawCog`, whose handler on
the command tree reports these commands' errors too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import discord
from discord import app_commands
from discord.app_commands import Choice

from bot.discord.client import AidrawBot
from bot.discord.delivery import caption
from bot.discord.interactions import (
    NotAllowed,
    PlaceCheckedCog,
    description,
    interaction_locale,
    place_of,
    requester_of,
    size_choices,
)
from bot.discord.reply import clip
from bot.discord.views import job_view, result_actions
from bot.messages import Locale, text, worker_lines
from bot.messages import caption as messages_caption
from bot.parse import read_request
from bot.prefs import REQUEST_FIELDS, model_defaults
from bot.stylebook import CSV_BYTES
from engine.checks import check_request
from engine.infotext import format_number
from engine.job import Job
from engine.journal import SavedImage
from engine.request import GenerationRequest
from engine.sampling.samplers import V19_SAMPLERS, infotext_sampler
from engine.sampling.schedules import SCHEDULE_LABELS


class AccountCog(PlaceCheckedCog, name="Account"):
    """What a user has with the bot besides drawing: their jobs, their /draw defaults, their
    past results."""

    def __init__(self, bot: AidrawBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.settings = bot.settings
        self.store = bot.store
        self.quotas = bot.quotas

    # --- /queue, /cancel ------------------------------------------------------------------------

    @app_commands.command(name="queue", description=description("discord_cmd_queue"))
    async def queue(self, interaction: discord.Interaction) -> None:
        user = requester_of(interaction.user)
        locale = interaction_locale(self.store, interaction)
        lines = [_job_line(job, locale) for job in self.engine.jobs(user)]
        status = self.engine.status()
        paused = text("discord_paused_note", locale) if status.paused else ""
        lines.append(text("discord_queue_total", locale, queued=status.queued, paused=paused))
        lines += worker_lines(self.engine.workers(), locale)
        rules = self.bot.policy.rules(place_of(interaction))
        limit = self.quotas.limit(user, rules.daily_quota)
        if limit and not self.engine.is_admin(user):
            used = self.quotas.used(user, limit)
            lines.append(text("discord_quota_today", locale, used=used, limit=limit))
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @app_commands.command(name="cancel", description=description("discord_cmd_cancel"))
    @app_commands.describe(job=description("discord_opt_job"))
    async def cancel(self, interaction: discord.Interaction, job: int | None = None) -> None:
        user = requester_of(interaction.user)
        locale = interaction_locale(self.store, interaction)
        if job is None:
            mine = self.engine.jobs(user)
            if not mine:
                raise NotAllowed(text("discord_nothing_to_cancel", locale))
            job = max(j.id for j in mine)
        key = (
            "discord_cancelled_job" if self.engine.cancel(job, user) else "discord_already_finished"
        )
        await interaction.response.send_message(text(key, locale, job=job), ephemeral=True)

    # --- /settings ------------------------------------------------------------------------------

    @app_commands.command(name="settings", description=description("discord_cmd_settings"))
    @app_commands.describe(
        size=description("discord_opt_size"),
        steps=description("discord_opt_steps"),
        scale=description("discord_opt_scale"),
        sampler=description("discord_opt_sampler"),
        schedule=description("discord_opt_schedule"),
        negative=description("discord_opt_negative"),
        uc_preset=description("discord_opt_uc"),
        quality_tags=description("discord_opt_quality"),
        syntax=description("discord_opt_syntax"),
        language=description("discord_opt_language"),
        reset=description("discord_opt_reset"),
    )
    @app_commands.choices(
        sampler=[Choice(name=name, value=name) for name in V19_SAMPLERS],
        schedule=[Choice(name=label, value=label) for label in SCHEDULE_LABELS],
    )
    async def user_settings(
        self,
        interaction: discord.Interaction,
        size: str | None = None,
        steps: app_commands.Range[int, 1, 1000] | None = None,
        scale: app_commands.Range[float, 1.0, 30.0] | None = None,
        sampler: str | None = None,
        schedule: str | None = None,
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
            "schedule_type": schedule,
            "negative_prompt": negative,
            "uc_preset": uc_preset,
            "quality_tags": quality_tags,
            "syntax": syntax,
            "locale": language,
        }
        self._save_settings(user, size, {k: v for k, v in changes.items() if v is not None})
        locale = interaction_locale(self.store, interaction)
        values = "\n".join(self._effective(user, locale))
        message = text("discord_settings_show", locale, values=values)
        if reset:
            message = "\n".join([text("discord_settings_reset", locale), message])
        quota = self.bot.policy.quota_text(place_of(interaction), user, locale)
        await interaction.response.send_message(clip(f"{message}\n{quota}"), ephemeral=True)

    # --- /styles --------------------------------------------------------------------------------

    @app_commands.command(name="styles", description=description("discord_cmd_styles"))
    @app_commands.describe(
        file=description("discord_opt_styles_file"), server=description("discord_opt_server")
    )
    async def styles(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment | None = None,
        server: bool = False,
    ) -> None:
        """The styles you may name with --style here; with an A1111 styles.csv, its styles
        saved as yours (an admin's `server`: the server's)."""
        user = requester_of(interaction.user)
        locale = interaction_locale(self.store, interaction)
        place = place_of(interaction)
        policy = self.bot.policy
        if file is not None:
            scope = user
            if server and interaction.guild_id is not None:
                if not self.engine.is_admin(user):
                    raise NotAllowed(text("not_admin", locale))
                scope = f"discord:guild:{interaction.guild_id}"
            if file.size > CSV_BYTES:
                raise NotAllowed(text("styles_too_big", locale, limit=CSV_BYTES // 1024))
            try:
                count = policy.styles.import_csv(scope, (await file.read()).decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError) as e:
                raise NotAllowed(text("styles_unreadable", locale, problem=str(e))) from None
            said = text("styles_imported", locale, count=count)
            listing = policy.styles_text(place, user, locale)
            await interaction.response.send_message(clip(f"{said}\n{listing}"), ephemeral=True)
            return
        listing = policy.styles_text(place, user, locale)
        await interaction.response.send_message(clip(listing), ephemeral=True)

    def _effective(self, user: str, locale: Locale) -> list[str]:
        """Each option of /settings with what /draw uses: the user's saved value (marked ✎),
        else the current model's own default, else the bot's [defaults] and [prompt]."""
        prefs = self.store.get(user)
        model = model_defaults(self.engine, self.settings.defaults)
        prompt = self.settings.prompt
        size = None
        if prefs.width or prefs.height:
            size = f"{prefs.width or model.width}x{prefs.height or model.height}"
        rows: list[tuple[str, object, object]] = [
            ("size", size, f"{model.width}x{model.height}"),
            ("steps", prefs.num_inference_steps, model.num_inference_steps),
            ("scale", prefs.guidance_scale, model.guidance_scale),
            ("sampler", prefs.sampler, model.sampler),
            ("schedule", prefs.schedule_type, _schedule(prefs.sampler or model.sampler)),
            ("negative", prefs.negative_prompt or None, text("discord_settings_empty", locale)),
            ("uc_preset", prefs.uc_preset, prompt.uc_preset),
            ("quality_tags", prefs.quality_tags, prompt.quality_tags),
            ("syntax", prefs.syntax, prompt.syntax),
            ("language", prefs.locale, locale),
        ]
        return [_setting_line(name, saved, default) for name, saved, default in rows]

    def _save_settings(self, user: str, size: str | None, changes: dict[str, Any]) -> None:
        """Check that /draw will accept these defaults (InvalidRequest says why not), save."""
        if size is not None:
            sized = read_request(f"x --size {shlex.quote(size)}").request
            changes |= {"width": sized.width, "height": sized.height}
        if not changes:
            return
        fields = {k: v for k, v in changes.items() if k in REQUEST_FIELDS}
        template = self.store.get(user).request_defaults(user)
        request = dataclasses.replace(template, prompt="x", **fields)
        check_request(request, self.settings.limits, self.settings.defaults)
        self.store.update(user, **changes)

    @user_settings.autocomplete("size")
    async def _settings_sizes(
        self, interaction: discord.Interaction, current: str
    ) -> list[Choice[str]]:
        return size_choices(current)

    # --- /history -------------------------------------------------------------------------------

    @app_commands.command(name="history", description=description("discord_cmd_history"))
    @app_commands.describe(job=description("discord_opt_job"))
    async def history(self, interaction: discord.Interaction, job: int | None = None) -> None:
        user = requester_of(interaction.user)
        locale = interaction_locale(self.store, interaction)
        if job is None:
            lines = [
                text(
                    "discord_history_line",
                    locale,
                    job=record.id,
                    when=f"<t:{int(record.submitted_at)}:R>",
                    seed=", ".join(str(image.seed) for image in record.images),
                    prompt=clip(_what(record.request, locale), 80),
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
        view = job_view(result_actions(record.request), job, locale)
        seeds = [image.seed for image in record.images]
        infotexts = [image.infotext for image in record.images]
        content = caption(job, record.request, seeds, infotexts, (), locale)
        await interaction.response.send_message(content, files=files, view=view, ephemeral=True)


def _what(request: GenerationRequest, locale: Locale) -> str:
    """A job's prompt; an upscale of a picture has none: its line."""
    return request.prompt or messages_caption(request, [], [], locale)


def _schedule(sampler: str) -> str:
    """The schedule type a sampler name runs with none chosen, as A1111 v1.9 labels it
    ("DPM++ 2M" → Uniform, "Euler a" or "DPM++ 2M Karras" → Automatic)."""
    return infotext_sampler(sampler, None)[1]


def _setting_line(name: str, saved: object, default: object) -> str:
    value = default if saved is None else saved
    shown = format_number(value) if isinstance(value, float) else value
    return f"{name} = {shown}" + ("" if saved is None else " ✎")


def _job_line(job: Job, locale: Locale) -> str:
    p = job.progress
    eta = text("eta", locale, seconds=round(p.eta_s)) if p.eta_s else ""
    if p.state == "running" and job.request.extras_upscale:
        return text("discord_queue_upscaling", locale, job=job.id, eta=eta)
    if p.state == "running":
        return text(
            "discord_queue_drawing", locale, job=job.id, step=p.step, total=p.total, eta=eta
        )
    return text("discord_queue_waiting", locale, job=job.id, position=p.position, eta=eta)


def _saved_files(job_id: int, images: Iterable[SavedImage]) -> list[discord.File]:
    """The journal's PNGs that are still on disk, as attachments."""
    return [
        discord.File(io.BytesIO(Path(image.path).read_bytes()), f"aidraw-{job_id}-{image.seed}.png")
        for image in images
        if Path(image.path).is_file()
    ]
