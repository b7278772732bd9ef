"""`skinedge retrain` end to end on tiny data: a registry version (timm's test network at 32 px,
exported to ONNX), a folder of clinicians' corrections, and the gates that decide promotion."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinedge.cli.main import app
from skinedge.pipelines.promotion import (
    budgets_gate,
    class_counts,
    corrected_cases_gate,
    decide,
    fixed_test_gate,
    label_prior,
    paired_bootstrap,
    paired_gain,
    protected_classes_gate,
)
from skinedge.pipelines.retrain import RetrainConfig
from tests.conftest import CLASS_COLOURS, make_image, manifest_of

pytest.importorskip("onnxruntime")

#: Colours no class of the tiny dataset has: cases the base model has never seen, which the
#: clinicians labelled (the base gets them wrong, a candidate trained on them right).
NEW_LOOKS = {"mel": (30, 200, 40), "nv": (240, 240, 40), "bcc": (20, 20, 200),
             "df": (250, 130, 0)}

GATE = """\
require: [onnx-fp32]
rules:
  - match: "*"
    p95_ms: 5000
    max_flip_rate: 0.5
"""

#: Small and quick: few epochs, few timed runs, few resamples.
FAST = ["finetune.epochs=6", "finetune.lr_scale=0.3", "bench.iterations=3", "bench.warmup=1",
        "gates.n_boot=200", "export.verify_images=8", "finetune.train_overrides=[threads=2]"]


def _text(result) -> str:
    return " ".join((result.output or "").split())


def write_feedback(root: Path, cases: list[tuple[str, tuple[int, int, int], str]], *,
                   lesions: int = 5, per_lesion: int = 2, seed: int = 0,
                   extra: list[dict[str, str]] = ()) -> Path:
    """A feedback export folder: for each (true-look class, colour, label written) ``lesions``
    lesions of ``per_lesion`` images; ``extra`` rows are appended as they are."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for code, colour, label in cases:
        for lesion in range(lesions):
            for k in range(per_lesion):
                image = f"images/fb_{code}_{lesion}_{k}.jpg"
                make_image(colour, (48, 64), seed=seed + 7919 * n).save(root / image, quality=90)
                n += 1
                rows.append({"image": image, "lesion_id": "", "patient_id": f"P_{code}_{lesion}",
                             "dx": label, "status": "corrected" if k else "verified"})
    rows += list(extra)
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "lesion_id", "patient_id", "dx", "status"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def base_registry(tiny_checkpoint, tmp_path_factory) -> Path:
    """A registry whose v0001 is the tiny checkpoint with its ONNX export, its manifest and the
    server deployment's gate, promoted to server; v0002 is the same checkpoint and manifest
    without an export (a retrain from it has nothing to export or bench)."""
    from skinedge.export import export_checkpoint
    from skinedge.registry import Registry

    root = tmp_path_factory.mktemp("retrain-base")
    manifest = manifest_of(tiny_checkpoint)
    onnx = export_checkpoint(tiny_checkpoint, "onnx", out_dir=root / "exports",
                             manifest=manifest, verify_images=8)
    (root / "gate.yaml").write_text(GATE)
    registry = Registry(root / "registry")
    version = registry.register(tiny_checkpoint, [onnx.path], manifest=manifest,
                                reports={"gate.yaml": root / "gate.yaml"})
    registry.promote(version.id, "server", reason="first version")
    registry.register(tiny_checkpoint, manifest=manifest, notes="no export: nothing to bench")
    return root / "registry"


@pytest.fixture
def registry(base_registry, tmp_path) -> Path:
    """A private copy of the base registry."""
    return Path(shutil.copytree(base_registry, tmp_path / "registry"))


def _retrain(feedback: Path, registry: Path, out: Path, *extra: str, base: str = "v0001",
             catch: bool = True):
    return CliRunner().invoke(app, [
        "retrain", "--feedback", str(feedback), "--from", base, "--registry", str(registry),
        "--deployment", "server", "--out", str(out), *(a for s in FAST for a in ("--set", s)),
        *extra], catch_exceptions=catch)


