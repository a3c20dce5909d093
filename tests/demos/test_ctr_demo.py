"""The CTR demo: its form against the data module and the model, its gate read-out, gradio_client and the browser."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from moezoo.demos import build_demo
from moezoo.demos.ctr import MISSING, encode, load_fields, predict, probability_text
from moezoo.errors import MoezooError
from moezoo.moe import routing_stats

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ctr"
ROWS = [0, 7, 4321]


@pytest.fixture(scope="module")
def demo():
    return build_demo("ctr/mmoe")


@pytest.fixture(scope="module")
def fields(demo):
    return load_fields(demo[1].model)


def _model_of(variant: str, fields, **sizes):
    """A freshly initialised CTRTask of ``configs/ctr/<variant>.yaml`` with the generator's fields (or ``sizes``)."""
    from moezoo import hub

    config = yaml.safe_load((CONFIGS / f"{variant}.yaml").read_text())["model"]
    data = fields.data
    config["init_args"].update({"cardinalities": list(data.cardinalities), "num_numeric": len(data.numeric_names),
                                "tasks": list(data.task_names), "domains": list(data.domain_names), **sizes})
    if config["init_args"].get("numeric_embedding", "none") == "piecewise":  # bins are the model's own arguments
        config["init_args"]["numeric_bins"] = [[-2.0, 0.0, 2.0]] * config["init_args"]["num_numeric"]
    torch.manual_seed(0)
    model = hub.build_model(config)
    model.hub_task = f"ctr/{variant}"
    return model.eval()


def _expected(model, fields, index: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(model(fields.data.splits["test"][torch.tensor([index])]))[0]


@pytest.mark.parametrize("index", ROWS)
def test_a_test_row_gets_the_models_own_probabilities_and_its_encoded_row(demo, fields, index):
    model = demo[1].model
    result = predict(model, fields, fields.row(index))
    encoded = fields.data.splits["test"][torch.tensor([index])]
    for key in ("categorical", "numeric", "domain"):
        assert torch.equal(result["batch"][key], encoded[key]), key
    assert list(result["probs"]) == ["click", "purchase"]
    assert list(result["probs"].values()) == pytest.approx(_expected(model, fields, index).tolist(), abs=1e-7)
    assert result["notes"] == []


@pytest.mark.parametrize("index", ROWS)
def test_mmoe_gates_are_a_distribution_per_task_equal_to_the_cores_record(demo, fields, index):
    model = demo[1].model
    result = predict(model, fields, fields.row(index))
    assert set(result["gates"]) == {"net.experts"}  # the task gates are read from their shared experts' table
    domain = fields.row(index)["domain"]
    recorded = routing_stats(model)  # the last forward of each gate: the row's domain's
    for task, weights in result["gates"]["net.experts"].items():
        weights = torch.tensor(weights)
        assert len(weights) == model.net.experts.num_experts == 8
        assert (weights >= 0).all() and weights.sum().item() == pytest.approx(1.0, abs=1e-5)
        load = recorded[f"net.gates.{task}.domains.{domain}"]["load"]
        assert torch.allclose(weights, load, atol=1e-6)


@pytest.mark.parametrize("variant", ["ple", "home", "adaptdhm"])
def test_other_networks_from_a_hub_folder(variant, fields, tmp_path):
    model = _model_of(variant, fields)
    model.save_pretrained(tmp_path / variant)
    app, shown = build_demo(weights=str(tmp_path / variant))
    assert shown.task == f"ctr/{variant}"
    result = predict(shown.model, fields, fields.row(7))
    assert list(result["probs"].values()) == pytest.approx(_expected(shown.model, fields, 7).tolist(), abs=1e-6)
    for rows in result["gates"].values():
        for weights in rows.values():
            assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0, abs=1e-5)
    if variant == "ple":  # per level the task gates, below the last level the shared gate too
        assert set(result["gates"]) == {"net.experts.0", "net.experts.1", "net.shared_gates.0.domains.shared"}
        net = shown.model.net
        for t, task in enumerate(net.tasks):  # CGC: a task's gate mixes the shared experts and its own only
            others = set(range(len(result["gates"]["net.experts.0"][task]))) - set(net.allowed(t))
            assert all(result["gates"]["net.experts.0"][task][e] == 0 for e in others)
    elif variant == "home":
        assert {"net.task_experts", "net.global_gate.domains.all", "net.meta_gates.0.domains.all"} <= set(
            result["gates"])
        assert set(result["gates"]["net.task_experts"]) == {"click", "purchase"}
    else:  # one hard cluster
        assert sorted(result["gates"]["net.adaptation"]["weight"])[-1] == 1.0


