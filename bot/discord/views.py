"""Discord: the persistent job buttons, their view, and the ✏️ edit modal.

Buttons carry `aidraw:<action>:<job id>` custom ids, so they keep working after a restart; their
callbacks and the modal hand the work to the drawing cog through `JobActions`.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol, cast, runtime_checkable

import discord
from discord.ext import commands

from bot.messages import Locale, text
from engine.request import GenerationRequest

DRAW_COG = "Draw"  # the cog that handles the buttons and the modal (`bot.discord.draw.DrawCog`)


@runtime_checkable
class JobActions(Protocol):
    """What the buttons and the modal ask of the drawing cog (it sits above this module)."""

    async def guard(
        self, interaction: discord.Interaction, work: Coroutine[Any, Any, None]
    ) -> None: ...

    async def report(self, interaction: discord.Interaction, error: BaseException) -> None: ...

    async def on_button(
        self, interaction: discord.Interaction, action: str, job_id: int
    ) -> None: ...

    async def edited(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        prompt: str,
        negative: str,
    ) -> None: ...


# "vary" is the subtle variation: the one 🔀 of messages posted before "vary_strong" existed.
CUSTOM_ID = r"aidraw:(?P<action>reroll|vary|vary_strong|upscale|edit|delete|cancel):(?P<job>[0-9]+)"
BUTTONS: dict[str, tuple[str, discord.ButtonStyle]] = {
    "reroll": ("🎲", discord.ButtonStyle.primary),
    "vary": ("🔀", discord.ButtonStyle.secondary),
    "vary_strong": ("🔀", discord.ButtonStyle.secondary),
    "upscale": ("🔍", discord.ButtonStyle.secondary),
    "edit": ("✏️", discord.ButtonStyle.secondary),
    "delete": ("🗑️", discord.ButtonStyle.danger),
    "cancel": ("❌", discord.ButtonStyle.danger),
}


class JobButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=CUSTOM_ID):
    """A button about one job, routed by its custom id alone (so it survives restarts)."""

    def __init__(self, action: str, job_id: int, locale: Locale = "en") -> None:
        emoji, style = BUTTONS[action]
        super().__init__(
            discord.ui.Button(
                label=text(f"discord_button_{action}", locale),
                emoji=emoji,
                style=style,
                custom_id=f"aidraw:{action}:{job_id}",
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> JobButton:
        return cls(match["action"], int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = cast(commands.Bot, interaction.client).get_cog(DRAW_COG)
        if isinstance(cog, JobActions):
            await cog.guard(interaction, cog.on_button(interaction, self.action, self.job_id))


# Under a job's images (discord.py puts five in a row: delete starts the second).
RESULT_ACTIONS = ("reroll", "vary", "vary_strong", "upscale", "edit", "delete")
# Under an upscale of a picture (A1111's Extras): nothing was drawn, so there is nothing to
# reroll, vary or edit; it can be upscaled again.
EXTRAS_ACTIONS = ("upscale", "delete")


def result_actions(request: GenerationRequest) -> tuple[str, ...]:
    """The buttons under a job's result."""
    return EXTRAS_ACTIONS if request.extras_upscale else RESULT_ACTIONS


def job_view(actions: Iterable[str], job_id: int, locale: Locale) -> discord.ui.View:
    view = discord.ui.View(timeout=None)  # a timeout would unregister the dynamic items
    for action in actions:
        view.add_item(JobButton(action, job_id, locale))
    return view


class EditModal(discord.ui.Modal):
    """✏️: the prompt and negative prompt, prefilled; submitting draws again."""

    def __init__(self, cog: JobActions, request: GenerationRequest, locale: Locale) -> None:
        super().__init__(title=text("discord_edit_title", locale), timeout=900)
        self.cog = cog
        self.request = request
        self.prompt: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label=text("discord_edit_prompt", locale),
            style=discord.TextStyle.paragraph,
            default=request.prompt[:4000],
            max_length=4000,
        )
        self.negative: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label=text("discord_edit_negative", locale),
            style=discord.TextStyle.paragraph,
            default=request.negative_prompt[:4000],
            max_length=4000,
            required=False,
        )
        self.add_item(self.prompt)
        self.add_item(self.negative)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        work = self.cog.edited(interaction, self.request, self.prompt.value, self.negative.value)
        await self.cog.guard(interaction, work)

    async def on_error(  # type: ignore[override]  # Modal's has no item argument
        self, interaction: discord.Interaction, error: Exception, /
    ) -> None:
        await self.cog.report(interaction, error)
