"""Checkpoints: the registry over `models/` (what can be drawn with) and loading a model offline."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
import transformers

from engine.device import DeviceOptions, apply_memory_profile, place_vae, resolve_vram
from engine.errors import GenerationFailed, InvalidRequest, ModelNotFound, Phrase
from engine.models.addons import Addons
from engine.models.architecture import (
    Architecture,
    NotAModel,
    UnknownArchitecture,
    checkpoint_architecture,
)
from engine.models.hashes import HashCache
from engine.models.library import AddonLibrary, Kind, is_paired_vae
from engine.models.pipelines import (
    SD15_CONFIG,
    SDXL_CONFIG,
    MissingConfig,
    load_pipeline,
    scheduler_config,
)
from engine.models.sidecar import read_sidecar
from engine.preview import SD1_PREVIEW, PreviewMap
from engine.prompting.networks import networks_of
from engine.prompting.presets import NAI_PRESETS, ModelPresets
from engine.request import GenerationRequest, RequestDefaults
from engine.upscalers import check_hires_upscaler
from engine.weights import check_ckpt

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
OVERRIDES_NAME = ".aidraw-addons.json"  # admins' per-model VAE and hypernetwork choices
AUTOMATIC = ("automatic", "auto")  # a VAE setting that means "the one beside it" (any case)

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
    architecture: Architecture = Architecture()
    presets: ModelPresets = NAI_PRESETS  # its own sizes, quality tags, negative preset
    sidecar_config: bool = False  # `config` comes from the model's sidecar
    unknown: str = ""  # why the architecture could not be read (SD-1.x is tried)

    @property
    def family(self) -> str:
        """The family: SD-1.x, SD-2.x or SDXL."""
        return self.architecture.family


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A pipeline ready to draw, with what the infotext needs to name it."""

    entry: ModelEntry
    pipe: Any  # StableDiffusionPipeline or StableDiffusionXLPipeline
    hash: str
    device: torch.device
    dtype: torch.dtype
    scheduler_config: Any
    addons: Addons
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

    @property
    def architecture(self) -> Architecture:
        return self.entry.architecture


