"""A1111's timesteps samplers, DDIM, PLMS and UniPC (v1.9.4 `sd_samplers_timesteps` and
`_impl`, `models/diffusion/uni_pc/uni_pc.py`): against references transcribed here from
A1111's functions (bit for bit, fp16 ᾱ too) and diffusers' PNDM and UniPC schedulers; their
rows, step counts, prompt-editing steps and the door; end to end on the demo model (batch
independence with both RNG sources, img2img progress, the infotext and the schedule type)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, UniPCMultistepScheduler
from PIL import Image

from bot.parse import read_request
from engine.checks import check_request
from engine.demo.model import SCHEDULER_CONFIG
from engine.errors import InvalidRequest
from engine.generate import generate, infotext_for, noise_specs
from engine.infotext import request_from_infotext
from engine.request import GenerationRequest, Limits
from engine.sampling.denoiser import CFGDenoiser, NoiseSchedule
from engine.sampling.loop import make_scheduler, sample_img2img, sampler_sigmas
from engine.sampling.samplers import SAMPLERS, canonical_sampler, infotext_sampler, run_row
from engine.sampling.steps import img2img_total_steps, planned_steps, total_steps
from engine.sampling.timesteps import ddim_timesteps, sample_ddim, sample_plms
from engine.sampling.unipc import sample_unipc
from tests.conftest import png_pixels
from tests.sampling.test_prompt_editing_samplers import spy_on_editing

SCHEDULE = NoiseSchedule.from_config(SCHEDULER_CONFIG)
DOWNCAST = NoiseSchedule.from_config(SCHEDULER_CONFIG, downcast=True)  # fp16 ᾱ
V_SCHEDULE = NoiseSchedule.from_config({**SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
LATENT = (4, 8, 8)
SCALE = 5.0


def unet(x_in: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in UNet (not exact, so every multistep term matters): its output depends
    on the latents, the (fractional) timestep and the text, so CFG and prompt editing do too."""
    s = (t / 1000).view(-1, 1, 1, 1)
    text = ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return torch.tanh(x_in) * (0.6 + 0.3 * s) + 0.05 * x_in * s + 0.1 * text


def denoiser(schedule: NoiseSchedule = SCHEDULE, calls: list[int] | None = None) -> CFGDenoiser:
    cond, uncond = torch.ones(2, 77, 8), torch.zeros(2, 77, 8)

    def cond_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if calls is not None:
            calls.append(step)
        return cond * (1 + step % 3), uncond

    return CFGDenoiser(unet, schedule, cond_at, SCALE, dtype=torch.float32)


def first_noise() -> torch.Tensor:
    return torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(1))


def a1111_model(model: CFGDenoiser) -> Any:
    """A1111's `model(x, t)` for the timesteps loops: `CFGDenoiserTimesteps` at t (B,), ε."""
    return lambda x, t: model.eps_at(x, float(t[0]))


# --- references transcribed from A1111 v1.9.4 `sd_samplers_timesteps_impl.py` ------------------


