import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from studio.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_studio(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def test_profile_json_from_the_command_line():
    result = run_studio("profile", "--teacher", "sd-v1.4", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["arch"] for r in rows] == ["teacher", "base", "small", "tiny"]
    assert rows[0]["unet_params"] == 859_520_964
    assert all(isinstance(r["macs_paper"], int) and r["macs_total"] > r["macs_paper"] for r in rows)


def test_profile_table(capsys):
    assert main(["profile", "--teacher", "sd-v2.1-base", "--arch", "tiny", "custom:1,2,2,1:no-mid"]) == 0
    out = capsys.readouterr().out
    assert "conv + linear" in out and "326,825,604" in out and "custom:1,2,2,1:no-mid" in out


def test_compress_writes_a_loadable_unet(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "small"
    assert main(["compress", "--teacher", str(tiny_pipeline_dir), "--arch", "small", "--out", str(out)]) == 0
    student = UNet2DConditionModel.from_pretrained(out)
    teacher = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet")
    assert student.config.mid_block_type is None and student.config.layers_per_block == 1
    assert torch.equal(student.up_blocks[1].resnets[1].conv1.weight, teacher.up_blocks[1].resnets[2].conv1.weight)
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    if not os.environ.get("TQDM_DISABLE"):  # tqdm reads it once, at import: a test cannot turn the bar back on
        assert "copying teacher weights" in capsys.readouterr().err  # the progress bar
    # a second run refuses to overwrite the student it made
    assert main(["compress", "--teacher", str(tiny_pipeline_dir), "--arch", "tiny", "--out", str(out)]) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert UNet2DConditionModel.from_pretrained(out).config.mid_block_type is None


def test_bench_reports_ratios_measured_in_one_run(tiny_pipeline_dir, capsys):
    code = main(["bench", "unet", "--teacher", str(tiny_pipeline_dir), "--resolution", "32",
                 "--warmup", "1", "--repeats", "2", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["arch"]: r for r in report["rows"]}
    assert set(rows) == {"teacher", "base", "small", "tiny"}
    for row in rows.values():  # two timed repeats per model after the warm-up, interleaved in one run
        assert len(row["times_s"]) == 2 and row["median_s"] > 0
    assert rows["tiny"]["macs_ratio"] > rows["base"]["macs_ratio"] > 1


def test_bad_input_gets_a_clear_message(capsys):
    assert main(["profile", "--teacher", "sd-v9"]) == 2
    assert "neither a catalogue model" in capsys.readouterr().err
    assert main(["profile", "--arch", "medium"]) == 2
    assert "allowed: base, small, tiny" in capsys.readouterr().err
    assert main(["bench", "unet", "--dtype", "fp8", "--arch", "tiny"]) == 2
    assert "allowed: fp32, fp16, bf16" in capsys.readouterr().err
    assert main(["compress", "--teacher", "bk-sdm-tiny", "--arch", "tiny", "--out", "/tmp/never"]) == 2
    assert "not in the cache" in capsys.readouterr().err
