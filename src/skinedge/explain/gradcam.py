"""Grad-CAM explanations of a classifier's decisions, through ``pytorch_grad_cam`` (PyPI grad-cam).

Decoupled from checkpoints: callers build the model and the normalised input tensor, this module
finds the layer to explain and runs the library's CAM method; :mod:`skinedge.explain.overlays`
draws the result. The library (and the OpenCV/SciPy/matplotlib stack it pulls in) is imported
only when an explanation is made, so ``import skinedge`` stays fast.

Typical use::

    results = explain_batch(model, inputs, display_images, method="gradcam")
    save_explanation(results[0], display_images[0], Path("mel_001.png"), class_names=codes)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from skinedge.errors import ConfigError, ModelError
from skinedge.explain.overlays import blend_heatmap

# CLI word -> class name in ``pytorch_grad_cam``; the CLI offers exactly these keys.
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",
}

_DEFAULT_PROBE_SIZE = (3, 224, 224)


@dataclass
class CamResult:
    """One explained image.

    Attributes:
        heatmap: (H, W) float32 in [0, 1], at the model input resolution.
        overlay: (H, W, 3) uint8 RGB, the heatmap blended on the display image.
        target_class: Index of the class that was explained.
        predicted_class: Index of the highest logit.
        probabilities: (C,) float32 softmax of the logits.
    """

    heatmap: np.ndarray
    overlay: np.ndarray
    target_class: int
    predicted_class: int
    probabilities: np.ndarray


def find_target_layer(
    model: nn.Module, *, input_size: tuple[int, int, int] | None = None
) -> nn.Module:
    """The last module that produces a spatial (N, C, H, W) feature map before global pooling.

    For timm EfficientNet / EfficientNet-Lite this is the head block ``model.bn2`` (norm + act
    after ``conv_head``). Any other model is probed: forward hooks on every submodule record which
    ones return a 4-D tensor with H * W > 1 on a dummy input; the last to finish wins. Modules
    called more than once (a shared activation) are skipped, since CAM hooks need one output.

    Args:
        model: The classifier.
        input_size: (C, H, W) of the dummy probe input; default the timm ``pretrained_cfg``
            input size, else (3, 224, 224).

    Returns:
        The module whose output Grad-CAM should weight.

    Raises:
        ModelError: No submodule produces a spatial feature map.
    """
    from timm.models.efficientnet import EfficientNet

    if isinstance(model, EfficientNet) and not isinstance(model.conv_head, nn.Identity):
        return model.bn2
    return _probe_target_layer(model, input_size)


def _probe_target_layer(
    model: nn.Module, input_size: tuple[int, int, int] | None
) -> nn.Module:
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        input_size = tuple(cfg.get("input_size", _DEFAULT_PROBE_SIZE))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32

    finished: list[nn.Module] = []  # spatial-output modules in the order they finished
    calls: dict[int, int] = {}

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
            finished.append(module)

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    for module in reversed(finished):
        if calls[id(module)] == 1:
            return module
    raise ModelError(
        f"{type(model).__name__} has no submodule producing a spatial (N, C, H, W) feature map "
        f"on a {tuple(input_size)} input; pass target_layer= explicitly (the last conv block "
        "before global pooling)."
    )


def explain_batch(
    model: nn.Module,
    inputs: torch.Tensor,
    display_images: Sequence[np.ndarray],
    *,
    target_classes: Sequence[int] | None = None,
    target_layer: nn.Module | None = None,
    method: str = "gradcam",
    temperature: float = 1.0,
) -> list[CamResult]:
    """Explain a batch of images with a CAM method from ``pytorch_grad_cam``.

    The model is left in eval mode. Parameter gradients are neither computed nor left behind:
    parameters are frozen for the call (their ``requires_grad`` and ``.grad`` are restored after),
    and gradients flow from a detached copy of ``inputs`` instead.

    Args:
        model: Classifier returning (N, C) logits.
        inputs: (N, 3, H, W) tensor, normalised as the model expects.
        display_images: N uint8 RGB (H, W, 3) images (unnormalised) for the overlays.
        target_classes: Class to explain per image; None explains the predicted class.
        target_layer: Layer to weight; default ``find_target_layer(model)``, or each member's
            for an :class:`skinedge.models.Ensemble`.
        method: One of ``CAM_METHODS`` ("gradcam", "gradcam++", "eigencam").
        temperature: The model's calibration temperature (``card.temperature``): the
            probabilities are ``softmax(logits / temperature)``, as every runtime gives them.

    Returns:
        One ``CamResult`` per image, in input order.

    Raises:
        ConfigError: Unknown method.
        ModelError: No target layer given and none found (see :func:`find_target_layer`).
        ValueError: Mismatched shapes or counts, or a target class out of range.
    """
    cam_class_name = _cam_class_name(method)
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (N, 3, H, W); got shape {tuple(inputs.shape)}")
    batch, height, width = inputs.shape[0], inputs.shape[-2], inputs.shape[-1]
    _check_display_images(display_images, batch, height, width)
    if target_classes is not None:
        target_classes = [int(t) for t in target_classes]
        if len(target_classes) != batch:
            raise ValueError(f"got {len(target_classes)} target classes for {batch} images")
        if any(t < 0 for t in target_classes):
            raise ValueError(f"target classes must be >= 0; got {target_classes}")
    parameters = list(model.parameters())
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no parameters; CAM needs a trained model")
    if target_layer is not None:
        target_layers = [target_layer]
    else:
        # An ensemble is explained through every member's last conv block: the CAM of the
        # averaged prediction, its per-layer maps averaged by pytorch_grad_cam.
        members = getattr(model, "members", None)
        target_layers = [find_target_layer(m) for m in members] if members is not None \
            else [find_target_layer(model)]

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    saved = [(p, p.requires_grad, p.grad) for p in parameters]
    model.eval()
    cam = getattr(pytorch_grad_cam, cam_class_name)(model=model, target_layers=target_layers)
    try:
        for p in parameters:
            p.requires_grad_(False)
        x = inputs.detach().clone().to(parameters[0].device).requires_grad_(True)
        targets = None
        if target_classes is not None:
            targets = [ClassifierOutputTarget(t) for t in target_classes]
        with torch.enable_grad():
            try:
                heatmaps = cam(input_tensor=x, targets=targets)
            except IndexError as err:  # ClassifierOutputTarget indexing past the logits
                _check_targets(target_classes, getattr(cam, "outputs", None))
                raise ValueError(f"CAM failed on the model output: {err}") from err
        logits = cam.outputs.detach()
        _check_targets(target_classes, logits)
    finally:
        cam.activations_and_grads.release()
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad
        model.eval()

    probabilities = torch.softmax(logits.float() / temperature, dim=-1).cpu().numpy()
    predicted = probabilities.argmax(axis=-1)
    results = []
    for i in range(batch):
        heatmap = np.clip(heatmaps[i], 0.0, 1.0).astype(np.float32)
        results.append(
            CamResult(
                heatmap=heatmap,
                overlay=blend_heatmap(display_images[i], heatmap),
                target_class=int(predicted[i]) if target_classes is None else target_classes[i],
                predicted_class=int(predicted[i]),
                probabilities=probabilities[i],
            )
        )
    return results


def _cam_class_name(method: str) -> str:
    try:
        return CAM_METHODS[method.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}"
        ) from None


def _check_display_images(
    display_images: Sequence[np.ndarray], batch: int, height: int, width: int
) -> None:
    if len(display_images) != batch:
        raise ValueError(f"got {len(display_images)} display images for {batch} inputs")
    for i, image in enumerate(display_images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != (height, width, 3):
            raise ValueError(
                f"display image {i} must be uint8 RGB of shape {(height, width, 3)} (the model "
                f"input size); got {image.dtype} {image.shape}"
            )


def _check_targets(target_classes: list[int] | None, logits: torch.Tensor | None) -> None:
    if logits is None:
        return
    if logits.ndim != 2:
        raise ValueError(f"model must return (N, C) logits; got shape {tuple(logits.shape)}")
    num_classes = logits.shape[-1]
    if target_classes is not None and any(t >= num_classes for t in target_classes):
        raise ValueError(
            f"target classes {target_classes} out of range for a model with {num_classes} classes"
        )

