"""The sampler table: A1111's user-facing names → our own samplers (engine/sampling/kdiffusion.py).

The names and schedules are A1111's before v1.9 ("DPM++ 2M" = uniform sigmas, "DPM++ 2M Karras");
v1.9's separate "Schedule type" (`engine.sampling.schedules`) replaces a row's own schedule
(`with_schedule_type`, `resolve_sampler`). Pure data without torch, so the chat parser,
settings and frontends check names at once; rows name their k-diffusion loop as A1111's own
table does, and `engine.sampling.loop` runs a row.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

from engine.errors import NOTHING, InvalidRequest, Phrase
from engine.sampling.schedules import (
    BY_LABEL,
    SCHEDULE_TYPES,
    ScheduleName,
    canonical_schedule_type,
)

# A1111's "second_order" samplers: two model calls per step, so prompt-editing schedules are
# built for twice the steps (A1111 `SamplerData.total_steps`, `p.step_multiplier`).
_SECOND_ORDER = frozenset(
    {
        "sample_heun",
        "sample_dpm_2",
        "sample_dpm_2_ancestral",
        "sample_dpmpp_2s_ancestral",
        "sample_dpmpp_sde",
        "sample_restart",
    }
)


# The schedules old (v1.6-1.8) row names carry at their end: "DPM++ 2M SDE Exponential".
_NAMED_SCHEDULES = (" Karras", " Exponential")


@dataclass(frozen=True)
class Sampler:
    """One row: an A1111 sampler name and how we run it.

    `noise` says where extra noise comes from: "ancestral" (the images' generators, reseeded
    with ENSD), "brownian" (per-seed Brownian trees) or "none"; `ensd_key` is A1111's
    `uses_ensd` for an "ancestral" row (whether its infotext names the ENSD). `schedule_type` is
    what to write as A1111 v1.9's "Schedule type" where its "Automatic" would mean another
    schedule for this name.
    """

    name: str
    function: str | None  # the loop in kdiffusion.py by name (A1111's table does so); None = DDIM
    schedule: ScheduleName = "uniform"
    noise: Literal["none", "ancestral", "brownian"] = "none"
    discard_penultimate: bool = False
    aliases: tuple[str, ...] = ()
    schedule_type: str | None = None
    ensd_key: bool = True

    @property
    def base(self) -> str:
        """The A1111 v1.9 sampler name, without the schedule ("DPM++ 2M Karras" → "DPM++ 2M",
        "DPM++ 2M SDE Exponential" → "DPM++ 2M SDE")."""
        for suffix in _NAMED_SCHEDULES:
            if self.name.endswith(suffix):
                return self.name.removesuffix(suffix)
        return self.name

    @property
    def uses_ensd(self) -> bool:
        return self.noise == "ancestral" and self.ensd_key

    @property
    def conditioning_steps(self) -> int:
        """Model calls per step that prompt editing counts (A1111's step multiplier)."""
        return 2 if self.function in _SECOND_ORDER else 1


def _row(name: str, function: str | None, *aliases: str, **options: Any) -> Sampler:
    return Sampler(name, function, aliases=aliases, **options)


_K, _U = {"schedule": "karras"}, {"schedule_type": "Uniform"}
_E: dict[str, Any] = {"schedule": "exponential"}
# A1111 v1.9.4's Brownian rows without a schedule of their own: v1.9 reads the name alone as
# Exponential (its 'scheduler' option), so uniform ones write "Schedule type: Uniform".
_B: dict[str, Any] = {"noise": "brownian"}
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        _row(
            "Euler a", "sample_euler_ancestral", "k_euler_a", "k_euler_ancestral", noise="ancestral"
        ),
        _row("Euler", "sample_euler", "k_euler"),
        _row("LMS", "sample_lms", "k_lms"),
        _row("Heun", "sample_heun", "k_heun"),
        _row("DPM2", "sample_dpm_2", "k_dpm_2", discard_penultimate=True, **_U),
        _row(
            "DPM2 a",
            "sample_dpm_2_ancestral",
            "k_dpm_2_a",
            noise="ancestral",
            discard_penultimate=True,
            **_U,
        ),
        _row("DPM++ 2S a", "sample_dpmpp_2s_ancestral", "k_dpmpp_2s_a", noise="ancestral", **_U),
        _row("DPM++ 2M", "sample_dpmpp_2m", "k_dpmpp_2m", **_U),
        _row("DPM++ SDE", "sample_dpmpp_sde", "k_dpmpp_sde", noise="brownian", **_U),
        _row("LMS Karras", "sample_lms", "k_lms_ka", **_K),
        _row("DPM2 Karras", "sample_dpm_2", "k_dpm_2_ka", discard_penultimate=True, **_K),
        _row(
            "DPM2 a Karras",
            "sample_dpm_2_ancestral",
            "k_dpm_2_a_ka",
            noise="ancestral",
            discard_penultimate=True,
            **_K,
        ),
        _row(
            "DPM++ 2S a Karras",
            "sample_dpmpp_2s_ancestral",
            "k_dpmpp_2s_a_ka",
            noise="ancestral",
            **_K,
        ),
        _row("DPM++ 2M Karras", "sample_dpmpp_2m", "k_dpmpp_2m_ka", **_K),
        _row("DPM++ SDE Karras", "sample_dpmpp_sde", "k_dpmpp_sde_ka", noise="brownian", **_K),
        # v1.6-1.8's rows of `sample_dpmpp_2m_sde` and `sample_dpmpp_3m_sde` (v1.9 keeps the
        # plain names, Exponential by default, and the aliases of these).
        _row("DPM++ 2M SDE", "sample_dpmpp_2m_sde", "k_dpmpp_2m_sde", **_B, **_U),
        _row("DPM++ 2M SDE Karras", "sample_dpmpp_2m_sde", "k_dpmpp_2m_sde_ka", **_B, **_K),
        _row("DPM++ 2M SDE Exponential", "sample_dpmpp_2m_sde", "k_dpmpp_2m_sde_exp", **_B, **_E),
        _row("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde_heun", "k_dpmpp_2m_sde_heun", **_B, **_U),
        _row(
            "DPM++ 2M SDE Heun Karras",
            "sample_dpmpp_2m_sde_heun",
            "k_dpmpp_2m_sde_heun_ka",
            **_B,
            **_K,
        ),
        _row(
            "DPM++ 2M SDE Heun Exponential",
            "sample_dpmpp_2m_sde_heun",
            "k_dpmpp_2m_sde_heun_exp",
            **_B,
            **_E,
        ),
        _row(
            "DPM++ 3M SDE",
            "sample_dpmpp_3m_sde",
            "k_dpmpp_3m_sde",
            discard_penultimate=True,
            **_B,
            **_U,
        ),
        _row(
            "DPM++ 3M SDE Karras",
            "sample_dpmpp_3m_sde",
            "k_dpmpp_3m_sde_ka",
            discard_penultimate=True,
            **_B,
            **_K,
        ),
        _row(
            "DPM++ 3M SDE Exponential",
            "sample_dpmpp_3m_sde",
            "k_dpmpp_3m_sde_exp",
            discard_penultimate=True,
            **_B,
            **_E,
        ),
        # k-diffusion's DPM-Solver-Fast and -23 (adaptive), run from σ_max to σ_min with eta 1.
        _row("DPM fast", "sample_dpm_fast", "k_dpm_fast", noise="ancestral"),
        _row("DPM adaptive", "sample_dpm_adaptive", "k_dpm_ad", noise="ancestral"),
        # A1111 v1.9.4 `sd_samplers_extra.restart_sampler`: Karras, "second_order", no
        # `uses_ensd`, though its restart noise comes from the images' ENSD generators.
        _row("Restart", "sample_restart", "restart", noise="ancestral", ensd_key=False, **_K),
        _row("DDIM", None, "ddim", schedule="ddim"),
    )
}


