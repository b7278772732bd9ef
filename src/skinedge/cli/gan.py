"""``skinedge gan``: train a GAN, sample candidates, select the ones worth training on."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from skinedge.cli.common import ConfigOpt, SetOpt, load_run_config
from skinedge.errors import ConfigError

app = typer.Typer(help="Synthetic lesions for rare classes: train a class-conditional GAN, "
                       "sample candidates, select realistic, diverse, non-copied ones.",
                  no_args_is_help=True)


@app.command("train")
def gan_train(
    out: Annotated[Path, typer.Option(help="Run folder: config.yaml, last.pt, metrics.jsonl, grids/.")],
    config: ConfigOpt = None,
    manifest: Annotated[Path | None, typer.Option(
        help="Split manifest; only its train split is read (same as --set data.manifest=...).")] = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out after a stop.")] = False,
    init_from: Annotated[Path | None, typer.Option(
        metavar="RUN", help="Fine-tune a GAN run: start from its weights (same model settings "
                            "and classes), with fresh optimizers and kimg from zero.")] = None,
) -> None:
    """Train a StyleGAN2-style (or DCGAN) class-conditional GAN with DiffAugment, R1 and a
    generator EMA, against its own discriminator or a projected one (model.discriminator=
    projected: frozen EfficientNet-Lite features), writing a checkpoint and a sample grid per
    class every snapshot; with --init-from, fine-tune another run (e.g. on a manifest extended
    with new images)."""
    from skinedge.cli.progress import console, make_progress
    from skinedge.synth.gan import GANConfig, train_gan
    from skinedge.utils.provenance import now, record_command

    started = now()
    cfg = load_run_config(out, config, overrides, resume, {"data.manifest": manifest},
                          config_class=GANConfig)
    with make_progress() as progress:
        results = train_gan(cfg, out, resume=resume, callbacks=_RichGANCallbacks(progress),
                            init_from=init_from)
    record_command(out, started=started, finished=now())
    for r in results:
        why = (" (time limit reached: --resume --set time_limit_minutes=... with a larger "
               "budget continues)" if r.stopped_by_time else "")
        console.print(f"{r.out_dir}: {r.kimg:.1f} kimg{why}")


@app.command("sample")
def gan_sample(
    run: Annotated[Path, typer.Argument(help="GAN run folder from `skinedge gan train`.")],
    out: Annotated[Path, typer.Option(help="Candidates folder: images/, candidates.csv, sample.json.")],
    count: Annotated[list[str], typer.Option(
        help="CLASS=N candidates to generate, e.g. --count df=300 (repeatable).")],
    seed: Annotated[int, typer.Option(help="Base seed; each image's seed is in candidates.csv.")] = 0,
    truncation: Annotated[float, typer.Option(help="Truncation psi (1 = none).")] = 1.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
) -> None:
    """Generate seeded candidate images per class, each scored by the discriminator."""
    from skinedge.cli.progress import StageProgress, console, make_progress
    from skinedge.synth.gan import sample_candidates
    from skinedge.utils.device import resolve_device
    from skinedge.utils.provenance import now, record_command

    started = now()
    counts = parse_counts(count)
    device = str(resolve_device(device, option="--device"))
    with make_progress() as progress:
        path = sample_candidates(run, counts, out, seed=seed, truncation_psi=truncation,
                                 device=device, progress=StageProgress(progress))
    record_command(out, started=started, finished=now())
    console.print(f"{sum(counts.values())} candidates: {path}")


def parse_counts(items: list[str]) -> dict[str, int]:
    """``["df=300", "vasc=200"]`` -> ``{"df": 300, "vasc": 200}``.

    Raises:
        ConfigError: an item that is not ``CLASS=N`` with N >= 0.
    """
    counts = {}
    for item in items:
        code, _, number = item.partition("=")
        if not code or not number.isdigit():
            raise ConfigError(f"--count {item!r}: write CLASS=N, e.g. --count df=300")
        counts[code.strip()] = int(number)
    return counts


class _RichGANCallbacks:
    """A bar in kimg with live losses; a line per snapshot in logs."""

    def __init__(self, progress):
        self.progress = progress
        self.task = None
        self.loading = None

    def on_start(self, info: dict[str, Any]) -> None:
        from skinedge.cli.progress import console

        console.print(f"[bold]{info['arch']}[/] {info['resolution']} px on {info['images']} "
                      f"images of {info['classes']}, {info['device']}: "
                      f"{info['kimg']:.1f}/{info['total_kimg']} kimg -> {info['out']}")
        self.task = self.progress.add_task("kimg", total=info["total_kimg"],
                                           completed=info["kimg"], status="")

    def on_loading(self, done: int, total: int) -> None:
        if self.loading is None:
            self.loading = self.progress.add_task("loading images", total=total, status="")
        self.progress.update(self.loading, completed=done)

    def on_tick(self, kimg: float, total_kimg: float, record: dict[str, float]) -> None:
        status = " ".join(f"{k} {v:.3f}" for k, v in record.items())
        self.progress.update(self.task, completed=kimg, status=status)

    def on_snapshot(self, kimg: float, grid: Path) -> None:
        if not self.progress.console.is_terminal:
            self.progress.console.print(f"snapshot at {kimg:.1f} kimg: {grid}")


class SelectionMode(StrEnum):
    select = "select"
    none = "none"


@app.command("select")
def gan_select(
    candidates: Annotated[Path, typer.Argument(help="Candidates folder from `skinedge gan sample`.")],
    out: Annotated[Path, typer.Option(help="New synthetic set: images/, synthetic.json, ledger.csv.")],
    manifest: Annotated[Path, typer.Option(help="The split the GAN learned from.")],
    classifier: Annotated[Path, typer.Option(
        help="Checkpoint trained on this split's real images: features and class confidence.")],
    mode: Annotated[SelectionMode, typer.Option(
        help="select (realism, diversity and privacy filters) or none (first N by seed).")
    ] = SelectionMode.select,
    overrides: SetOpt = None,
) -> None:
    """Keep realistic, diverse candidates that are not near-copies of real training images, up
    to the target class balance; every candidate gets a ledger row saying why."""
    from skinedge.cli.progress import StageProgress, console, make_progress
    from skinedge.data import load_manifest
    from skinedge.synth.candidates import select_synthetic
    from skinedge.synth.selection import SelectionConfig
    from skinedge.utils.config import load_config
    from skinedge.utils.provenance import now, record_command

    started = now()
    cfg = load_config(None, list(overrides or []), SelectionConfig, kind="selection config (--set)")
    with make_progress() as progress:
        synthetic = select_synthetic(candidates, load_manifest(manifest), out,
                                     classifier=classifier, cfg=cfg, mode=mode.value,
                                     progress=StageProgress(progress))
    record_command(out, started=started, finished=now())
    for code, row in synthetic.source["summary"].items():
        console.print(f"{code}: kept {row['kept']} of {row['candidates']} "
                      f"(near-copy {row['near-copy']}, discriminator {row['discriminator']}, "
                      f"classifier {row['classifier']}, duplicate {row['duplicate']}, "
                      f"quota {row['quota']})")
    console.print(f"synthetic set: {out / 'synthetic.json'}; ledger: {out / 'ledger.csv'}")


@app.command("quality")
def gan_quality(
    run: Annotated[Path, typer.Argument(help="GAN run folder.")],
    manifest: Annotated[Path, typer.Option(help="The split the GAN learned from.")],
    out: Annotated[Path, typer.Option(help="Folder for quality.json and quality.md.")],
    per_class: Annotated[int, typer.Option(help="Generated images per class.")] = 500,
    features: Annotated[str, typer.Option(
        help="imagenet (packaged EfficientNet-Lite0 weights) or a classifier checkpoint.")] = "imagenet",
    seed: Annotated[int, typer.Option(help="Base seed of the generated images.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
) -> None:
    """Per-class FID, KID, precision and recall against the real train images, on features of
    an offline network (named in the report; not Inception)."""
    from skinedge.cli.progress import StageProgress, console, make_progress
    from skinedge.data import load_manifest
    from skinedge.synth.gan.quality import evaluate_gan
    from skinedge.utils.device import resolve_device
    from skinedge.utils.provenance import now, record_command

    started = now()
    device = str(resolve_device(device, option="--device"))
    with make_progress() as progress:
        evaluate_gan(run, load_manifest(manifest), out, per_class=per_class,
                     features=features, seed=seed, device=device,
                     progress=StageProgress(progress))
    record_command(out, started=started, finished=now())
    console.print((out / "quality.md").read_text())
