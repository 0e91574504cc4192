"""The sampler table: A1111's user-facing names → our own samplers (the loops in engine/sampling/).

The names and schedules are A1111's before v1.9 ("DPM++ 2M" = uniform sigmas, "DPM++ 2M Karras"),
so an old infotext reproduces; v1.9's separate "Schedule type" (`engine.sampling.schedules`)
replaces a row's own schedule (`run_row`), and "Automatic" is the v1.9 sampler's own default
(`Sampler.automatic`). Infotexts are written as v1.9 writes them: the v1.9 name and a label
(`infotext_sampler`). Pure data without torch, so the chat parser, settings and frontends check
names at once; rows name their loop as A1111's own table does, and `engine.sampling.loop` runs
a row.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

from engine.errors import NOTHING, InvalidRequest, Phrase
from engine.sampling.schedules import (
    AUTOMATIC,
    BY_LABEL,
    BY_NAME,
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
    `uses_ensd` for an "ancestral" row (whether its infotext names the ENSD). `automatic` is
    A1111 v1.9.4's 'scheduler' option of the v1.9 name: the schedule its "Automatic" schedule
    type means (None: the row's own).
    """

    name: str
    function: str  # its loop by name, as A1111's table names it (`loop.LOOPS`, `TIMESTEPS_LOOPS`)
    schedule: ScheduleName = "uniform"
    noise: Literal["none", "ancestral", "brownian"] = "none"
    discard_penultimate: bool = False
    aliases: tuple[str, ...] = ()
    automatic: ScheduleName | None = None
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
    def timesteps(self) -> bool:
        """A1111's timesteps samplers (DDIM, PLMS, UniPC): their own timesteps, whatever the
        schedule type."""
        return self.schedule == "ddim"

    @property
    def uses_ensd(self) -> bool:
        return self.noise == "ancestral" and self.ensd_key

    @property
    def conditioning_steps(self) -> int:
        """Model calls per step that prompt editing counts (A1111's step multiplier)."""
        return 2 if self.function in _SECOND_ORDER else 1


def _row(name: str, function: str, *aliases: str, **options: Any) -> Sampler:
    return Sampler(name, function, aliases=aliases, **options)


_K: dict[str, Any] = {"schedule": "karras"}
_E: dict[str, Any] = {"schedule": "exponential"}
# A1111 v1.9.4's 'scheduler' option of a name: what its "Automatic" schedule type means.
_AK: dict[str, Any] = {"automatic": "karras"}
_B: dict[str, Any] = {"noise": "brownian", "automatic": "exponential"}
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        _row(
            "Euler a", "sample_euler_ancestral", "k_euler_a", "k_euler_ancestral", noise="ancestral"
        ),
        _row("Euler", "sample_euler", "k_euler"),
        _row("LMS", "sample_lms", "k_lms"),
        _row("Heun", "sample_heun", "k_heun"),
        _row("DPM2", "sample_dpm_2", "k_dpm_2", discard_penultimate=True, **_AK),
        _row(
            "DPM2 a",
            "sample_dpm_2_ancestral",
            "k_dpm_2_a",
            noise="ancestral",
            discard_penultimate=True,
            **_AK,
        ),
        _row("DPM++ 2S a", "sample_dpmpp_2s_ancestral", "k_dpmpp_2s_a", noise="ancestral", **_AK),
        _row("DPM++ 2M", "sample_dpmpp_2m", "k_dpmpp_2m", **_AK),
        _row("DPM++ SDE", "sample_dpmpp_sde", "k_dpmpp_sde", noise="brownian", **_AK),
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
        _row("DPM++ 2M SDE", "sample_dpmpp_2m_sde", "k_dpmpp_2m_sde", **_B),
        _row("DPM++ 2M SDE Karras", "sample_dpmpp_2m_sde", "k_dpmpp_2m_sde_ka", **_B, **_K),
        _row("DPM++ 2M SDE Exponential", "sample_dpmpp_2m_sde", "k_dpmpp_2m_sde_exp", **_B, **_E),
        _row("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde_heun", "k_dpmpp_2m_sde_heun", **_B),
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
        _row(
            "Restart", "sample_restart", "restart", noise="ancestral", ensd_key=False, **_K, **_AK
        ),
        # A1111 v1.9.4 `sd_samplers_timesteps`: their own timesteps ("ddim"), eta 0 (no noise,
        # no `uses_ensd`).
        _row("DDIM", "sample_ddim", "ddim", schedule="ddim"),
        _row("PLMS", "sample_plms", "plms", schedule="ddim"),
        _row("UniPC", "sample_unipc", "unipc", schedule="ddim"),
        # A1111 v1.9.4 `sd_samplers_lcm`: its own model wrapper and 50-timestep table
        # (engine/sampling/lcm.py), whose `get_sigmas` is "Automatic" (no 'scheduler' option);
        # noise from the images' ENSD generators, though no `uses_ensd`.
        _row("LCM", "sample_lcm", "k_lcm", noise="ancestral", ensd_key=False),
    )
}


