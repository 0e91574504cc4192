"""The Brownian noise of the SDE samplers (DPM++ SDE, 2M SDE, 3M SDE): k-diffusion's
`BrownianTreeNoiseSampler` with one torchsde tree per image, drawn through A1111's RNG sources.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from engine.request import RngSource
from engine.sampling.denoiser import (
    Tensor,
)
from engine.sampling.seeds import create_generator

# --- Brownian noise (DPM++ SDE) -----------------------------------------------------------------

TreeRandn = Callable[[int, tuple[int, ...]], Tensor]
"""(a seed torchsde derived for one draw, shape) → float32 standard-normal noise."""


def randn_local(source: RngSource, device: torch.device) -> TreeRandn:
    """A1111 `rng.randn_local` (`rng.py:22-33`): the first draw of a fresh generator of `source`.

    As everywhere here, "GPU" off CUDA is CUDA's randn emulated (`seeds.create_generator`), where
    A1111 on a CPU-only host would fall back to the CPU generator.
    """
    return lambda seed, shape: create_generator(seed, source, device).randn(shape)


class BrownianNoise:
    """k-diffusion `BrownianTreeNoiseSampler` with one torchsde Brownian tree per image seed.

    A1111 v1.9.4 seeds each image's tree with its seed alone, never seed + ENSD or the variation
    seed (`sd_samplers_common.py:334-342`, `all_seeds`), which keeps an image independent of its
    batch-mates. Its torchsde patch (`sd_samplers_common.py:146-155`) answers every draw a tree
    makes, `_randn(size, dtype, device, seed)` with a 32-bit seed torchsde derives from the
    tree's entropy, with `rng.randn_local(seed, size)` for the chosen RNG source; `sources`
    (one per tree) do the same here. Without `sources` the trees draw as torchsde does, from a
    torch generator on the latents' device. Queries a float ulp outside [σ_min, σ_max] make
    torchsde warn (in A1111 too); the answer is the same, so those warnings are silenced here.
    """

    def __init__(
        self,
        x: Tensor,
        sigmas: Tensor,
        seeds: Sequence[int],
        sources: Sequence[RngSource] = (),
    ) -> None:
        import torchsde

        if len(seeds) != x.shape[0] or (sources and len(sources) != len(seeds)):
            raise ValueError(
                f"{x.shape[0]} latents need as many seeds (got {len(seeds)}) and sources "
                f"(got {len(sources)})"
            )
        positive = sigmas[sigmas > 0]
        t0, t1 = positive.min(), sigmas.max()
        w0 = torch.zeros_like(x[0])
        self.draws: list[TreeRandn | None] = [randn_local(s, x.device) for s in sources]
        self.draws = self.draws or [None] * len(seeds)
        self.trees = []
        for seed, draw in zip(seeds, self.draws, strict=True):
            # The tree draws its first increments as it is built: route those too.
            with _tree_draws(draw):
                self.trees.append(torchsde.BrownianTree(t0, w0, t1, entropy=seed))

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        ws = []
        for tree, draw in zip(self.trees, self.draws, strict=True):
            with _tree_draws(draw):
                ws.append(tree(low, high))
        return torch.stack(ws) * sign / (t1 - t0).abs().sqrt()


# torchsde draws every Brownian increment through its module-level `_randn`, so that is the
# only seam: route it once, as A1111 does, but per thread and only while one of our trees is
# building or answering; other users of torchsde (diffusers' DPMSolverSDEScheduler) keep theirs.
_routing = threading.local()
_routing_lock = threading.Lock()
_torchsde_randn: list[Callable[..., Tensor]] = []  # torchsde's own, kept for everyone else


def _routed_randn(size: Any, dtype: torch.dtype, device: torch.device, seed: Any) -> Tensor:
    draw: TreeRandn | None = getattr(_routing, "draw", None)
    if draw is None:
        return _torchsde_randn[0](size, dtype, device, seed)
    return draw(int(seed), tuple(size)).to(device=device, dtype=dtype)


@contextlib.contextmanager
def _tree_draws(draw: TreeRandn | None) -> Iterator[None]:
    from torchsde._brownian import brownian_interval

    with _routing_lock:
        if brownian_interval._randn is not _routed_randn:
            _torchsde_randn[:] = [brownian_interval._randn]
            brownian_interval._randn = _routed_randn
    previous = getattr(_routing, "draw", None)
    _routing.draw = draw
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            yield
    finally:
        _routing.draw = previous
