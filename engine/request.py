"""What a user asks for (GenerationRequest), what they get (GenerationResult), and the limits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


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
        clip_skip: A1111 clip skip (1 = last CLIP layer, 2 = penultimate, as NAI).
        batch_size: number of images (seeds seed, seed+1, …).
        requester: opaque id of who asked, e.g. "telegram:1234".
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
    clip_skip: int | None = None
    batch_size: int = 1
    requester: str = ""


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
    """

    width: int = 512
    height: int = 768
    num_inference_steps: int = 28
    guidance_scale: float = 11.0
    sampler: str = "Euler a"
    clip_skip: int = 2

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        """Fill the request's None fields from these defaults."""
        missing = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(request, f.name) is None
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
