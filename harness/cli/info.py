"""The information commands: `models`, `tasks-path` and `accelerate-configs`."""

from __future__ import annotations

import argparse

from supportbench.cli.options import add_command


def models(args: argparse.Namespace) -> None:
    """List registry models and whether each loads offline."""
    from supportbench.models import availability, cache_root, load_registry, resolve

    print(f"{'alias':<22} {'template':<8} {'availability':<34} description")
    for alias in load_registry():
        spec = resolve(alias)
        print(f"{alias:<22} {spec.template:<8} {availability(spec):<34} {spec.entry.get('description', '')}")
    print(f"\ncache: {cache_root()}   (any hub id or local folder also works as --model)")


def tasks_path(args: argparse.Namespace) -> None:
    """Print the installed lm-eval task folder (for lm_eval --include_path)."""
    from supportbench.tasks import include_path

    print(include_path())


def accelerate_configs(args: argparse.Namespace) -> None:
    """Print the folder of the bundled accelerate configs (for accelerate launch --config_file)."""
    from supportbench.launch import config_folder

    print(config_folder())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the three commands."""
    add_command(
        sub,
        "models",
        models,
        "list registry models and their offline availability",
        "List the model registry (bundled plus $SUPPORTBENCH_REGISTRY) and what loads offline.",
    )
    add_command(
        sub,
        "tasks-path",
        tasks_path,
        "print the installed lm-eval task folder (for lm_eval --include_path)",
        "Print the folder holding the customer_support lm-eval task YAMLs, for lm_eval --include_path.",
    )
    add_command(
        sub,
        "accelerate-configs",
        accelerate_configs,
        "print the folder of the bundled accelerate configs (ddp, fsdp, zero2)",
        "Print the folder holding the bundled accelerate configs, for `accelerate launch --config_file` (see the "
        "README's Scaling up).",
    )
