"""Mobility data: the generator's structure, the filters and their counted drops, the chronological split and the
windows (every target is the user's next visit, only the split's targets are marked, history comes first)."""

import numpy as np
import pandas as pd
import pytest
import torch

from moezoo.errors import MoezooError
from moezoo.tasks.mobility import synthetic
from moezoo.tasks.mobility.sequences import WindowDataset, haversine_km, prepare


@pytest.fixture(scope="module")
def generated():
    return synthetic.generate(users_per_city=12, days=21, seed=3)


def test_generator_is_seeded_and_its_cities_differ_in_gyration_and_entropy(generated):
    again = synthetic.generate(users_per_city=12, days=21, seed=3)
    pd.testing.assert_frame_equal(generated, again)
    prepared = prepare(generated)
    users = prepared.visits.groupby("user").agg(city=("city", "first"), gyration=("gyration", "first"),
                                                entropy=("entropy", "first"))
    by_city = users.groupby("city").median()
    assert by_city.gyration["Compact"] < by_city.gyration["Metro"] < by_city.gyration["Sprawl"]
    assert by_city.entropy["Compact"] < by_city.entropy["Sprawl"]
    assert set(generated.category) <= set(synthetic.CATEGORIES)
    assert generated.time.dt.hour.between(0, 23).all()


def frame(rows):
    out = pd.DataFrame(rows, columns=["user", "location", "time", "latitude", "longitude", "category", "city"])
    out["time"] = pd.to_datetime(out.time)
    return out


def test_filters_count_what_they_drop_and_refuse_to_drop_most_of_the_data():
    rows = [("a", f"L{i % 3}", f"2024-01-01 {8 + i}:00", 40.0, -73.0 + 0.01 * i, "food", "X") for i in range(12)]
    rows += [("a", "rare", "2024-01-01 21:00", 40.0, -73.0, "", "X")]  # a location seen once
    rows += [("b", "L0", "2024-01-05 08:00", 40.0, -73.0, "food", "X")]  # a user with one visit
    prepared = prepare(frame(rows), min_session_length=1, min_location_visits=2, min_user_visits=5)
    assert prepared.dropped["at locations visited fewer than 2 times"] == 1
    assert prepared.dropped["of users with fewer than 5 visits"] == 1
    assert prepared.users == ["a"] and prepared.num_locations == 3
    assert "12 of 14 visits kept" in prepared.summary()
    with pytest.raises(MoezooError, match="only 0 of 14 visits are left after filtering .*min_user_visits=50"):
        prepare(frame(rows), min_user_visits=50, source="x.csv")


def test_split_is_chronological_per_user_and_features_follow_their_definitions():
    rows = [("a", f"L{i % 4}", f"2024-01-0{1 + i // 5} {6 + 2 * (i % 5)}:00", 40.0 + 0.01 * (i % 4), -73.0,
             "shop", "X") for i in range(20)]
    prepared = prepare(frame(rows), min_session_length=1, min_user_visits=5)
    v = prepared.visits
    assert v.split.tolist() == [0] * 14 + [1] * 2 + [2] * 4
    assert v.hour_of_week.iloc[0] == 0 * 24 + 6  # Monday 06:00
    assert v.gap_bin.iloc[0] == 0 and v.gap_bin.iloc[1] == 2  # first visit; a 2-hour gap falls in [1, 3) h
    jump = haversine_km(40.0, -73.0, 40.01, -73.0)
    assert 1.0 < jump < 1.2 and v.distance_bin.iloc[1] == 4  # 1.11 km: the [1, 2) km bin
    pattern = prepared.patterns[v.location_id.iloc[0]]
    assert pattern.sum() == pytest.approx(1.0) and pattern[6] > 0


def test_windows_predict_the_next_visit_and_mark_only_their_split(generated):
    prepared = prepare(generated)
    v = prepared.visits
    for split in (0, 1, 2):
        data = WindowDataset(prepared, split, max_len=16)
        marked = 0
        for start, stop, first in data.windows[:40]:
            item = data[data.windows.index((start, stop, first))]
            n = stop - start
            assert torch.equal(item["locations"][:n], torch.as_tensor(v.location_id.to_numpy()[start:stop]))
            assert torch.equal(item["targets"][:n], torch.as_tensor(v.location_id.to_numpy()[start + 1:stop + 1]))
            rows = np.arange(start + 1, stop + 1)
            assert item["mask"][:n].tolist() == (rows >= first).tolist()
            assert (v.split.to_numpy()[rows[rows >= first]] == split).all()
            assert (v.user.to_numpy()[start:stop + 1] == v.user.to_numpy()[start]).all()  # one user per window
            assert not item["mask"][n:].any() and (item["locations"][n:] == 0).all()
            marked += int(item["mask"].sum())
        assert marked > 0
    # every target of a split is marked exactly once over its windows
    test = WindowDataset(prepared, 2, max_len=16)
    total = sum(int(test[i]["mask"].sum()) for i in range(len(test)))
    first_of_user = v.user.ne(v.user.shift())
    assert total == int(((v.split == 2) & ~first_of_user).sum())
