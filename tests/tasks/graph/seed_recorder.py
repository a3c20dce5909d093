"""A Lightning callback for multi-process CLI tests: which train nodes each process trained on, per epoch.

Given as ``--trainer.callbacks+=seed_recorder.SeedRecorder --trainer.callbacks.out DIR`` (with this folder on
PYTHONPATH), each process writes ``DIR/rank<r>.json``: {epoch: the global ids of its seed nodes (a sampled batch's
first ``batch_size`` ``n_id``; a whole-graph batch's ``train_mask`` nodes)}.
"""

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class SeedRecorder(Callback):
    def __init__(self, out: str):
        self.out, self.seen = Path(out), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if "n_id" in batch:
            seeds = batch.n_id[:batch.batch_size]
        else:
            seeds = batch.train_mask.nonzero().view(-1)
        self.seen.setdefault(str(trainer.current_epoch), []).extend(seeds.tolist())

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))
