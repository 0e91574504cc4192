"""Engine exceptions. `str(e)` of InvalidRequest and QueueFull is safe to show users."""

from __future__ import annotations

from collections.abc import Sequence


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequest(EngineError):
    """The request cannot run as asked; the message says what was wrong and what is allowed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ModelNotFound(InvalidRequest):
    """The named model (or VAE, hypernetwork…) is not in the registry."""

    def __init__(self, name: str, *, kind: str = "model", suggestions: Sequence[str] = ()) -> None:
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"Unknown {kind} {name!r}.{hint}", field=kind)
        self.name = name
        self.kind = kind
        self.suggestions = tuple(suggestions)


class QueueFull(EngineError):
    """The queue is at its limit: everyone's (`per_user` False) or this requester's own."""

    def __init__(self, position: int, limit: int, *, per_user: bool = False) -> None:
        if per_user:
            message = (
                f"You already have {position} unfinished drawings (the limit is {limit}); "
                "wait for one to finish."
            )
        else:
            message = f"The queue is full ({position} of {limit}); try again later."
        super().__init__(message)
        self.position = position
        self.limit = limit
        self.per_user = per_user


class JobCancelled(EngineError):
    """The job was cancelled before it finished."""


class EngineClosed(EngineError):
    """The engine is shutting down and accepts no new jobs."""


class GenerationFailed(EngineError):
    """Generation raised (out of memory, a broken model…); the message is user-safe."""
