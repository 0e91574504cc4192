"""Image upscalers as A1111 v1.9.4 runs them (`modules/upscaler.py`, `upscaler_utils.py`).

"Lanczos" and "Nearest" always exist: a plain Pillow resize to the size asked for. Every other
upscaler is a file in `models/ESRGAN/` (`.pth`, `.pt`, `.safetensors`, named by its stem, as the
add-on library lists them): a super-resolution network that `spandrel` recognises (ESRGAN,
Real-ESRGAN, its compact variant, SwinIR, HAT, …). As in A1111's `Upscaler.upscale`, the network
runs at its own scale (e.g. 4x) again while the image is still smaller than the target (three
passes at most, and once when the target is the image's own size), then a Lanczos resize gives
exactly the size asked for.

Safety: we read a file ourselves (safetensors, or `torch.load(weights_only=True)`) and hand only
the tensors to spandrel. spandrel's own file loading is not used: it would `torch.jit.load` a
`.pt` (TorchScript runs the code stored in the file). A pickle that would build anything but
plain weights, a damaged file, weights of no known architecture, and a network that is not an
RGB super-resolution one (face restoration, inpainting, 1x restoration) are refused in one line
(`BadAddonFile`).

Inference is tiled (A1111's "ESRGAN tile" 192 and "tile overlap" 8): the image is cut into
tiles of at most `tile` pixels a side, each a core of the output grown by `tile_overlap` pixels
of context on each side; the network runs on a tile and only the core of its result is kept.
Peak memory depends on the tile size only, and a network that sees no further than
`tile_overlap` pixels (its receptive field) gives the same image tiled as untiled. (A1111's
Pillow grid instead pads a tile with black where the image is smaller than it and feathers the
overlaps; results differ from it near tile edges only.) Channels go in in A1111's order (BGR,
as its `pil_image_to_torch_bgr`), so a network sees what it sees in A1111. Precision: float32,
and half precision on CUDA where spandrel says the architecture supports it (A1111 v1.9.4 keeps
ESRGAN in float32).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import logging
import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch
from PIL import Image

from engine.errors import BadAddonFile, ModelNotFound
from engine.request import HIRES_ONLY_UPSCALERS
from engine.weights import read_weights

if TYPE_CHECKING:
    from engine.models.library import AddonLibrary

log = logging.getLogger(__name__)

KIND: Final = "upscaler"
BUILTIN = ("Lanczos", "Nearest")  # A1111's names; always available
_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}
MAX_PASSES = 3  # A1111 `Upscaler.upscale`: the network runs at most three times
CACHE_SIZE = 2  # loaded networks kept by UpscalerCache

_PURPOSES = {
    "FaceSR": "face restoration",
    "Restoration": "restoration at 1x",
    "Inpainting": "inpainting",
}


# --- spandrel without torchvision ----------------------------------------------------------
#
# `import spandrel` imports every architecture it knows, and two of them import torchvision at
# the top: LaMa (`InterpolationMode`, `rotate`, in its forward pass) and RestoreFormer
# (`normalize`, when it runs). Our CPU torch has no torchvision that imports beside it (PyPI's
# build needs a CUDA torch of its own). So when torchvision cannot be imported, and only then,
# `import spandrel` runs with a stand-in `torchvision.transforms.functional` in sys.modules whose
# three names raise a clear error if ever used. The stand-in is removed from sys.modules as soon
# as spandrel is imported (only LaMa's and RestoreFormer's modules keep a reference), so other
# libraries (transformers, diffusers) still see no torchvision. Those two architectures are never
# run here: an inpainting or face-restoration file is refused before it is used. A deployment
# with a working torchvision imports it and spandrel uses it; the stand-in is not made at all.

_STUB_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_STUB_NAMES = ("InterpolationMode", "rotate", "normalize")
_spandrel: ModuleType | None = None
_spandrel_lock = threading.Lock()


class _NoTorchvision:
    """Stands in for one torchvision function or enum: using it raises a clear error."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _fail(self) -> RuntimeError:
        return RuntimeError(
            f"torchvision.transforms.functional.{self._name} is not available: torchvision is "
            "not installed (aidraw runs only spandrel's super-resolution networks, which do not "
            "need it)"
        )

    def __call__(self, *args: object, **kwargs: object) -> Any:
        raise self._fail()

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (copy, inspect, pickle) sees a plain object
            raise AttributeError(attr)
        raise self._fail()

    def __repr__(self) -> str:
        return f"<missing torchvision.transforms.functional.{self._name}>"


