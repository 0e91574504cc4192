"""Result files: finished jobs' PNGs on disk, named by job id and written atomically.

Named `<job id>-<n>.png`, so a job drawn again after a crash overwrites its own files instead of
leaving a second set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from engine.journal import SavedImage
from engine.request import GenerationResult


class ResultFiles:
    """The `results_dir` folder (created on the first save)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, job_id: int, results: list[GenerationResult]) -> list[SavedImage]:
        """Write one PNG per result; returns where each went, for the journal."""
        self.folder.mkdir(parents=True, exist_ok=True)
        saved = []
        for i, result in enumerate(results, start=1):
            path = self.folder / f"{job_id:06d}-{i}.png"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(result.png)
            os.replace(tmp, path)  # atomic: a crash never leaves half a PNG under the name
            saved.append(SavedImage(path=str(path), seed=result.seed, infotext=result.infotext))
        return saved

    @staticmethod
    def remove(images: Iterable[SavedImage]) -> None:
        """Delete saved files (a job cancelled while they were written); gone ones are fine."""
        for image in images:
            Path(image.path).unlink(missing_ok=True)
