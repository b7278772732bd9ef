"""Every dataset layout reads from a tiny folder that mirrors the real download."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from skinedge.data import LAYOUTS, DataValidationError, detect_layout, read_dataset
from tests.conftest import HAM10000_CODES, make_image

SIZE = (32, 40)  # (height, width): the smallest images load_rgb accepts (32 px short side)


@pytest.fixture(autouse=True)
def _reports_in_tmp_path(tmp_path, monkeypatch):
    """read_dataset writes its problems report to the temp folder: keep it in the test's."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image((150, 100, 80), SIZE, seed).save(path, quality=90)
    return path


def _groups(dataset) -> dict[str, str]:
    """image -> group."""
    return {r.image: r.group for r in dataset.records}


# --------------------------------------------------------------------------- builders
# Each builder writes a folder in one layout and returns (root, layout name, image -> label,
# image -> group) of what a correct reader must produce.


def build_labels_csv(root: Path):
    rows, labels, groups = [], {}, {}
    for i, dx in enumerate(["mel", "mel", "nv", "nv", "bcc", "akiec", "bkl", "df", "vasc"]):
        image = f"images/ISIC_{i:07d}.jpg"
        lesion = f"HAM_{i // 2:07d}"
        _jpeg(root / image, i)
        rows.append([image, lesion, dx])
        labels[image], groups[image] = dx, lesion
    _write_csv(root / "labels.csv", ["image", "lesion_id", "dx"], rows)
    return root, "labels-csv", labels, groups


def build_ham10000(root: Path):
    header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    rows, labels, groups = [], {}, {}
    for i, dx in enumerate(["bkl", "bkl", "mel", "nv", "nv", "bcc", "akiec", "df", "vasc"]):
        image_id = f"ISIC_{24306 + i:07d}"
        part = "HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2"
        lesion = f"HAM_{i // 2:07d}"  # lesion 0 has one image in part_1, one in part_2
        _jpeg(root / part / f"{image_id}.jpg", i)
        rows.append([lesion, image_id, dx, "histo", 60.0, "male", "back"])
        labels[f"{part}/{image_id}.jpg"], groups[f"{part}/{image_id}.jpg"] = dx, lesion
    _write_csv(root / "HAM10000_metadata.csv", header, rows)
    return root, "ham10000", labels, groups


_ISIC2018 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def _build_isic2018(root: Path, with_groupings: bool):
    rows, labels, groups, grouping_rows = [], {}, {}, []
    for i, code in enumerate(_ISIC2018 + ["NV", "MEL"]):
        image_id = f"ISIC_{24306 + i:07d}"
        rel = f"ISIC2018_Task3_Training_Input/{image_id}.jpg"
        _jpeg(root / rel, i)
        rows.append([image_id] + ["1.0" if c == code else "0.0" for c in _ISIC2018])
        lesion = f"HAM_{i % 5:07d}"
        grouping_rows.append([image_id, lesion, "histopathology"])
        labels[rel] = code.lower()
        groups[rel] = lesion if with_groupings else rel
    _write_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv", ["image", *_ISIC2018], rows)
    if with_groupings:
        _write_csv(root / "ISIC2018_Task3_Training_LesionGroupings.csv",
                   ["image", "lesion_id", "diagnosis_confirm_type"], grouping_rows)
    return root, "isic2018", labels, groups


def build_isic2018(root: Path):
    return _build_isic2018(root, with_groupings=False)


def build_isic2018_groupings(root: Path):
    return _build_isic2018(root, with_groupings=True)


_ISIC2019 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def build_isic2019(root: Path):
    rows, meta, labels, groups = [], [], {}, {}
    for i, code in enumerate(_ISIC2019[:-1] + ["MEL"]):  # UNK only occurs in the test set
        image_id = f"ISIC_{i:07d}" if i % 3 else f"ISIC_{i:07d}_downsampled"
        rel = f"ISIC_2019_Training_Input/{image_id}.jpg"
        _jpeg(root / rel, i)
        rows.append([image_id] + ["1.0" if c == code else "0.0" for c in _ISIC2019])
        lesion = f"MSK4_{i // 2:07d}" if i < 6 else ""  # most ISIC 2019 images have none
        meta.append([image_id, 55.0, "anterior torso", lesion, "female"])
        labels[rel] = code.lower()
        groups[rel] = lesion or rel
    _write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ["image", *_ISIC2019], rows)
    _write_csv(root / "ISIC_2019_Training_Metadata.csv",
               ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"], meta)
    return root, "isic2019", labels, groups


def build_isic2020(root: Path):
    header = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
              "diagnosis", "benign_malignant", "target"]
    rows, labels, groups = [], {}, {}
    for i in range(9):
        image_id = f"ISIC_{2637011 + i:07d}"
        patient = f"IP_{i // 3:07d}"  # three images per patient
        target = 1 if i in (0, 4) else 0
        _jpeg(root / "train" / f"{image_id}.jpg", i)
        rows.append([image_id, patient, "male", 45.0, "torso",
                     "melanoma" if target else "nevus",
                     "malignant" if target else "benign", target])
        labels[f"train/{image_id}.jpg"] = "mel" if target else "benign"
        groups[f"train/{image_id}.jpg"] = patient
    _write_csv(root / "train.csv", header, rows)
    return root, "isic2020", labels, groups


