"""The one place that decides device, precision and attention kernel for training and inference."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supportbench.launch import world_size


@dataclass(frozen=True)
class DeviceChoice:
    """Where and how a model runs: device, dtype, mixed-precision flags and attention kernel."""

    device: str
    dtype: torch.dtype
    bf16: bool
    fp16: bool
    attn_implementation: str

    @property
    def dtype_name(self) -> str:
        """The dtype as lm-eval and transformers spell it ("float32", "bfloat16", ...)."""
        return str(self.dtype).removeprefix("torch.")


def process_state() -> Any:
    """Accelerate's process state, created once with the device decided here: gloo on CPU, NCCL on GPUs."""
    from accelerate import PartialState

    return PartialState(cpu=pick_device().device == "cpu")


def shared(value: Any) -> Any:
    """The main process's value in every launched process (as is in a single one)."""
    if world_size() == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def pick_device(prefer: str | None = None) -> DeviceChoice:
    """fp32 on CPU; bf16 on Ampere or newer GPUs, fp16 on older ones."""
    device = prefer or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and world_size() > 1:
        # accelerate's launcher starts CPU processes like GPU ones; this makes each Accelerator (the Trainer's, lm-eval's)
        # join them over gloo instead of running alone
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if device.startswith("cuda"):
        major, _ = torch.cuda.get_device_capability()
        bf16 = major >= 8
        attn = "flash_attention_2" if bf16 and importlib.util.find_spec("flash_attn") else "sdpa"
        return DeviceChoice(device, torch.bfloat16 if bf16 else torch.float16, bf16, not bf16, attn)
    return DeviceChoice(device, torch.float32, False, False, "sdpa")


PACKAGES = ("supportbench", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "lm_eval")


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """The machine and software behind a figure: CPU, cores, threads, device, dtype, GPU, package versions."""
    device = pick_device()
    info = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device.device,
        "world_size": world_size(),
        "dtype": device.dtype_name,
        "attn": device.attn_implementation,
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if device.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def reset_peak_memory() -> None:
    """Restart peak-memory tracking (Linux VmHWM via clear_refs, and CUDA peak stats)."""
    clear_refs = Path("/proc/self/clear_refs")
    if clear_refs.exists():
        try:
            clear_refs.write_text("5")
        except OSError:
            pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float]:
    """Peak resident memory since the last reset (process lifetime where resets are unsupported), in MiB."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    hwm = [int(line.split()[1]) for line in lines if line.startswith("VmHWM:")]
    kib = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"peak_rss_mib": round(kib / 1024, 1)}
    if torch.cuda.is_available():
        peak["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak
