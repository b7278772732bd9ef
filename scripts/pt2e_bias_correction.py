"""PT2E INT8 with and without NNCF's bias correction, for the two PT2E quantizers skinedge
exports with (ExecuTorch's XNNPACKQuantizer, litert-torch's for TFLite): top-1 flips against
the float model and the logits' SQNR, on validation images, in the quantized PyTorch graph
(the Q/DQ graph both exporters lower; the lowered kernels round a little differently).

Usage:
    python scripts/pt2e_bias_correction.py runs/ham10000-lite0/train/best [--images 366]

Calibration is the exporters': their quantizers, 300 training images (``skinedge export``'s
default) and the model card's preprocessing; the first ``FLOAT_FIRST`` convolutions and the
classifier stay float, as ``skinedge export`` leaves them.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=366, help="validation images compared")
    parser.add_argument("--calibration", type=int, default=300, help="training images")
    args = parser.parse_args()

    from skinedge.compress.pt2e import BIAS_CORRECTION, quantize_pt2e
    from skinedge.data.arrays import manifest_arrays
    from skinedge.data.manifest import load_manifest
    from skinedge.export.api import resolve_manifest
    from skinedge.export.records import FLOAT_FIRST
    from skinedge.export.targets import executorch, tflite
    from skinedge.models.checkpoint import load_checkpoint
    from skinedge.utils.cpu import cpu_summary

    torch.manual_seed(0)
    model, card = load_checkpoint(args.checkpoint)
    model = model.eval().float()
    manifest = load_manifest(resolve_manifest(None, card, args.checkpoint))
    train = manifest_arrays(manifest, "train", card.preprocess, limit=args.calibration,
                            source="train")
    val = manifest_arrays(manifest, "val", card.preprocess, limit=args.images, seed=1,
                          source="val")
    print(f"{args.checkpoint}: {len(train)} calibration, {len(val)} validation images; "
          f"float_first {FLOAT_FIRST}; torch {torch.__version__}; {cpu_summary()}; "
          f"{platform.python_version()}")
    print("| route | bias correction | top-1 flips | logits SQNR (dB) | seconds |")
    print("|---|---|---:|---:|---:|")
    for route in ("executorch", "tflite"):
        net, layout, quantizer = model, (lambda x: x), executorch.int8_quantizer
        if route == "tflite":  # the NHWC model the TFLite exporter quantizes
            net, quantizer = tflite.nhwc_model(model), tflite.pt2e_quantizer
            layout = lambda x: x.permute(0, 2, 3, 1).contiguous()  # noqa: E731
        calib = [layout(torch.from_numpy(x[None])) for x in train.x]
        inputs = [layout(torch.from_numpy(x[None])) for x in val.x]
        with torch.no_grad():
            reference = torch.cat([net(x) for x in inputs])
        for corrected in (False, True):
            started = time.perf_counter()
            graph, _ = quantize_pt2e(net, (inputs[0],), quantizer(FLOAT_FIRST), calib,
                                     fold_quantize=False, bias_correction=corrected, diagnose=0)
            with torch.no_grad():
                out = torch.cat([graph(x) for x in inputs])
            flips = int((out.argmax(1) != reference.argmax(1)).sum())
            sqnr = 10 * torch.log10(reference.pow(2).sum() / (out - reference).pow(2).sum())
            print(f"| {route} | {graph.meta[BIAS_CORRECTION]} | {flips}/{len(inputs)} "
                  f"({100 * flips / len(inputs):.1f}%) | {float(sqnr):.1f} | "
                  f"{time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
