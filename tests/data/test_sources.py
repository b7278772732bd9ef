"""Several folders in one split: vocabularies mapped into one, partial labels, per-source splits."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import pytest

from skinedge.data import load_manifest, make_manifest, read_dataset
from skinedge.data.classes import (
    NOT_POSITIVE,
    NOT_POSITIVE_LABEL,
    get_vocabulary,
    map_label,
    target_index,
)
from skinedge.data.dataset import LesionDataset
from skinedge.data.records import DataValidationError
from skinedge.data.sources import MULTI_SOURCE, default_classes, source_of, split_folders
from skinedge.errors import ConfigError
from tests.conftest import make_tiny_dataset


def _relabel(folder, mapping):
    """Rewrite labels.csv's dx through ``mapping`` (a dx missing from it is kept)."""
    path = folder / "labels.csv"
    rows = list(csv.reader(path.open()))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[[i, g, mapping.get(dx, dx)] for i, g, dx in rows[1:]]])


@pytest.fixture
def three_sources(tmp_path):
    """ham/ (7 classes), isic2019/ (mel, nv, bkl, scc) and isic2020/ (mel vs benign), side
    by side, 10 images per class, 2 per lesion."""
    root = tmp_path / "data"
    make_tiny_dataset(root / "ham", per_class=10)
    # other sizes: no image is a byte-identical copy of another source's
    make_tiny_dataset(root / "isic2019", per_class=10, size=(52, 64),
                      codes=("mel", "nv", "bkl", "scc"))
    make_tiny_dataset(root / "isic2020", per_class=10, size=(56, 64),
                      codes=("mel", "benign", "benign2"))
    _relabel(root / "isic2020", {"benign2": "benign"})
    return root


def test_labels_map_between_vocabularies_and_partial_labels_have_their_own_target():
    assert map_label("ak", "isic2019", "isic2018") == "akiec"
    assert map_label("scc", "isic2019", "isic2018") == "akiec"
    assert map_label("unk", "isic2019", "isic2018") is None
    assert map_label("benign", "melanoma", "isic2018") == NOT_POSITIVE_LABEL
    assert map_label("bcc", "isic2018", "isic2018") == "bcc"
    with pytest.raises(ConfigError, match="no mapping from the isic2018 classes into the melanoma"):
        map_label("nv", "isic2018", "melanoma")
    ham = get_vocabulary("isic2018")
    assert target_index(ham, "bcc") == 2
    assert target_index(ham, NOT_POSITIVE_LABEL) == NOT_POSITIVE
    assert default_classes(["melanoma", "isic2018"]) == "isic2018"
    assert default_classes(["isic2019", "isic2018"]) == "isic2019"


def test_each_source_is_split_as_on_its_own_and_labels_are_mapped(three_sources, tmp_path):
    out = tmp_path / "out" / "manifest.json"
    out.parent.mkdir()
    made = split_folders([three_sources / n for n in ("ham", "isic2019", "isic2020")], out,
                         classes="isic2018", seed=3)
    manifest = load_manifest(out)

    assert manifest.layout == MULTI_SOURCE and manifest.root == three_sources.resolve()
    assert [s.name for s in manifest.sources] == ["ham", "isic2019", "isic2020"]
    assert [s.classes for s in manifest.sources] == ["isic2018", "isic2019", "melanoma"]
    assert made.notes == [] and made.skipped == []
    # Every source's rows, stripped of their prefix, are its standalone split.
    for source in manifest.sources:
        alone = make_manifest(read_dataset(three_sources / source.name), seed=3)
        assert source.split_hash == alone.split_hash
        assert source_of(manifest, alone.split_hash) == source.name
        mine = {r.image.removeprefix(f"{source.name}/"): r.split for r in manifest.rows
                if r.source == source.name}
        assert mine == {r.image: r.split for r in alone.rows}
    labels = Counter((r.source, r.label) for r in manifest.rows)
    assert labels[("isic2019", "akiec")] == 10  # ISIC 2019's scc: HAM's akiec
    assert labels[("isic2020", NOT_POSITIVE_LABEL)] == 20 and labels[("isic2020", "mel")] == 10
    assert all(r.group.startswith(f"{r.source}/") for r in manifest.rows)
    assert manifest.partial == 20
    assert sum(manifest.counts()["train"].values()) == sum(
        n["train"] for n in manifest.source_counts().values())
    targets = LesionDataset.from_manifest(manifest, "all", transform=None).targets
    assert targets.count(NOT_POSITIVE) == 20


def test_a_label_with_no_class_is_a_problem_row_and_skip_bad_leaves_it_out(three_sources,
                                                                          tmp_path):
    _relabel(three_sources / "isic2019", {"scc": "unk"})
    folders = [three_sources / n for n in ("ham", "isic2019")]
    out = tmp_path / "manifest.json"
    with pytest.raises(DataValidationError, match="'unk' .*has no class in the isic2018"):
        split_folders(folders, out, classes="isic2018")
    assert not out.exists()

    made = split_folders(folders, out, classes="isic2018", skip_bad=True)
    assert len(made.skipped) == 10 and {p.kind for p in made.skipped} == {"unmapped-label"}
    assert made.skipped_report.is_file()
    assert "unk" not in {r.label for r in load_manifest(out).rows}
    assert len(load_manifest(out).rows) == 70 + 30


