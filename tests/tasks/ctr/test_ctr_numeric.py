"""Numeric fields as embeddings: the bin edges fitted on the training split (decision-tree thresholds per task, or
quantiles), the piecewise-linear encoding of Gorishniy et al. 2022 eq. 1, and the CLI path (bins linked from the data
to the model, kept in the checkpoint, bf16-mixed, and the one-line error without bins)."""

import json

import numpy as np
import pytest
import torch
from sklearn.tree import DecisionTreeClassifier

from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.tasks.ctr import CTRData, CTRTask
from moezoo.tasks.ctr.numeric import TREE_KWARGS, NumericEmbedding, fit_bins

QUIET = ["--trainer.enable_progress_bar", "false"]
SMALL = ["--data.num_samples", "3000", "--data.batch_size", "256", "--trainer.max_epochs", "1"]
LEARN = ["--data.num_samples", "6000", "--data.batch_size", "256", "--trainer.max_epochs", "4", "--model.init_args.lr",
         "0.005"]


def test_tree_bins_are_the_split_thresholds_of_a_tree_per_task_pooled_with_the_range():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2)).astype(np.float32)
    labels = np.stack([(x[:, 0] > 0.7), (x[:, 0] < -1.2) | (x[:, 1] > 0.3)], 1).astype(np.float32)
    edges = fit_bins(torch.tensor(x), torch.tensor(labels), n_bins=4, method="tree")
    for f in range(2):
        expected = {float(x[:, f].min()), float(x[:, f].max())}
        for t in range(2):
            tree = DecisionTreeClassifier(max_leaf_nodes=4, **TREE_KWARGS).fit(x[:, f:f + 1], labels[:, t]).tree_
            expected |= {float(tree.threshold[n]) for n in range(tree.node_count)
                         if tree.children_left[n] != tree.children_right[n]}
        np.testing.assert_allclose(edges[f], sorted(expected), rtol=1e-6)
    # the label's thresholds are found: 0.7 for task 0 on field 0, 0.3 for task 1 on field 1
    assert min(abs(e - 0.7) for e in edges[0]) < 0.05 and min(abs(e - 0.3) for e in edges[1]) < 0.05


def test_tree_stopping_rules_are_the_trees_arguments_and_looser_rules_give_more_edges():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 1)).astype(np.float32)
    labels = (rng.random((3000, 1)) < 1 / (1 + np.exp(-2 * x))).astype(np.float32)  # a smooth P(y | x)
    rules = {"min_samples_leaf": 16, "min_impurity_decrease": 0.0}
    edges = fit_bins(torch.tensor(x), torch.tensor(labels), n_bins=32, method="tree", **rules)
    tree = DecisionTreeClassifier(max_leaf_nodes=32, **rules).fit(x, labels[:, 0]).tree_
    expected = {float(x.min()), float(x.max())} | {float(tree.threshold[n]) for n in range(tree.node_count)
                                                   if tree.children_left[n] != tree.children_right[n]}
    np.testing.assert_allclose(edges[0], sorted(expected), rtol=1e-6)
    assert len(edges[0]) == 33  # 32 leaves: 31 thresholds and the range
    assert fit_bins(torch.tensor(x), torch.tensor(labels), n_bins=32, method="tree") == edges  # TREE_KWARGS
    coarse = fit_bins(torch.tensor(x), torch.tensor(labels), n_bins=32, method="tree", min_samples_leaf=64,
                      min_impurity_decrease=1e-3)
    assert len(coarse[0]) < len(edges[0])
    for bad, match in (({"min_samples_leaf": 0}, "bin_tree_min_samples_leaf"),
                       ({"min_samples_leaf": 2.5}, "bin_tree_min_samples_leaf"),
                       ({"min_impurity_decrease": -1e-3}, "bin_tree_min_impurity_decrease")):
        with pytest.raises(MoezooError, match=match):
            fit_bins(torch.tensor(x), torch.tensor(labels), method="tree", **bad)


def test_the_data_module_fits_its_bins_with_its_tree_rules():
    coarse, fine = (CTRData(num_samples=4000, numeric_bins="tree", bin_tree_min_samples_leaf=leaf,
                            bin_tree_min_impurity_decrease=gain).numeric_bin_edges
                    for leaf, gain in ((64, 1e-4), (8, 0.0)))
    assert len(coarse) == len(fine) > 0
    assert sum(map(len, fine)) > sum(map(len, coarse))


def test_quantile_bins_and_a_constant_field():
    values = torch.cat([torch.arange(100.0)[:, None], torch.full((100, 1), 3.0)], 1)
    edges = fit_bins(values, torch.zeros(100, 1), n_bins=4, method="quantile")
    np.testing.assert_allclose(edges[0], torch.quantile(values[:, 0], torch.linspace(0, 1, 5)).tolist())
    assert edges[1] == [3.0, 4.0]  # one bin: the package's min-max scaling


def test_piecewise_linear_encoding_follows_eq_1():
    bins = [[0.0, 1.0, 3.0, 7.0]]
    module = NumericEmbedding(1, 4, "piecewise", bins)
    x = torch.tensor([[-1.0], [0.5], [2.0], [5.0], [9.0]])
    encoding = module.embed.impl(x)[:, 0]  # [B, bins]
    # e_t = clip((x - b_{t-1}) / (b_t - b_{t-1}), 0, 1); the first bin is not clipped below, the last not above
    expected = torch.tensor([[-1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 0.5], [1.0, 1.0, 1.5]])
    torch.testing.assert_close(encoding, expected)
    assert module(x).shape == (5, 4) and module.out_dim == 4


def test_numeric_embedding_shapes_and_errors():
    assert NumericEmbedding(3, 8, "none").out_dim == 3
    periodic = NumericEmbedding(3, 8, "periodic")
    assert periodic(torch.randn(5, 3)).shape == (5, 24)
    with pytest.raises(Exception, match="numeric_bins"):
        NumericEmbedding(2, 8, "piecewise", None)
    with pytest.raises(Exception, match=r"numeric_bins\[0\]"):
        NumericEmbedding(1, 8, "piecewise", [[1.0, 1.0]])


def test_piecewise_mmoe_through_the_cli_keeps_its_bins_in_the_checkpoint_and_trains_in_bf16(tmp_path):
    main(["fit", "--task", "ctr/mmoe", "--trainer.default_root_dir", str(tmp_path), *LEARN, *QUIET,
          "--model.numeric_embedding", "piecewise", "--data.numeric_bins", "tree", "--trainer.precision",
          "bf16-mixed"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/auc_click"] > 0.62, metrics["test/auc_click"]  # the plain variants' bar (test_ctr_cli.py)
    model = CTRTask.load_from_checkpoint(metrics["best_model_path"])
    bins = model.hparams.numeric_bins
    assert bins is not None and len(bins) == model.hparams.num_numeric
    assert all(len(b) >= 2 and b == sorted(b) for b in bins)
    edges = model.features.numeric.embed.impl
    assert torch.isfinite(edges.weight).all()


def test_piecewise_without_bins_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--task", "ctr/mmoe", "--trainer.default_root_dir", str(tmp_path), *SMALL, *QUIET,
              "--model.numeric_embedding", "piecewise", "--data.numeric_bins", "null"])  # the configs' is tree
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "numeric_bins" in err and "Traceback" not in err