def a1111_ddim_or_plms(model: Any, x: Any, timesteps: Any, plms: bool) -> tuple[Any, list[Any]]:
    """`ddim` (eta 0: σ_t = 0, its `randn_like` noise times 0 left out) and `plms`, step by step,
    with `model.schedule.alphas_cumprod` for `inner_model.inner_model.alphas_cumprod`."""
    call = a1111_model(model)
    alphas_cumprod = model.schedule.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(
        torch.float64
    )
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    s_in = x.new_ones([x.shape[0]])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps: list[Any] = []
    seen = []

    def get_x_prev_and_pred_x0(x: Any, e_t: Any, index: int) -> tuple[Any, Any]:
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev).sqrt() * e_t
        return a_prev.sqrt() * pred_x0 + dir_xt, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = call(x, ts)
        if not plms:
            e_t_prime = e_t
        elif len(old_eps) == 0:
            x_prev, pred_x0 = get_x_prev_and_pred_x0(x, e_t, index)
            e_t_next = call(x_prev, t_next)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev, pred_x0 = get_x_prev_and_pred_x0(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
        seen.append((i, pred_x0))
    return x, seen


# --- UniPC: A1111 `unipc` + `UniPCCFG` over the authors' code (uni_pc.py), defaults only --------


def interpolate_fn(x: Any, xp: Any, yp: Any) -> Any:
    """uni_pc.py `interpolate_fn`."""
    n, k = x.shape[0], xp.shape[1]
    all_x = torch.cat([x.unsqueeze(2), xp.unsqueeze(0).repeat((n, 1, 1))], dim=2)
    sorted_all_x, x_indices = torch.sort(all_x, dim=2)
    x_idx = torch.argmin(x_indices, dim=2)
    cand_start_idx = x_idx - 1
    start_idx = torch.where(
        torch.eq(x_idx, 0),
        torch.tensor(1, device=x.device),
        torch.where(torch.eq(x_idx, k), torch.tensor(k - 2, device=x.device), cand_start_idx),
    )
    end_idx = torch.where(torch.eq(start_idx, cand_start_idx), start_idx + 2, start_idx + 1)
    start_x = torch.gather(sorted_all_x, dim=2, index=start_idx.unsqueeze(2)).squeeze(2)
    end_x = torch.gather(sorted_all_x, dim=2, index=end_idx.unsqueeze(2)).squeeze(2)
    start_idx2 = torch.where(
        torch.eq(x_idx, 0),
        torch.tensor(0, device=x.device),
        torch.where(torch.eq(x_idx, k), torch.tensor(k - 2, device=x.device), cand_start_idx),
    )
    y_positions_expanded = yp.unsqueeze(0).expand(n, -1, -1)
    start_y = torch.gather(y_positions_expanded, dim=2, index=start_idx2.unsqueeze(2)).squeeze(2)
    end_y = torch.gather(y_positions_expanded, dim=2, index=(start_idx2 + 1).unsqueeze(2)).squeeze(
        2
    )
    return start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)


class NoiseScheduleVP:
    """uni_pc.py `NoiseScheduleVP('discrete', alphas_cumprod=…)`."""

    def __init__(self, alphas_cumprod: Any) -> None:
        log_alphas = 0.5 * torch.log(alphas_cumprod)
        self.total_N = len(log_alphas)
        self.T = 1.0
        self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1)[1:].reshape((1, -1))
        self.log_alpha_array = log_alphas.reshape((1, -1))

    def marginal_log_mean_coeff(self, t: Any) -> Any:
        return interpolate_fn(
            t.reshape((-1, 1)), self.t_array.to(t.device), self.log_alpha_array.to(t.device)
        ).reshape(-1)

    def marginal_alpha(self, t: Any) -> Any:
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: Any) -> Any:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: Any) -> Any:
        log_mean_coeff = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean_coeff))
        return log_mean_coeff - log_std


def expand_dims(v: Any, dims: int) -> Any:
    return v[(...,) + (None,) * (dims - 1)]