def test_a_copy_in_a_later_source_follows_its_first_copy_into_its_split(three_sources, tmp_path):
    ham, other = three_sources / "ham", three_sources / "isic2019"
    # isic2019 re-ships one HAM image (same bytes, another name and lesion id)
    shutil.copy(ham / "images" / "mel_000.jpg", other / "images" / "copy.jpg")
    with (other / "labels.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["images/copy.jpg", "OTHER_LESION", "mel"])
    made = split_folders([ham, other], tmp_path / "m.json", classes="isic2018", seed=1)
    rows = {r.image: r for r in made.manifest.rows}
    first, copy = rows["ham/images/mel_000.jpg"], rows["isic2019/images/copy.jpg"]
    assert copy.split == first.split
    moved = made.notes and "isic2019" in made.notes[0]
    alone = make_manifest(read_dataset(other), seed=1)
    standalone_split = {r.image: r.split for r in alone.rows}["images/copy.jpg"]
    assert bool(moved) == (standalone_split != first.split)


def test_folders_must_be_distinct_siblings(three_sources, tmp_path):
    with pytest.raises(ConfigError, match="two or more"):
        split_folders([three_sources / "ham"], tmp_path / "m.json")
    with pytest.raises(ConfigError, match="side by side"):
        split_folders([three_sources / "ham", three_sources / "ham"], tmp_path / "m.json")
    nested = make_tiny_dataset(three_sources / "deeper" / "more", per_class=4)
    with pytest.raises(ConfigError, match="side by side"):
        split_folders([three_sources / "ham", nested], tmp_path / "m.json")


def test_a_moved_multi_source_split_is_found_under_skinedge_data(three_sources, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "m.json"
    split_folders([three_sources / "ham", three_sources / "isic2020"], out, classes="isic2018")
    moved = tmp_path / "elsewhere"
    shutil.move(three_sources, moved)
    monkeypatch.setenv("SKINEDGE_DATA", str(moved))
    assert load_manifest(out).root == moved.resolve()


def test_hand_edits_of_sources_and_partial_labels_are_refused(three_sources, tmp_path):
    from skinedge.errors import DataError

    out = tmp_path / "m.json"
    split_folders([three_sources / "ham", three_sources / "isic2020"], out, classes="isic2018")
    doc = json.loads(out.read_text())
    doc["rows"][0]["source"] = "nowhere"
    out.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="row of no listed source"):
        load_manifest(out, verify=False)


def test_a_single_folder_manifest_keeps_its_split_hash(tiny_manifest):
    """Rows without a source are hashed as before sources existed (old manifests load)."""
    doc = json.loads(tiny_manifest.read_text())
    assert "source" not in doc["rows"][0] and "sources" not in doc
    assert load_manifest(tiny_manifest).split_hash == doc["split_hash"]


def _row(source, group, split, sha, image=None):
    from skinedge.data.manifest import ManifestRow

    return ManifestRow(image or f"{source}/{group}-{sha}.jpg", f"{source}/{group}", "nv", split,
                       sha, source=source)


def test_an_earlier_source_never_moves_and_a_copy_in_two_splits_is_left_out():
    from skinedge.data.sources import _follow_copies

    rows = [_row("a", "A1", "train", "x"), _row("a", "A2", "test", "y"),
            _row("a", "A3", "val", "w", image="a/ISIC_0000001.jpg"),
            # b/B1 copies a/A1 (train): it moves there, whole group
            _row("b", "B1", "test", "x"), _row("b", "B1", "test", "z"),
            # b/B2 copies a/A3 (val, same ISIC id) and a/A2 (test, same bytes): left out
            _row("b", "B2", "val", "x2", image="b/ISIC_0000001.jpg"), _row("b", "B2", "val", "y")]
    kept, moved, dropped = _follow_copies(rows)
    split = {r.image: r.split for r in kept}
    assert split["a/A1-x.jpg"] == "train" and split["a/A2-y.jpg"] == "test"
    assert split["b/B1-x.jpg"] == split["b/B1-z.jpg"] == "train" and moved == {"b": 2}
    assert {r.group for r in dropped} == {"b/B2"} and len(kept) == 5


def test_partial_labels_pass_into_any_vocabulary_with_melanoma():
    assert map_label(NOT_POSITIVE_LABEL, "isic2019", "isic2018") == NOT_POSITIVE_LABEL
    assert map_label(NOT_POSITIVE_LABEL, "isic2018", "melanoma") == NOT_POSITIVE_LABEL


def test_sources_are_checked_when_the_manifest_loads(three_sources, tmp_path):
    from dataclasses import replace

    from skinedge.data.manifest import ManifestRow
    from skinedge.errors import DataError

    made = split_folders([three_sources / "ham", three_sources / "isic2020"], tmp_path / "m.json",
                         classes="isic2018")
    manifest = made.manifest
    # a row of no source (a clinician's correction appended by retraining) is allowed
    extra = ManifestRow("/elsewhere/case.jpg", "case", "mel", "train", "0" * 64)
    replace(manifest, rows=[*manifest.rows, extra], allow_outside_root=True).save(tmp_path / "a.json")
    assert len(load_manifest(tmp_path / "a.json", verify=False).rows) == len(manifest.rows) + 1

    twice = replace(manifest, sources=[*manifest.sources, manifest.sources[0]])
    twice.save(tmp_path / "b.json")
    with pytest.raises(DataError, match="source 'ham' listed 2 times"):
        load_manifest(tmp_path / "b.json", verify=False)
    wrong = replace(manifest, rows=[replace(manifest.rows[0], source="isic2020"),
                                    *manifest.rows[1:]])
    wrong.save(tmp_path / "c.json")
    with pytest.raises(DataError, match="row outside its source's folder"):
        load_manifest(tmp_path / "c.json", verify=False)
