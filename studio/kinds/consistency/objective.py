"""The latent consistency distillation objective (LCM), written out so one step reads top to bottom.

Notation as in the LCM paper: the student f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, t) is a
consistency function; one skipping step of a DDIM solver on the guided ODE teacher takes x_t to
x_{t-k}, and the loss pulls f(x_t, t) towards the target network's f(x_{t-k}, t-k). The
boundary scalings are the ones diffusers' LCMScheduler samples with (sigma_data 0.5, timestep
scaling 10), so a trained student samples with that scheduler unchanged.
"""

import math

import torch

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # LCMScheduler's default


def boundary_scalings(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) per timestep, shaped to broadcast over latents: c_skip(0) = 1, c_out(0) = 0."""
    scaled = timesteps.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def x0_and_noise(output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor,
                 prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean latents and the noise a U-Net output implies (epsilon or v-prediction); alpha_bar per image."""
    alpha, sigma = alpha_bar.sqrt()[:, None, None, None], (1 - alpha_bar).sqrt()[:, None, None, None]
    if prediction_type == "epsilon":
        return (sample - sigma * output) / alpha, output
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * output, alpha * output + sigma * sample
    raise ValueError(f"prediction type {prediction_type!r} is not supported; epsilon or v_prediction")


class SkippingSolver:
    """DDIM on `solver_steps` of the 1000 training timesteps: t_n = (n + 1) * k - 1 steps to t_n - k."""

    def __init__(self, alphas_cumprod: torch.Tensor, solver_steps: int):
        self.skip = len(alphas_cumprod) // solver_steps
        self.timesteps = torch.arange(1, solver_steps + 1) * self.skip - 1
        self.alphas_cumprod = alphas_cumprod
        self.alpha_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(solver indices, t, t - k clamped at 0) for n images."""
        index = torch.randint(len(self.timesteps), (n,), generator=generator)
        start = self.timesteps[index]
        return index, start, (start - self.skip).clamp(min=0)

    def step(self, x0: torch.Tensor, noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        alpha_prev = self.alpha_prev[index][:, None, None, None]
        return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * noise


def guidance_embedding(guidance: torch.Tensor, dim: int) -> torch.Tensor:
    """The sinusoidal embedding of (guidance - 1) that diffusers' pipelines pass as `timestep_cond`
    (the same formula as StableDiffusionPipeline.get_guidance_scale_embedding, so training and sampling agree)."""
    w = (guidance - 1.0).float() * 1000.0
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(embedding, (0, 1)) if dim % 2 else embedding


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    return (torch.sqrt((prediction.float() - target.float()) ** 2 + c**2) - c).mean()
