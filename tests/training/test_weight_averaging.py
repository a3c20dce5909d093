"""A weight-averaging callback (moezoo's WarmupEMA on Lightning's WeightAveraging) through the CLI: the test after
fit scores the averaged weights that validation chose, the same as `moezoo test` on the best checkpoint."""

import json

import pytest
import torch

from moezoo.cli import main

QUIET = ["--trainer.enable_progress_bar", "false"]
RUN = ["--data.num_samples", "3000", "--data.batch_size", "256", "--trainer.max_epochs", "3", *QUIET]


def _metrics(root):
    return json.loads((root / "metrics.json").read_text())


def test_the_test_after_fit_scores_the_averaged_weights_of_the_best_checkpoint(tmp_path):
    # ctr/home's packaged config holds WarmupEMA (decay 0.995); 0.9 here so that 3 short epochs move it
    main(["fit", "--task", "ctr/home", "--trainer.callbacks.decay", "0.9", "--trainer.default_root_dir",
          str(tmp_path / "fit"), *RUN])
    fit = _metrics(tmp_path / "fit")
    best = fit["best_model_path"]
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    averaged, trained = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == trained.keys()
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged if averaged[k].is_floating_point())

    main(["test", "--task", "ctr/home", "--ckpt_path", best, "--trainer.default_root_dir", str(tmp_path / "ema"),
          *RUN])
    assert _metrics(tmp_path / "ema")["test/logloss_click"] == pytest.approx(fit["test/logloss_click"], abs=1e-6)

    # the trained (not averaged) weights of the same epoch score otherwise: the check above can tell the two apart
    checkpoint["state_dict"] = trained
    del checkpoint["current_model_state"], checkpoint["averaging_state"]
    torch.save(checkpoint, tmp_path / "trained.ckpt")
    main(["test", "--task", "ctr/home", "--ckpt_path", str(tmp_path / "trained.ckpt"), "--trainer.default_root_dir",
          str(tmp_path / "trained"), *RUN])
    assert _metrics(tmp_path / "trained")["test/logloss_click"] != pytest.approx(fit["test/logloss_click"], abs=1e-4)


def test_warmup_ema_follows_the_formula_step_by_step():
    from torch.optim.swa_utils import AveragedModel

    from moezoo.training import WarmupEMA
    from moezoo.training.averaging import warmup_decay

    assert warmup_decay(0.995, 1) == pytest.approx(2 / 11)  # the second update (the first copies)
    assert warmup_decay(0.995, 100) == pytest.approx(101 / 110)
    assert warmup_decay(0.995, 5000) == 0.995
    callback = WarmupEMA(decay=0.9)
    module = torch.nn.Linear(3, 2)
    averaged = AveragedModel(module, use_buffers=True, avg_fn=callback.average)
    expected = None
    for n in range(40):
        with torch.no_grad():
            module.weight.add_(torch.randn_like(module.weight))
        averaged.update_parameters(module)
        w = module.weight.detach().clone()
        if expected is None:
            expected = w  # the first update copies
        else:
            d = min(0.9, (1 + n) / (10 + n))  # n updates were made before this one
            expected = d * expected + (1 - d) * w
        assert torch.allclose(averaged.module.weight, expected, atol=1e-6), n


@pytest.mark.parametrize("decay", [0, 1, 1.5, True, "x"])
def test_warmup_ema_refuses_a_decay_outside_0_1(decay):
    from moezoo.errors import MoezooError
    from moezoo.training import WarmupEMA

    with pytest.raises(MoezooError, match="decay"):
        WarmupEMA(decay=decay)