def build_isic2020_kaggle(root: Path):
    """The Kaggle download: train.csv, test.csv, sample_submission.csv and jpeg/{train,test}/."""
    root, layout, labels, groups = build_isic2020(root / "staging")
    (root.parent / "jpeg").mkdir()
    (root / "train").rename(root.parent / "jpeg" / "train")
    (root / "train.csv").rename(root.parent / "train.csv")
    root.rmdir()
    root = root.parent
    test_ids = [f"ISIC_{9000000 + i:07d}" for i in range(4)]
    for i, image_id in enumerate(test_ids):
        _jpeg(root / "jpeg" / "test" / f"{image_id}.jpg", 100 + i)
    _write_csv(root / "test.csv",
               ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge"],
               [[image_id, "IP_9999999", "male", 50.0, "torso"] for image_id in test_ids])
    # Kaggle's submission template: image_name,target for the unlabelled test images.
    _write_csv(root / "sample_submission.csv", ["image_name", "target"],
               [[image_id, 0] for image_id in test_ids])
    labels = {f"jpeg/{image}": label for image, label in labels.items()}
    groups = {f"jpeg/{image}": group for image, group in groups.items()}
    return root, layout, labels, groups


def build_class_folders(root: Path):
    labels, groups = {}, {}
    for i, dx in enumerate(["nv", "nv", "mel", "bkl", "bcc", "akiec", "df", "vasc"]):
        rel = f"{dx}/img_{i}.jpg"
        _jpeg(root / rel, i)
        labels[rel], groups[rel] = dx, rel  # no lesion ids: every image is its own group
    return root, "folders", labels, groups


def build_labels_csv_with_patient_metadata(root: Path):
    """The ISIC 2020 sample: labels.csv with empty lesion_id, patients in metadata.csv."""
    rows, meta, labels, groups = [], [], {}, {}
    for i in range(8):
        image = f"images/ISIC_{i:07d}.jpg"
        patient = f"IP_{i % 3:07d}"
        dx = "mel" if i in (1, 5) else "benign"
        _jpeg(root / image, i)
        rows.append([image, "", dx])
        meta.append([image, patient, int(dx == "mel"), "malignant" if dx == "mel" else "benign"])
        labels[image], groups[image] = dx, patient
    _write_csv(root / "labels.csv", ["image", "lesion_id", "dx"], rows)
    _write_csv(root / "metadata.csv", ["image", "patient_id", "target", "benign_malignant"], meta)
    return root, "labels-csv", labels, groups


BUILDERS = [
    build_labels_csv, build_ham10000, build_isic2018, build_isic2018_groupings, build_isic2019,
    build_isic2020, build_isic2020_kaggle, build_class_folders,
    build_labels_csv_with_patient_metadata,
]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__.removeprefix("build_"))
def test_layout_is_detected_and_read(tmp_path, build):
    root, layout, labels, groups = build(tmp_path / "data")

    assert detect_layout(root) == layout
    dataset = read_dataset(root)

    assert dataset.layout == layout
    assert dataset.skipped == []
    assert {r.image: r.label for r in dataset.records} == labels
    assert _groups(dataset) == groups
    for record in dataset.records:
        assert (root / record.image).is_file()
        assert record.label in dataset.vocabulary.codes


def test_ham10000_lesion_spans_both_image_folders(tmp_path):
    root, *_ = build_ham10000(tmp_path / "data")
    dataset = read_dataset(root)

    by_group: dict[str, set[str]] = {}
    for r in dataset.records:
        by_group.setdefault(r.group, set()).add(r.image.split("/")[0])
    assert by_group["HAM_0000000"] == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_isic2018_without_groupings_uses_one_group_per_image(tmp_path):
    root, *_ = build_isic2018(tmp_path / "data")
    dataset = read_dataset(root)

    assert len({r.group for r in dataset.records}) == len(dataset.records)


def test_isic2019_one_hot_gets_the_9_class_vocabulary(tmp_path):
    root, *_ = build_isic2019(tmp_path / "data")
    dataset = read_dataset(root)

    assert dataset.vocabulary.name == "isic2019"
    assert dataset.class_counts()["scc"] == 1
    assert dataset.class_counts()["ak"] == 1


