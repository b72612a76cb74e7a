"""Files written by every stage: atomic writes that follow the umask."""

from __future__ import annotations

import os
import stat

import pytest
from helpers import small_split


# 7. Outputs follow the umask, as ordinary tools do, and are still written atomically.
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        out = tmp_path / "split"
        small_split(tmp_path, out)
        from supportbench.files import staged_dir

        with staged_dir(tmp_path / "adapter") as folder:
            (folder / "weights").write_bytes(b"w")
    finally:
        os.umask(previous)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {file_mode}
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == dir_mode
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith((".tmp", ".partial"))]