def a1111_unipc(
    model: Any, x: Any, timesteps: Any, is_img2img: bool, variant: str = "bh1"
) -> tuple[Any, list[Any]]:
    """`unipc(model, x, timesteps, is_img2img=…)` with A1111's default options: `UniPC.sample`
    (multistep, order 3, time_uniform, lower_order_final), `multistep_uni_pc_bh_update`, and
    `UniPCCFG`'s model (t → (t - 1/N)·1000) and `after_update` callback (here: recorded)."""
    call = a1111_model(model)
    ns = NoiseScheduleVP(model.schedule.alphas_cumprod)
    seen: list[Any] = []

    def model_fn(x: Any, t: Any) -> Any:  # data_prediction_fn, no thresholding
        noise = call(x, (t - 1.0 / ns.total_N) * 1000.0)
        dims = x.dim()
        alpha_t, sigma_t = ns.marginal_alpha(t), ns.marginal_std(t)
        return (x - expand_dims(sigma_t, dims) * noise) / expand_dims(alpha_t, dims)

    def update(x: Any, model_prev_list: Any, t_prev_list: Any, t: Any, order: int,
               use_corrector: bool = True) -> Any:  # fmt: skip
        dims = x.dim()
        t_prev_0 = t_prev_list[-1]
        lambda_prev_0 = ns.marginal_lambda(t_prev_0)
        lambda_t = ns.marginal_lambda(t)
        model_prev_0 = model_prev_list[-1]
        sigma_prev_0, sigma_t = ns.marginal_std(t_prev_0), ns.marginal_std(t)
        log_alpha_t = ns.marginal_log_mean_coeff(t)
        alpha_t = torch.exp(log_alpha_t)
        h = lambda_t - lambda_prev_0
        rks = []
        D1s: Any = []
        for i in range(1, order):
            t_prev_i = t_prev_list[-(i + 1)]
            model_prev_i = model_prev_list[-(i + 1)]
            lambda_prev_i = ns.marginal_lambda(t_prev_i)
            rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
            rks.append(rk)
            D1s.append((model_prev_i - model_prev_0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks, device=x.device)
        R = []
        b = []
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = hh if variant == "bh1" else torch.expm1(hh)
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R = torch.stack(R)
        b = torch.tensor(b, device=x.device)
        use_predictor = len(D1s) > 0
        if len(D1s) > 0:
            D1s = torch.stack(D1s, dim=1)
            if order == 2:
                rhos_p = torch.tensor([0.5], device=b.device)
            else:
                rhos_p = torch.linalg.solve(R[:-1, :-1], b[:-1])
        else:
            D1s = None
        if use_corrector:
            if order == 1:
                rhos_c = torch.tensor([0.5], device=b.device)
            else:
                rhos_c = torch.linalg.solve(R, b)
        model_t = None
        x_t_ = (
            expand_dims(sigma_t / sigma_prev_0, dims) * x
            - expand_dims(alpha_t * h_phi_1, dims) * model_prev_0
        )
        pred_res = torch.einsum("k,bkchw->bchw", rhos_p, D1s) if use_predictor else 0
        x_t = x_t_ - expand_dims(alpha_t * B_h, dims) * pred_res
        if use_corrector:
            model_t = model_fn(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], D1s) if D1s is not None else 0
            D1_t = model_t - model_prev_0
            x_t = x_t_ - expand_dims(alpha_t * B_h, dims) * (corr_res + rhos_c[-1] * D1_t)
        return x_t, model_t

    steps, order = len(timesteps), 3
    t_start = timesteps[-1] / 1000 + 1 / 1000 if is_img2img else None
    t_0 = 1.0 / ns.total_N
    t_T = ns.T if t_start is None else t_start
    assert steps >= order, "UniPC order must be < sampling steps"
    times = torch.linspace(t_T, t_0, steps + 1).to(x.device)
    vec_t = times[0].expand(x.shape[0])
    model_prev_list = [model_fn(x, vec_t)]
    t_prev_list = [vec_t]
    for init_order in range(1, order):
        vec_t = times[init_order].expand(x.shape[0])
        x, model_x = update(x, model_prev_list, t_prev_list, vec_t, init_order)
        seen.append((len(seen), model_x))
        model_prev_list.append(model_x)
        t_prev_list.append(vec_t)
    for step in range(order, steps + 1):
        vec_t = times[step].expand(x.shape[0])
        step_order = min(order, steps + 1 - step)
        use_corrector = step != steps
        x, model_x = update(x, model_prev_list, t_prev_list, vec_t, step_order, use_corrector)
        seen.append((len(seen), model_x))
        for i in range(order - 1):
            t_prev_list[i] = t_prev_list[i + 1]
            model_prev_list[i] = model_prev_list[i + 1]
        t_prev_list[-1] = vec_t
        if step < steps:
            model_prev_list[-1] = model_x
    return x, seen


# --- our loops against the transcriptions: equal bit for bit -----------------------------------


def run_ours(loop: Any, schedule: NoiseSchedule, x: torch.Tensor, timesteps: torch.Tensor,
             **kwargs: Any) -> tuple[torch.Tensor, list[Any], list[int]]:  # fmt: skip
    calls: list[int] = []
    seen: list[Any] = []
    out = loop(
        denoiser(schedule, calls), x, timesteps, lambda s, n: pytest.fail("no noise"),
        lambda i, x, d: seen.append((i, d)), **kwargs,
    )  # fmt: skip
    return out, seen, calls


