"""Retraining from clinicians' corrections, end to end on the HAM10000 sample (issue 15).

Usage:
    python scripts/retrain_demo.py [--data ../shared/data/ham10000-sample] \
        [--clinic ../shared/data/isic2019-sample] [--clinic-cases 600] \
        [--work runs/retrain-demo] [--out docs/RESULTS.md] [--epochs 5] [--size 128]

What it does, each step cached in ``--work`` (outside git: the images are CC BY-NC):

1. split the sample by lesion (70/15/15, seed 0), then hold back a quarter of the TRAIN split's
   lesions (stratified, seed 1) as the clinicians' corrections: the base model never sees them;
2. train a base EfficientNet-Lite0 (packaged ImageNet weights) on the rest at ``--size`` px,
   export it to ONNX and OpenVINO FP32, register it with its manifest and the server deployment's
   gate file, and promote it to ``server``;
3. write feedback folders (what `skinedge feedback export` writes), ``status`` corrected where
   the base model's answer differs from the label and verified where it agrees:
   - ``true``: the held-back images with their true labels, fine-tuned with the default
     settings and harder (as the shuffled labels are, so that the two differ only in labels);
   - ``shuffled``: the same images, labels permuted (seed 0): a deliberately worse candidate,
     fine-tuned once with the same settings and once harder (5 epochs at the base's full
     learning rate) so that the wrong labels are learnt;
   - ``mel-as-nv``: the same images, every melanoma labelled a naevus: a clinic's systematic
     error, which agrees with itself on its own held-out part, so only the fixed test split's
     melanoma sensitivity can refuse it; fine-tuned with the same settings and harder;
   - ``clinic-true`` / ``clinic-shuffled``: ``--clinic-cases`` images of another source
     (ISIC 2017 dermoscopy, squashed to 256 px squares, mel/nv/bkl), as a new clinic whose
     images the base has never seen would send them, with true and with permuted labels;
4. ``skinedge retrain`` from each, always from v0001: the report says whether it was promoted
   and why;
5. the figures go to ``--out`` between ``<!-- section: retrain -->`` markers (replaced, or
   appended), and to ``WORK/retrain-demo.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from results import replace_section  # scripts/ is on sys.path when run as a script

SECTION = "retrain"
VERSIONS = ("onnx", "onnxruntime", "nncf")  # besides package_versions()'s own
GATE = """\
# The server deployment's budgets: both exports present, fast enough on one thread, and
# agreeing with the checkpoint they were exported from.
require: [onnx-fp32, openvino-fp32]
rules:
  - match: "onnx-*"
    p95_ms: 100
    max_flip_rate: 0.01
  - match: "openvino-*"
    p95_ms: 100
    max_flip_rate: 0.01
