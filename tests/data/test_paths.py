"""Image paths that lead outside the dataset folder are refused, in every layout, unless the
user opts in with --allow-outside-root."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skinedge.cli.main import app
from skinedge.data import DataValidationError, read_dataset
from skinedge.data.paths import ImagePathError, OutsideRootError, resolve_inside
from tests.conftest import make_image

OUTSIDE = ["outside the dataset folder", "--allow-outside-root"]


def _add_row(root: Path, image: str, dx: str = "nv") -> str:
    lines = (root / "labels.csv").read_text().splitlines()
    with (root / "labels.csv").open("a", newline="") as f:
        csv.writer(f).writerow([image, f"L_extra_{len(lines)}", dx])
    return f"labels.csv:{len(lines) + 1}"


def _outside_image(tmp_path: Path) -> Path:
    """A good image next to (not inside) the dataset folders of a test."""
    path = tmp_path / "elsewhere" / "outside.jpg"
    path.parent.mkdir(exist_ok=True)
    make_image((150, 100, 80), (48, 64), seed=9).save(path)
    return path


def _only_problem(root: Path, **kwargs):
    with pytest.raises(DataValidationError) as info:
        read_dataset(root, problems_report=root.parent / "problems.csv", **kwargs)
    (problem,) = info.value.problems
    return problem, str(info.value)


# --------------------------------------------------------------------------- resolve_inside


def test_resolve_inside_keeps_relative_paths_as_written(tmp_path):
    assert resolve_inside(tmp_path, "images/a.jpg") == tmp_path / "images/a.jpg"
    assert resolve_inside(tmp_path, "images/../b.jpg") == tmp_path / "images/../b.jpg"


@pytest.mark.parametrize("image", ["../outside.jpg", "../../../../etc/passwd", "/etc/passwd"])
def test_resolve_inside_refuses_paths_out_of_the_root(tmp_path, image):
    root = tmp_path / "data"
    root.mkdir()

    with pytest.raises(OutsideRootError) as info:
        resolve_inside(root, image)

    assert info.value.kind == "outside-root"
    assert repr(image) in str(info.value)
    # The row names the fact and the move; how to opt in is the command's own line (hint).
    assert "outside the dataset folder" in str(info.value)
    assert "move the image into the folder" in str(info.value)
    assert resolve_inside(root, image, allow_outside=True) == root / image


def test_resolve_inside_follows_symlinks(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "link.jpg").symlink_to(_outside_image(tmp_path))
    (root / "inner.jpg").symlink_to(root / "link.jpg")  # a chain still ends outside

    for image in ("link.jpg", "inner.jpg"):
        with pytest.raises(OutsideRootError):
            resolve_inside(root, image)


def test_resolve_inside_reports_a_symlink_loop(tmp_path):
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")

    with pytest.raises(ImagePathError) as info:
        resolve_inside(tmp_path, "a.jpg")

    assert info.value.kind == "bad-path"
    assert "'a.jpg' cannot be resolved" in str(info.value)


# --------------------------------------------------------------------------- labels.csv


@pytest.fixture
def folder(make_labels_folder) -> Path:
    return make_labels_folder(per_class=2, codes=("mel", "nv"))


def test_parent_path_is_refused_before_it_is_opened(folder):
    traversal = "../" * len(folder.resolve().parts) + "etc/passwd"  # up to / whatever the depth
    source = _add_row(folder, traversal)

    problem, message = _only_problem(folder)

    assert (problem.source, problem.kind) == (source, "outside-root")
    assert f"{source}: [outside-root] path '{traversal}' resolves to /etc/passwd" in message
    assert all(phrase in message for phrase in OUTSIDE)
    assert "not an image" not in message  # it was never opened


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_an_image_outside_the_folder_is_refused_then_accepted_on_request(folder, tmp_path, how):
    outside = _outside_image(tmp_path)
    if how == "symlink":
        (folder / "images/link.jpg").symlink_to(outside)
        image = "images/link.jpg"
    elif how == "absolute":
        image = str(outside)
    else:
        shutil.move(outside, folder.parent / "elsewhere.jpg")
        image = "../elsewhere.jpg"
    source = _add_row(folder, image)

    problem, message = _only_problem(folder)
    assert (problem.source, problem.kind) == (source, "outside-root")
    assert all(phrase in message for phrase in OUTSIDE)

    dataset = read_dataset(folder, allow_outside_root=True)
    assert image in {r.image for r in dataset.records}


# --------------------------------------------------------------------------- other layouts


def test_ham10000_image_symlinked_outside_is_refused(tmp_path):
    root = tmp_path / "ham"
    (root / "HAM10000_images_part_1").mkdir(parents=True)
    make_image((150, 100, 80), (48, 64), 1).save(root / "HAM10000_images_part_1/ISIC_1.jpg")
    (root / "HAM10000_images_part_1/ISIC_2.jpg").symlink_to(_outside_image(tmp_path))
    (root / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\nHAM_2,ISIC_2,mel\n")

    problem, message = _only_problem(root)

    assert (problem.source, problem.kind) == ("HAM10000_metadata.csv:3", "outside-root")
    assert "'HAM10000_images_part_1/ISIC_2.jpg'" in message
    assert all(phrase in message for phrase in OUTSIDE)
    assert len(read_dataset(root, allow_outside_root=True).records) == 2


def test_isic2020_image_symlinked_outside_is_refused(tmp_path):
    root = tmp_path / "isic2020"
    (root / "train").mkdir(parents=True)
    make_image((150, 100, 80), (48, 64), 1).save(root / "train/ISIC_1.jpg")
    (root / "train/ISIC_2.jpg").symlink_to(_outside_image(tmp_path))
    (root / "train.csv").write_text(
        "image_name,patient_id,target\nISIC_1,P1,0\nISIC_2,P2,1\n")

    problem, message = _only_problem(root)

    assert (problem.source, problem.kind) == ("train.csv:3", "outside-root")
    assert all(phrase in message for phrase in OUTSIDE)


def test_class_folder_symlinked_outside_is_refused(tmp_path):
    root = tmp_path / "folders"
    (root / "nv").mkdir(parents=True)
    make_image((150, 100, 80), (48, 64), 1).save(root / "nv/a.jpg")
    _outside_image(tmp_path)
    (root / "mel").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    problem, message = _only_problem(root)

    assert (problem.source, problem.kind) == ("mel/outside.jpg", "outside-root")
    assert all(phrase in message for phrase in OUTSIDE)
    assert len(read_dataset(root, allow_outside_root=True).records) == 2


# --------------------------------------------------------------------------- the split command


def test_cli_split_refuses_and_then_accepts_with_the_flag(folder, tmp_path):
    source = _add_row(folder, str(_outside_image(tmp_path)))
    out = tmp_path / "out" / "manifest.json"

    refused = CliRunner().invoke(app, ["data", "split", str(folder), "--out", str(out)])

    assert refused.exit_code == 2
    text = " ".join(refused.output.split())
    assert f"{source}: [outside-root]" in text
    assert all(phrase in text for phrase in OUTSIDE)
    assert not out.exists()

    accepted = CliRunner().invoke(
        app, ["data", "split", str(folder), "--out", str(out), "--allow-outside-root"])

    assert accepted.exit_code == 0, accepted.output
    assert out.is_file()
    assert not (out.parent / "manifest.problems.csv").exists()  # the failed run's list is gone