def test_corrections_make_a_better_candidate_promoted_after_a_resume(
        registry, tiny_dataset, tmp_path, monkeypatch):
    from skinedge.pipelines import retrain_stages
    from skinedge.registry import Registry

    manifest = json.loads(manifest_of_registry(registry).read_text())
    in_test = next(r for r in manifest["rows"] if r["split"] == "test")
    in_train = next(r for r in manifest["rows"] if r["split"] == "train")
    feedback = tmp_path / "feedback"
    (feedback / "images").mkdir(parents=True)
    for row, name in ((in_test, "copy_test.jpg"), (in_train, "copy_train.jpg")):
        shutil.copyfile(Path(manifest["root"]) / row["image"], feedback / "images" / name)
    write_feedback(feedback, [(c, colour, c) for c, colour in NEW_LOOKS.items()], extra=[
        {"image": "images/copy_test.jpg", "lesion_id": "X1", "patient_id": "",
         "dx": in_test["label"], "status": "corrected"},
        {"image": "images/copy_train.jpg", "lesion_id": "X2", "patient_id": "",
         "dx": in_train["label"], "status": "verified"},
        {"image": "images/fb_mel_0_0.jpg", "lesion_id": "", "patient_id": "P_mel_0",
         "dx": "mel", "status": "corrected"},  # the same image twice: refused, listed
    ])
    with (feedback / "labels.csv").open("a", newline="") as f:
        make_image((1, 2, 3), (48, 64), seed=1).save(feedback / "images/unreviewed.jpg")
        csv.writer(f).writerow(["images/unreviewed.jpg", "", "P_u", "nv", "unreviewed"])
    out = tmp_path / "run"

    # A kill during the bench: the stages before it are kept, nothing is registered.
    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(retrain_stages, "bench", killed)
    with pytest.raises(RuntimeError, match="killed"):
        # Half held out: enough cases for the sign test to tell the gain from chance.
        _retrain(feedback, registry, out, "--holdout-fraction", "0.5", catch=False)
    assert [p.parent.name for p in sorted(out.glob("*/stage.json"))] == [
        "1-base", "2-data", "2b-gan", "3-train", "4-export"]
    assert [v.id for v in Registry(registry).versions()] == ["v0001", "v0002"]
    monkeypatch.undo()
    trained = (out / "3-train/stage.json").stat().st_mtime_ns

    result = CliRunner().invoke(app, ["retrain", "--out", str(out), "--resume"])

    assert result.exit_code == 0, (result.output, result.exception)
    assert (out / "3-train/stage.json").stat().st_mtime_ns == trained  # not trained again
    report = json.loads((out / "retrain.json").read_text())
    assert report["decision"]["promoted"], report["decision"]["reason"]
    assert {g["name"]: g["passed"] for g in report["gates"]} == {
        "test-split": True, "protected-classes": True, "corrected-cases": True,
        "deployment-budgets": True}
    assert report["candidate"] == "v0003"
    reg = Registry(registry)
    candidate = reg.get("v0003")
    assert candidate.parent == "v0001" and candidate.source == "retrain"
    assert candidate.gates["passed"] is True
    assert reg.current("server").id == "v0003"
    assert reg.pointer("server")["artifact"].endswith(".onnx")
    assert {"retrain.json", "retrain.md", "gate.yaml", "bench.json"} <= set(candidate.reports)
    # Deduplication against every split of the base manifest, reported with the split.
    data = report["data"]
    assert data["duplicates"] == 2
    assert {d["base_split"] for d in data["duplicate_examples"]} == {"test", "train"}
    kinds = {p["kind"] for p in data["refused_examples"]}
    assert {"unreviewed", "duplicate-id"} <= kinds
    # The corrections joined train only; val and test are the base's.
    new = json.loads(candidate.manifest.read_text())
    added = [r for r in new["rows"] if r["group"].startswith("feedback:")]
    assert added and {r["split"] for r in added} == {"train"}
    base_rows = {(r["image"], r["split"]) for r in manifest["rows"]}
    assert base_rows <= {(r["image"], r["split"]) for r in new["rows"]}
    held = {c["image"] for c in json.loads((out / "2-data/feedback.json").read_text())["holdout"]}
    assert held and not held & {Path(r["image"]).relative_to(feedback).as_posix()
                                for r in added}
    assert "Decision: promoted" in (out / "retrain.md").read_text()


