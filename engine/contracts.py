"""The engine's contracts: what `Engine` needs from models, the registry and generate().

Protocols only, so the engine runs on anything shaped like them: engine.models and
engine.generate in the bot, fakes without torch in the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from engine.preview import PreviewMap
from engine.request import GenerationRequest, GenerationResult, Limits, RequestDefaults


class Device(Protocol):
    @property
    def type(self) -> str: ...


class ModelHandle(Protocol):
    """A loaded model (engine.models.LoadedModel is one)."""

    @property
    def name(self) -> str: ...
    @property
    def device(self) -> Device: ...
    @property
    def preview(self) -> PreviewMap: ...


class ModelInfo(Protocol):
    """A model known but not loaded (engine.models.ModelEntry is one)."""

    @property
    def name(self) -> str: ...
    @property
    def defaults(self) -> RequestDefaults: ...


class Registry(Protocol):
    """Looks models up without loading them (engine.models.ModelRegistry is one)."""

    @property
    def models(self) -> Mapping[str, ModelInfo]: ...
    def get(self, name: str) -> ModelInfo: ...


M = TypeVar("M", bound=ModelHandle)
M_contra = TypeVar("M_contra", bound=ModelHandle, contravariant=True)
StepFn = Callable[[int, int, Any], None]


class GenerateFn(Protocol[M_contra]):
    """engine.generate.generate's signature (tests pass a fake without torch)."""

    def __call__(
        self,
        model: M_contra,
        requests: Sequence[GenerationRequest],
        *,
        limits: Limits,
        on_step: StepFn | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]: ...