"""
#: The base version's exports. INT8 is left out: ONNX and OpenVINO INT8 (NNCF PTQ, 100
#: calibration images) of this 5-epoch 128 px base failed their export verification when this
#: script was written (top-1 flips on the validation images above the targets' 5% bound).
TARGETS = (("onnx", "fp32", ".onnx"), ("openvino", "fp32", ".xml"))


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def split_sample(data: Path, work: Path) -> tuple[Path, list]:
    """The base manifest (every split, without the held-back lesions) and the held-back rows."""
    from skinedge.data import Manifest, ManifestRow, Record, read_dataset
    from skinedge.data.splits import split_groups
    from skinedge.utils.io import sha256_file

    dataset = read_dataset(data, layout="labels-csv")
    assignment = split_groups(dataset.records, (0.7, 0.15, 0.15), seed=0)
    train = [r for r in dataset.records if assignment[r.group] == "train"]
    held = split_groups([Record(r.image, r.group, r.label, r.source) for r in train],
                        (0.75, 0.0, 0.25), seed=1)
    corrections = [r for r in train if held[r.group] == "test"]
    back = {r.image for r in corrections}
    rows = [ManifestRow(r.image, r.group, r.label, assignment[r.group],
                        sha256_file(data / r.image))
            for r in dataset.records if r.image not in back]
    manifest = Manifest(data.resolve(), dataset.layout, dataset.vocabulary.name, 0,
                        (0.7, 0.15, 0.15), rows,
                        exif_oriented=[i for i in dataset.exif_rotated if i not in back])
    path = work / "base" / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.save(path)
    log(f"split: {len(rows)} images in the base manifest "
        f"({ {s: sum(c.values()) for s, c in manifest.counts().items()} }), "
        f"{len(corrections)} held back from train as corrections")
    return path, corrections


def train_base(manifest: Path, work: Path, epochs: int, size: int) -> Path:
    from skinedge.pipelines.quickstart import default_config
    from skinedge.train.config import load_train_config
    from skinedge.train.resume import has_trainer_state
    from skinedge.train.trainer import train_classifier

    run = work / "base" / "train"
    if (run / "done").is_file():
        log(f"base: {run / 'best'} (cached)")
        return run / "best"
    cfg = load_train_config(default_config(), [
        f"data.manifest={manifest}", f"preprocess.input_size={size}", f"epochs={epochs}",
        "threads=2", "num_workers=1", "device=cpu"])
    log(f"base: training tf_efficientnet_lite0 at {size} px for {epochs} epochs")
    result = train_classifier(cfg, run, resume=has_trainer_state(run))
    (run / "done").write_text(json.dumps({"best_epoch": result.best_epoch}))
    return result.best_dir


def export_base(checkpoint: Path, manifest: Path, work: Path) -> list[Path]:
    from skinedge.export import export_checkpoint

    out = work / "base" / "exports"
    paths = []
    for target, precision, suffix in TARGETS:
        path = out / f"tf_efficientnet_lite0_{precision}{suffix}"
        if not path.is_file():
            log(f"base: exporting {target} {precision}")
            path = export_checkpoint(checkpoint, target, precision=precision, out_dir=out,
                                     manifest=manifest).path
        paths.append(path)
    return paths


def register_base(checkpoint: Path, artifacts: list[Path], manifest: Path, work: Path):
    from skinedge.registry import Registry

    registry = Registry(work / "registry")
    if (work / "registry" / "versions").is_dir() and registry.versions():
        return registry, registry.versions()[0]
    gate = work / "base" / "gate.yaml"
    gate.write_text(GATE)
    version = registry.register(checkpoint, artifacts, manifest=manifest,
                                reports={"gate.yaml": gate}, notes="retrain demo base")
    registry.promote(version.id, "server", reason="retrain demo: the base version")
    log(f"registered and promoted {version.id}")
    return registry, version


#: Feedback folders: name -> (where the cases come from, how their labels are written).
FEEDBACK = {"true": ("held-back", "true"), "shuffled": ("held-back", "shuffled"),
            "mel-as-nv": ("held-back", "mel-as-nv"), "clinic-true": ("clinic", "true"),
            "clinic-shuffled": ("clinic", "shuffled")}
HARDER = ["--set", "finetune.lr_scale=1.0", "--set", "finetune.epochs=5"]
#: The retraining runs: name -> (feedback folder, extra arguments).
RUNS = {
    "corrections": ("true", []),
    "corrections, fine-tuned harder": ("true", HARDER),
    "shuffled labels": ("shuffled", []),
    "shuffled labels, fine-tuned harder": ("shuffled", HARDER),
    "melanomas called naevi": ("mel-as-nv", []),
    "melanomas called naevi, fine-tuned harder": ("mel-as-nv", HARDER),
    "a new clinic's corrections": ("clinic-true", []),
    "a new clinic, shuffled labels": ("clinic-shuffled", []),
}


def clinic_cases(clinic: Path, count: int) -> list[tuple[Path, str, str]]:
    """``count`` images of another source (seed 2): (path, group, label); the group is the
    lesion id where ISIC published one, else the image."""
    import numpy as np

    with (clinic / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    picked = np.random.default_rng(2).permutation(len(rows))[:count]
    return [(clinic / rows[i]["image"], rows[i]["lesion_id"] or Path(rows[i]["image"]).stem,
             rows[i]["dx"]) for i in sorted(picked)]


def relabel(labels: list[str], how: str) -> list[str]:
    import numpy as np

    if how == "shuffled":
        return [str(x) for x in np.random.default_rng(0).permutation(labels)]
    if how == "mel-as-nv":
        return ["nv" if x == "mel" else x for x in labels]
    return list(labels)


def write_feedback(folder: Path, cases: list[tuple[Path, str, str]], how: str,
                   checkpoint: Path) -> dict:
    """A feedback folder of ``cases`` (image path, group, true label), labels written ``how``;
    status from the base model's answer."""
    from skinedge.evaluate import evaluate_checkpoint

    if (folder / "labels.csv").is_file() and (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    labels = relabel([label for _, _, label in cases], how)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for (image, group, _), label in zip(cases, labels):
        target = folder / "images" / image.name
        if not target.exists():
            try:
                os.link(image, target)
            except OSError:
                target.write_bytes(image.read_bytes())
        rows.append({"image": f"images/{target.name}", "lesion_id": group, "patient_id": "",
                     "dx": label, "status": "verified"})
    _write_labels(folder / "labels.csv", rows)
    result = evaluate_checkpoint(checkpoint, data=folder, layout="labels-csv", device="cpu")
    classes = result.label_classes
    predicted = {image: classes[i] for image, i in zip(result.images, result.probs.argmax(1))}
    for row in rows:
        row["status"] = "verified" if predicted[row["image"]] == row["dx"] else "corrected"
    _write_labels(folder / "labels.csv", rows)
    summary = {"cases": len(rows), "corrected": sum(r["status"] == "corrected" for r in rows),
               "labels": how,
               "labels_changed": sum(a != c[2] for a, c in zip(labels, cases))}
    (folder / "summary.json").write_text(json.dumps(summary))
    log(f"feedback {folder}: {summary}")
    return summary


def _write_labels(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "lesion_id", "patient_id", "dx", "status"])
        writer.writeheader()
        writer.writerows(rows)


