"""Checkpoints: the registry over `models/` (what can be drawn with) and loading a model offline."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, StableDiffusionPipeline

from engine.config import ConfigError, build
from engine.device import DeviceOptions, apply_memory_profile
from engine.errors import GenerationFailed, InvalidRequest, ModelNotFound, Phrase
from engine.models.hashes import HashCache
from engine.models.weights import check_ckpt
from engine.preview import SD1_PREVIEW, PreviewMap
from engine.prompting.tokenizer import build_tokenizer
from engine.request import RequestDefaults

log = logging.getLogger(__name__)

SD15_CONFIG = Path(__file__).parent.parent / "sd_configs" / "sd15"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

# Loading bars from the libraries would interleave with the bots' logs and the CLI's own bar.
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """A model found under models/ (not loaded)."""

    name: str
    path: Path
    kind: Literal["diffusers", "single_file"]
    defaults: RequestDefaults
    config: Path = SD15_CONFIG
    preview: PreviewMap = SD1_PREVIEW  # latents → RGB for progress previews


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A pipeline ready to draw, with what the infotext needs to name it."""

    entry: ModelEntry
    pipe: StableDiffusionPipeline
    hash: str
    device: torch.device
    dtype: torch.dtype
    scheduler_config: Any
    memory: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def defaults(self) -> RequestDefaults:
        return self.entry.defaults

    @property
    def preview(self) -> PreviewMap:
        return self.entry.preview


