"""The one policy layer every frontend asks before it submits and before it sends a result:
who may draw where, what a request may ask for there, NSFW (the prompt's word list as a
hint, the image checker's label as the judgement), cooldowns and daily quotas.

`Policy.rules(place)` merges, widest first: the built-in rules, the frontend's own table's
old keys ([discord] nsfw_policy, daily_quota, cooldown_s; [telegram] nsfw_policy), then the
`[places]` tables for the place (`bot.places.Place.keys`). Discord allows NSFW only in
age-restricted channels, as Discord requires: such a channel allows it unless its own
`[places."discord:channel:ID"]` table says otherwise, and "allow" anywhere else is a refusal.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bot.classifier import ImageCheck, Verdict, make_classifier, strongest
from bot.messages import Locale, text
from bot.modlog import ModLog
from bot.parse import ParsedRequest, PromptSettings, read_request
from bot.places import BUILT_IN, NsfwRule, Place, PlaceRules
from bot.quotas import Quotas, quotas_path
from bot.settings import NSFW_WORDS, Settings, SettingsError
from bot.stylebook import BOT, StyleBook
from bot.styles import Style
from bot.wordlist import find_word
from engine.errors import InvalidRequest
from engine.request import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from bot.prefs import UserPrefs
    from engine.engine import Engine

log = logging.getLogger(__name__)

Outcome = Literal["send", "spoiler", "refuse"]


class Refused(InvalidRequest):
    """The policy says no; `message` is already in the user's language."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="policy")
        self.message = message


@dataclass(frozen=True)
class Admission:
    """A request the policy lets through: the place's rules, and whether its prompt alone
    already asks for a spoiler (the image checker may ask for one too)."""

    rules: PlaceRules
    spoiler: bool


@dataclass(frozen=True)
class Review:
    """What the image check made of a result: the verdict that speaks for it (its most
    flagged image), every image's, and what the place does with it."""

    verdict: Verdict
    verdicts: tuple[Verdict, ...]
    outcome: Outcome

    def note(self, locale: Locale) -> str:
        """The line a verbose reply (and a spoilered one) adds."""
        return text("policy_flagged_note", locale, label=self.verdict.label, score=_score(self))


