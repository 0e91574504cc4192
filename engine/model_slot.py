"""Model slot: the one model the engine has loaded, and how it is loaded and swapped.

Loading (and the warm-up drawing after it) runs on the engine's torch thread; the slot's lock
makes a batch's load and an admin's swap wait for each other.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic

from engine.contracts import GenerateFn, M
from engine.errors import EngineError, GenerationFailed, Phrase
from engine.request import GenerationRequest, Limits
from engine.stats import EngineStats
from engine.timing import Timing

log = logging.getLogger(__name__)


def tiny_request(model: str) -> GenerationRequest:
    """One step at 64x64: the drawing that tries a model after loading (warm-up) or an admin's
    new VAE or hypernetwork before it is kept."""
    return GenerationRequest(
        prompt="warm-up", width=64, height=64, num_inference_steps=1, seed=0, model=model
    )


class ModelSlot(Generic[M]):
    """The loaded model (None before the first load) on a device of type `device_type`.

    `run_in_worker(fn, name)` runs `fn(name)` on the torch thread; `warm_up()` says whether to
    draw one tiny image after a load (asked at each load: the engine's config may be replaced);
    `timing` learns load times; `changed()` is told after each load, as the queue plan and
    batch sizes depend on the loaded model. `stats` counts loads, their failures and seconds.
    """

    def __init__(
        self,
        *,
        load: Callable[[str], M],
        generate: GenerateFn[M],
        limits: Limits,
        timing: Timing,
        run_in_worker: Callable[..., Awaitable[Any]],
        warm_up: Callable[[], bool],
        changed: Callable[[], None],
        stats: EngineStats | None = None,
    ) -> None:
        self.model: M | None = None
        self.device_type = "cpu"
        self.swaps = 0  # loads that replaced a model
        self._load_fn = load
        self._generate = generate
        self._limits = limits
        self._timing = timing
        self._run_in_worker = run_in_worker
        self._warm_up = warm_up
        self._changed = changed
        self._stats = stats or EngineStats()
        self._lock = asyncio.Lock()
        self._last_load_s = 0.0  # written on the torch thread, read after its await

    @property
    def name(self) -> str | None:
        return self.model.name if self.model is not None else None

    async def ensure(self, name: str) -> M:
        """The model `name`, loaded now unless it already is (GenerationFailed if it cannot)."""
        async with self._lock:
            if self.model is not None and self.model.name == name:
                return self.model
            previous = self.name
            # One pipeline at a time: let go of the old one before loading the next.
            self.model = None
            log.info("loading model %s (replacing %s)", name, previous or "none")
            try:
                model: M = await self._run_in_worker(self._load_and_warm_up, name)
            except Exception as e:
                self._stats.model_load_failures[name] += 1
                log.error("cannot load model %s", name, exc_info=e)
                raise GenerationFailed(
                    f"The model {name} could not be loaded; the admin can find details in the log.",
                    key="model_not_loaded",
                    model=name,
                ) from e
            self._set(model, previous)
            return model

    async def swap(self, name: str, by: str) -> None:
        """An admin's swap to `name`: the loaded model keeps serving until the new one is
        ready, and stays if it cannot be loaded (GenerationFailed says why)."""
        async with self._lock:
            if self.model is None or self.model.name != name:
                previous = self.name
                try:
                    model = await self._run_in_worker(self._load_and_warm_up, name)
                except Exception as e:
                    self._stats.model_load_failures[name] += 1
                    log.error("admin %s: cannot load model %s", by, name, exc_info=e)
                    serving = previous or Phrase("no model", "no_model")
                    raise GenerationFailed(
                        f"Could not load {name}: {type(e).__name__}: {e}. Still serving {serving}.",
                        key="swap_failed",
                        model=name,
                        error_type=type(e).__name__,
                        reason=e,  # an EngineError's own translation, or the raw line
                        serving=serving,
                    ) from e
                self._set(model, previous)

    async def try_drawing(self, request: GenerationRequest) -> None:
        """Load `request.model` (as `ensure`) and draw `request` once on the torch thread.

        EngineErrors pass through (a missing or bad add-on file, said in one line); anything
        else becomes GenerationFailed, whose reason the admin sees."""
        assert request.model is not None
        model = await self.ensure(request.model)
        try:
            await self._run_in_worker(
                functools.partial(self._generate, model, [request], limits=self._limits)
            )
        except EngineError:
            raise
        except Exception as e:
            log.error("drawing %s failed", request, exc_info=e)
            raise GenerationFailed(
                f"Could not draw with it: {type(e).__name__}: {e}. Nothing changed.",
                key="try_failed",
                error_type=type(e).__name__,
                reason=str(e),
            ) from e

    def _set(self, model: M, previous: str | None) -> None:
        self.model = model
        self.device_type = model.device.type
        self._stats.model_loads[model.name] += 1
        self._stats.model_load_s.observe(self._last_load_s)
        if previous is not None:
            self.swaps += 1
        self._changed()

    def _load_and_warm_up(self, name: str) -> M:
        """Load a model and draw one tiny image with it (torch thread)."""
        started = time.perf_counter()
        model = self._load_fn(name)
        if self._warm_up():
            try:
                self._generate(model, [tiny_request(name)], limits=self._limits)
            except Exception as e:  # the model may still draw real requests; they will tell
                log.warning("warm-up of model %s failed: %r", name, e)
        self._last_load_s = time.perf_counter() - started
        self._timing.record_load(self._last_load_s)
        return model
