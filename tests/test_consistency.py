"""Latent consistency distillation: the objective's pieces against diffusers' sampler, a run that resumes exactly,
the LoRA variant's adapter, the teacher's own images as data, and the LCM recipes on every toy model."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from studio.kinds.consistency.config import ConsistencyConfig
from studio.kinds.consistency.objective import SkippingSolver, boundary_scalings, guidance_embedding
from studio.kinds.consistency.train import consistency_distill, with_guidance_embedding
from studio.models.loading import load_lora, load_pipeline, share_components


@pytest.fixture(scope="module")
def small_student(tiny_pipeline_dir, tmp_path_factory):
    """A Small student of the tiny teacher, as a pipeline-layout folder holding its U-Net."""
    from studio.models.compression import build_student

    folder = tmp_path_factory.mktemp("tiny-small")
    teacher = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet")
    build_student(teacher, "small").save_pretrained(folder / "unet", safe_serialization=True)
    return folder


def config(tiny_pipeline_dir, student, out, **changes) -> ConsistencyConfig:
    values = dict(teacher=str(tiny_pipeline_dir), arch="small", student=str(student), data="toy", out=str(out),
                  steps=4, batch_size=2, lr=1e-3, guidance_min=1.0, guidance_max=3.0, checkpoint_every=2,
                  log_every=1)
    return ConsistencyConfig(**{**values, **changes})


def metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_guidance_embedding_and_boundary_scalings_match_what_diffusers_samples_with():
    w = torch.tensor([1.0, 1.5, 8.0])
    expected = StableDiffusionPipeline.get_guidance_scale_embedding(None, w - 1, embedding_dim=256)
    assert torch.allclose(guidance_embedding(w, 256), expected, atol=1e-5)
    scheduler = LCMScheduler()
    t = torch.tensor([0, 19, 499, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, step in enumerate(t.tolist()):
        skip, out = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert c_skip[i].item() == pytest.approx(float(skip)) and c_out[i].item() == pytest.approx(float(out))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0  # f(x, 0) = x: the consistency boundary


def test_the_skipping_solver_walks_the_50_step_ddim_grid():
    solver = SkippingSolver(LCMScheduler().alphas_cumprod, 50)
    assert solver.skip == 20 and solver.timesteps[0] == 19 and solver.timesteps[-1] == 999
    index, t, t_prev = solver.draw(256, torch.Generator().manual_seed(0))
    assert torch.equal(t, solver.timesteps[index]) and torch.equal(t_prev, (t - 20).clamp(min=0))


def test_a_guidance_embedding_starts_as_the_model_it_was_added_to(small_student):
    unet = UNet2DConditionModel.from_pretrained(small_student / "unet")
    conditioned = with_guidance_embedding(unet, 16)
    assert conditioned.config.time_cond_proj_dim == 16
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 8, 16)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
        guided = conditioned(x, t, encoder_hidden_states=context,
                             timestep_cond=guidance_embedding(torch.tensor([2.0, 7.0]), 16)).sample
    assert torch.allclose(plain, guided, atol=1e-6)


def test_a_full_run_writes_a_guidance_conditioned_student_that_samples_in_one_to_four_steps(
        tiny_pipeline_dir, small_student, tmp_path):
    out = consistency_distill(config(tiny_pipeline_dir, small_student, tmp_path / "run",
                                     validation_prompts=("a red circle", "a blue square")))
    assert [int(r["step"]) for r in metrics(out)] == [1, 2, 3, 4]
    assert all(float(r["loss_total"]) > 0 for r in metrics(out))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    student = UNet2DConditionModel.from_pretrained(out / "unet")
    assert student.config.time_cond_proj_dim == 256 and student.config.mid_block_type is None
    grid = Image.open(out / "validation" / "step-000004.png")
    assert grid.size == (2 * 32, 3 * 32)  # two prompts; rows at 1, 2 and 4 steps
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "consistency" and card["result"]["arch"] == "small"
    # The pipeline feeds the guidance scale to the embedding and runs no unconditional batch.
    pipe = share_components(load_pipeline(str(tiny_pipeline_dir)), student)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    batches = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    pipe("a red circle", num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert batches == [1, 1]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_continues_exactly(tiny_pipeline_dir, small_student, tmp_path, mode):
    """Four steps straight and 2 + resume + 2 give the same weights: the target network (full) and the optimizer
    come back from the checkpoint, and every step's randomness is derived from the seed and step."""
    whole = consistency_distill(config(tiny_pipeline_dir, small_student, tmp_path / "whole", mode=mode))
    part = tmp_path / "part"
    consistency_distill(config(tiny_pipeline_dir, small_student, part, steps=2, mode=mode))
    consistency_distill(config(tiny_pipeline_dir, small_student, part, resume=True, mode=mode))
    assert [int(r["step"]) for r in metrics(part)] == [1, 2, 3, 4]
    a = UNet2DConditionModel.from_pretrained(whole / "unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(part / "unet").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_gradient_checkpointing_trains_the_same_student(tiny_pipeline_dir, small_student, tmp_path):
    plain = consistency_distill(config(tiny_pipeline_dir, small_student, tmp_path / "plain", steps=2))
    saving = consistency_distill(config(tiny_pipeline_dir, small_student, tmp_path / "saving", steps=2,
                                        gradient_checkpointing=True))
    for a, b in zip(metrics(plain), metrics(saving), strict=True):
        assert float(a["loss_total"]) == pytest.approx(float(b["loss_total"]), rel=1e-5, abs=1e-7), (a, b)
    a = UNet2DConditionModel.from_pretrained(plain / "unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(saving / "unet").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_loader_workers_train_the_same_student_and_resume_in_step(tiny_pipeline_dir, small_student, tmp_path):
    import numpy as np

    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"thing {i}"}) + "\n"
                                                   for i in range(10)))
    in_loop = consistency_distill(config(tiny_pipeline_dir, small_student, tmp_path / "loop", data=str(folder)))
    part = tmp_path / "part"
    consistency_distill(config(tiny_pipeline_dir, small_student, part, data=str(folder), data_workers=2, steps=2))
    consistency_distill(config(tiny_pipeline_dir, small_student, part, data=str(folder), data_workers=2, resume=True))
    assert [r["loss_total"] for r in metrics(part)] == [r["loss_total"] for r in metrics(in_loop)]


