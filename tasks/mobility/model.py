"""NextLocationModel: a causal (MoE) transformer over a user's visits that predicts the next location at each one.

Token = location embedding + category embedding + hour-of-week embedding + a projection of the city-normalised
coordinates + a learned position embedding. Body: the core ``MoETransformer``, causal; an MoE FFN in every
``moe_every``-th block (0: dense). Head: a softmax over the location vocabulary. Loss: cross-entropy on the
positions whose target belongs to the split (``mask``); metrics Acc@1/5/10 and MRR, overall and per city.

What the router reads next to each token's hidden state (``router_features``, the core's ``router_context``):
- ``none``: nothing (a plain top-k MoE);
- ``mobility`` (MoveGCL, Yuan et al. 2025): embeddings of the city, the time gap to the previous visit, the jump
  distance from it, and the user's radius-of-gyration and location-entropy bins. The official code
  (github.com/tsinghua-fib-lab/MoveGCL ``base_model.py``: ``NoisyTopkRouter``) concatenates the hidden state with a
  city embedding, wait-time and jump-distance encodings (each an embedding passed through two small causal
  transformer blocks and a soft codebook) and gyration / entropy embeddings; here the gap and distance encodings are
  plain embeddings of their bins. Its noisy top-k is the core's ``MoEArgs.noise: learned``.
- ``spatial`` (TrajMoE, Han et al. 2025): a spatial-semantic encoding of the location, its category embedding and a
  projection of its visit pattern (hour-of-day histogram of its training visits) and coordinates; TrajMoE adds an
  always-on shared expert (``MoEArgs.num_shared_experts: 1``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric

from moezoo.backbones.transformer import MoETransformer
from moezoo.errors import MoezooError
from moezoo.moe import MoEArgs
from moezoo.training import TaskModule

from .sequences import NUM_DISTANCE_BINS, NUM_GAP_BINS, NUM_USER_BINS, PATTERN_BINS

ROUTER_FEATURES = ("none", "mobility", "spatial")
METRICS = ("acc1", "acc5", "acc10", "mrr")


def rank_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Acc@1/5/10 and reciprocal rank of each target among the logits [n, V] (ties count against the target)."""
    target_logit = logits.gather(1, targets[:, None])
    rank = (logits > target_logit).sum(1) + (logits == target_logit).sum(1) - 1  # 0 = first
    rank = rank.float()
    return {"acc1": (rank < 1).float(), "acc5": (rank < 5).float(), "acc10": (rank < 10).float(),
            "mrr": 1.0 / (rank + 1.0)}


class RankMetrics(nn.Module):
    """Acc@1/5/10 and MRR of the validation and test targets, overall and (with several cities) per city, as
    torchmetrics ``MeanMetric``s that ``log`` updates and logs on a LightningModule."""

    def __init__(self, city_names: list[str]):
        super().__init__()
        self.city_names = list(city_names)
        self.overall = nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in ("val", "test")
                                      for name in METRICS})
        self.by_city = nn.ModuleDict({f"{stage}_{name}_{c}": MeanMetric() for stage in ("val", "test")
                                      for name in METRICS for c in range(len(city_names))}) \
            if len(city_names) > 1 else nn.ModuleDict()

    def log(self, module, stage: str, scores: torch.Tensor, targets: torch.Tensor, city: torch.Tensor) -> None:
        """Rank ``targets`` [n] among ``scores`` [n, V] (``city`` [n]: each target's city) and log the metrics."""
        values = rank_metrics(scores.float(), targets)
        n = max(1, targets.numel())
        for name, value in values.items():
            metric = self.overall[f"{stage}_{name}"]
            metric.update(value)
            module.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "acc1", batch_size=n)
        if not len(self.by_city):
            return
        for c, city_name in enumerate(self.city_names):
            mine = city == c
            if not bool(mine.any()):
                continue
            for name, value in values.items():
                metric = self.by_city[f"{stage}_{name}_{c}"]
                metric.update(value[mine])
                module.log(f"{stage}/{name}/{city_name}", metric, on_epoch=True, batch_size=int(mine.sum()))


