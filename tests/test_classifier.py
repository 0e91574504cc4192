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


def test_scores_are_what_nudenet_detect_reports_per_class() -> None:
    """The classifier scores NudeNet's model output with numpy; on an output full of
    detections (the model's own shape, with random boxes and scores), each class's best score
    is exactly the best that NudeNet's own `detect` (per-row loop, NMS) reports."""
    import numpy as np

    classifier = NudeNetClassifier()
    detector = classifier._load()
    rng = np.random.default_rng(3)
    boxes = 2100
    output = np.zeros((1, 22, boxes), np.float32)
    output[0, 0:2] = rng.uniform(20, 300, (2, boxes))  # centres
    output[0, 2:4] = rng.uniform(5, 80, (2, boxes))  # sizes
    output[0, 4:] = rng.uniform(0, 1, (18, boxes)) ** 8  # mostly low, some high

    class Session:
        def run(self, names: object, feeds: object) -> list[object]:
            return [output]

    real = detector.onnx_session
    detector.onnx_session = Session()
    try:
        pixels = np.zeros((320, 320, 4), np.uint8)
        reported: dict[str, float] = {}
        for found in detector.detect(pixels):
            reported[found["class"]] = max(reported.get(found["class"], 0.0), found["score"])
        assert len(reported) >= 10  # plenty to compare
        assert classifier.scores(pixels) == pytest.approx(reported)
        verdict = classifier.classify(_png(pixels))
        flagging = {k: v for k, v in reported.items() if k in NudeNetClassifier.FLAGGING}
        label = max(flagging, key=lambda k: flagging[k])
        assert verdict == Verdict(label, pytest.approx(flagging[label]))  # type: ignore[arg-type]
    finally:
        detector.onnx_session = real


def _png(pixels: object) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # type: ignore[arg-type]
    return buffer.getvalue()
