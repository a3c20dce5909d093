"""Planetoid raw files (``ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``) read without trusting them.

The files are Python-2 pickles, and PyG's ``read_planetoid_data`` loads them with ``pickle.load``. Two things follow
for a file moezoo did not write: a pickle may name any importable callable, so loading one can run code; and a
pickled ``scipy.sparse.csr_matrix`` restores its ``indices``/``indptr`` arrays with no check, so one flipped bit in a
column index sends ``todense()`` (compiled code) past the end of its buffer: SIGSEGV. Here instead:

1. ``pickletools`` walks the opcodes first (a truncated argument is an error; a memo index no larger than the file
   could hold is required, since the C unpickler would allocate and clear a memo table that long);
2. ``RestrictedUnpickler.find_class`` accepts only what the format holds (numpy arrays and dtypes, the csr matrix,
   ``collections.defaultdict`` and ``list``, and the helpers pickle protocols 0-5 write them with, each wrapped to
   accept only those types); a csr matrix comes back as a plain record of its arrays;
3. every array's kind, shape and index range is checked, and the dense features are built with numpy's
   bounds-checked indexing, so no compiled code sees an unchecked index.

The assembly is PyG's (checked equal on Cora): row ``j`` of ``tx``/``ty`` is node ``test.index[j]``, nodes of the
test range that ``test.index`` skips (CiteSeer's isolated nodes) get zero features and label 0, the labels are the
argmax of the one-hot rows, train = the ``len(y)`` first nodes, val = the next 500, test = ``test.index``.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.io.planetoid import edge_index_from_dict
from torch_geometric.utils import index_to_mask

from moezoo.errors import MoezooError

FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
NUM_VAL = 500  # the public split's validation nodes
MAX_DENSE = 2**28  # features are held densely: at most 1 GiB of float32
NUMERIC_KINDS = "biuf"

try:  # numpy >= 2 moved it; the files name numpy.core.multiarray
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` may use it (it cannot be called)."""


