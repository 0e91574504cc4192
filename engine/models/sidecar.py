"""A model's sidecar, `models/<name>.toml`, over what its file or folder says: its defaults
(the architecture's, then the file's), config folder, preview map, and what the checkpoint
does not say about its noise schedule (`prediction_type`, `zero_terminal_snr`)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from engine.config import ConfigError, build
from engine.errors import InvalidRequest
from engine.models.architecture import (
    PREDICTIONS,
    SDXL_SIZES,
    Architecture,
    UnknownArchitecture,
    architecture_defaults,
    checkpoint_architecture,
    from_folder,
)
from engine.preview import SD1_PREVIEW, SDXL_PREVIEW, PreviewMap
from engine.prompting.presets import NAI_SIZES, ModelPresets
from engine.request import RequestDefaults

SIDECAR_KEYS = (
    "defaults",
    "config",
    "preview",
    "sizes",
    "prompt",
    "prediction_type",
    "zero_terminal_snr",
)


def read_sidecar(
    models_dir: Path, name: str, path: Path, kind: str, base_defaults: RequestDefaults
) -> tuple[RequestDefaults, Path | None, PreviewMap, Architecture, str, ModelPresets]:
    """A model's sidecar (`models/<name>.toml`) over its detected architecture: defaults
    (the architecture's, then the file's), config folder, preview map, architecture, and
    why the architecture is unknown ("" when known), its presets (sizes, prompt presets)."""
    sidecar = models_dir / f"{name}.toml"
    data = tomllib.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    unknown_keys = set(data) - set(SIDECAR_KEYS)
    if unknown_keys:
        raise InvalidRequest(
            f"unknown key {sorted(unknown_keys)[0]!r}; allowed: {', '.join(SIDECAR_KEYS)}"
        )
    config = None
    if "config" in data:
        config = (models_dir / str(data["config"])).resolve()
        if not (config / "model_index.json").is_file():
            raise InvalidRequest(f"config {data['config']!r} is not a diffusers folder")
    architecture, unknown = _architecture(path, kind, config, data)
    table = data.get("defaults", {})
    if not isinstance(table, dict):
        raise InvalidRequest("defaults must be a table ([defaults])")
    try:
        base = architecture_defaults(base_defaults, architecture)
        defaults = build(RequestDefaults, table, "defaults", base=base)
    except ConfigError as e:
        raise InvalidRequest(str(e)) from None
    preview = SDXL_PREVIEW if architecture.is_sdxl else SD1_PREVIEW
    if "preview" in data:
        if not isinstance(data["preview"], dict):
            raise InvalidRequest("preview must be a table ([preview])")
        try:
            preview = build(PreviewMap, data["preview"], "preview")
        except ConfigError as e:
            raise InvalidRequest(str(e)) from None
        if not preview.latent_rgb:
            raise InvalidRequest("preview.latent_rgb: needs one [r, g, b] per latent channel")
    sizes = dict(SDXL_SIZES) if architecture.is_sdxl else {}
    sizes.update(_sizes(data.get("sizes", {})))
    prompt = data.get("prompt", {})
    if not isinstance(prompt, dict):
        raise InvalidRequest("prompt must be a table ([prompt])")
    extra = set(prompt) - {"quality_tags", "negative"}
    if extra:
        raise InvalidRequest(
            f"prompt.{sorted(extra)[0]}: unknown key; allowed: quality_tags, negative"
        )
    texts = {key: prompt.get(key) for key in ("quality_tags", "negative")}
    for key, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"prompt.{key} must be a string")
    presets = ModelPresets(sizes, texts["quality_tags"], texts["negative"])
    return defaults, config, preview, architecture, unknown, presets


def _sizes(table: object) -> dict[str, tuple[int, int]]:
    """A sidecar's `[sizes]`: NAI size names → [width, height] of this model."""
    if not isinstance(table, dict):
        raise InvalidRequest("sizes must be a table ([sizes])")
    sizes = {}
    for name, value in table.items():
        if name not in NAI_SIZES:
            raise InvalidRequest(f"sizes.{name}: not a size name; use {', '.join(NAI_SIZES)}")
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise InvalidRequest(f"sizes.{name} must be [width, height]")
        sizes[name] = (value[0], value[1])
    return sizes


def _architecture(
    path: Path, kind: str, config: Path | None, data: dict[str, Any]
) -> tuple[Architecture, str]:
    """The detected architecture (file keys or folder; a sidecar config's scheduler can
    say v-prediction too), then the sidecar's `prediction_type` and `zero_terminal_snr`."""
    unknown = ""
    try:
        if kind == "diffusers":
            architecture = from_folder(path)
        else:
            architecture = checkpoint_architecture(path)
            if config is not None:
                told = from_folder(config)
                architecture = dataclasses.replace(
                    architecture,
                    prediction=(
                        "v_prediction"
                        if "v_prediction" in (told.prediction, architecture.prediction)
                        else "epsilon"
                    ),
                    zero_snr=architecture.zero_snr or told.zero_snr,
                )
    except UnknownArchitecture as e:
        architecture, unknown = Architecture(), str(e)
    prediction = data.get("prediction_type", architecture.prediction)
    if prediction not in PREDICTIONS:
        raise InvalidRequest(
            f"prediction_type {prediction!r}: use {' or '.join(map(repr, PREDICTIONS))}"
        )
    zero_snr = data.get("zero_terminal_snr", architecture.zero_snr)
    if not isinstance(zero_snr, bool):
        raise InvalidRequest("zero_terminal_snr must be true or false")
    return dataclasses.replace(architecture, prediction=prediction, zero_snr=zero_snr), unknown
