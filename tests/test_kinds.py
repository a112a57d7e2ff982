"""The registry of job kinds, the limits the kinds share with generation, and the command line's `jobs`."""

import ast
import json
import os
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from studio.budget import JobLimits, QuotaError, check_caps
from studio.kinds.registry import KINDS, config_from_json
from studio.kinds.distillation.config import DistillConfig
from studio.kinds.evaluation.config import EvalConfig
from studio.jobs import JobManager
from studio.kinds.base import RESULTS
from studio.limits import MAX_GUIDANCE, MAX_SAMPLING_STEPS, SCHEDULER_NAMES
from studio.options import to_argv
from studio.kinds.personalization.config import DreamBoothConfig

ROOT = Path(__file__).resolve().parent.parent
STUDIO = ROOT / "studio"
# The modules that must work for any kind, so name none (the tabs of one kind may).
KIND_BLIND = ["kinds/registry.py", "budget.py", "cli.py", "kinds/base.py", "ui/common.py", "ui/app.py", *[
    str(p.relative_to(STUDIO)) for p in (STUDIO / "jobs").glob("*.py")]]


def test_every_kind_declares_config_run_estimate_result_and_caps():
    assert set(KINDS) == {"distill", "consistency", "dreambooth", "evaluate"}
    limits = {f.name for f in fields(JobLimits)}
    for kind in KINDS.values():
        names = {f.name for f in fields(kind.config)}
        assert "out" in names and kind.result in RESULTS and callable(kind.run) and kind.help
        assert set(kind.caps) <= names and set(kind.caps.values()) <= limits, kind.name
        assert all(f.metadata.get("help") for f in fields(kind.config)), kind.name  # every flag says what it is


@pytest.mark.parametrize("module", KIND_BLIND)
def test_the_generic_modules_name_no_kind(module):
    tree = ast.parse((STUDIO / module).read_text())
    subcommands = {id(call.args[0]) for call in ast.walk(tree) if isinstance(call, ast.Call) and call.args
                   and isinstance(call.func, ast.Attribute) and call.func.attr == "add_parser"}  # e.g. `toy dreambooth`
    strings = {node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in subcommands}
    assert not strings & set(KINDS), (module, strings & set(KINDS))


def test_sampling_limits_are_generations_everywhere():
    from studio.inference.generation import SCHEDULERS

    assert tuple(SCHEDULERS) == SCHEDULER_NAMES
    assert next(f for f in fields(EvalConfig) if f.name == "scheduler").metadata["choices"] == SCHEDULER_NAMES
    evaluation = dict(models=["toy-teacher"], out="-")
    EvalConfig(**evaluation, steps=MAX_SAMPLING_STEPS, scheduler="UniPC", guidance=MAX_GUIDANCE).check()
    with pytest.raises(ValueError, match=f"--steps must be at most {MAX_SAMPLING_STEPS}, got 200"):
        EvalConfig(**evaluation, steps=200).check()  # accepted before, then failed on the job's first image
    with pytest.raises(ValueError, match="--guidance must be at most 20"):
        EvalConfig(**evaluation, guidance=50.0).check()
    booth = dict(model="toy-teacher", photos="-", instance_prompt="a sks dog", class_prompt="a dog", out="-")
    with pytest.raises(ValueError, match="--sample-steps must be at most 100"):
        DreamBoothConfig(**booth, sample_steps=101).check()
    with pytest.raises(ValueError, match="--validation-guidance must be at most 20"):
        DistillConfig(teacher="t", arch="tiny", data="toy", out="-", validation_guidance=21.0).check()


def test_an_evaluation_job_beyond_the_limits_is_refused_before_it_has_a_folder(tmp_path, tiny_catalog):
    jobs = JobManager(tmp_path / "jobs")
    with pytest.raises(ValueError, match="--steps must be at most 100"):
        jobs.create("evaluate", EvalConfig(models=["tiny-teacher"], out="-", n=1, steps=200), catalog=tiny_catalog)
    assert not jobs.root.exists()  # made by the first job that starts; nothing was


def test_caps_are_per_kind_evaluation_sampling_steps_are_not_training_steps():
    limits = JobLimits(max_steps=10, max_eval_images=5)
    check_caps(limits, EvalConfig(models=["a"], out="-", n=5, steps=25), KINDS["evaluate"].caps)
    with pytest.raises(QuotaError, match=r"images per model: 6 is more than this host allows \(5\)"):
        check_caps(limits, EvalConfig(models=["a"], out="-", n=6), KINDS["evaluate"].caps)
    with pytest.raises(QuotaError, match=r"steps: 25 is more than this host allows \(10\)"):
        check_caps(limits, DistillConfig(teacher="t", arch="tiny", data="toy", out="-", steps=25),
                   KINDS["distill"].caps)


