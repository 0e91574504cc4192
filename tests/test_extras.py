"""A1111's Extras upscale: a picture made bigger without drawing, through the same door."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from engine.checks import check_request
from engine.errors import InvalidRequest, ModelNotFound
from engine.generate import generate
from engine.images import upscale_size
from engine.request import GenerationRequest, Limits

pytestmark = pytest.mark.slow


def upscale(path: Path, **changes: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "init_image": str(path),
        "hr_upscaler": "Lanczos",
        "hr_scale": 2.0,
        **changes,
    }
    return GenerationRequest(prompt="", extras_upscale=True, **fields)  # type: ignore[arg-type]


def test_a_picture_is_upscaled_with_a1111s_postprocessing_text(demo_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    picture = tmp_path / "in.png"
    Image.new("RGB", (40, 24), (10, 200, 30)).save(picture)
    [result] = generate(demo_model, [upscale(picture, hr_scale=2.5)], limits=Limits())
    with Image.open(io.BytesIO(result.png)) as image:
        assert image.size == (100, 60)
        assert image.info["postprocessing"] == (
            "Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos"
        )
        assert image.convert("RGB").getpixel((50, 30)) == (10, 200, 30)
    with pytest.raises(ModelNotFound, match="Unknown upscaler 'R-ESRGAN 4x\\+'"):
        generate(demo_model, [upscale(picture, hr_upscaler="R-ESRGAN 4x+")], limits=Limits())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"init_image": None}, "An upscale needs a picture"),
        ({"enable_hr": True}, "An upscale needs a picture"),
        ({"hr_upscaler": "Latent"}, "Latent upscales latents while drawing"),
        ({"hr_scale": 8.0}, "hires upscale 8 is not allowed: use 1 to 4"),
    ],
)
def test_an_upscale_is_checked_at_the_door(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_request(upscale(tmp_path / "x.png", **changes), Limits())


def test_the_output_size_is_limited_before_any_work() -> None:
    assert upscale_size((512, 512), 2.0, Limits()) == (1024, 1024)
    with pytest.raises(InvalidRequest, match="would make 2048x2048: at most 1,048,576 pixels"):
        upscale_size((1024, 1024), 2.0, Limits())
