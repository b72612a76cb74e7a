"""`supportbench app`: serve the Gradio assistant for a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import add_command, add_policy_option, add_profile_option

DEFAULT_PORT = 7860


def port_number(text: str) -> int:
    """--port: a TCP port from 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port from 1 to 65535")
    return port


def run(args: argparse.Namespace) -> None:
    """Serve the Gradio app for a run."""
    from supportbench.serve.app import serve

    serve(
        Path(args.run),
        port=args.port,
        share=args.share,
        backend=args.serve,
        profile=args.profile,
        ratings=Path(args.ratings) if args.ratings else None,
        rate_against=Path(args.rate_against) if args.rate_against else None,
        policy=args.policy,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "app",
        run,
        "serve the Gradio assistant (Chat, Base vs Fine-Tuned, Rate, Model Performance)",
        "Start the Gradio app for a run on 127.0.0.1: the fine-tuned model in Chat, base and fine-tuned side by "
        "side, and the run's metrics, loss curve, latency and memory.",
        run_folder="a finished training run folder",
    )
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="port on 127.0.0.1 (default: %(default)s)")
    p.add_argument("--share", action="store_true", help="also create a public Gradio share link (default: off)")
    p.add_argument(
        "--serve",
        default="auto",
        choices=("auto", "exported", "transformers"),
        help="auto: the exported model when `supportbench export` wrote one, else transformers (default: %(default)s)",
    )
    add_profile_option(p, "in the chat, the comparison and the /v1 API")
    add_policy_option(p)
    p.add_argument(
        "--ratings",
        metavar="DB",
        help="the preference store the Rate tab writes its votes to, shareable across runs (default: RUN/ratings.sqlite)",
    )
    p.add_argument(
        "--rate-against",
        metavar="RUN",
        help="the Rate tab compares this run's fine-tuned model with RUN's, each named by its folder (default: base "
        "against fine-tuned)",
    )
