"""Train the demo model on the CPU: `make train-demo` (`python -m engine.demo.training`).

1. Draw `images` pictures with `engine.demo.data` (reproducible from the seed).
2. Train the VAE (AutoencoderKL) on 64x64 crops: L1 reconstruction plus a small KL term.
3. Encode every picture once; the latents' spread sets the VAE's `scaling_factor`.
4. Train the UNet and the CLIP text encoder together on noised latents (SD's DDPM schedule,
   epsilon prediction, min-SNR weighting, extra weight on the mouth so that expressions are
   learned). Captions go through the engine's own prompt encoder (75-token chunks, clip skip
   2, as drawing does); a share of them is swapped for an unconditional caption so that
   guidance scale and negative prompts work.
5. Save the EMA weights in fp16 to `engine/demo/weights/` with the training log.

`--resume DIR` continues from weights written earlier (`RESUME_PLAN`): the VAE is kept as it
is (steps 2 and 3 keep its scaling factor), and the UNet and text encoder train on.
The same seed and thread count give the same weights; other thread counts round differently.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from numpy.typing import NDArray
from transformers import CLIPTextConfig, CLIPTextModel

from engine.demo import data as demo_data
from engine.demo.model import (
    TRAINED_SCHEDULER,
    TRAINED_TEXT_CONFIG,
    TRAINED_UNET_CONFIG,
    TRAINED_VAE_CONFIG,
    WEIGHTS_DIR,
    load_weights,
    picture_tensor,
    save_weights,
    vae_input,
)
from engine.prompting.conditioning import encode_prompts
from engine.prompting.tokenizer import build_tokenizer

log = logging.getLogger("train-demo")
FINAL_NORM_BIAS = -0.5
LATENT_SIZE = demo_data.SIZE // 8


@dataclass(frozen=True)
class Plan:
    seed: int = 0
    images: int = 12_000
    vae_steps: int = 3_000
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6  # on the latents' squared mean: keeps them from drifting large
    unet_steps: int = 2_500
    unet_batch: int = 64
    unet_lr: float = 6e-4
    warmup: int = 100
    uncond: float = 0.12  # share of captions replaced by an unconditional one (CFG dropout)
    min_snr_gamma: float = 5.0
    # Extra loss weight where the mouth is: smile vs frown is a few latent pixels, too small a
    # share of the plain loss to be bound to its word. The weight is relative at every noise
    # level, so the mouth never crowds out the colours (a run that gave the mouth a fixed
    # minimum weight at high noise learned the mouths and lost the hair colours).
    mouth_weight: float = 4.0
    # Extra loss weight on the pixels (share of each latent pixel) that show the hair and the
    # background, where the colours that a prompt names must land.
    hair_weight: float = 0.0
    background_weight: float = 0.0
    ema: float = 0.998
    clip_skip: int = 2
    log_every: int = 50


# The parts after the first go on from the previous part's weights on new pictures, with the
# loss weighted where the named colours land. The second part (on 87c9507's weights) was
# RESUME_PLAN with seed=1, unet_steps=1_000, background_weight=1.0; the third (on the second's,
# 3d38041), the shipped one, is `make train-demo`:
RESUME_PLAN = Plan(
    seed=2, unet_steps=2_000, unet_lr=3e-4, warmup=50, hair_weight=3.0, background_weight=3.0
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the weights go")
    parser.add_argument(
        "--resume", type=Path, help="continue from the weights in this folder (RESUME_PLAN)"
    )
    for field in dataclasses.fields(Plan):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default))
    args = parser.parse_args(argv)
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(Plan)}
    base = RESUME_PLAN if args.resume else Plan()
    plan = dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
    args.out.mkdir(parents=True, exist_ok=True)
    # The log replaces the old one only with the weights it describes: a stopped run leaves both.
    partial = args.out / "training-log.txt.partial"
    # A resumed run's log goes on from the log of the weights it resumed from: one file tells
    # how the weights were made, from the first step.
    earlier = args.resume / "training-log.txt" if args.resume else None
    partial.write_text(
        earlier.read_text(encoding="utf-8") if earlier and earlier.is_file() else "",
        encoding="utf-8",
    )
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stdout),
        logging.FileHandler(partial, mode="a", encoding="utf-8"),
    ]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        command = " ".join(["python -m engine.demo.training", *(argv or sys.argv[1:])])
        log.info("command: %s", command)
        log.info("plan: %s", json.dumps(dataclasses.asdict(plan)))
        log.info("torch %s, %d threads", torch.__version__, torch.get_num_threads())
        train(plan, args.out, resume=args.resume)
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
    partial.replace(args.out / "training-log.txt")
    return 0


def train(plan: Plan, out: Path, *, resume: Path | None = None) -> None:
    started = time.perf_counter()
    torch.manual_seed(plan.seed)
    rng = np.random.default_rng(plan.seed)
    characters = [demo_data.random_character(rng) for _ in range(plan.images)]
    drawings = (demo_data.draw(c) for c in characters)
    pictures, focus = _pictures_and_focus(plan, characters, drawings)
    log.info("drew %d pictures in %.0f s", len(characters), time.perf_counter() - started)

    if resume is None:
        vae = train_vae(plan, pictures, rng)
        latents, scaling = encode_all(vae, pictures)
        vae.register_to_config(scaling_factor=scaling)
        models = None
    else:
        unet, vae, text_encoder = load_weights(resume)
        log.info("resumed from %s", resume)
        latents, _ = encode_all(vae, pictures)
        scaling = float(vae.config.scaling_factor)  # the UNet learned latents at this scale
        models = (unet, text_encoder)
    log.info("latent scaling factor %.4f (%.0f s)", scaling, time.perf_counter() - started)

    unet, text_encoder = train_diffusion(plan, characters, latents * scaling, focus, rng, models)
    save_weights(out, unet=unet, vae=vae, text_encoder=text_encoder)
    log.info("saved to %s; total %.1f min", out, (time.perf_counter() - started) / 60)


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(plan: Plan, pictures: torch.Tensor, rng: np.random.Generator) -> AutoencoderKL:
    vae = AutoencoderKL(**TRAINED_VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    size, crop = pictures.shape[-1], plan.vae_crop
    window = _Average()
    for step in range(plan.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, plan.vae_steps, plan.vae_lr, plan.warmup)
        index = rng.integers(len(pictures), size=plan.vae_batch)
        top, left = (int(v) for v in rng.integers(0, size - crop + 1, size=2))
        x = vae_input(pictures[index, :, top : top + crop, left : left + crop])
        # Decode the posterior's mean: with SD's tiny KL weight its spread ends up negligible
        # anyway, and skipping the early noise makes training converge in minutes.
        mean = vae.encode(x).latent_dist.mean
        recon = vae.decode(mean).sample
        l1 = (recon - x).abs().mean()
        # Shapes come quickly, flat colours slowly (GroupNorm hides absolute levels): a second
        # L1 on 4x4 block means speaks for the colours alone.
        colour = (F.avg_pool2d(recon, 4) - F.avg_pool2d(x, 4)).abs().mean()
        loss = l1 + colour + plan.kl_weight * mean.pow(2).sum(dim=(1, 2, 3)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.add(float(l1.detach()))
        if (step + 1) % plan.log_every == 0 or step + 1 == plan.vae_steps:
            log.info("vae step %d/%d  L1 %.4f", step + 1, plan.vae_steps, window.take())
    return vae.eval()


@torch.no_grad()
def encode_all(vae: AutoencoderKL, pictures: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Every picture's latent (the posterior mean), and 1 / the latents' spread."""
    parts = []
    for chunk in pictures.split(64):  # type: ignore[no-untyped-call]
        parts.append(vae.encode(vae_input(chunk)).latent_dist.mean)
    latents = torch.cat(parts)
    return latents, float(1.0 / latents.std())


