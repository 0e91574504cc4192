"""The sampler table: A1111's user-facing names → a diffusers scheduler configured to match.

The A1111-exact k-diffusion loops (ENSD, per-image ancestral noise) replace these entries in
the sampling issue; the names users type stay the same.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    LMSDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from engine.errors import InvalidRequest


@dataclass(frozen=True)
class Sampler:
    """One row of the table."""

    name: str
    scheduler: type[SchedulerMixin]
    options: dict[str, Any]


# k-diffusion samplers use the "linspace" timestep spacing (diffusers' default "leading" differs).
_K = {"timestep_spacing": "linspace"}
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("Euler a", EulerAncestralDiscreteScheduler, _K),
        Sampler("Euler", EulerDiscreteScheduler, _K),
        Sampler("LMS", LMSDiscreteScheduler, _K),
        Sampler("Heun", HeunDiscreteScheduler, _K),
        Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler, _K),
        Sampler(
            "DPM++ 2M",
            DPMSolverMultistepScheduler,
            {**_K, "algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"},
        ),
        Sampler(
            "DPM++ 2M Karras",
            DPMSolverMultistepScheduler,
            {
                **_K,
                "algorithm_type": "dpmsolver++",
                "solver_order": 2,
                "use_karras_sigmas": True,
                "final_sigmas_type": "zero",
            },
        ),
        Sampler("DDIM", DDIMScheduler, {"timestep_spacing": "leading", "set_alpha_to_one": False}),
    )
}


def _key(name: str) -> str:
    """Loose spelling: "euler_a", "Euler A", "dpmpp_2m_karras" all name a row."""
    return re.sub(r"[\s_\-]+", "", name.lower().replace("++", "pp"))


_BY_KEY = {_key(name): name for name in SAMPLERS}


def canonical_sampler(name: str) -> str:
    """The table's spelling of a sampler name, or InvalidRequest listing the choices."""
    found = _BY_KEY.get(_key(name))
    if found is None:
        close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=1, cutoff=0.5)
        hint = f" Did you mean {_BY_KEY[close[0]]!r}?" if close else ""
        raise InvalidRequest(
            f"Unknown sampler {name!r}.{hint} Choose one of: {', '.join(SAMPLERS)}.",
            field="sampler",
        )
    return found


def make_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    """A fresh scheduler for `name`, from the model's own scheduler config."""
    row = SAMPLERS[canonical_sampler(name)]
    scheduler: SchedulerMixin = row.scheduler.from_config(base_config, **row.options)
    return scheduler
