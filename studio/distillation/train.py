"""Distill a block-removed student from its teacher (BK-SDM pretraining).

`python -m studio distill ...`, or `accelerate launch -m studio distill ...` for
several processes. One loop, top to bottom: draw a batch, encode it, noise it,
run teacher (no graph) and student on the same inputs, take the KD loss, step.

Every step's randomness (which images, noise, timesteps, caption dropout) is
derived from (seed, step, process), so a run resumed from a checkpoint draws
exactly what the uninterrupted run would have, and a checkpoint needs only the
student, optimizer and scheduler states and the step count.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from studio.compression import build_student, plan_student, resolve_spec
from studio.distillation.data import open_data
from studio.distillation.objective import KDWeights, capture_outputs, feature_pairs, kd_loss
from studio.loading import load_pipeline
from studio.runs import MetricsLog, StopOnSigterm, latest_checkpoint, save_checkpoint, step_generator

METRICS = ["step", "loss_total", "loss_task", "loss_out_kd", "loss_feat_kd", "lr", "seconds"]


class TrainingError(RuntimeError):
    """A run that had to stop; its last good checkpoint is kept."""


class TrainingCancelled(TrainingError):
    """SIGTERM (the studio's Cancel) stopped the run after a checkpoint of the current step."""


@dataclass
class DistillConfig:
    teacher: str
    arch: str
    data: str
    out: str
    steps: int = 1000
    batch_size: int = 8
    lr: float = 5e-5  # the paper's: constant, AdamW, weight decay 1e-2
    weight_decay: float = 1e-2
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no, fp16, bf16
    teacher_dtype: str = "fp32"
    ema_decay: float | None = None
    weights: KDWeights = field(default_factory=KDWeights)
    init: str = "teacher"  # or "random", for the ablation
    checkpoint_every: int = 500
    log_every: int = 10
    caption_dropout: float = 0.0
    seed: int = 0
    resume: bool = False
    validation_prompts: tuple[str, ...] = ()
    validation_guidance: float = 7.5

    def check(self) -> None:
        resolve_spec(self.arch)
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if min(asdict(self.weights).values()) < 0:
            raise ValueError(f"loss weights must be >= 0, got {asdict(self.weights)}")
        if self.init not in ("teacher", "random"):
            raise ValueError(f"--init must be teacher or random, got {self.init!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


def _validation_images(teacher_pipe, student_unet, prompts, path: Path, guidance: float, steps: int = 25) -> None:
    from PIL import Image

    from studio.loading import share_components

    student_pipe = share_components(teacher_pipe, student_unet)
    rows = []
    for pipe in (teacher_pipe, student_pipe):
        pipe.set_progress_bar_config(disable=True)
        images = pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(0)).images
        rows.append(images)
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * len(prompts), height * 2))
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            grid.paste(image, (c * width, r * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def distill(config: DistillConfig, progress: bool = True) -> Path:
    """Run (or resume) a distillation; returns the output folder."""
    from accelerate import Accelerator
    from tqdm import tqdm

    config.check()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum)
    out = Path(config.out)
    checkpoint = latest_checkpoint(out) if config.resume else None
    if not config.resume and (out / "metrics.csv").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")

    teacher_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.teacher_dtype]
    teacher = load_pipeline(config.teacher).to(accelerator.device)
    resolution = teacher.unet.config.sample_size * teacher.vae_scale_factor
    data = open_data(config.data, resolution)  # checked before any training
    for part in (teacher.vae, teacher.text_encoder, teacher.unet):
        part.requires_grad_(False).eval()

    plan = plan_student(teacher.unet.config, config.arch)
    student = build_student(teacher.unet, config.arch)  # float32 copy of the teacher's weights
    teacher.unet.to(teacher_dtype)
    if config.init == "random":
        torch.manual_seed(config.seed)
        student = type(student).from_config(student.config).to(accelerator.device)
    pairs = feature_pairs(plan) if config.weights.feat > 0 else []
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant, as in the paper
    start_step = 0
    if checkpoint is not None:
        student.load_state_dict(load_file(checkpoint / "student.safetensors"))
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        start_step = json.loads((checkpoint / "state.json").read_text())["step"]
    ema = None
    if config.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(student.parameters(), decay=config.ema_decay)
        if checkpoint is not None and (checkpoint / "ema.safetensors").exists():
            shadow = load_file(checkpoint / "ema.safetensors")
            ema.shadow_params = [shadow[str(i)] for i in range(len(shadow))]
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)

    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**asdict(config), "feature_pairs": pairs}, indent=2) + "\n")
    log = MetricsLog(out / "metrics.csv", start_step, METRICS) if main else None
    if main and data.skipped:
        print(f"skipping {len(data.skipped)} unusable data rows, e.g. {data.skipped[0]}")
    noise_scheduler = _training_scheduler(teacher)
    empty_ids = _tokenize(teacher.tokenizer, [""])
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc="distill",
               unit="step", disable=not (main and progress))
    started = time.perf_counter()
    run = _Run(config, accelerator, teacher, teacher_dtype, student, optimizer, scheduler, data, pairs,
               noise_scheduler, empty_ids, out)
    with StopOnSigterm(accelerator.num_processes == 1) as stop:
        _loop(config, run, bar, log, started, ema, stop)
    if main:
        log.close()
        _save_result(out, config, accelerator.unwrap_model(student), ema, run.losses, plan)
    accelerator.wait_for_everyone()
    return out


