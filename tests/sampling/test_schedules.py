"""A1111 v1.9's "Schedule type": the table, every type's sigmas, the door, the flag, the infotext.

The references below are written from A1111 v1.9.4 `modules/sd_schedulers.py` and the
k-diffusion functions it calls (`get_sigmas_karras`, `get_sigmas_exponential`,
`get_sigmas_polyexponential`, `DiscreteSchedule.get_sigmas/sigma_to_t/t_to_sigma`), in float64
numpy from the demo model's own σ table, not from our code.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from bot.parse import read_request
from engine.checks import check_request
from engine.demo.model import SCHEDULER_CONFIG
from engine.errors import InvalidRequest
from engine.generate import generate, infotext_for, noise_specs
from engine.infotext import parse_infotext, request_from_infotext, sampler_from_infotext
from engine.request import BATCH_KEYS, GenerationRequest, Limits
from engine.sampling.denoiser import NoiseSchedule
from engine.sampling.loop import LOOPS, sampler_sigmas
from engine.sampling.samplers import SAMPLERS, V19_SAMPLERS, run_row, sampler_and_schedule
from engine.sampling.schedules import (
    BY_LABEL,
    SCHEDULE_LABELS,
    SCHEDULE_TYPES,
    canonical_schedule_type,
)

SCHEDULE = NoiseSchedule.from_config(SCHEDULER_CONFIG)  # the demo model's noise schedule
LOG_SIGMAS = np.log(SCHEDULE.sigmas.numpy().astype(np.float64))
SIGMA_MIN, SIGMA_MAX = float(SCHEDULE.sigmas[0]), float(SCHEDULE.sigmas[-1])
STEPS = (10, 28)


# --- references from A1111 v1.9.4's formulas -----------------------------------------------------


def t_to_sigma(t: float) -> float:
    """k-diffusion `t_to_sigma`: log σ linear between the integer timesteps around t."""
    low, high = math.floor(t), math.ceil(t)
    w = t - low
    return math.exp((1 - w) * LOG_SIGMAS[low] + w * LOG_SIGMAS[high])


def sigma_to_t(sigma: float) -> float:
    """k-diffusion `sigma_to_t`: the t where log σ falls between two table entries."""
    log_sigma = math.log(sigma)
    low = min(int(np.sum(log_sigma - LOG_SIGMAS >= 0)) - 1, len(LOG_SIGMAS) - 2)
    lo, hi = LOG_SIGMAS[low], LOG_SIGMAS[low + 1]
    w = min(max((lo - log_sigma) / (lo - hi), 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def ref_uniform(n: int) -> list[float]:
    """`uniform` = the model's `get_sigmas(n)`: t = linspace(999, 0, n), then 0."""
    return [t_to_sigma(t) for t in np.linspace(len(LOG_SIGMAS) - 1, 0, n)] + [0.0]


def ref_karras(n: int, rho: float = 7.0) -> list[float]:
    lo, hi = SIGMA_MIN ** (1 / rho), SIGMA_MAX ** (1 / rho)
    return [(hi + r * (lo - hi)) ** rho for r in np.linspace(0, 1, n)] + [0.0]


def ref_exponential(n: int) -> list[float]:
    logs = np.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), n)
    return [math.exp(x) for x in logs] + [0.0]


def ref_polyexponential(n: int, rho: float = 1.0) -> list[float]:
    lmin, lmax = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
    return [math.exp(r**rho * (lmax - lmin) + lmin) for r in np.linspace(1, 0, n)] + [0.0]


def ref_sgm_uniform(n: int) -> list[float]:
    ts = np.linspace(sigma_to_t(SIGMA_MAX), sigma_to_t(SIGMA_MIN), n + 1)[:-1]
    return [t_to_sigma(t) for t in ts] + [0.0]


REFERENCES = {
    "Uniform": ref_uniform,
    "Karras": ref_karras,
    "Exponential": ref_exponential,
    "Polyexponential": ref_polyexponential,
    "SGM Uniform": ref_sgm_uniform,
}


