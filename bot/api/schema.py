"""The API's request and response bodies (A1111 v1.9's names and defaults) as pydantic
models: the handlers validate with them and /openapi.json is generated from them, so the
document cannot drift from what is accepted."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Unknown fields are ignored, as A1111 does (clients send firstphase_*, eta, s_churn, …).
_LENIENT = ConfigDict(extra="ignore")


class _Drawing(BaseModel):
    """What txt2img and img2img share (A1111's StableDiffusionProcessing defaults)."""

    model_config = _LENIENT

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)


class Txt2Img(_Drawing):
    """POST /sdapi/v1/txt2img (A1111's StableDiffusionProcessingTxt2Img defaults)."""

    denoising_strength: float | None = None
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2Img(_Drawing):
    """POST /sdapi/v1/img2img (A1111's StableDiffusionProcessingImg2Img defaults)."""

    init_images: list[str] = Field(default_factory=list)
    mask: str | None = None
    resize_mode: int = 0
    denoising_strength: float | None = 0.75
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0


class Drawn(BaseModel):
    """The answer of txt2img and img2img."""

    images: list[str] = Field(description="base64 PNGs, each with its infotext")
    parameters: dict[str, Any] = Field(description="the request as received")
    info: str = Field(description="JSON: seed, all_seeds, infotexts, …")


class ExtrasSingleImage(BaseModel):
    """POST /sdapi/v1/extra-single-image (A1111's Extras tab, upscaling only)."""

    model_config = _LENIENT

    image: str = ""
    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtrasAnswer(BaseModel):
    image: str
    html_info: str


class PngInfo(BaseModel):
    model_config = _LENIENT

    image: str


class PngInfoAnswer(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressAnswer(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class ErrorAnswer(BaseModel):
    """Every refusal (A1111's shape)."""

    error: str
    detail: str
    body: str
    errors: str | list[dict[str, Any]]
