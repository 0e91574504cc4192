"""Hashes of model files (A1111's): whole-file sha256 and kohya's "addnet" hash, cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

CACHE_NAME = ".aidraw-hashes.json"


class HashCache:
    """sha256 of files under `models_dir`, cached in models/.aidraw-hashes.json by size and mtime.

    `addnet=True` hashes a .safetensors file after its header (kohya's "addnet" hash, which
    A1111 writes in `Lora hashes`); both kinds share the cache under different keys.
    """

    def __init__(self, models_dir: Path) -> None:
        self.file = models_dir / CACHE_NAME
        # Hashes known in this process, by (cache key, size, mtime): the drawing path asks for
        # add-ons' hashes every batch (the infotext), without reading the JSON file each time.
        self._known: dict[tuple[str, int, int], str] = {}

    def read(self) -> dict[str, Any]:
        """The whole cache (empty when missing or unreadable)."""
        try:
            cache: dict[str, Any] = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return cache if isinstance(cache, dict) else {}

    def cached(self, path: Path, cache: dict[str, Any], *, addnet: bool = False) -> str | None:
        """The cached hash of `path` if the file has not changed since, else None."""
        hit = cache.get(_key(path, addnet))
        stat = path.stat()
        if (
            isinstance(hit, dict)
            and hit.get("size") == stat.st_size
            and hit.get("mtime_ns") == stat.st_mtime_ns
        ):
            return str(hit["sha256"])
        return None

    def sha256(self, path: Path, *, addnet: bool = False) -> str:
        """The full hex digest (computed once per file version, seconds per GB)."""
        stat = path.stat()
        known = (_key(path, addnet), stat.st_size, stat.st_mtime_ns)
        if known in self._known:
            return self._known[known]
        cache = self.read()
        found = self.cached(path, cache, addnet=addnet)
        if found is not None:
            self._known[known] = found
            return found
        with path.open("rb") as f:
            digest = _addnet_sha256(f) if addnet else _sha256(f)
        cache[_key(path, addnet)] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": digest,
        }
        tmp = self.file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
            os.replace(tmp, self.file)  # atomic: a crash never leaves a torn cache
        except OSError as e:
            log.warning("cannot write the hash cache %s: %s", self.file, e)
        self._known[known] = digest
        return digest


def _key(path: Path, addnet: bool) -> str:
    key = str(path.resolve())
    return f"addnet:{key}" if addnet else key


def _sha256(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _addnet_sha256(f: BinaryIO) -> str:
    """A1111 `hashes.addnet_hash_safetensors`: sha256 of everything after the header."""
    header_size = int.from_bytes(f.read(8), "little")
    f.seek(header_size + 8)
    return _sha256(f)
