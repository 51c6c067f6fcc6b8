"""Atomic result writing and safetensors embedding files, with errors that say how to fix them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gen_align.errors import InputFileError, OutputError


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, what: str = "", hint: str = "") -> Path:
    """Write ``data`` to ``path`` through a temporary file, fsync and an atomic rename (then a best-effort
    fsync of the directory): a crash or a full disk never leaves a truncated file behind.

    Failures raise :class:`OutputError` naming ``what`` (default: the path) and the fix (``hint``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; results and weights are ordinary files
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise OutputError(
            f"could not write {what or path}: {err.strerror or err}. "
            f"{hint or 'Free disk space or choose another output directory.'}"
        ) from err
    with contextlib.suppress(OSError):  # fsync of the directory entry: best effort (not supported everywhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _new_file_mode() -> int:
    """0666 minus the process umask (what ``open(path, "w")`` would give), read without changing the umask where
    /proc allows it (changing it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text written with :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_folder_atomic(path: str | os.PathLike, write: Callable[[Path], None], *, hint: str = "") -> Path:
    """Fill a folder through ``write(tmp)`` into a sibling temporary folder, then swap it into ``path``: a crash or a
    full disk leaves the old folder (or none), never a half-written one. For writers that make many files
    (transformers' ``save_pretrained``). Failures raise :class:`OutputError` with ``hint``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            file_mode = _new_file_mode()
            os.chmod(tmp, file_mode | ((file_mode & 0o444) >> 2))  # mkdtemp makes 0700: a folder as mkdir would
            write(tmp)
            old = None
            if path.exists():
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
                os.replace(path, old / path.name)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        raise OutputError(f"could not write {path}: {err.strerror or err}. {hint}".rstrip()) from err
    return path


def write_safetensors_atomic(
    path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> Path:
    """A safetensors file of ``tensors`` (moved to the CPU, made contiguous) written with :func:`write_bytes_atomic`:
    every weight file gen-align writes goes through here, so a crash or a full disk never leaves half a file."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return write_bytes_atomic(path, data, hint="free disk space and run the command again")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (indented, UTF-8) written with :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def load_embeddings(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file of ``{modality: (N, d)}`` embeddings."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"embeddings file {path} does not exist; pass a .safetensors file of (N, d) tensors.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputFileError(
            f"{path} is not a readable safetensors file ({err}). Save embeddings with "
            "safetensors.torch.save_file({'image': z_img, 'text': z_txt}, path)."
        ) from err
    if not tensors:
        raise InputFileError(f"{path} holds no tensors; expected one (N, d) tensor per modality.")
    return tensors


class FolderLock:
    """An exclusive lock on a folder one writer fills (``FOLDER/.lock-{name}``, POSIX ``flock``): a second
    writer is refused with the holder's pid and command instead of interleaving its files. The kernel drops the
    lock when the holder's file closes or the process dies (even by kill -9), so a crash leaves no stale lock.
    ``name`` tells apart writers that may share the folder (``rank0``, ``rank1`` of one ``accelerate launch``;
    two stages of ``mini train``). A no-op where ``fcntl`` is missing (Windows)."""

    def __init__(self, folder: str | os.PathLike, name: str = "rank0") -> None:
        self.path = Path(folder) / f".lock-{name}"
        self._file: Any = None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        except OSError as err:
            raise OutputError(f"could not create the lock {self.path}: {err.strerror or err}.") from err
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputError(
                f"{self.path.parent} is being written by {holder}; wait for it to finish (or stop it), or write to "
                "another folder. Two writers in one folder would corrupt it."
            ) from None
        import sys
        import time

        handle.seek(0)
        handle.truncate()
        command = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))
        handle.write(f"pid {os.getpid()} ({command[:200]}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock; the file stays (deleting it would race a new holder)
            self._file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
