"""Train the toy world's teacher from scratch: VAE first, then text encoder and U-Net.

Run with `python -m studio toy train`. The output is an ordinary
StableDiffusionPipeline folder (safetensors; U-Net and VAE in fp16, the tiny text
encoder in fp32) with the loss log and a card.
"""

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from studio.kinds.training import Draws, MetricsLog, check_finite, due, noisy_inputs, tokenize, write_card
from studio.toy.data import batch_tensors
from studio.toy.prompts import task_mix
from studio.toy.world import SCHEDULE, build_components, zero_terminal_snr_betas


@dataclass
class ToyTrainConfig:
    out: str = "assets/toy/teacher"
    seed: int = 0
    dataset_size: int = 30_000
    batch_size: int = 64  # U-Net stage; batch 64 draws ~20% more samples per second than 32 here
    vae_batch_size: int = 32
    # 64x64 pixels into a 16x16x4 latent is 12x compression (the 32x32 world's was 3x): 600 steps left colors
    # drifting (cyan read as green) and edges soft, so the VAE gets three times as many.
    vae_steps: int = 1_800
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # 2,400 steps left the first 64x64 teacher at 33% on single objects. The shipped one ran 3,642 of 4,500 (its
    # time ran out; 59%), then 8,000 more with unet_from at lr 3e-4 on 60,000 scenes (87%): its card has the chain.
    unet_steps: int = 4_500
    lr: float = 7e-4  # U-Net and text encoder, cosine-decayed to a tenth
    weight_decay: float = 1e-2
    caption_dropout: float = 0.1  # empty captions teach the unconditional branch for CFG
    # v-prediction: with epsilon targets the text barely moves the loss at high noise, where colors
    # and layout are decided; an epsilon teacher trained in this budget ignored its prompts.
    prediction_type: str = "v_prediction"
    log_every: int = 25
    # Within the two hours. This VM's speed varies by +-20% between runs, so the U-Net stage stops early
    # (and says so in the log and card) rather than run over; a run at normal speed never reaches it.
    max_minutes: float = 90.0
    ema_decay: float = 0.999  # the shipped U-Net is the average: samples from the raw weights wobble step to step
    vae_from: str = ""  # a trained toy pipeline folder whose VAE to reuse (the VAE stage is then skipped)
    # A trained toy pipeline folder whose U-Net and text encoder to train on (and whose VAE, unless vae_from says
    # otherwise): more steps for a teacher whose budget ran out, on the latents it learned (same encoder, same scale).
    unet_from: str = ""
    # Relative weights of the task families in the training captions (a task not named weighs 1: uniform).
    task_weights: dict[str, float] = field(default_factory=dict)
    # Zero terminal SNR (Lin et al. 2024): SD's schedule leaves signal at t = T in training, and the shipped teacher
    # reads the start noise's coarse pattern as the object's color; on single objects it blends two colors.
    zero_terminal_snr: bool = False


METRICS = ["step", "loss_total", "loss_vae_recon", "loss_denoise", "lr", "seconds"]


class StageLog:
    """metrics.csv in the studio's run format (studio/kinds/training.py), one step count across both stages, so the
    app's loss plot reads it like any run's: loss_vae_recon while the VAE trains, loss_denoise after."""

    def __init__(self, path: Path):
        self.log = MetricsLog(path, 0, METRICS)
        self.start = time.perf_counter()

    def write(self, step: int, term: str, loss: float, lr: float) -> None:
        self.log.write({"step": step, "loss_total": loss, term: loss, "lr": lr,
                        "seconds": round(time.perf_counter() - self.start, 1)})

    def close(self) -> None:
        self.log.close()


def noise_schedule(config: ToyTrainConfig) -> dict:
    """The schedule the U-Net trains on and its pipeline samples with (SD's, or its zero-terminal-SNR betas)."""
    return {**SCHEDULE, "trained_betas": zero_terminal_snr_betas()} if config.zero_terminal_snr else dict(SCHEDULE)


