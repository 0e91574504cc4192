"""The engine on the demo model: batching identity, cancel at a step, progress and previews."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.device import DeviceOptions
from engine.engine import Engine
from engine.errors import JobCancelled
from engine.generate import generate
from engine.job import Job
from engine.models import LoadedModel, ModelRegistry
from engine.queue import QueueConfig
from engine.request import GenerationRequest, GenerationResult, Limits, Progress
from tests.conftest import png_pixels

pytestmark = pytest.mark.slow
TIMEOUT_S = 300  # the CPU may be shared with other test runs
BASE = GenerationRequest(
    prompt="1girl, silver hair, smile",
    negative_prompt="lowres",
    width=64,
    height=64,
    num_inference_steps=4,
    sampler="Euler a",  # ancestral: fresh noise every step, so shared noise would show
    seed=1234,
)
OTHERS = [
    GenerationRequest(prompt="1boy, frown", width=64, height=64, num_inference_steps=4, seed=99),
    GenerationRequest(prompt="cat ears", width=64, height=64, num_inference_steps=4, seed=5),
]


class Spy:
    """generate() as the engine calls it, recording each call; `gate_at` pauses at a step."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # images per call
        self.latents: list[list[torch.Tensor]] = []  # per call: latents after each step
        self.gate_at: int | None = None
        self.reached = threading.Event()
        self.proceed = threading.Event()

    def __call__(
        self,
        model: LoadedModel,
        requests: Sequence[GenerationRequest],
        *,
        limits: Limits,
        on_step: Callable[[int, int, Any], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        finish_early: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        self.calls.append(sum(r.batch_size for r in requests))
        seen: list[torch.Tensor] = []
        self.latents.append(seen)

        def step(done: int, total: int, latents: Any) -> None:
            seen.append(latents.detach().clone())
            if on_step is not None:
                on_step(done, total, latents)
            if done == self.gate_at:
                self.reached.set()
                self.proceed.wait(TIMEOUT_S)

        return generate(
            model,
            requests,
            limits=limits,
            on_step=step,
            cancelled=cancelled,
            finish_early=finish_early,
        )


def zero_unet(model: LoadedModel) -> LoadedModel:
    """Make the UNet predict zero noise, so sampling is element-wise arithmetic on the noise:
    batched and single runs must then agree bit for bit, step by step."""
    unet = model.pipe.unet

    def forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (torch.zeros_like(sample),)

    unet.forward = forward
    return model


@pytest.fixture
async def start(
    demo_models_dir: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., tuple[Engine[LoadedModel], Spy]]]:
    engines: list[Engine[LoadedModel]] = []
    tasks: list[asyncio.Task[None]] = []
    registry = ModelRegistry(demo_models_dir)

    def make(
        *, change: Callable[[LoadedModel], LoadedModel] = lambda m: m, **config: Any
    ) -> tuple[Engine[LoadedModel], Spy]:
        spy = Spy()
        engine: Engine[LoadedModel] = Engine(
            QueueConfig(
                **{
                    "journal": ":memory:",
                    "results_dir": str(tmp_path / f"results{len(engines)}"),
                    "warm_up": False,
                    **config,
                }
            ),
            registry=registry,
            load=lambda name: change(registry.load(name, DeviceOptions(device="cpu"))),
            generate=spy,
        )
        engine.pause()  # tests queue first, then resume, to control batching
        engines.append(engine)
        tasks.append(asyncio.create_task(engine.run()))
        return engine, spy

    yield make
    for engine in engines:
        await engine.close(grace_s=TIMEOUT_S)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)


async def results(*jobs: Job) -> list[list[GenerationResult]]:
    async with asyncio.timeout(TIMEOUT_S):
        return [await job.result() for job in jobs]


async def test_a_job_draws_the_same_image_batched_as_alone(start: Any) -> None:
    engine, spy = start(max_batch=4, max_batch_pixels=4 * 64 * 64)
    alone = engine.submit(BASE)
    engine.resume()
    [[solo]] = await results(alone)
    engine.pause()
    jobs = [engine.submit(r) for r in (*OTHERS, BASE)]
    engine.resume()
    *_, [batched] = await results(*jobs)
    assert spy.calls == [1, 3]  # really one call for the three
    assert batched.seed == solo.seed == 1234 and batched.infotext == solo.infotext
    assert np.abs(png_pixels(batched.png) - png_pixels(solo.png)).max() <= 1


