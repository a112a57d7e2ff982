"""Latent consistency distillation of a student U-Net: `python -m studio consistency ...`.

One function, top to bottom, after diffusers' examples/consistency_distillation: load the
family's teacher (text encoder, VAE, and the ODE teacher), the student, its EMA target; then per
step: draw a batch, encode it, noise it at a solver timestep t, take one guided DDIM step of the
ODE teacher to t - k, and pull the student's consistency function at t towards the target's at
t - k (pseudo-Huber). `full` trains every student weight and adds a guidance-scale embedding
(zero-initialised, so step 0 is the student as it was); `lora` trains a peft adapter with one
fixed guidance scale folded in, the adapter itself (no gradient) as its own target, as diffusers'
LoRA script does. Every step's randomness is derived from (seed, step), so a resumed run draws
what the uninterrupted one would.
"""

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from studio.kinds.consistency.config import VALIDATION_STEPS, ConsistencyConfig
from studio.kinds.consistency.objective import (
    SkippingSolver, boundary_scalings, guidance_embedding, pseudo_huber, x0_and_noise,
)
from studio.kinds.data import check_bad_rows, family_sampling, prefetched, reading
from studio.kinds.features.cache import batch_inputs
from studio.kinds.sources import open_training_data
from studio.kinds.trackers import Trackers
from studio.kinds.training import (
    MetricsLog, StopOnSigterm, cancelled, check_finite, check_new_run, derive_seed, due, latest_checkpoint,
    make_optimizer, memory_switches, save_checkpoint, save_validation, share_threads_with_workers, step_draws,
    tokenize, training_scheduler, write_card,
)
from studio.models.loading import load_pipeline, load_unet, share_components
from studio.progress import Callback, report

METRICS = ["step", "loss_total", "lr", "seconds"]


def student_source(config: ConsistencyConfig, catalog) -> str:
    """The U-Net to start from: --student, else the catalogue's student of this teacher and layout."""
    if config.student:
        return config.student
    found = [e.name for e in catalog.students_of(config.teacher) if e.arch == config.arch]
    if not found:
        raise ValueError(f"--student: the catalogue has no {config.arch} student of {config.teacher}; give one "
                         f"(a catalogue student or job-<id>) or distill it first")
    return found[0]


def with_guidance_embedding(unet, dim: int):
    """`unet` rebuilt with a guidance-scale embedding (time_cond_proj_dim), every old weight kept; the new
    projection starts at zero, so before training the model is exactly the one it came from."""
    from diffusers import UNet2DConditionModel

    if unet.config.time_cond_proj_dim is not None:
        return unet
    rebuilt = UNet2DConditionModel.from_config({**unet.config, "time_cond_proj_dim": dim})
    missing, unexpected = rebuilt.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("time_embedding.cond_proj") for name in missing), missing
    torch.nn.init.zeros_(rebuilt.time_embedding.cond_proj.weight)
    return rebuilt.to(unet.device)


def add_lora(unet, config: ConsistencyConfig) -> None:
    """LCM-LoRA's targets: attention projections, feed-forward and the resnets' convolutions."""
    from peft import LoraConfig

    from studio.models.adapters import LCM_LORA_TARGETS

    unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                target_modules=list(LCM_LORA_TARGETS)))


