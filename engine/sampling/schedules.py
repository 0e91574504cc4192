"""A1111 v1.9's "Schedule type": the noise schedules a k-diffusion sampler can run on.

The table is A1111 v1.9.4's `modules/sd_schedulers.py` `schedulers` (name, UI label, default
rho, whether it needs the model's discrete schedule, aliases); v1.9.4 has exactly these six
(Align Your Steps, KL Optimal, Simple, Normal, DDIM and Beta came in v1.10). Pure data without
torch, so the door (`engine.checks`) and the chat parser check names at once; the sigmas are
`engine.sampling.sigmas`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from engine.errors import InvalidRequest

# Our rows' own schedule names (`Sampler.schedule`): A1111's scheduler names, and DDIM's
# timesteps (A1111's DDIM is a timesteps sampler that never looks at the schedule type).
ScheduleName = Literal["uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "ddim"]

AUTOMATIC = "Automatic"


@dataclass(frozen=True)
class ScheduleType:
    """One row of A1111's `sd_schedulers.schedulers`.

    `name` is A1111's internal name (also what v1.5-1.8 wrote as `Schedule type`, from its
    `k_sched_type` option), `label` what v1.9 shows and writes. `default_rho` is -1 where the
    formula has no rho; `need_inner_model` where it reads the model's discrete schedule.
    """

    name: str
    label: str
    default_rho: float = -1.0
    need_inner_model: bool = False
    aliases: tuple[str, ...] = ()


SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", AUTOMATIC),
    ScheduleType("uniform", "Uniform", need_inner_model=True),
    ScheduleType("karras", "Karras", default_rho=7.0),
    ScheduleType("exponential", "Exponential"),
    ScheduleType("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleType("sgm_uniform", "SGM Uniform", need_inner_model=True, aliases=("SGMUniform",)),
)
SCHEDULE_LABELS: tuple[str, ...] = tuple(s.label for s in SCHEDULE_TYPES)
BY_LABEL: dict[str, ScheduleType] = {s.label: s for s in SCHEDULE_TYPES}
BY_NAME: dict[str, ScheduleType] = {s.name: s for s in SCHEDULE_TYPES}


def _key(name: str) -> str:
    """Loose spelling: "SGM Uniform", "sgm_uniform", "sgmuniform", "KARRAS" all name a row."""
    return re.sub(r"[\s_\-]+", "", name.lower())


_BY_KEY = {_key(n): s.label for s in SCHEDULE_TYPES for n in (s.name, s.label, *s.aliases)}


def schedule_label(name: str) -> str | None:
    """A1111's label for a schedule type's name, label or alias in any spelling (None if none)."""
    return _BY_KEY.get(_key(name))


def canonical_schedule_type(name: str | None) -> str | None:
    """A request's schedule type as A1111's label ("Automatic" too); None for none.

    Raises InvalidRequest listing the choices for a name v1.9.4 does not have.
    """
    if name is None:
        return None
    label = schedule_label(name)
    if label is None:
        choices = ", ".join(SCHEDULE_LABELS)
        raise InvalidRequest(
            f"Unknown schedule type {name!r}. Choose one of: {choices}.",
            field="schedule_type",
            key="unknown_schedule_type",
            name=name,
            choices=choices,
        )
    return label
