"""`python -m studio jobs start|list|status|cancel|resume`: background jobs from the command line, as in the app.

Jobs live under DATA_DIR/jobs, the folder the local app uses (`python app.py
--data-dir`, default studio-data), so a job started here shows in the app and
the other way round. `jobs start KIND` takes the flags of `python -m studio KIND`
but --out (the job's own folder) and --resume (that is `jobs resume`).
"""

import json
import os
from dataclasses import asdict
from pathlib import Path

from studio.kinds.registry import KINDS
from studio.options import add_arguments, from_args

DEFAULT_DATA_DIR = "studio-data"


def manager(args):
    from studio.jobs.launcher import JobManager

    return JobManager(Path(args.data_dir) / "jobs")


def cmd_start(args) -> None:
    from studio.models.catalog import load_catalog

    kind = KINDS[args.kind]
    jobs = manager(args)
    config = from_args(kind.config, args, out="-")  # resume has no flag here: its default, False
    job_id = jobs.create(kind.name, config, catalog=jobs.catalog_with_students(load_catalog()))
    print(f"started job {job_id}: {jobs.spec(job_id)['name']}\n"
          f"follow it with: python -m studio jobs status {job_id} --data-dir {args.data_dir}")


def cmd_exec(args) -> None:
    """The job itself, in this process: its kind's run on the config stored in job.json, checked again."""
    from studio.kinds.registry import config_from_json, job_kind
    from studio.progress import TqdmProgress

    spec = json.loads((Path(args.folder) / "job.json").read_text())
    kind = job_kind(spec["kind"])
    config = config_from_json(spec["kind"], spec["config"])
    print(f"{kind.name}: {json.dumps(spec['config'])}", flush=True)
    with TqdmProgress(unit=kind.unit) as progress:
        print(kind.run(config, progress), flush=True)


def cmd_list(args) -> None:
    jobs = manager(args)
    statuses = [jobs.status(job_id) for job_id in jobs.ids(args.kind)]
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=2))
        return
    if not statuses:
        print(f"no jobs in {jobs.root}")
    for s in statuses:
        print(f"{s.id}  {s.kind:10} {s.state:11} {s.unit} {s.step}/{s.steps}  {s.name}")


def cmd_status(args) -> None:
    jobs = manager(args)
    status = jobs.status(args.job)
    if args.json:
        print(json.dumps(asdict(status), indent=2))
        return
    speed = "" if status.steps_per_second is None else f", {status.steps_per_second:.3g} {status.unit}s/s"
    print(f"{status.id} ({status.kind}): {status.name}\n{status.state}, {status.unit} {status.step} of "
          f"{status.steps}{speed}")
    if status.losses:
        print(", ".join(f"{k} {v:.5g}" for k, v in status.losses.items()))
    if status.data_note:
        print(status.data_note.removeprefix("; "))
    if status.message:
        print(status.message)
    print(f"folder: {jobs.folder(args.job)} (log.txt, run/)")


def cmd_cancel(args) -> None:
    print(manager(args).cancel(args.job))


def cmd_resume(args) -> None:
    print(manager(args).resume(args.job))


def add_jobs_commands(commands, wrap_run=lambda run: run) -> None:
    """The jobs subcommands; `wrap_run` wraps the commands that run a job's kind in this process."""
    jobs = commands.add_parser("jobs", help="background jobs: start, list, status, cancel, resume")
    jobs.add_argument("--data-dir", default=os.environ.get("STUDIO_DATA_DIR") or DEFAULT_DATA_DIR,
                      help="the app's data folder; jobs live in its jobs/ (default: $STUDIO_DATA_DIR or "
                           f"{DEFAULT_DATA_DIR}, as app.py)")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    start = actions.add_parser("start", help="start a job of a kind in the background")
    kinds = start.add_subparsers(dest="kind", required=True)
    for kind in KINDS.values():
        sub = kinds.add_parser(kind.name, help=kind.help)
        add_arguments(sub, kind.config, exclude=("out", "resume"))
        sub.set_defaults(run=cmd_start)
    listing = actions.add_parser("list", help="every job, newest first")
    listing.add_argument("--kind", choices=list(KINDS), help="only jobs of this kind")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_list)
    for name, run, help in (("status", cmd_status, "one job's state, progress and losses"),
                            ("cancel", cmd_cancel, "stop a running job after a checkpoint of its current step"),
                            ("resume", cmd_resume, "continue a cancelled, failed or interrupted job")):
        action = actions.add_parser(name, help=help)
        action.add_argument("job", help="the job id (python -m studio jobs list)")
        if name == "status":
            action.add_argument("--json", action="store_true")
        action.set_defaults(run=run)
    execute = actions.add_parser("exec", help="run a job's folder in this process (what its runner starts)")
    execute.add_argument("folder", help="the job's folder (its job.json says what to run)")
    execute.set_defaults(run=wrap_run(cmd_exec))
