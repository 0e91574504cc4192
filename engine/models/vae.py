"""VAE files as A1111 loads them (`modules/sd_vae.py`), and its automatic `--no-half-vae`.

Formats: `.pt`/`.ckpt` pickles (NovelAI's `animevae.pt`), `.safetensors` files, both in the
CompVis/LDM layout A1111 loads into `first_stage_model` (bare `encoder.…`/`decoder.…` keys, or
under `first_stage_model.`, possibly inside a `state_dict` entry), and diffusers folders
(`config.json` + `diffusion_pytorch_model.safetensors`). Pickles are read only through
`torch.load(weights_only=True)`: nothing in a file runs. The weights go into an `AutoencoderKL`
built from the model's VAE config, as strictly as A1111's `load_state_dict`: after dropping the
`loss*` and `model_ema.*` entries A1111 drops, a weight too many, one missing or one of another
shape refuses the file in one line (`BadAddonFile`), and no half-loaded VAE is ever returned.

`decode` is A1111's `decode_latent_batch`: one image at a time, and when a half-precision VAE
makes NaN/inf it converts the VAE to float32 for good and decodes that image again.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from engine.errors import BadAddonFile
from engine.weights import read_weights

log = logging.getLogger(__name__)

KIND = "VAE"
LDM_PREFIX = "first_stage_model."
# A1111 `load_vae_dict`: training leftovers it drops before `load_state_dict`.
LOSS_PREFIX = "loss"
IGNORED_KEYS = frozenset({"model_ema.decay", "model_ema.num_updates"})
# A diffusers folder's weights, in the order diffusers prefers them.
FOLDER_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
)
_HALF = (torch.float16, torch.bfloat16)
_NAN_WARNING = "VAE produced NaN in fp16; decoding in fp32 from now on (A1111 --no-half-vae)"
_warned: weakref.WeakSet[AutoencoderKL] = weakref.WeakSet()


class _Ignored:
    """Stands in, inside a pickle, for metadata we never read: PyTorch Lightning's callback
    class (old Lightning checkpoints use it as a dict key) and numpy scalars, dtypes and arrays
    (`global_step`, scores). A1111's restricted unpickler allows these names, as does ComfyUI's
    weights-only loading; mapping them all to this inert class runs none of their code."""

    def __init__(self, *args: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


_PICKLE_METADATA: list[Any] = [
    (_Ignored, name)
    for name in (
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
    )
]


def load_vae(
    path: Path, *, config: Path, dtype: torch.dtype, device: torch.device | None = None
) -> AutoencoderKL:
    """The VAE in `path` (file or diffusers folder), built from the VAE config folder `config`
    (e.g. SD15_CONFIG / "vae"; a diffusers folder's own config.json is not used, as A1111 uses
    only the weights), in `dtype` on `device` (default CPU), in eval mode without gradients.

    Raises BadAddonFile("VAE", path.name, problem) when the file cannot be read or its weights
    do not fit the config exactly.
    """
    state = _read_state_dict(path)
    state = {
        k: v for k, v in state.items() if not k.startswith(LOSS_PREFIX) and k not in IGNORED_KEYS
    }
    if not state:
        raise BadAddonFile(KIND, path.name, "it holds no weights")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    unused = [k for k in state if k not in tensors]  # metadata A1111's load_state_dict refuses
    with torch.device("meta"):  # no memory, no random init: every weight comes from the file
        vae: AutoencoderKL = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config)))
    if _is_diffusers_layout(tensors):
        weights = vae._fix_state_dict_keys_on_load(dict(tensors))  # pre-0.14 attention names
        sources = {k: k for k in weights}
    else:
        weights, sources, leftover = _convert_ldm(path, tensors, vae.config)
        unused += leftover
    _check_fits(path, vae, weights, sources, unused)
    target = device if device is not None else torch.device("cpu")
    # nn.Module.to, not ModelMixin.to, which warns about fp32 modules on every dtype change.
    torch.nn.Module.to(vae, dtype=dtype)
    vae.to_empty(device=target)
    with torch.no_grad():
        vae.load_state_dict(weights, strict=True)  # copies, casting to `dtype`
    vae.eval().requires_grad_(False)
    return vae


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) from the sampler's latents (B, 4, h, w), float32 on the VAE's device,
    nominally in [-1, 1] but not clamped (as A1111's `decode_first_stage` returns them).

    The scaling happens here, as in LDM's `decode_first_stage`: each latent is cast to the VAE's
    dtype first, then multiplied by `1 / scaling_factor` (A1111's order and rounding). Images
    are decoded one at a time like A1111's `decode_latent_batch`. If a float16/bfloat16 VAE
    makes NaN/inf from finite latents, the VAE is converted to float32 in place for good
    (A1111's "Automatically revert VAE to 32-bit floats", on by default) and that image decoded
    again; a warning is logged once per VAE. A non-finite result in float32 is returned as is,
    for the caller to report.
    """
    images = []
    with torch.no_grad():
        for i in range(latents.shape[0]):
            latent = latents[i : i + 1]
            image = _decode_one(vae, latent)
            if (
                vae.dtype in _HALF
                and not torch.isfinite(image).all()
                and torch.isfinite(latent).all()
            ):
                if vae not in _warned:
                    _warned.add(vae)
                    log.warning(_NAN_WARNING)
                with torch.inference_mode(False):  # normal weights even under inference mode
                    vae.float()
                image = _decode_one(vae, latent)
            images.append(image.float())
    return torch.cat(images)


