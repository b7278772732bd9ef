"""``skinedge export`` and ``skinedge bench``: artifacts for devices, and proof they hold up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from skinedge.cli.common import check_count, parse_int_list, print_error, print_log
from skinedge.errors import ConfigError

app = typer.Typer()


def _parse_targets(values: list[str]) -> list[tuple[str, str | None, str | None]]:
    """``onnx``, ``onnx:int8``, ``openvino:int8:qac``, ``all`` -> [(target, precision, quantizer)].

    Every spec is checked (target registered, precision and quantizer offered by it) before
    anything is exported or measured.

    Raises:
        ConfigError: a spec that is not TARGET[:PRECISION[:QUANTIZER]] or ``all``, or names
            what its target does not offer; the message names the spec.
    """
    from skinedge.export import TARGETS
    from skinedge.export.records import check_export_choice

    pairs: list[tuple[str, str | None, str | None]] = []
    for value in values:
        for item in value.split(","):
            name, precision, quantizer, *extra = [*item.strip().split(":"), None, None]
            form = (f"write TARGET[:PRECISION[:QUANTIZER]] with TARGET one of "
                    f"{', '.join(sorted(TARGETS))}, or all")
            if name == "all":
                if precision or quantizer or any(extra[:-2]):
                    raise ConfigError(f"bad --export {item!r}: all exports every target at "
                                      f"every precision and takes no :PRECISION; {form}")
                pairs += [(t.name, p, None) for t in TARGETS.values() for p in t.precisions]
                continue
            if name not in TARGETS or any(extra[:-2]):
                raise ConfigError(f"bad --export {item!r}: {form}")
            try:
                check_export_choice(name, precision or None, quantizer or None)
            except ConfigError as exc:
                raise ConfigError(f"bad --export {item!r}: {exc}") from exc
            pairs.append((name, precision or None, quantizer or None))
    return pairs


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder, e.g. runs/NAME/train/best.")],
    target: Annotated[str, typer.Option(help="onnx, openvino, tflite, coreml, tensorrt, executorch or web.")],
    precision: Annotated[str | None, typer.Option(help="fp32, fp16 or int8 (default: the target's).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the artifact and its .export.json.")] = Path("exports"),
    manifest: Annotated[Path | None, typer.Option(
        help="Split manifest for calibration (train) and verification (val) images; default: "
             "the one the model was trained on.")] = None,
    calibration_images: Annotated[int, typer.Option(help="INT8 calibration images from the training split.")] = 300,
    verify_images: Annotated[int, typer.Option(help="Validation images the artifact is checked on (0: none).")] = 64,
    quantizer: Annotated[str | None, typer.Option(
        help="INT8 method. TFLite: pt2e (default) or aeq (ai-edge-quantizer), int8 in/out with "
             "--float-first 0; or pt2e-qat. ExecuTorch: pt2e (default) or pt2e-qat (pt2e, then "
             "quantization-aware distillation to the checkpoint over the training split: the "
             "fallback, minutes on a CPU). OpenVINO: ptq (default) or qac (NNCF accuracy "
             "control: layers back to float until top-1 agreement with the checkpoint drops at "
             "most --max-drop).")] = None,
    qat_epochs: Annotated[int | None, typer.Option(
        help="--quantizer pt2e-qat: epochs of distillation over the training split (default 2).")] = None,
    max_drop: Annotated[float, typer.Option(help="qac: allowed drop of top-1 agreement (absolute).")] = 0.01,
    overflow_fix: Annotated[str, typer.Option(
        help="ONNX/OpenVINO INT8: auto (enable on x86 CPUs without VNNI, whose int8 kernels "
             "saturate), enable, first_layer_only or disable.")] = "auto",
    float_first: Annotated[int | None, typer.Option(
        help="Calibrated INT8 (ONNX, OpenVINO, TFLite pt2e and aeq, ExecuTorch): the first N "
             "convolutions, with their norm and activation, stay in float (default 3; 0: "
             "full integer, a TFLite file with int8 input).")] = None,
    threads: Annotated[int | None, typer.Option(
        help="Runtime threads for verification (0 or unset: the backend's default).")] = None,
) -> None:
    """Export a checkpoint; the artifact carries its model card and is verified against the
    checkpoint on validation images right after export (non-zero exit if it drifts)."""
    from skinedge.cli.progress import console
    from skinedge.export import ExportError, ExportOptions, export_checkpoint
    from skinedge.export.base import PT2E_QAT
    from skinedge.export.records import calibrates_int8

    # Refused before anything is loaded or written to --out.
    check_count(float_first, "--float-first", 0,
                "a number of leading convolutions to keep in float (0: none)")
    check_count(qat_epochs, "--qat-epochs", 1, "a number of distillation epochs")
    if qat_epochs is not None and quantizer != PT2E_QAT:
        raise ConfigError(f"--qat-epochs applies to --quantizer {PT2E_QAT} (--target tflite or "
                          f"executorch, --precision int8): leave it out, or add --quantizer "
                          f"{PT2E_QAT}")
    options = ExportOptions(quantizer=quantizer, max_drop=max_drop, overflow_fix=overflow_fix,
                            **({} if float_first is None else {"float_first": float_first}),
                            **({} if qat_epochs is None else {"qat_epochs": qat_epochs}))
    calibrates = calibrates_int8(target, precision, quantizer)
    if float_first is not None and not calibrates_int8(target, precision, quantizer):
        raise ConfigError(f"--float-first applies to calibrated INT8 (--precision int8 with "
                          f"--target onnx, openvino, tflite, executorch, web or tensorrt; not "
                          f"--quantizer qat): leave it out for --target {target} "
                          f"--precision {precision or 'default'}"
                          + (f" --quantizer {quantizer}" if quantizer else ""))
    if calibrates and calibration_images < 1:  # a QAT checkpoint is exported uncalibrated
        from skinedge.models.card import load_card

        calibrates = calibrates_int8(target, precision, quantizer,
                                     source_precision=load_card(checkpoint).precision)
    check_count(verify_images, "--verify-images", 0,
                "a number of validation images to check the artifact on (0: no verification)")
    check_count(calibration_images, "--calibration-images", 1 if calibrates else 0,
                "a number of training images"
                + (" to calibrate INT8 on, and INT8 needs at least one" if calibrates else ""))
    check_count(threads, "--threads", 0, "a number of runtime threads (0: the backend's default)")
    try:
        result = export_checkpoint(
            checkpoint, target, precision=precision, out_dir=out, manifest=manifest,
            calibration_images=calibration_images, verify_images=verify_images,
            verify=verify_images > 0, threads=threads or None,
            options=options, log=print_log)
    except ExportError as exc:  # what was written anyway (TensorRT: the ONNX and the script)
        for path in exc.files:
            console.print(f"wrote {path}")
        raise
    v = result.verification
    if v.status == "passed":
        console.print(f"verified on {v.images} validation images: max probability difference "
                      f"{v.max_prob_diff:.2e}, top-1 flips {v.flips}/{v.images}")
    else:
        console.print(f"[yellow]not verified: {escape(v.reason)}[/]")
    console.print(f"{result.path}  ({result.report})")


@app.command("bench")
def bench(
    models: Annotated[list[Path] | None, typer.Argument(
        help="Checkpoint folders and/or exported artifacts to measure.")] = None,
    export_targets: Annotated[list[str] | None, typer.Option(
        "--export", help="Export the reference to TARGET[:PRECISION] first (repeatable, "
                         "comma-separated, or 'all').")] = None,
    reference: Annotated[Path | None, typer.Option(
        help="Checkpoint every row is compared with (default: the first checkpoint given).")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Split manifest (default: the reference's).")] = None,
    split: Annotated[str, typer.Option(help="Manifest split to measure accuracy on.")] = "test",
    data: Annotated[Path | None, typer.Option(help="A labelled folder instead of a manifest split.")] = None,
    layout: Annotated[str | None, typer.Option(help="Layout of --data; detected when omitted.")] = None,
    allow_outside_root: Annotated[bool, typer.Option(
        "--allow-outside-root", help="Accept image paths of --data that lead outside the folder (a folder you trust).")] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N test images (quick checks).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for bench.json/.md/.png, junit.xml, exports/.")] = Path("bench"),
    threads: Annotated[int | None, typer.Option(help="Threads per runtime (default 1; 0: backend default).")] = None,
    cpus: Annotated[str | None, typer.Option(help="Pin each runtime to these CPUs, e.g. 0 or 0,1.")] = None,
    profile: Annotated[str | None, typer.Option(
        help="CPU profile (threads + pinning) from the packaged bench-profiles.yaml, or FILE.yaml:NAME.")] = None,
    warmup: int = 10,
    iterations: Annotated[int, typer.Option(help="Timed runs at batch 1 per model.")] = 100,
    calibration_images: Annotated[int, typer.Option(help="INT8 calibration images for --export.")] = 300,
    float_first: Annotated[int | None, typer.Option(
        help="Calibrated INT8 --export: the first N convolutions stay in float (default 3, "
             "as skinedge export).")] = None,
    gate: Annotated[Path | None, typer.Option(help="Budgets YAML; exit 1 when one is missed.")] = None,
    device: Annotated[list[str] | None, typer.Option(
        help="Also measure every torch-free artifact on this device: ssh://USER@HOST[:PORT] (with "
             "skinedge[runtime-onnx] / [runtime-litert] installed there), adb:SERIAL, or "
             "chromium (web exports timed in headless Chromium here; latency only) "
             "(repeatable). No image is sent unless --device-images.")] = None,
    device_identity: Annotated[Path | None, typer.Option(
        help="Private key for ssh devices (ssh -i); passwords are never used.")] = None,
    device_known_hosts: Annotated[Path | None, typer.Option(
        help="known_hosts file to check ssh devices' host keys against (default: ssh's own).")] = None,
    device_python: Annotated[str | None, typer.Option(
        help="Python on the device that has skinedge (e.g. a venv's bin/python; default python3).")] = None,
    benchmark_model: Annotated[Path | None, typer.Option(
        help="TFLite's benchmark_model binary for adb devices: times .tflite files (latency only).")] = None,
    device_images: Annotated[bool, typer.Option(
        "--device-images", help="Send the preprocessed test images to the devices for accuracy "
                                "parity (default: random inputs made there, latency only).")] = False,
) -> None:
    """Latency (cold, p50/p95/p99 at batch 1), memory and size of each model, and its accuracy,
    balanced accuracy, melanoma AUC, deltas and top-1 flip rate against the reference; with
    --device, the artifacts measured on a board (ssh) or phone (adb) too, as rows of their own."""
    from skinedge.bench.device import parse_device
    from skinedge.bench.gates import check_gates, load_gates
    from skinedge.bench.harness import BenchSettings, run_bench
    from skinedge.bench.profiles import load_profile
    from skinedge.bench.report import print_table, write_outputs
    from skinedge.cli.progress import console
    from skinedge.export.records import calibrates_int8
    from skinedge.utils.provenance import command_line

    # Every option checked before anything is exported or measured.
    exports = _parse_targets(export_targets or [])
    check_count(limit, "--limit", 1, "a number of test images to measure on")
    check_count(iterations, "--iterations", 1, "a number of timed runs per model")
    check_count(warmup, "--warmup", 0, "a number of untimed runs before timing (0: none)")
    check_count(threads, "--threads", 0, "a number of threads per runtime (0: the backend's "
                "default)")
    calibrates = any(calibrates_int8(t, p, q) for t, p, q in exports)
    check_count(calibration_images, "--calibration-images", 1 if calibrates else 0,
                "a number of training images"
                + (" to calibrate the INT8 exports on, and INT8 needs at least one"
                   if calibrates else ""))
    check_count(float_first, "--float-first", 0,
                "a number of leading convolutions to keep in float (0: none)")
    if float_first is not None and not any(calibrates_int8(*spec) for spec in exports):
        raise ConfigError("--float-first applies to the calibrated INT8 exports of --export "
                          "(onnx, openvino, tflite, executorch, web or tensorrt at int8), and "
                          "none is asked for: leave it out, or add one such as --export onnx:int8")
    gates = load_gates(gate) if gate else None
    devices = [parse_device(spec, identity=device_identity, python=device_python,
                            known_hosts=device_known_hosts, benchmark_model=benchmark_model)
               for spec in device or []]
    if not devices and (device_identity or device_known_hosts or device_python or benchmark_model
                        or device_images):
        raise ConfigError("--device-identity, --device-known-hosts, --device-python, "
                          "--benchmark-model and --device-images need --device")
    settings = BenchSettings(threads=1 if threads is None else (threads or None),
                             warmup=warmup, iterations=iterations)
    if profile:
        prof = load_profile(profile)
        settings.threads, settings.cpus, settings.profile = prof["threads"], prof.get("cpus"), profile
    if cpus:
        settings.cpus = parse_int_list(cpus, "--cpus")
    result = run_bench(list(models or []), reference=reference,
                       exports=exports, manifest=manifest,
                       split=split, data=data, limit=limit, out_dir=out, settings=settings,
                       calibration_images=calibration_images, float_first=float_first,
                       log=print_log,
                       layout=layout, allow_outside_root=allow_outside_root,
                       devices=devices, device_images=device_images)
    checks = check_gates(gates, result.rows) if gates else None
    files = write_outputs(result, out, checks, command_line())
    print_table(result)
    console.print(f"reports: {', '.join(str(p) for p in files.values())}")
    unmeasured = [row for row in result.rows if row.status == "failed"]
    for row in unmeasured:  # a model asked for but not exported or not run: the job said no
        print_error(f"{row.label} could not be measured: {row.reason}")
    if checks is not None:
        failed = [c for c in checks if not c.passed]
        if failed:
            console.print(f"[bold red]gate failed[/] ({len(failed)} of {len(checks)} checks):")
            for c in failed:
                print_log(f"  {c.message}")
            raise typer.Exit(1)
        console.print(f"[green]gate passed[/] ({len(checks)} checks)")
    if unmeasured:
        raise typer.Exit(1)
