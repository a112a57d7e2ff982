"""Latent consistency distillation (LCM, Luo et al. 2023) of the studio's students: sampling in 1-4 steps."""
