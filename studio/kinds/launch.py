"""More than one training process, on accelerate: `--processes N` (this machine) and `--num-machines M` (several).

No launcher of our own: a run asked for more than one process starts `accelerate launch` on the same command
(`python -m studio KIND <its flags>`), and each of the processes it starts runs the trainer, which knows it is one
rank of many from the environment torchrun sets. On a machine without CUDA the processes join by gloo and share
the CPU budget: each gets the job's threads divided by the processes on this machine. With an accelerate config
file (`--accelerate-config`, e.g. the DeepSpeed and FSDP files in studio/configs/accelerate/), that file says how
the processes train, and the flags here say how many there are and where machine 0 listens.
"""

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from studio.options import option, to_argv

CONFIG_DIR = Path(__file__).resolve().parent.parent / "models" / "configs" / "accelerate"


@dataclass(kw_only=True)
class LaunchOptions:
    processes: int = option(1, "training processes on this machine (one per GPU; on a CPU, processes that share the "
                               "CPU budget), started by accelerate launch; the batch size is per process",
                            min=1, max=64)
    num_machines: int = option(1, "machines in the run: start the same command on each with its --machine-rank",
                               label="machines", min=1, max=1024)
    machine_rank: int = option(0, "this machine's rank, 0 to machines - 1 (machine 0 runs the main process)",
                               label="machine rank", min=0, max=1023)
    main_process_ip: str = option("127.0.0.1", "machine 0's address, reachable from every machine",
                                  label="main process address", max_length=200)
    main_process_port: int = option(29500, "a free port on machine 0", label="main process port", min=1, max=65535)
    accelerate_config: str = option("", "an accelerate config file (DeepSpeed, FSDP; see studio/models/configs/"
                                        "accelerate/); the flags above set its process and machine counts",
                                    label="accelerate config", max_length=1000)

    @property
    def total_processes(self) -> int:
        return self.processes * self.num_machines

    def check_launch(self) -> None:
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine rank (--machine-rank) is {self.machine_rank}, but the run has "
                             f"{self.num_machines} machine(s); allowed: 0 to {self.num_machines - 1}")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise ValueError(f"accelerate config (--accelerate-config): {self.accelerate_config} is not a file; "
                             f"shipped ones: {', '.join(p.name for p in sorted(CONFIG_DIR.glob('*.yaml')))}")
        if self.accelerate_config:
            check_engine(self.accelerate_config)


SHUTDOWN_SECONDS = 300  # what torchrun waits for its processes after a cancel before it kills them
GPU_ENGINES = ("DEEPSPEED", "FSDP")  # accelerate runs these on GPUs only: on a CPU it falls back to plain DDP


def engine_of(path: str) -> str:
    """The distributed type an accelerate config file asks for, e.g. MULTI_GPU, DEEPSPEED, FSDP."""
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(path).distributed_type.name


def check_engine(path: str) -> None:
    """Refuse a DeepSpeed or FSDP config where accelerate would quietly run plain data parallel instead."""
    import torch

    engine = engine_of(path)
    if engine in GPU_ENGINES and not torch.cuda.is_available():
        raise ValueError(f"accelerate config (--accelerate-config): {Path(path).name} asks for {engine}, which "
                         "accelerate runs on CUDA GPUs only, and this machine has none; leave the config out "
                         "(--processes alone: data parallel over gloo)")


def launched() -> bool:
    """Whether this process is one rank of a launched run (torchrun, accelerate or MPI set these)."""
    return any(name in os.environ for name in ("LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))


def needs_launch(config: LaunchOptions) -> bool:
    """More than one process, or an accelerate config (DeepSpeed, FSDP: their engines wrap even one process)."""
    return (config.total_processes > 1 or bool(config.accelerate_config)) and not launched()


def threads_per_process(config: LaunchOptions) -> int:
    """This machine's CPU budget (the job's OMP_NUM_THREADS, else its cores) split between its processes."""
    budget = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    return max(1, budget // config.processes)


def accelerate_command(kind: str, config: LaunchOptions) -> list[str]:
    """`accelerate launch` with this machine's share of the run, on `python -m studio KIND <config's flags>`."""
    import torch

    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config.accelerate_config:
        command += ["--config_file", config.accelerate_config]
        if engine_of(config.accelerate_config) == "DEEPSPEED":  # else the file's values would win over the run's
            command += ["--gradient_accumulation_steps", str(getattr(config, "grad_accum", 1)),
                        "--gradient_clipping", str(getattr(config, "max_grad_norm", 1.0))]
    else:  # torchrun under the hood; on a CPU the trainer asks accelerate for gloo (Accelerator(cpu=True))
        command += ["--multi_gpu"]
    command += ["--mixed_precision", getattr(config, "mixed_precision", "no"),
                "--num_processes", str(config.total_processes), "--num_machines", str(config.num_machines),
                "--machine_rank", str(config.machine_rank), "--main_process_ip", config.main_process_ip,
                "--main_process_port", str(config.main_process_port), "--dynamo_backend", "no"]
    if not torch.cuda.is_available():
        command += ["--num_cpu_threads_per_process", str(threads_per_process(config))]
    return command + ["-m", "studio", kind, *to_argv(config)]


def launch(kind: str, config: LaunchOptions) -> None:
    """Run `config` as `config.processes` processes on this machine (one machine of `config.num_machines`); returns
    when they end, raising with their exit status if they failed."""
    from studio.kinds.training import TrainingCancelled, TrainingError

    command = accelerate_command(kind, config)
    print("$ " + " ".join(command), flush=True)
    # A cancel (SIGTERM to the job's process group) reaches the processes too; this one waits for them to checkpoint
    # and stop rather than end first. A handler, not SIG_IGN: handlers are not inherited by the processes it starts.
    waiting = threading.current_thread() is threading.main_thread()
    cancelled = []
    previous = signal.signal(signal.SIGTERM, lambda *_: cancelled.append(True)) if waiting else None
    # torchrun gives its processes 30 s after a SIGTERM before SIGKILL; a real-size checkpoint can take longer.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_SECONDS)}
    try:
        returncode = subprocess.run(command, env=env).returncode
    finally:
        if waiting:
            signal.signal(signal.SIGTERM, previous)
    if cancelled:
        raise TrainingCancelled(f"cancelled; the processes saved a checkpoint of their last step in "
                                f"{getattr(config, 'out', '?')}; continue with --resume")
    if returncode != 0:
        raise TrainingError(f"the {config.total_processes} training processes ended with exit status {returncode}; "
                            f"their output is above; checkpoints so far are kept in {getattr(config, 'out', '?')}")
