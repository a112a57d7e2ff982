"""What a distillation run is: every option, its help text and its checks, in one place.

The command line's flags, the app's checks and a job's saved config all come
from this dataclass (see studio/options.py).
"""

from dataclasses import dataclass

from studio.kinds.launch import LaunchOptions
from studio.kinds.switches import TrainingSwitches
from studio.limits import MAX_GUIDANCE, MAX_TRAINING_SEED, MAX_TRAINING_STEPS, TRACKERS
from studio.options import REQUIRED, check_fields, option


@dataclass(frozen=True)
class KDWeights:
    task: float = 1.0
    out: float = 1.0
    feat: float = 1.0


@dataclass
class DistillConfig(TrainingSwitches, LaunchOptions):
    teacher: str = option(REQUIRED, "catalogue name or pipeline folder", max_length=1000)
    arch: str = option(REQUIRED, "base, small, tiny or custom:LAYERS[:no-mid][:no-innermost]", label="student",
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
    steps: int = option(1000, "optimizer steps", min=1, max=MAX_TRAINING_STEPS)
    batch_size: int = option(8, "per process", label="batch size", min=1, max=1024)
    lr: float = option(5e-5, "learning rate (the paper's: constant, AdamW)", label="learning rate", above=0, max=1.0)
    weight_decay: float = option(1e-2, "AdamW weight decay", min=0, max=1.0)
    grad_accum: int = option(1, "gradient accumulation steps", min=1, max=1024)
    max_grad_norm: float = option(1.0, "gradient clipping", above=0)
    mixed_precision: str = option("no", "autocast for the student", choices=("no", "fp16", "bf16"))
    teacher_dtype: str = option("fp32", "the frozen teacher's precision", choices=("fp32", "fp16", "bf16"))
    ema: float | None = option(None, "keep an EMA of the student with this decay, e.g. 0.999", min=0, max=1)
    lambda_task: float = option(1.0, "weight of the task loss", label="λ task", min=0, max=1e6)
    lambda_out: float = option(1.0, "weight of the output KD loss", label="λ output KD", min=0, max=1e6)
    lambda_feat: float = option(1.0, "weight of the feature KD loss", label="λ feature KD", min=0, max=1e6)
    init: str = option("teacher", "the student's initial weights (random: for the ablation)",
                       choices=("teacher", "random"))
    checkpoint_every: int = option(500, "steps between checkpoints", min=1)
    checkpoints_total_limit: int = option(2, "keep only the newest N checkpoints (the result is kept apart)",
                                          min=1, max=1000)
    log_every: int = option(10, "steps between metrics.csv rows", min=1)
    caption_dropout: float = option(0.0, "share of empty captions", min=0, max=1)
    seed: int = option(0, "base seed of every step's randomness", min=0, max=MAX_TRAINING_SEED)
    resume: bool = option(False, "continue from the latest checkpoint in --out")
    validation_prompts: tuple[str, ...] = option((), "repeatable; teacher-vs-student images at every checkpoint",
                                                 flag="validation-prompt", max_length=1000)
    report_to: list[str] = option([], "experiment trackers beside metrics.csv, comma-separated: tensorboard, trackio "
                                      "(both offline, in the run's trackers/), wandb", choices=TRACKERS)
    validation_guidance: float = option(7.5, "guidance of the validation images", min=0,
                                        max=MAX_GUIDANCE)

    @property
    def weights(self) -> KDWeights:
        return KDWeights(task=self.lambda_task, out=self.lambda_out, feat=self.lambda_feat)

    def check(self) -> None:
        from studio.kinds.trackers import check_trackers
        from studio.kinds.training import check_optimizer
        from studio.models.compression import resolve_spec

        check_fields(self)
        self.check_launch()
        if self.accelerate_config:
            from studio.kinds.launch import GPU_ENGINES, engine_of

            engine = engine_of(self.accelerate_config)
            unsupported = [flag for flag, used in (("--ema", self.ema), ("--validation-prompt", self.validation_prompts),
                                                   ("--resume", self.resume)) if used]
            if engine in GPU_ENGINES and unsupported:
                raise ValueError(f"accelerate config (--accelerate-config): under {engine} the studio does not yet "
                                 f"support {', '.join(unsupported)} (the student is sharded or wrapped); leave them "
                                 "out, or train with data parallel (no config)")
        check_optimizer(self.optimizer)
        check_trackers(self.report_to)
        resolve_spec(self.arch)
        if self.lambda_task == self.lambda_out == self.lambda_feat == 0:
            raise ValueError("the loss weights (λ task, λ output KD, λ feature KD) are all 0; at least one must be "
                             "above 0")
