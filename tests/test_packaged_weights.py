"""The weights shipped in the package: listed, checked by sha256, and measuring what the registry says when a user
tests them (`moezoo test --weights NAME`, in-process) or builds them (`moezoo.create_model`)."""

import json

import pytest

import moezoo
from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.weights import download, list_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PACKAGED = {name: w for name, w in list_weights().items() if w.path}


def test_every_landed_family_ships_small_checked_weights():
    families = {w.task.split("/")[0] for w in PACKAGED.values()}
    assert families == {"image-classification", "graph", "ctr", "dit", "acoustic", "deweather", "vl", "mobility"}
    for name, weights in PACKAGED.items():
        folder = download(name)  # checks every sha256
        assert (folder / "model.safetensors").stat().st_size < 7e6, "a few MB at most"
        assert weights.metrics and weights.description


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_weights_measure_what_the_registry_says(name, tmp_path):
    weights = PACKAGED[name]
    main(["test", "--weights", name, "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key, value in weights.metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-4), key
    model = moezoo.create_model(name)
    assert model.hub_task == weights.task and not model.training


def test_a_packaged_file_that_does_not_match_its_sha256_is_named(monkeypatch):
    name = sorted(PACKAGED)[0]
    weights = PACKAGED[name]
    broken = type(weights)(**{**weights.__dict__, "files": {**weights.files, "model.safetensors": "0" * 64}})
    monkeypatch.setattr("moezoo.weights.list_weights", lambda: {name: broken})
    with pytest.raises(MoezooError, match=rf"weights {name}: packaged .*model\.safetensors has sha256 [0-9a-f]{{64}}, "
                                          "the registry says 0{64} \\(reinstall moezoo\\)"):
        download(name)