# --- the table ---------------------------------------------------------------------------------


def test_the_table_is_a1111_v194s() -> None:
    assert SCHEDULE_LABELS == (
        "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
    )  # fmt: skip
    names = [(s.name, s.default_rho, s.need_inner_model) for s in SCHEDULE_TYPES]
    assert names == [
        ("automatic", -1.0, False),
        ("uniform", -1.0, True),
        ("karras", 7.0, False),
        ("exponential", -1.0, False),
        ("polyexponential", 1.0, False),
        ("sgm_uniform", -1.0, True),
    ]
    assert set(REFERENCES) == set(SCHEDULE_LABELS) - {"Automatic"}


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Karras", "Karras"),
        ("karras", "Karras"),  # v1.5-1.8's k_sched_type values
        ("EXPONENTIAL", "Exponential"),
        ("sgm_uniform", "SGM Uniform"),
        ("SGMUniform", "SGM Uniform"),  # A1111's alias
        ("sgm uniform", "SGM Uniform"),
        ("Automatic", "Automatic"),
        ("auto matic", "Automatic"),
        (None, None),
    ],
)
def test_names_in_any_spelling(text: str | None, label: str | None) -> None:
    assert canonical_schedule_type(text) == label


# --- sigmas --------------------------------------------------------------------------------------


def sigmas_of(sampler: str, steps: int, label: str | None = None) -> torch.Tensor:
    return sampler_sigmas(run_row(sampler, label), SCHEDULE, steps)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("label", list(REFERENCES))
def test_sigmas_are_a1111s(label: str, steps: int) -> None:
    sigmas = sigmas_of("Euler", steps, label)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert sigmas[-1] == 0
    np.testing.assert_allclose(sigmas.numpy(), REFERENCES[label](steps), rtol=1e-6, atol=0)


def test_first_and_last_sigmas_are_the_models() -> None:
    for label in ("Karras", "Exponential", "Polyexponential", "Uniform"):
        sigmas = sigmas_of("Euler", 20, label)
        assert sigmas[0] == pytest.approx(SIGMA_MAX, rel=1e-6)
        assert sigmas[-2] == pytest.approx(SIGMA_MIN, rel=1e-6)
    # SGM Uniform stops one step short of σ_min (n + 1 points, the last dropped).
    assert sigmas_of("Euler", 20, "SGM Uniform")[-2] > SIGMA_MIN * 1.5


@pytest.mark.parametrize(
    ("sampler", "automatic"),
    [
        ("Euler a", "Euler a"),
        ("Euler", "Euler"),
        ("LMS", "LMS"),
        ("DPM++ 2M", "DPM++ 2M Karras"),  # v1.9's 'scheduler': 'karras'
        ("DPM2 a", "DPM2 a Karras"),
        ("DPM++ SDE", "DPM++ SDE Karras"),
        ("DPM++ 2M SDE", "DPM++ 2M SDE Exponential"),  # 'scheduler': 'exponential'
        ("DPM++ 3M SDE", "DPM++ 3M SDE Exponential"),
        ("DPM++ 2M Karras", "DPM++ 2M Karras"),
        ("Restart", "Restart"),
        ("DDIM", "DDIM"),
    ],
)
def test_automatic_is_the_v19_names_own(sampler: str, automatic: str) -> None:
    """ "Automatic" runs what A1111 v1.9.4 runs for the name: its 'scheduler' option."""
    assert torch.equal(sigmas_of(sampler, 20, "Automatic"), sigmas_of(automatic, 20))


def test_no_type_keeps_the_names_old_schedule() -> None:
    """Before v1.9, "DPM++ 2M" was uniform: a request (or an old infotext) naming it alone
    still draws on uniform sigmas, and "Karras" on the old Karras row's."""
    np.testing.assert_allclose(sigmas_of("DPM++ 2M", 20).numpy(), ref_uniform(20), rtol=1e-6)
    karras = sigmas_of("DPM++ 2M Karras", 20)
    assert torch.equal(karras, sigmas_of("DPM++ 2M", 20, "Karras"))
    np.testing.assert_allclose(karras.numpy(), ref_karras(20), rtol=1e-6)