def _cosine(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(vae, images, config: ToyTrainConfig, log: StageLog, generator) -> float:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    vae.train()
    bar = tqdm(range(config.vae_steps), desc="VAE", unit="step")
    for step in bar:
        x = images[torch.randint(len(images), (config.vae_batch_size,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        recon_loss = F.mse_loss(recon, x)
        loss = recon_loss + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        check_finite({"loss_total": loss}, step, Path(config.out))
        if due(step + 1, config.log_every, config.vae_steps):
            log.write(step + 1, "loss_vae_recon", recon_loss.item(), config.vae_lr)
            bar.set_postfix(mse=f"{recon_loss.item():.4f}")
    vae.eval()
    return recon_loss.item()


@torch.no_grad()
def make_posterior_deterministic(vae) -> None:
    """Set the encoder's log-variance to its floor (-30), so every `latent_dist.sample()` returns the mean.

    With a KL weight of 1e-6 the encoder leaves the channels the decoder does not use at the prior: measured on
    the first 64x64 teacher, two of four channels had a posterior std of 0.93 against a spread of their means of
    0.35 and 0.10, and the others 0.31-0.37 against 1.0. Sampled latents then hold noise no U-Net can predict
    (its v-loss stayed at 1.1 for 2,400 steps). The decoder was trained on samples, so it reads the means at
    least as well (MSE 0.0023 against 0.0025).
    """
    channels = vae.config.latent_channels
    vae.quant_conv.weight[channels:] = 0
    vae.quant_conv.bias[channels:] = -30.0


@torch.no_grad()
def encode_dataset(vae, images, chunk: int = 512):
    """Latents of every image (the posterior is deterministic) and SD's scaling factor (1 / latent std)."""
    latents = torch.cat([vae.encode(images[start:start + chunk]).latent_dist.mean
                         for start in range(0, len(images), chunk)])
    return latents, 1.0 / latents.std().item()


def train_denoiser(unet, text_encoder, tokenizer, latents, captions, config, log, generator,
                   deadline: float = float("inf")) -> tuple[float, int]:
    """Returns the last loss and the number of steps done (fewer than planned only at the deadline)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**noise_schedule(config), prediction_type=config.prediction_type)
    latents, scale = latents
    empty = tokenize(tokenizer, [""])
    ids = tokenize(tokenizer, captions)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, config.unet_steps))
    ema = None
    if config.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=config.ema_decay)
    unet.train()
    text_encoder.train()
    bar = tqdm(range(config.unet_steps), desc="teacher", unit="step")
    last_loss = float("nan")
    for step in bar:
        if time.perf_counter() > deadline:
            print(f"time budget reached: stopping the U-Net stage after {step} of {config.unet_steps} steps", flush=True)
            break
        index = torch.randint(len(latents), (config.batch_size,), generator=generator)
        z = latents[index] * scale
        batch_ids = ids[index].clone()
        drop = torch.rand(len(index), generator=generator) < config.caption_dropout
        batch_ids[drop] = empty
        noisy, timesteps, target = noisy_inputs(scheduler, z, Draws(generator))
        context = text_encoder(batch_ids)[0]
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=context).sample, target)
        check_finite({"loss_total": loss}, step, Path(config.out))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            ema.step(unet.parameters())
        last_loss = loss.item()
        if due(step + 1, config.log_every, config.unet_steps):
            log.write(config.vae_steps + step + 1, "loss_denoise", loss.item(), lr_schedule.get_last_lr()[0])
            bar.set_postfix(loss=f"{loss.item():.4f}")
    else:
        step = config.unet_steps
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval()
    text_encoder.eval()
    return last_loss, step


def reuse_vae(folder: str):
    """The VAE of an earlier `toy train` output (a pipeline folder), in fp32 for training and encoding."""
    from diffusers import AutoencoderKL

    path = Path(folder) / "vae"
    if not (path / "config.json").is_file():
        raise ValueError(f"--vae-from: {folder} has no vae/config.json; give a pipeline folder written by `toy train`")
    return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32, use_safetensors=True).eval()


def _read_scheduler(folder: Path) -> dict:
    path = folder / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def reuse_denoiser(folder: str, zero_terminal_snr: bool = False):
    """The tokenizer, text encoder and U-Net of an earlier `toy train` output, in fp32 for training."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(folder)
    if not all((path / part / "config.json").is_file() for part in ("unet", "text_encoder")):
        raise ValueError(f"--unet-from: {folder} has no unet/ and text_encoder/; give a pipeline folder written by "
                         "`toy train`")
    if not zero_terminal_snr and _read_scheduler(path).get("trained_betas"):
        raise ValueError(f"--unet-from: {folder} was trained with zero terminal SNR; pass --zero-terminal-snr to train "
                         "it on (SD's schedule would leave it signal at t=T that it never learned to read)")
    return (CLIPTokenizer.from_pretrained(path / "tokenizer"),
            CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=torch.float32, use_safetensors=True),
            UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32, use_safetensors=True))


def train_toy_teacher(config: ToyTrainConfig) -> Path:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    tokenizer, text_encoder, vae, unet = build_components(out)
    if config.unet_from:  # before rendering: a wrong source folder fails at once
        tokenizer, text_encoder, unet = reuse_denoiser(config.unet_from, config.zero_terminal_snr)
        config.vae_from = config.vae_from or config.unet_from
    print(f"rendering {config.dataset_size} training images ...", flush=True)
    mix = task_mix(config.task_weights) if config.task_weights else None
    images, captions = batch_tensors(range(config.dataset_size), config.seed, mix=mix)
    log = StageLog(out / "metrics.csv")
    try:
        if config.vae_from:
            vae = reuse_vae(config.vae_from)
            config.vae_steps = 0
            with torch.no_grad():
                vae_mse = F.mse_loss(vae(images[:256]).sample, images[:256]).item()
        else:
            vae_mse = train_vae(vae, images, config, log, generator)
        make_posterior_deterministic(vae)
        latents = encode_dataset(vae, images)
        if config.unet_from:  # the U-Net learned its latents at this scale
            latents = (latents[0], vae.config.scaling_factor)
        vae.register_to_config(scaling_factor=latents[1])
        saving_margin = 30.0  # seconds to write the pipeline after the last step
        deadline = start + config.max_minutes * 60 - saving_margin
        final_loss, steps_done = train_denoiser(unet, text_encoder, tokenizer, latents, captions, config, log,
                                                generator, deadline)
    finally:
        log.close()
    scheduler = PNDMScheduler(**noise_schedule(config), skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                              prediction_type=config.prediction_type)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    # fp16 U-Net and VAE keep the files small, and diffusers loads them as fp32; transformers keeps a
    # checkpoint's dtype, so the tiny text encoder stays fp32 for a plain from_pretrained to work.
    unet.to(torch.float16)
    vae.to(torch.float16)
    pipeline.save_pretrained(out, safe_serialization=True)
    source_card = Path(config.unet_from) / "card.json" if config.unet_from else None
    # a teacher trained on from another keeps that one's card: its total steps and time are the sum of the chain
    history = {"continued_from": json.loads(source_card.read_text())} if source_card and source_card.is_file() else {}
    card = write_card(out, "toy-teacher", config, config.vae_steps + steps_done,
                      {"loss_vae_recon": vae_mse, "loss_denoise": final_loss}, time.perf_counter() - start,
                      sum(p.numel() for part in (vae, text_encoder, unet) for p in part.parameters()),
                      data="studio.toy.data procedural scenes, 64x64, six GenEval task families", unet_steps_done=steps_done,
                      vae_scaling_factor=latents[1], threads=torch.get_num_threads(), **history)
    print(f"wrote the toy teacher to {out} in {card['train_seconds']:.0f}s", flush=True)
    return out
