"""Repository contracts: the wheel carries its data files, and CI runs the README's test command."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"# tests \(what CI runs\)\n(.+)\n", readme).group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_wheel_carries_task_yamls_presets_templates_and_registry(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("supportbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "tasks/customer_support/customer_support_gen.yaml",
        "tasks/customer_support/_customer_support_common",
        "tasks/customer_support/utils.py",
        "trainers/presets/ci.yaml",
        "harness/registry.yaml",
        "harness/placeholders.yaml",
    ):
        assert needed in names, needed