class SparseRecord:
    """What a pickled ``csr_matrix`` becomes: its attribute dict, unchecked (``csr`` turns it into arrays)."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a csr_matrix's state is not a dict")
        self.state = state


def _reconstruct(subtype, shape, code):
    if subtype is not _NdarrayType or tuple(shape) != (0,):
        raise pickle.UnpicklingError("not a pickled numpy array")
    return _numpy_reconstruct(np.ndarray, shape, code)


def _frombuffer(buffer, dtype, shape, order):
    # numpy's pickle of an array at protocol 5: its bytes, checked against dtype and shape by numpy itself
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype) \
            or dtype.kind not in NUMERIC_KINDS or order not in ("C", "F"):
        raise pickle.UnpicklingError("not a pickled numeric numpy array")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _reconstructor(cls, base, state):
    # protocols 0 and 1 rebuild a plain-class instance (the csr matrix) through copyreg._reconstructor
    if cls is not SparseRecord or base is not object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor is allowed only for the csr matrix")
    return SparseRecord()


def _encode(text, encoding="utf-8"):
    # Python 3 writes a numpy array's bytes at protocol 2 as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin1")


ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): np.dtype,
    ("scipy.sparse.csr", "csr_matrix"): SparseRecord,
    ("scipy.sparse._csr", "csr_matrix"): SparseRecord,
    ("scipy.sparse", "csr_matrix"): SparseRecord,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("collections", "defaultdict"): collections.defaultdict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
    ("_codecs", "encode"): _encode,
}
MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


class RestrictedUnpickler(pickle.Unpickler):
    """A Python-2 pickle reader (``encoding="latin1"``) that resolves only the globals of the Planetoid format."""

    def __init__(self, file):
        super().__init__(file, encoding="latin1")

    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refused pickled global {module}.{name} (a Planetoid file holds only "
                                         "numpy arrays, scipy csr matrices and a dict of lists)")
        return ALLOWED[(module, name)]

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id")


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def load_pickle(path: Path):
    """The object pickled in ``path``, through the opcode walk and ``RestrictedUnpickler``; MoezooError if not."""
    data = path.read_bytes()
    try:
        opcodes = 0
        for opcode, arg, _ in pickletools.genops(data):
            opcodes += 1
            if opcode.name in MEMO_OPCODES and not 0 <= int(arg) <= len(data):
                raise pickle.UnpicklingError(f"memo index {arg} is larger than the file")
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except RecursionError:
        raise MoezooError(f"{path}: not a Planetoid pickle (nested too deeply)") from None
    except Exception as error:  # pickle and numpy raise many kinds for a damaged file
        raise MoezooError(f"{path}: not a readable Planetoid pickle ({_one_line(error)})") from None


def _array(value, path: Path, what: str, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in NUMERIC_KINDS or value.ndim != ndim:
        got = f"a {value.dtype} array of shape {list(value.shape)}" if isinstance(value, np.ndarray) \
            else type(value).__name__
        raise MoezooError(f"{path}: {what} must be a {ndim}-D numeric numpy array, got {got}")
    return value


def csr(value, path: Path) -> np.ndarray:
    """The dense float32 features of a pickled csr matrix, after checking its arrays against each other."""
    if not isinstance(value, SparseRecord):
        raise MoezooError(f"{path}: expected a scipy csr_matrix of features, got {type(value).__name__}")
    state = value.state
    shape = state.get("_shape", state.get("shape"))
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(type(s) is int and s >= 0 for s in shape)):
        raise MoezooError(f"{path}: the csr_matrix has no valid 2-D shape (got {shape!r})")
    rows, cols = shape
    data = _array(state.get("data"), path, "the csr_matrix's data", 1)
    indices = _array(state.get("indices"), path, "the csr_matrix's indices", 1)
    indptr = _array(state.get("indptr"), path, "the csr_matrix's indptr", 1)
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise MoezooError(f"{path}: the csr_matrix's indices and indptr must be integers "
                          f"(got {indices.dtype} and {indptr.dtype})")
    if rows * cols > MAX_DENSE:
        raise MoezooError(f"{path}: features of shape {list(shape)} would take over 1 GiB held densely")
    # signed, so that a decreasing indptr is caught (the diff of unsigned entries wraps round to a huge row length,
    # which np.repeat would then try to allocate: found by the slow fuzz run, 32 GiB for a damaged Cora file)
    indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
    if len(indptr) != rows + 1 or indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != len(indices) \
            or len(indices) != len(data):
        raise MoezooError(f"{path}: the csr_matrix's indptr ({len(indptr)} entries, {rows} rows) does not fit its "
                          f"{len(indices)} indices and {len(data)} values (the file is damaged)")
    if len(indices) and (indices.min() < 0 or indices.max() >= cols):
        bad = int(indices.max()) if indices.max() >= cols else int(indices.min())
        raise MoezooError(f"{path}: the csr_matrix has column index {bad} outside 0..{cols - 1} (the file is "
                          "damaged)")
    row_of = np.repeat(np.arange(rows), np.diff(indptr))
    if state.get("_cs_matrix__has_sorted_indices", state.get("_has_sorted_indices")) is True and len(indices) > 1:
        same_row = row_of[1:] == row_of[:-1]
        if (np.diff(indices)[same_row] < 0).any():
            raise MoezooError(f"{path}: the csr_matrix says its column indices are sorted, but they are not "
                              "(the file is damaged)")
    if not np.isfinite(data).all():
        raise MoezooError(f"{path}: the features hold {int((~np.isfinite(data)).sum())} non-finite values")
    dense = np.zeros(shape, dtype=data.dtype if data.dtype.kind == "f" else np.float64)
    np.add.at(dense, (row_of, indices), data)  # sums duplicate entries, as scipy's todense does
    return dense.astype(np.float32)


def labels(value, path: Path) -> np.ndarray:
    """One-hot label rows (a row may be all zero: an unlabelled node), as float32."""
    value = _array(value, path, "the labels", 2)
    if not np.isin(value, (0, 1)).all() or (value.sum(1) > 1).any():
        raise MoezooError(f"{path}: labels must be one-hot rows of 0/1 (found values "
                          f"{sorted(np.unique(value).tolist())[:6]} or a row with two 1s)")
    return value.astype(np.float32)


def graph(value, path: Path) -> tuple[dict[int, list[int]], int]:
    """The adjacency dict (node id -> neighbour ids), checked to hold non-negative ints; and the largest id."""
    if not isinstance(value, dict):
        raise MoezooError(f"{path}: expected a dict of node id -> list of neighbour ids, got {type(value).__name__}")
    largest = -1
    for key, neighbours in value.items():
        if type(key) is not int or key < 0 or not isinstance(neighbours, list) \
                or not all(type(n) is int and n >= 0 for n in neighbours):
            raise MoezooError(f"{path}: node {key!r} must be a non-negative int with a list of non-negative int "
                              "neighbour ids")
        largest = max(largest, key, *neighbours)
    return dict(value), largest


def test_index(path: Path) -> np.ndarray:
    """``ind.<name>.test.index``: one node id per line."""
    try:
        lines = path.read_bytes().decode("ascii").split()
        ids = np.array([int(line) for line in lines], dtype=np.int64)
    except (UnicodeDecodeError, ValueError, OverflowError):
        raise MoezooError(f"{path}: expected one non-negative integer node id per line") from None
    if not len(ids) or ids.min() < 0:
        raise MoezooError(f"{path}: expected one non-negative integer node id per line (found "
                          f"{'none' if not len(ids) else int(ids.min())})")
    if len(np.unique(ids)) != len(ids):
        raise MoezooError(f"{path}: a test node id occurs twice")
    return ids


def read_planetoid_data(folder: Path, prefix: str) -> Data:
    """The graph of ``folder/ind.<prefix>.*`` with the public split: PyG's ``read_planetoid_data``, checked."""
    paths = {part: folder / f"ind.{prefix}.{part}" for part in FILES}
    x, tx, allx = (csr(load_pickle(paths[p]), paths[p]) for p in ("x", "tx", "allx"))
    y, ty, ally = (labels(load_pickle(paths[p]), paths[p]) for p in ("y", "ty", "ally"))
    adjacency, largest = graph(load_pickle(paths["graph"]), paths["graph"])
    test = test_index(paths["test.index"])

    def mismatch(what: str, a: str, b: str, sizes) -> MoezooError:
        return MoezooError(f"{paths[a]}: {what} {sizes[0]} differs from {sizes[1]} in {paths[b]}")

    for part, features in (("x", x), ("tx", tx)):
        if features.shape[1] != allx.shape[1]:
            raise mismatch("the number of features", part, "allx", (features.shape[1], allx.shape[1]))
    for part, rows in (("y", y), ("ty", ty)):
        if rows.shape[1] != ally.shape[1]:
            raise mismatch("the number of classes", part, "ally", (rows.shape[1], ally.shape[1]))
    for part, other, a, b in (("x", "y", x, y), ("allx", "ally", allx, ally), ("tx", "ty", tx, ty)):
        if len(a) != len(b):
            raise mismatch("the number of rows", part, other, (len(a), len(b)))
    if len(tx) != len(test):
        raise mismatch("the number of rows", "tx", "test.index", (len(tx), len(test)))
    if ally.shape[1] < 2:
        raise MoezooError(f"{paths['ally']}: needs at least 2 classes, got {ally.shape[1]}")
    if not 1 <= len(y) <= len(allx) - NUM_VAL:
        raise MoezooError(f"{paths['y']}: {len(y)} training nodes and the {NUM_VAL} validation nodes after them must "
                          f"fit in the {len(allx)} rows of {paths['allx'].name}")
    num_nodes = int(test.max()) + 1
    if test.min() < len(allx):
        raise MoezooError(f"{paths['test.index']}: test node {int(test.min())} is one of the {len(allx)} nodes of "
                          f"{paths['allx'].name} (test nodes follow them)")
    if num_nodes > max(largest + 1, len(allx) + len(tx)):
        raise MoezooError(f"{paths['test.index']}: test node {num_nodes - 1} is beyond the graph's "
                          f"{max(largest + 1, len(allx) + len(tx))} nodes")
    if largest >= num_nodes:
        raise MoezooError(f"{paths['graph']}: node {largest} is beyond the {num_nodes} nodes that have features")
    if num_nodes * allx.shape[1] > MAX_DENSE:
        raise MoezooError(f"{paths['allx']}: {num_nodes} x {allx.shape[1]} features would take over 1 GiB")

    # row j of tx/ty is node test[j]; test-range nodes that test.index skips stay zero (PyG's CiteSeer fix)
    features = np.zeros((num_nodes, allx.shape[1]), dtype=np.float32)
    one_hot = np.zeros((num_nodes, ally.shape[1]), dtype=np.float32)
    features[:len(allx)], one_hot[:len(ally)] = allx, ally
    features[test], one_hot[test] = tx, ty
    has_edges = any(adjacency.values())
    edge_index = edge_index_from_dict(adjacency, num_nodes=num_nodes) if has_edges \
        else torch.zeros(2, 0, dtype=torch.long)
    data = Data(x=torch.from_numpy(features), edge_index=edge_index, y=torch.from_numpy(one_hot).max(dim=1)[1])
    data.train_mask = index_to_mask(torch.arange(len(y)), size=num_nodes)
    data.val_mask = index_to_mask(torch.arange(len(y), len(y) + NUM_VAL), size=num_nodes)
    data.test_mask = index_to_mask(torch.from_numpy(test), size=num_nodes)
    return data
