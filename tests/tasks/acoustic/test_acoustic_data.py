"""Acoustic data: the split by recording / vessel / speaker, windows and resampling, bad files, the generator."""

import numpy as np
import pytest
import soundfile as sf
import torch
from acoustic_audio import FSDD, class_tree, write_tone

from moezoo.errors import MoezooError
from moezoo.tasks.acoustic import AcousticData
from moezoo.tasks.acoustic import synthetic as gen
from moezoo.tasks.acoustic.recordings import split_by_group
from moezoo.tasks.acoustic.shipsear import shipsear_class


def _windows_by_split(data):
    return {name: {data.recordings[r].group for r, _, _ in split.windows} for name, split in data.splits.items()}


def test_the_generated_default_is_split_by_vessel_and_every_class_is_tested():
    data = AcousticData(synthetic_recordings_per_class=6, synthetic_seconds=4.0)
    data.setup()
    groups = _windows_by_split(data)
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) \
        and not (groups["val"] & groups["test"]), "no vessel's windows in two splits"
    assert groups == {name: set(gs) for name, gs in data.split_groups.items()}
    test_labels = {data.recordings[r].label for r, _, _ in data.splits["test"].windows}
    assert test_labels == {0, 1, 2, 3}, "the split is stratified by class over vessels"
    # 4 s recordings, 2 s windows every 1 s: 3 windows each, all of exactly 2 s at 8 kHz
    assert sum(len(s) for s in data.splits.values()) == 24 * 3
    wave, label, group = data.splits["train"][0]
    assert wave.shape == (16000,) and wave.dtype == torch.float32 and 0 <= label < 4
    again = AcousticData(synthetic_recordings_per_class=6, synthetic_seconds=4.0)
    again.setup()
    assert again.split_groups == data.split_groups, "the split seed fixes the split"
    assert torch.equal(again.splits["test"][3][0], data.splits["test"][3][0]), "the generator is seeded"


def test_split_by_group_never_puts_a_group_in_two_splits_even_when_groups_span_classes():
    rng = np.random.default_rng(0)
    groups = rng.choice([f"speaker{i}" for i in range(7)], size=300)
    labels = rng.integers(0, 10, size=300)  # every speaker says every digit
    split = split_by_group(labels, groups, 0.15, 0.15, seed=3, class_names=[str(d) for d in range(10)])
    member = {}
    for name, idx in split.items():
        for g in set(groups[idx]):
            assert member.setdefault(g, name) == name
    assert sorted(np.concatenate(list(split.values()))) == list(range(300)), "every recording in one split"
    with pytest.raises(MoezooError, match="class 'b' has 2 recording groups; a split by recording needs at least 3"):
        split_by_group([0, 0, 0, 1, 1], ["r1", "r2", "r3", "r4", "r5"], 0.2, 0.2, 0, ["a", "b"])


@pytest.mark.skipif(not (FSDD / "manifest.csv").is_file(), reason="shared FSDD not present")
def test_fsdd_split_by_speaker_and_its_official_split_is_refused_as_leaking_speakers():
    common = dict(manifest=str(FSDD / "manifest.csv"), label_column="digit", window_seconds=1.0, pad_short=True,
                  check_audio=False)
    data = AcousticData(group_column="speaker", **common)
    data.setup()
    assert data.classes == [str(d) for d in range(10)]
    speakers = _windows_by_split(data)
    assert all(len(speakers[name]) >= 1 for name in ("train", "val", "test"))
    assert not (speakers["train"] & speakers["test"]) and not (speakers["val"] & speakers["test"])
    assert len(speakers["train"]) == 4, "6 speakers: 4 train, 1 val, 1 test"
    # the official split (take index 0-4 = test) keeps every speaker in train and test: the leakage trap
    with pytest.raises(MoezooError, match="group '.*' is in both .* the given split leaks"):
        AcousticData(group_column="speaker", split_column="split", **common).setup()
    official = AcousticData(split_column="split", **common)
    official.setup()
    assert len(official.split_groups["test"]) == 300, "without a group column, each file is its own group"


def test_a_class_tree_resamples_mixes_to_mono_and_pads_short_recordings(tmp_path):
    class_tree(tmp_path, per_class=3, seconds=1.5, rate=16000)
    write_tone(tmp_path / "a" / "stereo.wav", 1.0, 16000, channels=2)
    write_tone(tmp_path / "b" / "short.wav", 0.4, 16000)
    with pytest.raises(MoezooError, match=r"short.wav: 0.4 s is shorter than one window \(1 s\); set data.pad_short"):
        AcousticData(root=str(tmp_path), window_seconds=1.0).setup()
    data = AcousticData(root=str(tmp_path), window_seconds=1.0, hop_seconds=0.5, sample_rate=8000, pad_short=True)
    data.setup()
    assert data.classes == ["a", "b"] and data.num_classes == 2
    windows = [data.splits[n][i][0] for n in data.splits for i in range(len(data.splits[n]))]
    assert all(w.shape == (8000,) for w in windows), "16 kHz files resampled to 8 kHz windows of 1 s"
    short = next(n for n in data.splits if any(data.recordings[r].path.name == "short.wav"
                                              for r, _, _ in data.splits[n].windows))
    i = next(i for i, (r, _, _) in enumerate(data.splits[short].windows)
             if data.recordings[r].path.name == "short.wav")
    assert data.splits[short][i][0][3300:].abs().max() == 0, "zero-padded after its 0.4 s"


