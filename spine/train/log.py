"""Per-epoch metrics of a fold: ``metrics.csv`` (one row per epoch) and TensorBoard (``tb/``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

METRICS_CSV = "metrics.csv"


class MetricsLog:
    """Rewrites metrics.csv after each epoch; on resume, rows from ``start_epoch`` on are dropped."""

    def __init__(self, folder: Path, start_epoch: int = 0, tensorboard: bool = True):
        self.path = Path(folder) / METRICS_CSV
        self.rows: list[dict] = []
        if start_epoch > 0 and self.path.is_file():
            old = pd.read_csv(self.path)
            self.rows = old[old.epoch < start_epoch].to_dict("records")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(folder) / "tb"), purge_step=start_epoch or None)
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        row = {"epoch": epoch, **metrics}
        self.rows.append(row)
        pd.DataFrame(self.rows).to_csv(self.path, index=False)
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
