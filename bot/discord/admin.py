"""Discord admin commands: /model, /queue-admin, /quota (admins of `[engine] admins` only).

Each command checks the allowlist itself (`_admin`) and logs who did what; Discord's
`default_permissions` (Manage Server) only hides the commands from other members.
"""

from __future__ import annotations

import contextlib
import logging

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.ext import commands

from bot.addons import (
    AUTOMATIC,
    NO_HYPERNET,
    OWN_VAE,
    addons_text,
    current_addons,
    hypernet_choice,
    installed_addons,
)
from bot.discord.client import AidrawBot
from bot.discord.interactions import (
    ADMIN,
    NotAllowed,
    command_name,
    command_options,
    description,
    interaction_locale,
    model_choices,
    requester_of,
)
from bot.discord.reply import clip
from bot.messages import text
from bot.modlog import modlog_line

log = logging.getLogger(__name__)


class AdminCog(commands.Cog, name="Admin"):
    """Model swaps, pausing and clearing the queue, per-user quotas."""

    model_group = app_commands.Group(
        name="model", description=description("discord_cmd_model"), default_permissions=ADMIN
    )
    queue_admin = app_commands.Group(
        name="queue-admin",
        description=description("discord_cmd_queue_admin"),
        default_permissions=ADMIN,
    )
    quota_group = app_commands.Group(
        name="quota", description=description("discord_cmd_quota"), default_permissions=ADMIN
    )
    mod_group = app_commands.Group(
        name="mod", description=description("discord_cmd_mod"), default_permissions=ADMIN
    )

    def __init__(self, bot: AidrawBot) -> None:
        self.engine = bot.engine
        self.store = bot.store
        self.quotas = bot.quotas
        self.bot = bot
        self.policy = bot.policy

    @model_group.command(name="list", description=description("discord_cmd_model_list"))
    async def model_list(self, interaction: discord.Interaction) -> None:
        self._admin(interaction)
        status = self.engine.status()
        lines = [
            ("★ " if name == status.default_model else "")
            + name
            + (" ●" if name == status.model else "")
            for name in self.engine.models()
        ]
        message = text(
            "discord_models", interaction_locale(self.store, interaction), models="\n".join(lines)
        )
        await interaction.response.send_message(clip(message), ephemeral=True)

    @model_group.command(name="swap", description=description("discord_cmd_model_swap"))
    @app_commands.describe(name=description("discord_opt_model"))
    async def model_swap(self, interaction: discord.Interaction, name: str) -> None:
        by = self._admin(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        model = await self.engine.swap_model(name, by)
        locale = interaction_locale(self.store, interaction)
        await interaction.followup.send(text("discord_model_swapped", locale, model=model))

    @model_swap.autocomplete("name")
    async def _swap_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[Choice[str]]:
        return model_choices(self.engine, current)

    @model_group.command(name="vae", description=description("discord_cmd_model_vae"))
    @app_commands.describe(name=description("discord_opt_vae"))
    async def model_vae(self, interaction: discord.Interaction, name: str | None = None) -> None:
        by = self._admin(interaction)
        if name is None:
            await self._addons_show(interaction)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        info = await self.engine.set_addon_defaults(by, vae=name.strip())
        locale = interaction_locale(self.store, interaction)
        await interaction.followup.send(clip(addons_text(info, locale, "addons_set")))

    @model_vae.autocomplete("name")
    async def _vae_names(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return _choices([*self.engine.addon_names("VAE"), OWN_VAE, AUTOMATIC], current)

    @model_group.command(
        name="hypernetwork", description=description("discord_cmd_model_hypernetwork")
    )
    @app_commands.describe(
        name=description("discord_opt_hypernetwork"),
        strength=description("discord_opt_strength"),
    )
    async def model_hypernetwork(
        self,
        interaction: discord.Interaction,
        name: str | None = None,
        strength: app_commands.Range[float, 0.0, 2.0] = 1.0,
    ) -> None:
        by = self._admin(interaction)
        if name is None:
            await self._addons_show(interaction)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        info = await self.engine.set_addon_defaults(by, hypernet=hypernet_choice(name, strength))
        locale = interaction_locale(self.store, interaction)
        await interaction.followup.send(clip(addons_text(info, locale, "addons_set")))

    @model_hypernetwork.autocomplete("name")
    async def _hypernet_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[Choice[str]]:
        return _choices([*self.engine.addon_names("hypernetwork"), NO_HYPERNET], current)

    async def _addons_show(self, interaction: discord.Interaction) -> None:
        locale = interaction_locale(self.store, interaction)
        message = current_addons(self.engine, locale) + "\n" + installed_addons(self.engine, locale)
        await self._admin_done(interaction, message)

    @queue_admin.command(name="pause", description=description("discord_cmd_pause"))
    async def pause(self, interaction: discord.Interaction) -> None:
        self._admin(interaction)
        self.engine.pause()
        await self._admin_done(
            interaction, text("discord_paused", interaction_locale(self.store, interaction))
        )

    @queue_admin.command(name="resume", description=description("discord_cmd_resume"))
    async def resume(self, interaction: discord.Interaction) -> None:
        self._admin(interaction)
        self.engine.resume()
        await self._admin_done(
            interaction, text("discord_resumed", interaction_locale(self.store, interaction))
        )

    @queue_admin.command(name="clear", description=description("discord_cmd_clear"))
    async def clear(self, interaction: discord.Interaction) -> None:
        by = self._admin(interaction)
        waiting = [job for job in self.engine.jobs() if job.state == "queued"]
        count = sum(self.engine.cancel(job.id, by) for job in waiting)
        message = text("discord_cleared", interaction_locale(self.store, interaction), count=count)
        await self._admin_done(interaction, message)

    @quota_group.command(name="set", description=description("discord_cmd_quota_set"))
    @app_commands.describe(
        user=description("discord_opt_user"), images=description("discord_opt_images")
    )
    async def quota_set(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        images: app_commands.Range[int, 0, 1_000_000],
    ) -> None:
        self._admin(interaction)
        self.quotas.set(requester_of(user), images)
        await self._quota_show(interaction, user)

    @quota_group.command(name="reset", description=description("discord_cmd_quota_reset"))
    @app_commands.describe(user=description("discord_opt_user"))
    async def quota_reset(self, interaction: discord.Interaction, user: discord.User) -> None:
        self._admin(interaction)
        self.quotas.set(requester_of(user), None)
        await self._quota_show(interaction, user)

    @quota_group.command(name="show", description=description("discord_cmd_quota_show"))
    @app_commands.describe(user=description("discord_opt_user"))
    async def quota_show(self, interaction: discord.Interaction, user: discord.User) -> None:
        self._admin(interaction)
        await self._quota_show(interaction, user)

    async def _quota_show(self, interaction: discord.Interaction, user: discord.User) -> None:
        locale = interaction_locale(self.store, interaction)
        who = requester_of(user)
        limit = self.quotas.limit(who)
        message = text(
            "discord_quota_show",
            locale,
            user=user.mention,
            used=self.quotas.used(who, limit),
            limit=limit or text("discord_no_limit", locale),
        )
        await self._admin_done(interaction, message)

    @mod_group.command(name="who", description=description("discord_cmd_mod_who"))
    @app_commands.describe(message=description("discord_opt_message"))
    async def mod_who(self, interaction: discord.Interaction, message: str) -> None:
        self._admin(interaction)
        locale = interaction_locale(self.store, interaction)
        entry = self.policy.log.by_message(_message_id(message))
        if entry is None:
            raise NotAllowed(text("modlog_not_found", locale))
        await self._admin_done(interaction, modlog_line(entry, locale))

    @mod_group.command(name="delete", description=description("discord_cmd_mod_delete"))
    @app_commands.describe(message=description("discord_opt_message"))
    async def mod_delete(self, interaction: discord.Interaction, message: str) -> None:
        by = self._admin(interaction)
        locale = interaction_locale(self.store, interaction)
        entry = self.policy.log.by_message(_message_id(message))
        if entry is None or entry.chat is None:
            raise NotAllowed(text("modlog_not_found", locale))
        channel = self.bot.get_partial_messageable(entry.chat)
        for message_id in entry.messages:
            with contextlib.suppress(discord.NotFound):
                await channel.get_partial_message(message_id).delete()
        self.policy.delete_images(entry.job)
        log.info("discord: %s deleted job %d (%s)", by, entry.job, entry.user)
        await self._admin_done(interaction, text("modlog_deleted", locale, job=entry.job))

    def _admin(self, interaction: discord.Interaction) -> str:
        """The admin's requester id, or NotAllowed (logged: who tried what)."""
        by = requester_of(interaction.user)
        if not self.engine.is_admin(by):
            what = command_name(interaction)
            log.warning("discord: refused /%s to %s (not an admin)", what, by)
            raise NotAllowed(text("not_admin", interaction_locale(self.store, interaction)))
        log.info(
            "discord: admin %s: /%s %s", by, command_name(interaction), command_options(interaction)
        )
        return by

    async def _admin_done(self, interaction: discord.Interaction, message: str) -> None:
        await interaction.response.send_message(clip(message), ephemeral=True)


def _message_id(value: str) -> int:
    """A message id, or the id at the end of a message link."""
    last = value.strip().rstrip("/").rsplit("/", 1)[-1]
    return int(last) if last.isdigit() else -1


def _choices(names: list[str], current: str) -> list[Choice[str]]:
    """Autocomplete: the names that contain what was typed (Discord shows 25 at most)."""
    found = [name for name in names if current.lower() in name.lower()]
    return [Choice(name=name[:100], value=name) for name in found[:25]]
