"""Hub folders: every landed family's model, trained by the CLI, exported, and rebuilt from its folder alone gives the
same outputs bit for bit; bad folders and checkpoints are one-line errors."""

import json
import sys

import pytest
import torch

from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.hub import CONFIG_NAME, WEIGHTS_NAME, export_checkpoint
from moezoo.tasks.ctr import CTRData
from moezoo.tasks.dit import DiffusionImageData, DiTTask
from moezoo.tasks.graph import GraphData
from moezoo.tasks.image_classification import ImageClassificationData, ImageClassifier
from moezoo.training.task import TaskModule

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

QUICK = ["--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]


def _image_outputs(model):
    data = ImageClassificationData()
    data.setup()
    images, _ = next(iter(data.test_dataloader()))
    return model(images)


def _dit_outputs(model):
    data = DiffusionImageData()
    data.setup()
    images, labels = next(iter(data.test_dataloader()))
    t = torch.linspace(0, 999, images.shape[0]).round()
    return model.model(images, t, labels).sample


def _graph_outputs(model):
    data = GraphData()
    data.setup()
    out = model(data.split_dataset("test")[0])  # Mowst: (weak logits, strong logits, confidence)
    return torch.cat([o.reshape(o.shape[0], -1) for o in (out if isinstance(out, tuple) else (out,))], -1)


def _ctr_outputs(model):
    data = CTRData()
    data.setup()
    return model(next(iter(data.test_dataloader())))


FAMILIES = {  # task: (extra flags, class, outputs of a test batch)
    "image-classification": (["--model.init_args.embed_dim", "32", "--model.init_args.depth", "2"], ImageClassifier,
                             _image_outputs),
    # without its EMA: a DiT folder holds the EMA weights, not the checkpoint's (tests/tasks/dit/test_dit_ema.py)
    "dit/tc-moe": (["--model.init_args.samples_per_class", "1", "--model.init_args.sample_steps", "1",
                    "--model.init_args.ema_decay", "null"], DiTTask, _dit_outputs),
    "graph/mowst-gcn": (["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1"], None, _graph_outputs),
    "ctr/mmoe": ([], None, _ctr_outputs),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny `moezoo fit` per family: {task: its run directory}."""
    runs = {}
    for task, (flags, _, _) in FAMILIES.items():
        run = tmp_path_factory.mktemp(task.replace("/", "-"))
        main(["fit", "--task", task, *QUICK, *flags, "--trainer.default_root_dir", str(run)])
        runs[task] = run
    return runs


@pytest.mark.parametrize("task", list(FAMILIES))
def test_an_exported_folder_rebuilds_the_model_without_data_and_gives_identical_outputs(task, trained, tmp_path,
                                                                                        capsys):
    _, cls, outputs = FAMILIES[task]
    record = json.loads((trained[task] / "metrics.json").read_text())
    assert record["task"] == task and record["command"].startswith(f"moezoo fit --task {task} ")
    best = record["best_model_path"]
    main(["export", "--ckpt_path", best, "--to", str(tmp_path / "folder")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "folder")
    data_state = {"data.json"} if task.startswith("ctr/") else set()  # CTR's fitted encoders travel with it
    assert {p.name for p in (tmp_path / "folder").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, "README.md", *data_state}
    config = json.loads((tmp_path / "folder" / CONFIG_NAME).read_text())
    assert config["moezoo"]["task"] == task and config["model"]["class_path"].startswith("moezoo.tasks.")
    card = (tmp_path / "folder" / "README.md").read_text()
    assert "library_name: moezoo" in card and f"moezoo fit --task {task}" in card and "test/" in card

    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    original = TaskModule.from_pretrained(tmp_path / "folder")  # the base class rebuilds any family
    assert original.hub_task == task and not original.training
    assert (original.hub_data_state is not None) == task.startswith("ctr/")
    reference = type(original).load_from_checkpoint(best, map_location="cpu").eval()  # Lightning's own way
    state = original.state_dict()
    assert state.keys() == checkpoint["state_dict"].keys()
    assert all(torch.equal(state[k], checkpoint["state_dict"][k]) for k in state)
    with torch.no_grad():
        torch.manual_seed(0)
        ours = outputs(original)
        torch.manual_seed(0)
        theirs = outputs(reference)
    assert torch.equal(ours, theirs), "bit for bit"
    if cls is not None:  # the family's class loads its own folders
        assert type(cls.from_pretrained(tmp_path / "folder")) is type(original)


def test_a_folder_of_another_family_is_refused_by_name(trained, tmp_path):
    record = json.loads((trained["dit/tc-moe"] / "metrics.json").read_text())
    export_checkpoint(record["best_model_path"], tmp_path / "dit")
    refused = r"holds a moezoo\.tasks\.dit\.DiTTask \(dit/tc-moe\), not a .*ImageClassifier"
    with pytest.raises(MoezooError, match=refused):
        ImageClassifier.from_pretrained(tmp_path / "dit")
    with pytest.raises(MoezooError, match="--task dit/promoe: .* was trained as dit/tc-moe"):
        export_checkpoint(record["best_model_path"], tmp_path / "x", task="dit/promoe")


def test_a_damaged_folder_or_checkpoint_is_one_line_naming_the_file(trained, tmp_path, capfd, monkeypatch):
    record = json.loads((trained["image-classification"] / "metrics.json").read_text())
    folder = export_checkpoint(record["best_model_path"], tmp_path / "folder")
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(MoezooError, match=f"{weights}: not a readable safetensors file"):
        ImageClassifier.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(MoezooError, match=f"{folder}: no {WEIGHTS_NAME}"):
        ImageClassifier.from_pretrained(folder)
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(MoezooError, match=f"{folder / CONFIG_NAME}: not a readable {CONFIG_NAME}"):
        ImageClassifier.from_pretrained(folder)

    other = json.loads((trained["ctr/mmoe"] / "metrics.json").read_text())
    state = torch.load(record["best_model_path"], map_location="cpu", weights_only=True)
    state["state_dict"] = torch.load(other["best_model_path"], map_location="cpu", weights_only=True)["state_dict"]
    torch.save(state, tmp_path / "mixed.ckpt")
    with pytest.raises(MoezooError, match=r"mixed\.ckpt: the weights do not fit .*ImageClassifier: \d+ missing"):
        export_checkpoint(tmp_path / "mixed.ckpt", tmp_path / "y")

    monkeypatch.setattr(sys, "argv", ["moezoo"])
    (tmp_path / "cut.ckpt").write_bytes(open(record["best_model_path"], "rb").read()[:1000])
    for args, expected in [
        (["--ckpt_path", str(tmp_path / "cut.ckpt"), "--to", str(tmp_path / "z")],
         f"moezoo: error: ckpt_path: cannot read checkpoint {tmp_path / 'cut.ckpt'} (truncated or not a checkpoint"),
        (["--to", str(tmp_path / "z")], "moezoo: error: export: the following arguments are required: --ckpt_path"),
        (["--ckpt_path", record["best_model_path"], "--to", "z", "--task", "image-clasification"],
         "moezoo: error: unknown task 'image-clasification'. Did you mean 'image-classification'?"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["export", *args])
        assert exit_.value.code == 2
        err = capfd.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith(expected), err


def test_a_model_built_in_python_saves_and_loads_and_one_with_an_object_argument_is_refused(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier(embed_dim=32, depth=2, num_heads=2).eval()
    model.save_pretrained(tmp_path / "py")
    loaded = ImageClassifier.from_pretrained(tmp_path / "py")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.hparams["_class_path"].endswith("ImageClassifier"), "hyper-parameters as the CLI gives them"
    with pytest.raises(MoezooError, match="from_pretrained: unexpected arguments num_classes"):
        ImageClassifier.from_pretrained(tmp_path / "py", num_classes=3)


def test_an_export_in_float16_halves_the_file_and_loads_back_into_the_float32_model(trained, tmp_path):
    from safetensors.torch import load_file

    best = json.loads((trained["image-classification"] / "metrics.json").read_text())["best_model_path"]
    main(["export", "--ckpt_path", best, "--to", str(tmp_path / "full")])
    main(["export", "--ckpt_path", best, "--to", str(tmp_path / "half"), "--dtype", "float16"])
    full, half = (tmp_path / n / WEIGHTS_NAME for n in ("full", "half"))
    assert half.stat().st_size < 0.6 * full.stat().st_size
    stored = load_file(half)
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    model = TaskModule.from_pretrained(tmp_path / "half")
    reference = TaskModule.from_pretrained(tmp_path / "full")
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32
            torch.testing.assert_close(value, reference.state_dict()[name].half().float(), rtol=0, atol=0)
    assert "stored in float16" in (tmp_path / "half" / "README.md").read_text()


def test_weights_saved_before_an_argument_existed_get_its_default_not_the_task_yaml(tmp_path):
    """ctr/mmoe's YAML now asks for piecewise numeric embeddings; a folder saved before `numeric_embedding` existed
    (no such key in its config.json) holds a model without them, and `--weights` must build that model."""
    run = tmp_path / "run"
    main(["fit", "--task", "ctr/mmoe", *QUICK, "--model.init_args.numeric_embedding", "none",
          "--trainer.default_root_dir", str(run)])
    best = json.loads((run / "metrics.json").read_text())["best_model_path"]
    main(["export", "--ckpt_path", best, "--to", str(tmp_path / "old")])
    config_file = tmp_path / "old" / CONFIG_NAME
    config = json.loads(config_file.read_text())
    for key in ("numeric_embedding", "numeric_bins"):
        del config["model"]["init_args"][key]
    config_file.write_text(json.dumps(config))
    main(["test", "--task", "ctr/mmoe", "--weights", str(tmp_path / "old"), *QUICK,
          "--trainer.default_root_dir", str(tmp_path / "test")])
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert 0.5 < metrics["test/auc_click"] <= 1.0
