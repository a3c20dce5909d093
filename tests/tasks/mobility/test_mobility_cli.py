"""Mobility variants end to end through the CLI on small generated data: fit, test from the checkpoint, bf16, the
load by city, and one-line errors."""

import json

import pytest

from moezoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data.init_args.synthetic_users_per_city", "6", "--data.init_args.synthetic_days", "14",
        "--trainer.enable_progress_bar", "false"]
SMALL = ["--model.init_args.dim", "32", "--model.init_args.depth", "1"]


def fit(tmp_path, variant, *extra):
    main(["fit", "--task", f"mobility/{variant}", "--trainer.default_root_dir", str(tmp_path), *TINY, *extra])
    return json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize("variant", ["dense", "moe", "movegcl", "trajmoe"])
def test_transformer_variants_fit_and_test(tmp_path, variant):
    metrics = fit(tmp_path, variant, "--trainer.max_epochs", "2", *SMALL)
    assert {"test/acc1", "test/acc5", "test/acc10", "test/mrr", "test/acc1/Compact", "test/acc1/Sprawl"} <= \
        metrics.keys()
    assert 0 <= metrics["test/acc1"] <= metrics["test/acc5"] <= metrics["test/acc10"] <= 1
    if variant != "dense":
        layer = "encoder.blocks.0.ffn"
        assert sum(metrics[f"test/routing/{layer}/city=Metro/e{e}"] for e in range(4)) == pytest.approx(1.0)
        assert 0 <= metrics["test/routing/city_nmi"] <= 1
    main(["test", "--task", f"mobility/{variant}", "--trainer.default_root_dir", str(tmp_path / "again"),
          "--ckpt_path", metrics["best_model_path"], *TINY])
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["test/acc1"] == pytest.approx(metrics["test/acc1"])


def test_markov_baseline_counts_once_and_tests_from_its_checkpoint(tmp_path):
    metrics = fit(tmp_path, "markov")
    assert metrics["epochs"] == 1 and metrics["test/acc1"] > 0.1  # routines are predictable
    assert metrics["test/acc1/Compact"] > metrics["test/acc1/Sprawl"]  # the routine city beats the exploring one
    main(["test", "--task", "mobility/markov", "--trainer.default_root_dir", str(tmp_path / "again"),
          "--ckpt_path", metrics["best_model_path"], *TINY])
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["test/acc1"] == pytest.approx(metrics["test/acc1"])


def test_movegcl_trains_under_bf16_autocast(tmp_path):
    metrics = fit(tmp_path, "movegcl", "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed", *SMALL)
    assert metrics["test/loss"] == metrics["test/loss"]  # finite, not NaN


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    for args, message in ((["--data.init_args.format", "csv"], "data.format: 'csv' is not one of"),
                          (["--data.init_args.format", "getnext"], "data.path: the getnext format needs the file"),
                          (["--data.init_args.format", "getnext", "--data.init_args.path", str(tmp_path / "no.csv")],
                           "does not exist")):
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--task", "mobility/dense", "--trainer.default_root_dir", str(tmp_path), *args])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


SHARED = __import__("pathlib").Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mobility"


@pytest.mark.skipif(not SHARED.exists(), reason="the shared real data is not here")
@pytest.mark.parametrize("variant", ["markov", "movegcl"])
def test_real_foursquare_nyc_through_the_cli(tmp_path, variant):
    """GETNext's NYC val + test files (21,406 TSMC2014 check-ins), re-split chronologically per user."""
    files = [str(SHARED / "foursquare_nyc_getnext" / f"NYC_{s}.csv.gz") for s in ("val", "test")]
    extra = ["--trainer.max_epochs", "1", *SMALL] if variant != "markov" else []
    main(["fit", "--task", f"mobility/{variant}", "--trainer.default_root_dir", str(tmp_path),
          "--data.init_args.format", "getnext", "--data.init_args.path", json.dumps(files),
          "--data.init_args.city", "NYC", "--data.init_args.cache", "false", "--trainer.enable_progress_bar", "false",
          *extra])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 < metrics["test/acc1"] <= metrics["test/acc5"] <= 1
    if variant == "markov":
        assert metrics["test/acc1"] > 0.1  # the classic baseline is strong on check-ins
