"""`skinedge pipeline`: every stage cached under a key of its settings and inputs.

A tiny pipeline (16 px GAN, 32 px test_efficientnet members and student, ONNX FP32 and INT8)
on the tiny colour-coded dataset runs in seconds, so the tests run it for real: first run,
cached rerun, a changed gate or distillation setting, a dry run, and a SIGKILL in the middle
of a training stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from skinedge.cli.main import app
from skinedge.errors import ConfigError
from skinedge.pipelines.pipeline import plan_pipeline, run_pipeline
from skinedge.pipelines.pipeline_config import load_pipeline_config

TRAIN = {"model": {"arch": "test_efficientnet", "pretrained": "none", "drop_rate": 0},
         "preprocess": {"input_size": 32}, "augment": {"enabled": False},
         "optim": {"lr": 0.01, "scheduler": "none"}, "num_workers": 0, "batch_size": 8,
         "eval_batch_size": 32, "device": "cpu", "epochs": 2}
GAN = {"resolution": 16, "batch_size": 8, "kimg": 0.16, "snapshot_kimg": 0.08,
       "grid_per_class": 2, "device": "cpu",
       "model": {"channel_base": 128, "channel_max": 32, "z_dim": 16, "w_dim": 32,
                 "mapping_layers": 2}}
GATE = {"require": ["torch-fp32", "onnx-fp32", "onnx-int8"],
        "rules": [{"match": "*-fp32", "max_flip_rate": 0.0}]}


def write_config(folder: Path, data: Path, **changes) -> Path:
    """A pipeline config in ``folder`` (with its stage configs and gate beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"members.yaml": TRAIN, "gan.yaml": GAN, "gate.yaml": GATE,
             "distill.yaml": {**TRAIN, "distill": {"temperature": 2.0, "alpha": 0.5}}}
    for name, doc in files.items():
        (folder / name).write_text(yaml.safe_dump(doc))
    doc = {"data": str(data),
           "gan": {"enabled": True, "config": "gan.yaml", "oversample": 1,
                   "selection": {"target": 9}},  # 7 of 10 per class in train: 2 synthetic each
           "members": {"count": 2, "config": "members.yaml"},
           "distill": {"enabled": True, "config": "distill.yaml"},
           "export": {"targets": ["onnx:fp32", "onnx:int8"], "calibration_images": 8,
                      "verify_images": 0},
           "bench": {"gate": "gate.yaml", "warmup": 1, "iterations": 3},
           "report": {"gan_quality_images": 4, "gradcam_images": 3}}
    for key, value in changes.items():
        section, field = key.split("__")
        doc.setdefault(section, {})[field] = value
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def statuses(out: Path) -> dict[str, str]:
    return {row["name"]: row["status"] for row in json.loads((out / "pipeline.json")
                                                            .read_text())["stages"]}