def test_weights_of_other_data_are_refused_for_want_of_their_vocabularies(fields, tmp_path):
    model = _model_of("mmoe", fields, cardinalities=[5, 7], num_numeric=1)
    model.save_pretrained(tmp_path / "other")
    with pytest.raises(MoezooError, match=r"cardinalities \[5, 7\], 1 numeric.*cardinalities \[21, 51.*vocabularies"):
        build_demo(weights=str(tmp_path / "other"))


@pytest.mark.parametrize("field, value, reason", [
    ("c3", None, "field c3 is empty"),
    ("c3", "  ", "field c3 is empty"),
    ("n2", None, "field n2 is empty"),
    ("n2", "abc", r"field n2 is not a number \('abc'\)"),
    ("n2", math.inf, r"field n2 is not a finite number \(inf\)"),
    ("n2", math.nan, r"field n2 is not a finite number \(nan\)"),
    ("domain", "domain_9", "'domain_9' is not one of the data's domains"),
    ("domain", "", "field domain is empty"),
])
def test_bad_values_are_rejected_with_the_reason(fields, field, value, reason):
    values = {**fields.row(0), field: value}
    with pytest.raises(MoezooError, match=reason):
        encode(fields, values)


def test_unseen_categories_and_far_numbers_are_read_as_the_data_reads_them_and_said(fields):
    values = {**fields.row(0), "c0": "9999", "c5": MISSING, "n1": 500.0}
    batch, notes = encode(fields, values)
    assert batch["categorical"][0, 0] == 0 and batch["categorical"][0, 5] == 0  # the reserved index
    assert batch["numeric"][0, 1] == pytest.approx((500.0 - fields.data.numeric_stats["n1"][0])
                                                   / fields.data.numeric_stats["n1"][1])
    assert notes[0] == "c0 = '9999' is not in its vocabulary: the reserved index 0 (unseen values)"
    assert notes[1] == "c5 is missing: the reserved index 0"
    assert notes[2].startswith("n1 = 500 is 329 standard deviations above the training mean")
    assert encode(fields, {**fields.row(0), "c0": " 7 "})[0]["categorical"][0, 0] == fields.data.vocab["c0"]["7"]


def test_the_app_through_gradio_client(demo, fields, serve):
    from gradio_client import Client

    client = Client(serve(demo[0]), verbose=False)
    *form, status = client.predict(7, api_name="/test_row")
    assert status.startswith("Test row 7 of 20000 (domain_") and "true labels click" in status
    row = fields.row(7)
    assert form == [row[c] for c in fields.columns]
    probs, image, numbers, status = client.predict(*form, api_name="/predict")
    expected = _expected(demo[1].model, fields, 7).tolist()
    assert [r[0] for r in probs["data"]] == ["click", "purchase"]
    assert [r[1] for r in probs["data"]] == pytest.approx(expected, abs=1e-4)
    labels = fields.labels(7)
    assert [r[2] for r in probs["data"]] == [str(labels["click"]), str(labels["purchase"])]
    assert status.startswith(f"click {probability_text(expected[0])}, purchase {probability_text(expected[1])}. "
                             "Test row 7: true labels")
    assert set(numbers) == {"net.experts"} and sum(numbers["net.experts"]["click"]) == pytest.approx(1, abs=1e-3)
    assert np.asarray(Image.open(image)).ndim == 3
    changed = list(form)
    changed[fields.columns.index("c2")] = "3" if form[fields.columns.index("c2")] != "3" else "4"
    *_, status = client.predict(*changed, api_name="/predict")
    assert "Test row 7 with c2 changed" in status
    unseen = list(form)
    unseen[fields.columns.index("c0")] = "9999"
    probs, *_, status = client.predict(*unseen, api_name="/predict")
    assert "Note: c0 = '9999' is not in its vocabulary: the reserved index 0" in status and len(probs["data"]) == 2
    bad = list(form)
    bad[fields.columns.index("c3")] = ""
    *cleared, status = client.predict(*bad, api_name="/predict")
    assert status == "**Rejected:** field c3 is empty: pick one of its values"
    assert cleared[0]["data"] == [] and cleared[1:] == [None, None]  # a cleared table is an empty one


