"""Handlers of the DreamBooth tab: plain functions, no Gradio, called directly by the tests."""

import json
import time
from pathlib import Path

import torch

from studio.catalog import Catalog, read_configs
from studio.jobs import JobError, JobManager
from studio.personalization.photos import PhotoError, PhotoLimits, check_photos, import_photos
from studio.profiling import input_geometry
from studio.ui.handlers import INPUT_ERRORS, positive_number, error

MAX_DREAMBOOTH_STEPS = 20_000


def prompts(identifier: str, class_phrase: str) -> tuple[str, str]:
    """("a sks dog", "a dog") from the identifier and the class phrase."""
    identifier, class_phrase = (identifier or "").strip(), (class_phrase or "").strip()
    if not identifier or " " in identifier:
        raise ValueError(f"the identifier must be one rare word (like 'sks'), got {identifier!r}")
    if not class_phrase:
        raise ValueError("the class is empty; say what the subject is (like 'dog')")
    return f"a {identifier} {class_phrase}", f"a {class_phrase}"


def dreambooth_start(jobs: JobManager, catalog: Catalog, photos: list, identifier: str, class_phrase: str,
                     models: list[str], steps, full: bool = False, class_images=200, guidance: float = 7.5,
                     ) -> tuple[list[str], str]:
    """One background job per chosen model, all on the same photos; (job ids, message).

    The photos are checked before any job is made: a bad upload changes nothing.
    """
    try:
        if not models:
            raise ValueError("no model chosen; pick the teacher and/or students to personalize")
        instance_prompt, class_prompt = prompts(identifier, class_phrase)
        steps = positive_number("steps", steps, int, MAX_DREAMBOOTH_STEPS)
        class_images = int(class_images)
        if class_images < 1:
            raise ValueError(f"class images must be at least 1 (prior preservation needs them), got {class_images}")
        entries = [catalog.get(m) for m in models]
        paths = [Path(p) for p in (photos or [])]
        resolutions = {input_geometry(read_configs(e.name, catalog)).resolution for e in entries}
        check_photos(paths, PhotoLimits(min_side=max(resolutions)))
    except (*INPUT_ERRORS, PhotoError) as problem:
        return [], error(problem)
    job_ids = []
    for entry in entries:
        resolution = input_geometry(read_configs(entry.name, catalog)).resolution
        argv = ["dreambooth", "--model", entry.name, "--instance-prompt", instance_prompt, "--class-prompt",
                class_prompt, "--steps", str(steps), "--class-images", str(class_images), "--guidance", str(guidance),
                "--checkpoint-every", str(max(1, min(200, steps // 4))), "--log-every", str(max(1, min(10, steps // 20))),
                "--validation-prompt", instance_prompt, "--validation-prompt", class_prompt]
        if full:
            argv.append("--full")

        def prepare(folder: Path, resolution=resolution) -> list[str]:
            import_photos(paths, folder / "photos", resolution)  # normalized copies under names we choose
            return ["--photos", str(folder / "photos")]

        name = f"{entry.name}: {instance_prompt}, {steps} steps, {'full' if full else 'LoRA'}"
        try:
            job_ids.append(jobs.create("dreambooth", name, argv, steps, {"model": entry.name,
                                                                         "instance_prompt": instance_prompt}, prepare, catalog))
        except (JobError, PhotoError, OSError) as problem:
            return job_ids, error(problem)
    return job_ids, f"started {len(job_ids)} DreamBooth job(s): {', '.join(job_ids)}"


def dreambooth_results(jobs: JobManager, catalog: Catalog, job_ids: list[str], prompt: str, seed, steps, guidance,
                       device: str = "cpu") -> tuple[list[tuple[str, str]], str]:
    """Images of the user's prompt from every finished personalized model, side by side, with readouts."""
    from studio.history import History
    from studio.personalization.dreambooth import load_personalized

    if not prompt or not prompt.strip():
        return [], error("the prompt is empty; use the identifier, like 'a sks dog in the snow'")
    finished = [j for j in job_ids or [] if jobs.spec(j)["kind"] == "dreambooth" and jobs.state(j)[0] == "finished"]
    if not finished:
        return [], error("none of the chosen jobs has finished yet")
    history = History(jobs.root.parent / "history")
    items, lines = [], ["| model | image time | training time | peak memory while training |", "| --- | ---: | ---: | ---: |"]
    for job_id in finished:
        spec = jobs.spec(job_id)
        card = json.loads((jobs.run_folder(job_id) / "card.json").read_text())
        pipeline = load_personalized(spec["model"], jobs.run_folder(job_id), catalog).to(device)
        pipeline.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        with torch.inference_mode():
            image = pipeline(prompt, num_inference_steps=int(steps), guidance_scale=float(guidance),
                             generator=torch.Generator().manual_seed(int(seed))).images[0]
        seconds = time.perf_counter() - start
        path = history.save(image, {"model": f"{spec['model']} + dreambooth {job_id}", "prompt": prompt,
                                    "negative_prompt": "", "seed": int(seed), "steps": int(steps),
                                    "guidance": float(guidance), "scheduler": type(pipeline.scheduler).__name__,
                                    "resolution": image.size[0]})
        items.append((str(path), f"{spec['model']}: {seconds:.2f} s"))
        lines.append(f"| {spec['model']} | {seconds:.2f} s | {card['train_seconds']:.0f} s | "
                     f"{card['peak_memory_mb']:.0f} MB ({card['memory_kind']}) |")
    return items, "\n".join(lines)
