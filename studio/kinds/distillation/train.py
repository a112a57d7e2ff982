"""Distill a block-removed student from its teacher (BK-SDM pretraining).

`python -m studio distill ...`, or `accelerate launch -m studio distill ...` for
several processes. One function, top to bottom: load, build the student, then
per step: draw a batch, encode it, noise it, run teacher (no graph) and student
on the same inputs, take the KD loss, step; log, checkpoint, stop on cancel.

Every step's randomness (which images, noise, timesteps, caption dropout) is
derived from (seed, step, process), so a run resumed from a checkpoint draws
exactly what the uninterrupted run would have, and a checkpoint needs only the
student, optimizer and scheduler states and the step count.
"""

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from studio.inference.devices import DTYPES
from studio.inference.generation import sample
from studio.kinds.data import check_bad_rows, family_sampling, prefetched, reading, rank_slice
from studio.kinds.distillation.config import DistillConfig
from studio.kinds.distillation.objective import capture_outputs, feature_pairs, kd_loss
from studio.kinds.features.cache import batch_inputs
from studio.kinds.sources import open_training_data
from studio.kinds.trackers import Trackers
from studio.kinds.training import (
    MetricsLog, StopOnSigterm, TrainingCancelled, TrainingError, cancelled, check_finite, check_new_run, derive_seed,
    due, latest_checkpoint, make_optimizer, memory_switches, noisy_inputs, save_checkpoint, save_validation,
    share_threads_with_workers, step_draws, training_scheduler, write_card,
)
from studio.models.compression import build_student, plan_student
from studio.models.loading import load_pipeline, share_components
from studio.progress import Callback, report

# seconds: the training loop's time so far; data_seconds: how much of it went to waiting for batches (decoding in the
# loop, or what loader workers had not yet made); bad_rows: unreadable imagefolder rows passed over since (re)start.
METRICS = ["step", "loss_total", "loss_task", "loss_out_kd", "loss_feat_kd", "lr", "seconds", "data_seconds",
           "bad_rows"]


