"""What a DreamBooth run is: every option, its help text and its checks, in one place (see studio/options.py).

Defaults are the BK-SDM paper's recipe: LoRA rank 16, alpha 27 on to_q/to_v
(text encoder: rank 16, alpha 17 on q_proj/v_proj), lr 1e-4 (full: 1e-6)
constant, 800 steps, batch 1, prior weight 1.0, 200 class images.
"""

from dataclasses import dataclass

from studio.limits import MAX_GUIDANCE, MAX_SAMPLING_STEPS, MAX_TRAINING_SEED, TRACKERS
from studio.options import REQUIRED, check_fields, option

MAX_DREAMBOOTH_STEPS = 20_000  # a few hundred is the recipe; far more only overfits the photos
MAX_CLASS_IMAGES = 1_000


@dataclass
class DreamBoothConfig:
    model: str = option(REQUIRED, "catalogue name or pipeline folder", max_length=1000)
    photos: str = option(REQUIRED, "a folder of 1-50 photos (JPEG, PNG, WebP)", max_length=1000)
    instance_prompt: str = option(REQUIRED, 'with the identifier, e.g. "a sks dog"', label="instance prompt",
                                  max_length=1000)
    class_prompt: str = option(REQUIRED, 'e.g. "a dog"', label="class prompt", max_length=1000)
    out: str = option(REQUIRED, "the run's folder: checkpoints, metrics.csv, validation images, result",
                      max_length=1000)
    steps: int = option(800, "optimizer steps", min=1, max=MAX_DREAMBOOTH_STEPS)
    mode: str = option("lora", "LoRA through peft, or full finetuning of the U-Net", choices=("lora", "full"))
    rank: int = option(16, "LoRA rank", min=1, max=1024)
    alpha: float = option(27.0, "LoRA alpha", above=0)
    train_text_encoder: bool = option(False, "LoRA on the text encoder too")
    text_rank: int = option(16, "text encoder LoRA rank", min=1, max=1024)
    text_alpha: float = option(17.0, "text encoder LoRA alpha", above=0)
    lr: float | None = option(None, "learning rate; default 1e-4 (LoRA) or 1e-6 (full)", label="learning rate",
                              above=0, max=1.0)
    prior_weight: float = option(1.0, "weight of the prior-preservation loss", label="prior weight", min=0, max=1e6)
    class_images: int = option(200, "made by the model itself before training", label="class images", min=0,
                               max=MAX_CLASS_IMAGES)
    sample_steps: int = option(25, "sampling steps of class and validation images", min=1,
                               max=MAX_SAMPLING_STEPS)
    guidance: float = option(7.5, "guidance of class and validation images", min=0, max=MAX_GUIDANCE)
    gradient_checkpointing: bool = option(True, "trade compute for memory")
    checkpoint_every: int = option(200, "steps between checkpoints", min=1)
    checkpoints_total_limit: int = option(2, "keep only the newest N checkpoints (the result is kept apart)",
                                          min=1, max=1000)
    log_every: int = option(10, "steps between metrics.csv rows", min=1)
    validation_prompts: tuple[str, ...] = option((), "repeatable; images at every checkpoint",
                                                 flag="validation-prompt", max_length=1000)
    report_to: list[str] = option([], "experiment trackers beside metrics.csv, comma-separated: tensorboard, trackio "
                                      "(both offline, in the run's trackers/), wandb", choices=TRACKERS)
    seed: int = option(0, "base seed", min=0, max=MAX_TRAINING_SEED)
    resume: bool = option(False, "continue from the latest checkpoint in --out")

    @property
    def lora(self) -> bool:
        return self.mode == "lora"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.lora else 1e-6)

    def check(self) -> None:
        from studio.kinds.trackers import check_trackers

        check_fields(self)
        check_trackers(self.report_to)
        if self.prior_weight > 0 and self.class_images == 0:
            raise ValueError("prior preservation needs class images: give class images > 0 or prior weight 0")
        if not self.instance_prompt.strip() or not self.class_prompt.strip():
            raise ValueError("both the instance prompt (with the identifier, 'a sks dog') and the class prompt "
                             "('a dog') are needed")
