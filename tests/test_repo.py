"""Repository contracts: the wheel carries its data files, and CI runs the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from supportbench.metrics import GEN_TASK, METRICS, PPL_TASK
from supportbench.tasks import include_path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"# tests \(what CI runs\)\n(.+)\n", readme).group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_wheel_installs_one_namespace_with_its_data_files(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("supportbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {"supportbench", wheel.name.split("-py")[0] + ".dist-info"}
    for needed in (
        "supportbench/tasks/customer_support/customer_support_gen.yaml",
        "supportbench/tasks/customer_support/_customer_support_common",
        "supportbench/tasks/customer_support/utils.py",
        "supportbench/trainers/presets/ci.yaml",
        "supportbench/registry.yaml",
        "supportbench/prepare/placeholders.yaml",
        "supportbench/prepare/pii_rules.yaml",
        "supportbench/evaluation/gate_rules.yaml",
        "supportbench/reports/templates/report.j2",
        "supportbench/reports/reference_recipe.yaml",
    ):
        assert needed in names, needed
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    code = "import supportbench, supportbench.evaluation, supportbench.prepare, supportbench.serve; print(supportbench.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True
    )
    assert found.returncode == 0 and Path(found.stdout.strip()).is_relative_to(target), found.stderr


def test_the_package_top_holds_the_core_and_one_folder_per_stage():
    core = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    stages = sorted(p.parent.name for p in (ROOT / "harness").glob("*/__init__.py"))
    assert len(core) <= 12, core
    assert stages == [
        *("bench", "checks", "cli", "deploy", "evaluation", "experiments", "facts", "preference", "prepare", "serve")
    ]


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs, keeping `!function` references as plain strings."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def test_task_yamls_report_exactly_the_declared_metrics():
    folder = include_path() / "customer_support"
    reported = {}
    for task in (GEN_TASK, PPL_TASK):
        config = yaml.load((folder / f"{task}.yaml").read_text(), Loader=_TaskLoader)
        reported.update({m["metric"]: (task, m["higher_is_better"]) for m in config["metric_list"]})
    assert reported == {name: (m.task, m.higher_is_better) for name, m in METRICS.items()}
