"""Node classification: single experts (MLP, GCN, GraphSAGE, GAT, GIN from PyG) and Mowst / Mowst*.

Mowst (Zeng et al., ICLR 2024, "Mixture of Weak & Strong Experts on Graphs"): a weak MLP expert on the node's own
features and a strong GNN expert, mixed per node by the weak expert's confidence C (see ``confidence.py``).

    Mowst   loss per train node: C * CE(weak) + (1 - C) * CE(strong); trained by alternating phases (the weak expert
            and its confidence with the strong expert frozen, then the strong expert with the weak one frozen);
            inference: the weak prediction with probability C, else the strong one ("sampled", averaged over draws),
            or the expected mixture C * p_weak + (1 - C) * p_strong ("expected").
    Mowst*  C = sigmoid(GateMLP([D_var, D_ent] (, x))), all trained jointly on the mixture's cross-entropy
            -log(C p_weak + (1 - C) p_strong)[y] ("joint") or on C * CE(weak) + (1 - C) * CE(strong) ("separate").
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch_geometric.nn.models import GAT, GCN, GIN, MLP, GraphSAGE
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy

from moezoo.errors import MoezooError
from moezoo.training import TaskModule

from .layerwise import layerwise_logits
from .sampling import is_sampled, seed_rows

GNNS = {"gcn": GCN, "sage": GraphSAGE, "gat": GAT, "gin": GIN}
EXPERTS = ("mlp", *GNNS)
DEGREE_BUCKETS = (0, 2, 4, 8, 16, 32)  # bucket b holds nodes with DEGREE_BUCKETS[b] <= degree < DEGREE_BUCKETS[b+1]
DEGREE_BUCKET_NAMES = [f"{low}-{high - 1}" for low, high in zip(DEGREE_BUCKETS, DEGREE_BUCKETS[1:])] + [
    f"{DEGREE_BUCKETS[-1]}+"]


def build_expert(kind: str, in_channels: int, hidden: int, out_channels: int, num_layers: int, dropout: float):
    """A PyG model: ``mlp`` (torch_geometric.nn.MLP, no norm) or a GNN from ``GNNS``."""
    if kind == "mlp":
        return MLP(in_channels=in_channels, hidden_channels=hidden, out_channels=out_channels,
                   num_layers=num_layers, dropout=dropout, norm=None)
    if kind not in GNNS:
        raise ValueError(f"unknown expert {kind!r}; valid: {', '.join(EXPERTS)}")
    extra = {"cached": True} if kind == "gcn" else {}
    return GNNS[kind](in_channels, hidden, num_layers, out_channels, dropout=dropout, **extra)


@contextmanager
def _uncached(expert):
    """GCN's layers without their cached normalised adjacency (each sampled batch is another subgraph): the whole
    graph's cache is set aside, not used and not overwritten, and put back after."""
    layers = [m for m in expert.modules() if getattr(m, "cached", False)]
    kept = [(layer._cached_edge_index, layer._cached_adj_t) for layer in layers]
    for layer in layers:
        layer.cached, layer._cached_edge_index, layer._cached_adj_t = False, None, None
    try:
        yield
    finally:
        for layer, (edge_cache, adj_cache) in zip(layers, kept):
            layer.cached, layer._cached_edge_index, layer._cached_adj_t = True, edge_cache, adj_cache


def expert_logits(expert, data):
    """Logits of a PyG expert: of every node of a whole graph, or of the seed nodes of a sampled batch.

    Whole graph: ``adj_t`` (sparse matmul) where the layer supports it; GCN caches its normalised adjacency on the
    first call (``cached=True``): the task is transductive, one graph. Under CPU autocast the sparse path runs in
    float32: CPU sparse matmul has no bfloat16 kernel (``addmm_out_sparse_csr_impl_mkl``), while dense layers (the
    MLP, GAT's gather/scatter) follow autocast.

    Sampled batch (``sampling.py``): the MLP sees the seeds' features only; a GNN runs on the subgraph's
    ``edge_index`` (normalised anew, GCN's cache untouched) and its first ``batch_size`` rows are returned.

    Whole graph marked for layer-wise inference (``layerwise_batch_size``, set by ``--data.inference layerwise`` on
    the evaluation batches, used in eval mode): ``layerwise.py``, the same logits in bounded memory.
    """
    if is_sampled(data):
        if isinstance(expert, MLP):
            return expert(seed_rows(data, "x"))
        with _uncached(expert):
            return expert(data.x, data.edge_index)[:data.batch_size]
    if "layerwise_batch_size" in data and not expert.training:
        return layerwise_logits(expert, data, data.layerwise_batch_size)
    if isinstance(expert, MLP):
        return expert(data.x)
    if isinstance(expert, GAT) or "adj_t" not in data:
        return expert(data.x, data.edge_index)
    if data.x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return expert(data.x.float(), data.adj_t)
    return expert(data.x, data.adj_t)


