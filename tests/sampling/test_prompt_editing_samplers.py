"""Prompt editing counts model calls as A1111 does: twice a step for second-order samplers."""

from __future__ import annotations

from typing import Any

import pytest

import engine.generate as generate_module
from engine.generate import generate
from engine.request import GenerationRequest, Limits

pytestmark = pytest.mark.slow


def spy_on_editing(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, int], list[int]]:
    """The steps prompt editing's schedule is built for, and the steps it is asked for."""
    seen: dict[str, int] = {}
    asked: list[int] = []
    real = generate_module.encode_conditioning

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen["steps"] = kwargs["steps"]
        conditioning = real(*args, **kwargs)
        original_at = conditioning.at

        def at(step: int, images: Any = None) -> Any:
            asked.append(step)
            return original_at(step, images)

        object.__setattr__(conditioning, "at", at)
        return conditioning

    monkeypatch.setattr(generate_module, "encode_conditioning", spy)
    return seen, asked


@pytest.mark.parametrize(
    ("sampler", "multiplier"),
    [("Euler a", 1), ("Euler", 1), ("DPM++ 2M", 1), ("Heun", 2), ("DPM2", 2), ("DPM++ SDE", 2)],
)
def test_editing_schedule_spans_every_model_call(
    demo_model: Any, monkeypatch: pytest.MonkeyPatch, sampler: str, multiplier: int
) -> None:
    seen, asked = spy_on_editing(monkeypatch)
    request = GenerationRequest(
        prompt="[cat:dog:0.5]", width=64, height=64, num_inference_steps=6, seed=1, sampler=sampler
    )
    generate(demo_model, [request], limits=Limits())
    # The schedule covers as many steps as the sampler makes model calls, so `when` = 0.5
    # switches halfway through the drawing, not halfway through the first half.
    assert seen["steps"] == 6 * multiplier
    assert max(asked) < seen["steps"]
    assert max(asked) >= seen["steps"] - 2
