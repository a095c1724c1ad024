"""Policies (diffusion, Gaussian, GMM), critics and shared network blocks."""
