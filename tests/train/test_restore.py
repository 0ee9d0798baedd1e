"""Resuming from the run folder when Ray Train hands a restarted worker no checkpoint."""

from __future__ import annotations

import io

import torch

from pipeline.storage import Storage
from pipeline.train.worker import CHECKPOINT_FILE, _persisted_checkpoint


def _write(storage: Storage, folder: str, epoch: int) -> None:
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.full((2,), float(epoch))}, "extra": {"epoch": epoch}}, buf)
    storage.write_bytes(buf.getvalue(), folder, CHECKPOINT_FILE)


def test_newest_loadable_epoch_checkpoint_is_used(tmp_path):
    storage = Storage(str(tmp_path / "run"))
    assert _persisted_checkpoint(storage) is None  # a new run: nothing to resume
    _write(storage, "checkpoint_epoch0001", 1)
    _write(storage, "checkpoint_epoch0002", 2)
    _write(storage, "best", 9)  # not an epoch checkpoint: never resumed from
    assert _persisted_checkpoint(storage)["extra"]["epoch"] == 2
    # a copy cut short by the crash is skipped for the one before it
    storage.write_bytes(b"truncated", "checkpoint_epoch0003", CHECKPOINT_FILE)
    payload = _persisted_checkpoint(storage)
    assert payload["extra"]["epoch"] == 2 and torch.equal(payload["state_dict"]["w"], torch.full((2,), 2.0))
