"""A callback for the multi-process CTR tests: each rank writes the values of one numeric column (a row number,
standardised) of every training batch it saw, per epoch, to ``<out>/rank<R>.json``."""

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class RankRows(Callback):
    def __init__(self, out: str, column: int = 1):
        self.out, self.column, self.rows = Path(out), column, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.setdefault(str(trainer.current_epoch), []).extend(batch["numeric"][:, self.column].tolist())

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))
