"""Fuzz the CTR readers: every preset's layouts and the explicit column spec, as CSV (several encodings, gzipped)
and Parquet, with damaged rows, columns, labels, values and bytes.

Each input either loads into sane splits (non-empty, labels 0/1, finite numeric features, categorical codes and
domains in range, a batch drawn from every loader) or raises a one-line MoezooError naming the file. Inputs whose
only damage is a label outside the preset's rule, a missing label or a changed column count must be rejected: those
are the silent runs on garbage the harness guards against.
"""

from __future__ import annotations

import gzip
import io

import numpy as np
import pandas as pd
import pytest
import torch
from fuzz_support import (
    ENCODINGS,
    OUTCOMES,
    PROFILES,
    encode,
    expect_both_outcomes,
    fuzz_settings,
    mutated,
    outcome,
    scratch,
)
from hypothesis import given
from hypothesis import strategies as st

from moezoo.tasks.ctr.data import CTRData
from moezoo.tasks.ctr.presets import (
    ADULT_COLUMNS,
    AITM_COLUMNS,
    ALI_CCP_SPARSE,
    AVAZU_RAW,
    KDD_COLUMNS,
    KDD_NUMERIC,
    RECHUB_KDD_NUMERIC,
)

# -- valid files of every preset layout, generated -------------------------------------------------------------------
LABEL_KINDS = {"label01": ("0", "1"), "adult_income": ("<=50K", ">50K"), "kdd_income": ("- 50000.", "50000+.")}


def _cell(kind: str, row: int, rng: np.random.Generator) -> str:
    if kind in LABEL_KINDS:  # rows 0 and 1 hold both classes, so that a valid file has both
        values = LABEL_KINDS[kind]
        return values[row % 2] if row < 2 else values[rng.integers(2)]
    if kind == "adult_marital":
        return ["Never-married", "Divorced", "Married-civ-spouse"][row % 2 if row < 2 else rng.integers(3)]
    if kind == "kdd_marital":
        return ["Never married", "Divorced", "Widowed"][row % 2 if row < 2 else rng.integers(3)]
    if kind == "int":
        return str(rng.integers(0, 100))
    if kind == "float":
        return f"{rng.random():.4f}"
    if kind == "cat":
        return str(rng.choice(["a", "b", "c", "?", "Private"]))
    if kind == "cat_id":
        return str(rng.integers(0, 30))
    if kind == "domain":
        return str(rng.choice(["1", "2"])) if row >= 2 else str(row + 1)
    if kind == "hex":
        return "" if rng.random() < 0.1 else f"{rng.integers(0, 2**32):08x}"
    if kind == "hour":
        return f"141021{rng.integers(0, 24):02d}"
    if kind == "id":
        return str(rng.integers(0, 2**62))
    raise AssertionError(kind)


def _kinds(columns, special: dict[str, str], default: str) -> list[tuple[str, str]]:
    return [(c, special.get(c, default)) for c in columns]


ADULT_KINDS = {"age": "int", "fnlwgt": "int", "education-num": "int", "capital-gain": "int", "capital-loss": "int",
               "hours-per-week": "int", "marital-status": "adult_marital", "income": "adult_income"}
KDD_KINDS = {**{c: "int" for c in KDD_NUMERIC}, "row_id": "int", "instance_weight": "float",
             "income_50k": "kdd_income", "marital_stat": "kdd_marital"}
