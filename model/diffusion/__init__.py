"""Diffusion policies: noise schedules, denoiser networks, the DiffusionModel policy and eta modules."""
