"""Federated vs centralised vs each site alone, on one lesion-grouped HAM10000 test split.

    python scripts/federated_experiment.py [--data ../shared/data] [--work runs/federated]
        [--rounds 4] [--max-images 300] [--input-size 96] [--out docs/RESULTS.md]

Sites (:mod:`skinedge.federated.experiment_sites`): HAM10000 split by lesion into two clinics
with different case mixes, the ISIC 2019 sample, the ISIC 2020 sample (mel / partial "benign").
Arms, every one trained with the same model, input size, frozen stages, optimizer and number of
passes (rounds x 1 local epoch): FedAvg, FedProx, FedAvg with site-level DP (client-side
clipping at the median update norm FedAvg's sites sent, noise multiplier 1), centralised (all
sites' train rows pooled), and each site alone. Every model is scored on the same HAM10000 test
lesions that no site holds: balanced accuracy and melanoma AUC with 95% bootstrap intervals.
Each arm's result is kept in WORK/<arm>.json, so a killed run continues where it stopped (a
federated arm continues after its last finished round). Writes the ``federated`` section of
docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from results import replace_section  # scripts/ is on sys.path when run as a script

SECTION = "federated"


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    from skinedge.utils.io import package_versions

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    found = package_versions(extra=("flwr", "ray"))
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "python": found["python"],
            "versions": {name: found[name] for name in ("flwr", "ray", "torch", "timm")}}


def base_config(args, sites):
    from skinedge.federated.config import FederatedConfig

    return FederatedConfig.model_validate({
        "sites": [s.model_dump() for s in sites], "rounds": args.rounds, "local_epochs": 1,
        "model": {"arch": "tf_efficientnet_lite0", "pretrained": "imagenet",
                  "freeze_stages": args.freeze_stages, "drop_rate": 0.2},
        "preprocess": {"input_size": args.input_size},
        "optim": {"optimizer": "adamw", "lr": args.lr, "scheduler": "none"},
        "batch_size": 32, "eval_batch_size": 64, "threads": 1, "seed": 0})


def score(model, test_manifest: Path, cfg) -> dict:
    """Balanced accuracy and melanoma AUC on the test split, with bootstrap intervals."""
    import torch

    from skinedge.data import LesionDataset, build_eval_transform, load_manifest
    from skinedge.evaluate.metrics import bootstrap_intervals, compute_metrics
    from skinedge.train.loop import validate

    torch.set_num_threads(2)
    manifest = load_manifest(test_manifest)
    dataset = LesionDataset.from_manifest(manifest, "test", build_eval_transform(cfg.preprocess))
    result = validate(model, dataset, device="cpu", batch_size=64)
    codes = list(manifest.vocabulary.codes)
    metrics = compute_metrics(result.targets, result.probs, codes)
    ci = bootstrap_intervals(result.targets, result.probs, codes, n_boot=1000)
    return {"n": int(len(result.targets)), "balanced_accuracy": metrics["balanced_accuracy"],
            "balanced_accuracy_ci": ci["balanced_accuracy"],
            "melanoma_auc": metrics["melanoma_auc"], "melanoma_auc_ci": ci["melanoma_auc"]}


def run_federated(name: str, cfg, work: Path, test: Path) -> dict:
    from skinedge.federated import simulate_federation
    from skinedge.models import load_checkpoint

    out = work / name
    started = time.perf_counter()
    resume = (out / "federation.json").exists()
    summary = simulate_federation(cfg, out, resume=resume, parallel=2, progress=lambda r: log(
        f"{name}: round {r['round']} done in {r['seconds']} s, sent up {r.get('upload_bytes')} B"))
    model, _ = load_checkpoint(out / "checkpoint")
    return {"arm": name, "kind": "federated", "rounds": summary["rounds"],
            "bytes_per_round": summary["bytes_per_round"], "epsilon": summary["epsilon"],
            "dp": summary["dp"], "wall_seconds": round(time.perf_counter() - started, 1),
            "train_seconds": summary["seconds_all_rounds"], **score(model, test, cfg)}


def run_local(name: str, cfg, site_datas, test: Path) -> dict:
    """Train one model on ``site_datas`` pooled, rounds x local_epochs passes, no federation."""
    from skinedge.federated import task
    from skinedge.federated.sites import SiteData, SiteRows

    def absolute(rows: SiteRows, root: Path) -> SiteRows:
        return SiteRows([str(root / i) for i in rows.images], rows.targets, rows.groups)

    merged = SiteData(name, Path("/"), "mixed",
                      SiteRows(*[sum((getattr(absolute(s.train, s.root), f) for s in site_datas),
                                     []) for f in ("images", "targets", "groups")]),
                      SiteRows(*[sum((getattr(absolute(s.val, s.root), f) for s in site_datas),
                                     []) for f in ("images", "targets", "groups")]))
    local_cfg = cfg.model_copy(update={"threads": 2})
    started = time.perf_counter()
    model, _ = task.build_model(local_cfg)
    for rnd in range(1, cfg.rounds + 1):
        result = task.train_local(model, merged, local_cfg, server_round=rnd)
        log(f"{name}: pass {rnd}/{cfg.rounds}, loss {result.loss:.3f}")
    model.eval()
    pooled = sum(Path(p).stat().st_size for p in merged.train.images)
    return {"arm": name, "kind": "centralised" if len(site_datas) > 1 else "site alone",
            "rounds": cfg.rounds, "train_images": len(merged.train.images),
            "pooled_image_bytes": pooled if len(site_datas) > 1 else None,
            "wall_seconds": round(time.perf_counter() - started, 1),
            **score(model, test, cfg)}


def cached(work: Path, name: str, fn) -> dict:
    path = work / f"{name}.json"
    if path.is_file():
        log(f"{name}: done earlier ({path})")
        return json.loads(path.read_text())
    log(f"{name}: starting")
    result = fn()
    path.write_text(json.dumps(result, indent=1))
    log(f"{name}: balanced accuracy {result['balanced_accuracy']:.3f}, melanoma AUC "
        f"{result['melanoma_auc']}, {result['wall_seconds']} s")
    return result


def median_update_norm(run: Path) -> float:
    norms = [n for line in (run / "rounds.jsonl").read_text().splitlines() if line.strip()
             for n in json.loads(line).get("update_norms", [])]
    return float(np.median(norms))


def _ci(value, interval) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def _mb(value) -> str:
    return "n/a" if value is None else f"{value / 1e6:.2f}"


def render(doc: dict) -> list[str]:
    s, m = doc["settings"], doc["machine"]
    lines = [
        f"- command: `{doc['command']}`, finished {doc['finished']}, total wall "
        f"{doc['wall_seconds'] / 60:.1f} min",
        f"- machine: {m['cpu']}, {m['cores']} logical cores, shared with other work (load "
        f"average at start {m['load_average'][0]:.1f}); python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- model: tf_efficientnet_lite0, ImageNet weights, stem + first {s['freeze_stages']} "
        f"stages frozen, {s['input_size']} px, AdamW lr {s['lr']}, batch 32; every arm makes "
        f"{s['rounds']} passes (rounds x 1 local epoch); at most {s['max_images']} train images "
        "per site (whole lesions, every class kept); CPU only, 2 sites trained at a time",
        "- sites (train rows used after the cap / val rows; rows left out as duplicates of a "
        "test or earlier image; rows excluded by the label mapping): "
        + "; ".join(f"{k} {v['train_used']} / {v['val']} ({v['left_out_duplicates']}; "
                    f"{v['excluded'] or 0})" for k, v in doc["sites"].items() if k != "test"),
        "- a federated round is one local epoch on every site (its capped train rows, batch 32);"
        " a centralised pass is one epoch over all sites' rows pooled; a site alone makes the "
        "same passes over its own rows",
        f"- test: {doc['sites']['test']['rows']} HAM10000 images of "
        f"{doc['sites']['test']['lesions']} lesions that no site holds (lesion-grouped split, "
        "seed 0); 95% bootstrap intervals over 1000 resamples",
        f"- DP arm: site-level client-side clipping at {doc['dp']['clipping_norm']:.3g} (the "
        f"median L2 norm of the FedAvg sites' updates), noise multiplier "
        f"{doc['dp']['noise_multiplier']}, epsilon {doc['dp']['epsilon']:.2f} at delta "
        f"{doc['dp']['delta']:g} after {doc['dp']['rounds']} rounds (RDP, no sampling "
        "amplification); BatchNorm statistics frozen, only trainable parameters exchanged",
        "",
        "| arm | kind | rounds / passes | balanced accuracy [95% CI] | melanoma AUC [95% CI] | "
        "MB up / down per round | wall s | epsilon |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["arms"]:
        bpr = r.get("bytes_per_round") or {}
        moved = (f"{_mb(bpr.get('upload'))} / {_mb(bpr.get('download'))}" if bpr else
                 (f"{_mb(r['pooled_image_bytes'])} of images, once" if r.get("pooled_image_bytes")
                  else "0 (stays on site)"))
        eps = f"{r['epsilon']:.2f}" if r.get("epsilon") is not None else "none"
        lines.append(f"| {r['arm']} | {r['kind']} | {r['rounds']} | "
                     f"{_ci(r['balanced_accuracy'], r['balanced_accuracy_ci'])} | "
                     f"{_ci(r['melanoma_auc'], r['melanoma_auc_ci'])} | {moved} | "
                     f"{r['wall_seconds']:.0f} | {eps} |")
    lines += ["", "Bytes are the raw parameter arrays the sites received and sent, not what "
              "crosses the wire: Flower moves each array as its own request (push-object up, "
              "pull-object down) with about 1 kB of headers, so every exchanged array adds about "
              "1 kB per site each way per round (`tests/federated/test_deploy.py` measures the "
              "wire). Centralised training would instead move the images themselves."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("runs/federated"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-images", type=int, default=300)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--freeze-stages", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    args = parser.parse_args(argv)
    from skinedge.federated import experiment_sites
    from skinedge.federated.sites import load_site

    data = args.data or Path(os.environ.get("SKINEDGE_DATA", "../shared/data"))
    args.work.mkdir(parents=True, exist_ok=True)
    me = shlex.join(["python", "scripts/federated_experiment.py",
                     *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    doc = {"command": me, "machine": machine(), "settings": {
        "rounds": args.rounds, "max_images": args.max_images, "input_size": args.input_size,
        "freeze_stages": args.freeze_stages, "lr": args.lr}}
    sites, test, doc["sites"] = experiment_sites(data, args.work / "sites",
                                                 max_images=args.max_images)
    cfg = base_config(args, sites)
    arms = [cached(args.work, "fedavg", lambda: run_federated("fedavg", cfg, args.work, test))]
    prox = cfg.model_copy(update={"strategy": "fedprox", "proximal_mu": 0.1})
    arms.append(cached(args.work, "fedprox", lambda: run_federated("fedprox", prox, args.work,
                                                                    test)))
    clip = median_update_norm(args.work / "fedavg")
    dp_cfg = cfg.model_copy(update={"dp": cfg.dp.model_copy(update={
        "enabled": True, "clipping_norm": clip, "noise_multiplier": 1.0})})
    arms.append(cached(args.work, "fedavg-dp", lambda: run_federated("fedavg-dp", dp_cfg,
                                                                      args.work, test)))
    doc["dp"] = {**arms[-1]["dp"]}
    site_datas = [load_site(s, cfg) for s in sites]
    for spec, site in zip(sites, site_datas):
        doc["sites"][spec.name].update({"train_used": len(site.train.images),
                                        "capped": site.capped,
                                        "excluded": sum(site.excluded.values())})
    arms.append(cached(args.work, "centralised", lambda: run_local("centralised", cfg,
                                                                   site_datas, test)))
    for spec, site in zip(sites, site_datas):
        arms.append(cached(args.work, f"alone-{spec.name}",
                           lambda s=site, n=spec.name: run_local(f"alone-{n}", cfg, [s], test)))
    doc["arms"] = arms
    doc["wall_seconds"] = time.perf_counter() - started
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    (args.work / "federated-experiment.json").write_text(json.dumps(doc, indent=1, default=str))
    lines = render(doc)
    print("\n".join(lines))
    text = args.out.read_text() if args.out.is_file() else "# Measured results\n"
    args.out.write_text(replace_section(text, SECTION, [
        f"Section generated by `{me}` on {doc['finished']}; do not edit by hand.", "",
        *lines]))
    log(f"wrote the {SECTION} section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
