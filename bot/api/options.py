"""A1111's settings as the API shows them (`GET/POST /sdapi/v1/options`): the checkpoint and
VAE are the engine's (an admin's POST swaps them); the rest are the API's own defaults for
clip skip, ENSD and the noise source (A1111's: 1, 0, "GPU"), kept in a JSON file beside the
journal so that a restart keeps what was set."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bot.api.errors import ApiError, invalid
from engine.request import RNG_SOURCES

log = logging.getLogger(__name__)

# Each key the API keeps: its A1111 default and a check of a new value (None: fine).
_INT, _BOOL, _STR = (int,), (bool,), (str,)
DEFAULTS: dict[str, Any] = {
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "randn_source": "GPU",
    "emphasis": "Original",
    "send_seed": True,
    "send_size": True,
    "samples_format": "png",
    "sd_hypernetwork": "None",
    "sd_checkpoint_cache": 0,
    "sd_vae_checkpoint_cache": 0,
}
_RANGES = {"CLIP_stop_at_last_layers": (1, 12), "eta_noise_seed_delta": (0, 2**32 - 1)}
_CHOICES = {
    "randn_source": RNG_SOURCES,
    "emphasis": ("Original", "No norm", "Ignore", "None"),
    "samples_format": ("png",),
    "sd_hypernetwork": ("None",),
    "sd_checkpoint_cache": (0,),
    "sd_vae_checkpoint_cache": (0,),
}
ENGINE_KEYS = ("sd_model_checkpoint", "sd_vae")


def check_option(key: str, value: Any) -> Any:
    """`value` if the API can keep it for `key`, else ApiError 422 saying what is allowed."""
    default = DEFAULTS.get(key)
    if default is None:
        known = ", ".join((*ENGINE_KEYS, *DEFAULTS))
        raise invalid(f"option {key!r} cannot be set here; these can: {known}")
    if type(value) is not type(default):  # JSON true is no 1, nor 1 a true
        raise invalid(f"option {key} must be a {type(default).__name__}, not {value!r}")
    low_high = _RANGES.get(key)
    if low_high is not None and not low_high[0] <= value <= low_high[1]:
        raise invalid(f"option {key} {value} is not allowed: use {low_high[0]} to {low_high[1]}")
    choices = _CHOICES.get(key)
    if choices is not None and value not in choices:
        raise invalid(f"option {key} {value!r} is not allowed: use one of {list(choices)}")
    return value


class ApiOptions:
    """The kept options (A1111's defaults under what was set); `path` None: in memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.values = dict(DEFAULTS)
        if path is not None and path.exists():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                for key, value in saved.items():
                    self.values[key] = check_option(key, value)
            except (OSError, ValueError, AttributeError, ApiError) as e:  # A1111's defaults then
                log.warning("API options: %s is unreadable (%s); using defaults", path, e)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def update(self, changes: dict[str, Any]) -> None:
        """Check every change first, then keep them all (a refusal changes nothing)."""
        checked = {key: check_option(key, value) for key, value in changes.items()}
        self.values.update(checked)
        if self.path is not None:
            kept = {k: v for k, v in self.values.items() if v != DEFAULTS[k]}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(kept, indent=1), encoding="utf-8")