def retrain(feedback: Path, work: Path, out: Path, extra: list[str],
            previous: float | None) -> tuple[dict, str, float]:
    command = ["skinedge", "retrain", "--feedback", str(feedback), "--from", "v0001",
               "--registry", str(work / "registry"), "--deployment", "server", "--out", str(out),
               "--set", "finetune.epochs=3", "--set", "export.calibration_images=100",
               "--set", "bench.iterations=30",
               "--set", "finetune.train_overrides=[threads=2,num_workers=1,device=cpu]", *extra]
    if (out / "retrain.json").is_file() and (out / "7-register" / "stage.json").is_file():
        log(f"{out}: done before")
        return (json.loads((out / "retrain.json").read_text()), shlex.join(command),
                previous or 0.0)
    resume = ["--resume"] if (out / "command.json").is_file() else []
    log(f"running {shlex.join(command + resume)}")
    started = time.perf_counter()
    exe = Path(sys.executable).with_name("skinedge")
    subprocess.run([str(exe), *command[1:], *resume], check=True)
    seconds = time.perf_counter() - started
    if resume:  # the run's wall time over its attempts
        seconds += previous or 0.0
    return json.loads((out / "retrain.json").read_text()), shlex.join(command), seconds


def machine() -> dict:
    from skinedge.utils.io import package_versions

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model_name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                       if line.startswith("model name")), platform.processor() or "unknown")
    versions = package_versions(VERSIONS)
    return {"cpu": model_name, "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "python": versions.pop("python"), "platform": versions.pop("platform"),
            "versions": versions}


