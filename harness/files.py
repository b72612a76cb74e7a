"""Shared I/O: atomic writes, JSON helpers, and the hub reachability check."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class SupportBenchError(Exception):
    """An error caused by the user's input or environment, shown without a traceback."""


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SupportBenchError(f"{folder} is a file, not a folder") from None
    except OSError as err:
        raise SupportBenchError(f"cannot create the folder {folder}: {err.strerror}") from None
    if not folder.is_dir():
        raise SupportBenchError(f"{folder} is a file, not a folder")


def ensure_writable_dir(folder: Path) -> Path:
    """Create folder if needed and prove it takes new files: a clear error for a file, or a read-only place."""
    folder = Path(folder)
    _make_dir(folder)
    try:  # os.access says yes to root even on a read-only mount; creating a file tells the truth
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise SupportBenchError(f"cannot write into {folder}: {err.strerror}") from None
    return folder


def _temporary_in(folder: Path, name: str, make: Any) -> str:
    _make_dir(folder)
    try:
        return make(dir=folder, prefix=f".{name}.")
    except OSError as err:
        raise SupportBenchError(f"cannot write into {folder}: {err.strerror}") from None


def _write_temporary(path: Path, data: bytes) -> str:
    """data in a new temporary file beside path, flushed to disk with the umask's mode; a full disk is a clear error."""
    fd, tmp = _temporary_in(path.parent, path.name, lambda **kw: tempfile.mkstemp(suffix=".tmp", **kw))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared results folder needs the usual modes
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise SupportBenchError(f"cannot write {path}: {err.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to path so that readers see either the old or the new file, never half of one."""
    path = Path(path)
    tmp = _write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_together(outputs: dict[Path, bytes], record: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Write one stage's files so that they commit together, its JSON record last; return the record written.

    Every file goes to a temporary beside it first, so a full disk fails with the old files intact. Then the old
    record is removed, the files renamed into place and the record written with each file's sha256 under "outputs".
    A folder without its record, or with a file whose hash differs from the record's, is incomplete or mixed:
    `check_outputs` refuses it."""
    staged: dict[Path, str] = {}
    try:
        for path, content in outputs.items():
            staged[Path(path)] = _write_temporary(Path(path), content)
        Path(record).unlink(missing_ok=True)
        for path, tmp in staged.items():
            os.replace(tmp, path)
    finally:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)
    written = {**data, "outputs": {p.name: hashlib.sha256(c).hexdigest() for p, c in outputs.items()}}
    write_json(record, written)
    return written


def check_outputs(record: Path, data: dict[str, Any]) -> None:
    """Refuse a folder whose files are not the ones its record (written by `write_together`) names, naming them."""
    outputs = data.get("outputs")
    if not isinstance(outputs, dict):
        raise SupportBenchError(f"{record} names no outputs: an older or damaged record; run its stage again")
    folder = Path(record).parent
    bad = sorted(
        name for name, sha in outputs.items() if not (folder / name).is_file() or sha256_file(folder / name) != sha
    )
    if bad:
        raise SupportBenchError(
            f"{folder} is incomplete or mixed: {', '.join(bad)} differ from what {Path(record).name} records "
            "(a run of its stage that did not finish?); run the stage again"
        )


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_bytes(data: Any) -> bytes:
    """data as indented, key-sorted JSON: the exact bytes write_json writes."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def write_json(path: Path, data: Any) -> None:
    """Write data as indented, key-sorted JSON, atomically."""
    atomic_write_bytes(path, json_bytes(data))


def read_json(path: Path) -> Any:
    """Read a JSON file, naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise SupportBenchError(f"missing file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SupportBenchError(f"{path} is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise SupportBenchError(f"malformed JSON in {path}: {err}") from err


def jsonl_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    """Rows as JSON lines (sorted keys, UTF-8): the exact bytes write_jsonl writes."""
    return "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSON lines (sorted keys, UTF-8), atomically."""
    atomic_write_bytes(path, jsonl_bytes(rows))


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read the JSON objects of a JSON-lines file (the first `limit`), naming the file and line of a bad one."""
    path = Path(path)
    if not path.is_file():
        raise SupportBenchError(f"missing file: {path}")
    return parse_jsonl(path.read_bytes(), path, limit)


def parse_jsonl(data: bytes, path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of JSON-lines bytes read from path (the first `limit`), naming the file and line of a bad one."""
    rows = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SupportBenchError(f"{path} is not UTF-8 text (byte {err.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(rows) >= limit:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SupportBenchError(f"malformed JSON in {path}, line {number}: {err.msg} (truncated file?)") from err
        if not isinstance(row, dict):
            raise SupportBenchError(f"malformed JSON in {path}, line {number}: not an object")
        rows.append(row)
    return rows


def read_yaml(text: str, origin: str) -> Any:
    """Parse YAML text, naming its origin (a file or preset) and the position of a syntax error."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SupportBenchError(f"malformed YAML in {origin}: {err}".replace("\n", " ")) from err


def read_bundled_yaml(package: str, name: str) -> Any:
    """A YAML file shipped inside one of supportbench's packages, parsed."""
    from importlib import resources

    return read_yaml(resources.files(package).joinpath(name).read_text(encoding="utf-8"), f"the bundled {name}")


def read_user_yaml(path: str | Path, what: str, origin: str | None = None) -> Any:
    """A user's YAML file, parsed, with an error naming it (as `what`) when it is missing, not UTF-8 or malformed
    (as `origin`, by default its path)."""
    path = Path(path)
    if not path.is_file():
        raise SupportBenchError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SupportBenchError(f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    return read_yaml(text, origin or str(path))


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LOCK_NAME = ".supportbench.lock"


@contextmanager
def folder_lock(folder: Path, stage: str) -> Iterator[None]:
    """Hold an exclusive lock on folder while a stage writes into it; a second writer is refused by name.

    Under `accelerate launch` only the first process (RANK 0) takes it: the others are the same run."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    import fcntl

    created = not Path(folder).exists()
    _make_dir(Path(folder))
    path = Path(folder) / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    held = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SupportBenchError(
                f"{folder} is in use by {holder}; wait for it to finish or choose another folder"
            ) from None
        held = True
        handle.seek(0)
        handle.truncate()
        handle.write(f"supportbench {stage} (pid {os.getpid()})")
        handle.flush()
        os.chmod(path, 0o666 & ~_umask())
        yield
    finally:
        if held:
            path.unlink(missing_ok=True)
            if created and not any(Path(folder).iterdir()):  # a stage that failed before writing leaves no folder
                Path(folder).rmdir()
        handle.close()


def apply_umask(folder: Path) -> None:
    """Give every file and folder under folder the usual modes under the umask (libraries that write through
    temporary files, as safetensors does, leave them 0600)."""
    mask = _umask()
    for path in [Path(folder), *Path(folder).rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `final` only when the block succeeds."""
    final = Path(final)
    tmp = Path(_temporary_in(final.parent, final.name, lambda **kw: tempfile.mkdtemp(suffix=".partial", **kw)))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        apply_umask(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def hub_reachable(timeout: float = 5.0) -> bool:
    """True when the Hugging Face hub answers; False offline or when HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    host = re.sub(r"^https?://", "", os.environ.get("HF_ENDPOINT", "huggingface.co")).split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