def _loop(config, run, bar, log, started, ema, stop) -> None:
    accelerator, student, scheduler, teacher, out = run.accelerator, run.student, run.scheduler, run.teacher, run.out
    main = accelerator.is_main_process
    for step in bar:
        micro_losses = [run.micro_step(step * config.grad_accum + micro) for micro in range(config.grad_accum)]
        run.losses = losses = {k: sum(m[k] for m in micro_losses) / len(micro_losses) for k in micro_losses[0]}
        if ema is not None:
            ema.step(accelerator.unwrap_model(student).parameters())
        done = step + 1
        if main and (done % config.log_every == 0 or done == config.steps):
            row = dict(losses)
            log.write({"step": done, **row, "lr": scheduler.get_last_lr()[0],
                       "seconds": round(log.seconds_before + time.perf_counter() - started, 2)})
            bar.set_postfix(loss=f"{row['loss_total']:.4f}")
        if done % config.checkpoint_every == 0 or done == config.steps or stop.requested:
            accelerator.wait_for_everyone()
            if main:
                _save_checkpoint(out, done, accelerator.unwrap_model(student), run.optimizer, scheduler, ema)
                if config.validation_prompts:
                    _validation_images(teacher, accelerator.unwrap_model(student).to(torch.float32),
                                       config.validation_prompts, out / "validation" / f"step-{done:06d}.png",
                                       config.validation_guidance)
        if stop.requested:
            if main:
                log.close()
            raise TrainingCancelled(f"cancelled at step {done} of {config.steps}; checkpoint saved in "
                                    f"{latest_checkpoint(out)}; continue with --resume")


@dataclass
class _Run:
    """What one micro-step needs; `micro_step(index)` draws, runs both models and steps."""

    config: DistillConfig
    accelerator: object
    teacher: object
    teacher_dtype: torch.dtype
    student: torch.nn.Module
    optimizer: object
    scheduler: object
    data: object
    pairs: list
    noise_scheduler: object
    empty_ids: torch.Tensor
    out: Path
    losses: dict | None = None

    def micro_step(self, index: int) -> dict[str, float]:
        config, accelerator, teacher, device = self.config, self.accelerator, self.teacher, self.accelerator.device
        rng, generator = step_generator(config.seed, index, accelerator.process_index)
        with accelerator.accumulate(self.student):
            images, captions = self.data.batch(config.batch_size, rng)
            with torch.no_grad():
                latents = teacher.vae.encode(images.to(device)).latent_dist.sample(generator)
                latents = latents * teacher.vae.config.scaling_factor
                ids = _tokenize(teacher.tokenizer, captions)
                drop = torch.rand(len(ids), generator=generator) < config.caption_dropout
                ids[drop] = self.empty_ids
                context = teacher.text_encoder(ids.to(device))[0]
                noise = torch.randn(latents.shape, generator=generator).to(device)
                timesteps = torch.randint(self.noise_scheduler.config.num_train_timesteps, (len(latents),),
                                          generator=generator).to(device)
                noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
                target = noise if self.noise_scheduler.config.prediction_type == "epsilon" else \
                    self.noise_scheduler.get_velocity(latents, noise, timesteps)
                with capture_outputs(teacher.unet, [t for _, t in self.pairs]) as teacher_features:
                    teacher_out = teacher.unet(noisy.to(self.teacher_dtype), timesteps,
                                               encoder_hidden_states=context.to(self.teacher_dtype)).sample
            with capture_outputs(accelerator.unwrap_model(self.student), [s for s, _ in self.pairs]) as features:
                student_out = self.student(noisy, timesteps, encoder_hidden_states=context).sample
            losses = kd_loss(student_out, teacher_out, target, features, teacher_features, self.pairs, config.weights)
            if not torch.isfinite(losses["loss_total"]):
                raise TrainingError(
                    f"loss became {losses['loss_total'].item()} at step {index // config.grad_accum}; stopped. "
                    f"Last good checkpoint: {latest_checkpoint(self.out) or 'none yet'}. Try a lower --lr."
                )
            accelerator.backward(losses["loss_total"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.student.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {k: v.item() for k, v in losses.items()}


def _training_scheduler(teacher):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(teacher.scheduler.config)


def _tokenize(tokenizer, texts):
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _save_checkpoint(out: Path, step: int, student, optimizer, scheduler, ema) -> None:
    tensors = {"student.safetensors": student.state_dict()}
    if ema is not None:
        tensors["ema.safetensors"] = {f"{i}": p for i, p in enumerate(ema.shadow_params)}
    save_checkpoint(out, step, tensors, {"optimizer.pt": optimizer.state_dict(), "scheduler.pt": scheduler.state_dict()})


def _save_result(out: Path, config: DistillConfig, student, ema, losses, plan) -> None:
    if ema is not None:
        ema.copy_to(student.parameters())
    student.to(torch.float32).save_pretrained(out / "unet", safe_serialization=True)
    final = dict(losses) if losses else {}
    card = {
        "teacher": config.teacher, "arch": str(plan.spec), "data": config.data, "steps": config.steps,
        "init": config.init, "weights": asdict(config.weights), "final_losses": final,
        "unet_params": sum(p.numel() for p in student.parameters()),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