def artifact_hashes(out: Path) -> dict[str, str]:
    """sha256 of what the pipeline makes: split, synthetic images, weights, ONNX files (not
    the GAN's checkpoint, which records its wall time)."""
    patterns = ["split/manifest.json", "synthetic-*/selected/images/*/*.png",
                "member-*/run/best/model.safetensors", "distill/run/best/model.safetensors",
                "export-*/*.onnx"]
    files = sorted({p for pattern in patterns for p in out.glob(pattern)})
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(config, run folder) of a finished pipeline run."""
    root = tmp_path_factory.mktemp("pipeline")
    data = Path(shutil.copytree(tiny_dataset, root / "data"))
    (data / "README.md").write_text("# Tiny\n\nColour squares.\n\n## Licence\n\n"
                                    "CC BY-NC 4.0, attribution: the skinedge tests.\n")
    config = write_config(root, data)
    run_pipeline(load_pipeline_config(config), root / "run")
    return config, root / "run"


def test_a_first_run_makes_every_stage_and_links_it(finished) -> None:
    config, out = finished
    assert statuses(out) == dict.fromkeys(
        ["split", "gan", "member-0", "synthetic-1", "member-1", "ensemble", "distill",
         "export-onnx-fp32", "export-onnx-int8", "bench", "gan-quality", "evaluate"], "ran")
    synthetic = json.loads((out / "synthetic-1" / "stage.json").read_text())
    assert synthetic["set"] and sum(row["kept"] for row in synthetic["summary"].values()) > 0
    member = json.loads((out / "member-1/run/best/card.json").read_text())
    assert member["training"]["config"]["data"]["synthetic"] == synthetic["set"]
    bench = json.loads((out / "bench" / "stage.json").read_text())
    assert {row["label"] for row in bench["rows"]} == {"torch-fp32", "onnx-fp32", "onnx-int8"}
    assert bench["gate"]["passed"], bench["gate"]
    report = (out / "pipeline.md").read_text()
    assert "| distill |" in report and "Gate: passed" in report
    assert (out / "pipeline.yaml").is_file()


def test_the_report_renders_every_section_on_a_phone_offline(finished, tmp_path) -> None:
    from skinedge.export.web.browser import CHROMIUM, CHROMIUM_ARGS, PHONE, browser_problem
    from skinedge.pipelines.pipeline_report import RENDER_FAILED, SECTIONS

    if reason := browser_problem():
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    _, out = finished
    report = out / "report.html"
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": PHONE[0], "height": PHONE[1]})
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.as_uri())
        rendered = page.evaluate("""ids => ids.map(id => {
            const s = document.getElementById(id);
            if (!s) return {id, missing: true};
            const imgs = [...s.querySelectorAll('img')];
            return {id, height: s.getBoundingClientRect().height,
                    text: s.innerText.length - s.querySelector('h2').innerText.length,
                    images: imgs.length, broken: imgs.filter(i => !(i.complete &&
                        i.naturalWidth > 0)).length,
                    charts: s.querySelectorAll('svg polyline').length,
                    rows: s.querySelectorAll('tr').length};
        })""", list(SECTIONS))
        wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    sections = {s["id"]: s for s in rendered}
    assert not [s for s in rendered if s.get("missing") or s["height"] < 20 or s["text"] < 30]
    assert not [s for s in rendered if s["broken"]]
    assert wide <= 0  # readable on a phone: wide tables scroll in their own box
    assert requests == [report.as_uri()]  # self-contained: no CDN, nothing else fetched
    assert sections["curves"]["charts"] >= 3 * 3  # 3 charts x (2 members + student)
    assert sections["gan"]["images"] == 1 and sections["gan"]["rows"] == 1 + 7 + 1  # + all
    assert sections["gradcam"]["images"] == 3
    assert sections["evaluation"]["images"] == 2  # the ensemble's and the student's matrix
    assert sections["bench"]["images"] == 1 and sections["bench"]["rows"] == 1 + 3
    page_text = report.read_text()
    assert RENDER_FAILED not in page_text
    for expected in ("split check passed", "gate passed", "CC BY-NC", "member-1",
                     "real images only"):
        assert expected in page_text, expected
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_results_md_gets_the_runs_stages_gate_and_bench(finished, tmp_path) -> None:
    _, out = finished
    results = tmp_path / "RESULTS.md"
    results.write_text("# Measured results\n\nkept\n")
    command = [sys.executable, "scripts/results.py", "--update", "--pipeline", str(out),
               "--out", str(results)]
    root = Path(__file__).resolve().parents[2]
    for _ in range(2):  # the second call replaces the section
        subprocess.run(command, cwd=root, check=True, capture_output=True, timeout=120)
    text = results.read_text()
    assert text.count("<!-- section: pipeline -->") == 1 and "kept" in text
    assert "| distill |" in text and "Gate: passed" in text and "| onnx-int8 | ok |" in text
    assert "| member-1 | yes |" in text and "scripts/results.py --update --pipeline" in text


def test_a_second_run_with_nothing_changed_reuses_every_stage(finished) -> None:
    config, out = finished
    before = artifact_hashes(out)
    started = time.perf_counter()
    result = run_pipeline(load_pipeline_config(config), out)
    assert time.perf_counter() - started < 30  # hashing the data and reading stage.json
    assert set(statuses(out).values()) == {"cached"} and result.passed
    assert artifact_hashes(out) == before


def test_a_changed_gate_reruns_only_the_bench_and_can_fail_the_run(finished, tmp_path) -> None:
    config, out = finished
    gate = config.parent / "gate.yaml"
    original = gate.read_text()
    try:
        gate.write_text(yaml.safe_dump({**GATE, "rules": [{"match": "*", "p95_ms": 1e-6}]}))
        result = CliRunner().invoke(app, ["pipeline", str(config), "--out", str(out)])
        assert result.exit_code == 1, result.output
        assert "gate failed" in result.output
        assert {n for n, s in statuses(out).items() if s == "ran"} == {"bench"}
    finally:
        gate.write_text(original)


def test_a_changed_distillation_setting_reruns_it_and_what_follows(finished) -> None:
    config, out = finished
    cfg = load_pipeline_config(config, ["distill.overrides=[distill.alpha=0.9]"])
    plan = {s.name: s.status for s in plan_pipeline(cfg, out, dry_run=True)}
    assert {n for n, s in plan.items() if s == "runs"} == {
        "distill", "export-onnx-fp32", "export-onnx-int8", "bench", "evaluate"}
    result = CliRunner().invoke(app, ["pipeline", str(config), "--out", str(out), "--dry-run",
                                      "--set", "distill.overrides=[distill.alpha=0.9]"])
    assert result.exit_code == 0, result.output
    assert "cached" in result.output and "runs" in result.output
    assert len(list((out / "cache" / "distill").iterdir())) == 1  # a dry run runs nothing


def test_a_fixed_exporter_reruns_its_exports_and_the_bench_only(finished, monkeypatch) -> None:
    from dataclasses import replace

    from skinedge.export.base import TARGETS

    config, out = finished
    onnx = TARGETS["onnx"]
    monkeypatch.setitem(TARGETS, "onnx", replace(onnx, revision=onnx.revision + 1))
    plan = {s.name: s.status for s in plan_pipeline(load_pipeline_config(config), out,
                                                    dry_run=True)}
    assert {n for n, s in plan.items() if s == "runs"} == {
        "export-onnx-fp32", "export-onnx-int8", "bench"}


def test_a_kill_in_the_middle_of_a_stage_resumes_to_the_same_artifacts(tiny_dataset,
                                                                       tmp_path) -> None:
    # Distillation long enough (40 epochs) to be killed while it trains.
    config = write_config(tmp_path / "config", tiny_dataset, report__gan_quality_images=0)
    (tmp_path / "config" / "distill.yaml").write_text(yaml.safe_dump(
        {**TRAIN, "epochs": 40, "early_stopping_patience": 100,
         "distill": {"temperature": 2.0, "alpha": 0.5}}))
    out = tmp_path / "run"
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767225600"}
    command = [sys.executable, "-m", "skinedge.cli.main", "pipeline", str(config), "--out",
               str(out)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    uninterrupted = artifact_hashes(out)
    assert len(uninterrupted) >= 7

    shutil.rmtree(out)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(out.glob("cache/distill/*/run/last/card.json")):
        assert process.poll() is None, "the pipeline finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(out.glob("cache/distill/*/stage.json"))  # cut off in the middle

    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    assert statuses(out)["distill"] == "ran" and statuses(out)["member-1"] == "cached"
    assert artifact_hashes(out) == uninterrupted


def test_config_errors_name_the_field_and_the_fix(tiny_dataset, tmp_path) -> None:
    config = write_config(tmp_path, tiny_dataset, export__targets=["onnx:fp32", "tflight"])
    with pytest.raises(ConfigError, match=r"export\.targets.*'tflight': unknown target.*tflite"):
        load_pipeline_config(config)
    config = write_config(tmp_path, tiny_dataset, members__config="nowhere.yaml")
    with pytest.raises(ConfigError, match="nowhere.yaml: no such file.*packaged configs"):
        load_pipeline_config(config)
    config = write_config(tmp_path, tmp_path / "missing")
    with pytest.raises(ConfigError, match="is not a folder"):
        plan_pipeline(load_pipeline_config(config), tmp_path / "run")


def test_the_packaged_cpu_config_plans_every_stage(tiny_dataset, tmp_path) -> None:
    cfg = load_pipeline_config("pipeline-ham10000-cpu.yaml", data=tiny_dataset)
    names = [s.name for s in plan_pipeline(cfg, tmp_path, dry_run=True)]
    assert names[:3] == ["split", "gan", "member-0"]
    assert names[-3:] == ["bench", "gan-quality", "evaluate"]
    assert "export-tflite-int8" in names and not (tmp_path / "cache").exists()


def test_the_packaged_gpu_config_plans_b4_members_and_asks_for_their_weights_first(
        tiny_dataset, tmp_path) -> None:
    from skinedge.errors import NotFoundError

    cfg = load_pipeline_config("pipeline-ham10000-gpu.yaml", data=tiny_dataset)
    with pytest.raises(NotFoundError, match=r"members\.config .*ham10000-b4-gpu\.yaml: "
                                            r"pretrained weights file .*tf_efficientnet_b4"):
        plan_pipeline(cfg, tmp_path, dry_run=True)  # before any stage, not after the GAN
    cfg = load_pipeline_config("pipeline-ham10000-gpu.yaml",
                               ["members.overrides=[model.pretrained=none]"], data=tiny_dataset)
    names = [s.name for s in plan_pipeline(cfg, tmp_path, dry_run=True)]
    assert names.count("ensemble") == 1 and sum(n.startswith("member-") for n in names) == 5
    assert {"gan", "distill", "export-tensorrt-int8"} <= set(names)
    from skinedge.pipelines import pipeline_stages as stages
    member, gan = stages.member_config(cfg, 0), stages.gan_config(cfg)
    assert member.model.arch == "tf_efficientnet_b4"
    assert member.preprocess.input_size == gan.resolution == 256  # no upscaled synthetic images


def test_the_packaged_quickstart_config_is_one_model_exported_and_reported(tiny_dataset,
                                                                          tmp_path) -> None:
    cfg = load_pipeline_config("pipeline-quickstart.yaml", data=tiny_dataset)
    names = [s.name for s in plan_pipeline(cfg, tmp_path, dry_run=True)]
    assert names == ["split", "member-0", "export-onnx-fp32", "bench", "evaluate"]


@pytest.mark.slow
def test_under_torchrun_the_training_stages_train_on_every_process(tiny_dataset, tmp_path,
                                                                   monkeypatch) -> None:
    from tests.train.test_ddp import free_port

    config = write_config(tmp_path, tiny_dataset, gan__enabled=False, bench__gate=None,
                          export__targets=["onnx:fp32"])
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_port", str(free_port()), "-m", "skinedge.cli.main", "pipeline",
             str(config), "--out", str(out)],
            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:  # a hang: say where
        finished = sorted(p.parent.parent.name for p in out.glob("cache/*/*/stage.json"))
        pytest.fail(f"no end after 600 s; stages finished: {finished}\n"
                    f"{(exc.stderr or b'')[-3000:]!r}")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert log.count("cpu x2") == 3  # members 0 and 1 and the student, each with both processes
    assert log.count("stages ran") == 1  # rank 0 alone reports
    assert set(statuses(out).values()) == {"ran"}
    assert (out / "report.html").is_file() and list((out / "export-onnx-fp32").glob("*.onnx"))

    cfg = load_pipeline_config(config)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert {s.status for s in plan_pipeline(cfg, out, dry_run=True)} == {"cached"}
    monkeypatch.delenv("WORLD_SIZE")  # one process: another global batch, so other models
    alone = {s.name: s.status for s in plan_pipeline(cfg, out, dry_run=True)}
    assert alone["split"] == "cached"
    assert {alone["member-0"], alone["member-1"], alone["distill"], alone["bench"]} == {"runs"}


def test_pipeline_keys_leave_zoom_out_out_while_it_is_off() -> None:
    from skinedge.pipelines.pipeline_stages import dump
    from skinedge.train.config import TrainConfig

    off = dump(TrainConfig(data={"manifest": "m.json"}))["augment"]
    on = dump(TrainConfig(data={"manifest": "m.json"}, augment={"zoom_out": 0.5}))["augment"]
    assert "zoom_out" not in off and "zoom_out_size" not in off and "phone_copy" in off
    assert on["zoom_out"] == 0.5 and on["zoom_out_size"] == [0.5, 1.0]
