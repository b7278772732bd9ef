"""``skinedge compress``: distil many models into one, quantize one into INT8, compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from skinedge.cli.common import (
    ConfigOpt,
    SetOpt,
    check_count,
    load_run_config,
    parse_int_list,
    print_log,
)
from skinedge.errors import ConfigError

app = typer.Typer(help="Distillation into one student, INT8 quantization, and the report that "
                       "compares them.", no_args_is_help=True)


@app.command("distill")
def distill(
    out: Annotated[Path, typer.Option(help="Run folder of the student: config.yaml, last/, best/.")],
    teacher: Annotated[Path | None, typer.Option(
        help="Teacher checkpoint: an ensemble or one model (same as --set distill.teacher=...).")] = None,
    config: ConfigOpt = None,
    manifest: Annotated[Path | None, typer.Option(
        help="Split manifest the teacher was trained on (same as --set data.manifest=...).")] = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out after a stop.")] = False,
) -> None:
    """Distil a teacher (ensemble) into one student: KL to the teacher's softened probabilities
    plus the label loss. Teacher logits are computed once and cached."""
    from skinedge.cli.progress import RichTrainCallbacks, StageProgress, console, make_progress
    from skinedge.compress.distill import DistillConfig, distill_classifier
    from skinedge.utils.provenance import now, record_command

    started = now()
    try:
        cfg = load_run_config(out, config, overrides, resume,
                              {"distill.teacher": teacher, "data.manifest": manifest},
                              config_class=DistillConfig)
    except ConfigError as exc:
        if teacher is None and _names_field(exc, ("distill", "teacher")):
            raise ConfigError(f"{exc}\nname the teacher with --teacher") from exc
        raise
    with make_progress() as progress:
        result = distill_classifier(cfg, out, resume=resume,
                                    callbacks=RichTrainCallbacks(progress),
                                    progress=StageProgress(progress))
    record_command(out, started=started, finished=now())
    note = " (stopped early)" if result.stopped_early else ""
    console.print(f"best epoch {result.best_epoch}: val {cfg.monitor} "
                  f"{result.best_metric:.4f}{note}\nstudent checkpoint: {result.best_dir}")


@app.command("report")
def report(
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint (ensemble): the reference.")],
    student: Annotated[Path, typer.Option(help="The distilled student's FP32 checkpoint.")],
    int8: Annotated[list[Path], typer.Option(help="INT8 artifact(s) of the student (repeatable).")],
    out: Annotated[Path, typer.Option(help="Folder for compression.json/.md and bench outputs.")],
    fp32: Annotated[list[Path] | None, typer.Option(
        help="FP32 artifact(s) of the student in the INT8 runtimes, for like-for-like speed.")] = None,
    best_single: Annotated[Path | None, typer.Option(
        help="Single-model row; default: the member with the best validation balanced accuracy.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Split manifest; default: the teacher's.")] = None,
    split: Annotated[str, typer.Option(help="Split to measure on.")] = "test",
    threads: Annotated[str, typer.Option(help="Thread counts, comma-separated, all in this run.")] = "1,2",
    warmup: int = 10,
    iterations: int = 100,
) -> None:
    """Teacher ensemble, best single teacher, student FP32 and INT8 side by side: parameters,
    MACs, size, balanced accuracy, melanoma AUC, per-class recall, ECE, agreement with the
    teacher, and latency at each thread count, measured in one run."""
    from skinedge.cli.progress import console
    from skinedge.pipelines.compression_report import build_compression_report
    from skinedge.utils.provenance import now, record_command

    started = now()
    counts = parse_int_list(threads, "--threads")
    result = build_compression_report(
        teacher, student, int8, fp32=fp32 or [], best_single=best_single, manifest=manifest,
        split=split, threads=counts, warmup=warmup, iterations=iterations, out_dir=out,
        log=lambda m: print_log(m, style="dim"))
    record_command(out, started=started, finished=now())
    console.print(result.files["markdown"].read_text(), markup=False)
    missed = [c for c in result.checks if not c["ok"]]
    console.print(f"{len(result.checks) - len(missed)} of {len(result.checks)} targets met; "
                  f"report: {result.files['markdown']}")


@app.command("quantize")
def quantize(
    checkpoint: Annotated[Path, typer.Argument(help="FP32 checkpoint folder (e.g. the student's best/).")],
    out: Annotated[Path, typer.Option(help="Folder for the INT8 artifacts (and qat/ for QAT).")],
    mode: Annotated[str, typer.Option(
        help="ptq (post-training), qac (accuracy-controlled PTQ), qat (quantization-aware "
             "fine-tuning), or auto (ptq, then qat if PTQ misses its bound).")] = "auto",
    target: Annotated[list[str] | None, typer.Option(
        help="Export target(s) taking NNCF INT8: openvino (default), onnx.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Split manifest; default: the checkpoint's.")] = None,
    calibration_images: Annotated[int, typer.Option(help="Calibration images from the training split.")] = 300,
    max_drop: Annotated[float, typer.Option(help="qac: allowed drop of top-1 agreement.")] = 0.01,
    overflow_fix: Annotated[str, typer.Option(
        help="auto (enable on x86 CPUs without VNNI), enable, first_layer_only, disable.")] = "auto",
    teacher: Annotated[Path | None, typer.Option(
        help="qat: distil from this teacher while fine-tuning (default: the student's own).")] = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="qat: continue an interrupted fine-tune.")] = False,
    threads: Annotated[int | None, typer.Option(help="Runtime threads for verification.")] = None,
) -> None:
    """INT8 with NNCF, verified against the source right after export; QAT when PTQ misses.
    --set overrides apply to the QAT fine-tune (e.g. --set epochs=2)."""
    from skinedge.cli.progress import RichTrainCallbacks, console, make_progress
    from skinedge.pipelines.quantize import quantize_checkpoint
    from skinedge.utils.provenance import now, record_command

    check_count(calibration_images, "--calibration-images", 1,
                "a number of training images to calibrate INT8 on, and INT8 needs at least one")
    check_count(threads, "--threads", 1, "a number of runtime threads for verification "
                "(leave it out for the backend's default)")
    started = now()
    with make_progress() as progress:
        outcome = quantize_checkpoint(
            checkpoint, out, mode=mode, targets=target or ["openvino"], manifest=manifest,
            calibration_images=calibration_images, max_drop=max_drop,
            overflow_fix=overflow_fix, teacher=teacher, qat_overrides=list(overrides or []),
            resume=resume, threads=threads, callbacks=RichTrainCallbacks(progress),
            log=lambda m: print_log(m, style="dim"))
    record_command(out, started=started, finished=now(), mode=outcome.mode,
                   artifacts=[str(r.path) for r in outcome.artifacts], failed=outcome.failed,
                   against_fp32=outcome.against_fp32)
    for result in outcome.artifacts:
        check = result.verification
        console.print(f"{result.path}: {outcome.mode}, verification {check.status}"
                      + (f" (flips {check.flip_rate:.1%})" if check.flip_rate is not None else ""))
    for failure in outcome.failed:
        print_log(failure, style="red")
    if outcome.failed or not outcome.artifacts:
        raise typer.Exit(1)


def _names_field(error: ConfigError, loc: tuple[str, ...]) -> bool:
    """Whether a config error was caused by the field at ``loc`` (e.g. a missing teacher)."""
    cause = error.__cause__
    return isinstance(cause, ValidationError) and any(
        tuple(e["loc"][:len(loc)]) == loc for e in cause.errors())
