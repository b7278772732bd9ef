"""PT2E INT8 that quantizes a ReLU6 where it clips: the TFLite (litert-torch) and ExecuTorch
(XNNPACK) quantizers, with conv/linear + ReLU6 annotated as one fused pattern.

Both quantizers fuse a convolution with a following ``relu`` (one observer after the ReLU),
but take ``hardtanh`` (ReLU6, what EfficientNet-Lite and MobileNet use) as an op that shares
its input's quantization parameters. The observer then sits on the convolution's output
*before* the clip: on the distilled Lite0 student its range reached about 48 where ReLU6 keeps
[0, 6], so every activation of the network was quantized with steps about 8 times too coarse
(3 of 8 bits lost), found with :mod:`skinedge.compress.int8_diagnosis`. Annotating the pair as
one pattern puts the observer after the clip. Measured on the pipeline's student with
``skinedge export CHECKPOINT --target tflite|executorch --precision int8 --verify-images 366``
(top-1 flips against the float model on 366 HAM10000 validation images): TFLite 70 before the
fix, 13 after; ExecuTorch 67 before, 15 after.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_CLAMPS = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
_PRODUCERS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def _is_relu6(node: torch.fx.Node) -> bool:
    """A ``hardtanh`` that clips at 0 below (ReLU6 and every clamp to [0, x])."""
    if node.op != "call_function" or node.target not in _CLAMPS:
        return False
    low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
    return float(low) == 0.0


def annotate_conv_relu6(graph_module: torch.fx.GraphModule, config: Any) -> int:
    """Annotate each conv2d/linear whose only user is a ReLU6 as one quantized pattern: its
    input activation, weight and bias take ``config``'s specs and the ReLU6's output takes the
    output activation spec (the convolution's output gets no observer of its own).

    Runs before the base quantizer's own annotation, which leaves annotated nodes alone.

    Args:
        config: The quantizer's global ``QuantizationConfig`` (``input_activation``,
            ``weight``, ``bias``, ``output_activation``), of XNNPACK's or litert-torch's.

    Returns:
        How many pairs were annotated.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    def annotated(node) -> bool:
        return Q_ANNOTATION_KEY in node.meta and node.meta[Q_ANNOTATION_KEY]._annotated

    count = 0
    for clamp in graph_module.graph.nodes:
        if not _is_relu6(clamp):
            continue
        producer = clamp.args[0]
        if (not isinstance(producer, torch.fx.Node) or producer.op != "call_function"
                or producer.target not in _PRODUCERS or len(producer.users) > 1
                or annotated(producer) or annotated(clamp)):
            continue
        activation, weight = producer.args[0], producer.args[1]
        bias = producer.args[2] if len(producer.args) > 2 else None
        if not isinstance(activation, torch.fx.Node) or not isinstance(weight, torch.fx.Node):
            continue
        inputs = {activation: config.input_activation, weight: config.weight}
        if isinstance(bias, torch.fx.Node) and config.bias is not None:
            inputs[bias] = config.bias
        producer.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map=inputs, _annotated=True)
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            output_qspec=config.output_activation, _annotated=True)
        for node in (weight, bias):  # as the base quantizers mark a pattern's parameters
            if isinstance(node, torch.fx.Node):
                node.meta.setdefault(Q_ANNOTATION_KEY, QuantizationAnnotation())._annotated = True
        count += 1
    return count


_CONVS = (torch.ops.aten.conv2d.default,)
# What follows a convolution up to its activation, in an exported eval-mode graph.
_FOLLOWERS = (torch.ops.aten._native_batch_norm_legit_no_training.default,
              torch.ops.aten.batch_norm.default, operator.getitem, *_CLAMPS,
              torch.ops.aten.relu.default, torch.ops.aten.relu_.default)