def is_torchvision_stub(value: object) -> bool:
    """Whether `value` is one of the stand-ins (spandrel was imported without torchvision)."""
    return isinstance(value, _NoTorchvision)


def _torchvision_imports() -> bool:
    """Whether a real torchvision is there and imports (a build that does not match our torch
    fails with RuntimeError: "operator torchvision::nms does not exist")."""
    if "torchvision.transforms.functional" in sys.modules:  # imported, or blocked (None)
        module = sys.modules["torchvision.transforms.functional"]
        return module is not None and not isinstance(module, _StubModule)
    try:
        if importlib.util.find_spec("torchvision") is None:
            return False
        importlib.import_module("torchvision.transforms.functional")
    except Exception as e:  # ImportError, RuntimeError, OSError (a missing shared library)
        log.info("torchvision does not import (%s); spandrel is imported without it", e)
        return False
    return True


class _StubModule(ModuleType):
    """A stand-in torchvision module (only while spandrel is being imported)."""


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    saved = {name: sys.modules[name] for name in _STUB_MODULES if name in sys.modules}
    stubs = {
        name: _StubModule(name, "aidraw's stand-in: torchvision is absent")
        for name in _STUB_MODULES
    }
    setattr(stubs["torchvision"], "transforms", stubs["torchvision.transforms"])  # noqa: B010
    setattr(stubs["torchvision.transforms"], "functional", stubs[_STUB_MODULES[2]])  # noqa: B010
    for name in _STUB_NAMES:
        setattr(stubs[_STUB_MODULES[2]], name, _NoTorchvision(name))
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]
        sys.modules.update(saved)


def import_spandrel() -> ModuleType:
    """`spandrel`, imported once; with the torchvision stand-in only when torchvision does not
    import. ImportError when spandrel is not installed (`make install` installs it)."""
    global _spandrel
    with _spandrel_lock:
        if _spandrel is None:
            if "spandrel" in sys.modules or _torchvision_imports():
                _spandrel = importlib.import_module("spandrel")
            else:
                with _torchvision_stand_in():
                    _spandrel = importlib.import_module("spandrel")
        return _spandrel


# --- loading -----------------------------------------------------------------------------------


def _spandrel_for(path: Path) -> ModuleType:
    try:
        return import_spandrel()
    except ImportError as e:
        log.error("cannot import spandrel: %s", e)
        raise BadAddonFile(
            KIND, path.name, "spandrel, which runs upscaler networks, is not installed"
        ) from e


