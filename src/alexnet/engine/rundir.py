"""A run directory and the signals that stop a run: what may be overwritten, the lock
that keeps two runs out of one directory, and the flag SIGTERM/SIGUSR1/Ctrl-C set so a
run stops after the current step with a checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from . import distributed as D

# What a run writes into its directory: one of these there means the directory holds a run.
RUN_FILES = (
    "config.yaml", "metrics.csv", "model.safetensors", "best.safetensors", "summary.json",
    "MODEL_CARD.md", "average.safetensors",
    "checkpoint.pt",
)  # fmt: skip
LOCK_FILE = "train.lock"  # flock'ed while a run uses the directory; holds the holder's PID


class StopFlag:
    """SIGTERM / SIGUSR1 (cluster preemption) and SIGINT (Ctrl-C) set the flag; training
    checks it after every step, under torchrun where the ranks next agree (every
    ``run.log_every`` steps), then checkpoints and exits. A second Ctrl-C aborts at once,
    without a checkpoint (KeyboardInterrupt). Forked loader workers inherit the handler and
    leave the signal to the training process, which stops them."""

    def __init__(self, announce: bool = False) -> None:
        self.signal: str | None = None
        self.announce = announce  # say on stderr what the first Ctrl-C does
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()

    def install(self) -> None:
        self._pid = os.getpid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked loader worker
            return
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        if signum == signal.SIGINT and self.announce:
            # os.write: a signal handler must not re-enter a buffered stream mid-write.
            os.write(2, b"\nCtrl-C: stopping after this step with a checkpoint; again to abort\n")


class RunDirLock:
    """Only one run uses a run directory at a time: an ``fcntl.flock`` on
    ``<out>/train.lock``, taken by rank 0 and released when the process ends, however it
    ends (the kernel drops the lock of a killed process, so a stale file never blocks).
    Not on systems without ``fcntl`` (Windows): there the directory is not locked."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_FILE
        self._fd: int | None = None
        self._made: list[Path] = []  # folders the lock created, deepest first (removable again)
        self._before: set[str] | None = None  # what the folder held before _lock made it
        self._flock = True  # whether the lock is a real flock (False where there is no fcntl)

    def acquire(self, dist: D.DistInfo) -> None:
        """Lock, or raise a ConfigError naming the directory and the holder's PID; every
        rank raises when rank 0 could not lock."""
        refused: Exception | None = None
        if dist.is_main:
            try:
                self._lock()
            except (ConfigError, OSError) as err:  # OSError: e.g. no such directory
                refused = err  # raised on every rank below, after they all hear of it
        if dist.distributed:
            flag = torch.tensor([float(refused is not None)], device=dist.device)
            if D.all_reduce_sum(flag).item() > 0 and refused is None:
                refused = ConfigError(
                    f"rank 0 could not lock {self.path.parent} (its message says why)"
                )
        if refused is not None:
            raise refused

    def _lock(self) -> None:
        folder = Path(os.path.abspath(self.path.parent))
        if folder.exists() and not folder.is_dir():  # on every system
            raise ConfigError(
                f"--out {self.path.parent} is a file, not a directory; choose a folder"
            )
        self._make(folder)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not Unix
            self._flock = False
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the folder went with a failed run's release
                self._make(folder)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(
                    f"{self.path.parent} is in use by another `alexnet train` (PID {holder}); "
                    "wait for it to end or stop it, or choose another --out"
                ) from None
            # A run that failed at start-up removes its lock file (release): if that
            # happened between our open and flock, we hold a lock on a deleted file.
            try:
                st, now = os.fstat(fd), os.stat(self.path)
                if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                    break
            except FileNotFoundError:
                self._make(folder)
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _make(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents, remembering which were made here and
        what the folder already held."""
        made = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self._made = made or self._made
        try:
            self._before = {p.name for p in folder.iterdir()}
        except OSError:  # a folder that can be written but not listed: never cleaned up
            self._before = None

    def release(self) -> None:
        # A run that held the lock and left no new file but its lock file behind removes
        # that file and the folders it created (a run that opened the lock file meanwhile
        # notices, in _lock). Otherwise the lock file stays, so the next run locks the same
        # file; a lock this run never held (refused, never tried: other ranks) is never
        # touched.
        with contextlib.suppress(OSError):
            before = self._before
            held = self._fd is not None if self._flock else before is not None
            new = {p.name for p in self.path.parent.iterdir()} - (before or set())
            if held and before is not None and LOCK_FILE not in before and new <= {LOCK_FILE}:
                self.path.unlink(missing_ok=True)
                for folder in self._made:  # stops at the first one that is not empty
                    folder.rmdir()
        self._made = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_run_dir(out: Path, resume: bool, force: bool) -> list[str]:
    """What ``out`` may be used for: --resume needs its checkpoint; a fresh run needs a
    directory without a run's files, or --force. Returns the run files --force replaces."""
    ckpt_path = out / "checkpoint.pt"
    if resume and force:
        raise ConfigError(
            f"--resume and --force exclude each other: --resume continues the run in {out}, "
            "--force starts it over"
        )
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {out} (expected {ckpt_path})")
        return []
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not force:
        how = (
            "pass --resume to continue it, --force to start it over"
            if "checkpoint.pt" in found
            else "it has no checkpoint.pt to --resume from; pass --force to start it over"
        )
        raise ConfigError(
            f"{out} already holds a run ({', '.join(found)}); {how}, or choose another --out"
        )
    return found
