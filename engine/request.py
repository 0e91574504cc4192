"""What a user asks for (GenerationRequest), what they get (GenerationResult), and the limits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One text-to-image job as the user asked for it.

    Fields use diffusers' `__call__` names. `None` means "the model's default" (see
    `RequestDefaults`); `GenerationResult.request` always holds the resolved values.

    Args:
        prompt: the positive prompt, in A1111 syntax.
        negative_prompt: the negative prompt ("undesired content").
        width: image width in pixels, a multiple of 8.
        height: image height in pixels, a multiple of 8.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale ("CFG scale").
        seed: seed of the first image; image i uses seed + i. None draws a random seed.
        sampler: A1111 sampler name, e.g. "Euler a".
        model: registry name of the model; None = the engine's current default model.
        model_hash: A1111's hash of the model to draw with (a pasted infotext's `Model hash`:
            10 hex digits, or A1111's old 8); the engine picks the model with this hash first,
            then `model` by name. Requests the engine has resolved carry None.
        clip_skip: A1111 clip skip (1 = last CLIP layer, 2 = penultimate, as NAI).
        batch_size: number of images (seeds seed, seed+1, …).
        requester: opaque id of who asked, e.g. "telegram:1234".
        ensd: A1111 "Eta noise seed delta": ancestral noise comes from seed + ensd (NAI: 31337).
        rng: noise source, "GPU" (CUDA's generator; emulated off CUDA), "CPU" or "NV"
            (A1111's CPU emulation of CUDA's randn); "auto" = GPU on CUDA, else NV.
        subseed: variation seed (A1111 "Variation seed"); None draws a random one if needed.
        subseed_strength: how far toward the variation seed's noise, 0 (off) to 1.
        seed_resize_from_w: width whose noise to reuse (A1111 "Seed resize from"); 0 = off.
        seed_resize_from_h: height whose noise to reuse; 0 = off.
        downcast_alphas_cumprod: fp16-rounded noise schedule, as A1111 before v1.7 drew.
        emphasis: A1111 emphasis mode: how (word:1.2) weighs the text encoder's output,
            "Original" (then restore the mean), "No norm", "Ignore" or "None" (no parsing).
        vae: the VAE to decode with, by its file name under models/VAE (A1111's `VAE:` value,
            e.g. "animevae.pt"; the stem works too); "None" = the checkpoint's own VAE; None =
            the model's default. LoRAs and hypernetworks are `<lora:…>`/`<hypernet:…>` tags in
            the prompt (A1111); embeddings are their file names in either prompt.
    """

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    sampler: str | None = None
    model: str | None = None
    model_hash: str | None = None
    clip_skip: int | None = None
    batch_size: int = 1
    requester: str = ""
    ensd: int | None = None
    rng: str | None = None
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    downcast_alphas_cumprod: bool = False
    emphasis: str | None = None
    vae: str | None = None


@dataclass(frozen=True, kw_only=True)
class RequestDefaults:
    """Values used where a request says None; layered: settings, then a model's own file.

    Args:
        width: default image width.
        height: default image height.
        num_inference_steps: default step count.
        guidance_scale: default CFG scale.
        sampler: default sampler name.
        clip_skip: default A1111 clip skip.
        ensd: default A1111 eta noise seed delta (NAI: 31337).
        rng: default noise source: "auto" (GPU on CUDA, else NV), "GPU", "CPU" or "NV".
        emphasis: default A1111 emphasis mode ("Original", as A1111).
        vae: default VAE: a file name under models/VAE, "None" (the checkpoint's own) or
            "Automatic" (a `<checkpoint>.vae.pt|.vae.safetensors` beside it, else its own).
        hypernet: a hypernetwork every prompt gets unless it names that one itself, "NAME" or
            "NAME:STRENGTH" (A1111's `sd_hypernetwork` setting; NAI's recipe); "" = none.
    """

    width: int = 512
    height: int = 768
    num_inference_steps: int = 28
    guidance_scale: float = 11.0
    sampler: str = "Euler a"
    clip_skip: int = 2
    ensd: int = 31337
    rng: Literal["auto", "GPU", "CPU", "NV"] = "auto"
    emphasis: Literal["Original", "No norm", "Ignore", "None"] = "Original"
    vae: str = "Automatic"
    hypernet: str = ""

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        """Fill the request's None fields from these defaults (`hypernet` is check_request's)."""
        missing = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if hasattr(request, f.name) and getattr(request, f.name) is None
        }
        return dataclasses.replace(request, **missing) if missing else request


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a single request may ask for.

    Args:
        max_pixels: most pixels per image (width × height).
        max_side: longest allowed side in pixels.
        max_steps: most denoising steps.
        max_batch_size: most images per request.
        max_prompt_chars: longest prompt (and negative prompt) in characters.
    """

    max_pixels: int = 1024 * 1024
    max_side: int = 2048
    max_steps: int = 150
    max_batch_size: int = 4
    max_prompt_chars: int = 4000


@dataclass(frozen=True, kw_only=True)
class Timings:
    """Seconds spent in each phase of one generate() call."""

    encode_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """One image: PNG bytes with A1111 infotext, the seed used, and the resolved request."""

    png: bytes
    seed: int
    request: GenerationRequest
    infotext: str
    timings: Timings = field(default_factory=Timings)


JobState = Literal["queued", "running", "done", "failed", "cancelled"]
# Where an image's noise comes from (A1111's "Random number generator source").
RngSource = Literal["GPU", "CPU", "NV"]
RNG_SOURCES: tuple[RngSource, ...] = ("GPU", "CPU", "NV")
# Everything that must agree for requests to share one sampling loop. Seeds, ENSD, RNG source
# and variations may differ: every image draws its noise from generators of its own.
BATCH_KEYS = (
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "sampler",
    "clip_skip",
    "model",
    "downcast_alphas_cumprod",
    "vae",
)
# Requests whose prompts name different LoRAs or hypernetworks never share a batch either
# (`engine.prompting.networks.networks_of(request.prompt)` is part of a job's batch key).


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A snapshot of one job, for a frontend's status message (read `job.progress` again).

    `position` is 1-based while queued (None otherwise); `step`/`total` count denoising steps
    (0/0 before it starts); `eta_s` estimates seconds until the result (None until the engine
    has measured a step); `preview` is a small PNG made from the latents without the VAE
    (None until the first one); `error` is the user-safe reason when failed or cancelled.
    """

    state: JobState
    position: int | None = None
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    preview: bytes | None = None
    error: str | None = None