# preset -> layouts: (name, file name, header?, separator, [(column, kind)])
LAYOUTS = {
    "adult": [("adult", "adult.data", False, ", ", _kinds(ADULT_COLUMNS, ADULT_KINDS, "cat"))],
    "census-income": [
        ("raw", "census.csv", False, ",", _kinds(["row_id", *KDD_COLUMNS], KDD_KINDS, "cat")),
        ("rechub", "census.csv", True, ",", _kinds([*RECHUB_KDD_NUMERIC, "class of worker", "education", "income",
                                                    "marital status"],
                                                   {**{c: "float" for c in RECHUB_KDD_NUMERIC}, "income": "label01",
                                                    "marital status": "label01"}, "cat_id")),
    ],
    "ali-ccp": [
        ("rechub", "ali.csv", True, ",", _kinds(["click", "purchase", *ALI_CCP_SPARSE, "D508", "D109_14"],
                                                {"click": "label01", "purchase": "label01", "D508": "float",
                                                 "D109_14": "float", "301": "domain"}, "cat_id")),
        ("aitm", "ali.csv", False, ",", _kinds(AITM_COLUMNS, {"click": "label01", "purchase": "label01",
                                                             "301": "domain"}, "cat_id")),
    ],
    "aliexpress": [("aliexpress", "ae.csv", True, ",", _kinds(
        ["search_id", *[f"categorical_{i}" for i in range(1, 17)], *[f"numerical_{i}" for i in range(1, 64)],
         "click", "conversion"],
        {"search_id": "id", **{f"numerical_{i}": "float" for i in range(1, 64)}, "click": "label01",
         "conversion": "label01"}, "cat_id"))],
    "criteo": [
        (name, "criteo.txt", header, sep, _kinds(["label", *[f"I{i}" for i in range(1, 14)],
                                                  *[f"C{i}" for i in range(1, 27)]],
                                                 {"label": "label01", **{f"I{i}": "int" for i in range(1, 14)}}, "hex"))
        for name, header, sep in (("csv", True, ","), ("tab", False, "\t"))
    ],
    "avazu": [
        ("raw", "avazu.csv", True, ",", _kinds(AVAZU_RAW, {"id": "id", "click": "label01", "hour": "hour"},
                                               "cat_id")),
        ("rechub", "avazu.csv", True, ",", _kinds(["label", *[f"feat_{i}" for i in range(1, 23)]],
                                                  {"label": "label01"}, "cat_id")),
    ],
}
CASES = [(preset, layout) for preset, layouts in LAYOUTS.items() for layout in layouts]
BAD_LABELS = ["2", "-1", "0.5", "maybe", "", "nan", "inf", "?"]
GARBAGE = ["", "?", "nan", "inf", "-inf", "1e400", "-1e308", "5e-324", "2", "-1", "maybe", "日本", "\x00", '"', "1,5",
           "x" * 300, "0x1f", "True"]


@st.composite
def preset_file(draw, layout):
    """(bytes, file name, must_fail): a layout's valid rows with row/column/cell damage, encoded, maybe mutated."""
    _, file_name, header, sep, columns = layout
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = [[_cell(kind, i, rng) for _, kind in columns] for i in range(draw(st.integers(6, 14)))]
    names = [c for c, _ in columns]
    must_fail = False
    damage = draw(st.sampled_from(["none", "none", "drop_column", "add_column", "cell", "bad_label", "short_row",
                                   "long_row", "rows", "header_twice"]))
    labels = [j for j, (_, kind) in enumerate(columns) if kind in LABEL_KINDS]
    if damage == "drop_column" and rows:
        j = draw(st.integers(0, len(names) - 1))
        rows = [r[:j] + r[j + 1:] for r in rows]
        names = names[:j] + names[j + 1:]
        must_fail = not header  # a header-less layout is told by its column count
    elif damage == "add_column" and rows:
        rows = [r + ["extra"] for r in rows]
        names = names + ["extra"]
        must_fail = not header
    elif damage == "cell" and rows:
        i, j = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(names) - 1))
        rows[i][j] = draw(st.sampled_from(GARBAGE))
    elif damage == "bad_label" and rows:
        i, j = draw(st.integers(0, len(rows) - 1)), draw(st.sampled_from(labels))
        rows[i][j] = draw(st.sampled_from(BAD_LABELS))
        must_fail = True  # a third class or a missing label is never binarised silently
    elif damage == "short_row" and rows:
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = rows[i][:draw(st.integers(0, len(rows[i]) - 1))]
    elif damage == "long_row" and rows:
        rows[draw(st.integers(0, len(rows) - 1))].append("surplus")
    elif damage == "rows":
        rows = rows[:draw(st.integers(0, 2))]
    lines = ([sep.join(names)] if header else []) + [sep.join(r) for r in rows]
    if damage == "header_twice" and header:
        lines.insert(1, lines[0])
    text = "\n".join(lines) + ("\n" if lines else "")
    encoding = draw(st.sampled_from(["utf-8"] * 12 + ENCODINGS))
    data = encode(text, encoding)
    gzipped = draw(st.integers(0, 3)) == 0
    if gzipped:
        data = gzip.compress(data, mtime=0)
        file_name += ".gz"
    damaged = draw(mutated(data))
    if damaged != data or encoding not in ("utf-8", "latin-1", "utf-8-sig"):
        must_fail = False  # byte damage or another encoding may hit anything, or nothing that matters
    return damaged, file_name, must_fail


