"""Image upscalers (engine/upscalers.py): the built-in resizes, ESRGAN-family files loaded safely
through spandrel (without torchvision), A1111's repeat-then-resize, tiling, and the cache.

The networks are spandrel's own architecture classes, tiny and with random (seeded) weights,
saved as users get them: a bare state dict in a `.pth` or a `.safetensors`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine import upscalers
from engine.errors import BadAddonFile, ModelNotFound
from engine.models.hashes import HashCache
from engine.models.library import AddonLibrary
from engine.upscalers import (
    BUILTIN,
    UpscalerCache,
    import_spandrel,
    is_torchvision_stub,
    load_upscaler,
    upscale_image,
    upscale_once,
    upscaler_names,
)

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")

spandrel = import_spandrel()  # before the architecture imports below (no torchvision here)
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402


def compact(*, scale: int = 2, seed: int = 0, channels: int = 3) -> torch.nn.Module:
    """Real-ESRGAN's compact network: 4 convolutions (sees 4 pixels around), no normalization."""
    torch.manual_seed(seed)
    net = Compact(num_in_ch=channels, num_out_ch=channels, num_feat=8, num_conv=2, upscale=scale)
    with torch.no_grad():  # a gentle random network: outputs spread over [0, 1], few clipped
        for p in net.parameters():
            p.mul_(0.5)
    return net.eval()


def esrgan(*, scale: int = 4, seed: int = 0) -> torch.nn.Module:
    """The original ESRGAN (RRDBNet), one block of 8 filters."""
    torch.manual_seed(seed)
    return ESRGAN(num_filters=8, num_blocks=1, scale=scale).eval()


