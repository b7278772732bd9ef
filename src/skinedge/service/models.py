"""The model behind the service: an exported artifact through ``load_runtime`` (any format),
and optionally the checkpoint it came from for Grad-CAM. Loaded once, in the app's lifespan."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path

from PIL import Image

from skinedge.errors import ConfigError, ModelError
from skinedge.runtimes import load_runtime
from skinedge.service.settings import MALIGNANT_CODES, ServeSettings
from skinedge.service.store import Prediction


class ServedModel:
    """One loaded artifact; :meth:`predict` and :meth:`overlay` are safe from many threads
    (backends such as the TFLite interpreter are not, so each runs under its own lock)."""

    def __init__(self, settings: ServeSettings, *, version: str | None = None,
                 deployment: str | None = None):
        """Load ``settings.model`` (and ``settings.explain``); ``version`` and
        ``deployment`` name the registry version it is (see :mod:`skinedge.service.reload`)."""
        if settings.model is None:
            raise ConfigError("no model to serve: give --model ARTIFACT (or `model:` in the "
                              "config, or SKINEDGE_MODEL), or --registry REG --deployment NAME")
        self.settings = settings
        self.version = version
        self.deployment = deployment
        self.runtime = load_runtime(settings.model, threads=inference_threads(settings))
        self.runtime.check_lesion_check()  # at start, not as a 5xx on every upload
        self.card = self.runtime.card
        # The card's seal covers every field that decides predictions: it names the model.
        self.card_sha256 = self.card.integrity or hashlib.sha256(
            self.card.model_dump_json().encode()).hexdigest()
        self.classes = list(self.card.classes)
        self._lock = threading.Lock()
        self.explainer = None
        if settings.explain is not None:
            self.explainer = _explainer_for(settings.explain, self.card)

    @property
    def label(self) -> str:
        return self.runtime.label

    def predict(self, image: Image.Image) -> Prediction:
        x = self.runtime.preprocess([image])
        with self._lock:
            start = time.perf_counter()  # inference alone, not the wait for the lock
            assessment = self.runtime.assess_array(x)
            latency_ms = (time.perf_counter() - start) * 1000
        probabilities = [float(p) for p in assessment.probabilities[0]]
        score = None if assessment.ood_scores is None else float(assessment.ood_scores[0])
        top = self.classes[max(range(len(probabilities)), key=probabilities.__getitem__)]
        malignant_p = sum(p for c, p in zip(self.classes, probabilities) if c in MALIGNANT_CODES)
        return Prediction(
            classes=self.classes, probabilities=probabilities, prediction=top,
            # a picture the lesion check refuses gets no diagnosis, malignant or not
            malignant=bool(assessment.lesion[0]) and (
                top in MALIGNANT_CODES or malignant_p >= self.settings.malignant_threshold),
            malignant_probability=malignant_p, model_label=self.label,
            model_architecture=self.card.architecture, card_sha256=self.card_sha256,
            latency_ms=latency_ms, lesion=bool(assessment.lesion[0]), ood_score=score)

    def overlay(self, image: bytes, target_class: str | None = None) -> bytes:
        """The Grad-CAM overlay (PNG) of a stored image (JPEG or PNG bytes)."""
        with Image.open(io.BytesIO(image)) as im:
            image = im.convert("RGB")
        return self.explainer.overlay_png(image, target_class)

    def class_name(self, code: str) -> str:
        name = self.card.class_names.get(code, code)
        return name[:1].upper() + name[1:]

    def describe(self) -> dict:
        return {
            "name": Path(self.settings.model).name,
            "architecture": self.card.architecture,
            "label": self.label,
            "classes": [{"code": c, "name": self.class_name(c), "malignant": c in MALIGNANT_CODES}
                        for c in self.classes],
            "card_sha256": self.card_sha256,
            "created": self.card.created,
            "intended_use": self.card.intended_use,
            "explain": self.explainer is not None,
            "input_size": self.card.preprocess.input_size,
            "resize_mode": self.card.preprocess.resize_mode,
            "malignant_threshold": self.settings.malignant_threshold,
            "temperature": self.card.temperature,
            "lesion_check": self.card.ood is not None,
            "registry_version": self.version,
            "deployment": self.deployment,
        }


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def inference_threads(settings: ServeSettings) -> int:
    """``settings.threads``, or half the usable cores shared among the workers: a runtime
    given every core (its default) keeps them spinning between inferences, starving the
    threads that serve the other requests (``scripts/service_bench.py --threads N`` measures
    the server's CPU per case for any choice)."""
    return settings.threads or max(1, usable_cores() // 2 // settings.workers)


def _explainer_for(checkpoint: Path, card) -> object:
    """An Explainer over ``checkpoint``, refused unless its weights are the artifact's source:
    a heatmap from another model would explain an answer the clinician was not given."""
    from skinedge.explain import Explainer

    explainer = Explainer(checkpoint)
    source = card.artifact.source_weights_sha256 if card.artifact else card.weights_sha256
    own = explainer.card.weights_sha256
    if source and own and source != own:
        raise ModelError(
            f"{checkpoint}: its weights (sha256 {own[:12]}) are not the ones the served model "
            f"was exported from ({source[:12]}); give --explain the checkpoint that "
            "`skinedge export` read (the card's artifact.source_checkpoint)")
    if list(explainer.card.classes) != list(card.classes):
        raise ModelError(f"{checkpoint}: its classes {explainer.card.classes} differ from the "
                         f"served model's {card.classes}")
    return explainer