# The v1.9 names as the chats list them, common first: the everyday ones of anime models, then
# the rest, then the special-purpose ones (DPM fast/adaptive ignore the step count's schedule;
# LCM wants an LCM model or LoRA). Only rows the table has.
_GROUPS = {
    "common": ("Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DDIM"),
    "more": (
        "DPM++ 2S a",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
        "UniPC",
        "Heun",
        "LMS",
        "DPM2",
        "DPM2 a",
        "Restart",
        "PLMS",
    ),
    "special": ("DPM fast", "DPM adaptive", "LCM"),
}
SAMPLER_GROUPS: dict[str, tuple[str, ...]] = {
    group: tuple(name for name in names if name in SAMPLERS) for group, names in _GROUPS.items()
}
# A1111 v1.9's sampler names (its dropdown; old names such as "DPM++ 2M Karras" are rows too).
V19_SAMPLERS: tuple[str, ...] = tuple(n for names in SAMPLER_GROUPS.values() for n in names)


def _key(name: str) -> str:
    """Loose spelling: "euler_a", "Euler A", "dpmpp_2m_karras" all name a row."""
    return re.sub(r"[\s_\-]+", "", name.lower().replace("++", "pp"))


_OLD_NAME = "DPM++ 2M Karras"  # an old name the error gives as an example
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
            f"Unknown sampler {name!r}.{hint} Choose one of: {', '.join(V19_SAMPLERS)}"
            f" (old names such as {_OLD_NAME!r} work too).",
            field="sampler",
            key="unknown_sampler",
            name=name,
            hint=hint,
            samplers=list(V19_SAMPLERS),
            example=_OLD_NAME,
        )
    return found


def carries_schedule(sampler: str) -> bool:
    """Whether a sampler name is an old one that names its schedule ("DPM++ 2M Karras");
    False for an unknown name (the door refuses it, listing the choices)."""
    try:
        row = SAMPLERS[canonical_sampler(sampler)]
    except InvalidRequest:
        return False
    return row.name != row.base


def run_row(sampler: str, schedule_type: str | None) -> Sampler:
    """The row a request's (sampler, schedule type) runs.

    None keeps the named row ("DPM++ 2M" uniform, "DPM++ 2M Karras"); "Automatic" is the v1.9
    name's own default (`Sampler.automatic`: "DPM++ 2M" → Karras); another label runs the v1.9
    name on that schedule. Timesteps samplers (DDIM, PLMS, UniPC) keep their timesteps:
    A1111's never read the schedule type (v1.9.4 `sd_samplers_timesteps`), though their
    infotext names it.
    InvalidRequest for an unknown name of either.
    """
    row = SAMPLERS[canonical_sampler(sampler)]
    label = canonical_schedule_type(schedule_type)
    if label is None or row.timesteps:
        return row
    base = SAMPLERS[row.base]
    if label == AUTOMATIC:
        return dataclasses.replace(base, schedule=base.automatic or base.schedule)
    return dataclasses.replace(base, schedule=cast(ScheduleName, BY_LABEL[label].name))


def infotext_sampler(sampler: str, schedule_type: str | None) -> tuple[str, str]:
    """(Sampler, Schedule type) as A1111 v1.9.4 writes them for a request's pair.

    The v1.9 name, and the label of the schedule that ran: v1.9.4's `get_sigmas` overwrites
    the infotext's "Automatic" with the schedule its 'scheduler' option chose, so "DPM++ 2M" +
    "Automatic" is written "Karras"; "Automatic" stays only where the name has no such option
    and ran its own sigmas ("Euler a", "DPM fast"). Timesteps samplers write the label given
    ("Automatic" for none), as v1.9.4 does. No type means the row's own schedule: "DPM++ 2M"
    → "Uniform", "DPM++ 2M Karras" and "LMS Karras" → "Karras".
    """
    row = SAMPLERS[canonical_sampler(sampler)]
    label = canonical_schedule_type(schedule_type)
    if row.timesteps:
        return row.base, label or AUTOMATIC
    if label not in (None, AUTOMATIC):
        return row.base, label
    base, schedule = SAMPLERS[row.base], run_row(sampler, schedule_type).schedule
    if base.automatic is None and schedule == base.schedule:
        return row.base, AUTOMATIC
    return row.base, BY_NAME[schedule].label


def sampler_and_schedule(sampler: str, schedule_type: str | None) -> tuple[str, str | None]:
    """A request's pair as the table spells it (InvalidRequest for an unknown name of either).

    A schedule type given with an old name replaces the schedule the name carries ("DPM++ 2M
    Karras" + "Exponential" → ("DPM++ 2M", "Exponential")), so a `--schedule` flag works over a
    saved default sampler; "Automatic" is kept, so the infotext names it as it was given.
    """
    row = SAMPLERS[canonical_sampler(sampler)]
    label = canonical_schedule_type(schedule_type)
    if label is None or row.timesteps:
        return row.name, label
    return row.base, label


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
