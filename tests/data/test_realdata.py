"""The real ISIC samples read as their READMEs describe (skipped where they are not present)."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from skinedge.data import read_dataset
from skinedge.data.splits import SPLITS, split_groups

pytestmark = pytest.mark.realdata

#: Image counts per class, from ham10000-sample/README.md.
HAM10000_SAMPLE_COUNTS = {
    "nv": 700, "bkl": 500, "mel": 500, "bcc": 389, "akiec": 242, "vasc": 106, "df": 88,
}


def _sample(shared_data, name):
    folder = shared_data / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.fixture(scope="module")
def ham10000(shared_data):
    # Decodes all 2,525 images once for the module (a few seconds).
    return read_dataset(_sample(shared_data, "ham10000-sample"))


def test_ham10000_sample_reads_every_image_with_readme_counts(ham10000):
    assert ham10000.layout == "labels-csv"
    assert ham10000.skipped == []
    assert len(ham10000.records) == 2525
    assert ham10000.vocabulary.name == "isic2018"
    assert ham10000.class_counts() == HAM10000_SAMPLE_COUNTS
    assert len({r.group for r in ham10000.records}) == 2248  # distinct lesions
    assert all(r.group.startswith("HAM_") for r in ham10000.records)


def test_ham10000_sample_split_is_lesion_disjoint(ham10000):
    assignment = split_groups(ham10000.records, seed=0)

    splits_of = defaultdict(set)
    for r in ham10000.records:
        splits_of[r.group].add(assignment[r.group])
    assert all(len(s) == 1 for s in splits_of.values())
    assert max(Counter(r.group for r in ham10000.records).values()) > 1  # the premise
    lesions = {s: {g for g, split in assignment.items() if split == s} for s in SPLITS}
    assert not (lesions["train"] & lesions["val"] or lesions["train"] & lesions["test"]
                or lesions["val"] & lesions["test"])
    per_split = Counter((assignment[r.group], r.label) for r in ham10000.records)
    assert all(per_split[(s, c)] > 0 for s in SPLITS for c in HAM10000_SAMPLE_COUNTS)


def test_isic2020_sample_groups_by_patient_from_metadata(shared_data):
    dataset = read_dataset(_sample(shared_data, "isic2020-sample"))

    assert len(dataset.records) == 727
    assert dataset.vocabulary.name == "melanoma"
    assert dataset.class_counts() == {"benign": 700, "mel": 27}
    patients = {r.group for r in dataset.records}
    assert len(patients) == 80
    assert all(p.startswith("IP_") for p in patients)
    assert len({r.group for r in dataset.records if r.label == "mel"}) == 19


def test_isic2019_sample_reads(shared_data):
    folder = _sample(shared_data, "isic2019-sample")

    dataset = read_dataset(folder)
    binary = read_dataset(folder, classes="melanoma", check_images=False)

    assert len(dataset.records) == 1204
    assert dataset.skipped == []
    assert {c: n for c, n in dataset.class_counts().items() if n} == {
        "mel": 404, "nv": 654, "bkl": 146}
    assert binary.class_counts() == {"benign": 800, "mel": 404}
    # Lesion ids where ISIC published one (MSK...), the image itself otherwise.
    assert any(r.group.startswith("MSK") for r in dataset.records)
    assert any(r.group == r.image for r in dataset.records)


def test_the_three_samples_split_together_as_each_splits_alone(shared_data, tmp_path):
    """ISIC 2019's mel/nv/bkl join the 7 classes, ISIC 2020's benign is 'not-mel', and the
    HAM10000 rows are split exactly as `skinedge data split ham10000-sample` splits them."""
    from skinedge.data import make_manifest
    from skinedge.data.sources import split_folders

    names = ("ham10000-sample", "isic2019-sample", "isic2020-sample")
    made = split_folders([_sample(shared_data, n) for n in names], tmp_path / "m.json",
                         classes="isic2018", check_images=False)
    manifest = made.manifest
    assert len(manifest.rows) == 2525 + 1204 + 727 and made.skipped == []
    assert manifest.partial == 700
    ham = make_manifest(read_dataset(shared_data / "ham10000-sample", check_images=False))
    assert manifest.sources[0].split_hash == ham.split_hash
    assert {r.label for r in manifest.rows if r.source == "isic2019-sample"} == {"mel", "nv", "bkl"}
    patients = {r.group for r in manifest.rows if r.source == "isic2020-sample"}
    assert all(g.startswith("isic2020-sample/IP_") for g in patients)  # grouped by patient
