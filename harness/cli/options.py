"""The dataclass-to-argparse helper: one option per documented config field, and one layering rule for every command.

Layering, as TRL's parser does it: the dataclass defaults, then a preset, then a config file, then the flags given
on the command line. A flag that was given always wins, even when it equals the default: options default to
argparse.SUPPRESS, so the parsed namespace holds exactly the flags the user typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any


def add_config_options(parser: argparse.ArgumentParser, cls: type, defaults_from: str | None = None) -> None:
    """One option per documented field of cls, typed from its annotation; `defaults_from` names a preset layer."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "none" if default is None else ",".join(default) if isinstance(default, (list, tuple)) else default
        hint = hints[f.name]
        choices = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        if hint is bool:  # a switch: given means true
            group.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=meta["help"])
            continue
        parse = meta.get("parse") or next(t for t in (int, float, str) if t in choices)
        allowed = meta.get("choices")
        if defaults_from:
            help_text = f"{meta['help']} (default: {defaults_from}; built-in {shown})"
        elif "env" in meta:
            help_text = f"{meta['help']} (default: ${meta['env']}, else {shown})"
        else:
            help_text = f"{meta['help']} (default: {shown})"
        group.add_argument(
            flag,
            dest=f.name,
            type=parse,
            default=argparse.SUPPRESS,
            choices=allowed() if callable(allowed) else allowed,
            help=help_text.replace("%", "%%"),
        )


def add_config_file_option(parser: argparse.ArgumentParser, over: str) -> None:
    """--config: a YAML file of the options below, layered over `over`, with the flags over it."""
    parser.add_argument(
        "--config",
        help=f"YAML file of the options below, named with underscores, over {over}; a flag given here always wins "
        "(default: none)",
    )


def given_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The config fields of cls that were given on the command line (and only those)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if "help" in f.metadata and hasattr(args, f.name)
    }


def command_layers(cls: type, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The layers the command line adds to a config: the --config file, if any, then the flags given."""
    from supportbench.config import read_config_file

    config_file = getattr(args, "config", None)
    layers = [(config_file, read_config_file(cls, Path(config_file)))] if config_file else []
    return [*layers, ("command line", given_values(cls, args))]


def add_launch_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--num-processes and --accelerate-config, which rerun the command under `accelerate launch`."""
    parser.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help=f"run as N processes under `accelerate launch` (one per GPU; CPU processes over gloo without GPUs): {what} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--accelerate-config",
        metavar="NAME|FILE",
        help="accelerate config for --num-processes: ddp, fsdp, zero2 (bundled) or a file (default: accelerate's "
        "multi-process launcher with no config)",
    )


def add_profile_option(parser: argparse.ArgumentParser, use: str) -> None:
    """--profile: the company profile YAML whose values fill the replies' company slots."""
    parser.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help=f"company profile YAML that fills the replies' company slots, {use}; refused when it lacks a slot the "
        "run's model can emit (default: the bundled profile.yaml)",
    )


def add_policy_option(parser: argparse.ArgumentParser) -> None:
    """--policy: serve replies through the profile's reply policy, or the raw model's."""
    parser.add_argument(
        "--policy",
        default="on",
        choices=("on", "off"),
        help="on: every reply goes through the profile's reply policy (language handoff, scope, privacy, injection, "
        "missing facts, escalation); off: the raw model's replies, for comparison (default: %(default)s)",
    )


def add_command(
    sub: argparse._SubParsersAction, name: str, run: Any, help: str, description: str, run_folder: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand's parser, calling `run(args)`; with `run_folder`, a required --run of that description."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(func=run)
    if run_folder:
        parser.add_argument("--run", required=True, help=run_folder)
    return parser
