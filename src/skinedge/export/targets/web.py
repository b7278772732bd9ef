"""Web: a static page that classifies a photo on the phone, offline, with ONNX Runtime Web.

``NAME.web/`` holds ``index.html`` (file input with the rear camera, top classes with their
probabilities, the "not a diagnosis" notice), ``app.js`` (the card's preprocessing in the
browser), ``model.onnx`` (written by the ONNX target's :func:`write_onnx`, card embedded),
``model.card.json``, a service worker that caches the folder for offline use, and ONNX Runtime Web's
WebAssembly build (pinned, copied from the local cache: :mod:`skinedge.export.web.ortweb`).
Served from any static host over HTTPS (or localhost), the photo never leaves the device: the
page's Content-Security-Policy allows requests to its own origin only.

In Python the folder runs through ONNX Runtime on its ``model.onnx``
(:class:`skinedge.runtimes.web.WebFolderRuntime`):
what ``export_checkpoint`` verifies against PyTorch. The browser itself is checked by
:func:`skinedge.export.web.run_in_browser` (headless Chromium).
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from skinedge.export.base import Exported, ExportJob, register_target
from skinedge.export.targets.onnx import ONNX_REQUIRES, artifact_info, embed_card, write_onnx
from skinedge.export.web.ortweb import (
    ORT_WEB_FILES,
    ORT_WEB_LICENCE,
    ORT_WEB_PACKAGE,
    ORT_WEB_VERSION,
    ort_web_files,
    ort_web_problem,
)
from skinedge.models.card import ModelCard
from skinedge.runtimes.web import CARD, MODEL, SUFFIX

ASSETS = ("index.html", "app.js", "style.css")  # copied as they are; sw.js is filled in

README = """\
{title}

Open index.html from any static web server over HTTPS (or http://localhost); after the first
visit the page works offline (its service worker caches this folder). The photo is classified
in the browser and is never sent anywhere. Not a diagnosis: decision support for trained
clinicians only.

Model: {architecture} ({precision}), input {size} px, classes: {classes}.
Runtime: {package} {version} (WebAssembly, CPU; licence {licence}): ort.wasm.min.js,
ort-wasm-simd-threaded.mjs, ort-wasm-simd-threaded.wasm.

Preprocessing follows model.card.json ("preprocess"): resize mode {mode}, {interpolation}
resampling as Pillow does it (the same algorithm, in app.js), mean {mean}, std {std}. What may
differ from the Python runtime is decoding: the browser's JPEG decoder and its colour management
of photos with an ICC profile (Display P3 phone photos); equalisation is also approximate.
"""


def _write_page(job: ExportJob, folder: Path, card: ModelCard) -> None:
    """The page, its service worker, ONNX Runtime Web's files and a README, into ``folder``."""
    assets = resources.files("skinedge.export.web") / "assets"
    for name in ASSETS:
        (folder / name).write_bytes((assets / name).read_bytes())
    for path in ort_web_files():
        shutil.copyfile(path, folder / path.name)
    cached = ["./", *ASSETS, CARD, MODEL, *ORT_WEB_FILES]
    worker = (assets / "sw.js").read_text()
    worker = worker.replace("__CACHE__", f"skinedge-{job.stem}-{(card.integrity or '')[:12]}")
    (folder / "sw.js").write_text(worker.replace("__FILES__", json.dumps(cached)))
    pre = card.preprocess
    (folder / "README.txt").write_text(README.format(
        title=f"{card.architecture} skin-lesion classifier: web page", size=pre.input_size,
        architecture=card.architecture, precision=card.artifact.precision,
        classes=", ".join(card.classes), package=ORT_WEB_PACKAGE, version=ORT_WEB_VERSION,
        licence=ORT_WEB_LICENCE, mode=pre.resize_mode, mean=list(pre.mean), std=list(pre.std),
        interpolation=pre.interpolation))


@register_target(
    name="web", suffix=SUFFIX, extra="onnx", requires=ONNX_REQUIRES,
    precisions=("fp32", "int8"), default_precision="fp32", assets_missing=ort_web_problem,
    revision=3,  # the ONNX target's INT8: 2, per-tensor uint8 activations; 3: FLOAT_FIRST
    description="static offline web page (ONNX Runtime Web, WebAssembly) around the ONNX model")
def export_web(job: ExportJob) -> Exported:
    folder = job.workdir / f"{job.stem}{SUFFIX}"
    folder.mkdir()
    model = folder / MODEL
    details = write_onnx(job, model)
    details |= {"page": "index.html", "runtime": f"{ORT_WEB_PACKAGE} {ORT_WEB_VERSION} (wasm)",
                "runtime_files": list(ORT_WEB_FILES),
                "resize": "Pillow's resample algorithm, reimplemented in app.js"}
    card = job.card_for(artifact_info(job, "web", details))
    embed_card(model, card)
    (folder / CARD).write_text(card.to_json())
    _write_page(job, folder, card)
    return Exported(folder, [folder], card)

