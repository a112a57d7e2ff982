"""What a consistency distillation run is: every option, its help text and its checks (see studio/options.py).

Defaults follow diffusers' examples/consistency_distillation (LCM): a 50-step DDIM solver on
the ODE teacher, guidance sampled in a range and embedded (full) or fixed (LoRA), an EMA
target with decay 0.95, the pseudo-Huber loss with c = 0.001, LoRA rank 64.
"""

from dataclasses import dataclass

from studio.kinds.switches import TrainingSwitches
from studio.limits import MAX_GUIDANCE, MAX_TRAINING_SEED, MAX_TRAINING_STEPS, TRACKERS
from studio.options import REQUIRED, check_fields, option

VALIDATION_STEPS = (1, 2, 4)  # the validation grid's rows: LCM sampling with this many steps


@dataclass
class ConsistencyConfig(TrainingSwitches):
    teacher: str = option(REQUIRED, "the family's teacher: catalogue name or pipeline folder (text encoder, VAE, "
                                     "and the ODE teacher unless --ode-teacher student)", max_length=1000)
    arch: str = option(REQUIRED, "the student's block layout: base, small, tiny or custom:...", label="student",
                       max_length=200)
    data: str = option(REQUIRED, "an imagefolder (metadata.jsonl), webdataset shards (a folder of .tar, a pattern "
                                 "such as shards/{00000..00009}.tar, pipe: URLs), a datasets dataset (save_to_disk "
                                 "folder, parquet or arrow files, hf:NAME), a feature cache (python -m studio "
                                 "precompute) or a registered source such as 'toy'",
                       max_length=1000)
    out: str = option(REQUIRED, "the run's folder: checkpoints, metrics.csv, validation images, result",
                      max_length=1000)
    synthetic: int = option(0, "N > 0: train on the teacher's own images for N captions drawn from --data (drawn "
                                "once into OUT/synthetic with the family's steps and guidance)",
                            label="teacher images", min=0, max=100_000)
    student: str = option("", "the U-Net to distill: a catalogue student or job-<id>; default the catalogue's "
                              "student of this teacher and layout", max_length=1000)
    mode: str = option("full", "full: every student weight, with a guidance embedding; lora: a peft adapter with "
                               "the guidance folded in", choices=("full", "lora"))
    ode_teacher: str = option("teacher", "whose ODE the solver follows: the family's teacher or the student as it "
                                         "starts", label="ODE teacher", choices=("teacher", "student"))
    steps: int = option(1000, "optimizer steps", min=1, max=MAX_TRAINING_STEPS)
    batch_size: int = option(8, "images per step", label="batch size", min=1, max=1024)
    lr: float = option(1e-6, "learning rate (AdamW, constant; LCM's full distillation: 1e-6, LoRA: 1e-4)",
                       label="learning rate", above=0, max=1.0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0, max=1.0)
    max_grad_norm: float = option(1.0, "gradient clipping", above=0)
    rank: int = option(64, "LoRA rank (--mode lora)", min=1, max=1024)
    alpha: float = option(64.0, "LoRA alpha (--mode lora)", above=0)
    guidance_min: float = option(3.0, "the lowest guidance scale drawn per image (full); the LoRA uses --guidance-max",
                                 label="lowest guidance", min=1, max=MAX_GUIDANCE)
    guidance_max: float = option(13.0, "the highest guidance scale drawn (full); the LoRA's fixed scale",
                                 label="highest guidance", min=1, max=MAX_GUIDANCE)
    solver_steps: int = option(50, "the DDIM solver's timesteps (LCM's skipping step: 1000 / this)", min=2,
                               max=1000)
    ema_decay: float = option(0.95, "decay of the target network's EMA (full)", min=0, max=1)
    huber_c: float = option(0.001, "the pseudo-Huber loss's c", above=0)
    embedding_dim: int = option(256, "size of the guidance-scale embedding added to the time embedding (full)",
                                min=2, max=4096)
    checkpoint_every: int = option(500, "steps between checkpoints", min=1)
    checkpoints_total_limit: int = option(2, "keep only the newest N checkpoints (the result is kept apart)",
                                          min=1, max=1000)
    log_every: int = option(10, "steps between metrics.csv rows", min=1)
    seed: int = option(0, "base seed of every step's randomness", min=0, max=MAX_TRAINING_SEED)
    resume: bool = option(False, "continue from the latest checkpoint in --out")
    validation_prompts: tuple[str, ...] = option((), "repeatable; student images at 1, 2 and 4 steps at every "
                                                     "checkpoint", flag="validation-prompt", max_length=1000)
    validation_guidance: float = option(0.0, "guidance of the validation images (full); 0: the middle of the range",
                                        min=0, max=MAX_GUIDANCE)
    report_to: list[str] = option([], "experiment trackers beside metrics.csv, comma-separated: tensorboard, trackio "
                                      "(both offline, in the run's trackers/), wandb", choices=TRACKERS)

    @property
    def lora(self) -> bool:
        return self.mode == "lora"

    def check(self) -> None:
        from studio.kinds.trackers import check_trackers
        from studio.kinds.training import check_optimizer
        from studio.models.compression import resolve_spec

        check_fields(self)
        check_optimizer(self.optimizer)
        check_trackers(self.report_to)
        resolve_spec(self.arch)
        if self.guidance_min > self.guidance_max:
            raise ValueError(f"lowest guidance (--guidance-min, {self.guidance_min:g}) is above the highest "
                             f"(--guidance-max, {self.guidance_max:g}); the range must not be empty")
        if 1000 % self.solver_steps:
            raise ValueError(f"--solver-steps must divide the 1000 training timesteps, got {self.solver_steps}")
