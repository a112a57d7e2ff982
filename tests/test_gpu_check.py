"""The device check (`python -m studio gpu-check`): end to end on CUDA where there is one; its every step on the
CPU with the tiny family, so that the script works when a GPU comes."""

import pytest
import torch

from studio.bench.gpu_check import format_table, gpu_check


@pytest.mark.slow
def test_every_step_of_the_device_check_runs_on_the_cpu(tiny_catalog):
    rows = gpu_check("cpu", "tiny", tiny_catalog, job_steps=2, bench_512=False, log=lambda message: None)
    assert [r["step"] for r in rows] == ["compare fp32", "compare fp16", "img2img", "distillation job",
                                         "DreamBooth job", "evaluation job"]
    assert all(r["ok"] for r in rows), format_table(rows, "cpu")
    assert "tiny-teacher" in rows[0]["measured"] and "2 steps" in rows[3]["measured"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_studio_runs_end_to_end_on_cuda(catalog):
    rows = gpu_check("cuda", "toy", catalog, log=print)
    print(format_table(rows, "cuda"))
    assert all(r["ok"] for r in rows), format_table(rows, "cuda")
