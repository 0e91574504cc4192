"""A1111 seeds: NV's Philox randn, per-image generators, ENSD, variation seeds, seed resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.sampling.seeds import (
    SEED_LIMIT,
    ImageRNG,
    NoiseSpec,
    PhiloxGenerator,
    TorchGenerator,
    create_generator,
    random_seed,
    slerp,
)

CPU = torch.device("cpu")
SHAPE = (4, 8, 12)
# A1111 modules/rng_philox.py: the documented output of Generator(seed=0).randn((3, 4)), which
# equals torch.randn((3, 4), generator=torch.Generator("cuda").manual_seed(0), device="cuda").
NV_SEED0 = [
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
]


def cpu_randn(seed: int, shape: tuple[int, ...], draws: int = 1) -> torch.Tensor:
    """The `draws`-th torch.randn of `shape` from a fresh CPU generator seeded `seed`."""
    g = torch.Generator("cpu").manual_seed(seed)
    for _ in range(draws - 1):
        torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g)


def test_nv_matches_cudas_known_vector() -> None:
    values = PhiloxGenerator(0).randn((3, 4))
    assert values.dtype == torch.float32
    np.testing.assert_allclose(
        values[0].numpy(), [-0.92466, -0.42534, -2.64385, 0.14518], atol=1e-5
    )
    np.testing.assert_allclose(values.numpy(), NV_SEED0, atol=1e-6)


def test_nv_is_stable_across_runs_and_advances_per_call() -> None:
    a, b = PhiloxGenerator(31337), PhiloxGenerator(31337)
    first, again = a.randn(SHAPE), b.randn(SHAPE)
    assert torch.equal(first, again)
    second = a.randn(SHAPE)
    assert not torch.equal(first, second)
    assert torch.equal(second, b.randn(SHAPE))
    # A standard normal: mean ~0, std ~1 over a realistic latent.
    big = PhiloxGenerator(7).randn((4, 96, 64))
    assert abs(float(big.mean())) < 0.03 and abs(float(big.std()) - 1) < 0.03


def test_nv_takes_seeds_past_32_bits() -> None:
    # seed + ENSD can exceed 2**32 - 1; the Philox key holds 64 bits.
    low, high = PhiloxGenerator(5).randn(SHAPE), PhiloxGenerator(5 + 2**32).randn(SHAPE)
    assert not torch.equal(low, high)


def test_sources_pick_the_right_generator() -> None:
    assert torch.equal(create_generator(42, "CPU", CPU).randn(SHAPE), cpu_randn(42, SHAPE))
    nv = PhiloxGenerator(42).randn(SHAPE)
    assert torch.equal(create_generator(42, "NV", CPU).randn(SHAPE), nv)
    # Off CUDA, "GPU" means "what a CUDA GPU would draw": the Philox emulation.
    assert torch.equal(create_generator(42, "GPU", CPU).randn(SHAPE), nv)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nv_emulates_cuda_randn() -> None:
    cuda = torch.device("cuda")
    generator = create_generator(1234, "GPU", cuda)
    assert isinstance(generator, TorchGenerator)
    emulated = PhiloxGenerator(1234)
    for _ in range(3):  # the first draw and the ENSD-style draws after it
        real = generator.randn((4, 64, 64))
        assert real.device.type == "cuda"
        torch.testing.assert_close(real.cpu(), emulated.randn((4, 64, 64)), atol=1e-5, rtol=0)


def test_random_seeds_are_in_a1111s_range() -> None:
    seeds = {random_seed() for _ in range(50)}
    assert len(seeds) > 45 and all(0 <= s < SEED_LIMIT for s in seeds)
    assert SEED_LIMIT == 4294967294


def test_first_draw_is_one_fp32_tensor_per_image_from_its_seed() -> None:
    rng = ImageRNG(SHAPE, [NoiseSpec(seed=10, source="CPU"), NoiseSpec(seed=11, source="CPU")], CPU)
    noise = rng.first()
    assert noise.shape == (2, *SHAPE) and noise.dtype == torch.float32
    assert torch.equal(noise[0], cpu_randn(10, SHAPE))
    assert torch.equal(noise[1], cpu_randn(11, SHAPE))


def test_without_ensd_ancestral_noise_continues_the_seeds_generator() -> None:
    rng = ImageRNG(SHAPE, [NoiseSpec(seed=10, source="CPU", ensd=0)], CPU)
    rng.first()
    assert torch.equal(rng.next()[0], cpu_randn(10, SHAPE, draws=2))
    assert torch.equal(rng.next()[0], cpu_randn(10, SHAPE, draws=3))


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_ensd_reseeds_ancestral_noise_with_seed_plus_ensd(source: str) -> None:
    spec = NoiseSpec(seed=2870305590, source=source, ensd=31337)  # type: ignore[arg-type]
    rng = ImageRNG(SHAPE, [spec], CPU)
    plain = ImageRNG(SHAPE, [NoiseSpec(seed=2870305590, source=spec.source)], CPU).first()
    assert torch.equal(rng.first(), plain)  # ENSD never touches the initial noise
    reference = create_generator(2870305590 + 31337, spec.source, CPU)
    for _ in range(3):
        assert torch.equal(rng.next()[0], reference.randn(SHAPE))


def test_noise_does_not_depend_on_batch_mates() -> None:
    a = NoiseSpec(seed=1, source="NV", ensd=31337)
    b = NoiseSpec(seed=99, source="CPU", ensd=0, subseed=5, subseed_strength=0.4)
    together = ImageRNG(SHAPE, [a, b], CPU)
    alone = [ImageRNG(SHAPE, [spec], CPU) for spec in (a, b)]
    assert torch.equal(together.first(), torch.cat([r.first() for r in alone]))
    for _ in range(3):
        assert torch.equal(together.next(), torch.cat([r.next() for r in alone]))


def reference_slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111 rng.slerp written out in float64 numpy (norms over dim 1, lerp when nearly equal)."""
    lo, hi = low.double().numpy(), high.double().numpy()
    lo_n = lo / np.linalg.norm(lo, axis=1, keepdims=True)
    hi_n = hi / np.linalg.norm(hi, axis=1, keepdims=True)
    dot = (lo_n * hi_n).sum(1)
    if dot.mean() > 0.9995:
        return torch.from_numpy(lo * val + hi * (1 - val))
    omega = np.arccos(dot)
    so = np.sin(omega)
    res = (np.sin((1 - val) * omega) / so)[:, None] * lo + (np.sin(val * omega) / so)[:, None] * hi
    return torch.from_numpy(res)


