"""The output image check: every result goes through an image classifier before it is sent.

`Classifier` is the small interface (PNG bytes → `Verdict`); `NudeNetClassifier` is the default
(NudeNet's 320n ONNX detector, shipped inside its wheel, on onnxruntime's CPU provider, offline).
`[moderation] image_check` picks it, "none", or any class as "package.module:Name" (built with
`threshold=`). `ImageCheck` runs the classifier on its own thread, never the engine's torch
worker thread, so drawing never waits on it.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

SAFE = "safe"
DETECTION_FLOOR = 0.2  # NudeNet reports no detection below this score
UNCHECKED = "unchecked"


@dataclass(frozen=True)
class Verdict:
    """An image's label ("safe", "unchecked", or what was found, e.g. NudeNet's
    "FEMALE_BREAST_EXPOSED") and the score behind it (for "safe": the highest score any
    flagging class reached, below the threshold)."""

    label: str
    score: float

    @property
    def flagged(self) -> bool:
        return self.label not in (SAFE, UNCHECKED)

    def __str__(self) -> str:
        return f"{self.label} {self.score:.2f}"


class Classifier(Protocol):
    """What an image check plugs in: one PNG in, one verdict out (called on one thread)."""

    def classify(self, png: bytes) -> Verdict: ...


class NudeNetClassifier:
    """NudeNet 3's detector: an image is flagged by its strongest exposed-part detection at
    `threshold` or more; covered parts, faces and feet never flag."""

    FLAGGING = (
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "ANUS_EXPOSED",
        "BUTTOCKS_EXPOSED",
    )

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._detector: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._detector is None:
                import nudenet
                import onnxruntime
                from nudenet import NudeDetector

                detector = NudeDetector(providers=["CPUExecutionProvider"])
                # One CPU thread, not onnxruntime's default of one per core: the check runs
                # beside the engine's torch thread and must not take its cores.
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = options.inter_op_num_threads = 1
                model = Path(nudenet.__file__).parent / "320n.onnx"
                detector.onnx_session = onnxruntime.InferenceSession(
                    str(model), options, providers=["CPUExecutionProvider"]
                )
                self._detector = detector
            return self._detector

    def classify(self, png: bytes) -> Verdict:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(png)) as image:
                # NudeNet converts RGBA to BGR and swaps back to RGB itself.
                pixels = np.asarray(image.convert("RGBA"))
        except (UnidentifiedImageError, OSError) as e:
            log.warning("image check: not an image (%s); left unchecked", e)
            return Verdict(UNCHECKED, 0.0)
        found = {k: v for k, v in self.scores(pixels).items() if k in self.FLAGGING}
        label, score = max(found.items(), key=lambda kv: kv[1], default=(SAFE, 0.0))
        if score >= self.threshold:
            return Verdict(label, score)
        return Verdict(SAFE, score)

    def scores(self, pixels: Any) -> dict[str, float]:
        """Each class's best detection score in an RGBA image (classes found at NudeNet's own
        0.2 floor only): what `NudeDetector.detect` reports, without its boxes.

        Its pre-processing and model, scored with numpy instead of its per-row Python loop
        and NMS (the best box of a class always survives NMS), so the check holds the GIL for
        well under a millisecond and never slows the torch thread down.
        """
        import numpy as np
        from nudenet import nudenet as module

        detector = self._load()
        blob = module._read_image(pixels, detector.input_width)[0]
        output = detector.onnx_session.run(None, {detector.input_name: blob})[0]
        classes = np.squeeze(output, axis=0)[4:]  # (classes, boxes)
        best, score = classes.argmax(axis=0), classes.max(axis=0)
        labels: list[str] = getattr(module, "__labels")
        found: dict[str, float] = {}
        for index in np.unique(best[score >= DETECTION_FLOOR]):
            found[labels[int(index)]] = float(score[best == index].max())
        return found


def make_classifier(name: str, threshold: float) -> Classifier | None:
    """The classifier `[moderation] image_check` names (None for "none")."""
    if name == "none":
        return None
    if name == "nudenet":
        return NudeNetClassifier(threshold)
    module, _, attribute = name.partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    classifier: Classifier = cls(threshold=threshold)
    return classifier


class ImageCheck:
    """Runs a classifier on its own thread; `check` awaits the verdicts of a result's images
    (a classifier that fails gives "unchecked", logged: the result is not lost over it)."""

    def __init__(self, classifier: Classifier | None) -> None:
        self.classifier = classifier
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="aidraw-image-check")

    async def check(self, pngs: Sequence[bytes]) -> list[Verdict]:
        if self.classifier is None:
            return [Verdict(UNCHECKED, 0.0) for _ in pngs]
        loop = asyncio.get_running_loop()
        verdicts = []
        for png in pngs:
            try:
                verdict = await loop.run_in_executor(self._executor, self.classifier.classify, png)
            except Exception as e:
                log.warning("image check failed (%r); the image is sent as unchecked", e)
                verdict = Verdict(UNCHECKED, 0.0)
            verdicts.append(verdict)
        return verdicts

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def strongest(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict that speaks for a whole result: its most flagged image."""
    flagged = [v for v in verdicts if v.flagged]
    pool = flagged or list(verdicts) or [Verdict(UNCHECKED, 0.0)]
    return max(pool, key=lambda v: v.score)
