"""Addons: the VAE, LoRAs, hypernetworks and embeddings applied to one loaded pipeline.

`use(request)` makes the pipeline draw as the request asks (torch thread, before a batch): its
VAE (the checkpoint's own when "None"), its prompt's LoRAs merged into the weights (exactly
undone when the next batch wants another set) and its hypernetworks in every attention layer.
Embeddings are all the files in models/embeddings, found by name in any prompt. Loaded files
are kept while unchanged on disk, a few at a time.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from engine.errors import BadAddonFile
from engine.models.embeddings import Embedding, EmbeddingDB
from engine.models.hypernetworks import Hypernetwork, HypernetworkHook, check_fits
from engine.models.library import AddonFile, AddonLibrary
from engine.models.lora import Lora, LoraPatcher
from engine.models.vae import load_vae
from engine.prompting.networks import networks_of
from engine.request import GenerationRequest
from engine.upscalers import UpscalerCache

log = logging.getLogger(__name__)

T = TypeVar("T")
KEEP_FILES = 8  # loaded LoRA/hypernetwork files kept for the next batches
KEEP_VAES = 2  # loaded VAE files kept besides the checkpoint's own


@dataclass(frozen=True)
class InUse:
    """What a batch is drawn with, for its infotext: the VAE file as (name, short hash), or
    None for the checkpoint's own; `lora_hashes` in A1111's "name: hash, …" form."""

    vae: tuple[str, str] | None
    lora_hashes: str | None


class Addons:
    """The add-on state of one pipeline (all calls on the engine's torch thread)."""

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        library: AddonLibrary,
        *,
        vae_config: Path,
        device: torch.device,
        dtype: torch.dtype,
        place_vae: Callable[[], None],
    ) -> None:
        self._pipe = pipe
        self._library = library
        self._vae_config = vae_config
        self._device = device
        self._dtype = dtype
        self._place_vae = place_vae  # gives pipe.vae, just replaced, the memory profile
        self._own_vae: AutoencoderKL = pipe.vae
        self._vaes: OrderedDict[tuple[Path, int], AutoencoderKL] = OrderedDict()
        self._files: OrderedDict[tuple[Path, int], Any] = OrderedDict()
        self._loras = LoraPatcher(
            pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)
        )
        self._hypernets = HypernetworkHook(pipe.unet)
        self._embeddings: EmbeddingDB | None = None
        self._embeddings_key: tuple[tuple[str, int], ...] | None = None
        self._upscalers = UpscalerCache()
        self.problems: list[str] = []  # embeddings that were skipped, for `aidraw models`
        # Files read from disk (not from the cache), by kind, for the metrics; every kind is
        # there from the start, so another thread may copy it while it counts.
        self.loads: Counter[str] = Counter({"LoRA": 0, "hypernetwork": 0, "VAE": 0})

    @property
    def upscalers(self) -> UpscalerCache:
        """Upscaler networks loaded for hires fix, kept for the next batches."""
        return self._upscalers

    @property
    def library(self) -> AddonLibrary:
        """The add-on files this pipeline may use (hires fix finds its upscaler files here)."""
        return self._library

    # --- per batch ----------------------------------------------------------------------------

    def use(self, request: GenerationRequest) -> InUse:
        """Apply the request's VAE, LoRAs and hypernetworks (all of a batch share them).

        Every file is loaded and checked before anything changes: a bad one raises its
        BadAddonFile (one line) and the pipeline stays as it was."""
        networks = networks_of(request.prompt)
        lora_files = [(self._library.find("LoRA", use.name), use) for use in networks.loras]
        loras = [(self._load(file, Lora.load, "LoRA"), use) for file, use in lora_files]
        hypernets = [
            (
                self._load(
                    self._library.find("hypernetwork", use.name),
                    self._load_hypernet,
                    "hypernetwork",
                ),
                use,
            )
            for use in networks.hypernets
        ]
        vae_file = self._vae_file(request.vae)
        vae = self._load_vae(vae_file) if vae_file is not None else self._own_vae
        self._loras.use([(lora, use.te, use.unet) for lora, use in loras])
        self._hypernets.use([(hn, use.strength) for hn, use in hypernets])
        if vae is not self._pipe.vae:
            self._pipe.vae = vae
            self._place_vae()
        lora_hashes = ", ".join(
            f"{_clean(use.name)}: {self._library.short_hash(file)}" for file, use in lora_files
        )
        return InUse(
            vae=(vae_file.name, self._library.short_hash(vae_file)) if vae_file else None,
            lora_hashes=lora_hashes or None,
        )

    def embeddings(self) -> EmbeddingDB:
        """The embeddings in models/embeddings, reloaded when the folder's files change; a file
        that cannot be used (or is for another text encoder) is skipped and logged: its name
        stays plain words, as in A1111."""
        files = self._library.files["embedding"]
        key = tuple((str(f.path), f.path.stat().st_mtime_ns) for f in files.values())
        if self._embeddings is None or key != self._embeddings_key:
            loaded, problems = [], []
            for file in files.values():
                try:
                    loaded.append(Embedding.load(file.path, file.name))
                except BadAddonFile as e:
                    problems.append(str(e))
            width = clip_l = int(self._pipe.text_encoder.config.hidden_size)
            second = getattr(self._pipe, "text_encoder_2", None)  # SDXL: both encoders' vectors
            if second is not None:
                width += int(second.config.hidden_size)
            db = EmbeddingDB(loaded, self._pipe.tokenizer, width, clip_l if second else 0)
            self.problems = problems + [str(e) for e in db.skipped.values()]
            for problem in self.problems:
                log.warning("skipping an embedding: %s", problem)
            self._embeddings, self._embeddings_key = db, key
        return self._embeddings

    def ti_hashes(self, names: list[str]) -> str | None:
        """A1111's `TI hashes` value for the embeddings used, in the order given."""
        files = self._library.files["embedding"]
        parts = [
            f"{_clean(name)}: {self._library.short_hash(files[name])}"
            for name in names
            if name in files
        ]
        return ", ".join(parts) or None

    # --- loading ------------------------------------------------------------------------------

    def _vae_file(self, name: str | None) -> AddonFile | None:
        if name is None or name.lower() in ("none", "automatic", "auto"):
            return None
        return self._library.find("VAE", name)

    def _load_vae(self, file: AddonFile) -> AutoencoderKL:
        key = (file.path, file.path.stat().st_mtime_ns)
        if key not in self._vaes:
            vae = load_vae(file.path, config=self._vae_config, dtype=self._dtype)
            self.loads["VAE"] += 1
            self._vaes[key] = vae
            while len(self._vaes) > KEEP_VAES:
                old_key, old = self._vaes.popitem(last=False)
                if old is self._pipe.vae:  # still drawing with it: keep it one more turn
                    self._vaes[old_key] = old
                    break
        self._vaes.move_to_end(key)
        return self._vaes[key]

    def _load_hypernet(self, path: Path, name: str) -> Hypernetwork:
        hypernet = Hypernetwork.load(path, name).to(self._device, self._dtype)
        check_fits(hypernet, self._pipe.unet)
        return hypernet

    def _load(self, file: AddonFile, load: Callable[[Path, str], T], kind: str) -> T:
        key = (file.path, file.path.stat().st_mtime_ns)
        if key not in self._files:
            self._files[key] = load(file.path, file.name)
            self.loads[kind] += 1
            while len(self._files) > KEEP_FILES:
                self._files.popitem(last=False)
        self._files.move_to_end(key)
        loaded: T = self._files[key]
        return loaded


def _clean(name: str) -> str:
    """A1111 strips `:` and `,` from names in its hash lists (they would break the list)."""
    return name.replace(":", "").replace(",", "")