def test_a_type_replaces_an_old_names_schedule() -> None:
    """An explicit type wins over the Karras an old name carries; the loop stays the row's."""
    row = run_row("DPM++ 2M Karras", "Exponential")
    assert (row.name, row.function, row.schedule) == ("DPM++ 2M", "sample_dpmpp_2m", "exponential")
    sigmas = sigmas_of("DPM++ 2M Karras", 12, "Exponential")
    np.testing.assert_allclose(sigmas.numpy(), ref_exponential(12), rtol=1e-6)


@pytest.mark.parametrize("label", ["Karras", "Exponential", "SGM Uniform"])
def test_discard_penultimate_sigma_with_any_type(label: str) -> None:
    """DPM2's rows draw steps + 1 sigmas and drop the next-to-last, whatever the type."""
    sigmas = sigmas_of("DPM2 a", 10, label)
    full = REFERENCES[label](11)
    np.testing.assert_allclose(sigmas.numpy(), full[:-2] + full[-1:], rtol=1e-6)


def test_ddim_ignores_the_type_as_a1111s_timesteps_sampler_does() -> None:
    own = sigmas_of("DDIM", 20)
    for label in ("Karras", "Automatic", "SGM Uniform"):
        assert torch.equal(sigmas_of("DDIM", 20, label), own)


# --- the door ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "schedule", "resolved"),
    [
        ("DPM++ 2M", None, ("DPM++ 2M", None)),
        ("DPM++ 2M", "automatic", ("DPM++ 2M", "Automatic")),  # kept, to be written back
        ("DPM++ 2M", "karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M", "Exponential", ("DPM++ 2M", "Exponential")),
        ("dpmpp_2m_karras", None, ("DPM++ 2M Karras", None)),
        ("DPM++ 2M Karras", "exponential", ("DPM++ 2M", "Exponential")),  # the type wins
        ("DPM++ 2M Karras", "Uniform", ("DPM++ 2M", "Uniform")),
        ("Euler a", "Karras", ("Euler a", "Karras")),
        ("euler_a", None, ("Euler a", None)),
        ("Euler", "sgm_uniform", ("Euler", "SGM Uniform")),
        ("DPM2 a", "Polyexponential", ("DPM2 a", "Polyexponential")),
        ("DDIM", "Karras", ("DDIM", "Karras")),
    ],
)
def test_the_door_spells_the_pair(
    sampler: str, schedule: str | None, resolved: tuple[str, str | None]
) -> None:
    assert sampler_and_schedule(sampler, schedule) == resolved
    request = GenerationRequest(prompt="cat", sampler=sampler, schedule_type=schedule)
    checked = check_request(request, Limits())
    assert (checked.sampler, checked.schedule_type) == resolved


@pytest.mark.parametrize("name", ["Align Your Steps", "Beta", "linear", ""])
def test_the_door_refuses_other_types_in_one_line(name: str) -> None:
    request = GenerationRequest(prompt="cat", schedule_type=name)
    with pytest.raises(InvalidRequest) as caught:
        check_request(request, Limits())
    message = str(caught.value)
    assert "\n" not in message and caught.value.key == "unknown_schedule_type"
    assert message == (
        f"Unknown schedule type {name!r}. Choose one of: Automatic, Uniform, Karras, "
        "Exponential, Polyexponential, SGM Uniform."
    )


def test_an_unknown_sampler_lists_the_v19_names_not_the_old_ones() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_request(GenerationRequest(prompt="cat", sampler="Eulr a"), Limits())
    message = str(caught.value)
    assert message.startswith("Unknown sampler 'Eulr a'. Did you mean 'Euler a'? Choose one of: ")
    assert ", ".join(V19_SAMPLERS) in message and "\n" not in message
    assert "LMS Karras" not in message and "'DPM++ 2M Karras' work too" in message


def test_schedule_types_do_not_share_a_batch() -> None:
    assert "schedule_type" in BATCH_KEYS


