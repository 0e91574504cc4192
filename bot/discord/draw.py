"""Discord: drawing (`DrawCog`): /draw (from a picture and a mask too), /upscale, /help, what
the job buttons and the edit modal do, and the error handler every command goes through.

`bot.discord.bot.run_discord` runs the bot; a user's jobs and defaults are
`bot.discord.account`, admin commands `bot.discord.admin`. A submitted job is followed to its
result by `bot.discord.delivery.Delivery`; buttons carry `aidraw:<action>:<job id>` custom ids,
so they keep working after a restart. Requesters are "discord:<user id>"; a job's reply address
is "discord:<channel id>:<user id>".
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import shlex
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.app_commands import Choice

from bot.discord.client import AidrawBot
from bot.discord.delivery import Delivery
from bot.discord.interactions import (
    NotAllowed,
    PlaceCheckedCog,
    check_place,
    command_name,
    description,
    interaction_locale,
    model_choices,
    place_of,
    requester_of,
    size_choices,
)
from bot.discord.reply import TRANSIENT, Reply, clip
from bot.discord.views import DRAW_COG, EditModal
from bot.messages import LIST_SEPARATOR, Locale, error_message, error_text, text
from bot.parse import FLAGS, ParsedRequest, PromptSettings, read_request
from bot.pictures import (
    UPSCALE,
    check_announced,
    check_extras,
    extras_of,
    extras_request,
    picture_upscaler,
    picture_upscalers,
    store_picture,
    upscale_request,
    upscale_scale,
)
from bot.policy import Refused
from bot.settings import BotSettings
from engine.checks import check_request
from engine.errors import EngineError, Phrase
from engine.infotext import format_number, infotext_from_image
from engine.request import GenerationRequest, Limits
from engine.sampling.samplers import V19_SAMPLERS
from engine.sampling.schedules import SCHEDULE_LABELS

log = logging.getLogger(__name__)


class DrawCog(PlaceCheckedCog, name=DRAW_COG):
    """/draw, /upscale and /help, the job buttons and the edit modal (`JobActions`), and the
    one error handler. A user's jobs and defaults are `bot.discord.account.AccountCog`; admin
    commands `bot.discord.admin.AdminCog`."""

    def __init__(self, bot: AidrawBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.settings = bot.settings
        self.store = bot.store
        self.config = bot.settings.discord
        self.policy = bot.policy
        self.delivery = Delivery(bot)

    async def cog_load(self) -> None:
        # The tree's handler, so every cog's commands (account, admin) are reported here too.
        self.bot.tree.on_error = self.on_tree_error  # type: ignore[method-assign]
        self.delivery.recover()

    async def cog_unload(self) -> None:
        await self.delivery.close()

    # --- the one error handler ----------------------------------------------------------------

    async def on_tree_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        await self.report(interaction, original)

    async def report(self, interaction: discord.Interaction, error: BaseException) -> None:
        """Tell the user what went wrong (only them); log what is not their doing."""
        message = self._refusal(interaction, error)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(clip(message), ephemeral=True)
            else:
                await interaction.response.send_message(clip(message), ephemeral=True)
        except discord.HTTPException as e:
            log.warning("discord: could not report %r to %s: %s", error, interaction.user.id, e)

    def _refusal(self, interaction: discord.Interaction, error: BaseException) -> str:
        """What to tell the user about an error (logged if it is not their doing)."""
        if isinstance(error, NotAllowed | Refused):
            return error.message
        locale = self._locale(interaction)
        if isinstance(error, EngineError):
            return error_text(error, locale)
        log.error("discord: %s failed", command_name(interaction), exc_info=error)
        return text("failed", locale)

    async def guard(
        self, interaction: discord.Interaction, work: Coroutine[Any, Any, None]
    ) -> None:
        """Run a button's or modal's work through the error handler (commands have the tree's)."""
        try:
            check_place(self.bot, interaction)
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
        schedule=description("discord_opt_schedule"),
        model=description("discord_opt_model"),
        count=description("discord_opt_count"),
        image=description("discord_opt_image"),
        mask=description("discord_opt_mask"),
    )
    @app_commands.choices(
        sampler=[Choice(name=name, value=name) for name in V19_SAMPLERS],
        schedule=[Choice(name=label, value=label) for label in SCHEDULE_LABELS],
    )
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
        schedule: str | None = None,
        model: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        image: discord.Attachment | None = None,
        mask: discord.Attachment | None = None,
    ) -> None:
        options: dict[str, Any] = {"--neg": negative, "--size": size, "--seed": seed}
        options |= {
            "--steps": steps,
            "--scale": scale,
            "--sampler": sampler,
            "--schedule": schedule,
        }
        options |= {"--model": model, "--n": count}
        parsed = self._read(interaction, prompt, options)
        request = parsed.request
        if mask is not None and image is None:
            # The door's own refusal (mask_without_image), before anything is downloaded.
            check_request(dataclasses.replace(request, mask_image=mask.filename), self._limits)
        await self._start(interaction, request, parsed.notes, picture=image, mask=mask)

    @draw.autocomplete("size")
    async def _sizes(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return size_choices(current)

    @draw.autocomplete("model")
    async def _models(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return model_choices(self.engine, current)

    @property
    def _limits(self) -> Limits:
        return self.settings.limits

    # --- /upscale -------------------------------------------------------------------------------

    @app_commands.command(name="upscale", description=description("discord_cmd_upscale"))
    @app_commands.describe(
        image=description("discord_opt_upscale_image"),
        scale=description("discord_opt_upscale_scale"),
        upscaler=description("discord_opt_upscaler"),
    )
    async def upscale(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        scale: app_commands.Range[float, 1.0, 4.0] = UPSCALE,
        upscaler: str | None = None,
    ) -> None:
        """A picture made bigger without drawing (A1111's Extras); the scale and the upscaler
        are checked before it is downloaded."""
        name = picture_upscaler(self.engine, upscaler or self.settings.bot.upscaler)
        request = extras_request(
            "", scale=upscale_scale(scale), upscaler=name, requester=requester_of(interaction.user)
        )
        check_extras(request, self._limits)  # before the download
        await self._start(interaction, request, picture=image)

    @upscale.autocomplete("upscaler")
    async def _upscalers(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        names = [n for n in picture_upscalers(self.engine) if current.lower() in n.lower()]
        return [Choice(name=name, value=name) for name in names[:25]]

    def _read(
        self, interaction: discord.Interaction, prompt: str, options: dict[str, Any]
    ) -> ParsedRequest:
        """The prompt and the typed options (as the flags they stand for) through the grammar."""
        user = requester_of(interaction.user)
        prefs = self.store.get(user)
        flags = [f"{flag} {shlex.quote(str(v))}" for flag, v in options.items() if v is not None]
        chat = "\n".join([prompt, " ".join(flags)]) if flags else prompt
        return self.policy.read(place_of(interaction), chat, prefs, user, self._locale(interaction))

    async def _start(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        notes: Iterable[str] = (),
        *,
        picture: discord.Attachment | None = None,
        mask: discord.Attachment | None = None,
    ) -> None:
        """Admit and submit (a refusal is ephemeral, nothing queued), then defer and follow.

        With a `picture` (img2img; an upscale's picture) and its `mask` (inpainting), what
        Discord says of their sizes and types is checked first; then the interaction is
        deferred (downloading may take longer than Discord's three seconds), and a refusal
        after that is what the "thinking" message turns into.
        """
        locale = self._locale(interaction)
        place = place_of(interaction)
        admission = self.policy.admit(place, request, locale, picture=picture is not None)
        reply_to = f"discord:{interaction.channel_id}:{interaction.user.id}"
        if picture is None and mask is None:
            job = self.engine.submit(request, reply_to=reply_to)
        else:
            for attachment in (picture, mask):
                if attachment is not None:
                    check_announced(attachment.size, attachment.content_type, self._limits)
            await interaction.response.defer(thinking=True)
            try:
                if picture is not None:
                    data = await picture.read()
                    path, picture_notes = await store_picture(self.engine, data, locale)
                    request = dataclasses.replace(request, init_image=path)
                    notes = (*notes, *picture_notes)
                if mask is not None:
                    data = await mask.read()
                    path, _ = await store_picture(self.engine, data, locale, mask=True)
                    request = dataclasses.replace(request, mask_image=path)
                job = self.engine.submit(request, reply_to=reply_to)
            except Exception as e:
                refusal = clip(self._refusal(interaction, e))
                await interaction.edit_original_response(content=refusal)
                return
        self.policy.started(request)
        reply = Reply(
            self.bot,
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            interaction=interaction,
            moved=text("discord_moved", locale, job=job.id),
        )
        try:
            if not interaction.response.is_done():  # a picture's was deferred already
                await interaction.response.defer(thinking=True)
        except discord.HTTPException as e:  # the interaction expired: answer in the channel
            log.warning("discord: job %d: cannot defer (%s); replying in the channel", job.id, e)
            reply.interaction = None
        except TRANSIENT as e:
            # No answer: the defer may have landed or not. The job is queued either way, so
            # follow it: if Discord never got the defer, the first edit of the interaction's
            # message is a 404 and Reply goes on in the channel.
            log.warning("discord: job %d: defer unanswered (%r); following anyway", job.id, e)
        self.delivery.follow(reply, job, notes, locale, admission.spoiler, place, admission.rules)

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
            if self.engine.is_admin(by):  # a moderator's delete: the stored PNGs go too
                self.policy.delete_images(job_id)
            log.info("discord: %s deleted the message of job %d", by, job_id)
        elif action == "upscale":
            await self._start(interaction, await self._upscale(interaction, job_id, by, locale))
        else:
            request = await self._request_of(interaction, job_id, locale)
            request = dataclasses.replace(request, requester=by)
            if action == "edit":
                await interaction.response.send_modal(EditModal(self, request, locale))
                return
            if action == "reroll":
                request = dataclasses.replace(request, seed=None, subseed=None, subseed_strength=0)
            else:  # variations of the first image: its seed, a new variation seed (as A1111)
                bot = self.settings.bot
                strong = action == "vary_strong"
                strength = bot.strong_variation_strength if strong else bot.variation_strength
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
        _, infotext = await self._message_png(interaction, job_id, locale)
        parsed = read_request(
            infotext,
            requester=requester_of(interaction.user),
            max_chars=self.settings.limits.max_prompt_chars,
        )
        return parsed.request

    async def _message_png(
        self,
        interaction: discord.Interaction,
        job_id: int,
        locale: Locale,
        *,
        any_png: bool = False,
    ) -> tuple[bytes, str]:
        """The clicked message's first PNG with an infotext, and that infotext (`any_png`:
        its first PNG, with or without one)."""
        message = interaction.message
        for attachment in message.attachments if message else []:
            if attachment.filename.lower().endswith(".png"):
                png = await attachment.read()
                infotext = _infotext(png)
                if infotext or any_png:
                    return png, infotext or ""
        raise NotAllowed(text("discord_gone", locale, job=job_id))

    async def _upscale(
        self, interaction: discord.Interaction, job_id: int, by: str, locale: Locale
    ) -> GenerationRequest:
        """🔍: the first image at twice its size (bot.pictures.upscale_request): hires fix
        from the journal's request, or, once the journal has forgotten the job, img2img from
        the message's own PNG; with [bot] upscale_with = "extras", and for an upscale of a
        picture, that PNG upscaled without drawing."""
        bot = self.settings.bot
        extras = bot.upscaler if bot.upscale_with == "extras" else None
        record = self.engine.record(job_id)
        if record is not None and record.images:
            image = record.images[0]

            async def saved() -> bytes:
                try:
                    return await asyncio.to_thread(Path(image.path).read_bytes)
                except OSError:
                    raise NotAllowed(text("discord_gone", locale, job=job_id)) from None

            return await upscale_request(
                self.engine,
                dataclasses.replace(record.request, seed=image.seed, requester=by),
                seed=image.seed,
                infotext=image.infotext,
                strength=bot.upscale_strength,
                png=saved,
                extras=extras,
            )
        png, infotext = await self._message_png(interaction, job_id, locale, any_png=True)
        if extras is not None or not infotext:  # an upscale's PNG has no infotext to redraw
            return await extras_of(self.engine, png, upscaler=bot.upscaler, requester=by)

        async def attached() -> bytes:
            return png

        parsed = read_request(
            infotext, requester=by, max_chars=self.settings.limits.max_prompt_chars
        )
        return await upscale_request(
            self.engine,
            parsed.request,
            seed=parsed.request.seed or 0,
            infotext=infotext,
            strength=bot.upscale_strength,
            png=attached,
            from_picture=True,
        )

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
        parsed = read_request(
            prompt,
            base,
            request.requester,
            settings=plain,
            max_chars=self.settings.limits.max_prompt_chars,
        )
        await self._start(interaction, parsed.request, parsed.notes)

    # --- /help ----------------------------------------------------------------------------------

    @app_commands.command(name="help", description=description("discord_cmd_help"))
    async def help(self, interaction: discord.Interaction) -> None:
        message = help_text(self._locale(interaction), self.settings.bot)
        await interaction.response.send_message(clip(message), ephemeral=True)

    def _locale(self, interaction: discord.Interaction) -> Locale:
        return interaction_locale(self.store, interaction)


# Flags /help leaves to another command (it must fit one message): --style is /styles'.
HELP_ELSEWHERE = ("--style",)


def help_text(locale: Locale, bot: BotSettings) -> str:
    """/help: the flags (aliases with their flag: `--scale`/`--cfg`), the buttons, the commands."""
    same: dict[int, tuple[Phrase, list[str]]] = {}
    for name, flag in FLAGS.items():
        if name in HELP_ELSEWHERE:
            continue
        same.setdefault(id(flag.help), (flag.help, []))[1].append(f"`{name}`")
    flags = LIST_SEPARATOR[locale].join(
        text("discord_help_flag", locale, flag="/".join(names), help=error_message(help, locale))
        for help, names in same.values()
    )
    return text(
        "discord_help",
        locale,
        flags=flags,
        subtle=format_number(bot.variation_strength),
        strong=format_number(bot.strong_variation_strength),
    )


def _infotext(png: bytes) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as image:
            return infotext_from_image(image)
    except (UnidentifiedImageError, OSError):
        return None