def consistency_distill(config: ConsistencyConfig, callback: Callback | None = None) -> Path:
    """Run (or resume) a consistency distillation; returns the output folder."""
    from studio.models.catalog import load_catalog

    config.check()
    out = Path(config.out)
    check_new_run(out, config.resume)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # The family's teacher (frozen), the student, the ODE teacher and the target network.
    catalog = load_catalog()
    teacher = load_pipeline(config.teacher, catalog).to(device)
    for part in (teacher.vae, teacher.text_encoder, teacher.unet):
        part.requires_grad_(False).eval()
    source = student_source(config, catalog)
    student = load_unet(source, catalog).to(device)
    ode_unet = teacher.unet if config.ode_teacher == "teacher" else copy.deepcopy(student).requires_grad_(False)
    if config.lora:
        student.requires_grad_(False)
        torch.manual_seed(config.seed)  # the adapter's initial weights: the same in a run and its resumption
        add_lora(student, config)
        target = None  # the adapter, without gradient, is its own target
    else:
        student = with_guidance_embedding(student, config.embedding_dim)
        target = copy.deepcopy(student).requires_grad_(False)
    student.train()
    memory_switches(student, config.gradient_checkpointing, config.tf32)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, config.optimizer, config.lr, config.weight_decay)
    data = open_training_data(config.data, teacher, out, config.synthetic, config.seed,
                              *family_sampling(config.teacher), callback=callback, teacher_name=config.teacher,
                              columns=(config.image_column, config.caption_column), streaming=config.streaming)

    checkpoint = latest_checkpoint(out) if config.resume else None
    start_step = 0
    if checkpoint is not None:
        if config.lora:
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(student, checkpoint.tensors("student.safetensors"))
        else:
            student.load_state_dict(checkpoint.tensors("student.safetensors"))
        if target is not None:
            target.load_state_dict(checkpoint.tensors("target.safetensors"))
        optimizer.load_state_dict(checkpoint.state("optimizer.pt"))
        start_step = checkpoint.step
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**asdict(config), "student_source": source}, indent=2) + "\n")
    log = MetricsLog(out / "metrics.csv", start_step, METRICS, Trackers(config.report_to, out, "consistency", config))

    noise_scheduler = training_scheduler(teacher)
    prediction_type = noise_scheduler.config.prediction_type
    alphas_cumprod = noise_scheduler.alphas_cumprod
    solver = SkippingSolver(alphas_cumprod, config.solver_steps)
    alphas_cumprod = alphas_cumprod.to(device)
    solver.alphas_cumprod, solver.alpha_prev = alphas_cumprod, solver.alpha_prev.to(device)
    empty_context = teacher.text_encoder(tokenize(teacher.tokenizer, [""]).to(device))[0]
    share_threads_with_workers(config.data_workers)
    counted = data  # counts the bad rows its batches passed over (bad_met)
    data = prefetched(data, config.data_workers, config.batch_size, lambda draw: step_draws(config.seed, draw)[0],
                      start_step, pin_memory=device.type == "cuda")
    loop_started, loss = time.perf_counter(), torch.tensor(float("nan"))
    with StopOnSigterm() as stop, reading(data):
        for step in range(start_step, config.steps):
            rng, draws = step_draws(config.seed, step)
            with torch.no_grad():
                latents, context = batch_inputs(data.batch(config.batch_size, rng), teacher, draws, device)
                check_bad_rows(getattr(counted, "bad_met", 0), getattr(counted, "rows_met", 0), config.data)
                index, t, t_prev = (x.to(device) for x in solver.draw(len(latents), draws.generator))
                noise = draws.randn(latents.shape, device=device)
                noisy = noise_scheduler.add_noise(latents, noise, t)
                if config.lora:
                    guidance = torch.full((len(latents),), config.guidance_max, device=device)
                    cond = None
                else:
                    guidance = (config.guidance_min + (config.guidance_max - config.guidance_min)
                                * draws.rand(len(latents))).to(device)
                    cond = guidance_embedding(guidance, config.embedding_dim).to(device)

            # The student's consistency function at t.
            c_skip, c_out = boundary_scalings(t)
            output = student(noisy, t, encoder_hidden_states=context, timestep_cond=cond).sample
            prediction = c_skip * noisy + c_out * x0_and_noise(output, noisy, alphas_cumprod[t], prediction_type)[0]

            with torch.no_grad():
                # One DDIM step of the guided ODE teacher, t -> t - k (conditional and unconditional in one batch).
                both = ode_unet(torch.cat([noisy, noisy]), torch.cat([t, t]),
                                encoder_hidden_states=torch.cat([context, empty_context.expand_as(context)])).sample
                x0, eps = x0_and_noise(both, torch.cat([noisy, noisy]), alphas_cumprod[torch.cat([t, t])],
                                       prediction_type)
                w = guidance[:, None, None, None]
                (x0_c, x0_u), (eps_c, eps_u) = x0.chunk(2), eps.chunk(2)
                previous = solver.step(x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u), index)
                # The target network's consistency function at t - k.
                network = target if target is not None else student
                target_output = network(previous, t_prev, encoder_hidden_states=context, timestep_cond=cond).sample
                c_skip_prev, c_out_prev = boundary_scalings(t_prev)
                goal = c_skip_prev * previous + c_out_prev * x0_and_noise(
                    target_output, previous, alphas_cumprod[t_prev], prediction_type)[0]

            loss = pseudo_huber(prediction, goal, config.huber_c)
            check_finite({"loss_total": loss}, step, out)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            if target is not None:
                with torch.no_grad():
                    for kept, trained in zip(target.parameters(), student.parameters()):
                        kept.lerp_(trained, 1 - config.ema_decay)

            done = step + 1
            if due(done, config.log_every, config.steps):
                log.write({"step": done, "loss_total": loss.item(), "lr": config.lr,
                           "seconds": round(log.seconds_before + time.perf_counter() - loop_started, 2)})
            report(callback, "consistency", done, config.steps, loss=loss.item())
            if due(done, config.checkpoint_every, config.steps) or stop.requested:
                tensors = {"student.safetensors": trainable_state(student, config)}
                if target is not None:
                    tensors["target.safetensors"] = target.state_dict()
                save_checkpoint(out, done, tensors, {"optimizer.pt": optimizer.state_dict()},
                                keep=config.checkpoints_total_limit)
                if config.validation_prompts:
                    validation_grid(teacher, student, config, out / "validation" / f"step-{done:06d}.png", log, done)
                student.train()
            if stop.requested:
                log.close()
                raise cancelled(out, done, config.steps)

    log.close()
    save_result(student, config, out)
    write_card(out, "consistency", config, config.steps, {"loss_total": loss.item()}, time.perf_counter() - started,
               sum(p.numel() for p in trainable), teacher=config.teacher, arch=config.arch, student=source,
               ode_teacher=config.ode_teacher)
    return out