def encode(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Latents (B, 4, h, w), float32, from images (B, 3, H, W) in [0, 1]: A1111's
    `images_tensor_to_samples` (one image at a time, in the VAE's dtype: `image * 2 - 1`, the
    encoder, `scale_factor · z`), with z the posterior's mean instead of a draw from it.

    A1111 draws z = mean + std·ε with torch's global RNG, which no seed of the job sets, so the
    same request gives other latents each time; the mean (its σ is ~1e-3 of it) is deterministic.
    """
    latents = []
    with torch.no_grad():
        for i in range(images.shape[0]):
            image = images[i : i + 1].to(device=vae.device, dtype=vae.dtype) * 2 - 1
            latents.append(encode_scaled(vae, image))
    return torch.cat(latents)


def encode_scaled(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """LDM `get_first_stage_encoding(encode_first_stage(image))` for images already in [-1, 1]
    (A1111's inpainting conditioning encodes those), the posterior's mean, float32."""
    with torch.no_grad():
        posterior = vae.encode(image.to(device=vae.device, dtype=vae.dtype)).latent_dist
        # A1111's draw is mean (VAE dtype) + std·ε (float32): a float32 sum, scaled in float32.
        z: torch.Tensor = vae.config.scaling_factor * posterior.mean.float()
    return z


def _decode_one(vae: AutoencoderKL, latent: torch.Tensor) -> torch.Tensor:
    z = latent.to(device=vae.device, dtype=vae.dtype)
    z = (1.0 / vae.config.scaling_factor) * z
    image: torch.Tensor = vae.decode(z, return_dict=False)[0]
    return image


def _read_state_dict(path: Path) -> dict[str, Any]:
    """The file's (or folder's) entries, A1111's `state_dict` wrapper removed."""
    file = path
    if path.is_dir():
        found = [path / name for name in FOLDER_WEIGHTS if (path / name).is_file()]
        if not found:
            raise BadAddonFile(KIND, path.name, f"the folder has no {FOLDER_WEIGHTS[0]}")
        file = found[0]
    loaded = read_weights(file, KIND, name=path.name, allow=_PICKLE_METADATA)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) for k in loaded):
        raise BadAddonFile(KIND, path.name, "it holds no state dict of weights")
    return dict(loaded)


def _is_diffusers_layout(state: Mapping[str, Any]) -> bool:
    return any(".up_blocks." in k or ".down_blocks." in k or ".mid_block." in k for k in state)


def _convert_ldm(
    path: Path, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """LDM names → diffusers names with diffusers' own `convert_ldm_vae_checkpoint`.

    The converter silently skips keys it does not know, so it runs on markers: for each tensor,
    a tensor of ones in each dimension that holds the entry's index. Which marker lands under
    which diffusers name tells where every weight went and which were left over. Returns the
    converted weights, each diffusers name's LDM source, and the unused LDM names.
    """
    names = list(state)
    markers = {
        name: torch.full((1,) * value.ndim, float(i), dtype=torch.float64)
        for i, (name, value) in enumerate(state.items())
    }
    try:
        converted: dict[str, torch.Tensor] = convert_ldm_vae_checkpoint(markers, config)
    except Exception as e:  # the converter indexes blindly into what it expects
        log.warning("refused VAE %s: %r", path, e)
        raise BadAddonFile(KIND, path.name, "its weights are not a VAE's") from e
    weights: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for new_name, marker in converted.items():
        source = names[int(marker.reshape(-1)[0].item())]
        tensor: torch.Tensor = state[source]
        if marker.ndim < tensor.ndim:  # a 1x1 convolution's weight for a linear layer
            if any(n != 1 for n in tensor.shape[marker.ndim :]):
                raise BadAddonFile(
                    KIND,
                    path.name,
                    f"{source} has shape {_shape(tensor)}, not a 1x1 convolution's",
                )
            tensor = tensor.reshape(tensor.shape[: marker.ndim])
        weights[new_name] = tensor
        sources[new_name] = source
    used = set(sources.values())
    return weights, sources, [name for name in names if name not in used]


def _check_fits(
    path: Path,
    vae: AutoencoderKL,
    weights: Mapping[str, torch.Tensor],
    sources: Mapping[str, str],
    unused: list[str],
) -> None:
    """load_state_dict(strict=True), checked before anything is loaded, in one line."""
    expected = vae.state_dict()
    extra = unused + [sources[k] for k in weights if k not in expected]
    if extra:
        whole = any(k.startswith("model.diffusion_model.") for k in extra)
        hint = " (it is a whole model, not a VAE)" if whole else ""
        raise BadAddonFile(KIND, path.name, f"it has weights a VAE has not: {_few(extra)}{hint}")
    missing = [k for k in expected if k not in weights]
    if missing:
        raise BadAddonFile(KIND, path.name, f"it lacks weights the VAE needs: {_few(missing)}")
    for name, want in expected.items():
        got = weights[name]
        if got.shape != want.shape:
            raise BadAddonFile(
                KIND,
                path.name,
                f"{sources[name]} has shape {_shape(got)} where the model's VAE has "
                f"{_shape(want)} (a VAE for another kind of model?)",
            )


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:2])
    return shown if len(names) <= 2 else f"{shown} and {len(names) - 2} more"


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(n) for n in tensor.shape) or "a scalar"