def train_diffusion(
    plan: Plan,
    characters: list[demo_data.Character],
    latents: torch.Tensor,
    focus: torch.Tensor,
    rng: np.random.Generator,
    models: tuple[UNet2DConditionModel, CLIPTextModel] | None = None,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """`latents`: (N, 4, 16, 16), each picture's scaled latent; `focus`: (N, 1, 16, 16), each
    latent pixel's loss weight; `models`: the UNet and text encoder to go on from, if any."""
    tokenizer = build_tokenizer()
    if models is None:
        unet = UNet2DConditionModel(**TRAINED_UNET_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TRAINED_TEXT_CONFIG))
    else:
        unet, text_encoder = models
        unet.train()
        text_encoder.train()
    vocabulary = training_vocabulary(tokenizer)
    with torch.no_grad():  # words never trained on stay at zero: they add nothing to a prompt
        table = text_encoder.get_input_embeddings().weight
        unused = torch.ones(len(table), dtype=torch.bool)
        unused[vocabulary] = False
        table[unused] = 0.0
        # Real CLIP's output has a clear nonzero mean, and A1111's "Original" emphasis divides by
        # the mean: one near zero would make `(word:1.4)` rescale the whole prompt at random.
        # So the final norm's bias (clip skip 2 goes through it too) is fixed at -0.5.
        norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        norm.bias.fill_(FINAL_NORM_BIAS)
        norm.bias.requires_grad_(False)
    params = [p for p in (*unet.parameters(), *text_encoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.unet_lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    alphas_cumprod = _alphas_cumprod()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = torch.clamp(snr, max=plan.min_snr_gamma) / snr
    window = _Average()
    started = time.perf_counter()
    for step in range(plan.unet_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, plan.unet_steps, plan.unet_lr, plan.warmup)
        index = rng.integers(len(characters), size=plan.unet_batch)
        captions = [
            demo_data.unconditional_caption(rng)
            if rng.random() < plan.uncond
            else demo_data.caption(characters[i], rng)
            for i in index
        ]
        z0 = latents[index]
        t = torch.randint(0, len(alphas_cumprod), (plan.unet_batch,))
        noise = torch.randn_like(z0)
        a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        context = encode_prompts(
            tokenizer, text_encoder, captions, clip_skip=plan.clip_skip, device=torch.device("cpu")
        )
        predicted = unet(noisy, t, encoder_hidden_states=context).sample
        error = F.mse_loss(predicted, noise, reduction="none")
        per_item = (error * focus[index]).mean(dim=(1, 2, 3))
        loss = (per_item * weights[t]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(plan.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, p in zip(ema, params, strict=True):
                shadow.lerp_(p, 1 - decay)
        window.add(float(error.mean().detach()))
        if (step + 1) % plan.log_every == 0 or step + 1 == plan.unet_steps:
            rate = (step + 1) / (time.perf_counter() - started)
            log.info(
                "unet step %d/%d  eps MSE %.4f  (%.2f steps/s)",
                step + 1,
                plan.unet_steps,
                window.take(),
                rate,
            )
    with torch.no_grad():
        for shadow, p in zip(ema, params, strict=True):
            p.copy_(shadow)
    return unet.eval(), text_encoder.eval()


def _pictures_and_focus(
    plan: Plan, characters: list[demo_data.Character], drawings: Iterable[demo_data.Drawing]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pictures (uint8, compact) and each latent pixel's loss weight (N, 1, 16, 16): 1, plus
    `mouth_weight` where any expression's mouth can be, plus `hair_weight` and
    `background_weight` times the share of the latent pixel that shows hair or background."""
    images, parts = [], []
    for drawing in drawings:
        images.append(drawing.image)
        hair = _latent_share(drawing.mask("front hair", "back hair"))
        background = _latent_share(drawing.mask("background"))
        parts.append(plan.hair_weight * hair + plan.background_weight * background)
    mouths = torch.from_numpy(np.stack([demo_data.expression_region(c) for c in characters]))
    mouth = F.adaptive_max_pool2d(mouths.float().unsqueeze(1), LATENT_SIZE)  # any pixel counts
    focus = 1.0 + plan.mouth_weight * mouth
    if plan.hair_weight or plan.background_weight:
        focus = focus + torch.from_numpy(np.stack(parts)).float().unsqueeze(1)
    return picture_tensor(images), focus


def _latent_share(mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    """(16, 16): the share of each latent pixel's 8x8 block that `mask` covers."""
    blocks = mask.reshape(LATENT_SIZE, 8, LATENT_SIZE, 8)
    share: NDArray[np.float32] = blocks.mean(axis=(1, 3), dtype=np.float32)
    return share


def training_vocabulary(tokenizer: object) -> list[int]:
    """Token ids of every word a training caption can hold (plus BOS/EOS and the comma)."""
    ids: set[int] = set()
    for word in {",", *demo_data.caption_words()}:
        ids.update(tokenizer(word)["input_ids"])  # type: ignore[operator]
    return sorted(ids)


def _alphas_cumprod() -> torch.Tensor:
    s = TRAINED_SCHEDULER
    betas = (
        torch.linspace(
            s["beta_start"] ** 0.5,
            s["beta_end"] ** 0.5,
            s["num_train_timesteps"],
            dtype=torch.float64,
        )
        ** 2
    )
    return torch.cumprod(1 - betas, dim=0).float()


class _Average:
    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, value: float) -> None:
        self.values.append(value)

    def take(self) -> float:
        mean = sum(self.values) / max(1, len(self.values))
        self.values = []
        return mean


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    raise SystemExit(main())
