"""Fixtures (helpers live in helpers.py): a tiny model, a trained tiny run, isolated caches; and how pytest-xdist
spreads the tests over its workers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import build_tiny_model, fixture_rows, small_split, tiny_config, write_csv


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker hook, which appends the groups to the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, keep each test file on one worker (its module fixtures are built once), and every
    file that uses the evaluated `full_run` on the same worker (it takes about 20 s to build)."""
    uses_full_run = {item.path for item in items if "full_run" in getattr(item, "fixturenames", ())}
    for item in items:
        group = "full_run" if item.path in uses_full_run else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: pytest without xdist knows no such hook
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Stop when pytest-xdist did not take the groups (a worker appends each test's group to its id): each worker
    would build every module fixture again, as it silently does with pytest 9.2 (pytest-xdist#1386)."""
    ungrouped = [nodeid for nodeid in ids if "@" not in nodeid]
    if node.config.getvalue("dist") == "loadgroup" and ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist did not group {len(ungrouped)} tests, e.g. {ungrouped[0]}: --dist loadgroup does not work "
            "with pytest 9.2 (pytest-xdist#1386); install pytest<9.2, as the test extra pins it"
        )


@pytest.fixture
def fixture_csv(tmp_path: Path) -> Path:
    """A clean 120-row CSV in the Hugging Face schema."""
    return write_csv(tmp_path / "support.csv", fixture_rows())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model whose vocabulary covers the fixture data."""
    corpus = [r["instruction"] + " " + r["response"] for r in fixture_rows()]
    corpus += ["### customer : support agent : sure orders ord-98765 website 1-800-555-0199 alex morgan"]
    corpus += ["abcdef"]  # the probe word transformers' StopStringCriteria tokenizes to map the vocabulary
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep what session- and module-scoped fixtures cache (models, base scores) out of the user's home too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("SUPPORTBENCH_REGISTRY", raising=False)
        yield


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's model cache and registry out of the user's home."""
    monkeypatch.setenv("SUPPORTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SUPPORTBENCH_REGISTRY", raising=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A finished 4-step LoRA run of the tiny model on a small prepared split, its reply policy's scope calibrated
    (as eval and the app would on first use), so the copies that tests make of it inherit both."""
    from supportbench.layout import RunDir
    from supportbench.serve.policy import ScopeModel
    from supportbench.trainers.lora import train

    root = tmp_path_factory.mktemp("tinyrun")
    run = root / "run"
    small_split(root, run / "data")
    train(tiny_config(tiny_model_dir, save_steps=4), run)
    ScopeModel.for_run(RunDir(run))
    return run


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if eval gets as far as loading a model."""
    import supportbench.evaluation.evaluator

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the preconditions were checked")

    monkeypatch.setattr(supportbench.evaluation.evaluator, "score_model", refuse)


@pytest.fixture(scope="session")
def full_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run, evaluated, exported, benchmarked (quick) and reported: shared by the report and bench tests."""
    from supportbench.bench.latency import run_suite
    from supportbench.config import EvalConfig
    from supportbench.deploy.export import export_run
    from supportbench.evaluation.evaluator import evaluate_run, score_exported
    from supportbench.reports.render import write_run_report

    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(tiny_run, run)
    evaluate_run(run, EvalConfig(limit=4, gen_batch_size=4, max_new_tokens=8))
    export_run(run)
    score_exported(run)
    run_suite(run, quick=True)
    write_run_report(run)
    return run
