"""A stub image classifier for the end-to-end tests ([moderation] image_check =
"tests.classifier_stub:FlagAll"): it flags every image, so the tests drive the spoiler,
refuse and age-restricted paths of every frontend without NSFW pictures. The real NudeNet
runs in tests/test_classifier.py."""

from __future__ import annotations

import threading

from bot.classifier import Verdict

LABEL = "FEMALE_BREAST_EXPOSED"


class FlagAll:
    """Flags every image (label LABEL, score 0.91); records the threads it ran on."""

    threads: set[str] = set()

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def classify(self, png: bytes) -> Verdict:
        FlagAll.threads.add(threading.current_thread().name)
        return Verdict(LABEL, 0.91)


FLAG_ALL = "tests.classifier_stub:FlagAll"
