"""The run skeleton every trainer shares: seeds, the diffusion target, checkpoints, metrics, card, stop.

Distillation, DreamBooth and the toy teacher use these, so their runs resume,
log, stop and describe themselves the same way, and the app's live plot reads
any of them:

- `derive_seed` / `step_generator`: randomness from (seed, step, process), so a
  resumed run draws exactly what an uninterrupted one would have;
- `save_checkpoint` / `latest_checkpoint`: checkpoints/step-NNNNNN, written
  beside and renamed into place;
- `MetricsLog`: metrics.csv, columns step, loss_total, the run's other loss_*
  terms, lr, seconds;
- `write_card`: card.json with kind, steps, final_losses, train_seconds, peak
  memory, trainable_params and the run's config;
- `check_finite` and `StopOnSigterm`: a NaN stops a run with TrainingError, a
  cancel with TrainingCancelled, both after the last good checkpoint.
"""

import csv
import json
import random
import resource
import shutil
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SEED_MIX = 1_000_003


def check_optimizer(name: str) -> None:
    """8-bit AdamW is bitsandbytes' and runs on CUDA only: refused before a run starts where it can't run."""
    import importlib.util

    if name != "adamw8bit":
        return
    if not torch.cuda.is_available():
        raise ValueError("optimizer: adamw8bit (bitsandbytes' 8-bit AdamW) needs a CUDA GPU and this machine has "
                         "none; use adamw")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("optimizer: adamw8bit needs the bitsandbytes package, which is not installed "
                         "(pip install bitsandbytes)")


def make_optimizer(parameters, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def memory_switches(unet, gradient_checkpointing: bool, tf32: bool) -> None:
    """Gradient checkpointing on the U-Net that trains (its blocks' activations are recomputed in the backward
    pass); TF32 matmuls and convolutions where CUDA runs them (Ampere and newer), nothing elsewhere."""
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def share_threads_with_workers(workers: int) -> None:
    """Loader workers count in the job's CPU budget (OMP_NUM_THREADS, the studio's share for it): each takes one
    thread (torch runs a DataLoader worker single-threaded), the training loop keeps the rest, at least one."""
    import os

    budget = int(os.environ.get("OMP_NUM_THREADS") or 0)
    if workers > 0 and budget:
        torch.set_num_threads(max(1, budget - workers))


class TrainingError(RuntimeError):
    """A run that had to stop; its last good checkpoint and its logs are kept."""


class TrainingCancelled(TrainingError):
    """SIGTERM (the studio's Cancel) stopped the run after a checkpoint of the current step."""


def derive_seed(seed: int, *parts: int) -> int:
    """One integer seed from a base seed and indices (step, process, image): the studio's only derivation."""
    for part in parts:
        seed = seed * SEED_MIX + part
    return seed


def step_generator(seed: int, step: int, rank: int = 0) -> tuple[random.Random, torch.Generator]:
    mixed = derive_seed(seed, step, rank)
    return random.Random(mixed), torch.Generator().manual_seed(mixed)


@dataclass
class Draws:
    """One step's random tensors for the global batch (every process's samples, in rank order), of which this
    process keeps its own slice: N processes with batch B draw what one process with batch N * B draws, so a run
    does not depend on how it is split. With one process, exactly the generator's own draws."""

    generator: torch.Generator
    rank: int = 0
    world: int = 1

    def _mine(self, whole: torch.Tensor) -> torch.Tensor:
        size = len(whole) // self.world
        return whole[self.rank * size:(self.rank + 1) * size]

    def randn(self, shape, device=None, dtype=None) -> torch.Tensor:
        whole = torch.randn((shape[0] * self.world, *shape[1:]), generator=self.generator, dtype=dtype)
        return self._mine(whole).to(device)

    def rand(self, n: int) -> torch.Tensor:
        return self._mine(torch.rand(n * self.world, generator=self.generator))

    def randint(self, high: int, n: int) -> torch.Tensor:
        return self._mine(torch.randint(high, (n * self.world,), generator=self.generator))


def step_draws(seed: int, draw: int, rank: int = 0, world: int = 1) -> tuple[random.Random, Draws]:
    """The rng that picks draw `draw`'s global batch and the Draws of its tensors: the same on every process."""
    rng, generator = step_generator(seed, draw)
    return rng, Draws(generator, rank, world)


def check_new_run(out: Path, resume: bool) -> None:
    if not resume and (out / "metrics.csv").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")


# --- The diffusion objective's inputs -----------------------------------------------------------------------------

def training_scheduler(pipeline):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipeline.scheduler.config)


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, draws: Draws) -> torch.Tensor:
    """A sample of the VAE's latent distribution (diffusers' DiagonalGaussianDistribution.sample, with `draws`)."""
    distribution = vae.encode(images).latent_dist
    return sample_latents(distribution.mean, distribution.std, draws, vae.config.scaling_factor)


def sample_latents(mean: torch.Tensor, std: torch.Tensor, draws: Draws, scaling_factor: float) -> torch.Tensor:
    noise = draws.randn(mean.shape, device=mean.device, dtype=mean.dtype)
    return (mean + std * noise) * scaling_factor


def noisy_inputs(scheduler, latents: torch.Tensor, draws: Draws):
    """(noisy latents, timesteps, target): the target is the noise, or the velocity for v-prediction."""
    noise = draws.randn(latents.shape, device=latents.device)
    timesteps = draws.randint(scheduler.config.num_train_timesteps, len(latents)).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "epsilon":
        return noisy, timesteps, noise
    return noisy, timesteps, scheduler.get_velocity(latents, noise, timesteps)


