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
        found = [d for d in self._load().detect(pixels) if d["class"] in self.FLAGGING]
        best = max(found, key=lambda d: d["score"], default=None)
        if best is not None and best["score"] >= self.threshold:
            return Verdict(str(best["class"]), float(best["score"]))
        return Verdict(SAFE, float(best["score"]) if best else 0.0)


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
