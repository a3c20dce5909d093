"""CTR data: the generator's known structure, the presets on the shared samples, encoding rules, and clear errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from moezoo.errors import MoezooError
from moezoo.tasks.ctr import synthetic
from moezoo.tasks.ctr.data import CTRData
from moezoo.tasks.ctr.presets import AITM_COLUMNS, read_ali_ccp

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "ctr"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not present")


def _setup(**kw):
    data = CTRData(**kw)
    data.setup()
    return data


def test_generator_is_seeded_and_has_the_documented_rates_and_oracle_auc():
    table, truth = synthetic.generate(100_000, 3, seed=0)
    again, _ = synthetic.generate(100_000, 3, seed=0)
    pd.testing.assert_frame_equal(table, again)
    assert 0.2 < table["click"].mean() < 0.3 and 0.03 < table["purchase"].mean() < 0.06
    oracle = synthetic.oracle_auc(table, truth)
    assert oracle["click"] == pytest.approx(0.848, abs=0.002) and oracle["purchase"] == pytest.approx(0.871, abs=0.002)
    counts = table["domain"].value_counts()
    assert counts["domain_0"] > counts["domain_1"] > counts["domain_2"]


def test_generator_domains_depend_on_different_fields():
    own = [set(synthetic.domain_fields(d)[0]) for d in range(3)]
    assert own[0] != own[1] and own[1] != own[2] and own[0] != own[2]
    table, truth = synthetic.generate(60_000, 3, seed=1)
    logit = np.log(truth["p_click"] / (1 - truth["p_click"]))
    # a field a domain uses explains its click logit there, and not in a domain that ignores it
    for field in (0, 6):  # c0 only domain 0 uses, c6 only domain 1 (few values: well estimated means)
        name = synthetic.CATEGORICAL[field]
        spread = {d: logit[table["domain"] == f"domain_{d}"].groupby(table[name]).mean().std() for d in range(3)}
        users = [d for d in range(3) if field in synthetic.domain_fields(d)[0]]
        others = [d for d in range(3) if d not in users]
        assert min(spread[d] for d in users) > 2 * max(spread[d] for d in others)


def test_default_data_module_yields_batches_of_every_field():
    data = _setup(num_samples=5000, batch_size=64)
    assert data.task_names == ["click", "purchase"] and data.domain_names == ["domain_0", "domain_1", "domain_2"]
    assert data.cardinalities[:3] == [21, 51, 101], "every value of the small fields occurs in training"
    assert all(seen <= n + 1 for seen, n in zip(data.cardinalities, synthetic.CARDINALITIES))
    batch = next(iter(data.train_dataloader()))
    assert batch["categorical"].shape == (64, 8) and batch["numeric"].shape == (64, 4)
    assert batch["labels"].shape == (64, 2) and batch["domain"].dtype == torch.long
    assert {len(rows) for rows in data.splits.values()} == {3500, 500, 1000}


@needs_shared
def test_adult_preset_is_the_standard_split_with_the_census_tasks_and_no_leaking_column():
    data = _setup(path=str(SHARED / "adult" / "adult.data.gz"), preset="adult")
    assert data.task_names == ["income", "never_married"]
    assert len(data.splits["test"]) == 16281 and len(data.splits["train"]) + len(data.splits["val"]) == 32561
    train_val = data.splits["train"].tensors["labels"].sum(0) + data.splits["val"].tensors["labels"].sum(0)
    assert train_val.tolist() == [7841, 10683]
    assert data.splits["test"].tensors["labels"].sum(0).tolist() == [3846, 5434]
    features = data.categorical_names + data.numeric_names
    assert not {"income", "marital-status", "relationship"} & set(features)


CASES = [
    ("census-income", "census_income_kdd/deepctr_census-income.sample.gz", None, 2),
    ("census-income", "census_income_kdd/rechub_census_income_train_sample.csv.gz",
     "census_income_kdd/rechub_census_income_test_sample.csv.gz", 2),
    ("ali-ccp", "ali_ccp/rechub_ali_ccp_train_sample.csv.gz", "ali_ccp/rechub_ali_ccp_test_sample.csv.gz", 2),
    ("aliexpress", "aliexpress/rechub_aliexpress_train_sample.csv.gz",
     "aliexpress/rechub_aliexpress_test_sample.csv.gz", 2),
    ("aliexpress", "aliexpress/fuxictr_tiny_mtl_train.csv.gz", "aliexpress/fuxictr_tiny_mtl_test.csv.gz", 2),
    ("criteo", "criteo/deepctr_criteo_sample.txt.gz", None, 1),
    ("criteo", "criteo/rechub_criteo_sample.csv.gz", None, 1),
    ("avazu", "avazu/deepctr_avazu_sample.txt.gz", None, 1),
    ("avazu", "avazu/rechub_avazu_train_sample.csv.gz", "avazu/rechub_avazu_test_sample.csv.gz", 1),
]


@needs_shared
@pytest.mark.parametrize("preset,path,test,tasks", CASES, ids=[f"{c[0]}-{Path(c[1]).name[:6]}" for c in CASES])
def test_every_preset_reads_its_shared_samples(preset, path, test, tasks):
    data = _setup(path=str(SHARED / path), preset=preset, test_path=str(SHARED / test) if test else None,
                  batch_size=8)
    batch = next(iter(data.test_dataloader()))
    assert batch["labels"].shape == (8, tasks) and set(batch["labels"].unique().tolist()) <= {0.0, 1.0}
    assert batch["categorical"].shape[1] == len(data.cardinalities) > 0
    assert (batch["categorical"] < torch.tensor(data.cardinalities)).all()


@needs_shared
def test_aitm_test_file_without_a_header_is_read_with_the_train_files_columns():
    frame = read_ali_ccp(SHARED / "ali_ccp" / "paddlerec_aitm_test.csv.gz")
    assert list(frame.columns) == AITM_COLUMNS and len(frame) == 50


def _write(tmp_path, frame, name="table.csv"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def _frame(rows=40):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"city": rng.choice(["a", "b", "c"], rows), "price": rng.random(rows) * 100,
                         "clicked": rng.integers(0, 2, rows), "country": rng.choice(["x", "y"], rows),
                         "who": rng.integers(0, 5, rows)})


def test_parquet_and_gzipped_csv_read_the_same_with_an_expression_label(tmp_path):
    frame = _frame()
    spec = {"labels": ["clicked", "price > 50"], "categorical": ["city"], "numeric": ["price"], "domain": "country",
            "user": "who", "split_seed": 3}
    parquet = _setup(path=_write(tmp_path, frame, "t.parquet"), **spec)
    gz = _setup(path=_write(tmp_path, frame, "t.csv.gz"), **spec)
    assert parquet.task_names == ["clicked", "price_gt_50"]
    for split in ("train", "val", "test"):
        for key, value in parquet.splits[split].tensors.items():
            torch.testing.assert_close(value, gz.splits[split].tensors[key], msg=key)
    assert parquet.has_user and "user" in next(iter(parquet.train_dataloader()))


def test_unseen_and_rare_categories_map_to_the_reserved_index(tmp_path):
    train = pd.DataFrame({"c": ["a", "a", "b", None], "y": [0, 1, 0, 1]})
    test = pd.DataFrame({"c": ["a", "b", "z", None], "y": [1, 0, 1, 0]})
    data = _setup(path=_write(tmp_path, train, "train.csv"), test_path=_write(tmp_path, test, "test.csv"),
                  labels=["y"], categorical=["c"], numeric=[], val_fraction=0.0, min_count=2)
    assert data.splits["test"].tensors["categorical"][:, 0].tolist() == [1, 0, 0, 0]
    hashed = _setup(path=_write(tmp_path, train, "train.csv"), test_path=_write(tmp_path, test, "test.csv"),
                    labels=["y"], categorical=["c"], numeric=[], val_fraction=0.0, hash_buckets=7)
    codes = hashed.splits["test"].tensors["categorical"][:, 0]
    assert hashed.cardinalities == [8] and codes[3] == 0 and (codes[:3] >= 1).all() and (codes <= 7).all()
    assert codes[0] == hashed.splits["train"].tensors["categorical"][0, 0], "a stable hash"


def test_numeric_transforms_standardise_log_and_bucketize(tmp_path):
    frame = pd.DataFrame({"n": [0.0, 1.0, 3.0, 7.0, None, 15.0] * 10, "y": [0, 1] * 30})
    path = _write(tmp_path, frame)
    standard = _setup(path=path, labels=["y"], categorical=[], numeric=["n"], val_fraction=0.0, test_fraction=0.0)
    values = standard.splits["train"].tensors["numeric"][:, 0]
    observed = values[torch.tensor(frame["n"].notna().to_numpy())]
    assert abs(float(observed.mean())) < 1e-5 and (values[torch.tensor(frame["n"].isna().to_numpy())] == 0).all()
    log = _setup(path=path, labels=["y"], categorical=[], numeric=["n"], val_fraction=0.0, test_fraction=0.0,
                 numeric_transform="log")
    raw = np.log1p(frame["n"].dropna().to_numpy())
    expected = (raw - raw.mean()) / raw.std()
    torch.testing.assert_close(log.splits["train"].tensors["numeric"][torch.tensor(frame["n"].notna().to_numpy()), 0],
                               torch.tensor(expected, dtype=torch.float))
    buckets = _setup(path=path, labels=["y"], categorical=[], numeric=["n"], val_fraction=0.0, test_fraction=0.0,
                     numeric_transform="bucketize", num_buckets=4)
    codes = buckets.splits["train"].tensors["categorical"][:, 0]
    assert buckets.numeric_names == [] and buckets.categorical_names == ["n_bucket"]
    assert codes[4] == 0 and (codes[[0, 1, 2, 3, 5]].diff() >= 0).all()


@pytest.mark.parametrize("spec,message", [
    ({"preset": "movielens"}, "unknown preset 'movielens'"),
    ({}, "--data.preset NAME or the labels"),
    ({"labels": ["clicked"], "categorical": ["town"]}, "no column 'town'"),
    ({"labels": ["clicked"], "categorical": ["city"], "numeric": ["city"]}, "'city' is named twice"),
    ({"labels": ["clicked"], "categorical": ["clicked"]}, "'clicked' is a label"),
    ({"labels": ["who"], "categorical": ["city"]}, "label column 'who' must hold 0/1"),
    ({"labels": ["price +"], "categorical": ["city"]}, "'price +' is neither a column nor an expression"),
    ({"labels": ["price * 2"], "categorical": ["city"]}, "must be a 0/1 column or a boolean expression"),
    ({"labels": ["clicked"], "numeric": ["city"]}, "numeric column 'city' holds a non-number"),
    ({"labels": ["clicked"], "val_fraction": 0.5, "test_fraction": 0.5}, "leave no training rows"),
])
def test_bad_specs_are_clear_one_line_errors(tmp_path, spec, message):
    with pytest.raises(MoezooError, match=message.replace("(", r"\(").replace("+", r"\+").replace("*", r"\*")):
        _setup(path=_write(tmp_path, _frame()), **spec)


def test_missing_file_missing_label_and_unknown_test_domain_name_what_is_wrong(tmp_path):
    with pytest.raises(MoezooError, match="no such file"):
        _setup(path=str(tmp_path / "nope.csv"), labels=["y"])
    frame = _frame()
    frame.loc[3, "clicked"] = None
    with pytest.raises(MoezooError, match="'clicked' has 1 missing values"):
        _setup(path=_write(tmp_path, frame), labels=["clicked"], categorical=["city"])
    train, test = _frame(), _frame()
    test.loc[0, "country"] = "w"
    with pytest.raises(MoezooError, match="domain 'w'"):
        _setup(path=_write(tmp_path, train, "a.csv"), test_path=_write(tmp_path, test, "b.csv"), labels=["clicked"],
               categorical=["city"], domain="country")
