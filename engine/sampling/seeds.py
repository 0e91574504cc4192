"""A1111-compatible noise: seeds, per-image generators, ENSD, variation seeds, NV's Philox randn.

Rules from A1111 v1.9.4 `modules/rng.py` and `modules/rng_philox.py` (shared/notes/a1111-nai.md
§3). Every image draws from generators of its own, so its noise never depends on batch-mates.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from engine.request import RngSource

# A1111 draws random seeds with `random.randrange(4294967294)`.
SEED_LIMIT = 4294967294

U64 = npt.NDArray[np.uint64]
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
# Philox-4x32 multipliers and Weyl key increments (Salmon et al. 2011, as in cuRAND).
_PHILOX_M0, _PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_PHILOX_W0, _PHILOX_W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
# cuRAND's float constants: 2**-32 and 2**-32 * 2π, as float32.
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def random_seed() -> int:
    """A seed for "-1"/None, drawn from A1111's range [0, 4294967294)."""
    return secrets.randbelow(SEED_LIMIT)


def philox4x32(counter: Sequence[U64], key: Sequence[U64], rounds: int = 10) -> list[U64]:
    """Philox-4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3")."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for i in range(rounds):
        if i:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        p0, p1 = c0 * _PHILOX_M0, c2 * _PHILOX_M1  # 32×32 → 64-bit products
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT32) ^ c1 ^ k0,
            p1 & _MASK32,
            (p0 >> _SHIFT32) ^ c3 ^ k1,
            p0 & _MASK32,
        )
    return [c0, c1, c2, c3]


class PhiloxGenerator:
    """CUDA's `torch.randn` on the CPU: A1111 `rng_philox.Generator` (the "NV" RNG source).

    Element i of the k-th call uses Philox counter (k, 0, i, 0) and key = the 64-bit seed, and
    keeps the first value of cuRAND's Box–Muller pair (computed in float64, as A1111 does).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """One float32 draw of `shape` on the CPU; each call advances the offset by one."""
        n = int(np.prod(shape))
        seed = np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF)
        counter = [
            np.full(n, self.offset, dtype=np.uint64),
            np.zeros(n, dtype=np.uint64),
            np.arange(n, dtype=np.uint64),
            np.zeros(n, dtype=np.uint64),
        ]
        key = [np.full(n, seed & _MASK32), np.full(n, seed >> _SHIFT32)]
        self.offset += 1
        g = philox4x32(counter, key)
        u = g[0].astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
        v = g[1].astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
        normal = (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)
        return torch.from_numpy(normal.reshape(shape))


class NoiseGenerator(Protocol):
    """A seeded stream of standard-normal float32 tensors."""

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor: ...


class TorchGenerator:
    """A `torch.Generator` on one device (A1111's "GPU" on CUDA, and "CPU")."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.generator = torch.Generator(device).manual_seed(seed)

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """One float32 draw of `shape` on the generator's device."""
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=torch.float32)


def create_generator(seed: int, source: RngSource, device: torch.device) -> NoiseGenerator:
    """A1111 `rng.create_generator` for the device the model runs on.

    "GPU" is CUDA's own generator on a CUDA device; elsewhere it is the Philox emulation of it,
    so a CPU-only host draws the noise a CUDA GPU would (A1111 falls back to the CPU generator).
    """
    if source == "CPU":
        return TorchGenerator(seed, torch.device("cpu"))
    if source == "GPU" and device.type == "cuda":
        return TorchGenerator(seed, device)
    return PhiloxGenerator(seed)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111 `rng.slerp` on one (C, H, W) noise tensor, quirks kept (norms over dim 1, lerp)."""
    low_norm = low / torch.linalg.vector_norm(low, dim=1, keepdim=True)
    high_norm = high / torch.linalg.vector_norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (
        torch.sin(val * omega) / so
    ).unsqueeze(1) * high


@dataclass(frozen=True, kw_only=True)
class NoiseSpec:
    """Where one image's noise comes from.

    Args:
        seed: the image's seed.
        source: RNG source ("GPU", "CPU" or "NV").
        ensd: eta noise seed delta; non-zero: ancestral noise comes from `seed + ensd`.
        subseed: variation seed.
        subseed_strength: 0 = plain seed noise; otherwise slerp toward the subseed's noise.
        resize_from: (width, height) in pixels whose noise to centre in this size; (0, 0) = off.
    """

    seed: int
    source: RngSource = "GPU"
    ensd: int = 0
    subseed: int = 0
    subseed_strength: float = 0.0
    resize_from: tuple[int, int] = (0, 0)


class ImageRNG:
    """A1111 `rng.ImageRNG`: the initial noise, then ancestral noise, per image.

    `first()` draws one float32 (C, H, W) tensor per image from `seed`'s generator (variation
    and resize applied); with ENSD set, each image's generator is then replaced by one seeded
    with `seed + ensd`. Every `next()` draws one tensor per image from the current generators.
    """

    def __init__(
        self, shape: tuple[int, int, int], specs: Sequence[NoiseSpec], device: torch.device
    ) -> None:
        self.shape = shape
        self.specs = list(specs)
        self.device = device
        self.generators = [create_generator(s.seed, s.source, device) for s in self.specs]
        self.drawn_first = False

    def first(self) -> torch.Tensor:
        """The initial noise (B, C, H, W), float32, on the device (not yet scaled by σ_max)."""
        xs = []
        for spec, generator in zip(self.specs, self.generators, strict=True):
            xs.append(self._initial(spec, generator))
        self.generators = [
            create_generator(s.seed + s.ensd, s.source, self.device) if s.ensd else g
            for s, g in zip(self.specs, self.generators, strict=True)
        ]
        self.drawn_first = True
        return torch.stack([x.to(self.device) for x in xs])

    def next(self) -> torch.Tensor:
        """The next ancestral noise (B, C, H, W), one draw per image from its generator."""
        if not self.drawn_first:
            return self.first()
        return torch.stack([g.randn(self.shape).to(self.device) for g in self.generators])

    def _initial(self, spec: NoiseSpec, generator: NoiseGenerator) -> torch.Tensor:
        channels, height, width = self.shape
        from_w, from_h = spec.resize_from
        resized = from_w > 0 and from_h > 0
        noise_shape = (channels, from_h // 8, from_w // 8) if resized else self.shape
        same_shape = noise_shape == self.shape

        def fresh(seed: int) -> torch.Tensor:  # A1111 `randn(seed, shape)`: a new generator
            return create_generator(seed, spec.source, self.device).randn(noise_shape)

        subnoise = fresh(spec.subseed) if spec.subseed_strength != 0 else None
        noise = generator.randn(self.shape) if same_shape else fresh(spec.seed)
        if subnoise is not None:
            noise = slerp(spec.subseed_strength, noise, subnoise.to(noise.device))
        if same_shape:
            return noise
        # Centre the old-size noise in a full-size draw from the image's own generator.
        x = generator.randn(self.shape)
        dx, dy = (width - noise_shape[2]) // 2, (height - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        x[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w].to(x.device)
        return x