SCHEDULES = {"fp32": SCHEDULE, "downcast": DOWNCAST, "v": V_SCHEDULE}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("steps", [2, 7, 20])
@pytest.mark.parametrize("loop", ["ddim", "plms"])
def test_ddim_and_plms_are_a1111s(loop: str, steps: int, schedule: str) -> None:
    sched, x = SCHEDULES[schedule], first_noise()
    timesteps = ddim_timesteps(steps)
    ours, seen, calls = run_ours(sample_plms if loop == "plms" else sample_ddim, sched, x,
                                 timesteps)  # fmt: skip
    ref, ref_seen = a1111_ddim_or_plms(denoiser(sched), x, timesteps, plms=loop == "plms")
    assert ours.abs().max() > 0.1 and torch.equal(ours, ref)
    assert [i for i, _ in seen] == [i for i, _ in ref_seen] == list(range(len(timesteps) - 1))
    assert all(torch.equal(d, r) for (_, d), (_, r) in zip(seen, ref_seen, strict=True))
    # PLMS's first step asks the model twice (A1111's CFGDenoiser counts both for editing).
    assert calls == list(range(len(timesteps) - 1 + (loop == "plms")))


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize(("steps", "t_enc"), [(3, None), (10, None), (26, None), (20, 7)])
def test_unipc_is_a1111s(steps: int, t_enc: int | None, schedule: str) -> None:
    sched, x = SCHEDULES[schedule], first_noise()
    timesteps = ddim_timesteps(steps)
    if t_enc is not None:  # img2img: the cut timesteps, UniPC starting just above the last
        timesteps = timesteps[:t_enc]
    img2img = t_enc is not None
    ours, seen, calls = run_ours(sample_unipc, sched, x, timesteps, img2img=img2img)
    ref, ref_seen = a1111_unipc(denoiser(sched), x, timesteps, img2img)
    assert ours.abs().max() > 0.1 and torch.equal(ours, ref)
    # One callback a timestep; the denoised is that step's model x0 (A1111's last is None).
    n = len(timesteps)
    assert [i for i, _ in seen] == [i for i, _ in ref_seen] == list(range(n))
    for (_, d), (_, r) in zip(seen[:-1], ref_seen[:-1], strict=True):
        assert torch.equal(d, r)
    assert ref_seen[-1][1] is None and torch.equal(seen[-1][1], seen[-2][1])
    assert calls == list(range(n))  # N model calls: one at the start, none at the last step


def test_unipc_bh2_is_the_authors() -> None:
    x, timesteps = first_noise(), ddim_timesteps(8)
    ours, _, _ = run_ours(sample_unipc, SCHEDULE, x, timesteps, variant="bh2")
    ref, _ = a1111_unipc(denoiser(), x, timesteps, False, variant="bh2")
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, run_ours(sample_unipc, SCHEDULE, x, timesteps)[0])


def test_v_prediction_is_converted_at_the_whole_timestep_below() -> None:
    """A1111 `CompVisTimestepsVDenoiser.predict_eps_from_z_and_v`: √ᾱ[t.to(int)]·v +
    √(1 - ᾱ)[t.to(int)]·x, so UniPC's fractional timesteps use the whole one below."""
    x = first_noise()
    for t in (961.6, 37.0, 0.4):
        model = denoiser(V_SCHEDULE)
        cond, uncond = model.cond_at(0)
        ac, whole = V_SCHEDULE.alphas_cumprod, torch.tensor([t, t]).to(torch.int)
        t_in = torch.full((4,), t)
        v = unet(torch.cat([x, x]), t_in, torch.cat([cond, uncond]))
        eps = torch.sqrt(ac)[whole.repeat(2), None, None, None] * v
        eps = eps + torch.sqrt(1 - ac)[whole.repeat(2), None, None, None] * torch.cat([x, x])
        eps_cond, eps_uncond = eps.chunk(2)
        want = eps_uncond + (eps_cond - eps_uncond) * SCALE
        assert torch.equal(model.eps_at(x, t), want)


