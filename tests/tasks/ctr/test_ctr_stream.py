"""CTR data at scale: `moezoo prepare` shards, streamed batches equal to the in-memory path's, every training row
once per epoch over DataLoader workers and ranks, seeded shuffling, and one-line errors for bad directories."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from moezoo.errors import MoezooError
from moezoo.tasks.ctr import prepare as prepare_module
from moezoo.tasks.ctr.criteo_format import write_criteo_tsv
from moezoo.tasks.ctr.data import CTRData
from moezoo.tasks.ctr.stream import EpochLoader, StreamedRows

CRITEO = Path(__file__).resolve().parents[4] / "shared" / "data" / "ctr" / "criteo" / "deepctr_criteo_sample.txt.gz"
needs_criteo = pytest.mark.skipif(not CRITEO.is_file(), reason="shared data not present")


def _both(source, to, **options):
    """The in-memory data module of ``source`` and the streamed one of its prepared directory ``to``."""
    memory = CTRData(path=str(source), **options)
    memory.setup()
    CTRData(path=str(source), **options).prepare(to)
    streamed = CTRData(path=str(to), **options)
    streamed.setup()
    return memory, streamed


def _assert_same_batches(memory, streamed):
    for split in ("train", "val", "test"):
        expected = list(memory.make_loader(memory.splits[split], shuffle=False))
        got = list(streamed.make_loader(streamed.splits[split], shuffle=False))
        assert len(got) == len(expected) > 0, split
        for a, b in zip(expected, got):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype, key
                if key == "numeric":  # mean/std merged over chunks: equal up to float rounding
                    torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-6)
                else:
                    assert torch.equal(a[key], b[key]), (split, key)


@needs_criteo
@pytest.mark.parametrize("options", [
    {"preset": "criteo"},
    {"preset": "criteo", "hash_buckets": 1000, "numeric_transform": "bucketize", "num_buckets": 4},
    {"preset": "criteo", "min_count": 2, "numeric_transform": "standard"},
])
def test_prepared_criteo_sample_streams_the_in_memory_batches(options, tmp_path):
    memory, streamed = _both(CRITEO, tmp_path / "prepared", batch_size=16, **options)
    assert streamed.state_dict()["vocab"] == memory.state_dict()["vocab"]
    assert {k: len(v) for k, v in memory.splits.items()} == {k: v.rows for k, v in streamed.splits.items()}
    _assert_same_batches(memory, streamed)
    assert streamed.field_cardinalities == memory.field_cardinalities


def test_generated_criteo_tsv_over_several_chunks_streams_the_in_memory_batches(tmp_path, monkeypatch):
    """A header-less TSV read in chunks of 700 lines (shards of 1,000 rows in row groups of 256): the vocabularies,
    statistics and bucket edges fitted chunk by chunk are those of the whole training split at once."""
    monkeypatch.setattr(prepare_module, "CHUNK_ROWS", 700)
    monkeypatch.setattr(prepare_module, "ROW_GROUP_ROWS", 256)
    monkeypatch.setattr(prepare_module, "FILE_ROWS", 1000)
    source = write_criteo_tsv(tmp_path / "train.txt", 3000, seed=1)
    for options in ({"min_count": 3}, {"numeric_transform": "bucketize", "hash_buckets": 50}):
        memory, streamed = _both(source, tmp_path / "prepared", preset="criteo", batch_size=100, **options)
        assert len(streamed.splits["train"].groups) > 3
        _assert_same_batches(memory, streamed)
        if "hash_buckets" not in options:
            expected, got = memory.state_dict()["numeric_stats"], streamed.state_dict()["numeric_stats"]
            assert got.keys() == expected.keys()
            for column in expected:
                assert got[column] == pytest.approx(expected[column], rel=1e-12)


def _ids_file(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    pd.DataFrame({"row": [f"r{i}" for i in range(rows)], "c": rng.integers(0, 5, rows).astype(str),
                  "x": rng.standard_normal(rows), "i": np.arange(rows), "y": rng.integers(0, 2, rows)}).to_csv(
        path, index=False)
    return path


SPEC = {"labels": ["y"], "categorical": ["row", "c"], "numeric": ["x", "i"]}


@pytest.fixture(scope="module")
def prepared_ids(tmp_path_factory):
    """1,003 rows with a row number ``i``: 803 train rows in 13 row groups of 64."""
    root = tmp_path_factory.mktemp("ids")
    patch = pytest.MonkeyPatch()
    patch.setattr(prepare_module, "ROW_GROUP_ROWS", 64)
    try:
        CTRData(path=str(_ids_file(root / "ids.csv", 1003)), **SPEC).prepare(root / "prepared")
    finally:
        patch.undo()
    data = CTRData(path=str(root / "prepared"), batch_size=32, shuffle_buffer=100, **SPEC)
    data.setup()
    return data


def _read_ids(data, split, rank, world, workers, shuffle, epoch=0) -> list[list[int]]:
    rows = data.splits[split].with_options(shuffle=shuffle, train=shuffle, num_workers=workers, ranks=(rank, world),
                                           batch_size=data.batch_size)
    loader = EpochLoader(rows, lambda: epoch, num_workers=workers)
    mean, std = data.numeric_stats["i"]
    batches = [(batch["numeric"][:, 1].double() * std + mean).round().long().tolist() for batch in loader]
    assert len(batches) == len(loader)  # the length Lightning plans the epoch with
    return batches


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_each_training_row_is_read_once_per_epoch_over_workers_and_ranks(prepared_ids, workers, world):
    data, train = prepared_ids, prepared_ids.splits["train"].rows
    per_rank = [_read_ids(data, "train", rank, world, workers, shuffle=True) for rank in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1, "every rank runs the same number of steps"
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) == train // world * world  # no row twice; rows mod world dropped
    assert set(seen) <= set(range(1003))
    for a in range(world):
        for b in range(a + 1, world):
            assert not {i for x in per_rank[a] for i in x} & {i for x in per_rank[b] for i in x}


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_reads_every_row_over_ranks_padding_to_equal_shares(prepared_ids, workers):
    data = prepared_ids
    val = data.splits["val"].rows  # 100 rows: 50 per rank of 2; 3 ranks: 34 each, 2 rows read twice
    for world in (2, 3):
        per_rank = [_read_ids(data, "val", rank, world, workers, shuffle=False) for rank in range(world)]
        seen = [i for batches in per_rank for batch in batches for i in batch]
        assert {len(sum(b, [])) for b in per_rank} == {-(-val // world)}
        assert len(set(seen)) == val and len(seen) - val == -(-val // world) * world - val


def test_shuffle_is_seeded_and_changes_with_the_epoch(prepared_ids):
    first = _read_ids(prepared_ids, "train", 0, 1, 0, shuffle=True, epoch=0)
    again = _read_ids(prepared_ids, "train", 0, 1, 0, shuffle=True, epoch=0)
    second = _read_ids(prepared_ids, "train", 0, 1, 0, shuffle=True, epoch=1)
    ordered = _read_ids(prepared_ids, "train", 0, 1, 0, shuffle=False)
    assert first == again and first != second and sorted(sum(first, [])) == sorted(sum(second, []))
    assert sum(ordered, []) == sorted(sum(ordered, [])) != sum(first, [])  # unshuffled: file order
    # rows are mixed across row groups, not only row groups reordered
    assert any(max(b) - min(b) > 64 * 1003 / 803 for b in first)


def test_the_loader_takes_the_trainers_epoch(prepared_ids):
    class Trainer:
        current_epoch = 5

    data = CTRData(path=str(prepared_ids.path), batch_size=32, **SPEC)
    data.trainer = Trainer()
    loader = data.train_dataloader()
    iter(loader)
    assert loader.dataset.epoch == 5 and isinstance(loader.dataset, StreamedRows)


def test_prepared_directory_errors_are_one_line_naming_the_file(prepared_ids, tmp_path):
    def error(**options) -> str:
        with pytest.raises(MoezooError) as info:
            data = CTRData(**{**SPEC, **options})
            data.setup()
            for _ in data.train_dataloader():
                pass
        message = str(info.value)
        assert "\n" not in message
        return message

    assert "no such file" in error(path=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "prepared.json" in error(path=str(tmp_path / "empty"))
    # a directory prepared with another spec
    assert "data.hash_buckets=None" in error(path=str(prepared_ids.path), hash_buckets=100)
    assert "data.numeric" in error(path=str(prepared_ids.path), **{**SPEC, "numeric": []})

    def copy() -> Path:
        import shutil

        target = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(prepared_ids.path, target)
        return target

    damaged = copy()
    shard = damaged / "train" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert str(shard) in error(path=str(damaged)) and "not a readable Parquet file" in error(path=str(damaged))
    foreign = copy()
    shard = foreign / "val" / "part-00000.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), shard)
    assert str(shard) in error(path=str(foreign)) and "not the prepared ones" in error(path=str(foreign))
    emptied = copy()
    (emptied / "data.json").write_text("{")
    assert str(emptied / "data.json") in error(path=str(emptied))
    # a shard damaged inside its data (the footer intact): the error comes when its row group is read
    inside = copy()
    shard = inside / "train" / "part-00000.parquet"
    raw = bytearray(shard.read_bytes())
    raw[100:400] = bytes(300)
    shard.write_bytes(bytes(raw))
    message = error(path=str(inside))
    assert str(shard) in message


def test_prepare_refuses_bad_targets_and_sources(tmp_path):
    source = _ids_file(tmp_path / "ids.csv", 50)
    data = CTRData(path=str(source), **SPEC)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    with pytest.raises(MoezooError, match="not an empty directory"):
        data.prepare(tmp_path / "busy")
    with pytest.raises(MoezooError, match="no such file"):
        CTRData(path=str(tmp_path / "nope.csv"), **SPEC).prepare(tmp_path / "out")
    bad = tmp_path / "bad.csv"
    bad.write_text("row,c,x,i,y\n" + "".join(f"r{i},a,{i},{i},{i % 2}\n" for i in range(10)) + "r10,a,oops,10,1\n")
    with pytest.raises(MoezooError, match=r"bad\.csv.*'x' holds a non-number, 'oops'"):
        CTRData(path=str(bad), **SPEC).prepare(tmp_path / "out2")
    assert not (tmp_path / "out2" / "prepared.json").exists()
    # preparing again into the same directory replaces it
    data.prepare(tmp_path / "out3")
    data.prepare(tmp_path / "out3")
    assert sorted(p.name for p in (tmp_path / "out3").iterdir()) == ["data.json", "prepared.json", "test", "train",
                                                                      "val"]