def check_ctr(data: CTRData) -> None:
    """Loaded CTR data is sane: non-empty splits, 0/1 labels, finite numbers, codes in range, batches."""
    cardinalities = torch.tensor(data.cardinalities, dtype=torch.long)
    assert set(data.splits) == {"train", "val", "test"}
    for name, rows in data.splits.items():
        tensors = rows.tensors
        assert len(rows) > 0, f"empty {name} split"
        assert set(tensors["labels"].unique().tolist()) <= {0.0, 1.0}
        assert tensors["labels"].shape == (len(rows), len(data.task_names))
        assert torch.isfinite(tensors["numeric"]).all()
        if cardinalities.numel():
            assert ((tensors["categorical"] >= 0) & (tensors["categorical"] < cardinalities)).all()
        assert ((tensors["domain"] >= 0) & (tensors["domain"] < len(data.domain_names))).all()
        batch = next(iter(data.make_loader(rows, shuffle=name == "train")))
        assert batch["labels"].shape[0] == min(data.batch_size, len(rows))


def _load_preset(folder, preset, name, content, extra_files=()):
    path = folder / name
    path.write_bytes(content)
    for other, text in extra_files:
        (folder / other).write_bytes(text)
    data = CTRData(path=str(path), preset=preset, batch_size=4)

    def load():
        data.setup()
        return data

    return outcome(f"ctr preset {preset}", load, [str(folder)])


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("preset,layout", CASES, ids=[f"{p}-{layout[0]}" for p, layout in CASES])
def test_every_preset_reader_loads_sane_data_or_fails_in_one_line_naming_the_file(preset, layout, profile, tmp_path):
    before = OUTCOMES[f"ctr preset {preset}"].copy()

    @fuzz_settings(profile, examples=60)
    @given(case=preset_file(layout), test_file=st.one_of(st.none(), preset_file(layout)))
    def check(case, test_file):
        content, name, must_fail = case
        extra = ()
        if preset == "adult" and test_file is not None:  # the sibling adult.test: a junk first line, "." labels
            text = test_file[0]
            extra = (("adult.test", b"|1x3 Cross validator\n" + text.replace(b"K\n", b"K.\n")),)
        with scratch(tmp_path) as folder:
            data = _load_preset(folder, preset, name, content, extra)
        if data is not None:
            assert not must_fail, f"loaded a damaged {preset} file silently: {content[:300]!r}"
            check_ctr(data)

    check()
    expect_both_outcomes(f"ctr preset {preset}", before)