def test_bad_audio_fails_in_one_line_naming_the_file_or_is_skipped_with_a_count(tmp_path):
    class_tree(tmp_path, per_class=3)
    (tmp_path / "a" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(MoezooError, match=r"cannot read audio .*broken.wav"):
        AcousticData(root=str(tmp_path), window_seconds=0.5).setup()
    with pytest.warns(UserWarning, match=r"skipped 1 of 7 audio files \(first: cannot read audio .*broken.wav"):
        data = AcousticData(root=str(tmp_path), window_seconds=0.5, skip_bad=True)
        data.setup()
    assert all(r.path.name != "broken.wav" for r in data.recordings)
    (tmp_path / "a" / "broken.wav").unlink()
    sf.write(str(tmp_path / "a" / "empty.wav"), np.zeros(0), 8000)
    with pytest.raises(MoezooError, match=r"audio .*empty.wav is empty \(0 frames\)"):
        AcousticData(root=str(tmp_path), window_seconds=0.5).setup()
    (tmp_path / "a" / "empty.wav").unlink()
    write_tone(tmp_path / "b" / "cd.wav", 1.0, 44100)
    with pytest.raises(MoezooError, match=r"cd.wav: sample rate 44100 Hz is not in data.allowed_sample_rates \[8000"):
        AcousticData(root=str(tmp_path), window_seconds=0.5, allowed_sample_rates=[8000, 16000]).setup()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("no audio here")
    with pytest.raises(MoezooError, match=r"data.root: class folder .*/c has no audio files"):
        AcousticData(root=str(tmp_path)).setup()


def test_damaged_samples_behind_a_valid_header_fail_at_setup_not_mid_epoch(tmp_path):
    class_tree(tmp_path, per_class=3)
    wave = np.full(8000, np.nan, dtype=np.float32)
    sf.write(str(tmp_path / "b" / "nan.wav"), wave, 8000, subtype="FLOAT")
    with pytest.raises(MoezooError, match=r"cannot read audio .*nan.wav: it holds NaN or infinite samples"):
        AcousticData(root=str(tmp_path), window_seconds=0.5).setup()


def test_manifest_columns_and_values_are_checked_by_name(tmp_path):
    class_tree(tmp_path / "audio", per_class=3)
    rows = ["file,kind,vessel"] + [f"audio/{c}/{i}.wav,{c},{c}{i}" for c in "ab" for i in range(3)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(MoezooError, match=r"data.path_column: .*m.csv has no column 'path' \(its columns: file, kind"):
        AcousticData(manifest=str(tmp_path / "m.csv")).setup()
    data = AcousticData(manifest=str(tmp_path / "m.csv"), path_column="file", label_column="kind",
                        group_column="vessel", window_seconds=0.5)
    assert data.classes == ["a", "b"]
    (tmp_path / "bad.csv").write_text("path,label,split\naudio/a/0.wav,a,training\n")
    with pytest.raises(MoezooError, match=r"bad.csv line 2: split='training' is not train, val or test"):
        AcousticData(manifest=str(tmp_path / "bad.csv"), split_column="split").setup()
    with pytest.raises(MoezooError, match="data.feature: 'cqt' is not one of mel, stft, mfcc, lfcc"):
        AcousticData(feature="cqt").setup()


def test_the_generator_puts_each_modes_lines_where_the_model_says():
    """A vessel's spectrum at high SNR peaks at its machinery line (60 Hz for Cargo's first mode) and its
    cavitation envelope is modulated at the blade rate (the DEMON spectrum of the band's envelope)."""
    rng = np.random.default_rng(1)
    mode = gen.MODES["Cargo"][0]
    wave = gen.vessel(rng, mode, seconds=8.0, sample_rate=8000, snr_db=(30.0, 30.0))
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(wave.size, 1 / 8000)
    low = (freqs > 40) & (freqs < 200)
    assert abs(freqs[low][spectrum[low].argmax()] - 60.0) < 1.0
    recordings = gen.generate(recordings_per_class=2, seconds=1.0)
    assert [label for _, label, _ in recordings] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(np.abs(w).max() == pytest.approx(0.1, rel=1e-3) for w, _, _ in recordings)


def test_shipsear_vessel_types_map_to_its_five_classes():
    assert [shipsear_class(t) for t in ("Fishboat", "Mussel boat", "Tugboat", "Motorboat", "Passengers",
                                        "RORO", "Ocean liner", "Natural noise")] == list("AAABCDDE")
    with pytest.raises(MoezooError, match="unknown vessel type 'Submarine'"):
        shipsear_class("Submarine")