def test_the_page_in_a_browser(demo, fields, serve, page, tmp_path):
    page.goto(serve(demo[0]))
    page.locator("#row-index input").fill("12")
    page.locator("#test-row").click()
    page.locator("#status").get_by_text("Test row 12 of 20000").wait_for()
    c4 = page.locator("#field-c4 input")
    c4.fill("123")
    c4.press("Enter")
    page.locator("#predict").click()
    page.locator("#status").get_by_text("with c4 changed").wait_for()
    page.locator("#gates img").wait_for()
    values = {**fields.row(12), "c4": "123"}
    probs = predict(demo[1].model, fields, values)["probs"]
    status = page.locator("#status").inner_text()
    assert status.startswith(f"click {probability_text(probs['click'])}, "
                             f"purchase {probability_text(probs['purchase'])}.")
    shown = page.locator("#probs").inner_text().split()
    assert shown[shown.index("click") + 1] == f"{probs['click']:.4g}"
    assert shown[shown.index("purchase") + 1] == f"{probs['purchase']:.4g}"
    page.screenshot(path=tmp_path / "ctr.png", full_page=True)
    n0 = page.locator("#field-n0 input")
    n0.fill("")
    page.locator("#predict").click()
    page.locator("#status").get_by_text("Rejected: field n0 is empty").wait_for()
    page.screenshot(path=tmp_path / "ctr-rejected.png", full_page=True)


def test_a_model_trained_on_a_users_file_brings_its_vocabularies_to_the_demo(tmp_path):
    """`moezoo fit` on a CSV: the checkpoint holds the data's fitted encoders, `moezoo export` writes them to the
    folder's data.json, and the demo's form is that file's columns and vocabularies, read as training read them."""
    import json

    import pandas as pd

    from moezoo import hub
    from moezoo.cli import main
    from moezoo.tasks.ctr import CTRData

    rng = np.random.default_rng(0)
    rows = 400
    frame = pd.DataFrame({"city": rng.choice(["paris", "lyon", "nice"], rows), "price": rng.random(rows) * 100,
                          "country": rng.choice(["fr", "be"], rows), "clicked": rng.integers(0, 2, rows)})
    csv = tmp_path / "clicks.csv"
    frame.to_csv(csv, index=False)
    spec = ["--data.path", str(csv), "--data.labels", "[clicked]", "--data.categorical", "[city]",
            "--data.numeric", "[price]", "--data.domain", "country"]
    main(["fit", "--task", "ctr/mmoe", *spec, "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--data.batch_size", "64", "--trainer.default_root_dir", str(tmp_path / "run")])
    ckpt = json.loads((tmp_path / "run" / "metrics.json").read_text())["best_model_path"]
    assert hub.load_checkpoint(ckpt).hub_data_state["vocab"] == {"city": {"lyon": 1, "nice": 2, "paris": 3}}
    folder = hub.export_checkpoint(ckpt, tmp_path / "hub")
    assert (folder / "data.json").is_file()
    for shown in (build_demo(weights=str(folder))[1], build_demo(ckpt_path=ckpt)[1]):
        fields = load_fields(shown.model)
        assert fields.columns == ["city", "price", "country"] and fields.test is None
        assert fields.choices("city") == ["lyon", "nice", "paris"]
        data = CTRData(path=str(csv), labels=["clicked"], categorical=["city"], numeric=["price"], domain="country")
        data.setup()
        test = data._split(rows, False, "t")["test"]
        raw = frame.iloc[test[0]]
        result = predict(shown.model, fields, {"city": raw["city"], "price": float(raw["price"]),
                                               "country": raw["country"]})
        expected = {k: v[:1] for k, v in data.splits["test"].tensors.items() if k != "labels"}
        with torch.no_grad():
            want = torch.sigmoid(shown.model(expected))[0]
        assert result["probs"]["clicked"] == pytest.approx(float(want[0]), abs=1e-6)
    typical = fields.typical_row()  # the form's start: no test rows to load, so each field's first value and mean
    train_mean = frame.iloc[data._split(rows, False, "t")["train"]]["price"].mean()
    assert typical["city"] == "lyon" and typical["country"] == "be"
    assert typical["price"] == pytest.approx(train_mean)
