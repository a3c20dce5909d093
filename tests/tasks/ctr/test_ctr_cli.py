"""CTR variants end to end through the CLI: the embedded generator, the adult census preset, predict, and errors."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from moezoo.cli import main
from moezoo.registry import list_tasks
from moezoo.tasks.ctr import CTRData, CTRTask

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "ctr"
CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "ctr"
QUIET = ["--trainer.enable_progress_bar", "false"]
SMALL = ["--data.num_samples", "4000", "--data.batch_size", "256", "--trainer.max_epochs", "1"]
LEARN = ["--data.num_samples", "6000", "--data.batch_size", "256", "--trainer.max_epochs", "4", "--model.init_args.lr",
         "0.005"]


def _metrics(root):
    return json.loads((root / "metrics.json").read_text())


@pytest.mark.parametrize("task", [name for name in list_tasks() if name.startswith("ctr/")])
def test_every_ctr_variant_learns_the_generator_and_reports_auc_per_task_and_domain(task, tmp_path):
    main(["fit", "--task", task, "--trainer.default_root_dir", str(tmp_path), *LEARN, *QUIET])
    metrics = _metrics(tmp_path)
    for name in ("click", "purchase"):
        # 4 epochs of 6,000 generated rows: measured 0.67-0.74 for every variant and task (chance 0.5)
        assert metrics[f"test/auc_{name}"] > 0.62, (name, metrics[f"test/auc_{name}"])
        assert metrics[f"test/logloss_{name}"] > 0
        assert any(k.startswith("test/domain_") and k.endswith(f"auc_{name}") for k in metrics)
    # the core's load by label: every gate's usage over the test set sums to 1 over its experts
    gates = {k.rsplit("/", 1)[0] for k in metrics if k.startswith("test/routing/") and "/load_e" in k}
    assert gates, "expert usage over the test set"
    for gate in gates:
        assert sum(v for k, v in metrics.items() if k.startswith(f"{gate}/load_e")) == pytest.approx(1.0, abs=1e-4)
    if task != "ctr/adaptdhm":  # the experts the task gates share: their usage by task, and its NMI with the expert
        assert 0 <= metrics["test/routing/task_nmi"] <= 1
        for name in ("click", "purchase"):
            rows = {k.split("/task=")[0] for k in metrics if f"/task={name}/e" in k}
            assert rows, f"usage by task {name}"
            for row in rows:
                usage = [v for k, v in metrics.items() if k.startswith(f"{row}/task={name}/e")]
                assert sum(usage) == pytest.approx(1.0, abs=1e-4)
    if task == "ctr/adaptdhm":  # clusters see every domain: their usage per domain, and its NMI with the cluster
        assert 0 <= metrics["test/routing/domain_nmi"] <= 1
        assert any(k.startswith("test/routing/net.adaptation/domain=") for k in metrics)
    assert "best-epoch" in metrics["best_model_path"]


def test_home_tests_again_from_its_checkpoint_and_predicts(tmp_path):
    main(["fit", "--task", "ctr/home", "--trainer.default_root_dir", str(tmp_path), *SMALL, *QUIET])
    fit = _metrics(tmp_path)
    main(["test", "--task", "ctr/home", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path",
          fit["best_model_path"], "--data.num_samples", "4000", *QUIET])
    assert _metrics(tmp_path)["test/auc_click"] == pytest.approx(fit["test/auc_click"], abs=1e-6)
    main(["predict", "--task", "ctr/home", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path",
          fit["best_model_path"], "--data.num_samples", "4000", *QUIET])
    predictions = torch.load(tmp_path / "predictions.pt")
    assert predictions["prob"].shape[1] == 2 and ((predictions["prob"] >= 0) & (predictions["prob"] <= 1)).all()
    # the checkpoint alone rebuilds the model (its sizes and network are its own arguments): no data module, no CLI
    model = CTRTask.load_from_checkpoint(fit["best_model_path"]).eval()
    packaged = yaml.safe_load((CONFIGS / "home.yaml").read_text())["data"]["init_args"]
    data = CTRData(**{**packaged, "num_samples": 4000})  # the fit's own data settings (vocabulary, bins)
    data.setup()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(model(batch)) for batch in data.predict_dataloader()])
    torch.testing.assert_close(probs, predictions["prob"])


def test_gauc_is_reported_when_a_user_column_is_named(tmp_path):
    main(["fit", "--task", "ctr/mmoe", "--trainer.default_root_dir", str(tmp_path), "--data.user", "user", *SMALL,
          *QUIET])
    assert 0.0 <= _metrics(tmp_path)["test/gauc_click"] <= 1.0


@pytest.mark.skipif(not (SHARED / "adult" / "adult.data.gz").is_file(), reason="shared data not present")
@pytest.mark.parametrize("task", ["ctr/mmoe", "ctr/adaptdhm"])
def test_adult_preset_trains_both_census_tasks(task, tmp_path):
    main(["fit", "--task", task, "--data.path", str(SHARED / "adult" / "adult.data.gz"), "--data.preset", "adult",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1", *QUIET])
    metrics = _metrics(tmp_path)
    assert metrics["test/auc_income"] > 0.75 and metrics["test/auc_never_married"] > 0.75


def test_home_categories_naming_an_unknown_task_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--task", "ctr/home", "--trainer.default_root_dir", str(tmp_path), *SMALL,
              "--model.init_args.network.init_args.categories", "[[click], [cart]]", *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "cart" in err and "Traceback" not in err
