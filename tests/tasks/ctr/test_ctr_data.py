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


# -- damaged files (issue #15): every reader checks its columns, labels and splits, one line naming the file -----------
def _adult_lines(rows=30):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        lines.append(", ".join([str(rng.integers(17, 90)), "Private", str(rng.integers(10**4, 10**6)), "Bachelors",
                                "13", ["Never-married", "Divorced"][i % 2], "Sales", "Husband", "White", "Male", "0",
                                "0", "40", "United-States", ["<=50K", ">50K"][(i // 2) % 2]]))
    return lines


def _adult(tmp_path, lines, name="adult.data"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _error(**kw):
    with pytest.raises(MoezooError) as error:
        _setup(**kw)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_valid_generated_adult_rows_load_with_both_tasks(tmp_path):
    data = _setup(path=str(_adult(tmp_path, _adult_lines())), preset="adult")
    assert data.task_names == ["income", "never_married"] and sum(len(s) for s in data.splits.values()) == 30


@pytest.mark.parametrize("fields", [10, 14, 17])
def test_an_adult_file_with_the_wrong_column_count_names_the_file_and_both_counts(tmp_path, fields):
    """10 columns used to train on an all-NaN income label (test AUC 0.0); 17 put two columns into the index."""
    lines = [", ".join((line.split(", ") + ["x", "y"])[:fields]) for line in _adult_lines()]
    path = _adult(tmp_path, lines)
    assert _error(path=str(path), preset="adult") == (f"{path}: the UCI adult layout has 15 columns (age, ..., "
                                                      f"income), this file has {fields}")


def test_an_adult_row_cut_short_is_a_missing_label_not_a_silent_zero(tmp_path):
    lines = _adult_lines()
    lines[7] = ", ".join(lines[7].split(", ")[:12])
    path = _adult(tmp_path, lines)
    assert _error(path=str(path), preset="adult") == (f"{path}: column 'income', which the preset's labels read, is "
                                                      "missing in 1 rows")


def test_a_third_label_value_is_an_error_naming_the_column_and_the_values_seen(tmp_path):
    lines = [line.replace("<=50K", "maybe") if i % 5 == 0 else line for i, line in enumerate(_adult_lines())]
    path = _adult(tmp_path, lines)
    assert _error(path=str(path), preset="adult") == (
        f"{path}: column 'income' must hold '<=50K' or '>50K' (the preset's labels), found 4 rows with other values; "
        "values seen: '<=50K', '>50K', 'maybe'")
    frame = _frame()
    frame.loc[[2, 5], "clicked"] = 2
    message = _error(path=_write(tmp_path, frame), labels=["clicked"], categorical=["city"])
    assert message.endswith("label column 'clicked' must hold 0/1, found 2 other values: 2")


def test_an_expression_label_over_a_column_with_missing_values_is_an_error(tmp_path):
    frame = _frame()
    frame.loc[4, "city"] = None
    path = _write(tmp_path, frame)
    assert _error(path=path, labels=["city == 'a'"], categorical=["country"]) == (
        f"{path}: label 'city_a' = \"city == 'a'\" reads column 'city', which has 1 missing values")


@pytest.mark.parametrize("rows,test_file,needed", [(1, False, 3), (2, False, 3), (1, True, 2)])
def test_too_few_rows_for_non_empty_splits_name_the_file_the_rows_and_the_fractions(tmp_path, rows, test_file,
                                                                                    needed):
    """A single-row file used to train with empty validation and test loaders."""
    path = _write(tmp_path, _frame(rows))
    test = _write(tmp_path, _frame(5), "test.csv") if test_file else None
    message = _error(path=path, test_path=test, labels=["clicked"], categorical=["city"])
    fractions = "val_fraction=0.1" + ("" if test_file else ", test_fraction=0.2")
    splits = "train/val" if test_file else "train/val/test"
    assert message.startswith(f"{path}: {rows} rows cannot be split into non-empty {splits} splits ({fractions})")
    assert f"give at least {needed} rows" in message


def test_small_files_get_at_least_one_row_in_every_split(tmp_path):
    data = _setup(path=_write(tmp_path, _frame(5)), labels=["clicked"], categorical=["city"])
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 3, "val": 1, "test": 1}


def test_a_label_of_one_class_only_is_an_error(tmp_path):
    frame = _frame()
    frame["clicked"] = 1
    path = _write(tmp_path, frame)
    assert _error(path=path, labels=["clicked"], categorical=["city"]) == (
        f"{path}: label 'clicked' is 1 in all 40 rows; a task needs rows of both classes")


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b"clicked,city\n", "the file has no data rows"),
    ("clicked,city\n1,é\n".encode("latin-1"), "not UTF-8 text (byte b'\\xe9': unexpected end of data); save it"),
    ("clicked,city\n1,a\n".encode("utf-16"), "not UTF-8 text (byte b'\\xff': invalid start byte)"),
    (b"clicked,city\n1,a,b\n0,b,c\n", "rows have more fields than the 2 columns of the CSV header line"),
    (b"\x1f\x8b\x08garbage", "cannot read it as CSV/Parquet data ("),
])
def test_unreadable_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    """An empty file's error did not name the file; a row longer than the header shifted the columns silently."""
    path = tmp_path / ("table.csv.gz" if content.startswith(b"\x1f\x8b") else "table.csv")
    path.write_bytes(content)
    assert _error(path=str(path), labels=["clicked"], categorical=["city"]).startswith(f"{path}: {message}")
    test = tmp_path / "empty_test.csv"
    test.write_bytes(b"")
    assert _error(path=_write(tmp_path, _frame()), test_path=str(test), labels=["clicked"],
                  categorical=["city"]) == f"{test}: the file is empty"


@pytest.mark.parametrize("value,transform,message", [
    (np.inf, "standard", "numeric column 'price' holds inf in 1 rows (values must be finite)"),
    (-np.inf, "log", "numeric column 'price' holds -inf in 1 rows (values must be finite)"),
    (1e308, "standard", "numeric column 'price' holds values up to 1e+308, too large to standardise; use "
                        "--data.numeric_transform log or bucketize"),
])
def test_infinite_or_unscalable_numbers_are_errors_naming_the_file_and_column(tmp_path, value, transform, message):
    frame = _frame()
    frame.loc[[3, 9][:1 if np.isinf(value) else 2], "price"] = value
    path = _write(tmp_path, frame)
    assert _error(path=path, labels=["clicked"], numeric=["price"], numeric_transform=transform) == f"{path}: {message}"
    if not np.isinf(value):  # log or buckets hold them
        data = _setup(path=path, labels=["clicked"], numeric=["price"], numeric_transform="log")
        assert torch.isfinite(data.splits["train"].tensors["numeric"]).all()


@pytest.mark.parametrize("preset,header,message", [
    ("ali-ccp", "0,1,2,3", "the header-less ali-ccp (AITM) layout has 20 columns (click, ..., 301), this file has 4"),
    ("criteo", "1\t2\t3", "the tab-separated criteo layout has 40 columns (label, ..., C26), this file has 3"),
    ("census-income", "1,2,3", "the raw census-income layout has 43 columns (row_id, ..., income_50k), this file has "
                               "3"),
])
def test_every_header_less_preset_checks_its_column_count(tmp_path, preset, header, message):
    path = tmp_path / "data.csv"
    path.write_text("\n".join([header] * 5) + "\n")
    assert _error(path=str(path), preset=preset) == f"{path}: {message}"


@needs_shared
def test_the_real_adult_test_file_passes_the_label_rule_with_its_trailing_full_stops():
    data = _setup(path=str(SHARED / "adult" / "adult.data.gz"), preset="adult", batch_size=4096)
    assert len(data.splits["test"]) == 16281


@pytest.mark.parametrize("options", [{"numeric_transform": "standard"}, {"numeric_transform": "log"},
                                     {"numeric_transform": "bucketize", "num_buckets": 4}, {"hash_buckets": 7}])
def test_the_fitted_encoders_round_trip_through_json_and_encode_rows_as_setup_did(tmp_path, options):
    import json

    frame = _frame(200)
    frame.loc[3, "city"] = None
    data = _setup(path=_write(tmp_path, frame), labels=["clicked"], categorical=["city"], numeric=["price"],
                  domain="country", user="who", **options)
    state = json.loads(json.dumps(data.state_dict()))  # plain values: JSON (data.json) and weights_only checkpoints
    assert state["moezoo_data"] == 1 and state["source"].endswith("table.csv")
    restored = CTRData()  # no file: the encoders alone
    restored.load_state_dict(state)
    assert restored.cardinalities == data.cardinalities and restored.domain_names == data.domain_names == ["x", "y"]
    rows = data._split(len(frame), False, "t")["test"]
    batch = restored.encode_rows(frame.iloc[rows].reset_index(drop=True))
    for key in ("categorical", "numeric", "domain"):
        torch.testing.assert_close(batch[key], data.splits["test"].tensors[key], msg=key)
    with pytest.raises(MoezooError, match="not a CTRData state of format 1"):
        CTRData().load_state_dict({"vocab": {}})
    with pytest.raises(MoezooError, match="no fitted encoders"):
        CTRData().encode_rows(frame)