# --- diffusers' schedulers: the same methods, other arithmetic ---------------------------------


def test_plms_matches_diffusers_pndm() -> None:
    """diffusers' PNDM with `skip_prk_steps` is the same PLMS (crowsonkb's, as A1111's): the
    same timesteps where 1000 // steps divides them out (20 here), the same model calls (the
    second timestep twice, for the improved Euler start) and the same ε; its step is the PNDM
    paper's formula (9) rather than the DDIM form, equal up to float rounding (2e-5 here, on
    latents up to 46). diffusers then takes one step more, from t = 1 to ᾱ_0, which A1111
    does not (A1111 stops at t = 1, as its DDIM does): that step moves them by 2e-2."""
    steps, x = 20, first_noise()
    ours, _, _ = run_ours(sample_plms, SCHEDULE, x, ddim_timesteps(steps))
    scheduler = make_scheduler("PLMS", SCHEDULER_CONFIG)
    assert isinstance(scheduler, PNDMScheduler)
    scheduler.set_timesteps(steps)
    theirs, model = [x], denoiser()  # the same model calls in the same order: the same editing
    for t in scheduler.timesteps:
        eps = model.eps_at(theirs[-1], float(t))
        theirs.append(scheduler.step(eps, t, theirs[-1]).prev_sample)
    assert scheduler.timesteps.tolist()[:3] == [951, 901, 901] and len(theirs) == steps + 2
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs[-2], atol=5e-5, rtol=5e-5)
    # Where 1000 // steps leaves a remainder, A1111 has more timesteps than diffusers: at 7
    # steps A1111 starts at 995 (timesteps 1, 143, … 995), diffusers at 853.
    assert ddim_timesteps(7).tolist()[-2:] == [853, 995] and total_steps(SAMPLERS["PLMS"], 7) == 7
    scheduler.set_timesteps(7)
    assert scheduler.timesteps.max() == 853


def test_unipc_matches_diffusers_where_its_timesteps_are_whole() -> None:
    """diffusers' UniPC (bh1, order 3, lower order final, x0 prediction) works on whole
    timesteps and ᾱ's float32 cumprod; A1111's UniPC on continuous t. At 26 steps A1111's 27
    timesteps make UniPC's t = linspace(1, 1/1000, 28), the UNet's (t - 1/1000)·1000 = 999 -
    37k: whole, diffusers' "linspace" spacing, down to ᾱ_0 ("sigma_min"). There the two agree
    to float rounding (6e-5 on latents up to 46); elsewhere diffusers rounds the UNet's
    timesteps (899.1 → 899 at 10 steps, where the results differ by 5e-3, 20 steps 7e-3)."""
    x = first_noise()
    timesteps = ddim_timesteps(26)
    assert len(timesteps) == 27
    ours, _, _ = run_ours(sample_unipc, SCHEDULE, x, timesteps)
    scheduler = make_scheduler("UniPC", SCHEDULER_CONFIG)
    assert isinstance(scheduler, UniPCMultistepScheduler)
    scheduler.set_timesteps(27)
    assert scheduler.timesteps.tolist() == [999 - 37 * k for k in range(27)]
    theirs, model = x, denoiser()  # the same model calls in the same order: the same editing
    for t in scheduler.timesteps:
        theirs = scheduler.step(model.eps_at(theirs, float(t)), t, theirs).prev_sample
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


# --- the rows, their steps and the door ----------------------------------------------------------


def test_the_rows_are_a1111s() -> None:
    for name, alias, loop in (
        ("DDIM", "ddim", "sample_ddim"),
        ("PLMS", "plms", "sample_plms"),
        ("UniPC", "unipc", "sample_unipc"),
    ):
        row = SAMPLERS[name]
        assert canonical_sampler(alias) == name and row.function == loop
        assert row.timesteps and row.noise == "none" and not row.uses_ensd
        assert row.conditioning_steps == 1  # no "second_order": editing over `steps`
        # A1111's timesteps samplers never read the schedule type; the infotext names it.
        assert run_row(name, "Karras") == row
        assert infotext_sampler(name, None) == (name, "Automatic")
        assert infotext_sampler(name, "Karras") == (name, "Karras")
        assert torch.equal(sampler_sigmas(row, SCHEDULE, 20), ddim_timesteps(20))