def save(net: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def library(models: Path) -> AddonLibrary:
    lib = AddonLibrary(models, HashCache(models))
    lib.scan()
    return lib


def picture(width: int = 32, height: int = 32, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    save(esrgan(), tmp_path / "ESRGAN" / "tiny_esrgan_4x.pth")
    save(compact(), tmp_path / "ESRGAN" / "sub" / "tiny-compact-2x.safetensors")
    return tmp_path


def test_builtin_resizers_need_no_files(tmp_path: Path) -> None:
    lib = library(tmp_path)
    assert upscaler_names(lib) == ["Lanczos", "Nearest"] == list(BUILTIN)
    image = picture()
    for name, resample in [
        ("Lanczos", Image.Resampling.LANCZOS),
        ("Nearest", Image.Resampling.NEAREST),
        ("nearest", Image.Resampling.NEAREST),
    ]:
        out = upscale_image(image, 77, 50, name, library=lib, device=CPU)
        assert out.size == (77, 50)
        assert out.tobytes() == image.resize((77, 50), resample=resample).tobytes()


def test_unknown_name_lists_what_there_is(models: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        upscale_image(picture(), 64, 64, "tiny_esrgan", library=library(models), device=CPU)
    message = str(caught.value)
    assert "\n" not in message
    for name in ("Lanczos", "Nearest", "tiny_esrgan_4x", "tiny-compact-2x"):
        assert name in message
    assert "Did you mean: tiny_esrgan_4x" in message


def test_files_load_and_upscale_to_the_exact_size(models: Path) -> None:
    lib = library(models)
    assert upscaler_names(lib) == ["Lanczos", "Nearest", "tiny-compact-2x", "tiny_esrgan_4x"]
    cache = UpscalerCache()
    for name, architecture, scale in [
        ("tiny_esrgan_4x", "ESRGAN", 4),  # .pth
        ("tiny-compact-2x", "RealESRGAN Compact", 2),  # .safetensors, in a subfolder
    ]:
        image = picture().convert("RGBA")  # any mode in, RGB out
        for size in [(100, 90), (128, 64), (150, 150), (20, 30)]:
            out = upscale_image(image, *size, name, library=lib, device=CPU, cache=cache)
            assert out.size == size and out.mode == "RGB"
        model = cache.load(lib.find("upscaler", name).path, CPU)
        assert (model.architecture, model.scale, model.dtype) == (
            architecture,
            scale,
            torch.float32,
        )


def test_a_pass_is_the_network_on_bgr_pixels(models: Path) -> None:
    """One pass gives what the network gives on the image's pixels in A1111's channel order
    (BGR in [0, 1]), rounded to 8 bits."""
    net = compact(scale=2, seed=3)
    path = save(net, models / "ESRGAN" / "check.pth")
    image = picture(24, 20)
    out = upscale_once(load_upscaler(path), image, tile=0)
    bgr = torch.from_numpy(np.asarray(image)[:, :, ::-1].copy()).permute(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        expected = (net(bgr).clamp(0, 1) * 255).round().to(torch.uint8)[0]
    expected_rgb = expected.permute(1, 2, 0).numpy()[:, :, ::-1]
    assert out.size == (48, 40)
    assert np.abs(pixels(out) - expected_rgb.astype(np.int16)).max() <= 1
    assert pixels(out).std() > 20  # a real picture, not a flat one


def test_passes_repeat_while_smaller_then_lanczos(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A1111 `Upscaler.upscale`: the network again while the image is smaller than the target
    (three times at most), once at the image's own size, never for a smaller one."""
    passes: list[tuple[int, int]] = []
    real = upscalers.upscale_once

    def counted(model: Any, image: Image.Image, **kwargs: Any) -> Image.Image:
        passes.append(image.size)
        return real(model, image, **kwargs)

    monkeypatch.setattr(upscalers, "upscale_once", counted)
    lib, cache = library(models), UpscalerCache()
    for name, size, expected in [
        ("tiny-compact-2x", (64, 64), [(32, 32)]),
        ("tiny-compact-2x", (65, 64), [(32, 32), (64, 64)]),
        ("tiny-compact-2x", (150, 40), [(32, 32), (64, 64), (128, 128)]),
        ("tiny-compact-2x", (1000, 1000), [(32, 32), (64, 64), (128, 128)]),  # at most 3
        ("tiny_esrgan_4x", (100, 90), [(32, 32)]),
        ("tiny_esrgan_4x", (32, 32), [(32, 32)]),
        ("tiny_esrgan_4x", (16, 32), []),
    ]:
        passes.clear()
        out = upscale_image(picture(), *size, name, library=lib, device=CPU, cache=cache)
        assert out.size == size
        assert passes == expected, (name, size)


def test_tiled_equals_untiled(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A network that sees 4 pixels around gives the same image tiled (8 pixels of context) as
    in one piece: at most 1 of 255 apart (float rounding at a .5 can land either way)."""
    model = load_upscaler(save(compact(seed=5), models / "ESRGAN" / "tiling.pth"))
    calls: list[tuple[int, ...]] = []
    real = model.descriptor

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape[-2:]))
            out: torch.Tensor = real(x)
            return out

    monkeypatch.setattr(model, "descriptor", Spy())
    image = picture(70, 50, seed=7)
    whole = upscale_once(model, image, tile=0)
    assert calls == [(50, 70)]
    calls.clear()
    tiled = upscale_once(model, image, tile=32, tile_overlap=8)
    assert len(calls) == 5 * 4 and max(max(c) for c in calls) <= 32  # cores of 14×12.5
    assert tiled.size == whole.size == (140, 100)
    diff = np.abs(pixels(tiled) - pixels(whole))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001
    # …and the test can tell: with too little context the seams show.
    seams = upscale_once(model, image, tile=32, tile_overlap=2)
    assert (np.abs(pixels(seams) - pixels(whole)) > 0).mean() > 0.002


def test_deep_network_tiles_to_the_right_size(models: Path) -> None:
    lib = library(models)
    out = upscale_image(
        picture(40, 36), 160, 144, "tiny_esrgan_4x", library=lib, device=CPU, tile=16
    )
    assert out.size == (160, 144) and pixels(out).std() > 0


def test_cache_keeps_two_and_rereads_a_changed_file(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    real = upscalers.load_upscaler

    def counted(path: Path, device: Any = "cpu") -> Any:
        loads.append(path.name)
        return real(path, device)

    monkeypatch.setattr(upscalers, "load_upscaler", counted)
    first = save(compact(seed=1), models / "ESRGAN" / "one.pth")
    second = save(compact(seed=2), models / "ESRGAN" / "two.pth")
    third = save(compact(seed=3), models / "ESRGAN" / "three.pth")
    cache = UpscalerCache()
    a = cache.load(first, CPU)
    assert cache.load(first, CPU) is a and loads == ["one.pth"]
    cache.load(second, CPU)
    cache.load(first, CPU)  # one is the most recent: three pushes two out
    cache.load(third, CPU)
    assert len(cache) == 2 and loads == ["one.pth", "two.pth", "three.pth"]
    assert cache.load(first, CPU) is a
    save(compact(seed=9), first)  # replaced: read again, the old one dropped
    os.utime(first, ns=(1, 10**18))
    assert cache.load(first, CPU) is not a and len(cache) == 2
    assert loads == ["one.pth", "two.pth", "three.pth", "one.pth"]


class _Payload:
    """Unpickling this makes the marker folder: stands for any code a pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def refusal(path: Path) -> str:
    with pytest.raises(BadAddonFile) as caught:
        load_upscaler(path)
    message = str(caught.value)
    assert "\n" not in message and path.name in message and str(path.parent) not in message
    assert caught.value.kind == "upscaler" and caught.value.file == path.name
    return message


def test_a_pickle_with_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    state: dict[str, Any] = dict(compact().state_dict())
    state["body.0.weight"] = _Payload(marker)
    path = tmp_path / "ESRGAN" / "evil.pth"
    path.parent.mkdir()
    torch.save(state, path)
    assert "could run code" in refusal(path)
    assert not marker.exists()
    # The payload is real: an ordinary unpickling runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_damaged_and_foreign_files_are_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "ESRGAN"
    good_pth = save(compact(), folder / "good.pth").read_bytes()
    good_st = save(compact(), folder / "good.safetensors").read_bytes()
    (folder / "cut.pth").write_bytes(good_pth[: len(good_pth) // 2])
    assert "truncated" in refusal(folder / "cut.pth")
    (folder / "cut.safetensors").write_bytes(good_st[: len(good_st) - 100])
    assert "truncated" in refusal(folder / "cut.safetensors")
    (folder / "empty.pt").write_bytes(b"")
    assert "empty" in refusal(folder / "empty.pt")
    (folder / "text.pth").write_text("not a model")
    assert "not a readable PyTorch file" in refusal(folder / "text.pth")
    # A 1x network restores; it does not upscale.
    assert "not an upscaler" in refusal(save(compact(scale=1), folder / "denoise_1x.pth"))
    # Weights of no architecture spandrel knows.
    torch.save({"encoder.weight": torch.zeros(4, 4)}, folder / "other.pth")
    assert "no network architecture" in refusal(folder / "other.pth")
    torch.save({"step": 3}, folder / "nothing.pth")
    assert "no weights" in refusal(folder / "nothing.pth")
    torch.save([torch.zeros(2)], folder / "list.pth")
    assert "no state dict" in refusal(folder / "list.pth")
    # Grayscale super-resolution: spandrel loads it, we draw RGB.
    assert "1-channel" in refusal(save(compact(channels=1), folder / "gray.pth"))


def test_torchscript_is_refused(tmp_path: Path) -> None:
    net = compact()
    path = tmp_path / "scripted.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 8, 8)), str(path))
    assert "TorchScript" in refusal(path)


def test_a_half_precision_file_runs_in_float32_on_the_cpu(tmp_path: Path) -> None:
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in compact().state_dict().items()}, path)
    model = load_upscaler(path)
    assert model.dtype == torch.float32
    assert next(model.descriptor.model.parameters()).dtype == torch.float32
    assert upscale_once(model, picture(8, 8)).size == (16, 16)


def test_real_esrgan_wrappers_are_unwrapped(tmp_path: Path) -> None:
    """Real-ESRGAN's releases keep the weights under `params_ema`."""
    path = tmp_path / "RealESRGAN_x2.pth"
    torch.save({"params_ema": compact().state_dict()}, path)
    assert load_upscaler(path).scale == 2


# --- spandrel without torchvision --------------------------------------------------------------


def test_spandrel_imports_here_without_torchvision_leaking() -> None:
    if upscalers._torchvision_imports():
        pytest.skip("a real torchvision imports here")
    assert "torchvision" not in sys.modules
    assert importlib.util.find_spec("torchvision") is None  # transformers & co. see none
    lama = importlib.import_module("spandrel.architectures.LaMa.__arch.LaMa")
    restoreformer = importlib.import_module("spandrel.architectures.RestoreFormer")
    for stub in (lama.rotate, lama.InterpolationMode, restoreformer.tv_normalize):
        assert is_torchvision_stub(stub)
    with pytest.raises(RuntimeError, match="torchvision is not installed"):
        lama.InterpolationMode.BILINEAR  # noqa: B018
    with pytest.raises(RuntimeError, match="rotate is not available"):
        lama.rotate(torch.zeros(1), 0.0)


@pytest.fixture
def fake_torchvision(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "torchvision" / "transforms").mkdir(parents=True)
    (root / "torchvision" / "__init__.py").write_text("from . import transforms\n")
    (root / "torchvision" / "transforms" / "__init__.py").write_text("from . import functional\n")
    return root


PROBE = textwrap.dedent(
    """
    import importlib, sys
    from engine.upscalers import import_spandrel, is_torchvision_stub
    import_spandrel()
    lama = importlib.import_module("spandrel.architectures.LaMa.__arch.LaMa")
    print("stub" if is_torchvision_stub(lama.rotate) else lama.rotate.__module__)
    print(getattr(sys.modules.get("torchvision"), "__file__", None))
    """
)


def probe(site: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:2]


def test_a_working_torchvision_is_used_not_stubbed(fake_torchvision: Path) -> None:
    functional = fake_torchvision / "torchvision" / "transforms" / "functional.py"
    functional.write_text(
        "class InterpolationMode:\n    BILINEAR = 'bilinear'\n\n"
        "def rotate(*args, **kwargs): return 'rotated'\n\n"
        "def normalize(*args, **kwargs): return 'normalized'\n"
    )
    used, module = probe(fake_torchvision)
    assert used == "torchvision.transforms.functional"
    assert module == str(fake_torchvision / "torchvision" / "__init__.py")


def test_a_broken_torchvision_is_stood_in_for(fake_torchvision: Path) -> None:
    """PyPI's torchvision beside our CPU torch fails at import with a RuntimeError."""
    functional = fake_torchvision / "torchvision" / "transforms" / "functional.py"
    functional.write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    assert probe(fake_torchvision) == ["stub", "None"]
