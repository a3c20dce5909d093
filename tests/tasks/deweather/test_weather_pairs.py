"""Real pairs: the shared folder tree, list files, and a one-line error for every way a pair can be wrong."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moezoo.errors import MoezooError
from moezoo.tasks.deweather.pairs import (
    Pair,
    PairDataset,
    check_pairs,
    folder_pairs,
    list_pairs,
    read_image,
    weather_of,
)

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "weather"


def _png(path: Path, width=12, height=10, seed=0, invert=False) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(255 - pixels if invert else pixels).save(path)
    return path


def _pair_folder(root: Path, names_in, names_out, size=(12, 10)) -> Path:
    for name in names_in:
        _png(root / "input" / name, *size)
    for name in names_out:
        _png(root / "target" / name, *size)
    return root


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared weather pairs not present")
def test_the_shared_tree_gives_24_checked_pairs_of_three_weathers():
    pairs = folder_pairs(SHARED)
    assert len(pairs) == 24
    counts = {w: sum(p.weather == w for p in pairs) for w in ("rain", "raindrop", "haze")}
    assert counts == {"rain": 8, "raindrop": 4, "haze": 12}
    assert all(p.input.name == p.target.name and p.input.parent.name == "input" for p in pairs)
    sizes = check_pairs(pairs)
    degraded, clean, weather = PairDataset(pairs, ["haze", "rain", "raindrop"])[0]
    assert degraded.shape == clean.shape == (3, sizes[0][1], sizes[0][0]) and int(weather) == 0
    assert degraded.dtype == torch.float32 and 0 <= degraded.min() and degraded.max() <= 1


def test_a_single_weather_folder_is_named_by_its_folder(tmp_path):
    pairs = folder_pairs(_pair_folder(tmp_path / "Snow100K", ["a.png", "b.jpg"], ["a.png", "b.jpg"]))
    assert [(p.input.name, p.weather) for p in pairs] == [("a.png", "Snow100K"), ("b.jpg", "Snow100K")]


def test_unmatched_names_name_the_first_few_and_the_count(tmp_path):
    _pair_folder(tmp_path / "rain", ["a.png", "b.png", "c.png", "d.png", "e.png"], ["a.png"])
    with pytest.raises(MoezooError, match=r"data.train: 4 images in .*rain/input without one of the same name in "
                                          r".*rain/target: b.png, c.png, d.png, \.\.\."):
        folder_pairs(tmp_path)
    _pair_folder(tmp_path / "haze", ["a.png"], ["a.png", "z.png"])
    with pytest.raises(MoezooError, match=r"data.val: 1 image in .*haze/target without .* in .*haze/input: z.png$"):
        folder_pairs(tmp_path / "haze", key="data.val")


def test_a_tree_without_pairs_is_an_error_naming_it(tmp_path):
    with pytest.raises(MoezooError, match="data.train: no such directory"):
        folder_pairs(tmp_path / "absent")
    (tmp_path / "notes").mkdir()
    with pytest.raises(MoezooError, match="has no input/ and target/ folders"):
        folder_pairs(tmp_path)
    (tmp_path / "fog" / "input").mkdir(parents=True)
    with pytest.raises(MoezooError, match=r"fog has no target/ folder"):
        folder_pairs(tmp_path)
    (tmp_path / "fog" / "target").mkdir()
    with pytest.raises(MoezooError, match="no image pairs in"):
        folder_pairs(tmp_path)


def test_pairs_of_different_sizes_or_unreadable_files_name_both_files(tmp_path):
    a = Pair(_png(tmp_path / "in.png", 12, 10), _png(tmp_path / "gt.png", 12, 11), "rain")
    with pytest.raises(MoezooError, match=r"different sizes: .*in.png is 12x10, .*gt.png is 12x11"):
        check_pairs([a])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    b = Pair(tmp_path / "in.png", tmp_path / "bad.png", "rain")
    with pytest.raises(MoezooError, match=r"cannot read image .*bad.png \(of the pair .*in.png -> .*bad.png\)"):
        check_pairs([b])
    with pytest.raises(MoezooError, match=r"cannot read image .*bad.png: "):
        read_image(tmp_path / "bad.png")
    assert read_image(tmp_path / "in.png").shape == (10, 12, 3)


def test_train_crops_are_the_same_window_of_both_images_and_bounded_by_them(tmp_path):
    pair = Pair(_png(tmp_path / "in.png", 40, 32), _png(tmp_path / "gt.png", 40, 32, invert=True), "snow")
    data = PairDataset([pair], ["rain", "snow"], crop_size=16, train=True)
    torch.manual_seed(0)
    degraded, clean, weather = data[0]
    assert degraded.shape == (3, 16, 16) and int(weather) == 1
    assert torch.allclose(degraded, 1 - clean), "one crop (and flip) of both images"
    torch.manual_seed(0)
    assert torch.equal(data[0][0], degraded), "crops follow torch's seed"
    with pytest.raises(MoezooError, match=r"data.crop_size=33 is larger than the image pair .*in.png -> .*gt.png "
                                          r"\(40x32\); use at most 32"):
        PairDataset([pair], ["snow"], crop_size=33, train=True)[0]
    assert PairDataset([pair], ["snow"])[0][0].shape == (3, 32, 40), "eval: the whole image"


def _list_tree(root: Path) -> None:
    for folder in ("Outdoor-Rain", "snow", "haze/input"):
        _png(root / folder / "input" / "1.png")
        _png(root / folder / "gt" / "1.png")


def test_a_list_file_derives_targets_and_weathers_like_transweather(tmp_path):
    _list_tree(tmp_path / "data")
    outside = _png(tmp_path / "elsewhere" / "RainDrop" / "input" / "9.png")
    _png(tmp_path / "elsewhere" / "RainDrop" / "gt" / "9.png")
    lines = ["./Outdoor-Rain/input/1.png", "", "/snow/input/1.png", "haze/input/input/1.png", str(outside), "  "]
    (tmp_path / "data" / "list.txt").write_text("\n".join(lines) + "\n")
    pairs = list_pairs(tmp_path / "data" / "list.txt")
    assert [p.weather for p in pairs] == ["rain", "snow", "haze", "raindrop"]
    assert pairs[0].target == tmp_path / "data" / "Outdoor-Rain" / "gt" / "1.png"
    assert pairs[2].target == tmp_path / "data" / "haze" / "input" / "gt" / "1.png", "the last 'input' is replaced"
    assert pairs[3].input == outside and pairs[3].target.parent.name == "gt"
    names = ("RainDrop", "Snow100K-L", "OutdoorRain", "fog", "Test1", "train")
    assert [weather_of(n) for n in names] == ["raindrop", "snow", "rain", "fog", "all", "all"], "words, not substrings"


def test_a_list_file_with_a_missing_target_or_no_input_component_names_the_line(tmp_path):
    _list_tree(tmp_path)
    _png(tmp_path / "snow" / "input" / "2.png")
    (tmp_path / "list.txt").write_text("snow/input/1.png\nsnow/input/2.png\n")
    with pytest.raises(MoezooError, match=r"data.test: .*list.txt line 2: the target .*snow/gt/2.png of "
                                          r".*snow/input/2.png does not exist"):
        list_pairs(tmp_path / "list.txt", key="data.test")
    (tmp_path / "list.txt").write_text("\nsnow/rainy/1.png\n")
    with pytest.raises(MoezooError, match=r"line 2: 'snow/rainy/1.png' has no path component 'input'"):
        list_pairs(tmp_path / "list.txt")
    (tmp_path / "list.txt").write_text("snow/input/7.png\n")
    with pytest.raises(MoezooError, match=r"line 1: no such image: .*snow/input/7.png"):
        list_pairs(tmp_path / "list.txt")