def keep_float_ends(graph_module: torch.fx.GraphModule, first: int) -> list[str]:
    """Leave the first ``first`` convolutions (in execution order), with the batch norm and
    activation that follow each, and the last linear layer (the classifier) in float: each
    node gets an empty annotation, which the base quantizers take as already annotated. The
    model then takes float input and gives float logits, int8 in between; the first quantized
    op quantizes its input. ``first == 0``: nothing is kept (a full-integer model).

    Returns:
        The names of the nodes left in float.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    if first <= 0:
        return []
    calls = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    convs = [n for n in calls if n.target in _CONVS][:first]
    linears = [n for n in calls if n.target == torch.ops.aten.linear.default][-1:]
    kept: list[str] = []
    for node in convs:
        while True:
            node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
            kept.append(node.name)
            users = list(node.users)
            if len(users) != 1 or users[0].op != "call_function" or users[0].target not in _FOLLOWERS:
                break
            node = users[0]
    for node in linears:
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
        kept.append(node.name)
    return kept


def relu6_fused(quantizer_class: type) -> type:
    """A subclass of a PT2E quantizer (``XNNPACKQuantizer``, litert-torch's
    ``PT2EQuantizer``) that leaves its ``float_first`` leading convolutions and the classifier
    in float (:func:`keep_float_ends`), annotates conv/linear + ReLU6 (:func:`annotate_conv_relu6`)
    with its global config, then everything else as the base class does."""

    class ReLU6Fused(quantizer_class):
        float_first = 0

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            keep_float_ends(model, self.float_first)
            if self.global_config is not None:
                annotate_conv_relu6(model, self.global_config)
            return super().annotate(model)

    ReLU6Fused.__name__ = ReLU6Fused.__qualname__ = f"ReLU6Fused{quantizer_class.__name__}"
    return ReLU6Fused


#: Calibration images the per-layer SQNR of a PT2E export is measured on (three passes each).
DIAGNOSIS_IMAGES = 16


def _is_quantize(node: torch.fx.Node) -> bool:
    """A quantize op, whose output folds into an int8 constant when its input is a weight
    (the ``quantized_decomposed`` ops exist once torchao is imported)."""
    ops = torch.ops.quantized_decomposed
    return node.op == "call_function" and node.target in (
        ops.quantize_per_tensor.default, ops.quantize_per_tensor.tensor,
        ops.quantize_per_channel.default)


#: ``graph.meta`` key of a :func:`quantize_pt2e` graph: how its biases were corrected, or
#: why they were not.
BIAS_CORRECTION = "skinedge_bias_correction"
#: ``graph.meta`` key of a :func:`quantize_pt2e` graph: what its quantization-aware
#: distillation did (:class:`DistillQAT`), None without it.
QAT_RECORD = "skinedge_qat"

# Quantization-aware distillation, the fallback when post-training INT8 misses its flips
# bound. The learning rate is small on purpose: the BatchNorm-folded weights are fine-tuned
# directly, and the aim is to stay by the float model, not to learn anew. On the quickstart
# Lite0, two epochs at this rate raised the TFLite file's logits SQNR from about 27 dB to
# 30-31 dB for each of three calibration seeds (``python scripts/pt2e_qat_seeds.py``,
# section ``pt2e-seeds`` of docs/RESULTS.md).
QAT_EPOCHS = 2
QAT_LR = 3e-6
QAT_BATCH = 16
_MSE_WEIGHT = 0.1  # logits MSE beside the KL term: the logits' SQNR is the steadier figure


@dataclasses.dataclass(frozen=True, eq=False)
class DistillQAT:
    """Quantization-aware distillation of a PT2E INT8 graph: after calibration, its weights
    (BatchNorm folded in) are fine-tuned through the fake quantizers so that its logits follow
    the float model's on training images (KL of the softmaxes plus logits MSE; random flips,
    which change no lesion's class). Activation ranges stay where calibration put them;
    weight ranges follow the weights. Labels are not used: the target is the float model, so
    the INT8 model learns to agree with it, not to beat it.

    Attributes:
        images: (N, 3, S, S) float32 training images, preprocessed as the card says (NCHW,
            whatever the module's layout: ``channels_last`` says how to feed it).
        channels_last: The module takes NHWC input (TFLite's).
        epochs, lr, batch_size, seed: The fine-tuning (Adam).
        log: Progress lines, one every few dozen steps.
    """

    images: np.ndarray
    channels_last: bool = False
    epochs: int = QAT_EPOCHS
    lr: float = QAT_LR
    batch_size: int = QAT_BATCH
    seed: int = 0
    log: Callable[[str], None] | None = None

    def batch(self, index: np.ndarray, flip: tuple[bool, bool] = (False, False)) -> torch.Tensor:
        x = torch.from_numpy(self.images[index])
        for dim, on in zip((2, 3), flip):
            x = x.flip(dim) if on else x
        return x.permute(0, 2, 3, 1).contiguous() if self.channels_last else x


def fake_quantized(config: Any) -> Any:
    """``config`` (a PT2E ``QuantizationConfig``, torchao's or litert-torch's) with each
    observer wrapped in a ``FakeQuantize`` that computes its parameters with that observer.

    Not the quantizers' own ``is_qat`` configs: their ``FusedMovingAvgObsFakeQuantize``
    fake-quantizes per-channel weights with other scales than the observer gives at
    conversion (some channels by a factor of 2, measured), so what training optimised is not
    what is exported; and litert-torch's QAT conv + BatchNorm annotation fails on torch 2.14
    (BatchNorm is folded before annotation here, so it is not needed).
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    def wrap(spec):
        if not isinstance(spec, QuantizationSpec):
            return spec
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=spec.observer_or_fake_quant_ctr))

    return dataclasses.replace(config, input_activation=wrap(config.input_activation),
                               output_activation=wrap(config.output_activation),
                               weight=wrap(config.weight))