@pytest.mark.parametrize("steps", [1, 3, 7, 20, 26, 60])
def test_step_counts_are_a1111s(steps: int) -> None:
    """Callbacks: DDIM and PLMS one per timestep but the first, UniPC one per timestep (A1111
    `UniPC.sample` with `steps=len(timesteps)`); img2img the cut `timesteps[:t_enc]`."""
    n = len(ddim_timesteps(steps))
    assert total_steps(SAMPLERS["DDIM"], steps) == total_steps(SAMPLERS["PLMS"], steps) == n - 1
    assert total_steps(SAMPLERS["UniPC"], steps) == n
    t_enc = int(0.5 * steps)
    assert img2img_total_steps(SAMPLERS["PLMS"], steps, 0.5) == max(t_enc - 1, 0)
    assert img2img_total_steps(SAMPLERS["UniPC"], steps, 0.5) == t_enc


@pytest.mark.parametrize(
    ("changes", "short"),
    [
        ({"num_inference_steps": 2}, 2),
        ({"num_inference_steps": 3}, None),  # 4 timesteps
        ({"init_image": "x.png", "denoising_strength": 0.5}, 2),  # t_enc = 2
        ({"init_image": "x.png", "denoising_strength": 0.75}, None),  # t_enc = 3
        ({"enable_hr": True, "hr_second_pass_steps": 3}, 2),  # the hires pass: 3 - 1
        ({"enable_hr": True, "hr_second_pass_steps": 3, "denoising_strength": 0.0}, None),
    ],
)
def test_the_door_refuses_unipc_with_fewer_steps_than_its_order(
    changes: dict[str, Any], short: int | None
) -> None:
    """A1111 asserts "UniPC order must be < sampling steps" (order 3): we refuse at the door."""
    base = GenerationRequest(
        prompt="1girl", sampler="UniPC", num_inference_steps=4, width=256, height=256
    )
    request = dataclasses.replace(base, **changes)
    if short is None:
        check_request(request, Limits())
        return
    with pytest.raises(InvalidRequest, match="UniPC runs at least 3 steps") as caught:
        check_request(request, Limits())
    assert caught.value.key == "unipc_steps" and caught.value.params["steps"] == short
    check_request(dataclasses.replace(request, sampler="PLMS"), Limits())  # PLMS runs


def test_img2img_noises_to_the_timestep_above_and_unipc_starts_below_it() -> None:
    """A1111 `CompVisSampler.sample_img2img`: xi = x·√ᾱ + noise·√(1 - ᾱ) at timesteps[t_enc];
    DDIM and PLMS then run `timesteps[:t_enc]`, UniPC t_enc steps from timesteps[t_enc - 1]."""
    init, noise = first_noise() * 0.5, first_noise().flip(0)
    timesteps = ddim_timesteps(20)
    a = SCHEDULE.alphas_cumprod[timesteps[10]]
    xi = init * torch.sqrt(a) + noise * torch.sqrt(1 - a)
    for name, loop, kwargs in (
        ("PLMS", sample_plms, {}),
        ("UniPC", sample_unipc, {"img2img": True}),
    ):
        seen: list[int] = []
        ours = sample_img2img(
            SAMPLERS[name], denoiser(), init, noise, 20, 0.5,
            lambda s, n: pytest.fail("no noise"), lambda i, x, d, seen=seen: seen.append(i),
        )  # fmt: skip
        ref, ref_seen, _ = run_ours(loop, SCHEDULE, xi, timesteps[:10], **kwargs)
        assert torch.equal(ours, ref)
        assert len(seen) == len(ref_seen) == img2img_total_steps(SAMPLERS[name], 20, 0.5)


# --- end to end on the demo model ----------------------------------------------------------------

pipeline_tests = pytest.mark.slow


