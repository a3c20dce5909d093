"""The vision-language variants end to end through the CLI on easy-VQA (a few batches), MoE-LLaVA upcycled from
a dense run, bf16, and VQA v2 / COCO-captions files written here."""

import json

import pytest
import torch

from moezoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--model.init_args.dim", "32", "--model.init_args.num_heads", "2", "--model.init_args.depth", "2",
         "--trainer.enable_progress_bar", "false"]
FEW = ["--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
       "--data.batch_size", "16"]


def _metrics(root):
    return json.loads((root / "metrics.json").read_text())


def test_dense_then_moe_llava_upcycled_from_it_on_easy_vqa(tmp_path, capsys):
    dense_root, moe_root = tmp_path / "dense", tmp_path / "moe-llava"
    main(["fit", "--task", "vl/dense", "--trainer.default_root_dir", str(dense_root), "--trainer.max_epochs", "1",
          *SMALL, *FEW])
    dense = _metrics(dense_root)
    assert 0 <= dense["test/acc"] <= 1 and dense["test/flops_per_sample"] > 0
    checkpoint = torch.load(dense["best_model_path"], map_location="cpu", weights_only=False)
    assert len(checkpoint["hyper_parameters"]["answers"]) == 13  # easy-VQA's answers, linked from the data
    with pytest.raises(SystemExit):
        main(["fit", "--task", "vl/moe-llava", "--trainer.default_root_dir", str(moe_root), *SMALL, *FEW])
    assert "init_from: MoE-tuning upcycles a trained dense model" in capsys.readouterr().err
    main(["fit", "--task", "vl/moe-llava", "--trainer.default_root_dir", str(moe_root), "--trainer.max_epochs", "1",
          "--model.init_args.init_from", dense["best_model_path"], *SMALL, *FEW])
    fit = _metrics(moe_root)
    assert fit["test/flops_per_sample"] > dense["test/flops_per_sample"]  # top-2 of full copies: 2 FFNs a token
    for modality in ("image", "text"):
        load = [fit[f"test/routing/network.encoder.blocks.1.ffn/modality={modality}/e{e}"] for e in range(4)]
        assert sum(load) == pytest.approx(1.0)
    # testing the MoE-LLaVA checkpoint does not read init_from again
    (tmp_path / "gone.ckpt").write_bytes(b"")
    main(["test", "--task", "vl/moe-llava", "--trainer.default_root_dir", str(moe_root), "--ckpt_path",
          fit["best_model_path"], "--model.init_args.init_from", str(tmp_path / "gone.ckpt"), *SMALL, *FEW])
    assert _metrics(moe_root)["test/acc"] == pytest.approx(fit["test/acc"], abs=1e-6)


@pytest.mark.parametrize("task", ["vl/moe", "vl/moma"])
def test_the_expert_choice_variants_train_under_bf16_mixed_with_load_by_modality(task, tmp_path):
    main(["fit", "--task", task, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
          "--trainer.precision", "bf16-mixed", *SMALL, *FEW])
    fit = _metrics(tmp_path)
    assert fit["global_step"] == 4 and 0 <= fit["test/acc"] <= 1
    image = [fit[f"test/routing/network.encoder.blocks.0.ffn/modality=image/e{e}"] for e in range(4)]
    if task == "vl/moma":
        assert image == [0.5, 0.5, 0.0, 0.0]  # image tokens only on the image experts, each its capacity
        assert fit["test/routing/modality_nmi"] > 0.5
    else:
        assert sum(image) == pytest.approx(1.0)