class Policy:
    """The rules of each place, and the checks they make (see the module's docstring); it
    holds the quotas, the image check and the moderation log every frontend shares."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine[Any],
        *,
        quotas: Quotas | None = None,
        images: ImageCheck | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.quotas = quotas or Quotas(quotas_path(engine), engine, settings.discord.daily_quota)
        m = settings.moderation
        if images is None:
            try:
                images = ImageCheck(make_classifier(m.image_check, m.threshold))
            except (ImportError, AttributeError, TypeError) as e:
                self.quotas.close()
                raise SettingsError(
                    f"moderation.image_check: cannot load {m.image_check!r}: {e}"
                ) from e
        self.images = images
        journal = engine.config.journal
        memory = journal == ":memory:"
        self.log = ModLog(
            journal if memory else Path(journal).with_name("modlog.sqlite3"), m.log_days
        )
        self.styles = StyleBook(journal if memory else Path(journal).with_name("styles.sqlite3"))
        if m.styles_csv:
            self._import_styles(settings.root / m.styles_csv)

    def _import_styles(self, path: Path) -> None:
        """[moderation] styles_csv: the bot's styles, read again at every start."""
        try:
            count = self.styles.import_csv(BOT, path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            self.close()
            raise SettingsError(f"moderation.styles_csv: cannot import {path}: {e}") from e
        log.info("imported %d style(s) from %s", count, path)

    def close(self) -> None:
        self.quotas.close()
        self.images.close()
        self.log.close()
        self.styles.close()

    def style_scopes(self, place: Place, user: str) -> list[str]:
        """Where a user's `--style NAME` is looked up: their own, the place's (the channel or
        chat, then the server), the bot's."""
        return [user, *reversed(place.keys()[2:]), BOT]

    def styles_for(self, place: Place, user: str) -> dict[str, Style]:
        return self.styles.styles(self.style_scopes(place, user))

    def read(
        self, place: Place, text_: str, prefs: UserPrefs, user: str, locale: Locale
    ) -> ParsedRequest:
        """Chat text → a request, as every frontend reads it here: the user's settings over
        the place's defaults, the styles they may name; Refused where styles are off."""
        parsed = read_request(
            text_,
            self.template(place, prefs, user),
            user,
            settings=self.prompt_settings(place, prefs),
            max_chars=self.settings.limits.max_prompt_chars,
            styles=self.styles_for(place, user),
        )
        if parsed.styles and not self.rules(place).styles:
            raise Refused(text("policy_no_styles", locale))
        return parsed

    def styles_text(self, place: Place, user: str, locale: Locale) -> str:
        """What the styles command lists: each style a user may name here, with its prompt."""
        styles = self.styles_for(place, user)
        if not styles:
            return text("styles_none", locale)
        lines = [
            f"• {s.name}: {s.prompt}" + (f" | {s.negative_prompt}" if s.negative_prompt else "")
            for s in styles.values()
        ]
        return text("styles_list", locale, styles="\n".join(lines))

    # --- the rules ------------------------------------------------------------------------------

    def rules(self, place: Place) -> PlaceRules:
        rules = self._frontend_rules(place).over(BUILT_IN)
        tables = self.settings.places
        keys = place.keys()
        channel = f"discord:channel:{place.chat}"
        for key in keys:  # default, the frontend, the server, the channel or chat
            if key == channel and place.age_restricted:
                rules = dataclasses.replace(rules, nsfw="allow")
            if key in tables:
                rules = tables[key].over(rules)
        if place.frontend == "discord" and place.age_restricted and channel not in keys:
            rules = dataclasses.replace(rules, nsfw="allow")
        return rules

    def _frontend_rules(self, place: Place) -> PlaceRules:
        if place.frontend == "discord":
            d = self.settings.discord
            return PlaceRules(
                nsfw=d.nsfw_policy, daily_quota=d.daily_quota, cooldown_s=d.cooldown_s
            )
        if place.frontend == "telegram":
            return PlaceRules(nsfw=self.settings.telegram.nsfw_policy)
        return PlaceRules()

    def nsfw(self, place: Place, rules: PlaceRules | None = None) -> NsfwRule:
        """What NSFW gets here: "allow", "spoiler" or "refuse" (Discord: see the module)."""
        rule = (rules or self.rules(place)).nsfw or "spoiler"
        if place.frontend == "discord" and rule == "allow" and not place.age_restricted:
            return "refuse"
        return rule

    def _words(self, place: Place) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The banned words and the NSFW words of the place's frontend."""
        if place.frontend == "discord":
            return self.settings.discord.banned_words, self.settings.discord.nsfw_words
        if place.frontend == "telegram":
            return self.settings.telegram.banned_words, self.settings.telegram.nsfw_words
        return (), NSFW_WORDS

    def nsfw_word(self, place: Place, prompt: str) -> str | None:
        """The first NSFW word of the place's frontend in `prompt` (the prompt-side hint)."""
        return find_word(prompt, self._words(place)[1])

    # --- before a request is submitted ----------------------------------------------------------

    def template(self, place: Place, prefs: UserPrefs, user: str) -> GenerationRequest:
        """What `read_request` fills unset fields from: the user's saved settings, then the
        place's defaults (model, size, steps)."""
        rules = self.rules(place)
        base = prefs.request_defaults(user)
        place_values: dict[str, Any] = {
            "model": rules.model,
            "width": rules.width,
            "height": rules.height,
            "num_inference_steps": rules.steps,
        }
        fill = {k: v for k, v in place_values.items() if v is not None and getattr(base, k) is None}
        return dataclasses.replace(base, **fill)

    def prompt_settings(self, place: Place, prefs: UserPrefs) -> PromptSettings:
        """[prompt], the place's negative preset over it, the user's choices over both."""
        base = self.settings.prompt
        preset = self.rules(place).uc_preset
        if preset is not None:
            base = dataclasses.replace(base, uc_preset=preset)
        return prefs.prompt_settings(base)

    def admit(
        self,
        place: Place,
        request: GenerationRequest,
        locale: Locale,
        *,
        picture: bool = False,
    ) -> Admission:
        """Refused (with what is wrong and what is allowed), or the Admission.

        Admins pass the place, role, size and quota checks; the word lists hold for everyone.
        `picture`: the request draws from a picture not yet attached to it.
        """
        rules = self.rules(place)
        user = request.requester
        admin = self.engine.is_admin(user)
        if not admin:
            self._check_place(place, rules, locale)
        banned, nsfw_words = self._words(place)
        if word := find_word(request.prompt, banned):
            raise Refused(text("policy_banned", locale, word=word))
        spoiler = False
        if word := find_word(request.prompt, nsfw_words):
            rule = self.nsfw(place, rules)
            if rule == "refuse":
                key = "policy_nsfw_age" if place.frontend == "discord" else "policy_nsfw_refused"
                raise Refused(text(key, locale, word=word))
            spoiler = rule == "spoiler"
        if admin:
            return Admission(rules, spoiler)
        self._check_options(rules, request, locale, picture=picture)
        self._check_quota(rules, request, locale)
        return Admission(rules, spoiler)

    def _check_place(self, place: Place, rules: PlaceRules, locale: Locale) -> None:
        if not rules.enabled:
            raise Refused(text("policy_disabled", locale))
        if place.guild is not None and rules.roles and not set(rules.roles) & set(place.roles):
            raise Refused(text("policy_roles", locale))

    def _check_options(
        self, rules: PlaceRules, request: GenerationRequest, locale: Locale, *, picture: bool
    ) -> None:
        steps = request.num_inference_steps
        if rules.max_steps is not None and steps is not None and steps > rules.max_steps:
            raise Refused(text("policy_max_steps", locale, limit=rules.max_steps, steps=steps))
        sides = [s for s in (request.width, request.height) if s is not None]
        if rules.max_side is not None and sides and max(sides) > rules.max_side:
            size = f"{request.width or '?'}x{request.height or '?'}"
            raise Refused(text("policy_max_side", locale, limit=rules.max_side, size=size))
        if rules.max_count is not None and request.batch_size > rules.max_count:
            raise Refused(
                text("policy_max_count", locale, limit=rules.max_count, count=request.batch_size)
            )
        if not rules.img2img and (picture or request.init_image is not None):
            raise Refused(text("policy_no_img2img", locale))

    def _check_quota(self, rules: PlaceRules, request: GenerationRequest, locale: Locale) -> None:
        user = request.requester
        wait = self.quotas.wait(user, rules.cooldown_s or 0.0)
        if wait > 0:
            raise Refused(text("policy_cooldown", locale, seconds=max(1, round(wait))))
        limit = self.quotas.limit(user, rules.daily_quota)
        used = self.quotas.used(user, limit) if limit else 0
        if limit and used + request.batch_size > limit:
            raise Refused(text("policy_quota", locale, used=used, limit=limit))

    def started(self, request: GenerationRequest) -> None:
        """The request was submitted: its requester's cooldown starts now."""
        self.quotas.started(request.requester)

    def quota_text(self, place: Place, user: str, locale: Locale) -> str:
        """What /quota (and /settings) tell a user: today's images against the limit here,
        and the cooldown."""
        rules = self.rules(place)
        if self.engine.is_admin(user):
            return text("policy_quota_admin", locale)
        limit = self.quotas.limit(user, rules.daily_quota)
        used = self.quotas.used(user, limit or 1000)
        shown = str(limit) if limit else text("policy_no_limit", locale)
        line = text("policy_quota_line", locale, used=used, limit=shown)
        wait = self.quotas.wait(user, rules.cooldown_s or 0.0)
        if rules.cooldown_s:
            line += text(
                "policy_cooldown_line", locale, cooldown=rules.cooldown_s, wait=round(wait)
            )
        return line

    # --- after the drawing: the image checker's verdicts -----------------------------------------

    def judge(self, place: Place, verdicts: Sequence[Verdict]) -> Outcome:
        """What to do with a result whose images the checker labelled: "send", "spoiler" (any
        image flagged where NSFW is spoilered) or "refuse" (any flagged where it is refused)."""
        if not any(v.flagged for v in verdicts):
            return "send"
        rule = self.nsfw(place)
        if rule == "allow":
            return "send"
        return "spoiler" if rule == "spoiler" else "refuse"

    async def review(self, place: Place, results: Sequence[GenerationResult]) -> Review:
        """Run the result's images through the image check (on its own thread) and judge."""
        verdicts = await self.images.check([r.png for r in results])
        outcome = self.judge(place, verdicts)
        verdict = strongest(verdicts)
        if verdict.flagged:
            log.info("image check: %s in %s: %s", verdict, place.key, outcome)
        return Review(verdict, tuple(verdicts), outcome)

    def logged(
        self,
        job: int,
        request: GenerationRequest,
        place: Place,
        review: Review,
        *,
        chat: int | None,
        messages: Sequence[int],
    ) -> None:
        """Keep the job in the moderation log (once its reply is out)."""
        self.log.record(
            job=job,
            user=request.requester,
            place=place.key,
            prompt=request.prompt,
            label=review.verdict.label,
            score=review.verdict.score,
            outcome=review.outcome,
            chat=chat,
            messages=messages,
        )

    def delete_images(self, job: int) -> int:
        """An admin deleted the job's result: its stored PNGs go too; how many went."""
        record = self.engine.record(job)
        removed = 0
        for image in record.images if record is not None else ():
            path = Path(image.path)
            if path.exists():
                path.unlink()
                removed += 1
        log.info("deleted the %d stored image(s) of job %d", removed, job)
        return removed

    def withheld(self, job: int, review: Review, locale: Locale) -> str:
        """What a refused result's reply says instead of its images."""
        return text(
            "policy_withheld", locale, job=job, label=review.verdict.label, score=_score(review)
        )


def _score(review: Review) -> str:
    return f"{review.verdict.score:.2f}"
