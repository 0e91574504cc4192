"""The words under a Telegram job's pictures and in its status message, within Telegram's limits.

A result's caption leads with what a user looks for (job number, `messages.caption`'s seed,
model, steps and variation, the UC preset by its name), then the prompt, which is what gets cut
at 1024: the whole infotext is in the PNG (📄) and its file's caption.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bot import messages
from bot.messages import Locale, text
from engine.prompting.presets import uc_preset_of
from engine.request import GenerationRequest, GenerationResult, Progress

MAX_CAPTION = 1024  # Telegram counts UTF-16 code units


def _utf16_len(value: str) -> int:
    return len(value.encode("utf-16-le")) // 2


def cut(value: str, limit: int = MAX_CAPTION) -> str:
    """`value` within `limit` UTF-16 code units (as Telegram counts), ending in … if cut."""
    if _utf16_len(value) <= limit:
        return value
    kept = value[: limit - 1]
    while _utf16_len(kept) > limit - 1:
        kept = kept[:-1]
    return kept + "…"


def result_caption(
    job_id: int, results: Sequence[GenerationResult], locale: Locale, notes: Iterable[str] = ()
) -> str:
    """The job and its settings line, the UC preset's name, the parser's notes, then the
    prompt and the user's own negative prompt; cut to Telegram's limit at the end only. An
    upscale of a picture has no prompt: its line and notes."""
    request: GenerationRequest = results[0].request
    line = messages.caption(
        request, [r.seed for r in results], [r.infotext for r in results], locale
    )
    head = [text("tg_caption_job", locale, job=job_id, caption=line)]
    preset, negative = uc_preset_of(request.negative_prompt)
    if preset is not None:
        head.append(text("tg_caption_uc", locale, preset=preset))
    head.extend(notes)
    if request.extras_upscale:
        return cut("\n".join(head))
    body = [request.prompt]
    if negative:
        body.append(text("tg_caption_negative", locale, negative=negative))
    return cut("\n".join(head) + "\n\n" + "\n".join(body))


def status_text(
    progress: Progress | None,
    locale: Locale,
    notes: Iterable[str] = (),
    *,
    upscaling: bool = False,
) -> str:
    """A job's status: waiting, its place in the queue, its step (`upscaling`: an upscale of a
    picture, which has no steps)."""
    if progress is None or (progress.state == "queued" and progress.position is None):
        line = text("tg_waiting", locale)
    elif progress.state == "queued":
        line = text("queued", locale, position=progress.position, eta=_eta(progress, locale))
    elif upscaling:
        line = text("upscaling", locale, eta=_eta(progress, locale))
    else:
        eta = _eta(progress, locale)
        line = text("drawing", locale, step=progress.step, total=progress.total, eta=eta)
    return "\n".join([line, *notes])


def _eta(progress: Progress, locale: Locale) -> str:
    if progress.eta_s is None:
        return ""
    return text("eta", locale, seconds=max(1, round(progress.eta_s)))
