"""Sizes the data decides reach the model through the data module's own ``model_links``, declared by each family."""

import json
import textwrap

import pytest
import torch
import yaml

from moezoo.cli import main
from moezoo.registry import list_tasks
from moezoo.training.cli import declared_links

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", sorted(list_tasks()))
def test_every_task_links_what_its_data_module_declares(name):
    config = list_tasks()[name].config
    module, _, cls = yaml.safe_load(config.read_text())["data"]["class_path"].rpartition(".")
    declared = getattr(__import__(module, fromlist=[cls]), cls).model_links
    assert declared, f"{name}: its data module declares no model_links"
    assert declared_links(["fit", "--config", str(config)]) == declared


def test_a_class_path_flag_names_the_data_class_and_an_unknown_one_is_left_to_the_parser():
    config = str(list_tasks()["image-classification"].config)
    graph = declared_links(["fit", "--config", config, "--data.class_path", "moezoo.tasks.graph.data.GraphData"])
    from moezoo.tasks.graph.data import GraphData

    assert graph == GraphData.model_links, "the class the flag names replaces the config's: its links alone"
    assert declared_links(["fit", "--data.class_path=no.such.Module"]) == {}
    assert declared_links(["fit", "--config", "/no/such/file.yaml"]) == {}


def test_a_users_own_data_module_declares_its_links_and_the_model_is_built_with_them(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(textwrap.dedent('''
        from moezoo.tasks.image_classification.data import ImageClassificationData

        class WideDigits(ImageClassificationData):
            """The digits with a 12-way head (two spare classes), declared under a name of its own."""

            model_links = {"head_width": "num_classes", "in_chans": "in_chans", "img_size": "img_size"}

            @property
            def head_width(self) -> int:
                return 12
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    main(["fit", "--task", "image-classification", "--data.class_path", "userdata.WideDigits",
          "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--model.init_args.embed_dim", "32",
          "--model.init_args.depth", "2", "--trainer.default_root_dir", str(run)])
    metrics = json.loads((run / "metrics.json").read_text())
    hparams = torch.load(metrics["best_model_path"], weights_only=False)["hyper_parameters"]
    assert hparams["num_classes"] == 12, "linked from head_width (the data's num_classes says 10)"
    head = torch.load(metrics["best_model_path"], weights_only=False)["state_dict"]
    assert [v.shape[0] for k, v in head.items() if k.endswith("head.weight")] == [12]
