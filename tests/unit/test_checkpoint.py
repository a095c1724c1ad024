"""Checkpoint writes: atomic under a failing write, and a Ctrl-C during a write finishes it before interrupting."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from agent import checkpoint
from agent.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler (a test run in the background may have SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_failing_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path: Path, monkeypatch):
    path = save_checkpoint(tmp_path / "state_1.pt", {"model": {"w": torch.zeros(3)}})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state_1.pt"]


def test_ctrl_c_during_a_write_completes_the_checkpoint_then_interrupts(
    tmp_path: Path, monkeypatch, python_sigint_handler
):
    real_save = torch.save

    def save_interrupted(obj, f):  # the user presses Ctrl-C while the file is being written
        os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "state_2.pt", {"model": {"w": torch.ones(3)}})
    assert torch.equal(load_checkpoint(tmp_path / "state_2.pt")["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state_2.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_without_ctrl_c_nothing_is_raised_and_the_handler_is_restored(tmp_path: Path, python_sigint_handler):
    save_checkpoint(tmp_path / "state_3.pt", {"model": {}})
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
