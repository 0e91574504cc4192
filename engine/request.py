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
        sampler: A1111 sampler name, e.g. "Euler a" (old names such as "DPM++ 2M Karras" keep
            their schedule; "DPM++ 2M" alone is uniform, as before A1111 v1.9).
        schedule_type: A1111 v1.9's "Schedule type" label ("Karras", "Exponential", … see
            `engine.sampling.schedules`) run instead of the sampler's own; None or "Automatic"
            = the sampler's own. The door (`engine.checks`) folds it into the sampler name
            where a table row already means it ("DPM++ 2M" + "Karras" → "DPM++ 2M Karras").
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
        init_image: img2img: the path of a checked input image (`engine.images.ImageStore`
            keeps them; frontends never pass a user's path), or None for txt2img.
        mask_image: inpainting: the path of a checked mask (white = redraw), with init_image.
        denoising_strength: A1111's "Denoising strength" of img2img and of the hires pass;
            None = A1111's defaults (0.75 for img2img, 0.7 for hires fix).
        resize_mode: how the init image meets the size: 0 just resize, 1 crop and resize,
            2 resize and fill (A1111's numbers).
        mask_blur: inpainting: Gaussian blur of the mask in pixels (A1111's 4).
        inpainting_fill: what the masked area starts from: 0 fill, 1 original (A1111's UI
            default), 2 latent noise, 3 latent nothing.
        inpaint_full_res: A1111's "Only masked": redraw the masked area's box at full size.
        inpaint_full_res_padding: pixels around that box ("Only masked padding").
        enable_hr: hires fix: draw at the size, upscale by hr_scale, then a second pass.
        hr_scale: the hires upscale factor (output int(width·scale) x int(height·scale)).
        hr_upscaler: "Latent" (A1111's bilinear latent upscale), another A1111 latent mode,
            "Lanczos", or an upscaler file's name from models/ESRGAN.
        hr_second_pass_steps: steps of the hires pass; 0 = the request's steps (A1111).
        extras_upscale: draw nothing: `init_image` upscaled by hr_scale with hr_upscaler (an
            image upscaler: Lanczos, Nearest or a file), as A1111's Extras tab.
        size_name: a named size (`--size portrait`, a NAI_SIZES key) whose width and height
            are NAI's; the door replaces them with the model's own size of that name where it
            has one (SDXL's buckets), then clears it.
        preset_quality: the prompt starts with NAI's quality tags, put there by the chat
            parser; the door swaps them for the model's own quality tags where its sidecar
            has some, then clears it.
        preset_negative: the NAI undesired-content preset (its name) the chat parser put
            before the negative prompt; the door swaps its text for the model's own negative
            preset where its sidecar has one, then clears it.
    """

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    sampler: str | None = None
    schedule_type: str | None = None
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
    init_image: str | None = None
    mask_image: str | None = None
    denoising_strength: float | None = None
    resize_mode: int = 0
    mask_blur: int = 4
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    extras_upscale: bool = False
    size_name: str | None = None
    preset_quality: bool = False
    preset_negative: str | None = None


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
        max_image_bytes: largest image file a user may send (img2img, inpainting, upscale).
    """

    max_pixels: int = 1024 * 1024
    max_side: int = 2048
    max_steps: int = 150
    max_batch_size: int = 4
    max_prompt_chars: int = 4000
    max_image_bytes: int = 20 * 1024 * 1024


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


# Hires fix's upscalers besides image ones (A1111's names): latent interpolation modes (their
# table is engine.latents'), and "None" (a plain Lanczos resize of the decoded picture). Pure
# names, so the door (engine.checks) needs no torch.
LATENT_UPSCALERS = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
HIRES_ONLY_UPSCALERS = (*LATENT_UPSCALERS, "None")

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
    "schedule_type",
    "clip_skip",
    "model",
    "downcast_alphas_cumprod",
    "vae",
    # img2img and hires: an init image batches only with jobs for the same image and settings.
    "init_image",
    "mask_image",
    "denoising_strength",
    "resize_mode",
    "mask_blur",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "enable_hr",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "extras_upscale",
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
