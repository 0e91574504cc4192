"""How many steps a request runs, without torch: the engine counts them for progress and ETAs.

A1111's step rules: txt2img runs the sampler's steps (the timesteps samplers as many as their
timesteps, DDIM and PLMS one fewer); img2img enters the
sampler's schedule `t_enc` steps before its end (`setup_img2img_steps`); the hires pass runs its
own steps over a longer schedule.
"""

from __future__ import annotations

from engine.request import GenerationRequest
from engine.sampling.samplers import Sampler, run_row

IMG2IMG_STRENGTH = 0.75  # A1111's default denoising strength of img2img
HIRES_STRENGTH = 0.7  # and of the hires pass
UNIPC_ORDER = 3  # A1111's `uni_pc_order`: UniPC stops on fewer steps than this ("must be <")


def img2img_steps(steps: int, strength: float, *, fixed: bool = False) -> tuple[int, int]:
    """A1111 `setup_img2img_steps`: (schedule steps, t_enc) for `steps` at a denoising strength.

    img2img (`fixed` False, A1111's `img2img_fix_steps` off): the schedule is the sampler's
    for `steps`, entered `t_enc = int(min(strength, 0.999) · steps)` steps before its end.
    The hires pass (`fixed`; A1111 passes it `steps`, which takes that branch): the schedule
    is for `int(steps / min(strength, 0.999))` steps, entered `steps - 1` steps before its end.
    """
    capped = min(strength, 0.999)
    if fixed:
        return (int(steps / capped) if strength > 0 else 0), steps - 1
    return steps, int(capped * steps)


def total_steps(row: Sampler, steps: int) -> int:
    """How many sampler steps (callbacks) a row runs for `steps` (timesteps rows: one per
    timestep, `_ddim_count`, DDIM and PLMS one fewer, as A1111; DPM fast: `steps` model calls
    in steps of 3, `_fast_count`; DPM adaptive: an estimate, its tries depend on the error)."""
    if row.timesteps:
        count = _ddim_count(steps)
        return count if row.function == "sample_unipc" else count - 1
    return _fast_count(steps) if row.function == "sample_dpm_fast" else steps


def _fast_count(nfe: int) -> int:
    """DPM-Solver-Fast's steps for `nfe` model calls (k-diffusion `dpm_solver_fast`'s m)."""
    return nfe // 3 + 1 if nfe > 0 else 0


def img2img_total_steps(row: Sampler, steps: int, strength: float, *, fixed: bool = False) -> int:
    """How many sampler steps (callbacks) `sample_img2img` runs."""
    steps, t_enc = img2img_steps(steps, strength, fixed=fixed)
    if row.timesteps:  # `timesteps[:t_enc]`; UniPC takes as many steps as it has timesteps
        if not steps:
            return 0
        run = min(t_enc, _ddim_count(steps))
        return run if row.function == "sample_unipc" else max(run - 1, 0)
    if row.function == "sample_dpm_fast":
        return _fast_count(min(t_enc + 1, steps))
    return min(t_enc + 1, steps)


def planned_steps(request: GenerationRequest) -> int:
    """Sampler steps (callbacks) generate() runs for a checked request (`check_request`'s, with
    its sampler and steps filled): txt2img's, img2img's cut schedule, or the first pass plus
    the hires pass (what progress and ETAs count)."""
    if request.extras_upscale:
        return 0  # nothing is drawn
    row = run_row(request.sampler or "", request.schedule_type)
    steps = request.num_inference_steps or 0
    if request.init_image is not None:
        return img2img_total_steps(row, steps, denoising_strength(request))
    total = total_steps(row, steps)
    if request.enable_hr:
        hires = request.hr_second_pass_steps or steps
        total += img2img_total_steps(row, hires, denoising_strength(request), fixed=True)
    return total


def unipc_short_pass(request: GenerationRequest) -> int | None:
    """The steps of a UniPC pass of a checked request that runs fewer than `UNIPC_ORDER`
    (A1111 stops there, "UniPC order must be < sampling steps"), or None. A hires pass at
    strength 0 runs nothing and is not counted (A1111 divides by zero there)."""
    row = run_row(request.sampler or "", request.schedule_type)
    if row.function != "sample_unipc" or request.extras_upscale:
        return None
    steps = request.num_inference_steps or 0
    strength = denoising_strength(request)
    if request.init_image is not None:
        passes = [img2img_total_steps(row, steps, strength)]
    else:
        passes = [total_steps(row, steps)]
        if request.enable_hr and strength > 0:
            hires = request.hr_second_pass_steps or steps
            passes.append(img2img_total_steps(row, hires, strength, fixed=True))
    return min((n for n in passes if n < UNIPC_ORDER), default=None)


def denoising_strength(request: GenerationRequest) -> float:
    """The request's denoising strength, or A1111's default for what it draws."""
    if request.denoising_strength is not None:
        return request.denoising_strength
    return IMG2IMG_STRENGTH if request.init_image is not None else HIRES_STRENGTH


def _ddim_count(steps: int, train_steps: int = 1000) -> int:
    """len(ddim_timesteps(steps)) without building it."""
    return len(range(0, train_steps, train_steps // steps))
