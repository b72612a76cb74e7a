"""Multi-process runs on accelerate's launcher: the bundled launch configs and `--num-processes N` on train and eval."""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path

from supportbench.files import SupportBenchError

CONFIG_PACKAGE, CONFIG_DIR = "supportbench", "accelerate_configs"


def world_size() -> int:
    """Processes in this job: N under `accelerate launch` or torchrun, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def config_folder() -> Path:
    """The installed folder of the bundled accelerate configs."""
    return Path(str(resources.files(CONFIG_PACKAGE).joinpath(CONFIG_DIR)))


def bundled_configs() -> list[str]:
    """Names of the bundled accelerate configs (ddp, fsdp, zero2)."""
    return sorted(p.name.removesuffix(".yaml") for p in config_folder().glob("*.yaml"))


def config_path(name_or_path: str) -> Path:
    """A bundled config by name, or a user's accelerate config file."""
    if name_or_path in bundled_configs():
        return config_folder() / f"{name_or_path}.yaml"
    if not Path(name_or_path).is_file():
        raise SupportBenchError(
            f"--accelerate-config: {name_or_path!r} is neither a bundled config {bundled_configs()} nor a file"
        )
    return Path(name_or_path)


def check_processes(requested: int, accelerate_config: str | None, backend: str = "hf") -> bool:
    """True when this command must start `requested` processes itself; an error when it runs in a job of another size,
    or when the backend spreads its own work."""
    if requested < 1:
        raise SupportBenchError(f"--num-processes must be at least 1, not {requested}")
    if backend == "vllm" and max(requested, world_size()) > 1:
        raise SupportBenchError(
            f"--backend {backend} runs in one process and spreads itself (--data-parallel-size, --tensor-parallel-size); "
            "--num-processes and accelerate launch are for the other backends (on several processes, eval runs on transformers)"
        )
    if accelerate_config and requested == 1:
        raise SupportBenchError("--accelerate-config applies to a multi-process run: add --num-processes N (N > 1)")
    if world_size() > 1 and requested not in (1, world_size()):
        raise SupportBenchError(
            f"--num-processes {requested}, but this process is one of {world_size()} already launched"
        )
    return requested > 1 and world_size() == 1


def relaunch(argv: list[str], processes: int, accelerate_config: str | None) -> int:
    """Run `supportbench ARGV` as `processes` processes through `accelerate launch`; the job's exit code.

    Without a config this is accelerate's torchrun launcher (`--multi_gpu`): one process per GPU, or on a machine
    without GPUs, CPU processes joined over gloo."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launch = ["--num_processes", str(processes)]
    launch += ["--config_file", str(config_path(accelerate_config))] if accelerate_config else ["--multi_gpu"]
    args = launch_command_parser().parse_args([*launch, "--module", "supportbench", *argv])
    try:
        launch_command(args)
    except (subprocess.CalledProcessError, ChildFailedError) as err:
        print(f"supportbench: a launched process failed: {err}")
        return 1
    return 0
