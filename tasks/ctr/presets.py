"""Presets for the public CTR / multi-task sets: how to read each file layout, its tasks, fields and domain.

A preset names its label definitions (a 0/1 column or a boolean pandas expression), categorical and numeric fields,
an optional domain column, and a reader that turns the file into a DataFrame (layouts detected from the first line).

- ``adult``: UCI Adult (no header, ", "-separated, ``?`` missing; ``adult.test`` starts with a junk line and ends
  its labels with "."). The MMoE paper's census tasks: ``income`` (> 50K) and ``never_married``; ``income``,
  ``marital-status`` and ``relationship`` (Husband/Wife/Own-child give marital status away) are not features.
  A sibling ``adult.test[.gz]`` is the test split.
- ``census-income``: UCI Census-Income (KDD), the MMoE/PLE set: DeepCTR's raw layout (no header: a row id and the 42
  columns) or torch-rechub's preprocessed one (header; ``income`` and ``marital status`` already 0/1).
- ``ali-ccp``: torch-rechub's layout (``click``, ``purchase``; 23 id fields, 8 dense ``D*`` fields; scenario ``301``
  as the domain) or PaddleRec AITM's (20 integer columns; its test file has no header).
- ``aliexpress``: ``categorical_1..16``, ``numerical_1..63``, tasks ``ctr`` (click) and ``ctcvr`` (click and
  conversion); ``search_id`` dropped.
- ``criteo``: ``label``, ``I1..I13`` (log-transformed counts), ``C1..C26``: CSV with a header, or the original
  header-less tab-separated ``train.txt``.
- ``avazu``: Kaggle's raw layout (``id`` dropped; ``hour`` YYMMDDHH becomes ``hour_of_day`` and ``weekday``) or
  reczoo's preprocessed ``label, feat_1..feat_22``.
"""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from moezoo.errors import MoezooError

ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income"]
KDD_COLUMNS = ["age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
               "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
               "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends",
               "tax_filer_stat", "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
               "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt",
               "num_emp", "fam_under_18", "country_father", "country_mother", "country_self", "citizenship",
               "own_or_self", "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k"]
KDD_NUMERIC = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp",
               "weeks_worked"]
RECHUB_KDD_NUMERIC = ["age", "wage per hour", "capital gains", "capital losses", "divdends from stocks",
                      "num persons worked for employer", "weeks worked in year"]
