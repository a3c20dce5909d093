"""WeatherData: the synthetic default, real splits in its place, the weather names and the argument errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moezoo.errors import MoezooError
from moezoo.tasks.deweather.data import WeatherData
from moezoo.tasks.deweather.synthetic import WEATHERS

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "weather"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared weather pairs not present")


def _pair(root: Path, weather: str, name: str, width=24, height=20, target_height=None) -> None:
    pixels = np.random.default_rng(len(name)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for side, h in (("input", height), ("target", target_height or height)):
        (root / weather / side).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[:h] if h <= height else np.zeros((h, width, 3), np.uint8)).save(
            root / weather / side / name)


def test_the_synthetic_default_gives_crop_batches_and_whole_eval_images():
    data = WeatherData(train_samples=6, batch_size=3, crop_size=32, eval_size=64)
    assert data.weather_names == list(WEATHERS)
    data.setup()
    splits = data.splits
    data.setup()
    assert data.splits is splits, "setup is idempotent"
    # val: 1 photo, test: 2 photos, each under 3 weathers x 2 variants
    assert {name: len(split) for name, split in splits.items()} == {"train": 6, "val": 6, "test": 12}
    degraded, clean, weather = next(iter(data.train_dataloader()))
    assert degraded.shape == clean.shape == (3, 3, 32, 32) and weather.shape == (3,)
    degraded, clean, weather = next(iter(data.val_dataloader()))
    assert degraded.shape == (1, 3, 40, 64) and int(weather[0]) == 0
    assert data.has_test and next(iter(data.test_dataloader()))[1].shape == (1, 3, 40, 64)


@needs_shared
def test_a_real_test_split_joins_its_weathers_after_the_synthetic_ones():
    data = WeatherData(test=SHARED, train_samples=3)
    assert data.weather_names == ["rain", "snow", "haze", "raindrop"]
    data.setup()
    assert len(data.splits["test"]) == 24 and len(data.splits["val"]) == 6, "synthetic val, real test"
    test = data.splits["test"]
    haze = next(i for i, p in enumerate(test.pairs) if p.weather == "haze")
    assert int(test[haze][2]) == 2, "a real haze pair shares the synthetic haze's id"


@needs_shared
def test_a_real_train_split_holds_out_val_seeded_and_has_no_test():
    data = WeatherData(train=SHARED, val_fraction=0.25, batch_size=4)
    assert data.weather_names == ["haze", "rain", "raindrop"]
    data.setup()
    train, val = data.splits["train"].pairs, data.splits["val"].pairs
    assert len(val) == 6 and len(train) == 18 and not set(train) & set(val)
    assert not data.has_test
    again = WeatherData(train=SHARED, val_fraction=0.25)
    again.setup()
    assert again.splits["val"].pairs == val
    assert next(iter(data.train_dataloader()))[0].shape == (4, 3, 64, 64)


def test_weather_names_follow_first_appearance_over_the_splits(tmp_path):
    for name in ("1.png", "2.png"):
        _pair(tmp_path / "train", "snow", name)
        _pair(tmp_path / "train", "fog", name)
    (tmp_path / "train" / "list.txt").write_text("snow/input/1.png\nfog/input/1.png\nsnow/input/2.png\n")
    _pair(tmp_path / "val", "rain", "3.png")
    _pair(tmp_path / "val", "fog", "3.png")
    data = WeatherData(train=tmp_path / "train" / "list.txt", val=tmp_path / "val", target_to="target", crop_size=16)
    assert data.weather_names == ["snow", "fog", "rain"]
    data.setup()
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 3, "val": 2}
    assert [int(data.splits["val"][i][2]) for i in range(2)] == [1, 2]


def test_real_pairs_are_checked_at_setup(tmp_path):
    _pair(tmp_path, "rain", "1.png", target_height=18)
    with pytest.raises(MoezooError, match=r"different sizes: .*input/1.png is 24x20, .*target/1.png is 24x18"):
        WeatherData(test=tmp_path).setup()
    _pair(tmp_path, "rain", "1.png")
    _pair(tmp_path, "rain", "2.png")
    with pytest.raises(MoezooError, match=r"data.crop_size=32 is larger than the train image pair .*1.png .* "
                                          r"\(short side 20 px\); use at most 20"):
        WeatherData(train=tmp_path, crop_size=32).setup()
    with pytest.raises(MoezooError, match="data.train: 2 pairs leave none to train on .* give data.val"):
        WeatherData(train=tmp_path, crop_size=16, val_fraction=0.9).setup()


@pytest.mark.parametrize("args, message", [
    (dict(crop_size=0), "data.crop_size: must be a positive integer, got 0"),
    (dict(eval_batch_size=True), "data.eval_batch_size: must be a positive integer, got True"),
    (dict(eval_size=4), "data.eval_size: must be at least 8"),
    (dict(val_fraction=1.0), r"data.val_fraction: must be a number between 0 and 1 \(exclusive\), got 1.0"),
    (dict(num_workers=-1), "data.num_workers: must be an integer >= 0"),
    (dict(target_to="input"), "data.target_to: must differ from data.target_from"),
    (dict(target_from="a/b"), "data.target_from: must be a folder name"),
    (dict(val="absent"), "data.val: no such file or directory: absent"),
    (dict(test=Path(__file__)), r"data.test: .*test_weather_data.py is a file but not a .txt list file"),
])
def test_bad_arguments_name_their_key(args, message):
    with pytest.raises(MoezooError, match=message):
        WeatherData(**args).setup()