# --- the flag ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--schedule exponential", "Exponential"),
        ("--schedule KARRAS", "Karras"),
        ("--schedule sgm uniform", "SGM Uniform"),
        ("--schedule auto", "Automatic"),
        ("--schedule Automatic", "Automatic"),
    ],
)
def test_the_schedule_flag(flag: str, expected: str) -> None:
    parsed = read_request(f"1girl, smile --sampler DPM++ 2M {flag} --seed 3")
    assert parsed.request.schedule_type == expected
    assert parsed.request.sampler == "DPM++ 2M" and parsed.request.seed == 3


def test_an_unknown_flag_value_is_refused_at_the_door() -> None:
    parsed = read_request("1girl --schedule align your steps")
    with pytest.raises(InvalidRequest, match="Unknown schedule type 'align your steps'"):
        check_request(parsed.request, Limits())


def test_old_names_keep_working_from_the_chat() -> None:
    parsed = read_request("1girl --sampler DPM++ 2M Karras")
    checked = check_request(parsed.request, Limits())
    assert (checked.sampler, checked.schedule_type) == ("DPM++ 2M Karras", None)


# --- the infotext --------------------------------------------------------------------------------

V19_TEXT = (
    "1girl, smile\nNegative prompt: lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Exponential, CFG scale: 7, Seed: 5, "
    "Size: 512x512, Model hash: 80ec94bbee, Model: aidraw-demo, Version: v1.9.4"
)
MODEL = SimpleNamespace(hash="80ec94bbee", name="aidraw-demo")


def resolved(request: GenerationRequest) -> GenerationRequest:
    return check_request(request, Limits())


def write(request: GenerationRequest) -> str:
    return infotext_for(request, noise_specs(request)[0], MODEL)  # type: ignore[arg-type]


def test_a_pasted_v19_infotext_reproduces() -> None:
    request = resolved(request_from_infotext(V19_TEXT))
    assert (request.sampler, request.schedule_type) == ("DPM++ 2M", "Exponential")
    row = run_row(request.sampler or "", request.schedule_type)
    assert (row.function, row.schedule) == ("sample_dpmpp_2m", "exponential")
    line = write(request).split("\n")[-1]
    assert line.startswith(
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Exponential, CFG scale: 7,"
    )


@pytest.mark.parametrize(
    ("sampler", "schedule", "written"),
    [
        ("Euler", "SGM Uniform", "Sampler: Euler, Schedule type: SGM Uniform,"),
        (
            "DPM++ 2M Karras",
            "Polyexponential",
            "Sampler: DPM++ 2M, Schedule type: Polyexponential,",
        ),
        ("DPM++ 2M", "Karras", "Sampler: DPM++ 2M, Schedule type: Karras,"),
        ("DPM++ 2M", "Automatic", "Sampler: DPM++ 2M, Schedule type: Karras,"),  # as v1.9.4
        ("DPM++ 2M", None, "Sampler: DPM++ 2M, Schedule type: Uniform,"),
        ("DPM++ 2M Karras", None, "Sampler: DPM++ 2M, Schedule type: Karras,"),
        ("LMS Karras", None, "Sampler: LMS, Schedule type: Karras,"),
        ("Euler a", "Automatic", "Sampler: Euler a, Schedule type: Automatic,"),
        ("Euler a", None, "Sampler: Euler a, Schedule type: Automatic,"),
        ("Euler a", "Uniform", "Sampler: Euler a, Schedule type: Uniform,"),
        ("DDIM", "Karras", "Sampler: DDIM, Schedule type: Karras,"),  # A1111 writes, ignores it
        ("DPM++ 2M SDE", "Karras", "Sampler: DPM++ 2M SDE, Schedule type: Karras,"),
        ("DPM++ 2M SDE", None, "Sampler: DPM++ 2M SDE, Schedule type: Uniform,"),
        ("DPM++ 2M SDE Exponential", None, "Sampler: DPM++ 2M SDE, Schedule type: Exponential,"),
        ("DPM++ 2M SDE Heun", "Exponential", "Sampler: DPM++ 2M SDE Heun, Schedule type: Exp"),
        ("DPM++ 3M SDE Karras", "Polyexponential", "Sampler: DPM++ 3M SDE, Schedule type: Poly"),
        ("Restart", None, "Sampler: Restart, Schedule type: Karras,"),
        ("DDIM", None, "Sampler: DDIM, Schedule type: Automatic,"),
    ],
)
def test_round_trip(sampler: str, schedule: str | None, written: str) -> None:
    """Written as A1111 v1.9.4 writes the pair; pasted back, the same sigmas, and written
    back identically."""
    request = resolved(
        GenerationRequest(
            prompt="1girl", seed=5, rng="GPU", ensd=0, sampler=sampler, schedule_type=schedule
        )
    )
    text = write(request)
    assert written in text
    again = resolved(request_from_infotext(text))
    assert write(again) == text
    ours, theirs = (
        run_row(request.sampler or "", request.schedule_type),
        run_row(again.sampler or "", again.schedule_type),
    )
    assert (ours.function, ours.schedule) == (theirs.function, theirs.schedule)


