"""TFLite PT2E INT8 over several calibration seeds: post-training (``pt2e``) against
quantization-aware distillation (``pt2e-qat``), each measured in the TFLite file itself (LiteRT
with XNNPACK) against the float model on the test and validation splits.

Why: on 371 test images one flip is 0.27 points, and which near-tie images flip depends on the
calibration images drawn; a single export cannot say whether a method's flip count is its own
or its draw's. Each seed draws another 300 calibration images (``skinedge export``'s count) and,
for ``pt2e-qat``, shuffles the distillation with the same seed; the logits' SQNR is the steadier
figure.

Usage:
    python scripts/pt2e_qat_seeds.py runs/ham10000-lite0/train/best --seeds 0 1 2 \
        --out bench/pt2e-qat-seeds
    python scripts/results.py --update --pt2e-seeds bench/pt2e-qat-seeds --out docs/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np


def _tflite_logits(flatbuffer: bytes, arrays) -> np.ndarray:
    from skinedge.export.targets.tflite import _interpreter

    interpreter = _interpreter(flatbuffer, threads=1)
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    out = []
    for image in arrays.x:
        interpreter.set_tensor(source["index"], image[None].transpose(0, 2, 3, 1).copy())
        interpreter.invoke()
        out.append(interpreter.get_tensor(sink["index"])[0].copy())
    return np.stack(out)


def _scores(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    flips = int((logits.argmax(1) != reference.argmax(1)).sum())
    noise = ((logits - reference) ** 2).sum()
    return {"flips": flips, "images": len(logits), "flip_rate": flips / len(logits),
            "sqnr_db": float(10 * np.log10((reference ** 2).sum() / noise)),
            "balanced_accuracy_change": float(balanced_accuracy_score(labels, logits.argmax(1))
                                              - balanced_accuracy_score(labels, reference.argmax(1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--calibration", type=int, default=300, help="training images per seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch
    from litert_torch.quantize import quant_config

    from skinedge.compress.pt2e import DistillQAT, quantize_pt2e
    from skinedge.data.arrays import manifest_arrays
    from skinedge.data.manifest import load_manifest
    from skinedge.export.api import resolve_manifest
    from skinedge.export.records import FLOAT_FIRST
    from skinedge.export.targets.tflite import _convert, nhwc_model, pt2e_quantizer
    from skinedge.models.checkpoint import load_checkpoint
    from skinedge.models.temperature import fold_temperature
    from skinedge.utils.cpu import cpu_summary
    from skinedge.utils.io import atomic_write_text, package_versions
    from skinedge.utils.provenance import now

    started = now()
    model, card = load_checkpoint(args.checkpoint)
    model = fold_temperature(model.eval().float(), card.temperature)  # as export_checkpoint does
    net = nhwc_model(model)
    manifest_path = resolve_manifest(None, card, args.checkpoint)
    manifest = load_manifest(manifest_path)
    train = manifest_arrays(manifest, "train", card.preprocess, source=f"{manifest_path}:train")
    splits = {name: manifest_arrays(manifest, name, card.preprocess,
                                    source=f"{manifest_path}:{name}") for name in ("test", "val")}
    with torch.no_grad():
        reference = {name: torch.cat([net(torch.from_numpy(a.x[i:i + 64]).permute(0, 2, 3, 1))
                                      for i in range(0, len(a), 64)]).numpy()
                     for name, a in splits.items()}
    sample = (torch.zeros(1, *splits["test"].x.shape[2:], 3),)
    rows = []
    for seed in args.seeds:
        drawn = manifest_arrays(manifest, "train", card.preprocess, limit=args.calibration,
                                seed=seed)  # as skinedge export draws them (its seed is 0)
        calib = [torch.from_numpy(x[None]).permute(0, 2, 3, 1).contiguous() for x in drawn.x]
        for method in ("pt2e", "pt2e-qat"):
            begun = time.perf_counter()
            qat = (DistillQAT(train.x, channels_last=True, seed=seed,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
                   if method == "pt2e-qat" else None)
            quantizer = pt2e_quantizer(FLOAT_FIRST)
            graph, _ = quantize_pt2e(net, sample, quantizer, calib, fold_quantize=False,
                                     qat=qat, diagnose=0)
            flatbuffer = bytes(_convert(graph, sample, quant_config=quant_config.QuantConfig(
                pt2e_quantizer=quantizer)).model_content())
            row = {"seed": seed, "method": method, "seconds": round(time.perf_counter() - begun),
                   **{name: _scores(_tflite_logits(flatbuffer, a), reference[name], a.labels)
                      for name, a in splits.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {"command": shlex.join(["python", *sys.argv]), "started": started, "finished": now(),
           "checkpoint": str(args.checkpoint), "manifest": str(manifest_path),
           "calibration_images": args.calibration, "training_images": len(train),
           "float_first": FLOAT_FIRST, "machine": cpu_summary(),
           "versions": package_versions(("torch", "torchao", "litert-torch", "ai-edge-litert")),
           "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "pt2e-seeds.json", json.dumps(doc, indent=2))
    print(f"wrote {args.out / 'pt2e-seeds.json'}")


if __name__ == "__main__":
    main()