@dataclass
class ModelRegistry:
    """Scans `models_dir`: diffusers folders, single-file checkpoints, and VAEs in `VAE/`.

    A model's name is its folder name or file stem. A file `models/<name>.toml` beside a model
    holds its own defaults (`[defaults]` with RequestDefaults' keys) and, for single files of
    another architecture than SD-1.x, `config = "<diffusers folder>"` relative to models/.
    """

    models_dir: Path
    base_defaults: RequestDefaults = field(default_factory=RequestDefaults)
    models: dict[str, ModelEntry] = field(default_factory=dict, init=False)
    vaes: dict[str, Path] = field(default_factory=dict, init=False)
    problems: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.hashes = HashCache(self.models_dir)
        self.scan()

    def scan(self) -> None:
        """Re-read models/ (new files appear, removed ones disappear)."""
        self.models, self.vaes, self.problems = {}, {}, []
        if not self.models_dir.is_dir():
            return
        for path in sorted(self.models_dir.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir() and (path / "model_index.json").is_file():
                self._add(path.name, path, "diffusers")
            elif path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES:
                self._add(path.stem, path, "single_file")
        vae_dir = self.models_dir / "VAE"
        if vae_dir.is_dir():
            for path in sorted(vae_dir.iterdir()):
                if (
                    path.is_file()
                    and path.suffix in SINGLE_FILE_SUFFIXES
                    or (path.is_dir() and (path / "config.json").is_file())
                ):
                    self.vaes[path.stem] = path

    def _add(self, name: str, path: Path, kind: Literal["diffusers", "single_file"]) -> None:
        if name in self.models:
            self.problems.append(f"{path.name}: a model named {name!r} already exists; skipped")
            return
        try:
            defaults, config, preview = self._read_sidecar(name)
        except (InvalidRequest, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            self.problems.append(f"{name}.toml: {e}")
            log.error("skipping model %s: %s", name, e)
            return
        self.models[name] = ModelEntry(
            name=name, path=path, kind=kind, defaults=defaults, config=config, preview=preview
        )

    def _read_sidecar(self, name: str) -> tuple[RequestDefaults, Path, PreviewMap]:
        sidecar = self.models_dir / f"{name}.toml"
        if not sidecar.is_file():
            return self.base_defaults, SD15_CONFIG, SD1_PREVIEW
        data = tomllib.loads(sidecar.read_text(encoding="utf-8"))
        unknown = set(data) - {"defaults", "config", "preview"}
        if unknown:
            raise InvalidRequest(
                f"unknown key {sorted(unknown)[0]!r}; allowed: defaults, config, preview"
            )
        table = data.get("defaults", {})
        if not isinstance(table, dict):
            raise InvalidRequest("defaults must be a table ([defaults])")
        try:
            defaults = build(RequestDefaults, table, "defaults", base=self.base_defaults)
        except ConfigError as e:
            raise InvalidRequest(str(e)) from None
        config = SD15_CONFIG
        if "config" in data:
            config = (self.models_dir / str(data["config"])).resolve()
            if not (config / "model_index.json").is_file():
                raise InvalidRequest(f"config {data['config']!r} is not a diffusers folder")
        preview = SD1_PREVIEW
        if "preview" in data:
            if not isinstance(data["preview"], dict):
                raise InvalidRequest("preview must be a table ([preview])")
            try:
                preview = build(PreviewMap, data["preview"], "preview")
            except ConfigError as e:
                raise InvalidRequest(str(e)) from None
            if not preview.latent_rgb:
                raise InvalidRequest("preview.latent_rgb: needs one [r, g, b] per latent channel")
        return defaults, config, preview

    def get(self, name: str) -> ModelEntry:
        """The entry for a user-given name, or ModelNotFound with close matches."""
        if "/" in name or "\\" in name or ".." in name or name.startswith("."):
            raise InvalidRequest(
                f"Invalid model name {name!r}: use a name from the model list, not a path.",
                field="model",
                key="model_name_is_path",
                name=name,
            )
        entry = self.models.get(name)
        if entry is None:
            lowered = {n.lower(): n for n in self.models}
            if name.lower() in lowered:
                return self.models[lowered[name.lower()]]
            close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.4)
            raise ModelNotFound(
                name, suggestions=[lowered[c] for c in close], installed=list(self.models)
            )
        return entry

    def model_hash(self, entry: ModelEntry) -> str:
        """A1111's model hash: sha256 of the file, first 10 hex (a folder: its UNet weights)."""
        target = self._hash_target(entry)
        return "0000000000" if target is None else self.hashes.sha256(target)[:10]

    def legacy_hash(self, entry: ModelEntry) -> str:
        """A1111's old 8-hex `model_hash` (what NAI-era infotexts name): sha256 of the 64 KiB
        at offset 1 MiB (A1111 v1.9.4 `sd_models.model_hash`)."""
        target = self._hash_target(entry)
        if target is None:
            return "NOFILE"
        with target.open("rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]

    def by_hash(self, model_hash: str) -> ModelEntry | None:
        """The model with this A1111 hash (10 hex, or the old 8), or None. Full hashes come from
        the cache only (`warm_hashes` fills it off the event loop); old ones read 64 KiB."""
        wanted = model_hash.strip().lower()
        if len(wanted) < 8:
            return None
        cache = self.hashes.read()
        for entry in self.models.values():
            target = self._hash_target(entry)
            if target is None:
                continue
            if len(wanted) == 8 and self.legacy_hash(entry) == wanted:
                return entry
            full = self.hashes.cached(target, cache)
            if full is not None and full.startswith(wanted):
                return entry
        return None

    def warm_hashes(self) -> None:
        """Hash every model now (seconds per GB, once: cached by size and mtime)."""
        for entry in self.models.values():
            self.model_hash(entry)

    def _hash_target(self, entry: ModelEntry) -> Path | None:
        if entry.kind != "diffusers":
            return entry.path
        weights = sorted((entry.path / "unet").glob("diffusion_pytorch_model*.safetensors"))
        weights = weights or sorted((entry.path / "unet").glob("diffusion_pytorch_model*"))
        return weights[0] if weights else None

    def load(
        self, name: str, options: DeviceOptions | None = None, *, vae: str | None = None
    ) -> LoadedModel:
        """Load a model offline onto the configured device (call from the torch worker thread)."""
        options = options or DeviceOptions()
        entry = self.get(name)
        device = options.resolve_device()
        dtype = options.resolve_dtype(device)
        if entry.path.suffix == ".ckpt":
            check_ckpt(entry.path)
        common: dict[str, Any] = {
            "dtype": dtype,
            "local_files_only": True,
            "safety_checker": None,
            "requires_safety_checker": False,
        }
        try:
            if entry.kind == "diffusers":
                pipe = StableDiffusionPipeline.from_pretrained(str(entry.path), **common)
            else:
                pipe = StableDiffusionPipeline.from_single_file(
                    str(entry.path), config=str(entry.config), tokenizer=build_tokenizer(), **common
                )
        except Exception as e:  # any reason at all: the file is not a model we can load
            log.debug("cannot load model %s from %s", name, entry.path, exc_info=e)
            problem = load_problem(e, entry.path)
            raise GenerationFailed(
                f"Cannot load model {name!r} ({entry.path.name}): {problem}",
                key="cannot_load_model",
                name=name,
                file=entry.path.name,
                problem=problem,
            ) from e
        if vae is not None:
            pipe.vae = self.load_vae(vae, dtype)
        pipe.set_progress_bar_config(disable=True)
        memory = apply_memory_profile(pipe, options.vram, device)
        log.info("loaded model %s (%s, %s, %s) %s", name, entry.kind, device, dtype, memory)
        return LoadedModel(
            entry=entry,
            pipe=pipe,
            hash=self.model_hash(entry),
            device=device,
            dtype=dtype,
            scheduler_config=pipe.scheduler.config,
            memory=memory,
        )

    def load_vae(self, name: str, dtype: torch.dtype) -> AutoencoderKL:
        """A VAE from models/VAE/ (single file or diffusers folder)."""
        path = self.vaes.get(name)
        if path is None:
            close = difflib.get_close_matches(name, list(self.vaes), n=3)
            raise ModelNotFound(name, kind="VAE", suggestions=close, installed=list(self.vaes))
        if path.is_dir():
            vae: AutoencoderKL = AutoencoderKL.from_pretrained(
                str(path), dtype=dtype, local_files_only=True
            )
            return vae
        if path.suffix == ".ckpt":
            check_ckpt(path)
        vae = AutoencoderKL.from_single_file(
            str(path), config=str(SD15_CONFIG / "vae"), dtype=dtype, local_files_only=True
        )
        return vae


def load_problem(error: BaseException, path: Path) -> Phrase:
    """Why a model would not load, in one short line (the file's name instead of its path)."""
    if path.is_file() and path.stat().st_size == 0:
        return Phrase("the file is empty", "file_empty")
    if path.is_dir() and (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        missing = [
            f"{part}/"
            for part, value in index.items()
            if isinstance(value, list) and value and value[0] and not (path / part).is_dir()
        ]
        if missing:
            return Phrase(f"the folder has no {', '.join(missing)}", "folder_lacks", parts=missing)
    cause: BaseException | None = error
    while cause is not None:  # the safetensors reader's own words are the clearest
        if type(cause).__name__ == "SafetensorError":
            detail = _one_line(cause, path)
            return Phrase(
                f"not a readable .safetensors file ({detail})", "not_safetensors", detail=detail
            )
        cause = cause.__cause__ or cause.__context__
    return Phrase(f"{type(error).__name__}: {_one_line(error, path)}")  # the library's words


def _one_line(error: BaseException, path: Path) -> str:
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    for long in (str(path.resolve()), str(path)):
        line = line.replace(long, path.name)
    return line if len(line) <= 160 else line[:159] + "…"
