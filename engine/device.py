"""Where pipelines run: device, dtype and the A1111 --medvram/--lowvram memory profiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

Vram = Literal["normal", "medvram", "lowvram", "auto"]
# "auto": below this much GPU memory an SDXL model gets medvram (A1111's advice for 8 GB cards).
SDXL_MEDVRAM_BELOW = 12 * 1024**3
Dtype = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True, kw_only=True)
class DeviceOptions:
    """Where and how pipelines run.

    Args:
        device: "auto" (CUDA, then Apple mps, then CPU), "cpu", "cuda", "cuda:N" or "mps".
        dtype: "auto" (float16 on CUDA, float32 elsewhere), "float32", "float16" or "bfloat16".
        vram: "normal"; "medvram" (model CPU offload + sliced attention and VAE; SDXL: tiled
            VAE too); "lowvram" (sequential CPU offload + sliced attention + tiled VAE);
            "auto" (medvram for SDXL models on a CUDA card under 12 GiB, else normal).
    """

    device: str = "auto"
    dtype: Dtype = "auto"
    vram: Vram = "auto"

    def resolve_device(self) -> torch.device:
        """The concrete torch device for "auto"."""
        import torch

        if self.device != "auto":
            return torch.device(self.device)
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        """The weights' dtype: fp16 on CUDA unless set."""
        import torch

        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        dtype: torch.dtype = getattr(torch, self.dtype)
        return dtype


def resolve_vram(vram: Vram, device: torch.device, sdxl: bool) -> Vram:
    """The profile "auto" means for a model on `device`: medvram for SDXL on a small card."""
    if vram != "auto":
        return vram
    if sdxl and device.type == "cuda":
        import torch

        if torch.cuda.get_device_properties(device).total_memory < SDXL_MEDVRAM_BELOW:
            return "medvram"
    return "normal"


def apply_memory_profile(
    pipe: StableDiffusionPipeline, vram: Vram, device: torch.device, *, tile_vae: bool = False
) -> tuple[str, ...]:
    """Put the pipeline on `device` with diffusers' equivalents of A1111's --medvram/--lowvram
    (`vram` resolved); `tile_vae`: medvram tiles the VAE too (SDXL's decodes at 1024 px)."""
    applied: list[str] = []
    if vram != "normal":
        pipe.enable_attention_slicing()
        pipe.vae.enable_slicing()
        applied += ["attention_slicing", "vae_slicing"]
    if vram == "lowvram" or (vram == "medvram" and tile_vae):
        pipe.vae.enable_tiling()
        applied.append("vae_tiling")
    # Offload only helps where the device has memory of its own apart from the CPU's.
    if vram == "medvram" and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
        applied.append("model_cpu_offload")
    elif vram == "lowvram" and device.type == "cuda":
        pipe.enable_sequential_cpu_offload(device=device)
        applied.append("sequential_cpu_offload")
    else:
        pipe.to(device)
    return tuple(applied)


def place_vae(
    pipe: StableDiffusionPipeline, vram: Vram, device: torch.device, *, tile_vae: bool = False
) -> None:
    """After `pipe.vae` was replaced (another VAE file): give it the memory profile the rest of
    the pipeline has. Offload hooks are per component, so they are all set again."""
    if vram != "normal":
        pipe.vae.enable_slicing()
    if vram == "lowvram" or (vram == "medvram" and tile_vae):
        pipe.vae.enable_tiling()
    if vram != "normal" and device.type == "cuda":
        pipe.remove_all_hooks()
        if vram == "medvram":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.vae.to(device)
