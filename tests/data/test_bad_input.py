"""Every kind of bad input is reported with the file or row and what to do about it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skinedge.cli.main import app
from skinedge.data import DataValidationError, ImageError, load_manifest, load_rgb, read_dataset
from tests.conftest import make_image

GOOD_PER_CLASS = 2  # 7 classes x 2 good images in every folder below
GOOD_ROWS = 7 * GOOD_PER_CLASS


@pytest.fixture(autouse=True)
def _reports_in_tmp_path(tmp_path, monkeypatch):
    """read_dataset writes its problems report to the temp folder: keep it in the test's."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


# --------------------------------------------------------------------------- helpers


def _add_row(root: Path, image: str, dx: str = "nv", lesion: str = "") -> str:
    """Append a labels.csv row; returns its source tag (``labels.csv:<line>``)."""
    path = root / "labels.csv"
    lines = path.read_text().splitlines()
    with path.open("a", newline="") as f:
        csv.writer(f).writerow([image, lesion or f"L_{Path(image).stem}", dx])
    return f"labels.csv:{len(lines) + 1}"


def _line_of(root: Path, image: str) -> str:
    """Source tag of the first labels.csv row naming ``image``."""
    lines = (root / "labels.csv").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, start=1) if text.startswith(image + ","))
    return f"labels.csv:{line}"


def _jpeg_bytes(size=(48, 64)) -> bytes:
    buffer = io.BytesIO()
    make_image((150, 100, 80), size, seed=7).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _rgb_array(size=(32, 32)) -> np.ndarray:
    return np.asarray(make_image((150, 100, 80), size, seed=3))


def _write_missing(root: Path) -> str:
    return "images/ghost.jpg"


def _write_unreadable(root: Path) -> str:
    (root / "images/noise.jpg").write_bytes(np.random.default_rng(0).bytes(4096))
    return "images/noise.jpg"