def request_for(text: str) -> GenerationRequest:
    return check_request(read_request(text).request, Limits())


@pipeline_tests
@pytest.mark.parametrize("sampler", ["plms", "unipc"])
def test_batch_mates_rng_sources_and_prompt_editing(
    demo_model: Any, monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    """Each image of a batch is what it is alone (CPU and NV noise; no noise while sampling).
    Prompt editing: A1111's CFGDenoiser asks for the conditioning at its call count over a
    schedule for the request's steps (no multiplier). At 4 steps (4 timesteps) both make 4
    calls, PLMS's first step two of them, so `[cat:dog:0.5]` is cat through call 2, then dog.
    """
    seen, asked = spy_on_editing(monkeypatch)
    request = request_for(
        f"[cat:dog:0.5], 1girl --sampler {sampler} --steps 4 --seed 5 --size 64x64"
    )
    one = dataclasses.replace(request, rng="NV")
    other = dataclasses.replace(request, prompt="1boy, frown", seed=77, rng="CPU")
    together = generate(demo_model, [one, other], limits=Limits())
    assert seen["steps"] == 4 and asked == [0, 1, 2, 3]
    for req, result in zip([one, other], together, strict=True):
        solo = generate(demo_model, [req], limits=Limits())[0]
        assert np.abs(png_pixels(solo.png) - png_pixels(result.png)).max() <= 1
    assert np.abs(png_pixels(together[0].png) - png_pixels(together[1].png)).max() > 10


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> str:
    ramp = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    path = Path(tmp_path_factory.mktemp("timesteps")) / "init.png"
    Image.fromarray(ramp).save(path)
    return str(path)


@pipeline_tests
@pytest.mark.parametrize(("sampler", "steps"), [("PLMS", 3), ("UniPC", 4)])
def test_img2img_progress_counts_a1111s_steps(
    demo_model: Any, picture: str, sampler: str, steps: int
) -> None:
    """At strength 0.5 of 8 steps A1111 cuts the timesteps to t_enc = 4: PLMS runs 3 steps
    of them, UniPC 4 of its own."""
    request = GenerationRequest(
        prompt="1girl", width=64, height=64, num_inference_steps=8, seed=3, sampler=sampler,
        init_image=picture, denoising_strength=0.5,
    )  # fmt: skip
    seen: list[tuple[int, int]] = []
    generate(demo_model, [request], limits=Limits(), on_step=lambda s, t, d: seen.append((s, t)))
    assert planned_steps(request) == steps
    assert seen == [(i, steps) for i in range(1, steps + 1)]


@pipeline_tests
def test_infotext_round_trip_and_the_ignored_schedule_type(demo_model: Any) -> None:
    request = request_for("1girl, smile --sampler plms --steps 4 --seed 9 --size 64x64")
    assert (request.sampler, request.schedule_type) == ("PLMS", None)
    request = dataclasses.replace(request, rng="CPU")
    text = infotext_for(request, noise_specs(request)[0], demo_model)
    assert "Sampler: PLMS, Schedule type: Automatic, CFG scale" in text and "ENSD" not in text
    # The same request back: "Automatic" as written, and no ENSD (PLMS draws no noise); an
    # infotext's prompt holds the quality tags as text, not as the chat's presets.
    again = check_request(request_from_infotext(text), Limits())
    assert again == dataclasses.replace(
        request, schedule_type="Automatic", ensd=0, preset_quality=False, preset_negative=None
    )
    assert run_row(again.sampler or "", again.schedule_type) == SAMPLERS["PLMS"]
    first = generate(demo_model, [again], limits=Limits())[0]
    assert first.infotext == text
    # Karras is accepted, written back, and changes nothing (A1111 never reads it).
    karras = request_for(text.replace("Schedule type: Automatic", "Schedule type: Karras"))
    assert (karras.sampler, karras.schedule_type) == ("PLMS", "Karras")
    drawn = generate(demo_model, [karras], limits=Limits())[0]
    assert "Sampler: PLMS, Schedule type: Karras, CFG scale" in drawn.infotext
    assert np.array_equal(png_pixels(drawn.png), png_pixels(first.png))