def trainable_state(student, config: ConsistencyConfig) -> dict:
    if config.lora:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(student)
    return student.state_dict()


def save_result(student, config: ConsistencyConfig, out: Path) -> None:
    """out/unet, a U-Net that samples in a few steps (the LoRA merged in); with LoRA also out/lora, the adapter
    alone in diffusers' LoRA format (safetensors), for pipelines that load adapters."""
    student.eval()
    if config.lora:
        from diffusers import StableDiffusionPipeline
        from peft.utils import get_peft_model_state_dict

        # peft's key names as they are: diffusers' older down/up names cover attention only, and a file mixing
        # both naming schemes loads its attention adapters not at all.
        StableDiffusionPipeline.save_lora_weights(
            out / "lora", unet_lora_layers=get_peft_model_state_dict(student), safe_serialization=True)
        student.fuse_lora()
        student.unload_lora()
    student.to(torch.float32).save_pretrained(out / "unet", safe_serialization=True)


@torch.no_grad()
def validation_grid(teacher, student, config: ConsistencyConfig, path: Path, log=None, step=None) -> None:
    """The student's images of the validation prompts with LCM sampling at 1, 2 and 4 steps (one row each)."""
    from diffusers import LCMScheduler

    student.eval()
    pipe = share_components(teacher, student)
    pipe.scheduler = LCMScheduler.from_config(teacher.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = list(config.validation_prompts)
    guidance = lcm_guidance(config)
    rows = []
    for steps in VALIDATION_STEPS:
        generators = [torch.Generator().manual_seed(derive_seed(config.seed, i)) for i in range(len(prompts))]
        rows.append(pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators).images)
    save_validation(path, rows, log, step)


def lcm_guidance(config: ConsistencyConfig) -> float:
    """The guidance a pipeline is called with: the embedded scale (full), or 1 (LoRA: folded in; above 1 the
    pipeline would run a second, unconditional batch)."""
    if config.lora:
        return 1.0
    return config.validation_guidance or (config.guidance_min + config.guidance_max) / 2
