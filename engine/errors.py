"""Engine exceptions. `str(e)` of InvalidRequest and QueueFull is safe to show users.

Every error a user may see carries a message `key` and the `params` its English was made from,
so a frontend can say it in another language (bot/messages.py holds the translations); `str(e)`
stays the English. A part of a message that needs its own words (a hint that is there only
sometimes, a flag's help) is a `Phrase` param.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Phrase:
    """A piece of an error message with its own message key ("Did you mean --seed?", "width").

    `str()` is the English; `key` and `params` work as an EngineError's do. Without a key it
    is the same text in every language (e.g. a model's own error line, or nothing at all).
    """

    __slots__ = ("english", "key", "params")

    def __init__(self, english: str, key: str | None = None, /, **params: Any) -> None:
        self.english = english
        self.key = key
        self.params: dict[str, Any] = params

    def __str__(self) -> str:
        return self.english

    def __repr__(self) -> str:
        return f"Phrase({self.english!r}, {self.key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Phrase):
            return NotImplemented
        return (self.english, self.key, self.params) == (other.english, other.key, other.params)


NOTHING = Phrase("")  # an optional part that is absent, in every language
PROMPT = Phrase("prompt", "word_prompt")
NEGATIVE_PROMPT = Phrase("negative prompt", "word_negative_prompt")


class EngineError(Exception):
    """Base of every error the engine raises on purpose.

    `key` names the message's translation and `params` are the values it is formatted with
    (None: the English is shown in every language).
    """

    def __init__(self, message: str, *, key: str | None = None, **params: Any) -> None:
        super().__init__(message)
        self.key = key
        self.params: dict[str, Any] = params


class InvalidRequest(EngineError):
    """The request cannot run as asked; the message says what was wrong and what is allowed."""

    def __init__(
        self, message: str, *, field: str | None = None, key: str | None = None, **params: Any
    ) -> None:
        super().__init__(message, key=key, **params)
        self.field = field


_KINDS = {
    "model": Phrase("model", "word_model"),
    "VAE": Phrase("VAE", "word_vae"),
    "hypernetwork": Phrase("hypernetwork", "word_hypernetwork"),
    "LoRA": Phrase("LoRA", "word_lora"),
    "embedding": Phrase("embedding", "word_embedding"),
    "upscaler": Phrase("upscaler", "word_upscaler"),
}


class ModelNotFound(InvalidRequest):
    """The named model (or VAE, hypernetwork…) is not in the registry: close names, and what is
    installed (as an unknown sampler lists the samplers)."""

    def __init__(
        self,
        name: str,
        *,
        kind: str = "model",
        suggestions: Sequence[str] = (),
        installed: Sequence[str] = (),
    ) -> None:
        shown = [*installed[:20], *(["…"] if len(installed) > 20 else [])]
        listed = (
            Phrase(f" Installed: {', '.join(shown)}.", "installed", names=shown)
            if installed
            else NOTHING
        )
        hint = (
            Phrase(
                f" Did you mean: {', '.join(suggestions)}?",
                "did_you_mean",
                suggestion=list(suggestions),
            )
            if suggestions
            else NOTHING
        )
        super().__init__(
            f"Unknown {kind} {name!r}.{hint}{listed}",
            field=kind,
            key="unknown_model",
            kind=_KINDS.get(kind, Phrase(kind)),
            name=name,
            hint=hint,
            installed=listed,
        )
        self.name = name
        self.kind = kind
        self.suggestions = tuple(suggestions)


class BadAddonFile(InvalidRequest):
    """An add-on file (VAE, hypernetwork, LoRA, embedding) that cannot be used, in one line:
    `kind` as in ModelNotFound, `file` its name (never its path), `problem` what is wrong."""

    def __init__(self, kind: str, file: str, problem: str | Phrase) -> None:
        super().__init__(
            f"Cannot use the {kind} {file}: {problem}.",
            field=kind,
            key="bad_addon_file",
            kind=_KINDS.get(kind, Phrase(kind)),
            file=file,
            problem=problem,
        )
        self.kind = kind
        self.file = file


class QueueFull(EngineError):
    """The queue is at its limit: everyone's (`per_user` False) or this requester's own."""

    def __init__(self, position: int, limit: int, *, per_user: bool = False) -> None:
        if per_user:
            super().__init__(
                f"You already have {position} unfinished drawings (the limit is {limit}); "
                "wait for one to finish.",
                key="queue_full_user",
                position=position,
                limit=limit,
            )
        else:
            super().__init__(
                f"The queue is full ({position} of {limit}); try again later.",
                key="queue_full",
                position=position,
                limit=limit,
            )
        self.position = position
        self.limit = limit
        self.per_user = per_user


class JobCancelled(EngineError):
    """The job was cancelled before it finished."""


class EngineClosed(EngineError):
    """The engine is shutting down and accepts no new jobs."""


class GenerationFailed(EngineError):
    """Generation raised (out of memory, a broken model…); the message is user-safe."""
