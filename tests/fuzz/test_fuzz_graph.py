"""Fuzz the graph readers: Planetoid raw files (damaged bytes of the embedded Cora, and small generated sets with
wrong types, shapes, dtypes, indices and values, pickled at every protocol) and the heterophilous npz format.

Each input either loads into a sane graph (finite float features, labels in 0..C-1, edges between existing nodes,
non-empty disjoint masks; a generated Planetoid set exactly as PyG reads it) or raises a one-line MoezooError naming
the file. A pickle that would call anything outside the format never runs. Bit flips that crash PyG's own loader
(SIGSEGV in scipy's ``todense``) are run in a child process, so a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
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

from moezoo.tasks.graph.data import EMBEDDED_CORA, GraphData
from moezoo.tasks.graph.planetoid import FILES, read_planetoid_data

CORA = {part: (EMBEDDED_CORA / "raw" / f"ind.cora.{part}").read_bytes() for part in FILES}


def check_graph(data) -> None:
    """A loaded graph is sane."""
    n = data.num_nodes
    assert data.x.dtype == torch.float32 and data.x.dim() == 2 and data.x.shape[0] == n
    assert torch.isfinite(data.x).all()
    assert data.y.dtype == torch.long and data.y.shape == (n,) and data.y.min() >= 0
    assert data.edge_index.dtype == torch.long and data.edge_index.shape[0] == 2
    if data.edge_index.numel():
        assert data.edge_index.min() >= 0 and data.edge_index.max() < n
    masks = [data.train_mask, data.val_mask, data.test_mask]
    for mask in masks:
        assert mask.dtype == torch.bool and mask.shape == (n,) and mask.any()
    assert not (masks[0] & masks[1]).any() and not (masks[0] & masks[2]).any() and not (masks[1] & masks[2]).any()


def _graph_data(root: Path, name: str, **kwargs):
    module = GraphData(root=str(root), name=name, **kwargs)

    def load():
        module.setup()
        check_graph(module.data)
        assert 2 <= module.num_classes <= module.data.num_nodes
        assert module.data.adj_t.shape == (module.data.num_nodes, module.data.num_nodes)
        return module.data

    return load


# -- Planetoid: damaged bytes of the real Cora ------------------------------------------------------------------------
@st.composite
def damaged_cora(draw):
    """The eight Cora files with one or two of them damaged."""
    files = dict(CORA)
    for part in draw(st.lists(st.sampled_from(FILES), min_size=1, max_size=2, unique=True)):
        files[part] = draw(mutated(files[part], allow_none=False))
    return files


def _write_raw(folder: Path, files: dict[str, bytes], prefix: str = "cora") -> Path:
    raw = folder / "Cora" / "raw"
    raw.mkdir(parents=True)
    for part, content in files.items():
        (raw / f"ind.{prefix}.{part}").write_bytes(content)
    return raw


@pytest.mark.parametrize("profile", PROFILES)
def test_damaged_cora_files_load_sane_graphs_or_fail_in_one_line_naming_the_file(profile, tmp_path):
    before = OUTCOMES["planetoid (damaged Cora)"].copy()

    @fuzz_settings(profile, examples=150)
    @given(files=damaged_cora(), normalize=st.booleans())
    def check(files, normalize):
        with scratch(tmp_path) as folder:
            raw = _write_raw(folder, files)
            outcome("planetoid (damaged Cora)", _graph_data(folder, "Cora", normalize_features=normalize), [str(raw)])

    check()
    expect_both_outcomes("planetoid (damaged Cora)", before)


# -- Planetoid: small generated sets with structural damage ---------------------------------------------------------
TRAIN, VAL, ALL, TEST, FEATURES, CLASSES = 3, 500, 506, 4, 3, 3


class _Trap:
    """Pickles as a call of ``os.mkdir(path)``: if the reader ever ran it, the folder would exist."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _one_hot(rows: int, rng) -> np.ndarray:
    labels = np.arange(rows) % CLASSES if rows >= CLASSES else rng.integers(0, CLASSES, rows)
    return np.eye(CLASSES, dtype=np.int32)[labels]


