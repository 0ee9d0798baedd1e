"""What a training run leaves in its folder ``<storage.root>/train/<run name>/`` besides Ray's own
files (``checkpoint_*`` directories, run state):

    config.yaml            the experiment config the run was started with (resume reads it)
    descriptions.yaml      the description set its class prompts use (id ``<name>@<digest>``;
                           resume reads it back, so a resumed run keeps its descriptions)
    metrics.csv / .parquet one row per epoch (polars, pandas, pyarrow read both)
    tensorboard/           TensorBoard event files (``tensorboard --logdir <run>/tensorboard``)
    curves.png             loss and UAR/WAR per epoch
    confusion_<split>.png  confusion matrices of the selected epoch (and the final test)
    best/model.pt          weights of the best epoch so far (project checkpoint format)
    final/model.pt         the exported model: weights of the selected epoch, loadable without Ray
    summary.json           best epoch, its metrics, test metrics, the description set's id, paths
                           (read by demo / run / report)

Everything is written through :class:`~pipeline.storage.Storage` (atomic; local or object
storage); only rank 0 writes.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile

from pipeline.reports import confusion_png, curves_png
from pipeline.storage import Storage

__all__ = ["RunFiles", "clean_json"]


def clean_json(value):
    """NaN/inf -> None recursively, so summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


class RunFiles:
    """Writer for one run folder."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._tb = None
        self._tb_dir: str | None = None

    def path(self, *parts: str) -> str:
        return self.storage.path(*parts)

    def write_epoch(self, history: list[dict], row: dict, title: str, purge_step: int | None = None) -> None:
        """After each epoch: metrics.csv/.parquet, the TensorBoard scalars of ``row``, curves.png."""
        self.write_metrics(history)
        self.tensorboard(row, purge_step=purge_step)
        self.write_curves(history, title)

    def write_metrics(self, history: list[dict]) -> None:
        import polars as pl

        frame = pl.DataFrame(history, infer_schema_length=None)
        self.storage.write_text(frame.write_csv(), "metrics.csv")
        buf = io.BytesIO()
        frame.write_parquet(buf)
        self.storage.write_bytes(buf.getvalue(), "metrics.parquet")

    def tensorboard(self, row: dict, purge_step: int | None = None) -> None:
        """Log a row's numeric values as scalars at step ``row['epoch']``."""
        from torch.utils.tensorboard import SummaryWriter

        if self._tb is None:
            # Event files are appended as they are written, so object storage gets a local
            # folder that is copied up after every epoch.
            self._tb_dir = (
                str(self.storage.local_path("tensorboard")) if self.storage.is_local else tempfile.mkdtemp(prefix="tb")
            )
            self._tb = SummaryWriter(self._tb_dir, purge_step=purge_step)
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and value is not None and math.isfinite(value):
                split, _, name = key.partition("_")
                tag = f"{name}/{split}" if split in ("train", "val", "test", "best") and name else key
                self._tb.add_scalar(tag, value, step)
        self._tb.flush()
        if not self.storage.is_local:
            for name in os.listdir(self._tb_dir):
                with open(os.path.join(self._tb_dir, name), "rb") as f:
                    self.storage.write_bytes(f.read(), "tensorboard", name)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            if not self.storage.is_local and self._tb_dir:
                shutil.rmtree(self._tb_dir, ignore_errors=True)
            self._tb = None

    def write_curves(self, history: list[dict], title: str) -> None:
        self.storage.write_bytes(curves_png(history, title), "curves.png")

    def write_confusion(self, cm, class_names: list[str], split: str, title: str) -> str:
        return self.storage.write_bytes(confusion_png(cm, class_names, title), f"confusion_{split}.png")

    def write_json(self, data: dict, name: str) -> str:
        return self.storage.write_text(json.dumps(clean_json(data), indent=2) + "\n", name)
