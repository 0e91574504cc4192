"""Textual-inversion embeddings (A1111 `modules/textual_inversion`): files, and the lookup a
prompt's tokens are matched against.

An embedding is a few learnt token vectors; writing its trigger (the file's stem, whatever name
the file holds inside) in a prompt puts those vectors where the trigger's tokens would go.
Files as A1111 reads them: `.pt`/`.bin` with `string_to_param` (one term: an (n, D) tensor,
Parameter or the original LDM code's ParameterDict) or a diffusers concept `{token: tensor}`,
and `.safetensors` with one tensor (`emb_params`). Pickles are read with
`torch.load(weights_only=True)` only, so a file with code in it is refused, never run.
SDXL embeddings hold a `clip_l` and a `clip_g` tensor (one per text encoder); their vectors are
kept side by side, CLIP-L's first (`clip_l_width` columns), as A1111's SDXL expected width is
both encoders' together. Embeddings hidden in PNG previews are not read.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from engine.errors import BadAddonFile
from engine.prompting.chunks import (
    CHUNK_LENGTH,
    EmbeddingIndex,
    EmbeddingRef,
    Tokenizer,
    trigger_ids,
)
from engine.weights import read_weights

log = logging.getLogger(__name__)

EXTENSIONS = (".pt", ".bin", ".safetensors")


class _Refused(Exception):
    """Why a file's contents are not an embedding (one line, for BadAddonFile)."""


@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding file: `name` is its trigger (the file stem), `vectors` (n, D) float32 on the
    CPU, 1 ≤ n ≤ 75."""

    name: str
    path: Path
    vectors: torch.Tensor
    clip_l_width: int = 0  # SDXL: how many columns are CLIP-L's (the rest are bigG's); else 0

    @property
    def width(self) -> int:
        """D, which must be the text encoder's width (768 for SD 1.x)."""
        return int(self.vectors.shape[1])

    @property
    def count(self) -> int:
        """How many token slots the embedding fills in a prompt."""
        return int(self.vectors.shape[0])

    @classmethod
    def load(cls, path: Path, name: str) -> Embedding:
        """Read an embedding file, or raise BadAddonFile("embedding", file name, why)."""
        try:
            vectors, clip_l_width = _read_vectors(path)
        except _Refused as e:
            raise BadAddonFile("embedding", path.name, str(e)) from None
        return cls(name=name, path=path, vectors=vectors, clip_l_width=clip_l_width)


def _read_vectors(path: Path) -> tuple[torch.Tensor, int]:
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise _Refused("only .pt, .bin and .safetensors embeddings can be read")
    try:
        size = path.stat().st_size
    except OSError as e:
        log.warning("embedding %s: %s", path, e)
        raise _Refused("the file cannot be read") from e
    if size == 0:
        raise _Refused("the file is empty")
    data = _read_safetensors(path) if suffix == ".safetensors" else _read_pickle(path)
    vectors, clip_l_width = _vectors_of(data)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        shape = "×".join(str(n) for n in vectors.shape) or "a single number"
        raise _Refused(f"its tensor is {shape}, not (vectors × width)")
    if not 1 <= vectors.shape[0] <= CHUNK_LENGTH:
        raise _Refused(
            f"it has {vectors.shape[0]} vectors; a prompt chunk holds 1 to {CHUNK_LENGTH}"
        )
    # A copy: never a view into a memory-mapped file.
    return vectors.detach().to("cpu", torch.float32, copy=True).contiguous(), clip_l_width


