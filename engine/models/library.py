"""The add-on library: VAEs, hypernetworks, LoRAs and embeddings found under `models/`.

A1111's folders and names: `ESRGAN/` (upscalers, by file stem), `VAE/` (a VAE's name is its
file name with the extension, as A1111 writes `VAE: animevae.pt`; a
`<checkpoint>.vae.pt|.vae.ckpt|.vae.safetensors` beside the checkpoints is one too),
`hypernetworks/`, `Lora/` and `embeddings/` (named by file stem;
a LoRA also by its `ss_output_name` when no file has that name). Subfolders are searched.
Nothing is loaded here; `engine.models.addons` loads and applies.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

from engine.contracts import AddonKind
from engine.errors import ModelNotFound
from engine.models.hashes import HashCache

log = logging.getLogger(__name__)

Kind = AddonKind
FOLDERS: dict[Kind, str] = {
    "VAE": "VAE",
    "hypernetwork": "hypernetworks",
    "LoRA": "Lora",
    "embedding": "embeddings",
    "upscaler": "ESRGAN",
}
SUFFIXES: dict[Kind, tuple[str, ...]] = {
    "VAE": (".pt", ".ckpt", ".safetensors"),
    "hypernetwork": (".pt",),
    "LoRA": (".safetensors", ".pt", ".ckpt"),
    "embedding": (".pt", ".bin", ".safetensors"),
    "upscaler": (".pth", ".pt", ".safetensors"),
}
# A VAE beside the checkpoints (A1111 `sd_vae.refresh_vae_list`); never a model of its own.
PAIRED_VAE_SUFFIXES = (".vae.pt", ".vae.ckpt", ".vae.safetensors")
# How long an add-on's short hash is in `aidraw models` and the infotext (A1111's lengths).
SHORT_HASH: dict[Kind, int] = {
    "VAE": 10,
    "hypernetwork": 10,
    "LoRA": 12,
    "embedding": 12,
    "upscaler": 10,
}


def is_paired_vae(path: Path) -> bool:
    """`<checkpoint>.vae.safetensors` and the like: a VAE, not a model."""
    return path.name.lower().endswith(PAIRED_VAE_SUFFIXES)


@dataclass(frozen=True)
class AddonFile:
    """One add-on file (or a diffusers VAE folder) and the name prompts and settings use."""

    kind: Kind
    name: str
    path: Path


class AddonLibrary:
    """What add-on files exist under `models_dir` (rescanned by `scan`)."""

    def __init__(self, models_dir: Path, hashes: HashCache) -> None:
        self.models_dir = models_dir
        self.hashes = hashes
        self.files: dict[Kind, dict[str, AddonFile]] = {kind: {} for kind in FOLDERS}
        self.lora_aliases: dict[str, str] = {}
        self.problems: list[str] = []

    def scan(self) -> None:
        """Re-read the add-on folders (each file on its own: one bad file skips only itself)."""
        self.files = {kind: {} for kind in FOLDERS}
        self.lora_aliases, self.problems = {}, []
        if self.models_dir.is_dir():
            for path in sorted(self.models_dir.iterdir()):
                if path.is_file() and is_paired_vae(path):
                    self._add("VAE", path.name, path)
        for kind, folder in FOLDERS.items():
            root = self.models_dir / folder
            if not root.is_dir():
                continue
            folders: list[Path] = []  # diffusers VAE folders: their files are not VAEs
            for path in sorted(root.rglob("*")):
                parts = path.relative_to(root).parts
                if any(part.startswith(".") for part in parts) or any(
                    folder in path.parents for folder in folders
                ):
                    continue
                if kind == "VAE" and path.is_dir() and (path / "config.json").is_file():
                    folders.append(path)
                    self._add(kind, path.name, path)
                elif path.is_file() and path.suffix.lower() in SUFFIXES[kind]:
                    self._add(kind, path.name if kind == "VAE" else path.stem, path)
        self._read_lora_aliases()

    def _add(self, kind: Kind, name: str, path: Path) -> None:
        if name in self.files[kind]:
            self.problems.append(f"{path}: another {kind} is named {name!r}; skipped")
            return
        self.files[kind][name] = AddonFile(kind, name, path)

    def _read_lora_aliases(self) -> None:
        from engine.models.lora import lora_alias  # torch: only when there are LoRAs

        if not self.files["LoRA"]:
            return
        seen: dict[str, list[str]] = {}
        for name, file in self.files["LoRA"].items():
            try:
                alias = lora_alias(file.path)
            except Exception as e:  # a broken header: the file is refused when used
                log.debug("cannot read the alias of %s: %s", file.path, e)
                continue
            if alias and alias != name:
                seen.setdefault(alias, []).append(name)
        # A1111: an alias works when no file has that name and only one file claims it.
        self.lora_aliases = {
            alias: names[0]
            for alias, names in seen.items()
            if len(names) == 1 and alias not in self.files["LoRA"]
        }

    def names(self, kind: Kind) -> list[str]:
        return list(self.files[kind])

    def find(self, kind: Kind, name: str) -> AddonFile:
        """The file a prompt or setting names: exactly, then (VAE) by stem, (LoRA) by alias,
        then case-insensitively if that is unambiguous; else ModelNotFound with close names."""
        files = self.files[kind]
        if name in files:
            return files[name]
        if kind == "LoRA" and name in self.lora_aliases:
            return files[self.lora_aliases[name]]
        candidates = [f for f in files.values() if _matches(kind, f, name)]
        if len(candidates) == 1:
            return candidates[0]
        lowered = {n.lower(): n for n in files}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
        raise ModelNotFound(
            name, kind=kind, suggestions=[lowered[c] for c in close], installed=list(files)
        )

    def vae_near(self, checkpoint: Path) -> str | None:
        """A1111 `find_vae_near_checkpoint`: the first VAE whose file name starts with the
        checkpoint's name (without its extension), e.g. `nai.vae.pt` for `nai.safetensors`."""
        stem = checkpoint.name.rsplit(".", 1)[0] if checkpoint.is_file() else checkpoint.name
        for file in self.files["VAE"].values():
            if file.path.name.startswith(stem):
                return file.name
        return None

    def short_hash(self, file: AddonFile) -> str:
        """A1111's short hash: sha256 of the file (a LoRA .safetensors: after its header, the
        "addnet" hash A1111 writes in `Lora hashes`); a VAE folder: its weights file."""
        path = file.path
        if path.is_dir():
            weights = sorted(path.glob("diffusion_pytorch_model*"))
            if not weights:
                return "0" * SHORT_HASH[file.kind]
            path = weights[0]
        addnet = file.kind == "LoRA" and path.suffix.lower() == ".safetensors"
        return self.hashes.sha256(path, addnet=addnet)[: SHORT_HASH[file.kind]]


def _matches(kind: Kind, file: AddonFile, name: str) -> bool:
    wanted = name.lower()
    names = {file.name.lower()}
    if kind == "VAE":
        names.add(file.path.stem.lower())
        names.add(file.name.lower().removesuffix(".vae" + file.path.suffix.lower()))
    return wanted in names