ALI_CCP_SPARSE = ["101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                  "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14"]
AITM_COLUMNS = ["click", "purchase", "101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206",
                "207", "216", "508", "509", "702", "853", "301"]
AVAZU_RAW = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
             "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
             "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]


@dataclass
class Preset:
    """How to read one public set: reader(path) -> DataFrame, then a spec over its columns.

    ``label_values`` names the columns the label expressions read and the values each may hold (the rule that maps
    them to 0/1): any other value, or a missing one, is an error rather than a silent 0.
    """

    read: Callable[[Path], pd.DataFrame]
    labels: dict[str, str]  # task name -> 0/1 column or boolean expression
    categorical: list[str] | Callable[[pd.DataFrame], list[str]]
    numeric: list[str] | Callable[[pd.DataFrame], list[str]] = field(default_factory=list)
    domain: str | None = None
    numeric_transform: str = "standard"
    test_file: Callable[[Path], Path | None] = lambda path: None
    label_values: dict[str, tuple] = field(default_factory=dict)


def first_line(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", errors="replace") as f:
        return f.readline()


def read_csv(path: Path, layout: str, columns: list[str] | None = None, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` that checks the number of fields: a header-less layout's ``columns`` exactly, and no row
    longer than the header (pandas would silently turn the surplus leading fields into the index)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        frame = pd.read_csv(path, header=None if columns else "infer", index_col=False, **kwargs)
    if any("does not match length of data" in str(warning.message) for warning in caught):
        raise MoezooError(f"{path}: rows have more fields than the {frame.shape[1]} columns of the {layout} "
                          "header line")
    if columns is not None:
        if frame.shape[1] != len(columns):
            raise MoezooError(f"{path}: the {layout} layout has {len(columns)} columns ({columns[0]}, ..., "
                              f"{columns[-1]}), this file has {frame.shape[1]}")
        frame.columns = columns
    return frame


def read_adult(path: Path) -> pd.DataFrame:
    skip = 1 if first_line(path).startswith("|") else 0
    frame = read_csv(path, "UCI adult", ADULT_COLUMNS, skipinitialspace=True, na_values="?", skiprows=skip)
    frame = frame.dropna(how="all")
    frame["income"] = frame["income"].map(lambda v: v.rstrip(".") if isinstance(v, str) else v)  # adult.test's "."
    return frame


def adult_test_file(path: Path) -> Path | None:
    for name in ("adult.test.gz", "adult.test"):
        if (path.parent / name).is_file() and path.name.startswith("adult.data"):
            return path.parent / name
    return None


def read_census_income(path: Path) -> pd.DataFrame:
    if first_line(path)[:1].isdigit():  # DeepCTR's raw sample: row id + the 42 UCI columns, no header
        frame = read_csv(path, "raw census-income", ["row_id", *KDD_COLUMNS], skipinitialspace=True)
        return frame.drop(columns=["row_id", "instance_weight"])
    return read_csv(path, "census-income")


def census_categorical(frame: pd.DataFrame) -> list[str]:
    raw = "income_50k" in frame.columns
    skip = {"income_50k", "marital_stat", *KDD_NUMERIC} if raw else {"income", "marital status", *RECHUB_KDD_NUMERIC}
    return [c for c in frame.columns if c not in skip]


def census_numeric(frame: pd.DataFrame) -> list[str]:
    return KDD_NUMERIC if "income_50k" in frame.columns else RECHUB_KDD_NUMERIC


def read_ali_ccp(path: Path) -> pd.DataFrame:
    header = first_line(path).strip().split(",")
    if header[0] in ("click", "purchase"):
        return read_csv(path, "ali-ccp", dtype=str)
    return read_csv(path, "header-less ali-ccp (AITM)", AITM_COLUMNS, dtype=str)


def ali_ccp_categorical(frame: pd.DataFrame) -> list[str]:
    return [c for c in ALI_CCP_SPARSE if c in frame.columns and c != "301"]


def ali_ccp_numeric(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("D")]


def read_criteo(path: Path) -> pd.DataFrame:
    line = first_line(path)
    strings = {f"C{i}": str for i in range(1, 27)}
    if line.startswith("label"):
        return read_csv(path, "criteo", dtype=strings)
    names = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
    return read_csv(path, "tab-separated criteo", names, sep="\t", dtype={i: str for i in range(14, 40)})


def read_avazu(path: Path) -> pd.DataFrame:
    frame = read_csv(path, "avazu", dtype=str)
    if "hour" in frame.columns:
        missing = [c for c in AVAZU_RAW if c not in frame.columns]
        if missing:
            raise MoezooError(f"{path}: a raw avazu file (it has an 'hour' column) needs the columns {missing}")
        hour = pd.to_datetime(frame["hour"], format="%y%m%d%H", errors="coerce")
        frame["hour_of_day"] = hour.dt.hour.astype("Int64").astype(str)
        frame["weekday"] = hour.dt.weekday.astype("Int64").astype(str)
        frame = frame.drop(columns=["id", "hour"])
    return frame


def avazu_labels(frame: pd.DataFrame) -> str:
    return "click" if "click" in frame.columns else "label"


PRESETS: dict[str, Preset] = {
    "adult": Preset(read_adult, {"income": "income == '>50K'", "never_married": "`marital-status` == 'Never-married'"},
                    ["workclass", "education", "occupation", "race", "sex", "native-country"],
                    ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"],
                    test_file=adult_test_file, label_values={"income": ("<=50K", ">50K")}),
    "census-income": Preset(read_census_income, {"income": "@income", "never_married": "@never_married"},
                            census_categorical, census_numeric,
                            label_values={"income_50k": ("- 50000.", "50000+.")}),
    "ali-ccp": Preset(read_ali_ccp, {"click": "click", "purchase": "purchase"}, ali_ccp_categorical, ali_ccp_numeric,
                      domain="301"),
    "aliexpress": Preset(lambda path: read_csv(path, "aliexpress"),
                         {"ctr": "click", "ctcvr": "click == 1 and conversion == 1"},
                         [f"categorical_{i}" for i in range(1, 17)], [f"numerical_{i}" for i in range(1, 64)],
                         label_values={"click": (0, 1), "conversion": (0, 1)}),
    "criteo": Preset(read_criteo, {"click": "label"}, [f"C{i}" for i in range(1, 27)],
                     [f"I{i}" for i in range(1, 14)], numeric_transform="log"),
    "avazu": Preset(read_avazu, {"click": "@avazu"},
                    lambda frame: [c for c in frame.columns if c not in ("click", "label")]),
}


def resolve_labels(preset: Preset, frame: pd.DataFrame) -> dict[str, str]:
    """The preset's label definitions for this frame's layout (some presets read two layouts)."""
    labels = dict(preset.labels)
    if labels.get("income") == "@income":
        raw = "income_50k" in frame.columns
        labels = {"income": "income_50k == '50000+.'" if raw else "income",
                  "never_married": "marital_stat == 'Never married'" if raw else "marital status"}
    if labels.get("click") == "@avazu":
        labels = {"click": avazu_labels(frame)}
    return labels


def resolve_fields(spec, frame: pd.DataFrame) -> list[str]:
    return list(spec(frame)) if callable(spec) else list(spec)


def check_label_values(preset: Preset, frame: pd.DataFrame, source: str) -> None:
    """The columns a preset's label rules read hold only the values the rules map to 0/1, and none is missing."""
    for column, valid in preset.label_values.items():
        if column not in frame.columns:
            continue  # the other layout of the preset, or the label expression names the missing column
        values = frame[column]
        missing = int(values.isna().sum())
        if missing:
            raise MoezooError(f"{source}: column {column!r}, which the preset's labels read, is missing in {missing} "
                              "rows")
        if isinstance(valid[0], int):
            values = pd.to_numeric(values, errors="coerce")
        bad = values.isna() | ~values.isin(valid)
        if bad.any():
            seen = ", ".join(sorted({repr(v) for v in frame[column].unique()[:50].tolist()})[:8])
            raise MoezooError(f"{source}: column {column!r} must hold {' or '.join(map(repr, valid))} (the preset's "
                              f"labels), found {int(bad.sum())} rows with other values; values seen: {seen}")