def _read_pickle(path: Path) -> Any:
    """torch.load(weights_only=True); the original LDM code's ParameterDict is allowed too (its
    unpickling only sets attributes)."""
    # mmap: a model misplaced among the embeddings is not read into memory.
    return read_weights(
        path, "embedding", allow=[torch.nn.ParameterDict], mmap=zipfile.is_zipfile(path)
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors, after checking there is one (or SDXL's pair) without reading them."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        if len(keys) == 1 or sorted(keys) == ["clip_g", "clip_l"]:
            return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        log.warning("embedding %s unreadable: %s", path, e)
        raise _Refused("the file is damaged or not a safetensors file") from e
    raise _Refused(f"it holds {len(keys)} tensors; an embedding file holds one")


def _vectors_of(data: Any) -> tuple[torch.Tensor, int]:
    """A1111's `create_embedding_from_data`: the one term's tensor, 1-D diffusers vectors as
    one vector, SDXL's pair side by side; and how many columns are CLIP-L's (SDXL) or 0."""
    if isinstance(data, Mapping) and "string_to_param" in data:
        terms = data["string_to_param"]
        terms = getattr(terms, "_parameters", terms)  # a ParameterDict
        if not isinstance(terms, Mapping) or not terms:
            raise _Refused("its string_to_param holds no tensor")
        if len(terms) != 1:
            raise _Refused(f"it holds {len(terms)} terms; an embedding file holds one")
        vectors = next(iter(terms.values()))
        if not isinstance(vectors, torch.Tensor):
            raise _Refused("its string_to_param holds no tensor")
        return vectors, 0
    # A1111 tests these with type(...) ==, so subclasses are not concepts.
    if type(data) is dict and "clip_g" in data and "clip_l" in data:
        clip_l, clip_g = data["clip_l"], data["clip_g"]
        if not (clip_l.ndim == clip_g.ndim == 2 and clip_l.shape[0] == clip_g.shape[0]):
            raise _Refused("its clip_l and clip_g are not (vectors × width) of one count")
        return torch.cat([clip_l.float(), clip_g.float()], dim=1), int(clip_l.shape[1])
    if type(data) is dict and data and type(next(iter(data.values()))) is torch.Tensor:
        if len(data) != 1:
            raise _Refused(f"it holds {len(data)} terms; an embedding file holds one")
        concept: torch.Tensor = next(iter(data.values()))
        return (concept.unsqueeze(0) if concept.ndim == 1 else concept), 0
    raise _Refused("it holds no embedding (neither string_to_param nor one tensor)")


class EmbeddingDB:
    """The embeddings a prompt may use, looked up by token ids (A1111's ids_lookup).

    Given in registration order (a later one with the same name replaces the earlier one). One
    whose width is not the text encoder's, or whose name gives no CLIP tokens, is skipped as
    A1111 skips it (its trigger stays plain words); `skipped` says why, by name, so a caller
    can tell a user whose prompt names one.
    """

    def __init__(
        self,
        embeddings: Iterable[Embedding],
        tokenizer: Tokenizer,
        width: int,
        clip_l_width: int = 0,
    ) -> None:
        self.width = width
        self.clip_l_width = clip_l_width  # SDXL models: CLIP-L's width; else 0
        self.skipped: dict[str, BadAddonFile] = {}
        fitting: dict[str, Embedding] = {}
        for embedding in embeddings:
            problem = _misfit(embedding, width, clip_l_width)
            if problem:
                # A1111 skips it without unregistering an earlier one of the same name.
                self.skipped[embedding.name] = BadAddonFile(
                    "embedding", embedding.path.name, problem
                )
                continue
            # Replacing moves the name to the end, as A1111's re-registration does.
            fitting.pop(embedding.name, None)
            fitting[embedding.name] = embedding
        for name in fitting:
            self.skipped.pop(name, None)
        names = list(fitting)
        self.embeddings: dict[str, Embedding] = {}
        refs = []
        for name, ids in zip(names, trigger_ids(tokenizer, names), strict=True):
            embedding = fitting[name]
            if not ids:
                self.skipped[name] = BadAddonFile(
                    "embedding", embedding.path.name, "its name gives no words to trigger it"
                )
                continue
            self.embeddings[name] = embedding
            refs.append(EmbeddingRef(name, ids, embedding.count))
        self._index = EmbeddingIndex(refs)

    def find_at(self, tokens: Sequence[int], position: int) -> EmbeddingRef | None:
        """The embedding whose trigger starts at `tokens[position]`, the longest one first."""
        return self._index.find_at(tokens, position)

    def vectors(self, name: str) -> torch.Tensor:
        """(n, D) float32 vectors of a registered embedding."""
        return self.embeddings[name].vectors

    def __contains__(self, name: object) -> bool:
        return name in self.embeddings

    def __len__(self) -> int:
        return len(self.embeddings)


def _misfit(embedding: Embedding, width: int, clip_l_width: int = 0) -> str | None:
    """Why an embedding cannot be used with a text encoder `width` wide (SDXL: both encoders,
    CLIP-L's `clip_l_width` first) (None: it can)."""
    if embedding.clip_l_width != clip_l_width:
        if embedding.clip_l_width:
            return "it is an SDXL embedding (clip_l and clip_g), for SDXL models only"
        return "it is for a single text encoder; SDXL models need clip_l and clip_g vectors"
    if embedding.vectors.ndim != 2:
        return "its vectors are not a (count × width) matrix"
    if not 1 <= embedding.count <= CHUNK_LENGTH:
        return f"it has {embedding.count} vectors; a prompt chunk holds 1 to {CHUNK_LENGTH}"
    if embedding.width != width:
        return f"its vectors are {embedding.width} wide and this model's text encoder takes {width}"
    return None