# --- Checkpoints ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    step: int

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(self.folder / name)

    def state(self, name: str) -> dict:
        return torch.load(self.folder / name, weights_only=True)

    def has(self, name: str) -> bool:
        return (self.folder / name).exists()


def latest_checkpoint(out: Path) -> Checkpoint | None:
    """The newest complete checkpoint; a leftover step-N.partial (a kill mid-write) is ignored."""
    found = []
    for folder in (Path(out) / "checkpoints").glob("step-*"):
        number = folder.name.removeprefix("step-")
        if number.isdigit() and (folder / "state.json").is_file():
            found.append(Checkpoint(folder, int(number)))
    return max(found, key=lambda c: c.step, default=None)


def save_checkpoint(out: Path, step: int, tensors: dict[str, dict], states: dict[str, dict],
                    keep: int | None = None) -> Path:
    """checkpoints/step-NNNNNN with safetensors files (`tensors`), optimizer-like states (`states`,
    torch.save, read back with weights_only=True) and state.json; written beside and renamed into place,
    so a kill mid-write never leaves a broken "latest". With `keep`, only the newest `keep` checkpoints
    stay (removed once the new one is complete)."""
    final = Path(out) / "checkpoints" / f"step-{step:06d}"
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, tensor_dict in tensors.items():
        save_file({k: v.detach().contiguous() for k, v in tensor_dict.items()}, partial / name)
    for name, state in states.items():
        torch.save(state, partial / name)
    (partial / "state.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    if keep is not None:
        complete = sorted((p for p in final.parent.glob("step-*") if p.name.removeprefix("step-").isdigit()),
                          key=lambda p: int(p.name.removeprefix("step-")))
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def due(done: int, every: int, total: int) -> bool:
    """Whether step `done` (1-based) is one to log or checkpoint at: every `every` steps and the last."""
    return done % every == 0 or done == total


def check_finite(losses: dict, step: int, out: Path) -> None:
    total = torch.as_tensor(losses["loss_total"]).detach()
    if not torch.isfinite(total):
        raise TrainingError(f"loss became {total.item()} at step {step}; stopped. Last good checkpoint: "
                            f"{getattr(latest_checkpoint(out), 'folder', None) or 'none yet'}. Try a lower --lr.")


def cancelled(out: Path, done: int, steps: int) -> TrainingCancelled:
    return TrainingCancelled(f"cancelled at step {done} of {steps}; checkpoint saved in "
                             f"{latest_checkpoint(out).folder}; continue with --resume")


# --- Logs and the card ---------------------------------------------------------------------------------------------

class MetricsLog:
    """metrics.csv, one row per logged step, flushed per row so a live plot can tail it.

    Columns: step, then loss_total and the run's other loss_* terms, then lr and seconds.
    """

    def __init__(self, path: Path, resume_step: int, columns: list[str], trackers=None):
        self.trackers = trackers  # studio.kinds.trackers.Trackers: each row goes to them too
        rows = []
        if resume_step and path.exists():  # drop rows past the checkpoint: they will be redone
            with open(path, newline="") as file:
                rows = [r for r in csv.DictReader(file) if _step(r) is not None and _step(r) <= resume_step]
        self.seconds_before = float(rows[-1]["seconds"]) if rows else 0.0  # seconds count across resumes
        self.data_seconds_before = float(rows[-1].get("data_seconds") or 0.0) if rows else 0.0
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, columns, restval="")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()
        if self.trackers is not None:
            self.trackers.log(row)

    def close(self) -> None:
        self.file.close()
        if self.trackers is not None:
            self.trackers.finish()


def _step(row: dict) -> int | None:
    try:
        return int(float(row["step"]))
    except (TypeError, ValueError, KeyError):
        return None  # a row cut short by a kill mid-write


def peak_memory() -> dict:
    """CUDA peak allocation on a GPU; otherwise this process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "memory_kind": "cuda peak allocated"}
    return {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "memory_kind": "process peak RSS"}


def write_card(out: Path, kind: str, config, steps: int, final_losses: dict, train_seconds: float,
               trainable_params: int, **result) -> dict:
    """card.json, one schema for every trainer; `result` holds what this kind of run adds."""
    card = {"kind": kind, "steps": steps, "final_losses": final_losses, "train_seconds": round(train_seconds, 1),
            **peak_memory(), "threads": torch.get_num_threads(), "trainable_params": trainable_params, "result": result,
            "config": asdict(config)}
    (Path(out) / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def save_validation(path: Path, rows, log: "MetricsLog | None" = None, step: int | None = None) -> None:
    """The validation grid at `path`, and to the run's trackers (through its metrics log) at `step`."""
    from studio.images import grid

    path.parent.mkdir(parents=True, exist_ok=True)
    image = grid(rows)
    image.save(path)
    if log is not None and log.trackers is not None:
        log.trackers.image("validation", image, step)


class StopOnSigterm:
    """Turns SIGTERM into a flag the loop checks between steps, so a cancel loses no work.

    Processes of one run can see the signal in different steps: a multi-process
    trainer combines their flags every step, so all stop after the same one.
    """

    def __init__(self, enabled: bool = True):
        self.requested = False
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.enabled:
            self.previous = signal.signal(signal.SIGTERM, self._request)
        return self

    def _request(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, self.previous)
