"""Shared audio for the acoustic tests: the DeepShip subset extracted once per session, FSDD read in place."""

import tarfile

import pytest
from acoustic_audio import DEEPSHIP_ARCHIVE


@pytest.fixture(scope="session")
def deepship_tree(tmp_path_factory):
    """The DeepShip subset as its class-folder tree (Passengership/, Tanker/), without the metadata folder."""
    if not DEEPSHIP_ARCHIVE.is_file():
        pytest.skip("shared DeepShip audio not present")
    root = tmp_path_factory.mktemp("deepship")
    with tarfile.open(DEEPSHIP_ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    tree = root / "tree"
    tree.mkdir()
    for name in ("Passengership", "Tanker"):
        (root / "DeepShip" / name).rename(tree / name)
    return tree

