"""Sampling: k-diffusion-style denoiser and loops, the sampler table, A1111 seeds and noise."""
