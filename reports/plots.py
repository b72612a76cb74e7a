"""Charts as PNG bytes: the training loss curve, the leaderboard's quality-against-latency scatter, the sweep's front."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any


def figure_png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    """Draw on one matplotlib Axes (headless) and return the figure as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def loss_curve_png(history: list[dict[str, Any]]) -> bytes:
    """Train and validation loss against optimizer step."""

    def draw(ax: Any) -> None:
        for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
            points = [(h["step"], h[key]) for h in history if key in h]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o" if key == "eval_loss" else None, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.legend()

    return figure_png(draw, (6, 3.2))


def quality_latency_png(points: list[tuple[str, float, float, float]], xlabel: str, ylabel: str) -> bytes:
    """One labelled point per (name, latency, quality, size) for reading "good enough and cheap enough"."""

    def draw(ax: Any) -> None:
        for name, latency, quality, size in points:
            ax.scatter(latency, quality, s=size, alpha=0.6)
            ax.annotate(name, (latency, quality), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)

    return figure_png(draw, (6, 3.6))


def forest_png(rows: list[tuple[str, float, float, float, bool]], xlabel: str) -> bytes:
    """One row per (name, difference, low, high, judged) slice, with its interval; slices too small to judge in grey."""

    def draw(ax: Any) -> None:
        for y, (_, mean, low, high, judged) in enumerate(rows):
            ax.errorbar(
                mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color="tab:blue" if judged else "0.65", capsize=2
            )
        ax.axvline(0, color="0.3", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)

    return figure_png(draw, (6, 1.2 + 0.22 * len(rows)))


def pareto_png(points: list[tuple[int, float, float, bool]]) -> bytes:
    """Validation ROUGE-L against training minutes, one labelled point per (trial, minutes, ROUGE-L, on the front)."""

    def draw(ax: Any) -> None:
        front = sorted((m, q) for _, m, q, on_front in points if on_front)
        if front:
            ax.step(*zip(*front, strict=True), where="post", color="tab:red", alpha=0.6, label="Pareto front")
            ax.legend()
        for trial, minutes, quality, on_front in points:
            ax.scatter(minutes, quality, color="tab:red" if on_front else "tab:blue", alpha=0.7)
            ax.annotate(str(trial), (minutes, quality), fontsize=8)
        ax.set_xlabel("training minutes (this machine)")
        ax.set_ylabel("validation ROUGE-L")

    return figure_png(draw, (6, 3.6))
