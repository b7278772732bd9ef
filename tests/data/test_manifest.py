"""Manifests: round-trip, refusal of changed images, moved folders, torch dataset."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from skinedge.data import (
    LesionDataset,
    ManifestMismatchError,
    PreprocessConfig,
    build_eval_transform,
    load_manifest,
    make_manifest,
    read_dataset,
)
from skinedge.errors import DataError
from tests.conftest import make_image


@pytest.fixture
def folder(make_labels_folder) -> Path:
    return make_labels_folder(per_class=6)


@pytest.fixture
def saved(folder, tmp_path) -> tuple[Path, Path]:
    """(dataset folder, manifest path) of a saved split."""
    manifest = make_manifest(read_dataset(folder), seed=3)
    path = manifest.save(tmp_path / "splits" / "manifest.json")
    return folder, path


def test_round_trip_keeps_rows_and_split_hash(folder, tmp_path):
    dataset = read_dataset(folder)
    manifest = make_manifest(dataset, seed=3)
    path = manifest.save(tmp_path / "manifest.json")

    loaded = load_manifest(path)

    assert loaded.rows == manifest.rows
    assert loaded.split_hash == manifest.split_hash
    assert json.loads(path.read_text())["split_hash"] == manifest.split_hash
    assert (loaded.root, loaded.layout, loaded.classes, loaded.seed, loaded.ratios) == (
        folder.resolve(), "labels-csv", "isic2018", 3, (0.7, 0.15, 0.15))
    assert loaded.created == manifest.created
    assert {r.image for r in loaded.rows} == {r.image for r in dataset.records}
    assert all(len(r.sha256) == 64 for r in loaded.rows)
    # Lesion-disjoint: every group has one split.
    splits_of = defaultdict(set)
    for r in loaded.rows:
        splits_of[r.group].add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())


def test_split_hash_is_stable_and_tracks_the_split(folder):
    dataset = read_dataset(folder)

    again = make_manifest(dataset, seed=3).split_hash
    assert make_manifest(read_dataset(folder), seed=3).split_hash == again
    assert make_manifest(dataset, seed=4).split_hash != again


def test_counts_cover_every_image(saved):
    _, path = saved
    manifest = load_manifest(path)

    counts = manifest.counts()
    assert sum(sum(c.values()) for c in counts.values()) == 7 * 6
    assert sum(counts["train"].values()) == len(manifest.subset("train"))
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        manifest.subset("holdout")


def test_changed_image_is_refused_naming_the_file(saved):
    folder, path = saved
    make_image((0, 255, 0), (48, 64), seed=99).save(folder / "images" / "nv_002.jpg")

    with pytest.raises(ManifestMismatchError) as info:
        load_manifest(path)

    message = str(info.value)
    assert f"{folder.resolve() / 'images' / 'nv_002.jpg'}: changed since the manifest was made" \
        in message
    assert "0 missing and 1 changed image(s)" in message
    assert "skinedge data split" in message  # what to do


def test_missing_image_is_refused_naming_the_file(saved):
    folder, path = saved
    (folder / "images" / "df_004.jpg").unlink()

    with pytest.raises(ManifestMismatchError) as info:
        load_manifest(path)

    assert f"{folder.resolve() / 'images' / 'df_004.jpg'}: missing" in str(info.value)
    assert "1 missing and 0 changed image(s)" in str(info.value)
    # Options that exist: no --data (training, evaluation and export have none for this).
    assert f"set SKINEDGE_DATA to the folder that holds {folder.name}/" in str(info.value)
    assert "--set data.root=FOLDER" in str(info.value)


def test_verify_false_skips_the_check(saved):
    folder, path = saved
    (folder / "images" / "df_004.jpg").unlink()

    assert len(load_manifest(path, verify=False).rows) == 7 * 6


def test_root_override_finds_a_moved_folder(saved, tmp_path):
    folder, path = saved
    moved = shutil.move(folder, tmp_path / "elsewhere" / "renamed")

    with pytest.raises(ManifestMismatchError):
        load_manifest(path)  # the recorded root is gone
    manifest = load_manifest(path, root=moved)

    assert manifest.root == Path(moved).resolve()
    assert manifest.split_hash == json.loads(path.read_text())["split_hash"]


def test_skinedge_data_is_the_fallback_root(saved, tmp_path, monkeypatch):
    folder, path = saved
    new_home = tmp_path / "new-home"
    new_home.mkdir()
    shutil.move(folder, new_home / folder.name)  # same folder name, other parent
    monkeypatch.setenv("SKINEDGE_DATA", str(new_home))

    manifest = load_manifest(path)

    assert manifest.root == (new_home / folder.name).resolve()


def test_recorded_root_wins_over_skinedge_data(saved, tmp_path, monkeypatch):
    folder, path = saved
    monkeypatch.setenv("SKINEDGE_DATA", str(tmp_path / "nothing-here"))

    assert load_manifest(path).root == folder.resolve()


def test_unreadable_manifest_says_so(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")

    with pytest.raises(ValueError, match="not a readable manifest.*`skinedge data split`"):
        load_manifest(bad)
    bad.write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(ValueError, match="schema 'other/9' is not 'skinedge.manifest/1'"):
        load_manifest(bad)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_lesion_dataset_yields_tensors_of_the_configured_size(saved, split):
    _, path = saved
    manifest = load_manifest(path)
    transform = build_eval_transform(PreprocessConfig(input_size=32))

    dataset = LesionDataset.from_manifest(manifest, split, transform)

    rows = manifest.subset(split)
    assert len(dataset) == len(rows) > 0
    image, target = dataset[0]
    assert isinstance(image, torch.Tensor)
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert target == manifest.vocabulary.codes.index(rows[0].label)
    assert dataset.targets == [manifest.vocabulary.codes.index(r.label) for r in rows]


def test_byte_identical_images_stay_in_one_split(make_labels_folder, tmp_path):
    """ISIC 2019 re-ships HAM10000 images under other names: a copy must not cross splits."""
    folder = make_labels_folder(per_class=6)
    rows = (folder / "labels.csv").read_text().splitlines()
    header, body = rows[0], rows[1:]
    # Every image gets a twin under another name and another lesion id.
    twins = []
    for i, line in enumerate(body):
        image, lesion, label = line.split(",")
        copy = image.replace(".jpg", "_copy.jpg")
        shutil.copy(folder / image, folder / copy)
        twins.append(f"{copy},TWIN_{i},{label}")
    (folder / "labels.csv").write_text("\n".join([header, *body, *twins]) + "\n")
    manifest = make_manifest(read_dataset(folder), seed=0)
    split_of = {r.image: r.split for r in manifest.rows}
    assert all(split_of[i] == split_of[i.replace("_copy", "")] for i in split_of if "_copy" in i)
    assert manifest.duplicate_files == 2 * len(body)
    assert {r.group for r in manifest.rows if r.group.startswith("TWIN_")}  # ids kept as given


# --------------------------------------------------------------------------- hand-edited manifests


def edit(path: Path, change, *, reseal: bool = True) -> None:
    """Apply ``change`` to the manifest document; with ``reseal``, store the split hash of the
    edited rows, so that only the edit itself is wrong (as a careful hand-editor would)."""
    doc = json.loads(path.read_text())
    change(doc)
    if reseal and isinstance(doc.get("rows"), list):
        payload = json.dumps(doc["rows"], sort_keys=True).encode()
        doc["split_hash"] = hashlib.sha256(payload).hexdigest()
    path.write_text(json.dumps(doc, indent=1))


def row_index(path: Path, split: str) -> int:
    return next(i for i, r in enumerate(json.loads(path.read_text())["rows"]) if r["split"] == split)


def refusal(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_manifest(path, **kwargs)
    return str(info.value)


def test_unknown_split_is_refused_naming_the_row_and_the_valid_splits(saved):
    _, path = saved
    i = row_index(path, "val")
    image = json.loads(path.read_text())["rows"][i]["image"]
    edit(path, lambda d: d["rows"][i].update(split="validation"))

    message = refusal(path)

    assert str(path) in message
    assert f"rows[{i}] {image}: 'validation'" in message
    assert "valid splits are train, val, test" in message
    assert "skinedge data split" in message


def test_a_train_row_copied_into_test_is_refused(saved):
    _, path = saved
    i = row_index(path, "train")
    doc = json.loads(path.read_text())
    image, last = doc["rows"][i]["image"], len(doc["rows"])
    edit(path, lambda d: d["rows"].append(dict(d["rows"][i], split="test")))

    message = refusal(path)

    assert f"image listed more than once: {image} in rows[{i}] (train) and rows[{last}] (test)" \
        in message


def test_an_image_listed_twice_in_one_split_is_refused(saved):
    _, path = saved
    i = row_index(path, "train")
    image = json.loads(path.read_text())["rows"][i]["image"]
    edit(path, lambda d: d["rows"].append(dict(d["rows"][i], image=f"./{image}")))

    assert f"image listed more than once: {image} in rows[{i}] (train) and" in refusal(path)


def test_an_edited_split_hash_is_refused(saved):
    _, path = saved
    edit(path, lambda d: d.update(split_hash="0" * 64), reseal=False)

    message = refusal(path)

    assert "split_hash 000000000000 does not match its rows" in message
    assert "the rows were edited after the split; make a new split with `skinedge data split`" \
        in message


def test_a_row_edited_without_its_hash_is_refused(saved):
    _, path = saved
    edit(path, lambda d: d["rows"][0].update(split="test" if d["rows"][0]["split"] != "test"
                                                else "train"), reseal=False)

    assert "the rows were edited after the split" in refusal(path)


def test_a_label_outside_the_vocabulary_is_refused_naming_row_and_label(saved):
    _, path = saved
    image = json.loads(path.read_text())["rows"][4]["image"]
    edit(path, lambda d: d["rows"][4].update(label="melanoma"))

    message = refusal(path)

    assert f"label not in the isic2018 classes: rows[4] {image}: 'melanoma'" in message
    assert "valid labels are mel, nv, bcc, akiec, bkl, df, vasc" in message


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.pop("rows"), "field 'rows': missing"),
    (lambda d: d.update(seed="three"), "field 'seed': Input should be a valid integer"),
    (lambda d: d.update(ratios=[0.5, 0.5]), "field 'ratios': "),
    (lambda d: d.update(ratios=[0.9, 0.9, 0.1]), "field 'ratios': split ratios must be"),
    (lambda d: d.update(classes="isic2077"), "field 'classes': unknown class vocabulary"),
    (lambda d: d["rows"][2].pop("sha256"), "field 'sha256' of a row: missing: rows[2]"),
    (lambda d: d["rows"][3].update(group=7), "field 'group' of a row: Input should be a valid "
                                             "string: rows[3]"),
    (lambda d: d.update(rows=[]), "field 'rows': no rows"),
], ids=["no-rows-key", "seed-type", "two-ratios", "ratio-sum", "classes", "row-missing-field",
        "row-field-type", "empty-rows"])
def test_schema_errors_name_the_field_and_row(saved, change, expected):
    _, path = saved
    edit(path, change)

    message = refusal(path)

    assert message.startswith(f"{path}: not a valid manifest")
    assert expected in message
    assert "skinedge data split" in message


def test_a_document_that_is_not_an_object_is_refused(saved):
    _, path = saved
    path.write_text("[]")

    assert f"{path}: not a manifest (a JSON list, not an object)" in refusal(path)


def test_many_bad_rows_make_one_line_per_kind(saved):
    _, path = saved
    edit(path, lambda d: [r.update(split="validation") for r in d["rows"]])

    message = refusal(path)

    line = next(ln for ln in message.splitlines() if "unknown split" in ln)
    assert "unknown split (42 rows): rows[0] " in line
    assert "rows[2] " in line and "rows[3] " not in line and "(39 more)" in line
    assert len(message.splitlines()) < 6


def test_a_row_outside_the_root_is_refused_unless_allowed(saved):
    folder, path = saved
    shutil.copy(folder / "images" / "mel_000.jpg", folder.parent / "outside.jpg")
    i = next(i for i, r in enumerate(json.loads(path.read_text())["rows"])
             if r["image"] == "images/mel_000.jpg")
    edit(path, lambda d: d["rows"][i].update(image="../outside.jpg"))

    message = refusal(path)

    assert f"rows[{i}] ../outside.jpg: resolves to {folder.parent.resolve() / 'outside.jpg'}" \
        in message
    assert "outside the dataset folder" in message
    assert "--allow-outside-root" in message
    assert len(load_manifest(path, allow_outside_root=True).rows) == 7 * 6
    # The opt-in recorded by the split is honoured.
    edit(path, lambda d: d.update(allow_outside_root=True))
    assert load_manifest(path).allow_outside_root


def test_the_outside_root_opt_in_is_saved_with_the_split(folder, tmp_path):
    manifest = make_manifest(read_dataset(folder), allow_outside_root=True)
    path = manifest.save(tmp_path / "manifest.json")

    assert json.loads(path.read_text())["allow_outside_root"] is True
    assert load_manifest(path).allow_outside_root
    assert not load_manifest(make_manifest(read_dataset(folder)).save(tmp_path / "m2.json")
                             ).allow_outside_root
