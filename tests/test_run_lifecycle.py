"""A run directory's life under stress: real signals, a full disk, two writers, the user's umask.

- Ctrl-C and SIGTERM (sent to this very process, or to a CLI subprocess in test_train.py) stop at a
  step boundary with a checkpoint; the resumed run equals the uninterrupted one; the message says
  what resume will do, and an interrupt before any checkpoint leaves no directory behind.
- A write that runs out of space says so in one line, keeps every earlier file, and never leaves a
  directory that can neither resume nor be used: a real file-size limit (``RLIMIT_FSIZE``, any
  machine) and, where this process may mount one, a real 1 MiB tmpfs.
- Run directories appear complete or not at all, each with a distinct name however many start in
  the same second, and a second writer of a live run is refused.
- Files and folders get the permissions the user's umask asks for.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

import layerwise
from helpers import assert_one_line_error, assert_same_weights, cli, cli_command, cli_env, quick_train, run_dirs, \
    tiny_mlp, weights, write_yaml
from layerwise.core.errors import RunLockedError, TrainingInterrupted
from layerwise.core.io import atomic_write
from layerwise.runs.rundir import RunLock, create_run_dir
from layerwise.train import Callback, load_checkpoint


def iris(**train):
    return {"name": "iris", "data": {"name": "iris"}, "model": tiny_mlp(),
            "train": quick_train(**{"epochs": 3, "batch_size": 16, "scheduler": "onecycle", **train})}


class SendSignal(Callback):
    """Sends ``signals`` to this process after optimizer step ``at`` (the loop is in the main thread)."""

    def __init__(self, at: int, *signals: int, hook: str = "on_batch_end"):
        self.at, self.signals, self.hook = at, signals, hook

    def on_fit_start(self, trainer):
        if self.hook == "on_fit_start":
            self._send()

    def on_batch_end(self, trainer, logs):
        if self.hook == "on_batch_end" and trainer.global_step == self.at:
            self._send()

    def _send(self):
        for sig in self.signals:
            os.kill(os.getpid(), sig)


# -- Ctrl-C and SIGTERM ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_with_a_checkpoint_and_resume_is_exact(tmp_path, sig):
    whole = layerwise.train(iris(), runs_dir=tmp_path / "whole", quiet=True)
    with pytest.raises(TrainingInterrupted) as stopped:
        layerwise.train(iris(), runs_dir=tmp_path / "stopped", quiet=True, callbacks=[SendSignal(11, sig)])
    (run,) = run_dirs(tmp_path / "stopped")
    assert stopped.value.signum == sig
    message = str(stopped.value)
    assert "\n" not in message and f"layerwise train --resume {run}" in message
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["global_step"] == 11 and 0 < state["batch_in_epoch"] < 9  # mid-epoch, where it stopped
    assert not (run / "model.safetensors").exists()

    resumed = layerwise.train(resume=run, quiet=True)
    assert_same_weights(weights(whole.model), weights(resumed.model))
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


def test_a_second_signal_stops_at_once_and_leaves_no_directory(tmp_path):
    """Two signals before the first checkpoint: nothing to resume, so nothing is kept, and the message
    says to start again (not to resume)."""
    with pytest.raises(TrainingInterrupted) as stopped:
        layerwise.train(iris(), runs_dir=tmp_path, quiet=True,
                        callbacks=[SendSignal(0, signal.SIGTERM, signal.SIGTERM, hook="on_fit_start")])
    assert "start the experiment again" in str(stopped.value) and "--resume" not in str(stopped.value)
    assert run_dirs(tmp_path) == []


def test_signal_handlers_are_restored_after_training(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    layerwise.train(iris(epochs=1), runs_dir=tmp_path, quiet=True)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.slow
def test_cli_sigterm_exit_code_and_hint(tmp_path):
    """The CLI turns the interrupt into one line and exit code 128 + signal, and its hint works."""
    config = write_yaml(tmp_path / "iris.yaml", iris(epochs=200, scheduler="none"))
    proc = subprocess.Popen(cli_command("train", config, "--runs-dir", tmp_path / "runs", "--quiet"), cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not any((d / "checkpoints" / "last.pt").exists() for d in run_dirs(tmp_path / "runs")):
            threading.Event().wait(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    (run,) = run_dirs(tmp_path / "runs")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "SIGTERM" in lines[0] and f"--resume {run}" in lines[0] and "Traceback" not in err
    code, out, err = cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet", cwd=tmp_path)
    assert code == 0, err


# -- a full disk -------------------------------------------------------------------------------


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_write_past_the_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    """The first checkpoint cannot be written (a real kernel limit on file size): one line naming the
    file and the limit, exit 2, and no directory that could neither resume nor be used."""
    config = write_yaml(tmp_path / "iris.yaml", iris(epochs=2))
    proc = subprocess.run(cli_command("train", config, "--runs-dir", tmp_path / "runs", "--quiet"), cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, preexec_fn=_limit_file_size(16 * 1024),
                          timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "last.pt", "file size limit", "nothing was kept",
                          "start the experiment again")
    assert run_dirs(tmp_path / "runs") == []


def test_atomic_write_out_of_space_keeps_the_old_file(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")
    script = ("import sys; from pathlib import Path; from layerwise.core.io import atomic_write\n"
              f"atomic_write(Path({str(target)!r}), lambda tmp: Path(tmp).write_bytes(bytes(1 << 20)))\n")
    proc = subprocess.run([cli_command()[0], "-c", script], capture_output=True, text=True,
                          preexec_fn=_limit_file_size(64 * 1024), timeout=60)
    assert "DiskFullError" in proc.stderr and "weights.bin" in proc.stderr
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # no temporary file left


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), where this process may mount one (root, or a user namespace)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", mount], check=False)


@pytest.mark.slow
def test_a_full_disk_mid_run_keeps_the_checkpoint_and_resume_finishes(tmp_path, small_disk):
    run = layerwise.train(iris(epochs=2, scheduler="none"), runs_dir=small_disk / "runs", quiet=True).path
    checkpoint = (run / "checkpoints" / "last.pt").read_bytes()
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to its last bytes
        while os.write(fd, bytes(4096)):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - 12 * 1024)  # room for the small files, not the checkpoint
    code, out, err = cli("train", "--resume", run, "--set", "train.epochs=4", "--quiet", cwd=tmp_path)
    assert_one_line_error(code, err, "no space left", "last.pt", "the last checkpoint is intact",
                          f"--resume {run}")
    assert (run / "checkpoints" / "last.pt").read_bytes() == checkpoint  # nothing earlier lost
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    filler.unlink()
    resumed = layerwise.train(resume=run, quiet=True)  # the advice works
    assert resumed.metrics["training"]["epochs_run"] == 4


# -- creation, locking, permissions ------------------------------------------------------------


def test_run_directories_started_in_the_same_second_are_distinct_and_complete(tmp_path):
    made, errors = [], []

    def create():
        try:
            path, lock = create_run_dir(tmp_path, "same", {"config.yaml": lambda t: Path(t).write_text("name: same\n")})
            lock.release()
            made.append(path)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(made)) == 16 and sorted(made) == run_dirs(tmp_path)  # no staging folder left over
    assert all((p / "config.yaml").read_text() == "name: same\n" for p in made)


def test_a_second_writer_of_a_live_run_is_refused(tmp_path):
    run = layerwise.train(iris(epochs=1), runs_dir=tmp_path / "runs", quiet=True).path
    with RunLock(run).acquire():  # this process "trains" in it
        code, out, err = cli("train", "--resume", run, "--set", "train.epochs=2", "--quiet", cwd=tmp_path)
        assert_one_line_error(code, err, str(run), "another process", f"pid {os.getpid()}")
        with pytest.raises(RunLockedError):
            RunLock(run).acquire()
    with RunLock(run).acquire():  # released: free again
        pass
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # the refused writer changed nothing


def test_a_killed_process_does_not_keep_its_run_locked(tmp_path):
    run = layerwise.train(iris(epochs=1), runs_dir=tmp_path / "runs", quiet=True).path
    holder = subprocess.Popen([cli_command()[0], "-c", "import sys, time; from layerwise.runs.rundir import RunLock; "
                               f"RunLock({str(run)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError):
        RunLock(run).acquire()
    holder.kill()
    holder.wait()
    RunLock(run).acquire().release()


def test_files_honour_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        run = layerwise.train(iris(epochs=1), runs_dir=tmp_path / "runs", quiet=True).path
    finally:
        os.umask(previous)
    modes = {p.relative_to(run).as_posix(): p.stat().st_mode & 0o777 for p in [run, *run.rglob("*")]}
    assert modes["."] == 0o750 and modes["checkpoints"] == 0o750
    files = {name: mode for name, mode in modes.items() if (run / name).is_file()}
    assert {"config.yaml", "data.json", "model.safetensors", "checkpoints/last.pt", "history.csv",
            "metrics.json"} <= set(files)
    assert set(files.values()) == {0o640}, files


def test_atomic_write_mode_follows_the_umask(tmp_path):
    previous = os.umask(0o002)
    try:
        atomic_write(tmp_path / "x.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(previous)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o664
