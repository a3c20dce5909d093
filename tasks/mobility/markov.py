"""MarkovModel: the first-order Markov baseline users check first (DeepMove's "Markov" row).

Training counts transitions (previous location -> next location) over the training targets, per user and over all
users, and location popularity. A prediction ranks every location by, in this order, the user's own transition
counts from the current location, then everybody's, then popularity: a user's habit first, the city's flow where the
user has none, the most visited places last. One pass over the training data (``max_epochs: 1``), no gradient.

Lightning counts training progress in optimizer steps (its checkpoints are written only after the step count
moves), so each batch also makes one step of SGD at learning rate 0 on a placeholder scalar: nothing is learned by
gradient. The counts are buffers (``transitions`` [M, 4] long rows of user, previous, next, count; user -1 for
everybody's; ``popularity`` [N + 1]), so checkpoints and hub folders carry them like weights.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch

from moezoo.training import TaskModule

from .model import RankMetrics


class MarkovModel(TaskModule):
    """First-order Markov next-location baseline (module docstring); the batches of ``MobilityData``."""

    monitor = "val/acc1"
    monitor_mode = "max"

    def __init__(self, num_locations: int = 1, num_categories: int = 0, num_cities: int = 1, max_len: int = 32,
                 city_names: list[str] | None = None, category_names: list[str] | None = None,
                 vocabulary_digest: str | None = None, base_vocabulary_digest: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.num_locations = num_locations
        self.city_names = list(city_names or [f"city{i}" for i in range(num_cities)])
        self.step_placeholder = torch.nn.Parameter(torch.zeros(()))  # see the module docstring
        self.register_buffer("transitions", torch.zeros(0, 4, dtype=torch.long))
        self.register_buffer("popularity", torch.zeros(num_locations + 1))
        self.metrics = RankMetrics(self.city_names)
        self._counts: dict[tuple[int, int], Counter] | None = None  # (user or -1, previous) -> next counts

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "transitions"
        if key in state_dict:  # its length is the data's: take the saved shape
            self.transitions = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._counts = None

    def configure_optimizers(self):
        return torch.optim.SGD([self.step_placeholder], lr=0.0)

    def on_train_epoch_start(self):
        self._counts = defaultdict(Counter)
        self.popularity.zero_()

    def training_step(self, batch, batch_idx):
        mask = batch["mask"]
        users = batch["user"][:, None].expand_as(mask)[mask].tolist()
        previous, following = batch["locations"][mask].tolist(), batch["targets"][mask].tolist()
        for user, a, b in zip(users, previous, following):
            self._counts[(user, a)][b] += 1
            self._counts[(-1, a)][b] += 1
        self.popularity.index_add_(0, batch["targets"][mask], torch.ones(len(following), device=mask.device))
        if self._trainer is not None:
            self.optimizers().step()  # moves Lightning's step count; lr 0, no gradient
        return None

    def _flush(self) -> None:
        """The live counts into the buffers (before validation: the checkpoint written then must hold them)."""
        if self._counts is None:
            return
        rows = [(user, a, b, n) for (user, a), following in self._counts.items() for b, n in following.items()]
        self.transitions = torch.tensor(rows, dtype=torch.long, device=self.popularity.device).reshape(-1, 4)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        if self.trainer.state.fn == "fit":
            self._flush()

    def on_train_epoch_end(self):
        self._flush()

    def _table(self) -> dict[tuple[int, int], dict[int, int]]:
        if self._counts is None:
            table = defaultdict(dict)
            for user, a, b, n in self.transitions.tolist():
                table[(user, a)][b] = n
            self._counts = table
        return self._counts

    def scores(self, users: list[int], previous: list[int]) -> torch.Tensor:
        """[n, N + 1]: own transitions * 1e6 + everybody's * 1e3 + popularity share (< 1); padding -inf."""
        table = self._table()
        popularity = self.popularity / self.popularity.sum().clamp_min(1.0)
        out = popularity.repeat(len(users), 1)
        for row, (user, a) in enumerate(zip(users, previous)):
            for weight, key in ((1e3, (-1, a)), (1e6, (user, a))):
                for b, n in table.get(key, {}).items():
                    out[row, b] += weight * min(n, 999)
        out[:, 0] = float("-inf")
        return out

    def task_step(self, batch, stage: str) -> torch.Tensor:
        mask = batch["mask"]
        users = batch["user"][:, None].expand_as(mask)[mask].tolist()
        scores = self.scores(users, batch["locations"][mask].tolist()).to(mask.device)
        targets = batch["targets"][mask]
        self.metrics.log(self, stage, scores, targets, batch["city"][:, None].expand_as(mask)[mask])
        return scores.new_zeros(())