def distill(config: DistillConfig, callback: Callback | None = None) -> Path:
    """Run (or resume) a distillation; returns the output folder."""
    from datetime import timedelta

    from accelerate import Accelerator, InitProcessGroupKwargs

    config.check()
    out = Path(config.out)
    # cpu=True where there is no GPU: launched ranks then join by gloo (without it each thinks it is alone). While
    # the main process draws --synthetic teacher images the others wait: longer than the default 30 min, allowed.
    waits = [InitProcessGroupKwargs(timeout=timedelta(hours=24))] if config.synthetic else []
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                              cpu=not torch.cuda.is_available(), kwargs_handlers=waits)
    check_new_run(out, config.resume)
    accelerator.wait_for_everyone()  # every rank has looked before the main process writes
    device, main = accelerator.device, accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    started = time.perf_counter()

    # The frozen teacher, the data (checked before any training) and the student, copied from the teacher.
    teacher = load_pipeline(config.teacher).to(device)
    if config.synthetic and not main:
        accelerator.wait_for_everyone()  # the main process draws the teacher's images first
    data = open_training_data(config.data, teacher, out, config.synthetic, config.seed, *family_sampling(config.teacher),
                              teacher_name=config.teacher,
                              columns=(config.image_column, config.caption_column), streaming=config.streaming)
    if config.synthetic and main:
        accelerator.wait_for_everyone()
    empty_context = data.empty_context() if hasattr(data, "empty_context") else None  # a feature cache's
    source = data  # counts the bad rows its batches passed over (bad_met)
    for part in (teacher.vae, teacher.text_encoder, teacher.unet):
        part.requires_grad_(False).eval()
    plan = plan_student(teacher.unet.config, config.arch)
    student = build_student(teacher.unet, config.arch)  # float32 copy of the teacher's weights
    teacher_dtype = DTYPES[config.teacher_dtype]
    teacher.unet.to(teacher_dtype)
    if config.init == "random":
        torch.manual_seed(config.seed)
        student = type(student).from_config(student.config).to(device)
    pairs = feature_pairs(plan) if config.lambda_feat > 0 else []
    memory_switches(student, config.gradient_checkpointing, config.tf32)
    optimizer = make_optimizer(student.parameters(), config.optimizer, config.lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant, as in the paper
    ema = None
    if config.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(student.parameters(), decay=config.ema)

    # Resume: the student, optimizer, scheduler (and EMA) states of the latest checkpoint.
    checkpoint = latest_checkpoint(out) if config.resume else None
    start_step = 0
    if checkpoint is not None:
        student.load_state_dict(checkpoint.tensors("student.safetensors"))
        optimizer.load_state_dict(checkpoint.state("optimizer.pt"))
        scheduler.load_state_dict(checkpoint.state("scheduler.pt"))
        if ema is not None and checkpoint.has("ema.pt"):  # the whole EMA: its step count sets the next decay
            ema.load_state_dict(checkpoint.state("ema.pt"))
        elif ema is not None and checkpoint.has("ema.safetensors"):  # an older checkpoint held only the average
            shadow = checkpoint.tensors("ema.safetensors")
            ema.shadow_params = [shadow[str(i)] for i in range(len(shadow))]
            ema.optimization_step = checkpoint.step
        start_step = checkpoint.step
    if world > 1:  # every machine must resume from the same step (a shared --out, or the checkpoint copied to each)
        found = accelerator.gather(torch.tensor([start_step], device=device)).tolist()
        if len(set(found)) > 1:
            raise TrainingError(f"--resume: the processes found checkpoints of different steps ({found}); give every "
                                "machine the same --out (a shared folder), or copy the latest checkpoint to each")
    if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed sizes its engine by the per-GPU batch
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    # Each process reads its slice of the global batch, planned from the rng all processes share.
    share_threads_with_workers(config.data_workers)
    data = prefetched(rank_slice(data, rank, world), config.data_workers, config.batch_size,
                      lambda draw: step_draws(config.seed, draw)[0], start_step * config.grad_accum,
                      pin_memory=device.type == "cuda")

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**asdict(config), "feature_pairs": pairs}, indent=2) + "\n")
        if data.skipped:
            print(f"skipping {len(data.skipped)} unusable data rows, e.g. {data.skipped[0]}")
    log = MetricsLog(out / "metrics.csv", start_step, METRICS, Trackers(config.report_to, out, "distill", config)) \
        if main else None
    noise_scheduler = training_scheduler(teacher)
    loop_started, losses, data_seconds = time.perf_counter(), {}, 0.0
    with StopOnSigterm() as stop, reading(data):
        for step in range(start_step, config.steps):
            micro_losses = []
            for micro in range(config.grad_accum):
                rng, draws = step_draws(config.seed, step * config.grad_accum + micro, rank, world)
                with accelerator.accumulate(student):
                    # Inputs both models see: latents of the batch, noised, and its (sometimes dropped) captions.
                    asked = time.perf_counter()
                    batch = data.batch(config.batch_size, rng)
                    data_seconds += time.perf_counter() - asked
                    with torch.no_grad():
                        latents, context = batch_inputs(batch, teacher, draws, device, config.caption_dropout,
                                                        empty_context)
                        noisy, timesteps, target = noisy_inputs(noise_scheduler, latents, draws)
                        with capture_outputs(teacher.unet, [t for _, t in pairs]) as teacher_features:
                            teacher_out = teacher.unet(noisy.to(teacher_dtype), timesteps,
                                                       encoder_hidden_states=context.to(teacher_dtype)).sample
                    with capture_outputs(accelerator.unwrap_model(student), [s for s, _ in pairs]) as features:
                        student_out = student(noisy, timesteps, encoder_hidden_states=context).sample
                    terms = kd_loss(student_out, teacher_out, target, features, teacher_features, pairs,
                                    config.weights)
                    # A NaN on any process stops them all (the sum of their losses is then not finite).
                    check_finite(terms if world == 1 else
                                 {"loss_total": accelerator.reduce(terms["loss_total"].detach(), "sum")}, step, out)
                    accelerator.backward(terms["loss_total"])
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                # The global batch's losses: the mean over the processes of each one's mean.
                terms = accelerator.reduce({k: v.detach() for k, v in terms.items()}, "mean") if world > 1 else terms
                micro_losses.append({k: v.item() for k, v in terms.items()})
            losses = {k: sum(m[k] for m in micro_losses) / len(micro_losses) for k in micro_losses[0]}
            if ema is not None:
                ema.step(accelerator.unwrap_model(student).parameters())

            done = step + 1
            # A cancel reaches every process (the job's process group), not always in the same step: all stop after
            # the step any one of them saw it in. Bad rows count over all processes, and stop them all together.
            flags = torch.tensor([float(stop.requested), getattr(source, "bad_met", 0), getattr(source, "rows_met", 0)],
                                 device=device)
            stop_flags, bad_rows, rows_met = (accelerator.reduce(flags, "sum") if world > 1 else flags).tolist()
            stopping = stop_flags > 0
            check_bad_rows(int(bad_rows), int(rows_met), config.data)
            if main and due(done, config.log_every, config.steps):
                log.write({"step": done, **losses, "lr": scheduler.get_last_lr()[0],
                           "seconds": round(log.seconds_before + time.perf_counter() - loop_started, 3),
                           "data_seconds": round(log.data_seconds_before + data_seconds, 3),
                           "bad_rows": int(bad_rows)})
            if main:
                report(callback, "distill", done, config.steps, loss=losses["loss_total"])
            if due(done, config.checkpoint_every, config.steps) or stopping:
                accelerator.wait_for_everyone()
                weights = accelerator.get_state_dict(student)  # every process takes part (sharded engines gather)
                if main:
                    unwrapped = accelerator.unwrap_model(student)
                    states = {"optimizer.pt": optimizer.state_dict(), "scheduler.pt": scheduler.state_dict()}
                    if ema is not None:
                        states["ema.pt"] = ema.state_dict()  # shadow weights, decay and step count
                    save_checkpoint(out, done, {"student.safetensors": weights}, states,
                                    keep=config.checkpoints_total_limit)
                    if config.validation_prompts:
                        validation_grid(teacher, unwrapped.to(torch.float32), config,
                                        out / "validation" / f"step-{done:06d}.png", log, done)
                accelerator.wait_for_everyone()  # the checkpoint is written before anyone stops
            if stopping:
                if not main:
                    raise TrainingCancelled(f"cancelled at step {done} of {config.steps}")
                log.close()
                raise cancelled(out, done, config.steps)

    weights = accelerator.get_state_dict(student)  # every process takes part (sharded engines gather)
    if main:
        log.close()
        trained = accelerator.unwrap_model(student)
        result = type(trained).from_config(trained.config)  # a float32 copy: the engine's own model is left alone
        result.load_state_dict(weights)
        if ema is not None:
            ema.copy_to(result.parameters())
        result.save_pretrained(out / "unet", safe_serialization=True)
        write_card(out, "distill", config, config.steps, losses, time.perf_counter() - started,
                   sum(p.numel() for p in result.parameters()), teacher=config.teacher, arch=str(plan.spec),
                   processes=world, distributed=accelerator.distributed_type.name)
    accelerator.wait_for_everyone()
    return out


def validation_grid(teacher_pipe, student_unet, config: DistillConfig, path: Path, log: MetricsLog | None = None,
                    step: int | None = None) -> None:
    """Teacher (top row) and student (bottom row) images of the validation prompts, same seeds."""
    prompts = list(config.validation_prompts)
    seeds = [derive_seed(config.seed, i) for i in range(len(prompts))]
    # The pipeline feeds the U-Net in the text encoder's dtype (fp32): a --teacher-dtype fp16/bf16 U-Net samples in
    # fp32 for these images (widening is exact, so narrowing back restores the very same weights).
    teacher_dtype = teacher_pipe.unet.dtype
    teacher_pipe.unet.to(teacher_pipe.text_encoder.dtype)
    try:
        rows = [sample(pipe, prompts, seeds, guidance=config.validation_guidance)
                for pipe in (teacher_pipe, share_components(teacher_pipe, student_unet))]
    finally:
        teacher_pipe.unet.to(teacher_dtype)
    save_validation(path, rows, log, step)
