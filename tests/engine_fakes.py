"""Fakes for the engine tests: registry, models, loader and a generate() without torch."""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import GenerationFailed, JobCancelled, ModelNotFound
from engine.preview import SD1_PREVIEW, PreviewMap
from engine.prompting.networks import networks_of
from engine.prompting.presets import NAI_PRESETS, ModelPresets
from engine.request import GenerationRequest, GenerationResult, Limits, RequestDefaults

FAKE_DEFAULTS = RequestDefaults(width=64, height=64, num_inference_steps=4)
HOLD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FakeDevice:
    type: str = "cpu"


@dataclass(frozen=True)
class FakeModel:
    name: str
    device: FakeDevice = field(default_factory=FakeDevice)
    preview: PreviewMap = SD1_PREVIEW


@dataclass(frozen=True)
class FakeEntry:
    name: str
    defaults: RequestDefaults = FAKE_DEFAULTS
    presets: ModelPresets = NAI_PRESETS
    family: str = "SD-1.x"


class FakeRegistry:
    """Models by name, like ModelRegistry (case-insensitive lookup, ModelNotFound)."""

    def __init__(self, names: Iterable[str] = ("alpha", "beta", "gamma")) -> None:
        self.models = {name: FakeEntry(name) for name in names}

    def get(self, name: str) -> FakeEntry:
        for key, entry in self.models.items():
            if key.lower() == name.lower():
                return entry
        close = [n for n in self.models if n[0] == name[:1]]
        raise ModelNotFound(name, suggestions=close, installed=list(self.models))

    def warm_hashes(self) -> None:
        return None

    def addon_names(self, kind: str) -> list[str]:
        return []

    def set_addon_defaults(self, name: str, **changes: str) -> FakeEntry:
        raise ModelNotFound(changes.get("vae") or changes.get("hypernet") or "", kind="VAE")

    def check_addons(self, request: GenerationRequest) -> GenerationRequest:
        """No add-on files here: the checkpoint's own VAE, and no LoRA or hypernetwork."""
        if networks_of(request.prompt):
            raise ModelNotFound("any", kind="LoRA")
        return dataclasses.replace(request, vae="None")

    def by_hash(self, model_hash: str) -> FakeEntry | None:
        """A fake model's hash is its name's first 10 letters, padded with zeros."""
        return next(
            (e for n, e in self.models.items() if n[:10].ljust(10, "0") == model_hash), None
        )


class FakeLoader:
    """Loads FakeModels, recording names and threads; names in `broken` fail."""

    def __init__(self, broken: Iterable[str] = ()) -> None:
        self.loads: list[str] = []
        self.threads: set[int] = set()
        self.broken = set(broken)

    def __call__(self, name: str) -> FakeModel:
        self.threads.add(threading.get_ident())
        if name in self.broken:
            raise OSError(f"{name}: not a model file")
        self.loads.append(name)
        return FakeModel(name)


def upscaled(requests: Sequence[GenerationRequest], limits: Limits) -> list[GenerationResult]:
    """The engine's own Extras upscale (engine/extras.py) with a model that has no upscaler
    files: Lanczos and Nearest need none."""
    from types import SimpleNamespace

    from engine.extras import upscale_results  # torch: only tests that upscale pay for it

    model = SimpleNamespace(device="cpu", addons=SimpleNamespace(library=None, upscalers=None))
    return upscale_results(model, requests, limits)  # type: ignore[arg-type]


class FakeGenerate:
    """generate()'s contract without torch: steps, on_step, cancelled, one result per image.

    `hold()` makes every step wait for a permit from `allow(n)`; while waiting it still
    notices cancellation, as the real loop does at the end of the step in progress.
    PNG bytes are "prompt|seed"; an Extras upscale is the engine's own (`upscaled`). Prompts
    in `failing` raise RuntimeError; with `oom_above = n`, calls with more than n images fail
    as out-of-memory does. With `log`, each finished call appends "done <prompt>" lines
    there; `announce` prints each call.
    With `latents`, each step hands on_step a (images, 4, 8, 8) tensor filled with
    step/total, so the engine makes previews; otherwise None (no torch needed).
    """

    def __init__(
        self, *, log: Path | None = None, announce: bool = False, latents: bool = False
    ) -> None:
        self.log = log
        self.announce = announce
        self.latents = latents
        self.calls: list[list[GenerationRequest]] = []
        self.steps_run: list[list[int]] = []
        self.threads: set[int] = set()
        self.failing: set[str] = set()
        self.oom_above: int | None = None
        self._held = False
        self._permits = threading.Semaphore(0)

    @property
    def prompts(self) -> list[list[str]]:
        return [[r.prompt for r in call] for call in self.calls]

    def _latents(self, images: int, value: float) -> Any:
        if not self.latents:
            return None
        import torch  # only tests that want previews pay for importing torch

        return torch.full((images, 4, 8, 8), value)

    def hold(self) -> None:
        self._held = True

    def allow(self, steps: int = 1) -> None:
        for _ in range(steps):
            self._permits.release()

    def release(self) -> None:
        """Stop holding, and let any waiting step go."""
        self._held = False
        self.allow(1000)

    def __call__(
        self,
        model: FakeModel,
        requests: Sequence[GenerationRequest],
        *,
        limits: Limits,
        on_step: Callable[[int, int, Any], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        finish_early: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        self.threads.add(threading.get_ident())
        if requests and requests[0].prompt == "warm-up":
            return []
        if requests and requests[0].extras_upscale:
            self.calls.append(list(requests))
            while self._held and not self._permits.acquire(timeout=0.01):
                pass  # held as a drawing's step would be
            return upscaled(requests, limits)
        self.calls.append(list(requests))
        if self.announce:  # one write: lines from two threads must not interleave
            sys.stdout.write(" ".join(["drawing", *[r.prompt for r in requests]]) + "\n")
            sys.stdout.flush()
        steps: list[int] = []
        self.steps_run.append(steps)
        images = sum(r.batch_size for r in requests)
        if self.oom_above is not None and images > self.oom_above:
            raise GenerationFailed(
                "Out of GPU memory: try a smaller size or fewer images at once.",
                key="out_of_memory",  # as generate() says it
            ) from MemoryError("CUDA out of memory")
        if any(r.prompt in self.failing for r in requests):
            raise RuntimeError("kaput: /secret/path/model.safetensors")
        total = requests[0].num_inference_steps or 0
        for step in range(1, total + 1):
            while self._held and not self._permits.acquire(timeout=0.01):
                if cancelled is not None and cancelled():
                    raise JobCancelled("cancelled")
            steps.append(step)
            if on_step is not None:
                on_step(step, total, self._latents(images, step / total))
            if cancelled is not None and cancelled():
                raise JobCancelled("cancelled")
            if finish_early is not None and finish_early():
                break  # as generate(): done with what the steps so far drew
        results = []
        for request in requests:
            seed = request.seed if request.seed is not None else 1000
            for i in range(request.batch_size):
                results.append(
                    GenerationResult(
                        png=f"{request.prompt}|{seed + i}".encode(),
                        seed=seed + i,
                        request=dataclasses.replace(request, seed=seed),
                        infotext=f"{request.prompt}\nSeed: {seed + i}",
                    )
                )
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as f:
                f.writelines(f"done {r.prompt}\n" for r in requests)
        return results


@dataclass
class FakeClock:
    """A monotonic clock the test moves."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
