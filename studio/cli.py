"""`python -m studio <command>`: the studio from the command line.

Building the parser imports no torch: each command imports what it runs, so
`python -m studio --help` and `models` answer at once.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from studio.bench.cli import add_bench_commands
from studio.jobs.cli import add_jobs_commands
from studio.kinds.cli import add_data_commands
from studio.kinds.registry import KINDS
from studio.models.catalog import CatalogError, UnknownModelError, load_catalog
from studio.options import add_arguments, from_args
from studio.progress import TqdmProgress

PRESET_ARCHS = ("base", "small", "tiny")
USER_ERRORS = (UnknownModelError, CatalogError, ValueError)  # CompressionError is a ValueError


def uses_toy_world(run):
    """The toy world registers its data source ("--data toy") and judge when imported (with torch), so only the
    commands that may use them import it."""
    def run_with_toy_world(args):
        import studio.toy  # noqa: F401

        return run(args)
    return run_with_toy_world


def _giga(value: int) -> str:
    return f"{value / 1e9:.2f} G"


def cmd_models(args) -> None:
    catalog = load_catalog()
    for entry in catalog:
        owner = f"student of {entry.teacher}, {entry.arch}" if entry.role == "student" else "teacher"
        print(f"{entry.name:18} {entry.family:8} {owner:32} {entry.source}")


def cmd_compress(args) -> None:
    from studio.models.compression import build_student, resolve_spec
    from studio.models.loading import load_unet

    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds a model; choose another --out or pass --overwrite")
    spec = resolve_spec(args.arch)
    start = time.perf_counter()
    print(f"loading teacher U-Net {args.teacher} ...", flush=True)
    teacher = load_unet(args.teacher)
    print(f"building {spec} student from a teacher of {sum(p.numel() for p in teacher.parameters()):,} parameters")
    with TqdmProgress(unit="tensor") as progress:
        student = build_student(teacher, spec, callback=progress)
    print(f"saving to {out} ...", flush=True)
    student.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in student.parameters())
    print(f"wrote {spec} student ({params:,} parameters) to {out} in {time.perf_counter() - start:.1f}s")


def cmd_profile(args) -> None:
    from studio.models.profiling import profile_students

    report = profile_students(args.teacher, tuple(args.arch), args.resolution, args.batch)
    if args.json:
        print(json.dumps(report["rows"], indent=2))
        return
    teacher = report["rows"][0]
    print(f"{args.teacher} at {report['resolution']}x{report['resolution']}, batch {report['batch']}; "
          "MACs per U-Net step. paper = conv + linear (as BK-SDM); total = paper + attention matmuls")
    header = f"{'arch':24} {'U-Net params':>14} {'ratio':>6} {'MACs paper':>12} {'ratio':>6} {'MACs total':>12} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        print(f"{row['arch']:24} {row['unet_params']:>14,} {row['unet_params'] / teacher['unet_params']:>6.2f} "
              f"{_giga(row['macs_paper']):>12} {row['macs_paper'] / teacher['macs_paper']:>6.2f} "
              f"{_giga(row['macs_total']):>12} {row['macs_total'] / teacher['macs_total']:>6.2f}")
    for part, count in report["components"].items():
        if count is not None:
            print(f"shared {part.replace('_', ' ')}: {count:,} parameters")


def cmd_toy_data(args) -> None:
    from studio.toy.data import export_imagefolder

    out = export_imagefolder(args.n, args.out, args.seed)
    print(f"wrote {args.n} images and metadata.jsonl to {out}")


def cmd_toy_train(args) -> None:
    from studio.toy.prompts import parse_task_weights
    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    config = ToyTrainConfig(out=args.out, seed=args.seed, vae_from=args.vae_from or "", unet_from=args.unet_from or "",
                            task_weights=parse_task_weights(args.task_weight or []),
                            zero_terminal_snr=args.zero_terminal_snr)
    for field in ("vae_steps", "unet_steps", "batch_size", "dataset_size", "max_minutes", "lr"):
        if getattr(args, field) is not None:
            if getattr(args, field) <= 0:
                raise ValueError(f"--{field.replace('_', '-')} must be positive")
            setattr(config, field, getattr(args, field))
    train_toy_teacher(config)


def cmd_toy_dreambooth(args) -> None:
    from studio.toy.personalize import toy_dreambooth_report

    models = [m for m in args.models.split(",") if m]
    toy_dreambooth_report(models, Path(args.work), args.steps, args.class_images, args.lr, args.n, Path(args.report))


def cmd_toy_judge(args) -> None:
    from studio.toy.evaluate import judge_model

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    report = judge_model(args.model, n=args.n, recipe=args.recipe, seeds=tuple(args.seeds), log=log)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.model} with {args.recipe}: {report['n']} images per seed, seeds {report['seeds']}")
    spread = report["std"]
    for task, value in report["tasks"].items():
        print(f"{task:>14} {value:.1%}")
    for key in ("overall", "held_out", "attributes"):
        value = report[key]
        std = "" if spread[key] is None else f" ± {spread[key] * 100:.1f}"
        print(f"{key:>14} {'-' if value is None else f'{value:.1%}'}{std}")


def add_kind_command(commands, kind) -> None:
    """`python -m studio KIND --flags`: a job kind run in the foreground, flags from its config dataclass."""
    def run(args):
        with TqdmProgress(unit=kind.unit) as progress:
            print(kind.run(from_args(kind.config, args), progress))

    sub = commands.add_parser(kind.name, help=kind.help)
    add_arguments(sub, kind.config)
    sub.set_defaults(run=uses_toy_world(run))


def cmd_toy_decoder(args) -> None:
    from studio.toy.decoder import distill_tiny_decoder

    distill_tiny_decoder(Path(args.out), args.steps, args.batch_size, args.lr)


def cmd_toy_vae_decoder(args) -> None:
    from studio.toy.decoder import finetune_vae_decoder

    finetune_vae_decoder(Path(args.pipeline), Path(args.out), args.steps, args.batch_size, args.lr)


def cmd_toy_recipes(args) -> None:
    from studio.inference.recipes import PRESETS
    from studio.toy.report import TOY_MODELS, recipe_rows, write_report

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    groups = [(tuple(args.models or TOY_MODELS), tuple(args.recipes or PRESETS))]
    groups += [((model,), tuple(recipes)) for model, *recipes in args.extra or [] if recipes]
    rows = [row for models, recipes in groups
            for row in recipe_rows(models, recipes, args.n, tuple(args.seeds), args.batch,
                                   Path(args.work) if args.work else None, log=log)]
    if args.report:
        write_report(rows, Path(args.report))
        log(f"wrote {args.report} and its .json and .png")
    if args.json:
        print(json.dumps(rows, indent=2))


def cmd_toy_students(args) -> None:
    from studio.toy.students import distill_toy_students

    distill_toy_students(args.steps, args.batch_size, args.lr, Path(args.work), tuple(args.arch))


def cmd_toy_lcm(args) -> None:
    from studio.toy.students import distill_toy_lcm

    distill_toy_lcm(args.steps, args.batch_size, args.lr, Path(args.work))


def cmd_toy_ablation(args) -> None:
    from studio.toy.students import run_ablation

    run_ablation(args.steps, args.batch_size, args.lr, Path(args.work), args.n, tuple(args.seeds), Path(args.report))


def cmd_adapter_coverage(args) -> None:
    from studio.models.adapters import adapter_coverage

    rows = adapter_coverage(args.teacher, tuple(args.arch), args.adapter or None)
    print(f"{'model':10} {'adapter modules':>16} {'mapped':>7} {'dropped':>8} {'misplaced by name':>18}  "
          f"({args.adapter or 'the LCM-LoRA layout on ' + args.teacher + ' (names and shapes, no weights)'})")
    for row in rows:
        print(f"{row['model']:10} {row['adapter_modules']:>16} {row['mapped']:>7} {row['dropped']:>8} "
              f"{row['misplaced_by_name']:>18}")
    print("mapped: student modules given the adapter of the teacher module they copy; dropped: adapter modules in "
          "removed blocks; misplaced by name: modules a plain name match would give another layer's adapter")


def cmd_sensitivity(args) -> None:
    from studio.kinds.evaluation.sensitivity import block_sensitivity, write_map

    result = block_sensitivity(args.teacher, args.n, args.seed, clip_model=args.clip_model,
                               clip_pretrained=args.clip_pretrained or None)
    json_path, png_path = write_map(result, Path(args.out))
    ranked = sorted((u for u in result["units"] if u["removable"]),
                    key=lambda u: float("inf") if u["identical_to_teacher"] else u["psnr_to_teacher"])
    print(f"most sensitive: {', '.join(u['unit'] for u in ranked[:5])}; least: "
          f"{', '.join(u['unit'] for u in ranked[-5:])}\nwrote {json_path} and {png_path}")


def add_prompt_set_args(sub) -> None:
    sub.add_argument("--n", type=int, help="prompts of the evaluation set (default: all 672; it cycles past them)")
    sub.add_argument("--seeds", type=int, nargs="+", default=[0], help="image i is seeded with derive_seed(seed, i)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="list the model catalogue").set_defaults(run=cmd_models)

    compress = commands.add_parser("compress", help="build a BK-SDM student U-Net from a teacher's weights")
    compress.add_argument("--teacher", required=True, help="catalogue name, pipeline folder or U-Net folder")
    compress.add_argument("--arch", required=True,
                          help="base, small, tiny, or custom:LAYERS[:no-mid][:no-innermost] (e.g. custom:1,2,2,1)")
    compress.add_argument("--out", required=True, help="folder to write the student U-Net to")
    compress.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    compress.set_defaults(run=cmd_compress)

    def add_model_args(sub):
        sub.add_argument("--teacher", default="sd-v1.4", help="catalogue name or local folder (default: sd-v1.4)")
        sub.add_argument("--arch", nargs="+", default=list(PRESET_ARCHS),
                         help="students to build from the teacher's config (default: base small tiny)")
        sub.add_argument("--resolution", type=int, help="image side in pixels (default: the teacher's)")
        sub.add_argument("--batch", type=int, default=1)
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    profile = commands.add_parser("profile", help="parameters and MACs of a teacher and its students")
    add_model_args(profile)
    profile.set_defaults(run=cmd_profile)

    add_bench_commands(commands, add_model_args, wrap_run=uses_toy_world)
    add_data_commands(commands)
    coverage = commands.add_parser("adapter-coverage", help="how many modules of a teacher's LoRA adapter (e.g. "
                                   "LCM-LoRA) map onto its block-removed students")
    add_model_args(coverage)
    coverage.set_defaults(arch=["base", "small", "tiny"], run=uses_toy_world(cmd_adapter_coverage))
    coverage.add_argument("--adapter", help="an adapter folder or hub id (must be at hand); default: the LCM-LoRA "
                                            "layout (diffusers' consistency distillation targets), counted by name")
    sensitivity = commands.add_parser("sensitivity", help="remove each U-Net unit alone (no retraining): what it "
                                      "saves and what it costs; JSON and a heat map")
    sensitivity.add_argument("--teacher", required=True, help="a catalogue teacher")
    sensitivity.add_argument("--n", type=int, default=96, help="prompts of the family's prompt set")
    sensitivity.add_argument("--seed", type=int, default=0)
    sensitivity.add_argument("--out", default="sensitivity", help="writes OUT.json and OUT.png")
    sensitivity.add_argument("--clip-model", default="ViT-g-14")
    sensitivity.add_argument("--clip-pretrained", default="laion2b_s34b_b88k", help="'' for none")
    sensitivity.set_defaults(run=uses_toy_world(cmd_sensitivity))
    for kind in KINDS.values():
        add_kind_command(commands, kind)
    add_jobs_commands(commands, wrap_run=uses_toy_world)

    add_toy_commands(commands)
    return parser


def add_toy_commands(commands) -> None:
    """`python -m studio toy ...`: the toy world's data, models and reports (each imports the toy world when run)."""
    toy = commands.add_parser("toy", help="the toy world: procedural data, a tiny teacher, a judge")
    toy_commands = toy.add_subparsers(dest="toy_command", required=True)
    data = toy_commands.add_parser("data", help="export procedural shapes in the imagefolder layout")
    data.add_argument("--n", type=int, required=True)
    data.add_argument("--out", required=True)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(run=uses_toy_world(cmd_toy_data))
    train = toy_commands.add_parser("train", help="train the toy teacher (VAE, text encoder, U-Net) from scratch")
    train.add_argument("--out", default="assets/toy/teacher")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--vae-steps", type=int)
    train.add_argument("--unet-steps", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--dataset-size", type=int)
    train.add_argument("--max-minutes", type=float, help="time budget in minutes (default 90); the U-Net stage stops early at it")
    train.add_argument("--vae-from", help="reuse the VAE of an earlier `toy train` output folder and skip the VAE stage")
    train.add_argument("--unet-from", help="train on from the U-Net and text encoder of an earlier `toy train` output "
                                           "folder (and its VAE, unless --vae-from)")
    train.add_argument("--lr", type=float, help="peak learning rate of the U-Net and text encoder (default 7e-4)")
    train.add_argument("--task-weight", action="append", metavar="TASK=W",
                       help="relative weight of a task family in the training captions (others weigh 1); repeatable")
    train.add_argument("--zero-terminal-snr", action="store_true",
                       help="train and sample on SD's betas rescaled to (almost) no signal at t=T (Lin et al. 2024)")
    train.set_defaults(run=uses_toy_world(cmd_toy_train))
    decoder = toy_commands.add_parser("decoder", help="distill the toy tiny decoder (TAESD layout) from the toy VAE")
    decoder.add_argument("--out", default="assets/toy/tiny-decoder")
    decoder.add_argument("--steps", type=int, default=2000)  # the shipped decoder's settings
    decoder.add_argument("--batch-size", type=int, default=32)
    decoder.add_argument("--lr", type=float, default=1e-3)
    decoder.set_defaults(run=uses_toy_world(cmd_toy_decoder))
    vae_decoder = toy_commands.add_parser(
        "vae-decoder", help="fine-tune a toy pipeline's VAE decoder on its frozen encoder (the U-Nets stay valid)")
    vae_decoder.add_argument("--pipeline", default="assets/toy/teacher", help="a toy pipeline folder")
    vae_decoder.add_argument("--out", required=True, help="where to write the pipeline with the new decoder")
    vae_decoder.add_argument("--steps", type=int, default=4500)
    vae_decoder.add_argument("--batch-size", type=int, default=32)
    vae_decoder.add_argument("--lr", type=float, default=3e-4)
    vae_decoder.set_defaults(run=uses_toy_world(cmd_toy_vae_decoder))

    add_toy_reports(toy_commands)


def add_toy_reports(toy_commands) -> None:
    """The toy world's reports and shipped models: recipes, students, lcm, ablation, dreambooth, judge."""
    recipes = toy_commands.add_parser("recipes", help="judge accuracy and fidelity of every toy model x recipe")
    recipes.add_argument("--models", nargs="+", help="default: the teacher and its three students")
    recipes.add_argument("--recipes", nargs="+",
                         help="preset names, each optionally with :knob=value overrides (default: every preset)")
    add_prompt_set_args(recipes)
    recipes.add_argument("--extra", nargs="+", action="append", metavar="MODEL RECIPE",
                         help="repeatable: one more model with its own recipes, beyond the models x recipes grid, "
                              "e.g. --extra toy-bk-tiny-lcm lcm lcm-2")
    recipes.add_argument("--batch", type=int, default=48, help="images drawn at once")
    recipes.add_argument("--work", help="keep each finished cell's row here (rows.jsonl); a rerun skips them")
    recipes.add_argument("--report", help="also write a markdown table, its JSON and the Pareto plot (PNG) here")
    recipes.add_argument("--json", action="store_true")
    recipes.set_defaults(run=uses_toy_world(cmd_toy_recipes))

    def add_toy_distill_args(sub):
        sub.add_argument("--steps", type=int, default=400)
        sub.add_argument("--batch-size", type=int, default=32)
        sub.add_argument("--lr", type=float, default=3e-4, help="the toy models are small: higher than the paper's")
        sub.add_argument("--work", default="runs/toy", help="where runs (checkpoints, logs) live")

    students = toy_commands.add_parser("students", help="distill and ship toy-bk-{base,small,tiny}")
    add_toy_distill_args(students)
    students.add_argument("--arch", nargs="+", default=["base", "small", "tiny"])
    students.set_defaults(run=uses_toy_world(cmd_toy_students))
    lcm = toy_commands.add_parser("lcm", help="consistency-distill toy-bk-tiny and ship toy-bk-tiny-lcm")
    add_toy_distill_args(lcm)
    lcm.set_defaults(run=uses_toy_world(cmd_toy_lcm), lr=1e-4)
    ablation = toy_commands.add_parser("ablation", help="the paper's KD ablation on the toy world")
    add_toy_distill_args(ablation)
    add_prompt_set_args(ablation)
    ablation.add_argument("--report", default="docs/toy-ablation.md")
    ablation.set_defaults(run=uses_toy_world(cmd_toy_ablation))
    booth_toy = toy_commands.add_parser("dreambooth", help="DreamBooth proof: a subject toy models never drew")
    booth_toy.add_argument("--models", default="toy-teacher,toy-bk-small")
    booth_toy.add_argument("--steps", type=int, default=300)
    booth_toy.add_argument("--class-images", type=int, default=50)
    booth_toy.add_argument("--lr", type=float, default=1e-3, help="LoRA on the tiny toy models needs more than 1e-4")
    booth_toy.add_argument("--n", type=int, default=30, help="images judged per prompt")
    booth_toy.add_argument("--work", default="runs/toy-dreambooth")
    booth_toy.add_argument("--report", default="docs/toy-dreambooth.md")
    booth_toy.set_defaults(run=uses_toy_world(cmd_toy_dreambooth))

    judge = toy_commands.add_parser("judge", help="prompt accuracy of a toy model, by the procedural judge")
    judge.add_argument("--model", default="toy-teacher", help="catalogue name, pipeline folder or student run folder")
    add_prompt_set_args(judge)
    judge.add_argument("--recipe", default="paper", help="a preset, optionally with :knob=value overrides")
    judge.add_argument("--json", action="store_true")
    judge.set_defaults(run=uses_toy_world(cmd_toy_judge))


def user_error_types() -> tuple[type, ...]:
    """The errors a command reports in one line (exit 2): bad input, a model that can't be had, a stopped run."""
    from studio.kinds.training import TrainingError
    from studio.models.loading import ModelUnavailableError

    return (*USER_ERRORS, ModelUnavailableError, TrainingError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except user_error_types() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
