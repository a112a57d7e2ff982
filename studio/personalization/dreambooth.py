"""DreamBooth on a teacher or a student: LoRA through peft (default) or full finetuning.

`python -m studio dreambooth --model M --photos DIR --instance-prompt "a sks dog"
--class-prompt "a dog" --out OUT`. One loop, top to bottom: each step trains
on one instance photo with the instance prompt and one class image (made by
the model itself, before training) with the class prompt; the prior term keeps
the class as it was. Defaults are the BK-SDM paper's recipe: LoRA rank 16,
alpha 27 on to_q/to_v (text encoder: rank 16, alpha 17 on q_proj/v_proj),
lr 1e-4 (full: 1e-6) constant, 800 steps, batch 1, prior weight 1.0, 200 class images.

Outputs: OUT/lora (diffusers LoRA format: `pipe.load_lora_weights(OUT / "lora")`)
or OUT/unet (full), metrics.csv, checkpoints, validation images, card.json with
time and peak memory.
"""

import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from studio.distillation.data import image_to_tensor
from studio.loading import load_pipeline
from studio.personalization.photos import import_photos
from studio.runs import MetricsLog, StopOnSigterm, latest_checkpoint, save_checkpoint, step_generator

METRICS = ["step", "loss_total", "loss_instance", "loss_prior", "lr", "seconds"]
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif")


class DreamBoothError(RuntimeError):
    """A run that had to stop; its checkpoints and logs are kept."""


@dataclass
class DreamBoothConfig:
    model: str
    photos: str
    instance_prompt: str
    class_prompt: str
    out: str
    steps: int = 800
    lora: bool = True  # False: full finetuning of the U-Net
    rank: int = 16
    alpha: float = 27.0
    train_text_encoder: bool = False
    text_rank: int = 16
    text_alpha: float = 17.0
    lr: float | None = None  # None: 1e-4 for LoRA, 1e-6 for full finetuning
    prior_weight: float = 1.0
    class_images: int = 200
    sample_steps: int = 25  # for class and validation images
    guidance: float = 7.5
    gradient_checkpointing: bool = True
    checkpoint_every: int = 200
    log_every: int = 10
    validation_prompts: tuple[str, ...] = ()
    seed: int = 0
    resume: bool = False

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.lora else 1e-6)

    def check(self) -> None:
        for name in ("steps", "rank", "text_rank", "checkpoint_every", "log_every", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.class_images < 0 or self.prior_weight < 0:
            raise ValueError("--class-images and --prior-weight must be >= 0")
        if self.prior_weight > 0 and self.class_images == 0:
            raise ValueError("prior preservation needs class images: give --class-images > 0 or --prior-weight 0")
        if not self.instance_prompt.strip() or not self.class_prompt.strip():
            raise ValueError("both --instance-prompt (with the identifier, 'a sks dog') and --class-prompt ('a dog') "
                             "are needed")
        if self.learning_rate <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")


def photo_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"photo folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file())


def peak_memory() -> dict:
    """CUDA peak allocation on a GPU; otherwise this process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "memory_kind": "cuda peak allocated"}
    return {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "memory_kind": "process peak RSS"}


@torch.inference_mode()
def make_class_images(pipeline, prompt: str, n: int, folder: Path, steps: int, guidance: float, seed: int) -> list[Path]:
    """n images of the class by the model itself; images already there are kept, so this resumes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"class-{i:04d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            image = pipeline(prompt, num_inference_steps=steps, guidance_scale=guidance,
                             generator=torch.Generator().manual_seed(seed * 100_003 + i)).images[0]
            image.save(path.with_suffix(".tmp.png"))
            path.with_suffix(".tmp.png").rename(path)  # a kill never leaves half an image
    return paths


def _to_tensor(path: Path, resolution: int, flip: bool) -> torch.Tensor:
    with Image.open(path) as image:
        return image_to_tensor(image, resolution, flip)


def _add_lora(pipeline, config: DreamBoothConfig) -> None:
    from peft import LoraConfig

    pipeline.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                         target_modules=["to_q", "to_v"]))
    if config.train_text_encoder:
        pipeline.text_encoder.add_adapter(LoraConfig(r=config.text_rank, lora_alpha=config.text_alpha,
                                                     init_lora_weights="gaussian", target_modules=["q_proj", "v_proj"]))


def _trainable(pipeline, config) -> dict[str, torch.nn.Parameter]:
    named = {f"unet.{k}": p for k, p in pipeline.unet.named_parameters() if p.requires_grad}
    if config.train_text_encoder:
        named.update({f"text_encoder.{k}": p for k, p in pipeline.text_encoder.named_parameters() if p.requires_grad})
    return named