def _write_truncated(root: Path) -> str:
    data = _jpeg_bytes()
    (root / "images/half.jpg").write_bytes(data[: len(data) // 2])
    return "images/half.jpg"


def _write_cmyk(root: Path) -> str:
    Image.fromarray(_rgb_array()).convert("CMYK").save(root / "images/print.jpg")
    return "images/print.jpg"


def _write_rgba_transparent(root: Path) -> str:
    rgba = np.dstack([_rgb_array(), np.full((32, 32), 255, np.uint8)])
    rgba[:8, :8, 3] = 0  # a transparent corner
    Image.fromarray(rgba, "RGBA").save(root / "images/cutout.png")
    return "images/cutout.png"


def _write_16bit(root: Path) -> str:
    depth = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(depth).save(root / "images/deep.png")
    assert Image.open(root / "images/deep.png").mode == "I;16"  # the test premise
    return "images/deep.png"


def _write_48bit_rgb(root: Path) -> str:
    """A 16-bit-per-channel colour PNG, written by hand: Pillow reads it as 8-bit "RGB"."""
    import struct
    import zlib

    pixels = (np.random.default_rng(0).random((40, 40, 3)) * 65535).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    (root / "images/deep_rgb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert Image.open(root / "images/deep_rgb.png").mode == "RGB"  # the test premise
    return "images/deep_rgb.png"


def _write_grayscale(root: Path) -> str:
    Image.fromarray(_rgb_array()).convert("L").save(root / "images/gray.jpg")
    return "images/gray.jpg"


def _write_bomb(root: Path) -> str:
    # Larger than the limit the tests pass (BOMB_LIMIT), while the 48x64 good images are not.
    make_image((150, 100, 80), (64, 96), seed=1).save(root / "images/huge.jpg")
    return "images/huge.jpg"


BOMB_LIMIT = 48 * 64


def _write_one_pixel(root: Path) -> str:
    Image.new("RGB", (1, 1), (150, 100, 80)).save(root / "images/dot.png")
    return "images/dot.png"


def _write_thumbnail(root: Path) -> str:
    make_image((150, 100, 80), (31, 90), seed=2).save(root / "images/strip.jpg")
    return "images/strip.jpg"


def _write_exif_rotated(root: Path, name: str = "phone.jpg") -> str:
    """A 48x64 (h x w) JPEG whose EXIF says: rotate 90 degrees clockwise to view."""
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image((150, 100, 80), (48, 64), seed=11).save(root / f"images/{name}", exif=exif)
    return f"images/{name}"

#: kind of bad input -> (writer, reported kind, phrases the message must contain)
CASES = {
    "missing": (_write_missing, "missing-file",
                ["ghost.jpg", "not found", "restore it or remove the row"]),
    "unreadable": (_write_unreadable, "unreadable-image",
                   ["noise.jpg", "not an image PIL can read", "replace the file"]),
    "truncated": (_write_truncated, "unreadable-image",
                  ["half.jpg", "truncated or corrupt", "copy it again"]),
    "cmyk": (_write_cmyk, "unsupported-mode",
             ["print.jpg", "CMYK", "export it as 8-bit sRGB"]),
    "rgba-transparent": (_write_rgba_transparent, "unsupported-mode",
                         ["cutout.png", "transparent pixels", "flatten it", "save as RGB"]),
    "16-bit": (_write_16bit, "unsupported-mode",
               ["deep.png", "16-bit", "convert it to 8-bit RGB"]),
    "48-bit-rgb": (_write_48bit_rgb, "unsupported-mode",
                   ["deep_rgb.png", "16-bit", "convert it to 8-bit RGB"]),
    "grayscale": (_write_grayscale, "unsupported-mode",
                  ["gray.jpg", "grayscale", "use the original colour image"]),
    "bomb": (_write_bomb, "too-large",
             ["huge.jpg", "6,144 pixels is over the limit of 3,072",
              "decompression-bomb guard", "--max-pixels"]),
    "1x1": (_write_one_pixel, "too-small",
            ["dot.png", "1x1 pixels is too small", "at least 32 px", "use the original image"]),
    "31-px side": (_write_thumbnail, "too-small", ["strip.jpg", "90x31 pixels is too small"]),
}


@pytest.fixture
def folder(make_labels_folder) -> Path:
    return make_labels_folder(per_class=GOOD_PER_CLASS)


# --------------------------------------------------------------------------- one problem each


@pytest.mark.parametrize("case", CASES)
def test_bad_image_is_reported_with_row_file_and_fix(folder, case):
    write, kind, phrases = CASES[case]
    source = _add_row(folder, write(folder))

    with pytest.raises(DataValidationError) as info:
        read_dataset(folder, max_pixels=BOMB_LIMIT)

    (problem,) = info.value.problems
    assert (problem.source, problem.kind) == (source, kind)
    message = str(info.value)
    assert f"{source}: [{kind}]" in message
    for phrase in phrases:
        assert phrase in message
    assert "--skip-bad" in message


def test_unknown_label_names_the_row_and_the_vocabulary(folder):
    make_image((150, 100, 80), (48, 64), seed=5).save(folder / "images/extra.jpg")
    source = _add_row(folder, "images/extra.jpg", dx="melanocytic")

    with pytest.raises(DataValidationError) as info:
        read_dataset(folder)

    (problem,) = info.value.problems
    assert (problem.source, problem.kind) == (source, "unknown-label")
    assert "label 'melanocytic' is not one of ['mel', 'nv', 'bcc', 'akiec', 'bkl', 'df', 'vasc']" \
        in str(info.value)
    # The library names no option: only the command that has one (data split) adds it.
    assert "('mel', 'nv'" not in str(info.value)
    assert "(isic2018); fix the row" in str(info.value)
    assert "--classes" not in str(info.value)


def test_labels_no_vocabulary_knows_say_what_to_do(make_labels_folder):
    root = make_labels_folder(per_class=1, codes=("lentigo", "wart"))

    with pytest.raises(ValueError) as info:
        read_dataset(root)

    assert "['lentigo', 'wart'] belong to no known class vocabulary" in str(info.value)
    assert "--classes" in str(info.value)


@pytest.mark.parametrize("spelling", ["images/mel_000.jpg", "./images/mel_000.jpg"])
def test_duplicate_rows_are_both_reported_however_spelt(folder, spelling):
    first = _line_of(folder, "images/mel_000.jpg")
    second = _add_row(folder, spelling, dx="mel", lesion="L_mel_000")

    with pytest.raises(DataValidationError) as info:
        read_dataset(folder)

    assert [(p.source, p.kind) for p in info.value.problems] == [
        (first, "duplicate-id"), (second, "duplicate-id")]
    assert "image images/mel_000.jpg is listed more than once; keep one row" in str(info.value)


def test_split_of_a_folder_with_dotted_paths_loads_back(folder, tmp_path):
    """``./images/x.jpg`` and ``images/x.jpg`` are one image: split stores the normal form and
    drops the pair, so the manifest it writes is one ``load_manifest`` accepts."""
    _add_row(folder, "./images/mel_000.jpg", dx="mel", lesion="L_mel_000")
    make_image((150, 100, 80), (48, 64), seed=5).save(folder / "images/extra.jpg")
    _add_row(folder, "./images//extra.jpg", dx="nv")
    out = tmp_path / "manifest.json"

    result = CliRunner().invoke(app, [
        "data", "split", str(folder), "--out", str(out), "--skip-bad"])

    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    images = [r.image for r in manifest.rows]
    assert "images/extra.jpg" in images
    assert "images/mel_000.jpg" not in images
    assert not any(image.startswith("./") or "//" in image for image in images)


def test_one_hot_row_with_two_classes(tmp_path):
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    rows = []
    for i, code in enumerate(columns * 2):
        make_image((150, 100, 80), (32, 40), i).save(tmp_path / f"ISIC_{i:07d}.jpg")
        rows.append([f"ISIC_{i:07d}"] + [int(c == code) for c in columns])
    rows[1][1] = 1  # the NV row also says MEL: line 3 of the CSV
    with (tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", *columns], *rows])

    with pytest.raises(DataValidationError) as info:
        read_dataset(tmp_path)

    (problem,) = info.value.problems
    assert problem.source == "ISIC2018_Task3_Training_GroundTruth.csv:3"
    assert "one-hot row has 2 classes set (['MEL', 'NV']); exactly one must be 1" \
        in str(info.value)


def _ham_folder(root: Path, images: dict[str, tuple[str, ...]]) -> None:
    """A HAM10000 layout: metadata for ISIC_1 (nv) and ISIC_2 (mel), image files as given.

    Args:
        images: part folder -> image ids written into it.
    """
    for part, ids in images.items():
        (root / part).mkdir()
        for seed, image_id in enumerate(ids):
            make_image((150, 100, 80), (32, 40), seed).save(root / part / f"{image_id}.jpg")
    (root / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_1,nv,histo,50,male,back\n"
        "HAM_2,ISIC_2,mel,histo,50,male,back\n")


def test_metadata_row_without_image_names_the_id(tmp_path):
    _ham_folder(tmp_path, {"HAM10000_images_part_1": ("ISIC_1",)})

    with pytest.raises(DataValidationError) as info:
        read_dataset(tmp_path)

    assert "HAM10000_metadata.csv:3: [missing-file] no image file named ISIC_2.* under" \
        in str(info.value)
    assert "restore the file or remove the row" in str(info.value)


def test_image_id_found_twice_names_both_copies(tmp_path):
    _ham_folder(tmp_path, {"HAM10000_images_part_1": ("ISIC_1", "ISIC_2"),
                           "HAM10000_images_part_2": ("ISIC_1",)})

    with pytest.raises(DataValidationError) as info:
        read_dataset(tmp_path)

    (problem,) = info.value.problems
    assert (problem.source, problem.kind) == ("HAM10000_metadata.csv:2", "ambiguous-file")
    assert ("image ISIC_1 exists more than once (HAM10000_images_part_1/ISIC_1.jpg, "
            "HAM10000_images_part_2/ISIC_1.jpg); keep one copy") in str(info.value)


def test_opaque_rgba_is_accepted_as_rgb(folder):
    rgba = np.dstack([_rgb_array(), np.full((32, 32), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "images/opaque.png")
    _add_row(folder, "images/opaque.png")

    dataset = read_dataset(folder)

    assert len(dataset.records) == GOOD_ROWS + 1
    image = load_rgb(folder / "images/opaque.png")
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), _rgb_array())


def test_a_header_claiming_900_megapixels_is_refused_undecoded(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))

    with pytest.raises(ImageError) as info:
        load_rgb(path, max_pixels=10**12)  # Pillow's own guard still holds

    assert info.value.kind == "too-large"
    assert "decompression-bomb guard" in str(info.value) and "downscale it" in str(info.value)


def test_the_smallest_accepted_side_is_32_px(tmp_path):
    path = tmp_path / "small.png"
    make_image((150, 100, 80), (32, 200), seed=1).save(path)
    assert load_rgb(path).size == (200, 32)

    with pytest.raises(ImageError) as info:
        load_rgb(path, min_side=33)
    assert info.value.kind == "too-small"


def test_exif_orientation_is_applied_and_counted(folder):
    image = _write_exif_rotated(folder)
    _add_row(folder, image)

    dataset = read_dataset(folder)

    assert dataset.exif_rotated == [image]
    upright = load_rgb(folder / image)
    assert upright.size == (48, 64)  # stored 64 wide and 48 high, shown upright
    with Image.open(folder / image) as raw:
        expected = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(upright), np.asarray(expected))
    assert upright.getexif().get(0x0112) is None  # nothing later can turn it a second time


def test_training_dataset_reads_through_load_rgb(folder):
    from skinedge.data import LesionDataset

    image = _write_exif_rotated(folder)
    dataset = LesionDataset(folder, [image, "images/nv_000.jpg"], [1, 1], lambda im: im)

    assert dataset[0][0].size == (48, 64)  # upright, as load_rgb reads it
    assert np.array_equal(np.asarray(dataset[0][0]), np.asarray(load_rgb(folder / image)))
    (folder / "images/nv_000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="nv_000.jpg: not an image PIL can read"):
        dataset[1]


def test_cli_split_says_how_many_images_were_turned_upright(folder, tmp_path):
    for name in ("phone.jpg", "phone2.jpg"):
        _add_row(folder, _write_exif_rotated(folder, name))

    result = CliRunner().invoke(app, [
        "data", "split", str(folder), "--out", str(tmp_path / "manifest.json")])

    assert result.exit_code == 0, result.output
    assert "2 image(s) carry an EXIF orientation" in _flat(result.output)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["exif_oriented"] == ["images/phone.jpg", "images/phone2.jpg"]
    assert load_manifest(tmp_path / "manifest.json").exif_oriented == manifest["exif_oriented"]


def test_load_rgb_error_names_the_file(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (40, 40), 128).save(path)

    with pytest.raises(ImageError) as info:
        load_rgb(path)

    assert info.value.kind == "unsupported-mode"
    assert str(info.value).startswith(f"{path}: it is grayscale")


# --------------------------------------------------------------------------- many problems


@pytest.fixture
def many_bad(folder) -> tuple[Path, dict[str, str]]:
    """The good folder plus one row of every kind of bad input: (root, source -> kind)."""
    expected = {}
    for write, kind, _ in CASES.values():
        expected[_add_row(folder, write(folder))] = kind
    make_image((150, 100, 80), (48, 64), seed=5).save(folder / "images/extra.jpg")
    expected[_add_row(folder, "images/extra.jpg", dx="blue-nevus")] = "unknown-label"
    expected[_line_of(folder, "images/bcc_001.jpg")] = "duplicate-id"
    expected[_add_row(folder, "images/bcc_001.jpg", dx="bcc", lesion="L_bcc_000")] = "duplicate-id"
    return folder, expected


def _read_report(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["message"] for r in rows)
    return {r["source"]: r["kind"] for r in rows}


def _assert_grouped(message: str, expected: dict[str, str]) -> None:
    """One line per kind with its count, its first 3 rows, and no row beyond them."""
    by_kind: dict[str, list[str]] = {}
    for source, kind in sorted(expected.items(), key=lambda item: int(item[0].split(":")[1])):
        by_kind.setdefault(kind, []).append(source)
    for kind, sources in by_kind.items():
        assert f"[{kind}] {len(sources)} row(s)" in message
        for source in sources[:3]:
            assert f"{source}: [{kind}]" in message
        for source in sources[3:]:
            assert f"{source}: [{kind}]" not in message
        if len(sources) > 3:
            assert f"... and {len(sources) - 3} more [{kind}] row(s) in the report" in message


def test_every_problem_of_a_folder_is_reported_at_once(many_bad, tmp_path):
    root, expected = many_bad
    report = tmp_path / "reports" / "problems.csv"

    with pytest.raises(DataValidationError) as info:
        read_dataset(root, max_pixels=BOMB_LIMIT, problems_report=report)

    assert {p.source: p.kind for p in info.value.problems} == expected
    message = str(info.value)
    assert message.startswith(f"{len(expected)} problem(s) in the dataset:")
    # 12 problems: summarised per kind (5 unsupported-mode rows show the first 3) ...
    assert len(expected) > 10 and list(expected.values()).count("unsupported-mode") == 5
    _assert_grouped(message, expected)
    # ... and the report the message names lists every one.
    assert info.value.report == report
    assert f"Every problem is listed in {report}" in message
    assert _read_report(report) == expected


def test_few_problems_are_listed_row_by_row(folder, tmp_path):
    sources = {_add_row(folder, f"images/ghost_{i}.jpg"): "missing-file" for i in range(10)}

    with pytest.raises(DataValidationError) as info:
        read_dataset(folder, problems_report=tmp_path / "problems.csv")

    message = str(info.value)
    assert "row(s), the first" not in message
    for source in sources:
        assert f"  {source}: [missing-file]" in message
    assert _read_report(tmp_path / "problems.csv") == sources


def test_many_rows_of_one_kind_are_one_line_with_a_count(folder, tmp_path):
    """300 rows with one mistake: one line with the count and 3 rows, not 300 lines."""
    sources = [_add_row(folder, f"images/ghost_{i}.jpg") for i in range(300)]

    with pytest.raises(DataValidationError) as info:
        read_dataset(folder, problems_report=tmp_path / "problems.csv")

    message = str(info.value)
    assert len(message.splitlines()) < 10
    assert "[missing-file] 300 row(s), the first 3:" in message
    assert f"{sources[0]}: [missing-file] " in message
    assert f"{sources[3]}: [missing-file]" not in message
    assert "... and 297 more [missing-file] row(s) in the report" in message
    assert len(_read_report(tmp_path / "problems.csv")) == 300


def test_problems_report_defaults_to_the_temp_folder(folder, tmp_path):
    # The autouse fixture points the system temp folder at tmp_path.
    source = _add_row(folder, "images/ghost.jpg")

    with pytest.raises(DataValidationError) as info:
        read_dataset(folder)

    report = info.value.report
    assert report.parent == tmp_path and report.name.startswith(f"skinedge-{folder.name}-")
    assert report.name.endswith(".problems.csv")
    assert str(report) in str(info.value)
    assert _read_report(report) == {source: "missing-file"}


def test_unwritable_report_lists_every_row_instead(many_bad, tmp_path):
    root, expected = many_bad
    blocker = tmp_path / "file"
    blocker.write_text("a file where the report's folder should be")

    with pytest.raises(DataValidationError) as info:
        read_dataset(root, max_pixels=BOMB_LIMIT, problems_report=blocker / "problems.csv")

    assert info.value.report is None
    for source, kind in expected.items():
        assert f"{source}: [{kind}]" in str(info.value)


def test_skip_bad_keeps_the_good_rows_and_lists_the_rest(many_bad):
    root, expected = many_bad

    dataset = read_dataset(root, max_pixels=BOMB_LIMIT, skip_bad=True)

    assert {p.source: p.kind for p in dataset.skipped} == expected
    assert len(dataset.records) == GOOD_ROWS - 1  # bcc_001 is listed twice: both rows skipped
    assert all(r.source not in expected for r in dataset.records)
    assert all(p.message for p in dataset.skipped)


def test_skip_bad_with_nothing_left_still_fails(make_labels_folder):
    root = make_labels_folder(per_class=1, codes=("mel",))
    (root / "images/mel_000.jpg").unlink()

    with pytest.raises(ValueError, match="no usable images found"):
        read_dataset(root, skip_bad=True)


# --------------------------------------------------------------------------- through the CLI


def _flat(text: str) -> str:
    """CLI output with the console's line wrapping undone."""
    return " ".join(text.split())


def test_cli_split_fails_with_every_problem(many_bad, tmp_path):
    root, expected = many_bad
    out = tmp_path / "out" / "manifest.json"

    result = CliRunner().invoke(app, [
        "data", "split", str(root), "--out", str(out), "--max-pixels", str(BOMB_LIMIT)])

    assert result.exit_code == 2
    output = _flat(result.output)
    assert f"{len(expected)} problem(s) in the dataset" in output
    _assert_grouped(output, expected)
    assert "--skip-bad" in output
    assert not out.exists()
    # Every problem is in the report beside the manifest it would have written.
    report = out.parent / "manifest.problems.csv"
    assert "manifest.problems.csv" in output.replace(" ", "")
    assert _read_report(report) == expected


def test_cli_split_unknown_label_suggests_its_classes_option(folder, tmp_path):
    make_image((150, 100, 80), (48, 64), seed=5).save(folder / "images/extra.jpg")
    source = _add_row(folder, "images/extra.jpg", dx="melanocytic")

    result = CliRunner().invoke(app, [
        "data", "split", str(folder), "--out", str(tmp_path / "manifest.json")])

    assert result.exit_code == 2
    output = _flat(result.output)
    assert f"{source}: [unknown-label] label 'melanocytic'" in output
    assert "fix the row, or choose the class vocabulary with --classes" in output


def test_cli_split_skip_bad_writes_the_skipped_report(many_bad, tmp_path):
    root, expected = many_bad
    out = tmp_path / "out" / "manifest.json"

    result = CliRunner().invoke(app, [
        "data", "split", str(root), "--out", str(out), "--max-pixels", str(BOMB_LIMIT),
        "--skip-bad"])

    assert result.exit_code == 0, result.output
    assert out.is_file()
    report = out.parent / "manifest.skipped.csv"
    assert report.is_file()
    assert "manifest.skipped.csv" in _flat(result.output).replace(" ", "")
    with report.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["source"]: r["kind"] for r in rows} == expected
    assert all(r["message"] for r in rows)