def test_the_lora_adapter_saves_as_safetensors_and_loads_into_a_pipeline(tiny_pipeline_dir, small_student, tmp_path):
    out = consistency_distill(config(tiny_pipeline_dir, small_student, tmp_path / "run", mode="lora", rank=4,
                                     alpha=4.0, lr=1e-2))
    assert [p.suffix for p in (out / "lora").iterdir()] == [".safetensors"]
    merged = UNet2DConditionModel.from_pretrained(out / "unet")
    original = UNet2DConditionModel.from_pretrained(small_student / "unet")
    assert merged.config.time_cond_proj_dim is None  # the guidance is folded into the weights
    assert any(not torch.equal(a, b) for a, b in zip(merged.parameters(), original.parameters()))
    teacher = load_pipeline(str(tiny_pipeline_dir))
    adapted = load_lora(share_components(teacher, original), out / "lora")
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([400]), torch.randn(1, 8, 16)
    with torch.no_grad():
        assert torch.allclose(adapted.unet(x, t, encoder_hidden_states=context).sample,
                              merged(x, t, encoder_hidden_states=context).sample, atol=1e-4)


def test_the_teachers_own_images_are_drawn_once_and_trained_on(tiny_pipeline_dir, small_student, tmp_path):
    out = consistency_distill(config(tiny_pipeline_dir, small_student, tmp_path / "run", steps=2, synthetic=3))
    rows = [json.loads(line) for line in (out / "synthetic" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["000000.png", "000001.png", "000002.png"]
    assert all(r["text"] for r in rows) and Image.open(out / "synthetic" / "000000.png").size == (32, 32)
    drawn = (out / "synthetic" / "000001.png").stat().st_mtime_ns
    consistency_distill(config(tiny_pipeline_dir, small_student, out, steps=3, synthetic=3, resume=True))
    assert (out / "synthetic" / "000001.png").stat().st_mtime_ns == drawn  # kept, not drawn again


def test_bad_options_are_named(tiny_pipeline_dir, small_student, tmp_path):
    with pytest.raises(ValueError, match="--guidance-min"):
        config(tiny_pipeline_dir, small_student, tmp_path / "a", guidance_min=5.0, guidance_max=2.0).check()
    with pytest.raises(ValueError, match="--solver-steps"):
        config(tiny_pipeline_dir, small_student, tmp_path / "b", solver_steps=30).check()
    with pytest.raises(ValueError, match="--student"):
        consistency_distill(config(tiny_pipeline_dir, "", tmp_path / "c", teacher="toy-teacher", arch="custom:1"))


def test_a_consistency_job_runs_in_the_background_and_its_student_samples_with_lcm(tiny_catalog, tmp_path):
    from studio.inference.generation import PipelineCache, Settings, compare
    from studio.jobs import JobManager
    from studio.inference.recipes import PRESETS
    from studio.ui.common import Studio, job_view
    from studio.ui.consistency import consistency_start

    jobs = JobManager(tmp_path / "jobs")
    job_id, text = consistency_start(jobs, tiny_catalog, "tiny-small", "full", "teacher", "toy", 0, 2, 1e-4, 2, 1.0,
                                     3.0)
    assert "started" in text
    assert jobs.wait(job_id, timeout=240) == "finished", (tmp_path / "jobs" / job_id / "log.txt").read_text()
    curves, status, validation = job_view(jobs, job_id)
    assert validation.endswith("step-000002.png") and {c["term"] for c in curves} == {"loss_total"}
    catalog = Studio.create(tiny_catalog, "tiny", "cpu", tmp_path).current_catalog()
    entry = catalog.get(f"job-{job_id}")
    assert entry.teacher == "tiny-teacher" and entry.arch == "small"
    # In Compare and img2img, the new student samples with both LCM recipes: one U-Net call per step. (The tiny
    # family has no tiny decoder, so its own VAE decodes.)
    cache = PipelineCache(catalog)
    for name in ("lcm", "lcm-2"):
        settings = replace(PRESETS[name].apply(Settings(prompt="a red circle"), 2.0), decoder="vae")
        result = compare(cache, [f"job-{job_id}"], settings)[0]
        assert len(result.unet_seconds) == PRESETS[name].steps and result.image.size == (32, 32)
        edited = compare(cache, [f"job-{job_id}"], replace(settings, strength=1.0), init_image=result.image)[0]
        assert len(edited.unet_seconds) == PRESETS[name].steps and edited.image.size == (32, 32)


def test_a_teacher_adapter_maps_onto_its_students_by_the_block_removal_plan(tiny_pipeline_dir, tmp_path):
    """A LoRA trained for the teacher (here random, in the layout LCM-LoRA adapts): on the teacher every module
    maps; on Small each module takes the adapter of the teacher layer it was copied from (up-path layers are
    renumbered, so a plain name match would be wrong), and the adapters of removed blocks are counted."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from studio.models.compression import build_student, plan_student
    from studio.models.adapters import apply_adapter, map_adapter, unet_adapter

    teacher = load_pipeline(str(tiny_pipeline_dir))
    torch.manual_seed(0)
    trained = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet")
    trained.add_adapter(LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                   target_modules=["to_q", "to_v", "conv1", "proj_in"]))
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "adapter", unet_lora_layers=get_peft_model_state_dict(trained), safe_serialization=True,
        unet_lora_adapter_metadata=trained.peft_config["default"].to_dict())  # alpha 4 on rank 2: a scale of 2
    adapter = unet_adapter(str(tmp_path / "adapter"))
    names = [n for n, m in trained.named_modules() if hasattr(m, "lora_A")]
    assert sorted(adapter) == sorted(names)

    coverage = apply_adapter(teacher, str(tmp_path / "adapter"))
    assert coverage.mapped == coverage.adapter_modules == len(names) and not coverage.dropped
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([400]), torch.randn(1, 8, 16)
    with torch.no_grad():
        assert torch.allclose(teacher.unet(x, t, encoder_hidden_states=context).sample,
                              trained(x, t, encoder_hidden_states=context).sample, atol=1e-5)

    plan = plan_student(trained.config, "small")
    student = build_student(UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet"), "small")
    state, coverage = map_adapter(adapter, student, plan)
    assert 0 < coverage.mapped < coverage.adapter_modules
    assert coverage.mapped + len(coverage.dropped) == coverage.adapter_modules
    assert any(name.startswith("mid_block") for name in coverage.dropped) and "down_blocks.0.attentions.1" in \
        " ".join(coverage.dropped)
    moved = "up_blocks.1.attentions.1.proj_in"  # the student's last layer of this stage is the teacher's third
    assert plan.teacher_name(moved) == "up_blocks.1.attentions.2.proj_in"
    assert torch.equal(state[f"unet.{moved}.lora_A.weight"], adapter["up_blocks.1.attentions.2.proj_in"]["lora_A"])
    assert "mid_block" in coverage.describe() or "down_blocks" in coverage.describe()


def test_lcm_sampling_of_an_undistilled_student_uses_the_familys_adapter_and_says_so(tiny_catalog, tmp_path):
    """With the family's published LCM-LoRA at hand (here a stand-in saved locally) the lcm recipe draws a student
    through it, renamed onto the student; without one, the readout note says the images will be poor."""
    from dataclasses import replace as replace_field

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from studio.models.catalog import Catalog
    from studio.inference.generation import PipelineCache, Settings, compare
    from studio.inference.recipes import PRESETS

    settings = replace(PRESETS["lcm"].apply(Settings(prompt="a red circle"), 2.0), decoder="vae")
    plain = compare(PipelineCache(tiny_catalog), ["tiny-small"], settings)[0]
    assert "was not consistency-distilled" in plain.note and len(plain.unet_seconds) == 4

    unet = UNet2DConditionModel.from_pretrained(tiny_catalog.get("tiny-teacher").source_path / "unet")
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_v", "conv1"]))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lcm-lora", unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True)
    families = {**tiny_catalog.families, "tiny": replace_field(tiny_catalog.family("tiny"),
                                                               lcm_adapter=str(tmp_path / "lcm-lora"))}
    catalog = Catalog(list(tiny_catalog), families)
    cache = PipelineCache(catalog)
    adapted = compare(cache, ["tiny-small"], settings)[0]
    assert "map onto this U-Net" in adapted.note and "blocks it does not have" in adapted.note
    assert adapted.image.tobytes() != plain.image.tobytes()  # the adapter is in the draw
    assert not hasattr(cache.get("tiny-small").unet, "peft_config")  # on a copy: the plain student is untouched