class RouterFeatures(nn.Module):
    """The per-token features the routers read next to the hidden state (module docstring), [B, L, width]."""

    def __init__(self, kind: str, width: int, num_cities: int, num_categories: int):
        super().__init__()
        self.kind = kind
        if kind == "mobility":
            self.city = nn.Embedding(num_cities, width)
            self.gap = nn.Embedding(NUM_GAP_BINS, width)
            self.distance = nn.Embedding(NUM_DISTANCE_BINS, width)
            self.gyration = nn.Embedding(NUM_USER_BINS, width)
            self.entropy = nn.Embedding(NUM_USER_BINS, width)
            self.width = 5 * width
        elif kind == "spatial":
            self.category = nn.Embedding(num_categories + 1, width)
            self.place = nn.Sequential(nn.Linear(PATTERN_BINS + 2, width), nn.GELU(), nn.Linear(width, width))
            self.width = 2 * width
        else:
            self.width = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        length = batch["locations"].shape[1]
        if self.kind == "mobility":
            per_user = [m(batch[k])[:, None].expand(-1, length, -1) for m, k in
                        ((self.city, "city"), (self.gyration, "gyration_bin"), (self.entropy, "entropy_bin"))]
            return torch.cat([*per_user, self.gap(batch["gap_bins"]), self.distance(batch["distance_bins"])], -1)
        if self.kind == "spatial":
            place = self.place(torch.cat([batch["patterns"], batch["coords"]], -1))
            return torch.cat([self.category(batch["categories"]), place], -1)
        return None