def _distill_qat(module: torch.nn.Module, sample: tuple, quantizer: Any, images: list,
                 qat: DistillQAT) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """The converted graph (weights not folded) after calibration on ``images`` and
    quantization-aware distillation, and a record of the fine-tuning."""
    import copy

    import torch.nn.functional as F
    from torchao.quantization.pt2e.fake_quantize import (
        FakeQuantize,
        disable_fake_quant,
        disable_observer,
        enable_fake_quant,
    )
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    teacher = module.eval()
    quantizer.set_global(fake_quantized(quantizer.global_config))
    example = torch.cat([sample[0]] * 2)
    shapes = torch.export.ShapesCollection()
    shapes[example] = {0: torch.export.Dim("batch", min=1, max=4096)}
    graph = torch.export.export(copy.deepcopy(module), (example,), dynamic_shapes=shapes).module()
    _fuse_conv_bn_(graph)  # eval-mode BatchNorm into the convolutions, as PTQ does
    graph = prepare_qat_pt2e(graph, quantizer)
    fakes = [m for m in graph.modules() if isinstance(m, FakeQuantize)]
    graph.apply(disable_fake_quant)  # calibrate on float activations, as PTQ does
    with torch.no_grad():
        for start in range(0, len(images), 32):
            graph(torch.cat(images[start:start + 32]))
    for fake in fakes:  # activations keep their calibrated ranges; weights follow the weights
        if not isinstance(fake.activation_post_process, PerChannelMinMaxObserver):
            fake.disable_observer()
    graph.apply(enable_fake_quant)

    torch.manual_seed(qat.seed)
    rng = np.random.default_rng(qat.seed)
    params = [p for p in graph.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=qat.lr)
    steps_per_epoch = max(1, len(qat.images) // qat.batch_size)
    losses, started = [], time.perf_counter()
    for epoch in range(qat.epochs):
        order = rng.permutation(len(qat.images))
        for step in range(steps_per_epoch):
            index = np.sort(order[step * qat.batch_size:(step + 1) * qat.batch_size])
            x = qat.batch(index, tuple(rng.random(2) < 0.5))
            with torch.no_grad():
                target = teacher(x)
            out = graph(x)
            loss = (F.kl_div(F.log_softmax(out, 1), F.log_softmax(target, 1), log_target=True,
                             reduction="batchmean") + _MSE_WEIGHT * F.mse_loss(out, target))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if qat.log and (step % 25 == 0 or step == steps_per_epoch - 1):
                qat.log(f"INT8 distillation: epoch {epoch + 1}/{qat.epochs}, step "
                        f"{step + 1}/{steps_per_epoch}, loss {np.mean(losses[-25:]):.4f}")
    graph.apply(disable_observer)
    record = {"method": "quantization-aware distillation to the float model's logits (KL + "
                        f"{_MSE_WEIGHT} x logits MSE), Adam, BatchNorm folded first",
              "images": len(qat.images), "epochs": qat.epochs, "lr": qat.lr,
              "batch_size": qat.batch_size, "steps": len(losses),
              "loss_first_epoch": float(f"{np.mean(losses[:steps_per_epoch]):.4g}"),
              "loss_last_epoch": float(f"{np.mean(losses[-steps_per_epoch:]):.4g}"),
              "seconds": round(time.perf_counter() - started, 1)}
    return convert_pt2e(graph, fold_quantize=False), record


def _calibrate(module: torch.nn.Module, sample: tuple, quantizer: Any, images: list,
               bias_correction: bool) -> tuple[torch.fx.GraphModule, str]:
    """The converted graph, weights not folded, and what corrected its biases: NNCF's
    ``quantize_pt2e`` (the quantizer's annotation, calibrated, then NNCF's fast bias
    correction), or torchao's plain ``prepare_pt2e`` -> observers -> ``convert_pt2e`` when
    it is turned off or NNCF cannot take the annotation."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    note = "none (turned off)"
    if bias_correction:
        import nncf
        from nncf.experimental.torch.fx import quantize_pt2e as nncf_quantize_pt2e

        try:
            graph = nncf_quantize_pt2e(
                torch.export.export(module, sample).module(), quantizer, nncf.Dataset(images),
                subset_size=len(images), fast_bias_correction=True, fold_quantize=False)
            return graph, "NNCF fast bias correction"
        except nncf.InternalError as exc:  # litert's fixed ranges of sigmoid and softmax
            note = f"none: NNCF cannot calibrate this quantizer's annotation ({exc})"
    graph = prepare_pt2e(torch.export.export(module, sample).module(), quantizer)
    for image in images:  # observers record activation ranges
        graph(image)
    return convert_pt2e(graph, fold_quantize=False), note


def quantize_pt2e(module: torch.nn.Module, sample: tuple, quantizer: Any, images: list,
                  *, fold_quantize: bool = True, bias_correction: bool = False,
                  qat: DistillQAT | None = None, diagnose: int = DIAGNOSIS_IMAGES,
                  ) -> tuple[torch.fx.GraphModule, dict[str, Any] | None]:
    """``torch.export`` -> the quantizer's annotation -> calibration -> conversion, in eval
    mode, and the per-layer SQNR of the result
    (:func:`skinedge.compress.int8_diagnosis.layer_sqnr`).

    With ``bias_correction``, NNCF runs the quantizer's annotation
    (``nncf.experimental.torch.fx.quantize_pt2e``, NNCF's own ranges) and then corrects each
    layer's bias for the shift its quantization puts on the layer's mean output, as NNCF's
    OpenVINO and ONNX INT8 do. Same annotation, same Q/DQ ops, other ranges and biases. Where
    NNCF cannot take the annotation (litert-torch's fixed ranges for sigmoid and softmax:
    EfficientNet-B's squeeze-excitation), torchao's path runs instead;
    ``graph.meta[BIAS_CORRECTION]`` says which. Off by default: on the quickstart Lite0 (first
    3 convolutions float, 366 validation images) it changed the top-1 flips of ExecuTorch's
    quantizer from 8 to 9 and of TFLite's from 8 to 10, logits SQNR 27 dB either way
    (``python scripts/pt2e_bias_correction.py runs/ham10000-lite0/train/best``): the error
    left is spread evenly over the layers, not a bias.

    Args:
        sample: The example inputs the graph is exported with.
        quantizer: A PT2E quantizer, its global config set.
        images: Calibration inputs, each a tensor shaped like ``sample[0]``.
        fold_quantize: Fold the quantized weights into int8 constants; the diagnosis always
            runs on the unfolded graph (a copy, when this is True).
        bias_correction: NNCF's ranges and fast bias correction; False: torchao's observers.
        qat: Fine-tune the calibrated graph by quantization-aware distillation (the fallback
            when post-training INT8 misses its bound); ``graph.meta[QAT_RECORD]`` says what
            it did. ``quantizer``'s global config becomes its :func:`fake_quantized` form
            (litert-torch's converter reads only whether it is dynamic). Not with
            ``bias_correction``.
        diagnose: How many of ``images`` the diagnosis runs on (0: none).

    Returns:
        The converted graph and the diagnosis (None when ``diagnose`` is 0).
    """
    import copy

    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.constant_fold import constant_fold

    from skinedge.compress.int8_diagnosis import layer_sqnr

    record = None
    if qat is not None:
        if bias_correction:
            raise ValueError("quantization-aware distillation replaces bias correction")
        graph, record = _distill_qat(module, sample, quantizer, images, qat)
        note = "none (quantization-aware distillation)"
    with torch.no_grad():
        if qat is None:
            graph, note = _calibrate(module, sample, quantizer, images, bias_correction)
        graph = move_exported_model_to_eval(graph)
        unfolded = copy.deepcopy(graph) if diagnose and fold_quantize else graph
        if fold_quantize:
            constant_fold(graph, _is_quantize)
            graph = torch.fx.GraphModule(graph, graph.graph)
    graph.meta[BIAS_CORRECTION] = note
    graph.meta[QAT_RECORD] = record
    if not diagnose:
        return graph, None
    return graph, layer_sqnr(unfolded, torch.cat(images[:diagnose]))