# A1111 v1.9.4's sampler list and each name's 'scheduler' option (sd_samplers_kdiffusion.py
# `samplers_k_diffusion`, sd_samplers_timesteps.py, sd_samplers_lcm.py), transcribed here.
A1111_V19 = {
    "DPM++ 2M": "karras",
    "DPM++ SDE": "karras",
    "DPM++ 2M SDE": "exponential",
    "DPM++ 2M SDE Heun": "exponential",
    "DPM++ 2S a": "karras",
    "DPM++ 3M SDE": "exponential",
    "Euler a": None,
    "Euler": None,
    "LMS": None,
    "Heun": None,
    "DPM2": "karras",
    "DPM2 a": "karras",
    "DPM fast": None,
    "DPM adaptive": None,
    "Restart": "karras",
    "DDIM": "timesteps",
    "PLMS": "timesteps",
    "UniPC": "timesteps",
    "LCM": None,
}
A1111_LABELS = {"uniform": "Uniform", "karras": "Karras", "exponential": "Exponential"}


def test_the_chats_list_is_a1111_v19s() -> None:
    assert sorted(V19_SAMPLERS) == sorted(A1111_V19)


def a1111_writes(name: str, label: str) -> str:
    """The `Schedule type` A1111 v1.9.4 writes after sampling: `get_sigmas` replaces it with
    the label of a schedule it resolved (the option's, for "Automatic")."""
    option = A1111_V19[name]
    if option == "timesteps" or label != "Automatic":
        return label
    return A1111_LABELS[option] if option else "Automatic"


@pytest.mark.parametrize("label", SCHEDULE_LABELS)
@pytest.mark.parametrize("name", list(A1111_V19))
def test_every_v19_pair_reproduces_and_is_written_back(name: str, label: str) -> None:
    """An infotext v1.9.4 wrote for any pair draws on the schedule v1.9.4 drew on and is
    written back identically; the pair the UI sent ("Automatic") is written as v1.9.4 does."""
    sent = (
        f"1girl\nSteps: 20, Sampler: {name}, Schedule type: {label}, CFG scale: 7, Seed: 5, "
        "Size: 64x64, Model hash: 80ec94bbee, Model: aidraw-demo, Version: v1.9.4"
    )
    request = resolved(request_from_infotext(sent))
    row = run_row(request.sampler or "", request.schedule_type)
    option = A1111_V19[name]
    if option == "timesteps":
        assert row.timesteps and row.name == name
    else:
        if label != "Automatic":
            expected = BY_LABEL[label].name
        else:  # the option's schedule, or the sampler's own sigmas
            expected = option or SAMPLERS[name].schedule
        assert (row.base, row.schedule) == (name, expected)
    written = a1111_writes(name, label)
    pair = f", Sampler: {name}, Schedule type: {written}, CFG scale: 7, Seed: 5,"
    assert pair in write(request)
    stored = sent.replace(f"Schedule type: {label},", f"Schedule type: {written},")
    again = resolved(request_from_infotext(stored))
    assert pair in write(again)
    theirs = run_row(again.sampler or "", again.schedule_type)
    assert (theirs.function, theirs.schedule) == (row.function, row.schedule)


