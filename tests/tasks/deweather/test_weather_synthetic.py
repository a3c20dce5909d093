"""The weather synthesiser: seeded, each weather changes an image as its model says, the datasets' sizes and balance."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from moezoo.errors import MoezooError
from moezoo.tasks.deweather import synthetic as syn


def _crop(size=96):
    return np.ascontiguousarray(syn.load_photos("train")[0][100:100 + size, 150:150 + size])


@pytest.mark.parametrize("weather", syn.WEATHERS)
def test_the_same_seed_gives_the_same_image_and_another_seed_another(weather):
    clean = _crop()
    first, params = syn.degrade(clean, weather, np.random.default_rng(3))
    again, same = syn.degrade(clean, weather, np.random.default_rng(3))
    other, _ = syn.degrade(clean, weather, np.random.default_rng(4))
    assert np.array_equal(first, again) and params == same
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32 and first.shape == clean.shape and 0 <= first.min() and first.max() <= 1


def test_haze_is_the_scattering_model_exactly():
    clean = np.full((6, 5, 3), 0.3, np.float32)
    depth = np.linspace(0, 1, 30).reshape(6, 5)
    t = np.exp(-1.2 * depth)[..., None]
    np.testing.assert_allclose(syn.haze(clean, depth, 1.2, 0.9), np.broadcast_to(0.3 * t + 0.9 * (1 - t), clean.shape),
                               rtol=1e-6)
    # drawn haze on a constant image: t recovered from I = J t + A (1 - t) gives a depth normalised to [0, 1]
    hazy, params = syn.degrade(np.full((64, 48, 3), 0.3, np.float32), "haze", np.random.default_rng(0))
    t = (params["airlight"] - hazy[..., 0].astype(np.float64)) / (params["airlight"] - 0.3)
    recovered = -np.log(t) / params["beta"]
    assert recovered.min() == pytest.approx(0, abs=1e-4) and recovered.max() == pytest.approx(1, abs=1e-4)
    assert recovered[:8].mean() > recovered[-8:].mean(), "far at the top"
    assert np.allclose(hazy[..., 0], hazy[..., 2]), "grey airlight"


def test_haze_brightens_a_photograph_and_lowers_its_contrast():
    clean = _crop()
    for seed in range(3):
        hazy, _ = syn.degrade(clean, "haze", np.random.default_rng(seed))
        assert hazy.mean() > clean.mean() and hazy.std() < clean.std()


def test_rain_adds_bright_streaks_along_its_angle():
    clean = np.full((96, 96, 3), 0.3, np.float32)
    for seed in range(4):
        rainy, params = syn.degrade(clean, "rain", np.random.default_rng(seed))
        streaks = (rainy - clean)[..., 0].astype(np.float64)
        assert streaks.min() >= -1e-6 and streaks.max() > 0.4, "rain only adds light"
        theta = np.deg2rad(params["angle"])
        along, across = (2 * np.cos(theta), 2 * np.sin(theta)), (-2 * np.sin(theta), 2 * np.cos(theta))
        change = {name: np.abs(ndimage.shift(streaks, step, order=1) - streaks)[12:-12, 12:-12].mean()
                  for name, step in (("along", along), ("across", across))}
        assert change["along"] < 0.7 * change["across"], (params, change)  # about 0.4 (at most 0.6 over 40 seeds)


def test_snow_only_brightens_and_adds_flakes():
    clean = _crop()
    for seed in range(3):
        snowy, params = syn.degrade(clean, "snow", np.random.default_rng(seed))
        assert (snowy >= clean - 1e-6).all() and snowy.mean() > clean.mean()
        assert (snowy - clean).max() > 0.3 and 0.85 <= params["brightness"] <= 1


def test_train_items_are_seeded_by_index_balanced_over_weathers_and_crops():
    data = syn.SyntheticWeather("train", num_samples=9, crop_size=32, seed=5)
    assert len(data) == 9
    degraded, clean, weather = data[4]
    assert degraded.shape == clean.shape == (3, 32, 32) and degraded.dtype == torch.float32
    assert weather.dtype == torch.long and weather.ndim == 0
    assert np.bincount([int(data[i][2]) for i in range(9)]).tolist() == [3, 3, 3]
    again = syn.SyntheticWeather("train", num_samples=9, crop_size=32, seed=5)
    other = syn.SyntheticWeather("train", num_samples=9, crop_size=32, seed=6)
    assert torch.equal(again[4][0], degraded) and torch.equal(again[4][1], clean)
    assert not torch.equal(other[4][1], clean)
    with pytest.raises(IndexError):
        data[9]


def test_eval_items_are_every_held_out_photo_under_every_weather_and_variant():
    val = syn.SyntheticWeather("val", eval_size=64, variants=2)
    assert len(val) == 1 * 3 * 2
    assert [int(item[2]) for item in val] == [0, 0, 1, 1, 2, 2]
    assert all(item[0].shape == (3, 40, 64) for item in val), "coffee 400x600 -> 43x64 -> cut to 40x64"
    assert not torch.equal(val[0][0], val[1][0]), "two variants, two seeds"
    assert torch.equal(syn.SyntheticWeather("val", eval_size=64, variants=2)[5][0], val[5][0])
    test = syn.SyntheticWeather("test", eval_size=100, variants=1)
    assert len(test) == 2 * 3 and test[0][1].shape == (3, 64, 96), "chelsea 300x451 -> 67x100 -> 64x96"
    assert test[3][1].shape == (3, 64, 96), "rocket 427x640 -> 67x100 -> 64x96"
    assert not torch.equal(test[0][1], val[0][1][:, :, :64]), "test holds out another photograph"


def test_the_photographs_are_split_by_photograph_and_cached():
    assert not set(syn.PHOTOS["train"]) & (set(syn.PHOTOS["val"]) | set(syn.PHOTOS["test"]))
    train = syn.load_photos("train")
    assert len(train) == 6 and all(p.dtype == np.float32 and p.shape[2] == 3 and p.max() <= 1 for p in train)
    assert syn.load_photos("train")[0] is train[0]
    grey = train[syn.PHOTOS["train"].index("camera")]
    assert np.array_equal(grey[..., 0], grey[..., 2])


def test_a_crop_larger_than_the_smallest_train_photograph_names_data_crop_size():
    with pytest.raises(MoezooError, match=r"data.crop_size=501 is larger than the smallest train photograph "
                                          r"\(motorcycle_left, short side 500 px\); use at most 500"):
        syn.SyntheticWeather("train", crop_size=501)
    with pytest.raises(MoezooError, match="'fog' is not one of rain, snow, haze"):
        syn.degrade(_crop(8), "fog", np.random.default_rng(0))
