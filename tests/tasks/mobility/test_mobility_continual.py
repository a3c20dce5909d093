"""MoveGCL's continual learning end to end on tiny generated data: a teacher on two cities, a third city added with
and without replay, the old cities tested before and after; and the distillation loss and replay against their
definitions."""

import json

import pytest
import torch
import torch.nn.functional as F

from moezoo.cli import main
from moezoo.tasks.mobility.continual import distillation_loss

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data.init_args.synthetic_users_per_city", "6", "--data.init_args.synthetic_days", "14",
        "--trainer.enable_progress_bar", "false", "--model.init_args.dim", "32", "--model.init_args.depth", "2"]
OLD, NEW = '["Compact", "Metro"]', '["Sprawl"]'


def metrics(root):
    return json.loads((root / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("continual")
    main(["fit", "--task", "mobility/movegcl", "--trainer.default_root_dir", str(root / "teacher"), *TINY,
          "--trainer.max_epochs", "3", "--data.init_args.cities", OLD])
    teacher = metrics(root / "teacher")["best_model_path"]
    for name, replay in (("replay", "true"), ("no-replay", "false")):
        main(["fit", "--task", "mobility/movegcl-continual", "--trainer.default_root_dir", str(root / name), *TINY,
              "--trainer.max_epochs", "2", "--model.init_args.teacher", teacher, "--model.init_args.replay", replay,
              "--data.init_args.vocabulary", teacher, "--data.init_args.cities", NEW])
        student = metrics(root / name)["best_model_path"]
        main(["test", "--task", "mobility/movegcl-continual", "--trainer.default_root_dir", str(root / f"{name}-old"),
              "--ckpt_path", student, *TINY, "--data.init_args.vocabulary", student, "--data.init_args.cities", OLD])
    return root, teacher


def test_a_city_is_added_with_new_experts_and_frozen_old_ones(runs):
    root, teacher_path = runs
    teacher = torch.load(teacher_path, weights_only=False)["state_dict"]
    student_path = metrics(root / "replay")["best_model_path"]
    student = torch.load(student_path, weights_only=False)
    state = student["state_dict"]
    w1 = "encoder.blocks.0.ffn.experts.w1"
    assert teacher[w1].shape[0] == 4 and state[w1].shape[0] == 5  # one new expert per layer
    for layer in ("encoder.blocks.0.ffn", "encoder.blocks.1.ffn"):
        old, new = teacher[f"{layer}.experts.w1"], state[f"{layer}.experts.w1"]
        kept = [e for e in range(4) if torch.equal(old[e], new[e])]
        assert kept, f"{layer}: the most-used experts of the old cities stay as the teacher had them"
        assert len(kept) < 5
    assert state["location.weight"].shape[0] > teacher["location.weight"].shape[0]  # the new city's locations
    assert student["MobilityData"]["cities"][:2] == ["Compact", "Metro"]  # old ids kept, the new city appended
    fit = metrics(root / "replay")
    assert "train/distill" in fit and "train/distill" not in metrics(root / "no-replay")
    assert {"test/acc1/Sprawl", "test/mrr"} <= fit.keys()


def test_the_old_cities_are_tested_before_and_after(runs):
    root, _ = runs
    before = metrics(root / "teacher")
    for name in ("replay", "no-replay"):
        after = metrics(root / f"{name}-old")
        assert {"test/acc1/Compact", "test/acc1/Metro"} <= after.keys()
        assert 0 <= after["test/acc1"] <= 1
    assert {"test/acc1/Compact", "test/acc1/Metro"} <= before.keys()


def test_continual_needs_its_teacher(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--task", "mobility/movegcl-continual", "--trainer.default_root_dir", str(tmp_path), *TINY])
    assert "model.teacher: the continual setting starts from the trained model" in capsys.readouterr().err


def test_distillation_is_kl_at_temperature_times_t_squared():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 3, 5), torch.randn(2, 3, 7)
    teacher[..., 0] = student[..., 0] = float("-inf")  # padding
    mask = torch.tensor([[True, True, False], [True, False, True]])
    got = distillation_loss(student, teacher, mask, temperature=2.0)
    t = F.softmax(teacher[mask] / 2, -1)
    s = F.log_softmax(student[mask] / 2, -1)[:, :5]
    expected = (t[:, 1:] * (t[:, 1:].log() - s[:, 1:])).sum(-1).mean() * 4
    torch.testing.assert_close(got, expected)
    assert torch.isfinite(got)