def test_a_job_gets_its_config_as_checked_json_and_none_survives():
    config = EvalConfig(models=["toy-teacher"], out="-", clip_pretrained=None, clip_weights="/w.safetensors")
    assert config_from_json("evaluate", json.loads(json.dumps(asdict(config)))) == config
    with pytest.raises(ValueError, match="--clip-pretrained is None, which no flag can say"):
        to_argv(config)  # the argv round trip used to drop it and bring back the default checkpoint
    with pytest.raises(ValueError, match=r"images per model \(--n\) must be at least 1"):
        config_from_json("evaluate", {**asdict(config), "n": 0})  # the job's process checks again
    with pytest.raises(ValueError, match="'train' is not a job kind; jobs run: distill, consistency, dreambooth, evaluate"):
        config_from_json("train", {})


def test_background_jobs_checkpoint_and_log_often_enough_unless_told():
    kind = KINDS["distill"]
    short = kind.for_job(DistillConfig(teacher="t", arch="tiny", data="toy", out="-", steps=40))
    assert (short.checkpoint_every, short.log_every) == (10, 2)
    told = kind.for_job(DistillConfig(teacher="t", arch="tiny", data="toy", out="-", steps=40, checkpoint_every=7))
    assert told.checkpoint_every == 7
    long = kind.for_job(DistillConfig(teacher="t", arch="tiny", data="toy", out="-", steps=100_000))
    assert (long.checkpoint_every, long.log_every) == (500, 10)  # the config's own defaults
    assert KINDS["evaluate"].for_job(EvalConfig(models=["a"], out="-")) == EvalConfig(models=["a"], out="-")


def test_the_command_line_starts_without_torch():
    code = ("import sys; from studio.cli import build_parser, main; build_parser(); main(['models']); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_suite_has_its_own_empty_hugging_face_cache():
    from huggingface_hub import constants

    home = Path(os.environ["HF_HOME"])
    assert home.name.startswith("studio-tests-hf-home-") and Path(constants.HF_HUB_CACHE).is_relative_to(home)
    assert Path.home() / ".cache" not in Path(constants.HF_HUB_CACHE).parents


def studio_cli(*args, data_dir: Path, catalog: Path | None = None):
    env = {**os.environ, **({"STUDIO_MODELS": str(catalog)} if catalog else {})}
    return subprocess.run([sys.executable, "-m", "studio", "jobs", "--data-dir", str(data_dir), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_jobs_from_the_command_line_start_list_status_cancel_resume(tmp_path, tiny_catalog):
    catalog = tmp_path / "extra.json"
    catalog.write_text(json.dumps({"models": [{**asdict(e), "source": e.source} for e in tiny_catalog
                                              if e.name.startswith("tiny-")]}))
    data = tmp_path / "data"
    started = studio_cli("start", "distill", "--teacher", "tiny-teacher", "--arch", "tiny", "--data", "toy",
                         "--steps", "100000", "--batch-size", "2", data_dir=data, catalog=catalog)
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.split()[2].rstrip(":")
    jobs = JobManager(data / "jobs")  # what the local app reads: the same folder
    try:
        assert jobs.ids() == [job_id] and jobs.spec(job_id)["config"]["checkpoint_every"] == 500
        listed = json.loads(studio_cli("list", "--json", data_dir=data).stdout)
        assert [(j["id"], j["kind"], j["state"]) for j in listed] == [(job_id, "distill", "running")]
        cancelled = studio_cli("cancel", job_id, data_dir=data)
        assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout
        assert jobs.wait(job_id, timeout=300) == "cancelled"
        status = studio_cli("status", job_id, data_dir=data)
        assert "cancelled" in status.stdout and "can be resumed" in status.stdout
        assert studio_cli("resume", job_id, data_dir=data).stdout.strip() == f"resumed {job_id}"
        assert jobs.state(job_id)[0] == "running" and jobs.spec(job_id)["config"]["resume"] is True
    finally:
        jobs.cancel(job_id, grace=5) if jobs.state(job_id)[0] == "running" else None
        jobs.wait(job_id, timeout=120)
    refused = studio_cli("status", "no-such-job", data_dir=data)
    assert refused.returncode == 2 and "no job 'no-such-job'" in refused.stderr
    bad = studio_cli("start", "evaluate", "--models", "tiny-teacher", "--steps", "500", data_dir=data, catalog=catalog)
    assert bad.returncode == 2 and "--steps must be at most 100, got 500" in bad.stderr
