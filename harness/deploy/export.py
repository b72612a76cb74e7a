"""The export stage: merge the adapter into its base and write deployable models into RUN/export/."""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from pathlib import Path
from typing import Any

from supportbench.deploy import runtime
from supportbench.facts.profile import Profile, profile_for_run
from supportbench.files import (
    SupportBenchError,
    atomic_write_text,
    ensure_writable_dir,
    folder_lock,
    sha256_file,
    staged_dir,
    write_json,
)
from supportbench.layout import RunDir
from supportbench.models import model_path

FORMATS = ("merged", runtime.FORMAT)  # the merged safetensors folder is always written


def folder_mib(folder: Path) -> float:
    """Size on disk of every file under a folder, in MiB."""
    return round(sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20, 1)


def export_run(
    run_dir: Path, to: str = runtime.FORMAT, force: bool = False, profile: str | Path | None = None
) -> dict[str, Any]:
    """Write RUN/export/merged (transformers, vLLM, TGI) and, for a runtime format, the fine-tuned and base models in it,
    with the company profile beside them (checked against the run), holding the run's lock."""
    with folder_lock(Path(run_dir), "export"):
        return _export_run(run_dir, to, force, profile)


def _export_run(run_dir: Path, to: str, force: bool, profile_file: str | Path | None) -> dict[str, Any]:
    if to not in FORMATS:
        raise SupportBenchError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    run = RunDir(Path(run_dir).resolve())
    trained = run.require_adapter()
    profile = profile_for_run(run.data, profile_file)  # a slot the model can emit and the profile lacks: refused now
    ensure_writable_dir(run.path)
    if run.export_manifest.is_file() and not force:
        try:
            done = run.export_record()
        except SupportBenchError as err:  # a damaged record: export again over it
            print(f"exporting again: {err}")
        else:
            if done.adapter_sha256 == adapter_sha256(run) and to in done.formats:
                return _with_profile(run, done.model_dump(), profile)  # the weights stand; the profile may be new
    if to != "merged":
        runtime.require_ctranslate2()  # before minutes of merging
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model, tokenizer = run.load_variant("merged")
    for stale in run.export_dir.glob(".*.partial") if run.export_dir.is_dir() else []:  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    with staged_dir(run.merged) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    timings["merge_s"] = round(time.perf_counter() - started, 2)
    manifest: dict[str, Any] = {
        "run": str(run.path),
        "base_model": trained.base_model,
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        "adapter_sha256": adapter_sha256(run),
        "formats": {"merged": {"path": str(run.merged), "dtype": "float32", "size_mib": folder_mib(run.merged)}},
    }
    if to != "merged":
        for which, source in (("finetuned", run.merged), ("base", Path(model_path(trained.base_model)))):
            started = time.perf_counter()
            with staged_dir(run.exported(to, which)) as tmp:
                runtime.convert(source, tmp)
            timings[f"convert_{which}_s"] = round(time.perf_counter() - started, 2)
        manifest["formats"][to] = {
            "path": str(run.exported(to)),
            "base_path": str(run.exported(to, "base")),
            "runtime": f"ctranslate2 {importlib.metadata.version('ctranslate2')}",
            "quantization": runtime.QUANTIZATION,
            "size_mib": folder_mib(run.exported(to)),
        }
    manifest["timing_s"] = timings
    return _with_profile(run, manifest, profile)


def _with_profile(run: RunDir, manifest: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """Write the profile into export/ and the record naming it (its hash), each atomically; the record last."""
    if manifest.get("profile") != profile.record() or not run.export_profile.is_file():
        atomic_write_text(run.export_profile, profile.text)
        manifest = {**manifest, "profile": profile.record()}
        write_json(run.export_manifest, manifest)
    return manifest


def adapter_sha256(run: RunDir) -> str:
    """The sha256 of the run's adapter weights: what an export, or a vote, was made from."""
    return sha256_file(run.adapter / "adapter_model.safetensors")


def exported_format(run_dir: Path) -> str | None:
    """The runtime format the run was exported to, when its export matches the current adapter; else None."""
    run = RunDir(Path(run_dir))
    if not run.export_manifest.is_file():
        return None
    record = run.export_record()
    if record.adapter_sha256 != adapter_sha256(run):
        raise SupportBenchError(
            f"{run.export_dir} was exported from another adapter than {run.adapter}; run `supportbench export --force`"
        )
    return runtime.FORMAT if runtime.FORMAT in record.formats else None


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    """One line per written format: its quantization or dtype, size and folder; then the profile beside them."""
    lines = [
        f"{name:<18} {written.get('quantization', written.get('dtype')):<8} {written['size_mib']:>8.1f} MiB  {written['path']}"
        for name, written in manifest["formats"].items()
    ]
    profile = manifest["profile"]
    return [*lines, f"{'profile':<18} {profile['source']} (sha256 {profile['sha256'][:12]}), copied to export/"]
