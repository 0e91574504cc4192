"""The CLIP ViT-L/14 BPE tokenizer, built offline from the vocabulary open-clip-torch ships."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


def find_bpe_file() -> Path:
    """Locate open_clip's BPE file without importing open_clip (that would pull torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the CLIP vocabulary is missing: "
            "install it with `pip install --no-deps open-clip-torch`"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _VOCAB_FILE
        if path.is_file():
            return path
    raise RuntimeError(f"open-clip-torch is installed but has no {_VOCAB_FILE}")


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte→unicode table, in CLIP's order (openai/CLIP simple_tokenizer.py)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = dict.fromkeys(printable, 0)
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    for b in printable:
        table[b] = b
    ordered = printable + [b for b in range(256) if b not in printable]
    return [chr(table[b]) for b in ordered]


def read_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, in CLIP's id order (openai/CLIP simple_tokenizer.py)."""
    lines = gzip.decompress(find_bpe_file().read_bytes()).decode("utf-8").split("\n")
    # The first line is a version header; CLIP uses exactly 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    pairs = [(a, b) for a, b in merges]
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in pairs]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {tok: i for i, tok in enumerate(tokens)}, pairs


@functools.cache
def _cached_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return read_vocab()


def build_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A fresh CLIPTokenizer with CLIP's 49,408 tokens and a 77-token context (BOS + 75 + EOS).

    `pad_token`: CLIP ViT-L pads with its end token; OpenCLIP (SD-2's ViT-H, SDXL's bigG) pads
    with "!", id 0 (A1111's `id_pad = 0`, diffusers' `tokenizer_2`).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _cached_vocab()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=MODEL_MAX_LENGTH,
        pad_token=pad_token,
    )


OPEN_CLIP_PAD = "!"  # OpenCLIP's padding token (id 0)


def save_tokenizer(folder: Path) -> None:
    """Write the tokenizer in diffusers' `tokenizer/` layout."""
    build_tokenizer().save_pretrained(str(folder))


class ClipBpe:
    """CLIP's tokenizer on the `tokenizers` library alone, set up as transformers' CLIPTokenizer
    sets it up (transformers 5 `models/clip/tokenization_clip.py`: NFC, whitespace, lowercase;
    CLIP's split pattern; byte-level BPE with `</w>`), for what only tokenizes (`aidraw draw
    --explain`): importing transformers alone costs about a second of CPU. The pipelines use
    `build_tokenizer()`; tests/prompting/test_tokenizer.py checks both give the same ids."""

    def __init__(self) -> None:
        from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        vocab, merges = _cached_vocab()
        end = "<|endoftext|>"
        bpe = BPE(
            vocab=dict(vocab),
            merges=list(merges),
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=end,
        )
        self._tokenizer = Tokenizer(bpe)
        self._tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        split = (
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
            r"|[^\s\p{L}\p{N}]+"
        )
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        self.bos_token_id = vocab["<|startoftext|>"]
        self.eos_token_id = self.pad_token_id = self.unk_token_id = vocab[end]

    def __call__(
        self, texts: Sequence[str], *, truncation: bool, add_special_tokens: bool, verbose: bool
    ) -> dict[str, list[list[int]]]:
        """Token ids of each text, as CLIPTokenizer's `__call__` gives them (no specials)."""
        assert not truncation and not add_special_tokens
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return {"input_ids": [encoding.ids for encoding in encoded]}

    def convert_tokens_to_ids(self, token: str) -> int:
        found = self._tokenizer.token_to_id(token)
        return self.unk_token_id if found is None else found

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tokenizer.id_to_token(i) or "" for i in ids]