async def test_batched_jobs_get_exactly_the_noise_they_get_alone(start: Any) -> None:
    engine, spy = start(max_batch=4, max_batch_pixels=4 * 64 * 64, change=zero_unet)
    alone = engine.submit(BASE)
    engine.resume()
    await results(alone)
    engine.pause()
    jobs = [engine.submit(r) for r in (OTHERS[0], BASE, OTHERS[1])]
    engine.resume()
    await results(*jobs)
    solo_steps, batch_steps = spy.latents
    assert len(solo_steps) == len(batch_steps) == 4
    for solo, batch in zip(solo_steps, batch_steps, strict=True):
        assert torch.equal(batch[1], solo[0])  # initial and ancestral noise, bit for bit


async def test_cancel_stops_the_pipeline_at_the_next_step(start: Any) -> None:
    engine, spy = start()
    spy.gate_at = 2
    job = engine.submit(dataclasses.replace(BASE, num_inference_steps=20))
    engine.resume()
    async with asyncio.timeout(TIMEOUT_S):
        async for progress in job.updates():
            if progress.step == 2:
                break
    assert engine.cancel(job.id, by="")
    spy.proceed.set()
    with pytest.raises(JobCancelled):
        await job.result()
    # The engine goes on with the next job (after the cancelled call has returned)…
    [[image]] = await results(engine.submit(BASE))
    assert image.seed == 1234
    # …and the cancelled call stopped right after the step in progress, not after 20.
    assert [len(steps) for steps in spy.latents] == [2, 4]


async def test_progress_reports_steps_eta_and_previews(start: Any) -> None:
    engine, spy = start(preview_every_steps=2)
    first = engine.submit(GenerationRequest(prompt="warm", num_inference_steps=2, seed=1))
    job = engine.submit(GenerationRequest(prompt="1girl", num_inference_steps=6, seed=1))
    seen: list[Progress] = []

    async def watch() -> None:
        async for progress in job.updates():
            seen.append(progress)

    assert job.progress.position == 2
    watcher = asyncio.create_task(watch())
    engine.resume()
    await results(first, job)
    await asyncio.wait_for(watcher, TIMEOUT_S)
    drawing = [p for p in seen if p.state == "running" and p.step > 0]
    assert [p.step for p in drawing] == sorted(p.step for p in drawing)
    assert {p.total for p in drawing} == {6}
    assert all(p.eta_s is not None and p.eta_s >= 0 for p in drawing)  # measured on `first`
    assert all(p.preview is None for p in drawing if p.step < 2)
    with_preview = [p for p in drawing if p.preview is not None]
    assert with_preview and seen[-1].state == "done"
    assert with_preview[-1].preview is not None
    preview = Image.open(io.BytesIO(with_preview[-1].preview))
    assert preview.format == "PNG" and preview.size == (64, 64)  # 128 px image: latents x4


async def test_the_engine_built_from_settings_draws_and_keeps_its_files(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    from bot.launcher import build_engine
    from bot.settings import from_dict

    settings = from_dict(
        {
            "engine": {"models_dir": str(demo_models_dir)},
            "queue": {"journal": "state/journal.sqlite3", "results_dir": "state/images"},
        },
        root=tmp_path,
    )
    engine, store = build_engine(settings)
    task = asyncio.create_task(engine.run())
    try:
        job = engine.submit(GenerationRequest(prompt="1girl", num_inference_steps=2, seed=3))
        [[image]] = await results(job)
        assert image.request.model == "aidraw-demo" and image.seed == 3
        [record] = engine.history()
        assert record.images[0].path == str(tmp_path / "state/images" / f"{job.id:06d}-1.png")
        assert (tmp_path / "state/journal.sqlite3").is_file()
    finally:
        await engine.close()
        await task
        store.close()


def test_previews_use_a1111s_cheap_latent_to_rgb_map() -> None:
    from engine.preview import LATENT_RGB, preview_png

    latents = torch.zeros(4, 16, 24)  # a 192x128 image
    latents[0] = 1.0  # only the first latent channel: its RGB row of the map
    preview = Image.open(io.BytesIO(preview_png(latents))).convert("RGB")
    assert preview.size == (96, 64)  # half the image's size
    expected = tuple(round((1 + weight) / 2 * 255) for weight in LATENT_RGB[0])
    assert preview.getpixel((40, 30)) == expected
    with pytest.raises(ValueError, match=r"expected latents \(4, h, w\)"):
        preview_png(torch.zeros(16, 8, 8))
