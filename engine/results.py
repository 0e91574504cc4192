"""Result files: finished jobs' PNGs on disk, named by job id and written atomically.

Named `<job id>-<n>.png`, so a job drawn again after a crash overwrites its own files instead of
leaving a second set.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from engine.errors import NOTHING, GenerationFailed, Phrase
from engine.journal import SavedImage
from engine.request import GenerationResult

log = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ResultFiles:
    """The `results_dir` folder (created on the first save)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, job_id: int, results: list[GenerationResult]) -> list[SavedImage]:
        """Write one PNG per result; returns where each went, for the journal.

        Raises GenerationFailed (user-safe; the OSError is logged and chained) when a file
        cannot be written, e.g. on a full disk; the job's files are removed then.
        """
        saved = []
        paths = [self.folder / f"{job_id:06d}-{i}.png" for i in range(1, len(results) + 1)]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for path, result in zip(paths, results, strict=True):
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(result.png)
                os.replace(tmp, path)  # atomic: a crash never leaves half a PNG under the name
                saved.append(SavedImage(path=str(path), seed=result.seed, infotext=result.infotext))
        except OSError as e:
            log.error("job %d: cannot save its images in %s: %s", job_id, self.folder, e)
            # The job fails, so none of its files is wanted (a half-written .tmp, the images
            # written before this one, or an earlier try's): they would only hold the space.
            self._unlink([*paths, *(path.with_suffix(".tmp") for path in paths)])
            full = Phrase(": the disk is full", "disk_full") if e.errno in DISK_FULL else NOTHING
            raise GenerationFailed(
                f"Could not save the picture{full}; the admin has been told in the log.",
                key="cannot_save",
                full=full,
            ) from e
        return saved

    def remove(self, images: Iterable[SavedImage]) -> None:
        """Delete saved files (a job cancelled while they were written); gone ones are fine."""
        self._unlink(Path(image.path) for image in images)

    @staticmethod
    def _unlink(paths: Iterable[Path]) -> None:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                # Only space is lost (the journal does not point at the file); the job goes on.
                log.warning("cannot delete %s: %s", path, e)
