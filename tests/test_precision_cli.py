"""Mixed precision end to end: each landed family's fastest CLI run with ``--trainer.precision bf16-mixed`` (CPU
autocast) exits cleanly with finite metrics, and where the experts run through moezoo.kernels they computed in
bfloat16 (not silently in float32)."""

import json
import math

import pytest
import torch

from moezoo.cli import main
from moezoo.kernels import ops

BF16 = ["--trainer.precision", "bf16-mixed", "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false"]
DIT = ["--model.init_args.samples_per_class", "1", "--model.init_args.sample_steps", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def expert_dtypes(monkeypatch):
    """The dtypes moezoo.kernels' routed expert MLP computed in during the run."""
    seen = set()
    moe_mlp = ops.moe_mlp

    def spy(*args):
        seen.add(args[0].dtype)
        return moe_mlp(*args)

    monkeypatch.setattr(ops, "moe_mlp", spy)
    return seen


def _fit_bf16(tmp_path, task, *flags) -> dict:
    try:
        main(["fit", "--task", task, *BF16, *flags, "--trainer.default_root_dir", str(tmp_path)])
    except SystemExit as exit_:  # the CLI's way out on a user error
        assert exit_.code in (0, None), f"moezoo fit exited with {exit_.code}"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert metrics["global_step"] == 1
    assert "train/loss" in numbers
    bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert not bad, bad
    return metrics


@pytest.mark.parametrize("task,flags", [("image-classification", ()), ("dit/tc-moe", DIT), ("dit/promoe", DIT)],
                         ids=["image-classification", "dit-tc-moe", "dit-promoe"])
def test_moe_families_train_in_bf16_mixed_with_bfloat16_experts(task, flags, tmp_path, expert_dtypes):
    metrics = _fit_bf16(tmp_path, task, *flags)
    assert torch.bfloat16 in expert_dtypes, "the routed experts ran under autocast"
    assert any(k.startswith("moe/") and k.endswith("/load_e0") for k in metrics), "routing statistics were logged"
    if task.startswith("dit/"):
        assert "test/fid_cls" in metrics


def test_ctr_mmoe_trains_in_bf16_mixed(tmp_path):
    metrics = _fit_bf16(tmp_path, "ctr/mmoe", "--data.num_samples", "2000")
    assert 0 <= metrics["test/auc_click"] <= 1


def test_graph_mowst_gcn_trains_in_bf16_mixed(tmp_path):
    metrics = _fit_bf16(tmp_path, "graph/mowst-gcn")
    assert 0 <= metrics["test/acc"] <= 1
