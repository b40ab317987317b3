"""Label maps for 3D generation on real hippocampus volumes: encodings, the candidate database, reading a
user's label map alone and writing NIfTI output."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthmed.data.volumes import (
    LoadedVolumes,
    VolumeConfig,
    VolumePair,
    load_label_map,
    load_volume_pair,
    load_volumes,
    save_nifti,
)
from synthmed.errors import SynthmedError
from synthmed.models.conditioning import decode_labels, encode_labels, encoding_channels
from synthmed.sampling.label_maps import CandidateLabelMaps, fit

KEYS = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007")
CFG = VolumeConfig(size=(32, 48, 32))


@pytest.fixture(scope="module")
def volumes(msd_pairs: Callable[[Sequence[str]], Path]) -> LoadedVolumes:
    return load_volumes(msd_pairs(KEYS), CFG, require_labels=True)


@pytest.fixture(scope="module")
def candidates(volumes: LoadedVolumes) -> CandidateLabelMaps:
    assert volumes.labels is not None
    return CandidateLabelMaps(volumes.labels, volumes.keys, (1.0, 1.0, 1.0))


def _label_file(hippocampus: Path, key: str = KEYS[0]) -> Path:
    return hippocampus / "labels" / f"{key}.nii.gz"


# --- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_labels", "onehot", "bits"), [(2, 1, 1), (3, 2, 2), (4, 3, 2), (5, 4, 3), (133, 132, 8)]
)
def test_channel_counts(num_labels: int, onehot: int, bits: int) -> None:
    assert encoding_channels(num_labels, "onehot") == onehot
    assert encoding_channels(num_labels, "bits") == bits


@pytest.mark.parametrize("encoding", ["onehot", "bits"])
def test_encoding_round_trip_on_real_label_maps(volumes: LoadedVolumes, encoding: str) -> None:
    labels = volumes.labels
    assert labels is not None
    encoded = encode_labels(labels, 3, encoding)
    assert encoded.shape == (len(KEYS), 2, *CFG.size) and encoded.dtype == torch.float32
    assert set(encoded.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(decode_labels(encoded, encoding), labels)


def test_onehot_drops_background_and_bits_hold_the_binary_index() -> None:
    labels = torch.tensor([0, 1, 2, 5, 6]).view(1, 1, 5, 1, 1)
    onehot = encode_labels(labels, 7, "onehot")[0, :, :, 0, 0]
    assert onehot[:, 0].sum() == 0  # background: no channel set
    assert [int(onehot[:, i].argmax()) + 1 for i in range(1, 5)] == [1, 2, 5, 6]
    bits = encode_labels(labels, 7, "bits")[0, :, :, 0, 0].T  # (voxel, bit), least significant first
    assert bits.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1]]


def test_wide_label_sets_round_trip_through_bits() -> None:
    labels = torch.arange(133).view(1, 1, 133, 1, 1)
    encoded = encode_labels(labels, 133, "bits")
    assert encoded.shape[1] == 8
    assert torch.equal(decode_labels(encoded, "bits"), labels)


@pytest.mark.parametrize("bad", [3, 7, -1])
@pytest.mark.parametrize("encoding", ["onehot", "bits"])
def test_out_of_range_label_names_the_value(bad: int, encoding: str) -> None:
    labels = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, 1, 1, 1] = bad
    with pytest.raises(SynthmedError, match=rf"label value {bad} is outside 0\.\.2"):
        encode_labels(labels, 3, encoding)


# --- candidate label maps ----------------------------------------------------------------------


@pytest.mark.parametrize("augment", [False, True])
def test_sampling_is_reproducible_per_seed(candidates: CandidateLabelMaps, augment: bool) -> None:
    first, info = candidates.sample(7, augment=augment)
    again, info_again = candidates.sample(7, augment=augment)
    assert torch.equal(first, again) and info == info_again
    assert first.shape == (1, *CFG.size) and first.dtype == torch.int64
    assert info["key"] in KEYS and info["seed"] == 7
    json.dumps(info)  # provenance goes into the manifest


def test_sampling_differs_across_seeds(candidates: CandidateLabelMaps) -> None:
    keys = {candidates.sample(seed, augment=False)[1]["key"] for seed in range(20)}
    assert len(keys) > 1
    maps = [candidates.sample(seed, augment=True)[0] for seed in range(4)]
    assert all(not torch.equal(a, b) for i, a in enumerate(maps) for b in maps[i + 1 :])


def test_augmented_maps_keep_exact_label_values(candidates: CandidateLabelMaps) -> None:
    for seed in range(6):
        label, info = candidates.sample(seed, augment=True)
        original = candidates.labels[candidates.keys.index(info["key"])]
        assert set(label.unique().tolist()) <= set(original.unique().tolist())
        assert (label > 0).sum() > 0.5 * (original > 0).sum()  # deformed, not wiped out
        assert all(abs(r) <= 10 for r in info["rotate_deg"])
        assert all(0.9 <= s <= 1.1 for s in info["scale"])


def test_fit_crops_and_pads_label_maps(volumes: LoadedVolumes) -> None:
    assert volumes.labels is not None
    label = volumes.labels[0]
    small, big = fit(label, (16, 24, 16)), fit(label, (40, 56, 40))
    assert small.shape == (1, 16, 24, 16) and big.shape == (1, 40, 56, 40)
    assert small.dtype == big.dtype == torch.int64
    assert torch.equal(big[:, 4:36, 4:52, 4:36], label) and big.sum() == label.sum()


def test_candidates_refuse_float_label_maps() -> None:
    with pytest.raises(SynthmedError, match="integer label maps"):
        CandidateLabelMaps(torch.zeros(2, 1, 4, 4, 4), ["a", "b"], (1.0, 1.0, 1.0))


# --- a user's label map on its own ------------------------------------------------------------


def test_load_label_map_matches_the_paired_loader(hippocampus: Path) -> None:
    key = KEYS[0]
    pair = VolumePair(hippocampus / "images" / f"{key}.nii.gz", _label_file(hippocampus, key), key)
    _, expected, meta = load_volume_pair(pair, CFG)
    label, affine = load_label_map(_label_file(hippocampus, key), CFG)
    assert label.dtype == torch.int64 and torch.equal(label, expected)
    np.testing.assert_allclose(affine, meta["affine"])


def test_load_label_map_reorients_to_ras(hippocampus: Path, tmp_path: Path) -> None:
    src = nib.load(_label_file(hippocampus))
    data = np.asarray(src.dataobj)
    # The same anatomy stored LPS: x and y reversed, with the affine saying so.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(data.shape[:2]) - 1
    lps = tmp_path / "lps.nii.gz"
    nib.Nifti1Image(data[::-1, ::-1].copy(), src.affine @ flip).to_filename(lps)
    assert nib.aff2axcodes(nib.load(lps).affine) == ("L", "P", "S")
    label, affine = load_label_map(lps, CFG)
    expected, expected_affine = load_label_map(_label_file(hippocampus), CFG)
    assert torch.equal(label, expected)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-5)


def test_load_label_map_resamples_with_nearest_neighbour(hippocampus: Path) -> None:
    fine, fine_affine = load_label_map(_label_file(hippocampus), CFG)
    coarse, coarse_affine = load_label_map(
        _label_file(hippocampus), VolumeConfig(size=(24, 32, 24), spacing=(2.0, 2.0, 2.0))
    )
    assert coarse.shape == (1, 24, 32, 24)
    np.testing.assert_allclose(np.linalg.norm(coarse_affine[:3, :3], axis=0), [2.0, 2.0, 2.0])
    assert set(coarse.unique().tolist()) == {0, 1, 2}
    for value in (1, 2):
        ratio = (fine == value).sum().item() / (coarse == value).sum().item()
        assert 6.0 < ratio < 10.0  # 8 fine voxels per coarse one
        # Same structure, same place in the world: the affines follow the resampling and padding.
        gap = _world_centroid(fine == value, fine_affine) - _world_centroid(coarse == value, coarse_affine)
        assert np.abs(gap).max() < 1.0


def _world_centroid(mask: torch.Tensor, affine: np.ndarray) -> np.ndarray:
    voxels = np.argwhere(mask[0].numpy()).mean(axis=0)
    return affine[:3, :3] @ voxels + affine[:3, 3]


def _bad_label_map(tmp_path: Path, hippocampus: Path, kind: str) -> Path:
    src = nib.load(_label_file(hippocampus))
    data = np.asarray(src.dataobj).astype(np.float32)
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "unreadable":
        path.write_bytes(gzip.compress(b"not a nifti header" * 10))
        return path
    if kind == "fractional":
        data = data * 0.5
    elif kind == "empty":
        data[:] = 0
    elif kind == "nan":
        data[3, 4, 5] = np.nan
    elif kind == "four_d":
        data = np.stack([data, data], axis=-1)
    nib.Nifti1Image(data, src.affine).to_filename(path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("fractional", "non-integer values"),
        ("empty", "empty label map"),
        ("nan", "NaN or infinite"),
        ("unreadable", "cannot read this NIfTI file"),
        ("four_d", "expected one 3-D volume"),
    ],
)
def test_bad_label_maps_name_the_file(tmp_path: Path, hippocampus: Path, kind: str, message: str) -> None:
    path = _bad_label_map(tmp_path, hippocampus, kind)
    with pytest.raises(SynthmedError, match=message) as info:
        load_label_map(path, CFG)
    assert info.value.path == str(path) and str(path) in str(info.value)


# --- NIfTI output ------------------------------------------------------------------------------


def test_save_then_load_keeps_affine_and_spacing(hippocampus: Path, tmp_path: Path) -> None:
    label, _ = load_label_map(_label_file(hippocampus), CFG)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-20.0, 35.5, 7.25]
    path = tmp_path / "out" / "case_label.nii.gz"
    save_nifti(label, affine, path, dtype=np.uint8)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind

    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8 and img.header.get_zooms() == (1.5, 1.5, 2.0)
    assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
    assert img.header.get_xyzt_units()[0] == "mm"
    again, again_affine = load_label_map(path, CFG)
    assert torch.equal(again, label)
    np.testing.assert_allclose(again_affine, affine)


def test_save_nifti_writes_float_images_and_refuses_lossy_label_types(tmp_path: Path) -> None:
    image = torch.rand(1, 6, 7, 8)
    save_nifti(image, np.eye(4), tmp_path / "case_image.nii.gz", dtype=np.float32)
    stored = nib.load(tmp_path / "case_image.nii.gz")
    np.testing.assert_array_equal(np.asarray(stored.dataobj), image[0].numpy())
    labels = torch.full((1, 2, 2, 2), 300)
    with pytest.raises(SynthmedError, match="do not fit uint8"):
        save_nifti(labels, np.eye(4), tmp_path / "case_label.nii.gz", dtype=np.uint8)
    save_nifti(labels, np.eye(4), tmp_path / "case_label.nii.gz", dtype=np.int16)
    assert np.asarray(nib.load(tmp_path / "case_label.nii.gz").dataobj).max() == 300