@st.composite
def planetoid_set(draw, trap_path: str):
    """(files, intact, exact_range): a valid small Planetoid set, each part maybe replaced by a damaged version."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = sp.random(TRAIN, FEATURES, density=0.5, format="csr", dtype=np.float32, random_state=rng)
    allx = sp.vstack([x, sp.random(ALL - TRAIN, FEATURES, density=0.5, format="csr", dtype=np.float32,
                                   random_state=rng)]).tocsr()
    tx = sp.random(TEST, FEATURES, density=0.5, format="csr", dtype=np.float32, random_state=rng)
    y, ally, ty = _one_hot(TRAIN, rng), _one_hot(ALL, rng), _one_hot(TEST, rng)
    ally[:TRAIN] = y
    num_nodes = ALL + TEST
    adjacency = defaultdict(list)
    for a, b in rng.integers(0, num_nodes, (40, 2)).tolist():
        adjacency[a].append(b)
        adjacency[b].append(a)
    for node in range(num_nodes):
        adjacency.setdefault(node, [])
    test = rng.permutation(np.arange(ALL, num_nodes))
    objects = {"x": x, "tx": tx, "allx": allx, "y": y, "ty": ty, "ally": ally, "graph": adjacency}
    intact, exact_range = True, True

    part = draw(st.sampled_from(["none", "none", *FILES]))
    damage = draw(st.integers(0, 9))
    if part in ("x", "tx", "allx"):
        intact = False
        matrix = objects[part].copy()
        if damage == 0:
            matrix.indices[draw(st.integers(0, len(matrix.indices) - 1))] = draw(
                st.sampled_from([FEATURES, -1, 2**31 - 1, FEATURES + 7]))
        elif damage == 1:
            matrix.indptr[draw(st.integers(1, len(matrix.indptr) - 1))] += draw(st.sampled_from([-2, 1, 10**6]))
        elif damage == 2:
            matrix.data[draw(st.integers(0, len(matrix.data) - 1))] = draw(
                st.sampled_from([np.inf, -np.inf, np.nan, 3e38]))
        elif damage == 3:
            matrix = matrix.toarray()  # a dense array where a csr_matrix belongs
        elif damage == 4:
            matrix = sp.csr_matrix(matrix[:, :FEATURES - 1])  # a feature fewer
        elif damage == 5:
            matrix = sp.csr_matrix(matrix[:-1])  # a row fewer
        elif damage == 6:
            matrix = matrix.tolil()  # another sparse format
        elif damage == 7:
            matrix._shape = (matrix.shape[0], 2**40)
        elif damage == 8:
            matrix.indices = matrix.indices.astype(np.float64)
        else:
            matrix = [1, 2, 3]
        objects[part] = matrix
    elif part in ("y", "ty", "ally"):
        intact = False
        labels = objects[part].copy()
        if damage == 0:
            labels[0, 0] = draw(st.sampled_from([2, -1, 7]))
        elif damage == 1:
            labels[0] = 1  # two classes at once
        elif damage == 2:
            labels = labels.astype(object)
        elif damage == 3:
            labels = labels.argmax(1)  # class ids where one-hot rows belong
        elif damage == 4:
            labels = labels[:, :CLASSES - 1]
        elif damage == 5:
            labels = labels[:-1]
        elif damage == 6:
            labels = labels.astype(np.float64) * 0.5
        elif damage == 7:
            labels = labels.astype(str)
        elif damage == 8:
            labels = labels.astype(np.complex64)
        else:
            labels = {"labels": labels}
        objects[part] = labels
    elif part == "graph":
        intact = False
        bad = dict(adjacency)
        if damage == 0:
            bad[0] = bad[0] + [num_nodes + draw(st.integers(0, 10**12))]
        elif damage == 1:
            bad[0] = bad[0] + [-1]
        elif damage == 2:
            bad[num_nodes + 5] = [0]
        elif damage == 3:
            bad[0] = bad[0] + [1.5]
        elif damage == 4:
            bad[0] = tuple(bad[0])
        elif damage == 5:
            bad["0"] = [1]
        elif damage == 6:
            bad = list(bad.items())
        elif damage == 7:
            bad[0] = bad[0] + [True]
        elif damage == 8:
            bad = {}
        else:
            bad[0] = [np.int64(1)]
        objects["graph"] = bad
    elif part == "test.index":
        intact = False
        if damage == 0:
            test = np.concatenate([test[:-1], test[:1]])  # a duplicate
        elif damage == 1:
            test = test.copy()
            test[0] = draw(st.sampled_from([0, ALL - 1, num_nodes + 3, 10**15, -4]))
        elif damage == 2:
            test = test[:-1]
        elif damage == 3:
            test = np.array([], dtype=np.int64)
        elif damage in (4, 5):  # a gap: a test-range node that test.index skips (CiteSeer's isolated nodes)
            test = test.copy()
            test[test == num_nodes - 1] = num_nodes
            if damage == 4:  # valid when the graph has the node past the gap, as CiteSeer's does
                adjacency[num_nodes] = []
            intact, exact_range = damage == 4, False
    protocol = draw(st.integers(0, pickle.HIGHEST_PROTOCOL))
    files = {}
    for name, value in objects.items():
        files[name] = pickle.dumps(value, protocol=protocol)
    text = "\n".join(str(i) for i in test.tolist()) + "\n"
    files["test.index"] = encode(text, draw(st.sampled_from(["ascii"] * 8 + ENCODINGS)))
    if draw(st.integers(0, 9)) == 0:  # a pickle that calls outside the format
        files[draw(st.sampled_from(FILES[:-1]))] = pickle.dumps(_Trap(trap_path), protocol=protocol)
        intact = False
    if files["test.index"] != text.encode():
        intact = intact and files["test.index"].decode("utf-8", "replace").strip() == text.strip()
    return files, intact, exact_range


@pytest.mark.parametrize("profile", PROFILES)
def test_generated_planetoid_sets_load_as_pyg_reads_them_or_fail_in_one_line(profile, tmp_path):
    from torch_geometric.io import read_planetoid_data as pyg_read

    loader = "planetoid (generated sets)"
    before = OUTCOMES[loader].copy()
    trap = tmp_path / "trap-ran"

    @fuzz_settings(profile, examples=150)
    @given(case=planetoid_set(str(trap)))
    def check(case):
        files, intact, exact_range = case
        with scratch(tmp_path) as folder:
            raw = _write_raw(folder, files)
            data = outcome(loader, lambda: read_planetoid_data(raw, "cora"), [str(raw)])
            assert not trap.exists(), "a pickled call outside the format ran"
            if intact:
                assert data is not None, "a valid Planetoid set was refused"
            if data is not None:
                check_graph(data)
                if exact_range:  # our own files: PyG's reader (plain pickle.load) is the reference
                    expected = pyg_read(str(raw), "cora")
                    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
                        assert torch.equal(data[key], expected[key]), key

    check()
    expect_both_outcomes(loader, before)


CHILD = r"""
import json, random, shutil, sys
from pathlib import Path
from moezoo.errors import MoezooError
from moezoo.tasks.graph.data import EMBEDDED_CORA, GraphData
from moezoo.tasks.graph.planetoid import FILES

