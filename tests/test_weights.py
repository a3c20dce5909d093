"""Registered weights through a Hub the test starts itself (127.0.0.1, ``HF_ENDPOINT``): `moezoo weights`,
`moezoo download` (sha256 checked, a bad file deleted), the offline cache, `create_model` and `--weights`, each run as a
user runs it (the console script or a fresh Python, with the environment variables set)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from local_hub import COMMIT, LocalHub

from moezoo.hub import CONFIG_NAME, WEIGHTS_NAME
from moezoo.tasks.image_classification import ImageClassifier
from moezoo.weights import sha256_of

SCRIPT = Path(sys.executable).with_name("moezoo")


@pytest.fixture
def published(tmp_path):
    """A tiny digits MoE-ViT published as lab/digits-tiny on a local hub, and a registry naming it."""
    torch.manual_seed(0)
    model = ImageClassifier(embed_dim=32, depth=2, num_heads=2).eval()
    model.hub_task = "image-classification"
    repo = tmp_path / "hub" / "lab" / "digits-tiny"
    model.save_pretrained(repo)
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"digits-tiny": {
        "task": "image-classification", "repo": "lab/digits-tiny", "revision": COMMIT,
        "files": {name: sha256_of(repo / name) for name in (CONFIG_NAME, WEIGHTS_NAME)},
        "metrics": {"test/acc": 0.5}, "description": "a test set"}}))
    env = {**os.environ, "MOEZOO_WEIGHTS": str(registry), "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    with LocalHub(tmp_path / "hub") as hub:
        env["HF_ENDPOINT"] = hub.url
        yield {"model": model, "repo": repo, "env": env, "hub": hub, "tmp": tmp_path}


def _run(env, *args, python=False):
    command = [sys.executable, "-c", args[0]] if python else [str(SCRIPT), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("moezoo: error:")]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    return lines[0]


def test_weights_are_listed_downloaded_checked_and_then_served_from_the_offline_cache(published):
    env, hub = published["env"], published["hub"]
    code, out, err = _run(env, "weights")
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("digits-tiny ")]  # after the packaged ones
    assert line.split() == ["digits-tiny", "image-classification", f"lab/digits-tiny@{COMMIT[:12]}", "test/acc", "0.5"]

    code, out, err = _run(env, "download", "digits-tiny")
    assert code == 0, err[-3000:]
    folder = Path(out.strip())
    assert folder.is_relative_to(published["tmp"] / "hf" / "hub") and folder.name == COMMIT
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (folder / name).read_bytes() == (published["repo"] / name).read_bytes()
    assert hub.gets() == 2

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    code, out, err = _run(offline, "download", "digits-tiny")
    assert code == 0 and Path(out.strip()) == folder, err[-3000:]
    assert hub.gets() == 2, "served from the cache, nothing fetched"


def test_create_model_rebuilds_the_published_model_bit_for_bit(published, tmp_path):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    script = (f"import torch, moezoo; m = moezoo.create_model('digits-tiny', pretrained=True); "
              f"print(type(m).__name__, m.hub_task, m.training); "
              f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r}); "
              f"r = moezoo.create_model('digits-tiny', pretrained=False); "
              f"print(any(not torch.equal(a, b) for a, b in zip(r.state_dict().values(), m.state_dict().values())))")
    code, out, err = _run(published["env"], script, python=True)
    assert code == 0, err[-3000:]
    assert out.split() == ["ImageClassifier", "image-classification", "False", "True"], "fresh weights without"
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), published["model"](x))


def test_a_tampered_file_is_deleted_and_named_and_an_unknown_name_lists_the_known_ones(published):
    env = published["env"]
    weights = published["repo"] / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # the hub now serves other bytes
    code, _, err = _run(env, "download", "digits-tiny")
    line = _one_error(err)
    assert code == 2 and line.startswith(f"moezoo: error: weights digits-tiny: {WEIGHTS_NAME} has sha256 "), line
    assert "the registry says" in line and "was deleted" in line
    blobs = list((published["tmp"] / "hf" / "hub").rglob("blobs/*"))
    assert sha256_of(weights) not in {b.name for b in blobs}, "the bad file is not left in the cache"
    code, _, err = _run(env, "download", "digits-tiyn")
    line = _one_error(err)
    assert code == 2 and line.startswith("moezoo: error: unknown weights 'digits-tiyn'. Did you mean 'digits-tiny'? "
                                         "Known weights: "), line
    assert "digits-tiny" in line.split("Known weights: ")[1] and line.endswith("(see `moezoo weights`)")


def test_fit_and_test_start_from_registered_weights_and_refuse_another_tasks(published, tmp_path):
    env = published["env"]
    run = tmp_path / "run"
    code, _, err = _run(env, "test", "--task", "image-classification", "--weights", "digits-tiny",
                        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run))
    assert code == 0, err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["weights"].endswith(COMMIT)
    code, _, err = _run(env, "test", "--weights", str(published["repo"]), "--trainer.enable_progress_bar", "false",
                        "--trainer.default_root_dir", str(tmp_path / "folder-run"))
    assert code == 0, err[-3000:]
    again = json.loads((tmp_path / "folder-run" / "metrics.json").read_text())
    assert again["test/acc"] == metrics["test/acc"], "the folder and the registered name are the same weights"
    from moezoo.tasks.image_classification import ImageClassificationData

    data = ImageClassificationData()
    data.setup()
    correct = total = 0
    with torch.no_grad():
        for images, labels in data.test_dataloader():
            correct += (published["model"](images).argmax(-1) == labels).sum().item()
            total += len(labels)
    assert metrics["test/acc"] == pytest.approx(correct / total), "the test ran the published model"

    code, _, err = _run(env, "fit", "--task", "dit/tc-moe", "--weights", "digits-tiny")
    assert code == 2 and _one_error(err) == ("moezoo: error: --weights digits-tiny: these are weights of "
                                             "image-classification, not of --task dit/tc-moe")