def test_isic2020_groups_by_patient(tmp_path):
    root, *_ = build_isic2020(tmp_path / "data")
    dataset = read_dataset(root)

    assert dataset.vocabulary.name == "melanoma"
    assert Counter(r.group for r in dataset.records) == {
        "IP_0000000": 3, "IP_0000001": 3, "IP_0000002": 3}


def test_detect_layout_on_empty_folder_lists_every_layout(tmp_path):
    with pytest.raises(ValueError) as info:
        detect_layout(tmp_path)

    message = str(info.value)
    assert str(tmp_path) in message
    assert "--layout" in message
    for layout in LAYOUTS.values():
        assert f"{layout.name}: {layout.description}" in message
    assert "labels.csv" in message and "HAM10000_metadata.csv" in message


def test_detect_layout_on_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_layout(tmp_path / "nowhere")


def test_unknown_layout_name_lists_the_known_ones(tiny_dataset):
    with pytest.raises(ValueError) as info:
        read_dataset(tiny_dataset, layout="kaggle", check_images=False)

    assert "'kaggle'" in str(info.value)
    assert all(name in str(info.value) for name in LAYOUTS)


def test_explicit_layout_overrides_detection(tmp_path):
    # A HAM10000 folder with a hand-made labels.csv of two images: detection takes labels.csv,
    # naming the layout reads the full metadata.
    root, _, labels, _ = build_ham10000(tmp_path / "data")
    subset = sorted(labels)[:2]
    _write_csv(root / "labels.csv", ["image", "lesion_id", "dx"],
               [[image, "", labels[image]] for image in subset])

    assert len(read_dataset(root).records) == 2
    dataset = read_dataset(root, layout="ham10000")

    assert dataset.layout == "ham10000"
    assert len(dataset.records) == len(labels)


# --------------------------------------------------------------------------- vocabularies


def test_seven_codes_infer_the_isic2018_vocabulary(tiny_dataset):
    dataset = read_dataset(tiny_dataset, check_images=False)

    assert dataset.vocabulary.name == "isic2018"
    assert dataset.vocabulary.codes == HAM10000_CODES
    assert dataset.class_counts() == {code: 10 for code in HAM10000_CODES}


def test_benign_and_mel_infer_the_binary_vocabulary(tmp_path):
    root, *_ = build_labels_csv_with_patient_metadata(tmp_path / "data")
    dataset = read_dataset(root, check_images=False)

    assert dataset.vocabulary.name == "melanoma"
    assert dataset.class_counts() == {"benign": 6, "mel": 2}


def test_mel_nv_bkl_is_a_multi_class_problem_unless_told(make_labels_folder):
    root = make_labels_folder(per_class=2, codes=("mel", "nv", "bkl"))

    inferred = read_dataset(root, check_images=False)
    binary = read_dataset(root, classes="melanoma", check_images=False)

    assert inferred.vocabulary.name == "isic2018"
    assert binary.vocabulary.name == "melanoma"
    assert binary.class_counts() == {"benign": 4, "mel": 2}


def test_classes_override_maps_aliases(tiny_dataset):
    dataset = read_dataset(tiny_dataset, classes="isic2019", check_images=False)

    assert dataset.vocabulary.name == "isic2019"
    assert dataset.class_counts()["ak"] == 10  # HAM10000's akiec is ISIC 2019's AK
    assert dataset.class_counts()["scc"] == 0


def test_classes_override_reports_labels_outside_it(tiny_dataset, tmp_path):
    with pytest.raises(DataValidationError) as info:
        read_dataset(tiny_dataset, classes="melanoma", check_images=False,
                     problems_report=tmp_path / "problems.csv",
                     label_hint="fix the row, or choose another vocabulary")

    kinds = Counter(p.kind for p in info.value.problems)
    assert kinds == {"unknown-label": 20}  # bcc and akiec are not "benign"
    assert ("label 'bcc' is not one of ['benign', 'mel'] (melanoma); fix the row, or choose "
            "another vocabulary") in str(info.value)


def test_unknown_vocabulary_name_lists_the_known_ones(tiny_dataset):
    with pytest.raises(ValueError) as info:
        read_dataset(tiny_dataset, classes="isic2017", check_images=False)

    assert "'isic2017'" in str(info.value)
    assert "isic2018, isic2019, melanoma" in str(info.value)


def test_benign_and_melanoma_spelt_out_infer_the_binary_vocabulary():
    from skinedge.data.classes import infer_vocabulary

    assert infer_vocabulary({"benign", "melanoma"}).name == "melanoma"
    assert infer_vocabulary({"0", "1"}).name == "melanoma"


def test_empty_labels_csv_says_it_is_empty(tmp_path):
    (tmp_path / "labels.csv").write_text("")

    with pytest.raises(ValueError) as info:
        read_dataset(tmp_path)

    assert str(info.value).startswith(f"{tmp_path / 'labels.csv'}: the file is empty")
    assert "['image', 'dx']" in str(info.value)