@dataclass
class ModelRegistry:
    """Scans `models_dir`: diffusers folders and single-file checkpoints; `addons` has the
    VAEs, hypernetworks, LoRAs and embeddings.

    A model's name is its folder name or file stem. A file `models/<name>.toml` beside a model
    holds its own defaults (`[defaults]` with RequestDefaults' keys, `vae` and `hypernet`
    included) and, for single files of another architecture than SD-1.x,
    `config = "<diffusers folder>"` relative to models/. Admins' VAE and hypernetwork choices
    (`set_addon_defaults`) are kept in models/.aidraw-addons.json and win over the file.
    """

    models_dir: Path
    base_defaults: RequestDefaults = field(default_factory=RequestDefaults)
    models: dict[str, ModelEntry] = field(default_factory=dict, init=False)
    problems: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.hashes = HashCache(self.models_dir)
        self.addons = AddonLibrary(self.models_dir, self.hashes)
        self._overrides: dict[str, dict[str, str]] = {}
        self.scan()

    # --- add-ons ----------------------------------------------------------------------------

    def _with_addons(self, name: str, path: Path, defaults: RequestDefaults) -> RequestDefaults:
        """A model's VAE and hypernetwork defaults: its file's, then an admin's choice (each
        checked on its own: one that names a missing file is skipped), then "Automatic"
        resolved to a `<checkpoint>.vae.*` beside it, else the checkpoint's own ("None")."""
        for key, value in self._overrides.get(name, {}).items():
            try:
                value = self._check_addon_default(key, value)
            except InvalidRequest as e:
                self.problems.append(f"{OVERRIDES_NAME}: {name}.{key}: {e}")
                log.warning("model %s: ignoring the admin's %s %r: %s", name, key, value, e)
                continue
            if key == "vae":
                defaults = dataclasses.replace(defaults, vae=value)
            else:
                defaults = dataclasses.replace(defaults, hypernet=value)
        if defaults.vae.lower() in AUTOMATIC:
            defaults = dataclasses.replace(defaults, vae=self.addons.vae_near(path) or "None")
        return defaults

    def check_addons(self, request: GenerationRequest) -> GenerationRequest:
        """The add-on files a checked request names are here: its VAE (by A1111's name, or
        "None" for the checkpoint's own) and its prompt's LoRAs and hypernetworks. One missing
        file raises ModelNotFound (close names, what is installed); several, one line with all
        of them (a pasted infotext names what its author had)."""
        vae = request.vae or "Automatic"
        if vae.lower() in AUTOMATIC:
            path = self.models[request.model].path if request.model in self.models else None
            vae = (self.addons.vae_near(path) if path else None) or "None"
        missing: list[ModelNotFound] = []
        wanted: list[tuple[Kind, str]] = [] if vae.lower() == "none" else [("VAE", vae)]
        networks = networks_of(request.prompt)
        wanted += [("LoRA", lora.name) for lora in networks.loras]
        wanted += [("hypernetwork", hn.name) for hn in networks.hypernets]
        for kind, name in wanted:
            try:
                found = self.addons.find(kind, name)
            except ModelNotFound as e:
                missing.append(e)
                continue
            if kind == "VAE":
                vae = found.name
        if request.enable_hr or request.extras_upscale:
            try:
                check_hires_upscaler(request.hr_upscaler, self.addons)
            except ModelNotFound as e:
                missing.append(e)
        if len(missing) == 1:
            raise missing[0]
        if missing:
            names = [f"{e.kind} {e.name}" for e in missing]
            raise InvalidRequest(
                f"These add-ons are not here: {', '.join(names)}. Ask the admin to add them to "
                "models/, or remove them from the prompt.",
                field="prompt",
                key="addons_missing",
                names=names,
            )
        return dataclasses.replace(request, vae="None" if vae.lower() == "none" else vae)

    def _check_addon_default(self, key: str, value: str) -> str:
        """The value as stored: a VAE's or hypernetwork's own name (InvalidRequest if not here)."""
        if key == "vae":
            if value.lower() == "none":
                return "None"
            if value.lower() in AUTOMATIC:
                return "Automatic"
            return self.addons.find("VAE", value).name
        if key == "hypernet":
            if value.lower() in ("", "none"):
                return ""
            name, colon, strength = value.partition(":")
            networks_of(f"<hypernet:{value}>")  # a strength that is a number in range
            return self.addons.find("hypernetwork", name).name + colon + strength
        raise InvalidRequest(f"unknown key {key!r}; allowed: vae, hypernet")

    def _read_overrides(self) -> dict[str, dict[str, str]]:
        file = self.models_dir / OVERRIDES_NAME
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self.problems.append(f"{OVERRIDES_NAME}: {e}")
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            str(model): {str(k): str(v) for k, v in table.items()}
            for model, table in data.items()
            if isinstance(table, dict)
        }

    def set_addon_defaults(self, name: str, **changes: str) -> ModelEntry:
        """An admin's default VAE (`vae`) and/or hypernetwork (`hypernet`, "NAME[:W]" or "")
        for model `name`, kept in models/.aidraw-addons.json; returns the updated entry."""
        entry = self.get(name)
        checked = {key: self._check_addon_default(key, value) for key, value in changes.items()}
        table = {**self._overrides.get(entry.name, {}), **checked}
        self._overrides[entry.name] = table
        file = self.models_dir / OVERRIDES_NAME
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._overrides, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, file)
        try:
            base = read_sidecar(
                self.models_dir, entry.name, entry.path, entry.kind, self.base_defaults
            )[0]
        except (InvalidRequest, tomllib.TOMLDecodeError, UnicodeDecodeError):
            base = entry.defaults
        updated = dataclasses.replace(
            entry, defaults=self._with_addons(entry.name, entry.path, base)
        )
        self.models[entry.name] = updated
        return updated

    def scan(self) -> None:
        """Re-read models/ (new files appear, removed ones disappear)."""
        self.models, self.problems = {}, []
        self.addons.scan()
        self.problems += self.addons.problems
        if not self.models_dir.is_dir():
            return
        self._overrides = self._read_overrides()
        for path in sorted(self.models_dir.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir() and (path / "model_index.json").is_file():
                self._add(path.name, path, "diffusers")
            elif path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES and not is_paired_vae(path):
                self._add(path.stem, path, "single_file")

    def addon_names(self, kind: Kind) -> list[str]:
        """The add-on files of a kind, by the names prompts and settings use."""
        return self.addons.names(kind)

    @property
    def vaes(self) -> list[str]:
        """The VAE names (A1111's: file names) under models/VAE and beside the checkpoints."""
        return self.addons.names("VAE")

    def _add(self, name: str, path: Path, kind: Literal["diffusers", "single_file"]) -> None:
        if name in self.models:
            self.problems.append(f"{path.name}: a model named {name!r} already exists; skipped")
            return
        try:
            defaults, config, preview, architecture, unknown, presets = read_sidecar(
                self.models_dir, name, path, kind, self.base_defaults
            )
        except (InvalidRequest, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            self.problems.append(f"{name}.toml: {e}")
            log.error("skipping model %s: %s", name, e)
            return
        if unknown:
            log.warning("model %s: architecture unknown (%s); trying SD-1.x", name, unknown)
        defaults = self._with_addons(name, path, defaults)
        self.models[name] = ModelEntry(
            name=name,
            path=path,
            kind=kind,
            defaults=defaults,
            config=config or SD15_CONFIG,
            preview=preview,
            architecture=architecture,
            presets=presets,
            sidecar_config=config is not None,
            unknown=unknown,
        )

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

    def load(self, name: str, options: DeviceOptions | None = None) -> LoadedModel:
        """Load a model offline onto the configured device (call from the torch worker thread)."""
        options = options or DeviceOptions()
        entry = self.get(name)
        device = options.resolve_device()
        dtype = options.resolve_dtype(device)
        if entry.path.suffix == ".ckpt":
            check_ckpt(entry.path)
        if entry.unknown and entry.kind == "single_file":
            try:
                checkpoint_architecture(entry.path)
            except NotAModel as e:  # a readable file, but not one we draw with
                problem = Phrase(f"it is {e}" if str(e).startswith("an ") else str(e))
                raise _cannot_load(name, entry.path, problem) from e
            except UnknownArchitecture:  # unreadable: loading says what is wrong with it
                pass
        try:
            pipe = load_pipeline(
                entry.path,
                kind=entry.kind,
                architecture=entry.architecture,
                config=entry.config if entry.sidecar_config else None,
                dtype=dtype,
            )
        except MissingConfig as e:
            raise _cannot_load(name, entry.path, Phrase(str(e))) from e
        except Exception as e:  # any reason at all: the file is not a model we can load
            log.debug("cannot load model %s from %s", name, entry.path, exc_info=e)
            raise _cannot_load(name, entry.path, load_problem(e, entry.path)) from e
        pipe.set_progress_bar_config(disable=True)
        sdxl = entry.architecture.is_sdxl
        vram = resolve_vram(options.vram, device, sdxl)
        memory = apply_memory_profile(pipe, vram, device, tile_vae=sdxl)
        addons = Addons(
            pipe,
            self.addons,
            # A VAE file has the layout of the model's own VAE.
            vae_config=_config_folder(entry) / "vae",
            device=device,
            dtype=dtype,
            place_vae=functools.partial(place_vae, pipe, vram, device, tile_vae=sdxl),
        )
        log.info(
            "loaded model %s (%s, %s, %s, %s) %s",
            name,
            entry.kind,
            entry.architecture,
            device,
            dtype,
            memory,
        )
        return LoadedModel(
            entry=entry,
            pipe=pipe,
            hash=self.model_hash(entry),
            device=device,
            dtype=dtype,
            scheduler_config=scheduler_config(pipe, entry.architecture),
            addons=addons,
            memory=memory,
        )


def _config_folder(entry: ModelEntry) -> Path:
    """Where a model's component configs are: its own folder, its sidecar's, or the shipped."""
    if entry.kind == "diffusers":
        return entry.path
    if entry.sidecar_config:
        return entry.config
    return SDXL_CONFIG if entry.architecture.is_sdxl else SD15_CONFIG


def _cannot_load(name: str, path: Path, problem: Phrase) -> GenerationFailed:
    """The error of a model that would not load: its name, its file and why."""
    return GenerationFailed(
        f"Cannot load model {name!r} ({path.name}): {problem}",
        key="cannot_load_model",
        name=name,
        file=path.name,
        problem=problem,
    )


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
