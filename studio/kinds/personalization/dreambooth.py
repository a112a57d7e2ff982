"""DreamBooth on a teacher or a student: LoRA through peft (default) or full finetuning.

`python -m studio dreambooth --model M --photos DIR --instance-prompt "a sks dog"
--class-prompt "a dog" --out OUT`. One function, top to bottom: each step trains
on one instance photo with the instance prompt and one class image (made by
the model itself, before training) with the class prompt; the prior term keeps
the class as it was. The options and their defaults (the paper's recipe) are
in `studio/kinds/personalization/config.py`.

Outputs: OUT/lora (diffusers LoRA format: `pipe.load_lora_weights(OUT / "lora")`)
or OUT/unet (full), metrics.csv, checkpoints, validation images, card.json with
time and peak memory.
"""

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from studio.images import to_tensor
from studio.inference.generation import sample
from studio.kinds.personalization.config import DreamBoothConfig
from studio.kinds.personalization.photos import import_photos
from studio.kinds.trackers import Trackers
from studio.kinds.training import (
    MetricsLog, StopOnSigterm, cancelled, check_finite, check_new_run, derive_seed, due, encode_latents,
    latest_checkpoint, noisy_inputs, save_checkpoint, save_validation, step_draws, tokenize, training_scheduler,
    write_card,
)
from studio.models.loading import load_lora, load_pipeline, load_unet, share_components
from studio.progress import Callback, report

METRICS = ["step", "loss_total", "loss_instance", "loss_prior", "lr", "seconds"]


def photo_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"photo folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file())


def make_class_images(pipeline, prompt: str, n: int, folder: Path, steps: int, guidance: float, seed: int,
                      callback: Callback | None = None) -> list[Path]:
    """n images of the class by the model itself; images already there are kept, so this resumes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"class-{i:04d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            image = sample(pipeline, [prompt], [derive_seed(seed, i)], steps, guidance)[0]
            image.save(path.with_suffix(".tmp.png"))
            path.with_suffix(".tmp.png").rename(path)  # a kill never leaves half an image
        report(callback, "class images", i + 1, n)
    return paths


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


def dreambooth(config: DreamBoothConfig, callback: Callback | None = None) -> Path:
    """Run (or resume) DreamBooth; returns the output folder."""
    config.check()
    out = Path(config.out)
    check_new_run(out, config.resume)
    started = time.perf_counter()

    # The model, the photos (checked and copied into the run) and the class images it makes itself.
    pipeline = load_pipeline(config.model)
    resolution = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    if config.resume and (out / "instance").is_dir():
        instance = sorted((out / "instance").glob("photo-*.png"))
    else:
        instance = import_photos(photo_files(Path(config.photos)), out / "instance", resolution)
    class_paths = make_class_images(pipeline, config.class_prompt, config.class_images, out / "class_images",
                                    config.sample_steps, config.guidance, config.seed, callback) \
        if config.prior_weight else []

    # What trains: LoRA adapters (or the whole U-Net); the rest is frozen.
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
    checkpoint = latest_checkpoint(out) if config.resume else None
    start_step = 0
    if checkpoint is not None:
        saved = checkpoint.tensors("trainable.safetensors")
        with torch.no_grad():
            for name, parameter in trainable.items():
                parameter.copy_(saved[name])
        optimizer.load_state_dict(checkpoint.state("optimizer.pt"))
        start_step = checkpoint.step
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")

    noise_scheduler = training_scheduler(pipeline)
    ids = tokenize(pipeline.tokenizer, [config.instance_prompt, config.class_prompt])
    log = MetricsLog(out / "metrics.csv", start_step, METRICS, Trackers(config.report_to, out, "dreambooth", config))
    pipeline.unet.train()
    device = pipeline.device
    loop_started, losses = time.perf_counter(), {}
    with StopOnSigterm() as stop:
        for step in range(start_step, config.steps):
            rng, draws = step_draws(config.seed, step)
            paths = [instance[rng.randrange(len(instance))]]
            if class_paths:
                paths.append(class_paths[rng.randrange(len(class_paths))])
            images = []
            for path in paths:
                with Image.open(path) as image:
                    images.append(to_tensor(image, flip=rng.random() < 0.5))
            latents = encode_latents(pipeline.vae, torch.stack(images).to(device), draws)
            context = pipeline.text_encoder(ids[:len(paths)].to(device))[0]
            noisy, timesteps, target = noisy_inputs(noise_scheduler, latents, draws)
            prediction = pipeline.unet(noisy, timesteps, encoder_hidden_states=context).sample
            loss_instance = F.mse_loss(prediction[:1].float(), target[:1].float())
            loss_prior = F.mse_loss(prediction[1:].float(), target[1:].float()) if class_paths else torch.zeros(())
            terms = {"loss_total": loss_instance + config.prior_weight * loss_prior,
                     "loss_instance": loss_instance, "loss_prior": loss_prior}
            check_finite(terms, step, out)
            optimizer.zero_grad(set_to_none=True)
            terms["loss_total"].backward()
            torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
            optimizer.step()
            losses = {k: v.item() for k, v in terms.items()}

            done = step + 1
            if due(done, config.log_every, config.steps):
                log.write({"step": done, **losses, "lr": config.learning_rate,
                           "seconds": round(log.seconds_before + time.perf_counter() - loop_started, 2)})
            report(callback, "dreambooth", done, config.steps, loss=losses["loss_total"])
            if due(done, config.checkpoint_every, config.steps) or stop.requested:
                save_checkpoint(out, done, {"trainable.safetensors": trainable}, {"optimizer.pt": optimizer.state_dict()},
                                keep=config.checkpoints_total_limit)
                if config.validation_prompts:
                    validation_row(pipeline, config, out / "validation" / f"step-{done:06d}.png", log, done)
            if stop.requested:
                log.close()
                raise cancelled(out, done, config.steps)
    log.close()
    save_result(pipeline, config, out)
    write_card(out, "dreambooth", config, config.steps, losses, time.perf_counter() - started,
               sum(p.numel() for p in trainable.values()), model=config.model, mode=config.mode)
    return out


@torch.no_grad()
def validation_row(pipeline, config: DreamBoothConfig, path: Path, log: MetricsLog | None = None,
                   step: int | None = None) -> None:
    pipeline.unet.eval()
    prompts = list(config.validation_prompts)
    images = sample(pipeline, prompts, [derive_seed(config.seed, i) for i in range(len(prompts))],
                    config.sample_steps, config.guidance)
    pipeline.unet.train()
    save_validation(path, [images], log, step)


def save_result(pipeline, config: DreamBoothConfig, out: Path) -> None:
    if not config.lora:
        pipeline.unet.save_pretrained(out / "unet", safe_serialization=True)
        return
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


def load_personalized(model: str, out: Path | str, catalog=None):
    """A fresh pipeline of `model` with a DreamBooth result applied (LoRA weights, or the finetuned U-Net).

    Fresh, not shared with other cached pipelines: LoRA layers go into its modules.
    """
    out = Path(out)
    pipeline = load_pipeline(model, catalog)
    if (out / "lora").is_dir():
        return load_lora(pipeline, out / "lora")
    return share_components(pipeline, load_unet(str(out / "unet"), catalog))