seed, count, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
raw = folder / "Cora" / "raw"
shutil.copytree(EMBEDDED_CORA / "raw", raw)
original = {part: (raw / f"ind.cora.{part}").read_bytes() for part in FILES}
rng, seen = random.Random(seed), {"loaded": 0, "error": 0, "bad": []}
for _ in range(count):
    part = rng.choice(FILES)
    data = bytearray(original[part])
    flips = [(rng.randrange(len(data)), rng.randrange(8)) for _ in range(rng.choice([1, 1, 2, 4]))]
    for at, bit in flips:
        data[at] ^= 1 << bit
    (raw / f"ind.cora.{part}").write_bytes(bytes(data))
    print(part, flips, flush=True, file=sys.stderr)  # the input a crash happened on
    try:
        GraphData(root=str(folder), name="Cora").setup()
        seen["loaded"] += 1
    except MoezooError as error:
        seen["error"] += 1
        if "\n" in str(error) or str(raw) not in str(error):
            seen["bad"].append(str(error))
    (raw / f"ind.cora.{part}").write_bytes(original[part])
print(json.dumps(seen))
"""


def _run_child(tmp_path, seed: int, count: int):
    result = subprocess.run([sys.executable, "-c", CHILD, str(seed), str(count), str(tmp_path)], capture_output=True,
                            text=True, timeout=600)
    last_input = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
    assert result.returncode == 0, f"the reader died (status {result.returncode}) on {last_input}: " \
                                   f"{result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("count", [pytest.param(100, id="default"),
                                   pytest.param(10_000, id="slow", marks=pytest.mark.slow)])
def test_bit_flipped_cora_files_never_crash_the_process(tmp_path, count):
    """Random bit flips in every Cora file, in a child process: it must finish, every error one line naming it.

    About one flip in seven of ``ind.cora.tx`` lands in a csr column index and made PyG's reader die with SIGSEGV.
    """
    seen = _run_child(tmp_path, seed=0, count=count)
    OUTCOMES["planetoid (bit flips, child process)"].update(loaded=seen["loaded"], error=seen["error"])
    assert seen["bad"] == [] and seen["loaded"] + seen["error"] == count
    assert seen["loaded"] > 0 and seen["error"] > 0


# -- heterophilous npz ------------------------------------------------------------------------------------------------
NODES, SPLITS = 12, 3
MUST_FAIL = {"masks_1d", "labels_range", "labels_2d", "edges_3", "empty_train", "object", "not_zip", "edges_range",
             "labels_negative", "overlap", "features_inf", "missing"}


@st.composite
def npz_file(draw):
    """(bytes, split, defect or None, intact): a small valid npz with at most one defect, maybe damaged bytes."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    classes = draw(st.integers(2, 4))
    order = rng.permutation(NODES)
    train, val, test = (np.zeros((SPLITS, NODES), bool) for _ in range(3))
    for s in range(SPLITS):
        perm = rng.permutation(NODES)
        train[s, perm[:6]], val[s, perm[6:9]], test[s, perm[9:]] = True, True, True
    arrays = {
        "node_features": rng.normal(size=(NODES, 3)).astype(draw(st.sampled_from([np.float32, np.float64]))),
        "node_labels": (np.arange(NODES) % classes)[order].astype(np.int64),
        "edges": rng.integers(0, NODES, (draw(st.integers(0, 20)), 2)),
        "train_masks": train, "val_masks": val, "test_masks": test,
    }
    split = draw(st.integers(0, SPLITS - 1))
    defect = draw(st.sampled_from([None] * 6 + [
        "masks_1d", "labels_range", "labels_negative", "labels_2d", "labels_float", "edges_3", "edges_t",
        "edges_range", "edges_float", "empty_train", "overlap", "masks_int", "features_inf", "features_big",
        "features_string", "features_1d", "object", "missing", "extra", "split", "one_class", "not_zip", "npy",
        "no_nodes"]))
    if defect == "masks_1d":
        arrays[draw(st.sampled_from(["train_masks", "val_masks", "test_masks"]))] = train[0]
    elif defect == "labels_range":
        arrays["node_labels"] = arrays["node_labels"].copy()
        arrays["node_labels"][0] = draw(st.sampled_from([classes + 3, 10**9]))
    elif defect == "labels_negative":
        arrays["node_labels"] = arrays["node_labels"] - 1
    elif defect == "labels_2d":
        arrays["node_labels"] = np.eye(classes, dtype=np.int64)[arrays["node_labels"]]
    elif defect == "labels_float":
        arrays["node_labels"] = arrays["node_labels"].astype(np.float64)
    elif defect == "edges_3":
        arrays["edges"] = rng.integers(0, NODES, (max(len(arrays["edges"]), 1), 3))
    elif defect == "edges_t":
        arrays["edges"] = arrays["edges"].T
    elif defect == "edges_range":
        arrays["edges"] = np.concatenate([arrays["edges"], [[0, draw(st.sampled_from([NODES, -1, 2**40]))]]])
    elif defect == "edges_float":
        arrays["edges"] = arrays["edges"].astype(np.float32)
    elif defect == "empty_train":
        arrays["train_masks"] = train.copy()
        arrays["train_masks"][split] = False
    elif defect == "overlap":
        arrays["val_masks"] = val | train
    elif defect == "masks_int":
        arrays["test_masks"] = test.astype(np.int64)
    elif defect == "features_inf":
        arrays["node_features"] = arrays["node_features"].copy()
        arrays["node_features"][0, 0] = draw(st.sampled_from([np.inf, -np.inf, np.nan]))
    elif defect == "features_big":
        arrays["node_features"] = arrays["node_features"].astype(np.float64) * draw(st.sampled_from([1e39, 1e300]))
    elif defect == "features_string":
        arrays["node_features"] = arrays["node_features"].astype(str)
    elif defect == "features_1d":
        arrays["node_features"] = arrays["node_features"][:, 0]
    elif defect == "object":
        key = draw(st.sampled_from(sorted(arrays)))
        arrays[key] = arrays[key].astype(object)
    elif defect == "missing":
        del arrays[draw(st.sampled_from(sorted(arrays)))]
    elif defect == "extra":
        arrays["notes"] = np.array(["unused"])
    elif defect == "split":
        split = draw(st.sampled_from([SPLITS, -1, 99]))
    elif defect == "one_class":
        arrays["node_labels"] = np.zeros(NODES, dtype=np.int64)
    elif defect == "no_nodes":
        arrays = {k: v[..., :0] if k.endswith("masks") else v[:0] for k, v in arrays.items()}
    buffer = io.BytesIO()
    if defect == "not_zip":
        buffer.write(draw(st.sampled_from([b"", b"not a zip", pickle.dumps(arrays)])))
    elif defect == "npy":
        np.save(buffer, arrays["node_features"])
    else:
        save = np.savez_compressed if draw(st.booleans()) else np.savez
        save(buffer, **arrays)
    data = buffer.getvalue()
    damaged = draw(mutated(data))
    return damaged, split, defect, damaged == data


@pytest.mark.parametrize("profile", PROFILES)
def test_heterophilous_npz_loads_a_sane_graph_or_fails_in_one_line_naming_the_file(profile, tmp_path):
    loader = "heterophilous npz"
    before = OUTCOMES[loader].copy()

    @fuzz_settings(profile, examples=200)
    @given(case=npz_file(), normalize=st.booleans())
    def check(case, normalize):
        content, split, defect, intact = case
        with scratch(tmp_path) as folder:
            path = folder / "toy.npz"
            path.write_bytes(content)
            data = outcome(loader, _graph_data(folder, "toy", split=split, normalize_features=normalize), [str(path)])
        if intact and defect is None:
            assert data is not None, "a valid npz was refused"
        if intact and defect in MUST_FAIL:
            assert data is None, f"loaded an npz with {defect} silently"

    check()
    expect_both_outcomes(loader, before)