class NextLocationModel(TaskModule):
    """Next-location prediction (module docstring). Sizes come from the data (``MobilityData.model_links``).

    Args:
        num_locations, num_categories, num_cities, max_len, city_names, category_names: linked from the data.
        dim, depth, num_heads, mlp_ratio, dropout: the transformer.
        moe: the MoE FFN (None with ``moe_every: 0``: dense); moe_every: an MoE FFN in every n-th block.
        router_features: ``none``, ``mobility`` (MoveGCL) or ``spatial`` (TrajMoE); feature_width: the width of each
            of their embeddings.
        continual, teacher, replay, distill_temperature, sample_top: MoveGCL's continual learning
            (``moezoo.tasks.mobility.continual``): the teacher checkpoint of the old cities, replay with
            distillation at that temperature (or the new city alone), top-k sampling of the replayed trajectories.
        vocabulary_digest, base_vocabulary_digest: linked from the data (the location vocabulary and the one it
            extends), so a teacher and its student's data are checked to agree.
    """

    monitor = "val/acc1"
    monitor_mode = "max"

    def __init__(self, num_locations: int = 1, num_categories: int = 0, num_cities: int = 1, max_len: int = 32,
                 city_names: list[str] | None = None, category_names: list[str] | None = None, dim: int = 64,
                 depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, moe: MoEArgs | None = None, moe_every: int = 1,
                 router_features: str = "none", feature_width: int = 16, continual: bool = False,
                 teacher: str | None = None,
                 replay: bool = True, distill_temperature: float = 2.0, sample_top: int = 5,
                 vocabulary_digest: str | None = None, base_vocabulary_digest: str | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.01, warmup_epochs: float = 0.0, cosine: bool = True):
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, cosine=cosine)
        self.save_hyperparameters()
        if router_features not in ROUTER_FEATURES:
            raise MoezooError(f"model.router_features: {router_features!r} is not one of {', '.join(ROUTER_FEATURES)}")
        if router_features != "none" and moe_every == 0:
            raise MoezooError(f"model.router_features: {router_features} needs MoE layers (moe_every > 0)")
        self.num_locations, self.max_len = num_locations, max_len
        self.city_names = list(city_names or [f"city{i}" for i in range(num_cities)])
        self.category_names = list(category_names or [])
        self.routing_label_names = {"city": self.city_names,
                                    "gyration": [f"q{i + 1}" for i in range(NUM_USER_BINS)],
                                    "entropy": [f"q{i + 1}" for i in range(NUM_USER_BINS)]}
        self.location = nn.Embedding(num_locations + 1, dim, padding_idx=0)
        self.category = nn.Embedding(num_categories + 1, dim, padding_idx=0)
        self.hour = nn.Embedding(168, dim)
        self.coords = nn.Linear(2, dim)
        self.position = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        self.router_features = RouterFeatures(router_features, feature_width, num_cities, num_categories)
        moe = moe or MoEArgs(num_experts=4, k=2)
        moe = dataclasses.replace(moe, router_context_dim=self.router_features.width)
        self.encoder = MoETransformer(dim, depth, num_heads, mlp_ratio=mlp_ratio, moe=moe, moe_every=moe_every,
                                      dropout=dropout)
        self.head = nn.Linear(dim, num_locations + 1)
        self.num_cities = num_cities
        # what the data showed about each location and city in training (kept for replay and the demo)
        self.register_buffer("location_categories", torch.zeros(num_locations + 1, dtype=torch.long))
        self.register_buffer("location_coords", torch.zeros(num_locations + 1, 2))
        self.register_buffer("location_latlon", torch.full((num_locations + 1, 2), float("nan")))
        self.register_buffer("location_patterns", torch.zeros(num_locations + 1, PATTERN_BINS))
        self.register_buffer("first_locations", torch.zeros(num_cities, num_locations + 1))
        self.teacher_path, self.replay = teacher, replay
        self.distill_temperature, self.sample_top = distill_temperature, sample_top
        self._teacher = None  # a plain attribute (set with object.__setattr__): not a submodule, never saved
        self._frozen = False
        self.metrics = RankMetrics(self.city_names)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-location logits [B, L, N + 1] (column 0, padding, is never predicted)."""
        locations = batch["locations"]
        if locations.shape[1] > self.max_len:
            raise MoezooError(f"a window of {locations.shape[1]} visits is longer than model.max_len={self.max_len}")
        positions = torch.arange(locations.shape[1], device=locations.device)
        x = (self.location(locations) + self.category(batch["categories"]) + self.hour(batch["hours"])
             + self.coords(batch["coords"]) + self.position(positions)[None])
        context = self.router_features(batch)
        kwargs = {} if context is None else {"router_context": context}
        h = self.encoder(self.dropout(x), is_causal=True, **kwargs)
        logits = self.head(h)
        return logits.index_fill(-1, torch.tensor([0], device=logits.device), float("-inf"))

    # -- continual learning (MoveGCL; moezoo.tasks.mobility.continual) -------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.continual and self.teacher_path is None:
            raise MoezooError("model.teacher: the continual setting starts from the trained model of the old cities: "
                              "--model.teacher OLD.ckpt --data.vocabulary OLD.ckpt --data.cities [NEW]")
        if stage != "fit" or self.teacher_path is None or self._teacher is not None:
            return
        from .continual import grow_from, load_teacher

        teacher = load_teacher(self.teacher_path, type(self))
        grow_from(self, teacher)
        object.__setattr__(self, "_teacher", teacher)

    def _freeze_most_used(self, replay: dict[str, torch.Tensor]) -> None:
        """Freeze, in every MoE layer, each old city's most-used expert (its load on replayed trajectories)."""
        from moezoo.moe import freeze_experts, load_by_label, most_used_experts, routing_labels

        was_training = self.training
        self.eval()
        with torch.no_grad(), routing_labels(self, {"city": replay["city"]}):
            self(replay)
        self.train(was_training)
        tables = load_by_label(self, reset=True)
        layers = dict(self.named_modules())
        for name, labels in tables.items():
            freeze_experts(layers[name], most_used_experts(labels["city"]["counts"]))
        self._frozen = True

    @torch.no_grad()
    def _remember_locations(self, batch: dict[str, torch.Tensor]) -> None:
        valid = batch["locations"].ne(0)
        locations = batch["locations"][valid]
        self.location_categories[locations] = batch["categories"][valid]
        self.location_coords[locations] = batch["coords"][valid].to(self.location_coords.dtype)
        self.location_patterns[locations] = batch["patterns"][valid].to(self.location_patterns.dtype)
        if "latlon" in batch:
            self.location_latlon[locations] = batch["latlon"][valid].to(self.location_latlon.dtype)
        starts = batch["locations"][:, 0]
        self.first_locations.index_put_((batch["city"], starts), torch.ones_like(starts, dtype=torch.float),
                                        accumulate=True)

    def training_step(self, batch, batch_idx):
        self._remember_locations(batch)
        loss = super().training_step(batch, batch_idx)
        if self._teacher is None:
            return loss
        from .continual import distillation_loss, generate_replay

        replay = generate_replay(self._teacher, batch, sample_top=self.sample_top)
        if not self._frozen:
            self._freeze_most_used(replay)
        if not self.replay:
            return loss
        with torch.no_grad():
            teacher_logits = self._teacher(replay)
        distill = distillation_loss(self(replay), teacher_logits, replay["mask"], self.distill_temperature)
        self.log("train/distill", distill, on_step=True, on_epoch=True, batch_size=int(replay["mask"].sum()))
        from moezoo.moe import aux_loss

        return loss + distill + aux_loss(self)  # the replay forward's aux losses count too

    def routing_labels(self, batch, stage):
        """Count the load by the user's city and mobility bins (each sample's label on all its tokens)."""
        return {"city": batch["city"], "gyration": batch["gyration_bin"], "entropy": batch["entropy_bin"]}

    def task_step(self, batch, stage: str) -> torch.Tensor:
        logits = self(batch)
        mask = batch["mask"]
        chosen, targets = logits[mask], batch["targets"][mask]
        if not targets.numel():
            return logits.sum() * 0.0
        loss = F.cross_entropy(chosen.float(), targets)
        n = targets.numel()
        if stage == "train":
            self.log("train/task_loss", loss, on_step=True, on_epoch=True, batch_size=n)
            return loss
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=n)
        with torch.no_grad():
            self.metrics.log(self, stage, chosen, targets, batch["city"][:, None].expand_as(mask)[mask])
        return loss

    def predict_step(self, batch, batch_idx):
        logits = self(batch)
        last = batch["locations"].ne(0).sum(1) - 1
        final = logits[torch.arange(logits.shape[0]), last]
        top = final.topk(min(10, self.num_locations), dim=-1)
        return {"top10": top.indices, "prob": top.values.softmax(-1)}
