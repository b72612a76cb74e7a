"""Files written by every stage: atomic writes that follow the umask."""

from __future__ import annotations

import os
import stat

import pytest
from helpers import fixture_rows, small_split, tiny_config, write_csv

from supportbench.config import DataConfig
from supportbench.files import LOCK_NAME, SupportBenchError, folder_lock, staged_dir
from supportbench.prepare.dataset import prepare
from supportbench.trainers.lora import train


# 7. Outputs follow the umask, as ordinary tools do, and are still written atomically.
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        out = tmp_path / "split"
        small_split(tmp_path, out)
        with staged_dir(tmp_path / "adapter") as folder:
            (folder / "weights").write_bytes(b"w")
    finally:
        os.umask(previous)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {file_mode}
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == dir_mode
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith((".tmp", ".partial"))]


def test_a_second_writer_into_a_folder_in_use_is_refused_by_name(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    small_split(tmp_path, run / "data")
    with folder_lock(run, "train"):
        with pytest.raises(SupportBenchError, match=rf"{run} is in use by supportbench train \(pid \d+\)"):
            train(tiny_config(tiny_model_dir), run)
    assert not (run / "train.json").exists() and not (run / LOCK_NAME).exists()
    source = str(write_csv(tmp_path / "d.csv", fixture_rows()))
    with folder_lock(tmp_path / "split", "prepare"):
        with pytest.raises(SupportBenchError, match="is in use by supportbench prepare"):
            prepare(DataConfig(source=source, test_size=16, validation_size=8), tmp_path / "split")
    prepare(DataConfig(source=source, test_size=16, validation_size=8), tmp_path / "split")  # free again