def dreambooth(config: DreamBoothConfig, progress: bool = True) -> Path:
    """Run (or resume) DreamBooth; returns the output folder."""
    from diffusers import DDPMScheduler
    from tqdm import tqdm

    config.check()
    out = Path(config.out)
    if not config.resume and (out / "metrics.csv").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    started = time.perf_counter()
    pipeline = load_pipeline(config.model)
    resolution = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    if not (config.resume and (out / "instance").is_dir()):
        instance = import_photos(photo_files(Path(config.photos)), out / "instance", resolution)
    else:
        instance = sorted((out / "instance").glob("photo-*.png"))
    pipeline.set_progress_bar_config(disable=True)
    class_paths = make_class_images(pipeline, config.class_prompt, config.class_images, out / "class_images",
                                    config.sample_steps, config.guidance, config.seed) if config.prior_weight else []

    for part in (pipeline.vae, pipeline.text_encoder, pipeline.unet):
        part.requires_grad_(False)
    if config.lora:
        _add_lora(pipeline, config)
    else:
        pipeline.unet.requires_grad_(True)
    if config.gradient_checkpointing:
        pipeline.unet.enable_gradient_checkpointing()
    trainable = _trainable(pipeline, config)
    optimizer = torch.optim.AdamW(trainable.values(), lr=config.learning_rate, weight_decay=1e-2)
    start_step = 0
    checkpoint = latest_checkpoint(out) if config.resume else None
    if checkpoint is not None:
        saved = load_file(checkpoint / "trainable.safetensors")
        with torch.no_grad():
            for name, parameter in trainable.items():
                parameter.copy_(saved[name])
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        start_step = json.loads((checkpoint / "state.json").read_text())["step"]
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")

    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    ids = pipeline.tokenizer([config.instance_prompt, config.class_prompt], padding="max_length", truncation=True,
                             max_length=pipeline.tokenizer.model_max_length, return_tensors="pt").input_ids
    log = MetricsLog(out / "metrics.csv", start_step, METRICS)
    pipeline.unet.train()
    device = pipeline.device
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc="dreambooth",
               unit="step", disable=not progress)
    loop_start, losses = time.perf_counter(), {}
    with StopOnSigterm() as stop:
        for step in bar:
            rng, generator = step_generator(config.seed, step)
            paths = [instance[rng.randrange(len(instance))]]
            if class_paths:
                paths.append(class_paths[rng.randrange(len(class_paths))])
            images = torch.stack([_to_tensor(p, resolution, rng.random() < 0.5) for p in paths]).to(device)
            with torch.no_grad():
                latents = pipeline.vae.encode(images).latent_dist.sample(generator) * pipeline.vae.config.scaling_factor
            context = pipeline.text_encoder(ids[:len(paths)].to(device))[0]
            noise = torch.randn(latents.shape, generator=generator).to(device)
            timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (len(paths),),
                                      generator=generator).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
                noise_scheduler.get_velocity(latents, noise, timesteps)
            prediction = pipeline.unet(noisy, timesteps, encoder_hidden_states=context).sample
            loss_instance = F.mse_loss(prediction[:1].float(), target[:1].float())
            loss_prior = F.mse_loss(prediction[1:].float(), target[1:].float()) if class_paths else torch.zeros(())
            loss = loss_instance + config.prior_weight * loss_prior
            if not torch.isfinite(loss):
                raise DreamBoothError(f"loss became {loss.item()} at step {step}; stopped. Last good checkpoint: "
                                      f"{latest_checkpoint(out) or 'none yet'}. Try a lower --lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
            optimizer.step()
            losses = {"loss_total": loss.item(), "loss_instance": loss_instance.item(), "loss_prior": loss_prior.item()}
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                log.write({"step": done, **losses, "lr": config.learning_rate,
                           "seconds": round(log.seconds_before + time.perf_counter() - loop_start, 2)})
                bar.set_postfix(loss=f"{losses['loss_total']:.4f}")
            if done % config.checkpoint_every == 0 or done == config.steps or stop.requested:
                save_checkpoint(out, done, {"trainable.safetensors": trainable}, {"optimizer.pt": optimizer.state_dict()})
                if config.validation_prompts:
                    _validation_images(pipeline, config, out / "validation" / f"step-{done:06d}.png")
            if stop.requested:
                log.close()
                raise DreamBoothError(f"cancelled at step {done} of {config.steps}; checkpoint saved in "
                                      f"{latest_checkpoint(out)}; continue with --resume")
    log.close()
    _save_result(pipeline, config, out, losses, time.perf_counter() - started)
    return out


@torch.no_grad()
def _validation_images(pipeline, config: DreamBoothConfig, path: Path) -> None:
    pipeline.unet.eval()
    images = pipeline(list(config.validation_prompts), num_inference_steps=config.sample_steps,
                      guidance_scale=config.guidance, generator=torch.Generator().manual_seed(0)).images
    pipeline.unet.train()
    width, height = images[0].size
    grid = Image.new("RGB", (width * len(images), height))
    for i, image in enumerate(images):
        grid.paste(image, (i * width, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def _save_result(pipeline, config: DreamBoothConfig, out: Path, losses: dict, seconds: float) -> None:
    if config.lora:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        text_layers = None
        if config.train_text_encoder:
            text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.text_encoder))
        StableDiffusionPipeline.save_lora_weights(
            out / "lora", unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet)),
            text_encoder_lora_layers=text_layers, safe_serialization=True,
        )
    else:
        pipeline.unet.save_pretrained(out / "unet", safe_serialization=True)
    card = {"model": config.model, "mode": "lora" if config.lora else "full", "instance_prompt": config.instance_prompt,
            "class_prompt": config.class_prompt, "steps": config.steps, "lr": config.learning_rate,
            "final_losses": losses, "train_seconds": round(seconds, 1), **peak_memory(),
            "trainable_params": sum(p.numel() for p in _trainable(pipeline, config).values())}
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def load_personalized(model: str, out: Path | str, catalog=None):
    """A fresh pipeline of `model` with a DreamBooth result applied (LoRA weights, or the finetuned U-Net).

    Fresh, not shared with other cached pipelines: LoRA layers go into its modules.
    """
    from diffusers import UNet2DConditionModel

    from studio.loading import share_components

    out = Path(out)
    pipeline = load_pipeline(model, catalog)
    if (out / "lora").is_dir():
        pipeline.load_lora_weights(out / "lora")
        return pipeline
    return share_components(pipeline, UNet2DConditionModel.from_pretrained(out / "unet"))
