"""A1111's Extras tab: a picture upscaled without drawing (`extras_upscale` requests).

The request's `init_image` is upscaled by `hr_scale` with `hr_upscaler` (Lanczos, Nearest or a
file in models/ESRGAN), through the same queue, journal and fairness as drawings. The PNG
carries A1111's `postprocessing` text (`Postprocess upscale by: 2, Postprocess upscaler: …`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.errors import GenerationFailed
from engine.images import upscale_size
from engine.infotext import format_number
from engine.models import LoadedModel
from engine.request import GenerationRequest, GenerationResult, Limits, Timings
from engine.upscalers import upscale_image


def upscale_results(
    model: LoadedModel, requests: Sequence[GenerationRequest], limits: Limits
) -> list[GenerationResult]:
    """Each request's picture upscaled (torch thread: a network upscaler runs on the device)."""
    results = []
    for request in requests:
        started = time.perf_counter()
        assert request.init_image is not None
        try:
            with Image.open(request.init_image) as opened:
                picture = opened.convert("RGB")
        except (OSError, ValueError) as e:
            raise GenerationFailed(
                "The picture to upscale is gone; send it again.", key="picture_missing"
            ) from e
        width, height = upscale_size(picture.size, request.hr_scale, limits)
        image = upscale_image(
            picture,
            width,
            height,
            request.hr_upscaler,
            library=model.addons.library,
            device=model.device,
            cache=model.addons.upscalers,
        )
        text = (
            f"Postprocess upscale by: {format_number(request.hr_scale)}, "
            f"Postprocess upscaler: {request.hr_upscaler}"
        )
        info = PngInfo()
        info.add_text("postprocessing", text)
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        elapsed = time.perf_counter() - started
        results.append(
            GenerationResult(
                png=buf.getvalue(),
                seed=request.seed or 0,
                request=request,
                infotext=text,
                timings=Timings(decode_s=elapsed, total_s=elapsed),
            )
        )
    return results
