"""The engine's contracts: what `Engine` needs from models, the registry and generate().

Protocols only, so the engine runs on anything shaped like them: engine.models and
engine.generate in the bot, fakes without torch in the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

from engine.errors import InvalidRequest, ModelNotFound, Phrase
from engine.preview import PreviewMap
from engine.prompting.presets import ModelPresets
from engine.request import GenerationRequest, GenerationResult, Limits, RequestDefaults

AddonKind = Literal["VAE", "hypernetwork", "LoRA", "embedding", "upscaler"]


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
    @property
    def presets(self) -> ModelPresets: ...
    @property
    def family(self) -> str: ...


class Registry(Protocol):
    """Looks models up without loading them (engine.models.ModelRegistry is one)."""

    @property
    def models(self) -> Mapping[str, ModelInfo]: ...
    def get(self, name: str) -> ModelInfo: ...
    def by_hash(self, model_hash: str) -> ModelInfo | None: ...
    def check_addons(self, request: GenerationRequest) -> GenerationRequest: ...
    def set_addon_defaults(self, name: str, **changes: str) -> ModelInfo: ...
    def addon_names(self, kind: AddonKind) -> list[str]: ...
    def warm_hashes(self) -> None: ...


def pick_model(registry: Registry, request: GenerationRequest, default: str) -> ModelInfo:
    """The model a request names, as A1111's infotext paste picks one: by `model_hash` first,
    then by `model`'s name, else the default. InvalidRequest (ModelNotFound) when a named model
    is not here, listing the ones that are."""
    if request.model_hash:
        found = registry.by_hash(request.model_hash)
        if found is not None:
            return found
        if request.model:
            with contextlib.suppress(ModelNotFound):
                return registry.get(request.model)  # the registry's own name rules
        model, model_hash = request.model, request.model_hash
        named = (
            Phrase(f"{model!r} (hash {model_hash})", "model_and_hash", model=model, hash=model_hash)
            if model
            else Phrase(f"with hash {model_hash}", "model_hash_only", hash=model_hash)
        )
        raise InvalidRequest(
            f"The model {named} is not here. Models here: {', '.join(registry.models)}; "
            "add --model NAME to draw with one of them.",
            field="model",
            key="model_not_here",
            named=named,
            models=list(registry.models),
        )
    name = request.model or default
    if not name:
        raise InvalidRequest(
            "No model is installed yet; ask the admin to add one.", field="model", key="no_models"
        )
    return registry.get(name)


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
        finish_early: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]: ...