# -- the explicit column spec: CSV and Parquet ----------------------------------------------------------------------
LABELS = [0, 1]
LABEL_GARBAGE = [2, -1, 0.5, "yes", None, float("nan"), float("inf")]
NUMBERS = [0.0, 1.5, -3.0, 42, 7.25, None]
NUMBER_GARBAGE = [1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan"), 10**30, "abc", "1e5", ""]
STRINGS = ["a", "b", "c", None]
STRING_GARBAGE = ["", "ü", "日本", "x,y", 'q"u', "line\nbreak", 0, 1.5, "\x00", "\t", "  ", "é" * 200]


@st.composite
def column(draw, rows: int, valid: list, garbage: list):
    pool = valid + garbage if draw(st.integers(0, 5)) == 0 else valid
    return draw(st.lists(st.sampled_from(pool), min_size=rows, max_size=rows))


@st.composite
def table(draw, min_rows: int = 0):
    """A DataFrame of columns y, c1, c2, n1, n2, d, u: mostly valid values, some garbage, columns dropped/added."""
    rows = draw(st.integers(min_rows, 24))
    frame = pd.DataFrame({
        "y": [i % 2 for i in range(min(rows, 2))] + draw(column(max(rows - 2, 0), LABELS, LABEL_GARBAGE)),
        "c1": draw(column(rows, STRINGS, STRING_GARBAGE)), "c2": draw(column(rows, ["p", "q"], STRING_GARBAGE)),
        "n1": draw(column(rows, NUMBERS, NUMBER_GARBAGE)), "n2": draw(column(rows, NUMBERS, NUMBER_GARBAGE)),
        "d": draw(column(rows, ["x", "y"], STRING_GARBAGE)), "u": draw(column(rows, [1, 2, 3], STRING_GARBAGE)),
    }, dtype=object)
    damage = draw(st.sampled_from(["none", "none", "none", "drop", "extra", "rename"]))
    if damage == "drop":
        frame = frame.drop(columns=[draw(st.sampled_from(list(frame.columns)))])
    elif damage == "extra":
        frame["extra"] = draw(column(rows, ["e"], STRING_GARBAGE))
    elif damage == "rename":
        old = draw(st.sampled_from(list(frame.columns)))
        frame = frame.rename(columns={old: draw(st.sampled_from(["Y", "y ", "c1", "日本", ""]))})
    return frame


def _label_is_garbage(frame: pd.DataFrame) -> bool:
    """Whether the y column (if intact) holds anything but 0/1, or only one class."""
    if "y" not in frame.columns or list(frame.columns).count("y") != 1:
        return False
    values = frame["y"].tolist()
    return any(v not in (0, 1) or isinstance(v, bool) or isinstance(v, float) for v in values) \
        or len(set(values)) < 2


def _parquet(frame: pd.DataFrame, draw) -> bytes:
    """The frame as Parquet, each column cast to a drawn type (pyarrow needs one type per column)."""
    out = {}
    frame = frame.loc[:, ~frame.columns.duplicated()]  # Parquet names must be unique
    for name in frame.columns:
        values = frame[name]
        kind = draw(st.sampled_from(["float", "string", "int", "bool", "bytes"]))
        if kind == "float":
            out[name] = pd.to_numeric(values, errors="coerce").astype(float)
        elif kind == "int":
            numbers = pd.to_numeric(values, errors="coerce").astype(float)
            whole = numbers.dropna()
            integral = bool(np.isfinite(whole).all() and (whole == whole.round()).all() and (whole.abs() < 2**62).all())
            out[name] = numbers.astype("Int64") if integral else numbers
        elif kind == "bool":
            out[name] = values.map(lambda v: None if v is None else bool(v) if not isinstance(v, str) else len(v) > 1)
        elif kind == "bytes":
            out[name] = values.map(lambda v: None if v is None else str(v).encode("utf-8", "replace"))
        else:
            out[name] = values.map(lambda v: None if v is None else str(v))
    buffer = io.BytesIO()
    pd.DataFrame(out).to_parquet(buffer, index=False)
    return buffer.getvalue()


@st.composite
def spec_file(draw, fmt: str):
    """(bytes, suffix, the frame, whether the bytes are intact) of one explicit-spec table."""
    frame = draw(table())
    if fmt == "csv":
        text = frame.to_csv(index=False)
        encoding = draw(st.sampled_from(["utf-8"] * 4 + ENCODINGS))
        data, suffix = encode(text, encoding), ".csv"
        intact = encoding == "utf-8"
        if draw(st.booleans()):
            data, suffix = gzip.compress(data, mtime=0), ".csv.gz"
    else:
        data, suffix, intact = _parquet(frame, draw), ".parquet", False  # its column types were drawn anew
    damaged = draw(mutated(data))
    return damaged, suffix, frame, intact and damaged == data


SPECS = st.fixed_dictionaries({
    "labels": st.sampled_from([["y"], ["y"], ["y", "n1 > 0"], ["`c2` == 'p'"], ["y", "c1 == 'a'"]]),
    "categorical": st.sampled_from([["c1"], ["c1", "c2"], []]),
    "numeric": st.sampled_from([["n1"], ["n1", "n2"], []]),
    "domain": st.sampled_from([None, "d"]), "user": st.sampled_from([None, "u"]),
    "numeric_transform": st.sampled_from(["standard", "log", "bucketize"]),
    "hash_buckets": st.sampled_from([None, None, 5]),
    "val_fraction": st.sampled_from([0.1, 0.2, 0.4]), "test_fraction": st.sampled_from([0.1, 0.2, 0.3]),
})


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_explicit_spec_loads_sane_data_or_fails_in_one_line_naming_the_file(fmt, profile, tmp_path):
    loader = f"ctr explicit spec {fmt}"
    before = OUTCOMES[loader].copy()

    @fuzz_settings(profile, examples=150)
    @given(case=spec_file(fmt), test_case=st.one_of(st.none(), spec_file(fmt)), spec=SPECS)
    def check(case, test_case, spec):
        content, suffix, frame, intact = case
        with scratch(tmp_path) as folder:
            path = folder / f"table{suffix}"
            path.write_bytes(content)
            test_path = None
            if test_case is not None:
                test_path = folder / f"test{suffix}"
                test_path.write_bytes(test_case[0])
            data = CTRData(path=str(path), test_path=None if test_path is None else str(test_path), batch_size=8,
                           **spec)

            def load():
                data.setup()
                return data

            loaded = outcome(loader, load, [str(folder)])
        if loaded is not None:
            check_ctr(loaded)
            if intact and spec["labels"][0] == "y":
                assert not _label_is_garbage(frame), f"trained on a garbage label column: {frame['y'].tolist()}"

    check()
    expect_both_outcomes(loader, before)