def render(doc: dict) -> list[str]:
    m = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    fb = doc["feedback"]
    lines = [
        f"Section generated by `{doc['command']}` on {doc['finished']}; do not edit by hand.", "",
        "## Retraining from clinicians' corrections (issue 15)", "",
        f"- command: `{doc['command']}`, finished {doc['finished']}, "
        f"{doc['seconds'] / 60:.1f} min wall in all (the base's training epochs and the "
        "retrain runs)",
        f"- machine: {m['cpu']}, {m['cores']} logical cores, shared with other work (load "
        f"average {', '.join(f'{x:.2f}' for x in m['load_average'])} when the run began); "
        f"python {m['python']}, {versions}",
        f"- data: `{doc['data']}` (HAM10000 sample, CC BY-NC), split by lesion 70/15/15 "
        f"(seed 0); a quarter of the train split's lesions (seed 1) held back as clinicians' "
        f"corrections: {fb['true']['cases']} images, the base model's answer wrong on "
        f"{fb['true']['corrected']} of them (status corrected) and right on the rest (verified)",
        f"- base version v0001: tf_efficientnet_lite0, packaged ImageNet weights, "
        f"{doc['size']} px, {doc['epochs']} epochs on the rest of the train split "
        f"({doc['base_seconds'] / 60:.1f} min of training epochs); ONNX FP32 and OpenVINO "
        "FP32 (INT8 left out: ONNX and OpenVINO INT8 of this weakly trained base failed their "
        "export verification when the script was written, top-1 flips above the 5% bound); "
        "gate file: both exports required, p95 <= 100 ms at one thread, top-1 flips against "
        "the checkpoint <= 1%",
        "- feedback folders: *corrections*, the held-back images with their true labels; "
        f"*shuffled labels*, the same images with labels permuted ({fb['shuffled']['labels_changed']}"
        f" of {fb['shuffled']['cases']} changed); *melanomas called naevi*, every melanoma "
        f"labelled `nv` ({fb['mel-as-nv']['labels_changed']} changed); *a new clinic*, "
        f"{fb['clinic-true']['cases']} images of `{doc['clinic']}` (ISIC 2017 dermoscopy "
        "squashed to 256 px squares, mel/nv/bkl, never seen by the base; the base's answer wrong "
        f"on {fb['clinic-true']['corrected']}), with true and with permuted labels "
        f"({fb['clinic-shuffled']['labels_changed']} changed)",
        "- each retrain: from v0001, fine-tune 3 epochs at 0.2x its learning rate (*fine-tuned "
        "harder*: 5 epochs at 1x), 30% of the feedback's lesions held out for the "
        "corrected-cases gate, the rest joining the train split (deduplicated by sha256 "
        "against every split), re-export ONNX + OpenVINO FP32, bench against the gate file; "
        "gates: paired bootstrap (2000 resamples, 95%) of balanced accuracy and of melanoma "
        "recall on the base manifest's fixed test split (refused below 0, or a drop over 0.02 "
        "and 0.05); on the held-out cases, log-loss lower than the base's and than the label "
        "prior's (the class frequencies of the feedback that joined train; the candidate's "
        "probabilities renormalised over the classes the feedback uses), each by a "
        "one-sided paired bootstrap (2000 resamples) at p < 0.05, and accuracy not lower",
        "",
        "| run | feedback | test split: balanced accuracy, candidate vs base (diff, 95% CI) "
        "| test split: melanoma recall (diff, 95% CI) "
        "| held-out cases: log-loss candidate vs base (gain, p); among the feedback's classes, "
        "candidate vs label prior (gain, p); accuracy (fixed / broken) "
        "| budgets | decision | wall |",
        "|---|---|---|---|---|---|---|---:|",
    ]
    for name, run in doc["runs"].items():
        r = run["report"]
        g = {x["name"]: x for x in r["gates"]}
        t, h, b = g["test-split"]["figures"], g["corrected-cases"]["figures"], \
            g["deployment-budgets"]
        mel = g["protected-classes"]["figures"]["recall"]["mel"]
        lo, hi = t["interval"]
        m_lo, m_hi = mel["interval"]
        mark = lambda ok: "pass" if ok else "**fail**"  # noqa: E731
        lines.append(
            f"| {name} | {r['data']['train']} joined train, {r['data']['holdout']} held out, "
            f"{r['data']['duplicates']} duplicates, {r['data']['refused']} refused "
            f"| {t['candidate']:.3f} vs {t['base']:.3f} ({t['difference']:+.3f}, "
            f"[{lo:+.3f}, {hi:+.3f}], n={t['n']}): {mark(g['test-split']['passed'])} "
            f"| {mel['candidate']:.3f} vs {mel['base']:.3f} ({mel['difference']:+.3f}, "
            f"[{m_lo:+.3f}, {m_hi:+.3f}], n={mel['n']}): "
            f"{mark(g['protected-classes']['passed'])} "
            f"| {h['candidate_log_loss']:.3f} vs {h['base_log_loss']:.3f} "
            f"({h['log_loss_gain']['gain']:+.3f}, p={h['log_loss_gain']['p']:.2g}); "
            f"{len(h['prior_classes'])} classes: "
            f"{h['candidate_log_loss_within_prior_classes']:.3f} vs "
            f"{h['prior_log_loss']:.3f} ({h['log_loss_gain_over_prior']['gain']:+.3f}, "
            f"p={h['log_loss_gain_over_prior']['p']:.2g}); accuracy "
            f"{h['candidate_accuracy']:.3f} vs {h['base_accuracy']:.3f} "
            f"({h['fixed_by_candidate']} / {h['broken_by_candidate']}), n={h['n']}: "
            f"{mark(g['corrected-cases']['passed'])} "
            f"| {b['figures'].get('checks', 0) - b['figures'].get('failed', 0)}/"
            f"{b['figures'].get('checks', 0)} checks: {mark(b['passed'])} "
            f"| {r['candidate']}: **{'promoted' if r['decision']['promoted'] else 'refused'}** "
            f"| {run['seconds'] / 60:.1f} min |")
    lines += ["", "Reasons, as the reports (`retrain.md`) give them:", ""]
    for name, run in doc["runs"].items():
        lines.append(f"- {name} (`{run['command']}`): {run['report']['decision']['reason']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ham10000-sample"))
    parser.add_argument("--clinic", type=Path, default=Path("../shared/data/isic2019-sample"))
    parser.add_argument("--clinic-cases", type=int, default=600)
    parser.add_argument("--work", type=Path, default=Path("runs/retrain-demo"))
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/retrain_demo.py", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    info = machine()
    work = args.work.resolve()
    # A rerun reuses every finished step; its wall times are those of the run that made them.
    previous = json.loads((work / "retrain-demo.json").read_text()) \
        if (work / "retrain-demo.json").is_file() else {}
    manifest, corrections = split_sample(args.data, work)
    checkpoint = train_base(manifest, work, args.epochs, args.size)
    artifacts = export_base(checkpoint, manifest, work)
    # Training time from the run's own record (a rerun finds the base trained already).
    metrics = (checkpoint.parent / "metrics.jsonl").read_text().splitlines()
    base_seconds = sum(json.loads(line)["seconds"] for line in metrics if line.strip())
    register_base(checkpoint, artifacts, manifest, work)
    sources = {"held-back": [(args.data / r.image, r.group, r.label) for r in corrections],
               "clinic": clinic_cases(args.clinic, args.clinic_cases)}
    feedback = {kind: write_feedback(work / f"corrections-{kind}", sources[source], how,
                                     checkpoint)
                for kind, (source, how) in FEEDBACK.items()}
    runs = {}
    for name, (kind, extra) in RUNS.items():
        folder = "retrain-" + name.lower().replace("'s", "").replace(",", "").replace(" ", "-")
        report, cmd, seconds = retrain(work / f"corrections-{kind}", work, work / folder,
                                       extra,
                                       previous.get("runs", {}).get(name, {}).get("seconds"))
        runs[name] = {"report": report, "command": cmd, "seconds": seconds}
        log(f"{name}: {report['candidate']} {report['decision']['reason']}")
    finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if time.perf_counter() - started < 120 and previous:  # nothing ran again
        command, finished, info = (previous[k] for k in ("command", "finished", "machine"))
    # The steps' wall times, also when some were made by an earlier run of the script.
    seconds = base_seconds + sum(run["seconds"] for run in runs.values())
    doc = {"command": command, "finished": finished,
           "seconds": seconds, "base_seconds": base_seconds,
           "machine": info, "data": str(args.data), "clinic": str(args.clinic),
           "epochs": args.epochs, "size": args.size, "feedback": feedback, "runs": runs}
    (work / "retrain-demo.json").write_text(json.dumps(doc, indent=1, default=str))
    text = args.out.read_text() if args.out.is_file() else ""
    args.out.write_text(replace_section(text, SECTION, render(doc)))
    log(f"wrote the {SECTION} section of {args.out} and {work / 'retrain-demo.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
