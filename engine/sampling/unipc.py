"""UniPC as A1111 v1.9.4 runs it (`sd_samplers_timesteps_impl.unipc` over its copy of the
authors' code, `modules/models/diffusion/uni_pc/uni_pc.py`): Zhao et al. 2023, "UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models", multistep, data
prediction, with A1111's default options (`uni_pc_variant` bh1, `uni_pc_skip_type`
time_uniform, `uni_pc_order` 3, `uni_pc_lower_order_final` on).

A1111 takes only the number of its timesteps (`CompVisSampler.get_timesteps`) and, for img2img,
where the last one is: UniPC makes its own, uniform in continuous time t ∈ [1/N, 1] over the
discrete schedule (t_n = (n + 1) / N, log α piecewise linear in t), and the UNet is given
(t - 1/N)·1000, a fractional timestep. Every operation is A1111's, in A1111's dtypes and on
the latents' device, so the latents are A1111's bit for bit.
"""

from __future__ import annotations

from typing import Literal

import torch

from engine.sampling.denoiser import CFGDenoiser, NoiseSampler, StepCallback, Tensor
from engine.sampling.steps import UNIPC_ORDER


def _interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """The authors' `interpolate_fn`: f(x) piecewise linear through (xp, fp), the end segments
    extended; x (N, 1), xp and fp (1, K). x's segment is found by sorting it among xp, as
    theirs is, so a tie with a keypoint falls where that sort puts it."""
    k = xp.shape[1]
    keys = torch.cat([x.unsqueeze(2), xp.unsqueeze(0).repeat((x.shape[0], 1, 1))], dim=2)
    place = torch.argmin(torch.sort(keys, dim=2).indices, dim=2)  # keypoints sorted before x
    low = (place - 1).clamp(0, k - 2)
    x0, x1, y0, y1 = xp[0][low], xp[0][low + 1], fp[0][low], fp[0][low + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class VPSchedule:
    """The authors' `NoiseScheduleVP('discrete', alphas_cumprod=…)`: log α_t = ½ log ᾱ at
    t_n = (n + 1) / N, linear in between; σ_t = √(1 - α_t²), λ_t = log α_t - log σ_t."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.total_n = len(alphas_cumprod)
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1)[1:].reshape((1, -1))
        self.log_alpha_array = (0.5 * torch.log(alphas_cumprod)).reshape((1, -1))

    def log_alpha(self, t: Tensor) -> Tensor:
        xp, fp = self.t_array.to(t.device), self.log_alpha_array.to(t.device)
        return _interpolate(t.reshape((-1, 1)), xp, fp).reshape(-1)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t: Tensor) -> Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _per_image(v: Tensor) -> Tensor:
    """(B,) → (B, 1, 1, 1), to scale each image's latents."""
    return v[:, None, None, None]


class _UniPC:
    """The model as UniPC sees it (its data prediction at continuous t) and the B(h) update."""

    def __init__(
        self, model: CFGDenoiser, variant: Literal["bh1", "bh2"], callback: StepCallback
    ) -> None:
        self.model, self.variant, self.callback = model, variant, callback
        self.ns = VPSchedule(model.schedule.alphas_cumprod)
        self.index = 0

    def data_prediction(self, x: Tensor, t: Tensor) -> Tensor:
        """x0 from the guided ε at the UNet timestep (t - 1/N)·1000 (A1111 `UniPCCFG.model`)."""
        t_input = (t - 1.0 / self.ns.total_n) * 1000.0
        eps = self.model.eps_at(x, float(t_input[0]))
        return (x - _per_image(self.ns.sigma(t)) * eps) / _per_image(self.ns.alpha(t))

    def after_update(self, x: Tensor, model_x: Tensor) -> None:
        self.callback(self.index, x, model_x)
        self.index += 1

    def update(
        self,
        x: Tensor,
        model_prev: list[Tensor],
        t_prev: list[Tensor],
        t: Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """One multistep UniP step of `order` to t from the last `order` points, then (with
        `use_corrector`) the model at the predicted x and the UniC correction with it; returns
        (x at t, the model there or None). The authors' `multistep_uni_pc_bh_update`."""
        ns = self.ns
        t_prev_0, model_prev_0 = t_prev[-1], model_prev[-1]
        lambda_prev_0, lambda_t = ns.lambda_(t_prev_0), ns.lambda_(t)
        sigma_prev_0, sigma_t = ns.sigma(t_prev_0), ns.sigma(t)
        alpha_t = torch.exp(ns.log_alpha(t))
        h = lambda_t - lambda_prev_0

        rks: list[Tensor | float] = []
        d1s_list: list[Tensor] = []
        for i in range(1, order):
            rk = ((ns.lambda_(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s_list.append((model_prev[-(i + 1)] - model_prev_0) / rk)
        rks.append(1.0)
        rks_t = torch.tensor(rks, device=x.device)

        hh = -h[0]  # data prediction
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        powers, coefficients = [], []
        factorial = 1
        for i in range(1, order + 1):
            powers.append(torch.pow(rks_t, i - 1))
            coefficients.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r = torch.stack(powers)
        b = torch.tensor(coefficients, device=x.device)

        x_t_ = _per_image(sigma_t / sigma_prev_0) * x - _per_image(alpha_t * h_phi_1) * model_prev_0
        d1s = torch.stack(d1s_list, dim=1) if d1s_list else None
        x_t = x_t_
        if d1s is not None:  # the predictor's higher-order terms (order 2: ρ = ½)
            rhos_p = (
                torch.tensor([0.5], device=x.device)
                if order == 2
                else torch.linalg.solve(r[:-1, :-1], b[:-1])
            )
            x_t = x_t_ - _per_image(alpha_t * b_h) * torch.einsum("k,bkchw->bchw", rhos_p, d1s)
        if not use_corrector:
            return x_t, None
        model_t = self.data_prediction(x_t, t)
        rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(r, b)
        d1_t = model_t - model_prev_0
        if d1s is not None:
            correction = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1s) + rhos_c[-1] * d1_t
        else:
            correction = rhos_c[-1] * d1_t
        return x_t_ - _per_image(alpha_t * b_h) * correction, model_t


def sample_unipc(
    model: CFGDenoiser,
    x: Tensor,
    timesteps: Tensor,
    noise: NoiseSampler,
    callback: StepCallback,
    *,
    img2img: bool = False,
    order: int = UNIPC_ORDER,
    variant: Literal["bh1", "bh2"] = "bh1",
    lower_order_final: bool = True,
) -> Tensor:
    """A1111 `sd_samplers_timesteps_impl.unipc` → `UniPC.sample(method="multistep")`:
    N = len(timesteps) steps over t = linspace(t_T, 1/1000, N + 1), from t_T = 1 (txt2img)
    or just above the last timestep given (img2img: `timesteps[-1]/1000 + 1/1000`, "likely off
    by a bit", A1111 says); ValueError for fewer than `order` steps (A1111 asserts).

    UniPC's warm-up takes orders 1 … order-1, then `order` until the last steps, which go down
    to 1 (`lower_order_final`). Every step but the last calls the model once, at the predicted
    x, for the corrector and the next step; the first point takes one more call, so N model
    calls in all. The callback gets each step's x and that model's x0 prediction (the last
    step, which makes none, the one before's; A1111 passes None).
    """
    steps = len(timesteps)
    if steps < order:
        raise ValueError(f"UniPC of order {order} needs at least {order} steps, got {steps}")
    solver = _UniPC(model, variant, callback)
    t_start = 1.0
    if img2img:
        t_start = float(timesteps[-1] / 1000 + 1 / 1000)
    times = torch.linspace(t_start, 1.0 / solver.ns.total_n, steps + 1).to(x.device)

    vec_t = times[0].expand(x.shape[0])
    model_prev = [solver.data_prediction(x, vec_t)]
    t_prev = [vec_t]
    for warm_order in range(1, order):  # lower orders while the history fills
        vec_t = times[warm_order].expand(x.shape[0])
        x, model_x = solver.update(x, model_prev, t_prev, vec_t, warm_order, use_corrector=True)
        assert model_x is not None
        solver.after_update(x, model_x)
        model_prev.append(model_x)
        t_prev.append(vec_t)
    for step in range(order, steps + 1):
        vec_t = times[step].expand(x.shape[0])
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = solver.update(
            x, model_prev, t_prev, vec_t, step_order, use_corrector=step < steps
        )
        solver.after_update(x, model_prev[-1] if model_x is None else model_x)
        t_prev = [*t_prev[1:], vec_t]
        if model_x is not None:  # the last step needs no model call
            model_prev = [*model_prev[1:], model_x]
    return x