def manifest_of_registry(registry: Path) -> Path:
    return registry / "versions" / "v0001" / "data" / "manifest.json"


def test_a_candidate_trained_on_wrong_labels_is_refused(registry, tmp_path):
    from skinedge.registry import Registry

    # Fresh images that look like the base's classes, labelled one class off (mel -> nv, ...).
    codes = list(CLASS_COLOURS)
    shifted = [(code, CLASS_COLOURS[code], codes[(i + 1) % len(codes)])
               for i, code in enumerate(codes)]
    feedback = write_feedback(tmp_path / "feedback", shifted, lesions=4, seed=50_000)
    out = tmp_path / "run"

    result = _retrain(feedback, registry, out, "--set", "finetune.epochs=5", base="v0002")

    assert result.exit_code == 0, (result.output, result.exception)
    assert "not promoted" in _text(result)
    report = json.loads((out / "retrain.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    assert not gates["test-split"]["passed"]
    assert gates["test-split"]["figures"]["difference"] < -0.02
    assert gates["deployment-budgets"]["passed"]  # v0002 has no export: nothing to bench
    assert "not applicable" in gates["deployment-budgets"]["reason"]
    assert report["exports"] == [] and not (out / "5-bench/bench.json").exists()
    assert not report["decision"]["promoted"]
    assert report["decision"]["reason"].startswith("refused") and "test-split" in \
        report["decision"]["reason"]
    reg = Registry(registry)
    candidate = reg.get("v0003")  # registered either way, with its failed gates
    assert candidate.parent == "v0002" and candidate.gates["passed"] is False
    assert reg.current("server").id == "v0001"
    assert "**Decision: not promoted**" in (out / "retrain.md").read_text()


# --------------------------------------------------------------------------- bad input


def test_unknown_version_lists_the_known_ones(registry, tmp_path):
    feedback = write_feedback(tmp_path / "fb", [("mel", (30, 200, 40), "mel")], lesions=2)

    result = CliRunner().invoke(app, [
        "retrain", "--feedback", str(feedback), "--from", "v0042", "--registry", str(registry),
        "--deployment", "server", "--out", str(tmp_path / "run")])

    assert result.exit_code == 2, (result.output, result.exception)
    assert "v0042" in _text(result) and "v0001" in _text(result)


def test_feedback_folder_without_labels_csv_is_refused(registry, tmp_path):
    (tmp_path / "fb").mkdir()

    result = CliRunner().invoke(app, [
        "retrain", "--feedback", str(tmp_path / "fb"), "--from", "v0001", "--registry",
        str(registry), "--deployment", "server", "--out", str(tmp_path / "run")])

    assert result.exit_code == 2, (result.output, result.exception)
    assert "holds no labels.csv" in _text(result)
    assert not (tmp_path / "run").exists()


def test_labels_the_model_does_not_know_are_named_by_row(registry, tmp_path):
    feedback = write_feedback(tmp_path / "fb", [("mel", (30, 200, 40), "mel"),
                                                ("nv", (240, 240, 40), "melanocytic")],
                              lesions=2)

    result = _retrain(feedback, registry, tmp_path / "run")

    assert result.exit_code == 2, (result.output, result.exception)
    text = _text(result)
    assert "labels.csv:6: [unknown-label]" in text and "'melanocytic'" in text
    assert "labels.csv:2" not in text
    assert not (tmp_path / "run/3-train").exists()


def test_missing_options_and_a_second_run_in_one_folder_are_refused(registry, tmp_path):
    result = CliRunner().invoke(app, ["retrain", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--feedback, --from, --registry, --deployment" in _text(result)

    result = CliRunner().invoke(app, ["retrain", "--out", str(tmp_path / "nowhere"), "--resume"])
    assert result.exit_code == 2
    assert "no retrain run to resume" in _text(result)


# --------------------------------------------------------------------------- the gates


def test_paired_bootstrap_resamples_both_models_together():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    base = np.where(rng.random(300) < 0.8, y, (y + 1) % 3)
    same = paired_bootstrap(y, base, base, 3, n_boot=200)
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0]  # paired: no noise

    worse = np.where(rng.random(300) < 0.3, (y + 2) % 3, base)
    gate = fixed_test_gate(y, worse, base, 3, max_drop=0.02, n_boot=200, level=0.95, seed=0,
                           source="test")
    assert not gate.passed and "below 0" in gate.reason
    slightly = base.copy()
    slightly[np.flatnonzero(base == y)[:3]] = (y[np.flatnonzero(base == y)[:3]] + 1) % 3
    gate = fixed_test_gate(y, slightly, base, 3, max_drop=0.02, n_boot=200, level=0.95,
                           seed=0, source="test")
    assert gate.passed, gate.reason


def _probs(top: np.ndarray, n_classes: int, confidence: float) -> np.ndarray:
    """(N, C) probabilities with ``confidence`` on each ``top`` class, the rest spread evenly."""
    out = np.full((len(top), n_classes), (1 - confidence) / (n_classes - 1))
    out[np.arange(len(top)), top] = confidence
    return out


def test_corrected_cases_gate_needs_lower_log_loss_than_the_base_and_than_the_label_prior():
    rng = np.random.default_rng(0)
    y = rng.choice(3, 120, p=[0.6, 0.3, 0.1])
    counts = class_counts({"nv": 60, "mel": 30, "bcc": 10}, ["nv", "mel", "bcc"])
    prior = (counts + 0.5) / (counts + 0.5).sum()
    base = _probs(np.where(rng.random(120) < 0.6, y, (y + 1) % 3), 3, 0.7)

    same = corrected_cases_gate(y, base, base, counts, min_gain=0.0, source="h", alpha=0.05)
    assert not same.passed and "than the base beyond chance" in same.reason
    assert same.figures["log_loss_gain"]["gain"] == 0 and same.figures["log_loss_gain"]["p"] == 1

    # The corrections taught it: 20 more cases right, every right answer surer.
    fixed = np.flatnonzero(base.argmax(1) != y)[:20]
    top = base.argmax(1)
    top[fixed] = y[fixed]
    better = _probs(top, 3, 0.8)
    gate = corrected_cases_gate(y, better, base, counts, min_gain=0.0, source="h", alpha=0.05)
    assert gate.passed, gate.reason
    assert gate.figures["log_loss_gain"]["p"] < 0.05
    assert gate.figures["log_loss_gain_over_prior"]["p"] < 0.05
    assert gate.figures["fixed_by_candidate"] == 20 and gate.figures["broken_by_candidate"] == 0
    assert not corrected_cases_gate(y, better, base, counts, min_gain=0.5, source="h",
                                    alpha=0.05).passed  # accuracy gain 0.17 < 0.5

    # Labels that carry no information (shuffled): an overconfident base is beaten by a
    # candidate that only learnt to be unsure, but the label prior is not.
    shuffled = rng.permutation(y)
    confident = _probs(rng.integers(0, 3, 120), 3, 0.95)
    unsure = 0.9 * prior + 0.1 * confident
    gate = corrected_cases_gate(shuffled, unsure, confident, counts, min_gain=0.0, source="h",
                                alpha=0.05)
    assert gate.figures["log_loss_gain"]["p"] < 0.05  # "better" than the base
    assert not gate.passed and "class frequencies" in gate.reason
    # Without alpha the figures are reported, not required.
    assert corrected_cases_gate(shuffled, unsure, confident, counts, min_gain=0.0,
                                source="h").passed


def test_a_clinic_with_fewer_classes_is_judged_among_its_own_classes():
    """The prior knows the clinic sends only two of the four classes; the model, which still
    puts probability on the other two, is compared with it among those two."""
    rng = np.random.default_rng(3)
    y = rng.choice([0, 1], 300, p=[0.7, 0.3])
    counts = class_counts({"nv": 70, "mel": 30}, ["nv", "mel", "bcc", "df"])
    right = rng.random(300) < 0.9
    top = np.where(right, y, 1 - y)
    candidate = np.full((300, 4), 0.15)
    candidate[np.arange(300), top] = 0.55  # 0.3 of its mass on classes the clinic never sends
    base = np.full((300, 4), 0.25)
    gate = corrected_cases_gate(y, candidate, base, counts, min_gain=0.0, source="h",
                                alpha=0.05)
    assert gate.passed, gate.reason
    assert gate.figures["prior_classes"] == [0, 1]
    # Over all four classes it would lose to the prior: 0.55 at best against 0.7.
    assert gate.figures["candidate_log_loss"] > gate.figures["prior_log_loss"]


def test_label_prior_and_paired_gain():
    counts = class_counts({"mel": 3, "nv": 5, "unknown": 9}, ["mel", "nv", "bcc", "df"])
    assert counts.tolist() == [3, 5, 0, 0]  # unknown codes ignored
    used, prior = label_prior(counts, np.array([0, 1, 3]))  # df only among the held-out
    assert used.tolist() == [0, 1, 3]
    assert prior == pytest.approx(np.array([3.5, 5.5, 0.5]) / 9.5)
    noise = np.random.default_rng(1).normal(0, 1, 400)
    assert paired_gain(noise, noise, n_boot=500, level=0.95, seed=0)["p"] == 1.0
    gain = paired_gain(noise + 0.3, noise, n_boot=500, level=0.95, seed=0)
    assert gain["gain"] == pytest.approx(0.3) and gain["p"] == pytest.approx(1 / 501)
    lo, hi = paired_gain(noise + np.random.default_rng(2).normal(0, 1, 400), noise,
                         n_boot=500, level=0.95, seed=0)["interval"]
    assert lo < 0 < hi  # pure noise: the interval straddles 0


def test_protected_classes_gate_refuses_missed_melanomas_behind_a_steady_balanced_accuracy():
    # 3 classes, 40 images each; the candidate trades 8 melanomas (class 0) for 8 naevi (1).
    y = np.repeat([0, 1, 2], 40)
    base = np.where(np.arange(120) % 5 == 0, (y + 1) % 3, y)  # 80% recall each
    candidate = base.copy()
    candidate[np.flatnonzero((y == 0) & (base == 0))[:8]] = 1  # mel: 32 -> 24 of 40
    candidate[np.flatnonzero((y == 1) & (base != 1))[:8]] = 1  # nv: 32 -> 40 of 40
    boot = paired_bootstrap(y, candidate, base, 3, n_boot=300)
    assert boot["difference"] == pytest.approx(0.0)
    assert fixed_test_gate(y, candidate, base, 3, max_drop=0.02, n_boot=300, level=0.95,
                           seed=0, source="t", boot=boot).passed  # balanced accuracy holds
    gate = protected_classes_gate(boot, ["mel", "nv", "bcc"], ["mel"], max_class_drop=0.05,
                                  source="t")
    assert not gate.passed and "mel recall 0.600 vs base 0.800" in gate.reason
    assert gate.checks[0]["interval"][1] < 0  # 8 of 40 melanomas: beyond resampling too
    assert protected_classes_gate(boot, ["mel", "nv", "bcc"], ["nv"], max_class_drop=0.05,
                                  source="t").passed
    # One melanoma fewer: within the interval, but over a 0.02 budget; within a 0.05 one.
    one = base.copy()
    one[np.flatnonzero((y == 0) & (base == 0))[0]] = 1
    boot = paired_bootstrap(y, one, base, 3, n_boot=300)
    assert protected_classes_gate(boot, ["mel", "nv", "bcc"], ["mel"], max_class_drop=0.05,
                                  source="t").passed
    gate = protected_classes_gate(boot, ["mel", "nv", "bcc"], ["mel"], max_class_drop=0.02,
                                  source="t")
    assert not gate.passed and "exceeds max_class_drop 0.02" in gate.reason
    # A protected class that the test split lacks cannot pass by checking nothing.
    boot = paired_bootstrap(y[y > 0], base[y > 0], base[y > 0], 3, n_boot=100)
    gate = protected_classes_gate(boot, ["mel", "nv", "bcc"], ["mel"], max_class_drop=0.05,
                                  source="t")
    assert not gate.passed and "not in the test split" in gate.reason


def test_unknown_protected_class_is_refused_before_training(registry, tmp_path):
    feedback = write_feedback(tmp_path / "feedback", [("mel", NEW_LOOKS["mel"], "mel")])
    result = _retrain(feedback, registry, tmp_path / "run", "--set", "gates.protected=[melanoma]")
    assert result.exit_code != 0
    assert "gates.protected ['melanoma']: not classes of" in _text(result)
    assert not (tmp_path / "run" / "3-train").exists()


def test_budgets_gate_and_decision():
    ok = {"label": "onnx-fp32", "check": "p95_ms", "passed": True, "message": "fine"}
    bad = {"label": "onnx-fp32", "check": "p95_ms", "passed": False, "message": "too slow"}
    assert budgets_gate([ok], gate_file="g.yaml").passed
    failed = budgets_gate([ok, bad], gate_file="g.yaml")
    assert not failed.passed and "too slow" in failed.reason
    assert not budgets_gate([], gate_file="g.yaml").passed
    assert budgets_gate([], gate_file=None, applicable=False).passed
    assert decide([failed], promote=True, deployment="server").promote is False
    held = decide([budgets_gate([ok], gate_file="g")], promote=False, deployment="server")
    assert held.passed and not held.promote and "--no-promote" in held.reason


def test_a_service_data_folder_is_exported_into_the_run_first(registry, tmp_path, monkeypatch):
    pytest.importorskip("sqlalchemy")
    from skinedge.pipelines import retrain_stages
    from tests.service.test_feedback_export import Clinic

    clinic = Clinic(tmp_path / "service")
    for n in range(6):
        clinic.case(f"n{n}", clinic.b, f"N{n}", "nv", patient=f"R-{n}", review="verify")
        clinic.case(f"m{n}", clinic.a, f"M{n}", "nv", patient=f"S-{n}", review="correct",
                    label="mel")
    clinic.case("open", clinic.a, "E", "vasc")  # never reviewed: not exported
    clinic.store.close()

    def stop(*args, **kwargs):
        raise RuntimeError("stopped after the data stage")

    monkeypatch.setattr(retrain_stages, "finetune", stop)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped"):
        _retrain(tmp_path / "service", registry, out, catch=False)

    assert (out / "feedback/labels.csv").is_file()
    data = json.loads((out / "2-data/feedback.json").read_text())
    cases = data["train"] + data["holdout"]
    assert len(cases) == 12 and data["refused"] == []
    assert {c["status"] for c in cases} == {"verified", "corrected"}
    assert {c["label"] for c in cases} == {"nv", "mel"}
    # Held out by patient: no patient on both sides.
    assert not {c["group"] for c in data["train"]} & {c["group"] for c in data["holdout"]}


def test_a_database_password_is_never_recorded():
    from skinedge.cli.retrain import _redacted

    assert _redacted("skinedge retrain --feedback postgresql://app:s3cret@db:5432/x") == \
        "skinedge retrain --feedback postgresql://app:***@db:5432/x"


def test_sign_test_is_reported_beside_the_log_loss():
    from skinedge.pipelines.promotion import sign_test

    assert sign_test(0, 0) == 1.0
    assert sign_test(4, 3) == pytest.approx(0.5)
    assert sign_test(10, 0) == pytest.approx(1 / 1024)
    assert RetrainConfig().gates.holdout_alpha == 0.05  # required by default
    y = np.array([0] * 10 + [1] * 10)
    base = _probs(np.array([1] * 6 + [0] * 4 + [1] * 10), 2, 0.7)
    candidate = _probs(y, 2, 0.7)  # the 6 wrong answers fixed
    gate = corrected_cases_gate(y, candidate, base, np.array([0.5, 0.5]), min_gain=0.0,
                                source="h", alpha=0.05)
    assert gate.figures["sign_test_p"] == pytest.approx(1 / 64)
    assert "6 fixed, 0 broken" in gate.reason


def test_a_gan_run_is_refreshed_on_the_corrections_in_train_and_feeds_the_fine_tune(
        registry, tiny_checkpoint, tmp_path):
    from skinedge.models import load_card
    from skinedge.synth.gan import train_gan
    from tests.synth.test_gan import tiny_config

    gan = tmp_path / "gan"
    train_gan(tiny_config(manifest_of(tiny_checkpoint), model={"arch": "dcgan"}, kimg=0.016,
                          snapshot_kimg=0.016), gan)
    feedback = write_feedback(tmp_path / "feedback", [("df", NEW_LOOKS["df"], "df")])
    out = tmp_path / "run"

    result = _retrain(feedback, registry, out, "--gan", str(gan), "--set", "gan.kimg=0.016",
                      "--set", "gan.selection.target=20",
                      "--set", "gan.selection.min_classifier_confidence=0",
                      "--set", "gan.overrides=[threads=2]", base="v0002")

    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads((out / "2-data/feedback.json").read_text())
    assert data["holdout"] and {c["label"] for c in data["holdout"]} == {"df"}
    report = json.loads((out / "retrain.json").read_text())
    refreshed = report["gan"]
    assert refreshed["status"] == "refreshed" and refreshed["classes"] == ["df"]
    # The base's 6 df train images and the corrections that joined train; never the held-out.
    assert refreshed["images"] == {"df": 6 + len(data["train"])}
    assert refreshed["new_images"] == {"df": len(data["train"])}
    assert refreshed["init_from"]["."]["path"] == str((gan / "last.pt").resolve())
    assert refreshed["selected"]["df"] >= 1
    trained = json.loads((out / "3-train/stage.json").read_text())
    assert trained["synthetic"] == refreshed["synthetic"] == str(out / "2b-gan" / "selected")
    card = load_card(trained["checkpoint"])
    assert card.training["synthetic"]["counts"] == refreshed["selected"]


def test_an_ensemble_version_is_retrained_member_by_member(registry, teacher, tmp_path):
    from skinedge.models import load_card
    from skinedge.registry import Registry

    version = Registry(registry).register(teacher, manifest=manifest_of_registry(registry),
                                          notes="an ensemble, no export")
    feedback = write_feedback(tmp_path / "feedback",
                              [(c, colour, c) for c, colour in NEW_LOOKS.items()], lesions=3)
    out = tmp_path / "run"

    result = _retrain(feedback, registry, out, "--set", "finetune.epochs=1",
                      base=version.id)

    assert result.exit_code == 0, (result.output, result.exception)
    trained = json.loads((out / "3-train/stage.json").read_text())
    assert trained["kind"] == "ensemble"
    assert [s["step"] for s in trained["steps"]] == [
        "members/member-0", "members/member-1", "ensemble"]
    report = json.loads((out / "retrain.json").read_text())
    candidate = Registry(registry).get(report["candidate"])
    card = load_card(candidate.checkpoint)
    assert len(card.members) == 2 and card.classes == load_card(teacher).classes
    assert candidate.parent == version.id


def test_without_a_gan_run_the_gan_stage_is_skipped(registry, tmp_path, monkeypatch):
    from skinedge.pipelines import retrain_stages

    def stop(*args, **kwargs):
        raise RuntimeError("stopped after the GAN stage")

    monkeypatch.setattr(retrain_stages, "finetune", stop)
    feedback = write_feedback(tmp_path / "feedback", [("df", NEW_LOOKS["df"], "df")], lesions=3)
    with pytest.raises(RuntimeError, match="stopped"):
        _retrain(feedback, registry, tmp_path / "run", base="v0002", catch=False)
    stage = json.loads((tmp_path / "run/2b-gan/stage.json").read_text())
    assert stage == {"status": "skipped: no GAN run", "synthetic": None}