@pytest.mark.parametrize(
    ("sampler", "schedule", "ours"),
    [
        ("DPM++ 2M", None, ("DPM++ 2M", None)),  # before v1.9: uniform
        ("DPM++ 2M", "Automatic", ("DPM++ 2M", "Automatic")),  # v1.9's default for DPM++ 2M
        ("DPM++ 2M", "Karras", ("DPM++ 2M", "Karras")),
        ("Euler", "Automatic", ("Euler", "Automatic")),
        ("DPM++ 2M", "exponential", ("DPM++ 2M", "Exponential")),  # v1.5-1.8's option value
        ("DPM++ 2M Karras", "Exponential", ("DPM++ 2M Karras", None)),  # A1111: the name wins
        ("DPM++ 2M Karras", None, ("DPM++ 2M Karras", None)),
        ("Euler a Exponential", None, ("Euler a", "Exponential")),
        ("Euler Karras", "Automatic", ("Euler", "Karras")),
        ("Euler", "sgm_uniform", ("Euler", "SGM Uniform")),
        ("DPM++ 2M", "Align Your Steps", ("DPM++ 2M", "Align Your Steps")),  # refused later
        ("DPM++ 2M SDE", None, ("DPM++ 2M SDE", None)),  # before v1.9: uniform
        ("DPM++ 2M SDE", "Automatic", ("DPM++ 2M SDE", "Automatic")),
        ("DPM++ 3M SDE Exponential", "Karras", ("DPM++ 3M SDE Exponential", None)),
        ("DPM++ 2M SDE Heun Karras", None, ("DPM++ 2M SDE Heun Karras", None)),
        ("DPM++ 3M SDE", "SGM Uniform", ("DPM++ 3M SDE", "SGM Uniform")),
        ("Nonsense", "Karras", ("Nonsense", "Karras")),  # refused at the door
    ],
)
def test_reading_a1111s_pair(
    sampler: str, schedule: str | None, ours: tuple[str | None, str | None]
) -> None:
    params = {"Sampler": sampler} | ({"Schedule type": schedule} if schedule else {})
    assert sampler_from_infotext(params) == ours
    assert parse_infotext(f"x\nSteps: 2, Sampler: {sampler}, Seed: 1").params["Sampler"] == sampler


def test_a_v19_infotext_pasted_into_the_chat_reproduces() -> None:
    request = read_request(V19_TEXT).request
    assert (request.sampler, request.schedule_type) == ("DPM++ 2M", "Exponential")
    again = read_request(V19_TEXT + " --schedule karras").request  # a flag still overrides
    assert (again.sampler, again.schedule_type) == ("DPM++ 2M", "Karras")
    checked = check_request(again, Limits())
    assert (checked.sampler, checked.schedule_type) == ("DPM++ 2M", "Karras")


@pytest.mark.slow
def test_generate_draws_on_the_chosen_type(
    demo_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []
    loop = LOOPS["sample_dpmpp_2m"]

    def recording(model: Any, x: Any, sigmas: torch.Tensor, *args: Any) -> Any:
        seen.append(sigmas.cpu())
        return loop(model, x, sigmas, *args)

    monkeypatch.setitem(LOOPS, "sample_dpmpp_2m", recording)
    request = GenerationRequest(
        prompt="1girl", width=64, height=64, num_inference_steps=6, seed=5, rng="CPU", ensd=0,
        sampler="DPM++ 2M", schedule_type="exponential",
    )  # fmt: skip
    result = generate(demo_model, [check_request(request, Limits())], limits=Limits())[0]
    assert "Sampler: DPM++ 2M, Schedule type: Exponential, " in result.infotext
    np.testing.assert_allclose(seen[0].numpy(), ref_exponential(6), rtol=1e-6)
    assert (result.request.sampler, result.request.schedule_type) == ("DPM++ 2M", "Exponential")
