"""`moezoo predict` writes its predictions into the run directory."""

import torch

from moezoo.cli import main


def test_predict_writes_predictions_pt_and_csv(tmp_path):
    main(["predict", "--task", "image-classification", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.limit_predict_batches", "2", "--trainer.enable_progress_bar", "false",
          "--model.init_args.embed_dim", "32", "--model.init_args.depth", "2"])
    saved = torch.load(tmp_path / "predictions.pt")
    assert saved["pred"].shape == (128,) and saved["prob"].shape == (128, 10)
    assert torch.allclose(saved["prob"].sum(-1), torch.ones(128), atol=1e-5)
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,pred" and len(rows) == 129
    assert [int(r.split(",")[1]) for r in rows[1:]] == saved["pred"].tolist()