def _key(name: str) -> str:
    """Loose spelling: "euler_a", "Euler A", "dpmpp_2m_karras" all name a row."""
    return re.sub(r"[\s_\-]+", "", name.lower().replace("++", "pp"))


_BY_KEY = {_key(n): s.name for s in SAMPLERS.values() for n in (s.name, *s.aliases)}


def canonical_sampler(name: str) -> str:
    """The table's spelling of a sampler name or alias, or InvalidRequest listing the choices."""
    found = _BY_KEY.get(_key(name))
    if found is None:
        close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=1, cutoff=0.5)
        hint = NOTHING
        if close:
            suggestion = repr(_BY_KEY[close[0]])
            hint = Phrase(f" Did you mean {suggestion}?", "did_you_mean", suggestion=suggestion)
        raise InvalidRequest(
            f"Unknown sampler {name!r}.{hint} Choose one of: {', '.join(SAMPLERS)}.",
            field="sampler",
            key="unknown_sampler",
            name=name,
            hint=hint,
            samplers=list(SAMPLERS),
        )
    return found


def with_schedule_type(row: Sampler, schedule_type: str | None) -> Sampler:
    """The row run on a v1.9 schedule type instead of its own (None/"Automatic": its own).

    The label names the schedule in `Sampler.schedule` and in `schedule_type` (the infotext's
    `Schedule type`). DDIM keeps its timesteps: A1111's DDIM is a timesteps sampler that never
    reads the schedule type (v1.9.4 `sd_samplers_timesteps`), though its infotext names it.
    """
    label = canonical_schedule_type(schedule_type)
    if label is None:
        return row
    if row.schedule == "ddim":
        return dataclasses.replace(row, schedule_type=label)
    base = SAMPLERS[row.base]
    name = BY_LABEL[label].name
    return dataclasses.replace(base, schedule=cast(ScheduleName, name), schedule_type=label)


def resolve_sampler(sampler: str, schedule_type: str | None) -> tuple[str, str | None]:
    """A request's (sampler, schedule type) as the table's row name and a label, or None where
    the row's own schedule is that schedule ("DPM++ 2M" + "Karras" → ("DPM++ 2M Karras", None),
    "Euler" + "Uniform" → ("Euler", None), "Euler" + "Karras" → ("Euler", "Karras")).

    An explicit schedule type replaces the one an old name carries ("DPM++ 2M Karras" +
    "Exponential" → ("DPM++ 2M", "Exponential")). InvalidRequest for an unknown name of either.
    """
    row = SAMPLERS[canonical_sampler(sampler)]
    label = canonical_schedule_type(schedule_type)
    if label is None:
        return row.name, None
    if row.schedule == "ddim":
        return row.name, label
    base = SAMPLERS[row.base]
    if f" {label}" in _NAMED_SCHEDULES and f"{base.name} {label}" in SAMPLERS:
        return f"{base.name} {label}", None
    if BY_LABEL[label].name == base.schedule:
        return base.name, None
    return base.name, label


def split_schedule_suffix(sampler: str) -> tuple[str, str | None]:
    """A1111 v1.9 `get_sampler_and_scheduler`'s reading of an old name: a trailing schedule
    label, name or alias is cut off and names the schedule type ("DPM++ 2M Karras" →
    ("DPM++ 2M", "Karras")); (name, None) when there is none."""
    found: str | None = None
    for schedule in SCHEDULE_TYPES:
        for option in (schedule.label, schedule.name, *schedule.aliases):
            if sampler.endswith(" " + option):
                found, sampler = schedule.label, sampler[: -(len(option) + 1)]
                break
    return sampler, found