def test_variation_seed_slerps_toward_the_subseeds_noise() -> None:
    base, sub = cpu_randn(3, SHAPE), cpu_randn(4, SHAPE)
    for strength in (0.1, 0.5, 1.0):
        spec = NoiseSpec(seed=3, source="CPU", subseed=4, subseed_strength=strength)
        noise = ImageRNG(SHAPE, [spec], CPU).first()[0]
        expected = reference_slerp(strength, base, sub).float()
        torch.testing.assert_close(noise, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slerp(1.0, base, sub), sub, atol=1e-5, rtol=1e-5)
    # Nearly parallel noise takes A1111's lerp branch, weights as written there.
    torch.testing.assert_close(slerp(0.3, base, base * 1.0001), base * 0.3 + base * 1.0001 * 0.7)


def test_variation_strength_zero_is_the_plain_seed() -> None:
    spec = NoiseSpec(seed=3, source="CPU", subseed=4, subseed_strength=0.0)
    assert torch.equal(ImageRNG(SHAPE, [spec], CPU).first()[0], cpu_randn(3, SHAPE))


def test_seed_resize_centres_the_old_sizes_noise() -> None:
    # A 96x64 image (latent 12x8) reusing the noise of 64x64 (8x8): A1111 pastes it centred.
    shape = (4, 8, 12)
    spec = NoiseSpec(seed=21, source="CPU", resize_from=(64, 64))
    noise = ImageRNG(shape, [spec], CPU).first()[0]
    old, full = cpu_randn(21, (4, 8, 8)), cpu_randn(21, shape)
    assert torch.equal(noise[:, :, 2:10], old)
    assert torch.equal(noise[:, :, :2], full[:, :, :2])
    assert torch.equal(noise[:, :, 10:], full[:, :, 10:])
    # Shrinking keeps the centre of the larger noise.
    spec = NoiseSpec(seed=21, source="CPU", resize_from=(128, 64))
    noise = ImageRNG((4, 8, 8), [spec], CPU).first()[0]
    assert torch.equal(noise, cpu_randn(21, (4, 8, 16))[:, :, 4:12])
    # The same size is no resize at all.
    same = NoiseSpec(seed=21, source="CPU", resize_from=(96, 64))
    assert torch.equal(ImageRNG(shape, [same], CPU).first()[0], full)


def test_seed_resize_keeps_the_ancestral_stream() -> None:
    # The image's own generator draws once (the full-size noise), so ENSD 0 continues after it.
    spec = NoiseSpec(seed=21, source="CPU", resize_from=(64, 64))
    rng = ImageRNG((4, 8, 12), [spec], CPU)
    rng.first()
    assert torch.equal(rng.next()[0], cpu_randn(21, (4, 8, 12), draws=2))