class GraphTask(TaskModule):
    """Node classification (whole graph or sampled batches): metrics on the split masks, lazy build from sizes.

    Routing (Mowst's confidence) is counted by node class and in-degree bucket (``DEGREE_BUCKET_NAMES``).

    The experts are built from ``num_features`` / ``num_classes``, and ``metric`` (acc or roc_auc) picks the best
    checkpoint; under the CLI all three come from the data module (linked). Optimiser: Adam with L2 weight decay (the
    usual GNN setup), no schedule.
    """

    monitor_mode = "max"
    routing_label_names = {"degree": DEGREE_BUCKET_NAMES}

    def __init__(self, hidden: int, num_layers: int, dropout: float, lr: float, weight_decay: float,
                 num_features: int | None, num_classes: int | None, metric: str | None = None):
        super().__init__(lr=lr, weight_decay=weight_decay, cosine=False)
        self.hidden, self.num_layers, self.dropout = hidden, num_layers, dropout
        self.metric = metric or "acc"
        self.built = False
        if num_features is not None and num_classes is not None:
            self._build(num_features, num_classes)

    @property
    def monitor(self) -> str:
        """The validation metric that picks the best checkpoint: the data's (``acc``, or ``roc_auc`` for 2 classes)."""
        return f"val/{self.metric}"

    def configure_model(self) -> None:
        if not self.built:
            raise MoezooError("model.init_args.num_features and num_classes are not set: run through the moezoo CLI "
                              "(they come from the data module) or pass them")

    def _build(self, num_features: int, num_classes: int) -> None:
        self.hparams.update(num_features=num_features, num_classes=num_classes)
        self.num_classes = num_classes
        self.build(num_features, num_classes)
        self.built = True

    def build(self, num_features: int, num_classes: int) -> None:
        raise NotImplementedError

    def routing_labels(self, data, stage):
        """Count the routing by node class and in-degree bucket over the stage's nodes (others: -1, not counted);
        of a sampled batch, over its seeds (the rows the experts' outputs have)."""
        mask = seed_rows(data, f"{stage}_mask")
        labels = {"class": torch.where(mask, seed_rows(data, "y"), -1)}
        if "degree" in data:
            node_degree = seed_rows(data, "degree")  # the whole graph's in-degree, kept through sampling
            bucket = torch.bucketize(node_degree, torch.tensor(DEGREE_BUCKETS[1:], device=node_degree.device),
                                     right=True)
            labels["degree"] = torch.where(mask, bucket, -1)
        return labels

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def metrics(self, probs: torch.Tensor, data, stage: str) -> dict[str, torch.Tensor]:
        """Accuracy (and ROC-AUC for two classes) of probs [N, C] (N: the nodes, or a batch's seeds) on the mask."""
        mask = seed_rows(data, f"{stage}_mask")
        y = seed_rows(data, "y")[mask]
        accuracy = multiclass_accuracy(probs[mask], y, num_classes=probs.shape[-1], average="micro")
        metrics = {f"{stage}/acc": accuracy}
        if self.num_classes == 2:
            metrics[f"{stage}/roc_auc"] = binary_auroc(probs[mask, 1], y)
        return metrics


class NodeClassifier(GraphTask):
    """One expert alone (the Mowst baselines): ``expert`` in mlp, gcn, sage, gat, gin; cross-entropy on train nodes."""

    def __init__(self, expert: Literal["mlp", "gcn", "sage", "gat", "gin"] = "gcn", hidden: int = 64,
                 num_layers: int = 2, dropout: float = 0.5,
                 lr: float = 0.01, weight_decay: float = 5e-4, num_features: int | None = None,
                 num_classes: int | None = None, metric: Literal["acc", "roc_auc"] | None = None):
        if expert not in EXPERTS:
            raise ValueError(f"unknown expert {expert!r}; valid: {', '.join(EXPERTS)}")
        self.expert = expert
        super().__init__(hidden, num_layers, dropout, lr, weight_decay, num_features, num_classes, metric)
        self.save_hyperparameters()

    def build(self, num_features, num_classes):
        self.net = build_expert(self.expert, num_features, self.hidden, num_classes, self.num_layers, self.dropout)

    def forward(self, data):
        return expert_logits(self.net, data)

    def task_step(self, data, stage):
        logits = self(data)
        mask = seed_rows(data, f"{stage}_mask")
        loss = F.cross_entropy(logits[mask], seed_rows(data, "y")[mask])
        self.log(f"{stage}/loss" if stage != "train" else "train/task_loss", loss, batch_size=1)
        if stage != "train":
            self.log_dict(self.metrics(logits.softmax(-1), data, stage), batch_size=1, prog_bar=stage == "val")
        return loss

    def predict_step(self, data, batch_idx):
        probs = self(data).softmax(-1)
        return {"pred": probs.argmax(-1), "prob": probs}