@dataclass
class UpscalerModel:
    """A loaded super-resolution network (a spandrel `ImageModelDescriptor`, on `device`)."""

    file: str  # the file's name, for messages
    architecture: str  # spandrel's name for it, e.g. "ESRGAN", "RealESRGAN Compact"
    scale: int
    descriptor: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def tiles(self) -> bool:
        """False when the network tiles internally (spandrel `ModelTiling.INTERNAL`)."""
        return str(getattr(self.descriptor.tiling, "name", "SUPPORTED")) != "INTERNAL"

    def to(self, device: torch.device) -> None:
        """Move to `device`: half precision on CUDA when the architecture supports it, else
        float32."""
        device = torch.device(device)
        half = device.type == "cuda" and bool(self.descriptor.supports_half)
        dtype = torch.float16 if half else torch.float32
        if (device, dtype) != (self.device, self.dtype):
            self.descriptor.to(device=device, dtype=dtype)
            self.device, self.dtype = device, dtype

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) in [0, 1] on the network's device and dtype → (1, 3, h*scale, w*scale)."""
        out: torch.Tensor = self.descriptor(image)
        return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, never running anything in it; BadAddonFile when it cannot be read."""
    loaded = read_weights(path, KIND)
    if isinstance(loaded, Mapping):
        # spandrel's own unwrapping: `params_ema` (Real-ESRGAN), `state_dict`, `module.`…
        loaded = _spandrel_for(path).canonicalize_state_dict(dict(loaded))
    if not isinstance(loaded, Mapping):
        raise BadAddonFile(KIND, path.name, "it holds no state dict of weights")
    tensors = {
        k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    if not tensors:
        raise BadAddonFile(KIND, path.name, "it holds no weights")
    return tensors


def load_upscaler(path: Path, device: torch.device | str = "cpu") -> UpscalerModel:
    """The super-resolution network in `path`, in eval mode on `device`; BadAddonFile (one line)
    for a file that is unsafe, damaged, of no known architecture, or not an RGB upscaler."""
    spandrel = _spandrel_for(path)
    state = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise BadAddonFile(
            KIND, path.name, "its weights are of no network architecture spandrel knows"
        ) from None
    except Exception as e:  # a detected architecture whose weights do not fit it
        log.warning("refused upscaler %s: %r", path, e)
        raise BadAddonFile(
            KIND, path.name, f"its weights do not build a network ({type(e).__name__})"
        ) from e
    architecture = str(descriptor.architecture.name)
    purpose = str(descriptor.purpose)
    if purpose != "SR" or not isinstance(descriptor, spandrel.ImageModelDescriptor):
        what = _PURPOSES.get(purpose, purpose)
        raise BadAddonFile(
            KIND, path.name, f"it is a {architecture} network for {what}, not an upscaler"
        )
    channels = (int(descriptor.input_channels), int(descriptor.output_channels))
    if channels != (3, 3):
        raise BadAddonFile(
            KIND, path.name, f"it works on {channels[0]}-channel images, not RGB ones"
        )
    descriptor.eval()
    model = UpscalerModel(
        path.name,
        architecture,
        int(descriptor.scale),
        descriptor,
        descriptor.device,
        descriptor.dtype,  # the file's: a half-precision file is made float32 on the CPU
    )
    model.to(torch.device(device))
    log.info("loaded upscaler %s: %s %dx", path.name, architecture, model.scale)
    return model


class UpscalerCache:
    """Loaded networks by (file, modification time): the last `size` used are kept, so a
    replaced file is read again. Thread-safe; the engine's torch thread uses it."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = max(1, size)
        self._models: OrderedDict[tuple[Path, int, int], UpscalerModel] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, path: Path, device: torch.device) -> UpscalerModel:
        """The network in `path` on `device` (loaded, or kept from an earlier call)."""
        try:
            stat = path.stat()
        except OSError as e:
            raise BadAddonFile(KIND, path.name, "the file cannot be read") from e
        resolved = path.resolve()
        key = (resolved, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            model = self._models.pop(key, None)
            for old in [k for k in self._models if k[0] == resolved]:
                del self._models[old]  # the file changed since
            if model is None:
                model = load_upscaler(path, device)
            else:
                model.to(device)
            self._models[key] = model
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


# --- upscaling ---------------------------------------------------------------------------------


def check_hires_upscaler(name: str, library: AddonLibrary) -> None:
    """At the door: a hires upscaler is a latent mode, None, Lanczos, Nearest or an upscaler
    file here (ModelNotFound lists them all, with close names)."""
    if name in HIRES_ONLY_UPSCALERS or _builtin(name) is not None:
        return
    try:
        library.find(KIND, name)
    except ModelNotFound:
        installed = [*HIRES_ONLY_UPSCALERS, *upscaler_names(library)]
        close = difflib.get_close_matches(name, installed, n=3, cutoff=0.5)
        raise ModelNotFound(name, kind=KIND, suggestions=close, installed=installed) from None


def upscaler_names(library: AddonLibrary) -> list[str]:
    """Every upscaler a request may name: the built-in ones, then the files' (A1111's order)."""
    return [*BUILTIN, *(n for n in library.names(KIND) if n.lower() not in _RESAMPLE)]


def _builtin(name: str) -> Image.Resampling | None:
    return _RESAMPLE.get(name.lower())


def _find(library: AddonLibrary, name: str) -> Path:
    try:
        return library.find(KIND, name).path
    except ModelNotFound:
        names = upscaler_names(library)
        lowered = {n.lower(): n for n in names}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
        raise ModelNotFound(
            name, kind=KIND, suggestions=[lowered[c] for c in close], installed=names
        ) from None


def upscale_image(
    image: Image.Image,
    width: int,
    height: int,
    name: str,
    *,
    library: AddonLibrary,
    device: torch.device,
    tile: int = 192,
    tile_overlap: int = 8,
    cache: UpscalerCache | None = None,
) -> Image.Image:
    """`image` upscaled by the upscaler `name` to exactly `width` x `height`.

    "Lanczos"/"Nearest" (any case) resize directly. A file's network runs (tiled: `tile` pixels
    a side at most, 0 = untiled; `tile_overlap` pixels of context) while the image is smaller
    than the target, three times at most, then Lanczos gives the exact size; the result is RGB.
    `cache` keeps loaded networks between calls (without it the file is read each time).
    ModelNotFound for an unknown name (listing what there is), BadAddonFile for a file that
    cannot be used.
    """
    if width < 1 or height < 1:
        raise ValueError(f"the target size must be positive, not {width}x{height}")
    resample = _builtin(name)
    if resample is not None:
        return image.resize((width, height), resample=resample)
    path = _find(library, name)
    device = torch.device(device)
    model = cache.load(path, device) if cache is not None else load_upscaler(path, device)
    same_size = image.size == (width, height)
    result = image.convert("RGB")
    for _ in range(MAX_PASSES):
        if result.width >= width and result.height >= height and not same_size:
            break
        before = result.size
        result = upscale_once(model, result, tile=tile, tile_overlap=tile_overlap)
        if result.size == before or same_size:
            break
    if result.size != (width, height):
        result = result.resize((width, height), resample=Image.Resampling.LANCZOS)
    return result


def upscale_once(
    model: UpscalerModel, image: Image.Image, *, tile: int = 192, tile_overlap: int = 8
) -> Image.Image:
    """One pass of the network over an RGB image (tiled unless `tile` <= 0 or the network tiles
    itself), at the network's scale."""
    pixels = np.asarray(image.convert("RGB"))[:, :, ::-1]  # A1111 feeds BGR
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    out = run_tiled(
        model,
        tensor.unsqueeze(0),
        scale=model.scale,
        tile=tile if model.tiles else 0,
        tile_overlap=tile_overlap,
        device=model.device,
        dtype=model.dtype,
    )
    return Image.fromarray(np.ascontiguousarray(out[0].numpy().transpose(1, 2, 0)[:, :, ::-1]))


def _spans(length: int, most: int) -> list[tuple[int, int]]:
    """[start, end) pieces of about equal size, none longer than `most`, covering `length`."""
    count = max(1, math.ceil(length / most))
    edges = [i * length // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def run_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    *,
    scale: int,
    tile: int,
    tile_overlap: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """`model` over `pixels` (uint8, (1, C, h, w), on the CPU) tile by tile → uint8 on the CPU
    (1, C, h*scale, w*scale), rounded as A1111 rounds.

    Each tile is a core grown by `tile_overlap` pixels of context each side (at most a quarter
    of `tile`, so the cores stay at least half of it), `tile` pixels a side at most; only the
    core of the network's output is kept. `tile` <= 0: the whole image at once.
    """
    _, _, h, w = pixels.shape
    overlap = max(0, min(tile_overlap, tile // 4))
    core = tile - 2 * overlap if tile > 0 else max(h, w)
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for y0, y1 in _spans(h, core):
            for x0, x1 in _spans(w, core):
                ty0, ty1 = max(0, y0 - overlap), min(h, y1 + overlap)
                tx0, tx1 = max(0, x0 - overlap), min(w, x1 + overlap)
                piece = pixels[:, :, ty0:ty1, tx0:tx1].to(device=device, dtype=torch.float32)
                result = model((piece / 255.0).to(dtype))
                if result.shape[-2:] != ((ty1 - ty0) * scale, (tx1 - tx0) * scale):
                    raise RuntimeError(
                        f"the upscaler gave a {tuple(result.shape[-2:])} image for a "
                        f"{(ty1 - ty0, tx1 - tx0)} tile at {scale}x"
                    )
                kept = result[
                    :,
                    :,
                    (y0 - ty0) * scale : (y1 - ty0) * scale,
                    (x0 - tx0) * scale : (x1 - tx0) * scale,
                ]
                as_bytes = (kept.float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
                if out is None:
                    out = torch.empty((1, kept.shape[1], h * scale, w * scale), dtype=torch.uint8)
                out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = as_bytes
    assert out is not None  # h, w >= 1: at least one tile
    return out
