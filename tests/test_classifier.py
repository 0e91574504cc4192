"""The output image check (bot/classifier.py): NudeNet really runs (its ONNX model from the
wheel, on the CPU) on an image the demo model drew, on its own thread; a failing classifier
leaves a result unchecked rather than lost; the classifier is pluggable by name."""

from __future__ import annotations

import threading

import pytest

from bot.classifier import (
    ImageCheck,
    NudeNetClassifier,
    Verdict,
    make_classifier,
    strongest,
)
from engine.generate import generate
from engine.request import GenerationRequest, Limits
from tests.classifier_stub import FLAG_ALL, FlagAll


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_nudenet_labels_a_demo_image_safe_off_the_calling_thread(demo_model) -> None:  # type: ignore[no-untyped-def]
    request = GenerationRequest(
        prompt="1girl, silver hair, smile", width=64, height=64, num_inference_steps=4, seed=7
    )
    (result,) = generate(demo_model, [request], limits=Limits())
    seen: list[str] = []

    class Recording(NudeNetClassifier):
        def classify(self, png: bytes) -> Verdict:
            seen.append(threading.current_thread().name)
            return super().classify(png)

    check = ImageCheck(Recording())
    try:
        (verdict,) = await check.check([result.png])
    finally:
        check.close()
    assert verdict.label == "safe" and not verdict.flagged
    assert 0.0 <= verdict.score < 0.5
    assert seen == [seen[0]] and seen[0].startswith("aidraw-image-check")


async def test_a_failing_classifier_leaves_the_image_unchecked() -> None:
    class Broken:
        def classify(self, png: bytes) -> Verdict:
            raise RuntimeError("model file missing")

    check = ImageCheck(Broken())
    try:
        assert await check.check([b"png"]) == [Verdict("unchecked", 0.0)]
    finally:
        check.close()


def test_classifiers_are_named_in_settings() -> None:
    assert make_classifier("none", 0.5) is None
    nudenet = make_classifier("nudenet", 0.3)
    assert isinstance(nudenet, NudeNetClassifier) and nudenet.threshold == 0.3
    assert isinstance(make_classifier(FLAG_ALL, 0.5), FlagAll)


def test_the_most_flagged_image_speaks_for_a_result() -> None:
    safe, flagged = Verdict("safe", 0.3), Verdict("BUTTOCKS_EXPOSED", 0.6)
    assert strongest([safe, flagged, Verdict("ANUS_EXPOSED", 0.55)]) == flagged
    assert strongest([safe, Verdict("safe", 0.1)]) == safe
    assert strongest([]) == Verdict("unchecked", 0.0)
