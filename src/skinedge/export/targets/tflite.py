"""TFLite through litert-torch (no TensorFlow): FP32, FP16 weights, INT8 (PT2E or aeq).

The model takes NHWC input, as Android camera pipelines produce. INT8 comes from one of two
quantizers, chosen with ``ExportOptions.quantizer``:

* ``pt2e`` (default): litert-torch's PT2E quantizer (conv + ReLU6 quantized after the clip,
  :mod:`skinedge.compress.pt2e`), calibrated in torch on the training images. The first
  convolutions and the classifier stay float (``ExportOptions.float_first``, default 3), so
  the file takes float input and gives float logits, which MediaPipe Tasks require; with
  ``float_first=0`` it is full-integer, with int8 input and output tensors (the runtime
  quantizes inputs with the tensor's scale and zero point).
* ``aeq``: ai-edge-quantizer's static int8 recipe applied to the FP32 flatbuffer, calibrated
  with min/max ranges (not the library's moving average, which clips), the same ops left float
  as ``pt2e`` (:func:`_aeq`); float input and output, int8 inside (full-integer with
  ``float_first=0``).
* ``pt2e-qat``: ``pt2e``, then quantization-aware distillation to the float model's logits over
  the training split (:class:`skinedge.compress.pt2e.DistillQAT`): the fallback when the
  post-training file misses its flips bound. Minutes on a CPU, not seconds.

FP16 stores weights as float16 (ai-edge-quantizer float casting); compute stays float.
The card is a flatbuffer ``metadata`` entry that the LiteRT backend reads
(:mod:`skinedge.runtimes.litert`, which also writes it).

Besides the card, every file carries the standard TFLite Model Metadata (``TFLITE_METADATA``,
``metadata_schema.fbs`` 1.0.0: image input with normalization, labels, name, version, author,
licence) and its labels files packed as a zip after the flatbuffer, as tflite-support's
``MetadataPopulator`` writes them, so MediaPipe Tasks' ImageClassifier loads fp32, fp16 and PT2E int8
files as they are (tested; the TFLite Task Library reads the same metadata, untested here).
MediaPipe squashes the whole frame to the input size with its own filter;
:func:`mediapipe_differences` lists what else it cannot do as the card says.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
import zipfile

import numpy as np

from skinedge import __version__
from skinedge.export.base import PT2E_QAT, Exported, ExportError, ExportJob, register_target
from skinedge.models.card import ArtifactInfo, ModelCard, TensorSpec
from skinedge.runtimes.litert import CARD_KEY, with_metadata
from skinedge.utils.backends import require
from skinedge.utils.io import package_versions

QUANTIZERS = ("pt2e", "aeq", PT2E_QAT)  # the first is the default


def _convert(module, sample, **kwargs):
    """litert_torch.convert, with its progress chatter kept out of our output; a failing op is
    named in the error."""
    litert_torch = require("litert_torch", "tflite")
    nhwc_constant_pad()
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            return litert_torch.convert(module, sample, **kwargs)
    except Exception as exc:  # the converter raises many types; keep its message and output
        tail = "\n".join(chatter.getvalue().strip().splitlines()[-15:])
        raise ExportError(f"litert-torch could not convert the model: {exc}\n{tail}\n"
                          f"(the op it cannot lower is named above; replace that layer, or export "
                          f"to ONNX/OpenVINO instead)") from exc


def nhwc_constant_pad() -> bool:
    """Let litert-torch's layout pass keep constant padding in NHWC (True once registered).

    timm's ``Conv2dSame`` (the stride-2 convolutions of the ``tf_`` EfficientNets) pads
    asymmetrically with ``F.pad`` before a VALID convolution. litert-torch 0.10's pass that
    moves the graph to NHWC has no rewrite for ``aten.constant_pad_nd``, so it leaves the pad in
    NCHW between two TRANSPOSEs. In FP32 the converter folds those away; in a PT2E INT8 graph
    the quantize/dequantize pairs around the pad stop it, and each such convolution costs two
    int8 TRANSPOSEs. The rewrite reorders the pad widths to NHWC (``F.pad`` lists the last
    dimension first: NCHW's (W, H, C, N) pairs become NHWC's (C, W, H, N)). Upstream's own
    rewrite, where a release has one, is kept.
    """
    try:
        import torch
        from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import (
            layout_rewrite,
        )
    except ImportError:  # another litert-torch layout: convert as it is
        return False
    op = torch.ops.aten.constant_pad_nd.default
    if op in layout_rewrite.rewriters:
        return True

    @layout_rewrite.rewriters.register(op)
    def _constant_pad_nhwc(node) -> None:
        x, pad, *rest = node.args
        pairs = [list(pad[i:i + 2]) for i in range(0, len(pad), 2)]
        pairs += [[0, 0]] * (4 - len(pairs))  # (W, H, C, N), each (before, after)
        width, height, channels, batch = pairs
        node.args = (x, [*channels, *width, *height, *batch], *rest)

    return True


def nhwc_model(model):
    """``model`` taking NHWC input, as the TFLite file does."""
    litert_torch = require("litert_torch", "tflite")
    return litert_torch.to_channel_last_io(model, args=[0]).eval()


def pt2e_quantizer(float_first: int):
    """The PT2E quantizer of the INT8 export: litert-torch's, symmetric int8 with weights per
    channel, ReLU6 quantized after its clip, not with the convolution's unclipped range
    (:mod:`skinedge.compress.pt2e`), the first ``float_first`` convolutions left float."""
    require("litert_torch", "tflite")
    from litert_torch.quantize import pt2e_quantizer as litert_pt2e

    from skinedge.compress.pt2e import relu6_fused

    quantizer = relu6_fused(litert_pt2e.PT2EQuantizer)().set_global(
        litert_pt2e.get_symmetric_quantization_config(is_per_channel=True))
    quantizer.float_first = float_first
    return quantizer


def _float_flatbuffer(job: ExportJob) -> bytes:
    sample = (job.example.permute(0, 2, 3, 1).contiguous(),)
    return bytes(_convert(nhwc_model(job.model), sample).model_content())


def _pt2e_int8(job: ExportJob) -> tuple[bytes, dict | None, dict]:
    """The INT8 flatbuffer (float ends, or full-integer with ``float_first=0``), the
    per-layer SQNR of its PT2E graph, and the card details of its distillation (``pt2e-qat``)."""
    import torch

    require("litert_torch", "tflite")
    from litert_torch.quantize import quant_config

    from skinedge.compress.pt2e import quantize_pt2e

    sample = (job.example.permute(0, 2, 3, 1).contiguous(),)
    quantizer = pt2e_quantizer(job.options.float_first)
    images = [torch.from_numpy(image[None]).permute(0, 2, 3, 1).contiguous()
              for image in job.calibration.images]
    graph, diagnosis = quantize_pt2e(nhwc_model(job.model), sample, quantizer, images,
                                     fold_quantize=False, qat=job.qat(channels_last=True))
    model = _convert(graph, sample, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
    return bytes(model.model_content()), diagnosis, job.qat_details(graph)


def _aeq(float_model: bytes, job: ExportJob) -> bytes:
    """ai-edge-quantizer on the FP32 flatbuffer: FP16 weights, or static INT8 (weights per
    channel, activations per tensor) calibrated on the job's images.

    INT8 departs from the library's defaults in two places. Measured on the phone-recipe Lite0
    against its TFLite FP32 file, 371 HAM10000 test images (docs/RESULTS.md, sections
    ``bench-phone-lite0-targets`` before, ``bench-phone-lite0-aeq`` and
    ``bench-phone-lite0-aeq-float0`` after):

    * Activation ranges are the calibration images' min and max (:func:`min_max_ranges`). The
      library's calibrator keeps a moving average (factor 0.95) of each image's range, which
      ends near one typical image's extremes and clips every wider one, the logits included:
      confident answers saturated into ties. Full-integer file: top-1 flips 6.5% -> 2.2%
      (2.1% -> 0% of confident answers), balanced accuracy -0.8 -> -0.4 points.
    * With ``float_first``, the input, everything up to the ``float_first``-th convolution and
      the classifier stay float, as PT2E keeps them (:func:`_float_ends`): flips 1.9%,
      balanced accuracy +0.3 points, and faster than the full-integer file on that CPU.
    """
    require("ai_edge_quantizer", "tflite")
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    q = quantizer.Quantizer(float_model)
    chatter = io.StringIO()  # the library's messages and progress bars
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        if job.precision == "fp16":
            q.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED,
                                     num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
            return bytes(q.quantize().quantized_model)
        int8 = recipe.static_wi8_ai8() + [
            {"regex": f"^{re.escape(scope)}$", "operation": "*",
             "algorithm_key": AlgorithmName.NO_QUANTIZE, "op_config": {}}
            for scope in _float_ends(float_model, job.options.float_first)]
        q.load_quantization_recipe(int8)
        ranges = min_max_ranges(float_model, int8, job.calibration.images)
        return bytes(q.quantize(ranges).quantized_model)


def min_max_ranges(float_model: bytes, recipe: list[dict], images: np.ndarray) -> dict:
    """ai-edge-quantizer's calibration result for ``recipe`` with each tensor's range the min
    and max over ``images`` (NCHW float, as the job holds them), not the library's default
    moving average of per-image ranges."""
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    name = _input_name(float_model)
    samples = [{name: image[None].transpose(0, 2, 3, 1).copy()} for image in images]
    chatter = io.StringIO()  # its progress bar and the interpreter's debugging warning
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        ranges = calibrator.Calibrator(float_model, num_threads=2,
                                       qsv_update_func=qsv_utils.min_max_update)
        ranges.calibrate({"serving_default": samples}, manager)
    return ranges.get_model_qsvs()


def _float_ends(flatbuffer: bytes, first: int) -> list[str]:
    """ai-edge-quantizer scopes (an op's output tensor names, each followed by ';') of the
    model's input, of every op up to and including the ``first``-th convolution, in execution
    order, and of the last fully connected op (the classifier): what :func:`skinedge.compress.pt2e.keep_float_ends`
    keeps float in PT2E. ``first == 0``: none (a full-integer model)."""
    if first <= 0:
        return []
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    graph = model.subgraphs[0]
    ops = schema.BuiltinOperator
    kinds = [max(model.operatorCodes[op.opcodeIndex].builtinCode,
                 model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
             for op in graph.operators]
    convs = [i for i, kind in enumerate(kinds) if kind in (ops.CONV_2D, ops.DEPTHWISE_CONV_2D)]
    keep = list(range(convs[min(first, len(convs)) - 1] + 1)) if convs else []
    keep += [i for i, kind in enumerate(kinds) if kind == ops.FULLY_CONNECTED][-1:]

    def scope(tensors) -> str:
        names = [graph.tensors[t].name.decode() for t in tensors if t >= 0]
        return (";".join(names) + ";")[:10000]  # the library truncates scopes there

    # The library's virtual INPUT op has the model's inputs as its outputs (float input); its
    # OUTPUT op shares the classifier's scope (float logits).
    return [scope(graph.inputs)] + [scope(graph.operators[i].outputs) for i in keep]


def _input_name(flatbuffer: bytes) -> str:
    interpreter = _interpreter(flatbuffer)
    runner = interpreter.get_signature_runner()
    return next(iter(runner.get_input_details()))


def _interpreter(flatbuffer: bytes, threads: int = 1):
    litert = require("ai_edge_litert.interpreter", "tflite")
    interpreter = litert.Interpreter(model_content=flatbuffer, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def _spec(detail: dict, layout: str, kind: str | None = None) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero = detail["quantization"]
    quantized = dtype in ("int8", "uint8")
    return TensorSpec(name=detail["name"], shape=[int(d) for d in detail["shape"]], layout=layout,
                      dtype=dtype, scale=float(scale) if quantized else None,
                      zero_point=int(zero) if quantized else None, kind=kind)


# Standard TFLite Model Metadata (metadata_schema.fbs of tflite-support, shipped in mediapipe),
# written with the flatbuffers runtime that ai-edge-litert already needs: mediapipe's writers
# cannot be imported from any mediapipe release that fits this project's pins (1.x lacks their
# native helper; 0.10.21, the last with it, needs numpy<2 and protobuf<5).

#: The entry MediaPipe Tasks and the TFLite Task Library read: a ModelMetadata flatbuffer.
STANDARD_METADATA_KEY = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"  # class codes in output order: MediaPipe's category_name
DISPLAY_NAMES_FILE = "labels_en.txt"  # the card's class names (locale "en"): display_name
_MIN_PARSER_VERSION = "1.0.0"  # every field written here is in schema 1.0.0
# Enum and union values of metadata_schema.fbs.
_RGB, _TENSOR_AXIS_LABELS = 1, 2  # ColorSpaceType.RGB, AssociatedFileType.TENSOR_AXIS_LABELS
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties union
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union


class _Tables:
    """A flatbuffers builder for the metadata tables. A field is ``(slot, kind, value)``: its
    position in its table in metadata_schema.fbs (a union takes two: its type, then its
    value), ``off`` (string, vector, table), ``i8`` (enum), ``u8`` (union type) or ``u32``;
    None values are left out. Children are built before the table that holds them."""

    _PREPEND = {"off": "PrependUOffsetTRelativeSlot", "i8": "PrependInt8Slot",
                "u8": "PrependUint8Slot", "u32": "PrependUint32Slot"}

    def __init__(self):
        self.b = require("flatbuffers", "tflite").Builder(1024)  # an ai-edge-litert dependency

    def table(self, *fields: tuple[int, str, int | None]) -> int:
        self.b.StartObject(max((slot for slot, _, _ in fields), default=-1) + 1)
        for slot, kind, value in fields:
            if value is not None:
                getattr(self.b, self._PREPEND[kind])(slot, value, 0)
        return self.b.EndObject()

    def string(self, text: str | None) -> int | None:
        return None if text is None else self.b.CreateString(text)

    def floats(self, values) -> int:
        return self.b.CreateNumpyVector(np.asarray(values, dtype=np.float32))

    def tables(self, offsets: list[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.b.PrependUOffsetTRelative(offset)
        return self.b.EndVector()

    def finish(self, root: int) -> bytes:
        self.b.Finish(root, file_identifier=b"M001")
        return bytes(self.b.Output())


def mediapipe_differences(card: ModelCard,
                          input_dtype: np.dtype) -> tuple[list[str], list[str], list[str]]:
    """How MediaPipe Tasks, reading the standard metadata alone, treats an image, compared
    with skinedge's runtimes, which rebuild preprocessing from the card.

    Returns:
        ``(approximations, wrong, refused)``: what moves its scores a little (resizing), what it
        leaves out without a word (its predictions are wrong), and what makes it refuse the
        file when it loads it.
    """
    pre = card.preprocess
    approximations = [f"MediaPipe resizes the whole image to {pre.input_size}x{pre.input_size} "
                      f"with its own filter (skinedge: {pre.interpolation}"
                      + (", short side then a centred square crop: crop a centred square first)"
                         if pre.resize_mode == "crop" else ")")]
    wrong = []
    if pre.color_constancy != "none":
        wrong.append(f"{pre.color_constancy} colour constancy is not applied")
    if pre.equalize:
        wrong.append("luminance equalisation is not applied")
    refused = []
    if len(set(pre.mean)) > 1 or len(set(pre.std)) > 1:  # written anyway: the schema takes it
        refused.append("MediaPipe refuses per-channel mean/std ('Per-channel image "
                       "normalization is not available'); train with one mean and std for it")
    if input_dtype not in (np.float32, np.uint8):
        refused.append(f"the input tensor is {input_dtype.name}, and MediaPipe takes float32 or "
                       f"uint8 only (for MediaPipe export fp32, fp16, or int8 with float first "
                       f"layers: float_first above 0, the default)")
    return approximations, wrong, refused


def standard_metadata(card: ModelCard, input_dtype: np.dtype) -> bytes:
    """The ``TFLITE_METADATA`` flatbuffer for an exported classifier.

    The input is an RGB image normalised as ``(pixel - mean) / std`` on 0-255 values (the
    card's mean and std, which are on 0-1 values, times 255); the output is ``(1, C)`` logits
    labelled by :data:`LABELS_FILE` and :data:`DISPLAY_NAMES_FILE`.
    """
    pre, t = card.preprocess, _Tables()
    mean = [255.0 * m for m in pre.mean]
    std = [255.0 * s for s in pre.std]

    def labels_file(name: str, description: str, locale: str | None = None) -> int:
        return t.table((0, "off", t.string(name)), (1, "off", t.string(description)),
                       (2, "i8", _TENSOR_AXIS_LABELS), (3, "off", t.string(locale)))

    size = t.table((0, "u32", pre.input_size), (1, "u32", pre.input_size))  # ImageSize
    image = t.table((0, "i8", _RGB), (1, "off", size))  # ImageProperties
    norm = t.table((0, "off", t.floats(mean)), (1, "off", t.floats(std)))  # NormalizationOptions
    stats = None  # Stats (max, min) of the normalised values, as mediapipe's writer gives them
    if input_dtype == np.float32:
        stats = t.table((0, "off", t.floats([(255 - m) / s for m, s in zip(mean, std)])),
                        (1, "off", t.floats([-m / s for m, s in zip(mean, std)])))
    approximations = mediapipe_differences(card, input_dtype)[0]
    image_input = t.table(  # TensorMetadata
        (0, "off", t.string("image")),
        (1, "off", t.string(f"RGB image, {pre.input_size}x{pre.input_size}, (pixel - mean) / std "
                            f"on 0-255 values. {approximations[0]}.")),
        (3, "off", t.table((0, "u8", _IMAGE_PROPERTIES), (1, "off", image))),  # Content
        (4, "off", t.tables([t.table((0, "u8", _NORMALIZATION_OPTIONS), (1, "off", norm))])),
        (5, "off", stats))
    labels = t.tables([
        labels_file(LABELS_FILE, "Class codes, one a line, in output order."),
        labels_file(DISPLAY_NAMES_FILE, "Class names, one a line, in output order.", "en")])
    logits = t.table(
        (0, "off", t.string("logits")),
        (1, "off", t.string(f"Class logits, shape (1, {card.num_classes}): softmax gives the "
                            f"probabilities skinedge reports{_calibrated(card)}; not "
                            f"thresholdable as scores.")),
        (3, "off", t.table((0, "u8", _FEATURE_PROPERTIES), (1, "off", t.table()))),
        (6, "off", labels))
    subgraph = t.table((2, "off", t.tables([image_input])), (3, "off", t.tables([logits])))
    weights = card.weights_sha256
    model = t.table(  # ModelMetadata
        (0, "off", t.string(f"skinedge {card.architecture} {card.precision}")),
        (1, "off", t.string(f"Skin-lesion classifier, {card.num_classes} classes "
                            f"({card.vocabulary}): {', '.join(card.classes)}. "
                            f"{card.intended_use}")),
        (2, "off", t.string(f"weights sha256 {weights[:16]}" if weights else card.created)),
        (3, "off", t.tables([subgraph])),
        (4, "off", t.string(f"skinedge {__version__}")),
        (5, "off", t.string(f"Trained on data under: {card.data.licence}. Respect its terms when "
                            f"sharing this model.")),
        (7, "off", t.string(_MIN_PARSER_VERSION)))
    return t.finish(model)


def with_standard_metadata(flatbuffer: bytes, card: ModelCard) -> bytes:
    """``flatbuffer`` with the :func:`standard_metadata` entry, followed by a zip of its labels
    files (stored, not compressed), as tflite-support's ``MetadataPopulator`` packs them.
    ``card`` is the artifact's (its ``artifact.input`` gives the input dtype).

    Call it last: re-serialising the flatbuffer (:func:`~skinedge.runtimes.litert.with_metadata`)
    drops the zip.
    """
    dtype = np.dtype(card.artifact.input.dtype)
    packed = io.BytesIO(with_metadata(flatbuffer, STANDARD_METADATA_KEY,
                                      standard_metadata(card, dtype)))
    with zipfile.ZipFile(packed, "a") as archive:  # a file that is no zip gets one appended
        archive.writestr(LABELS_FILE, "".join(f"{code}\n" for code in card.classes))
        archive.writestr(DISPLAY_NAMES_FILE, "".join(
            f"{card.class_names.get(code, code)}\n" for code in card.classes))
    return packed.getvalue()


@register_target(
    name="tflite", suffix=".tflite", extra="tflite",
    requires=("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
    precisions=("fp32", "fp16", "int8"),
    default_precision="fp32", int8_extra=None, quantizers=QUANTIZERS,
    description="TFLite (LiteRT) via litert-torch, NHWC input; INT8 by PT2E (float ends) "
                "or ai-edge-quantizer static int8",
    # 2: PT2E INT8 quantizes ReLU6 after its clip (compress/pt2e.py); 3: FLOAT_FIRST;
    # 4: aeq INT8 with min/max ranges and float ends; 5: constant pads in NHWC
    revision=5,
)
def export_tflite(job: ExportJob) -> Exported:
    quantizer = job.options.quantizer or QUANTIZERS[0]  # checked by export_checkpoint
    details: dict = {"converter": "litert_torch.convert"}
    int8_layers = None
    if job.precision == "int8" and quantizer in ("pt2e", PT2E_QAT):
        flatbuffer, int8_layers, qat = _pt2e_int8(job)
        details["quantizer"] = ("litert-torch PT2E (symmetric int8, weights per channel; "
                                "conv + ReLU6 quantized after the clip)")
        details["float_first"] = job.options.float_first
        details.update(qat)
    else:
        flatbuffer = _float_flatbuffer(job)
        if job.precision == "fp16":
            flatbuffer = _aeq(flatbuffer, job)
            details["quantizer"] = "ai-edge-quantizer float casting (fp16 weights)"
        elif job.precision == "int8":
            from skinedge.compress.int8_diagnosis import tflite_layer_sqnr
            from skinedge.compress.pt2e import DIAGNOSIS_IMAGES

            quantized = _aeq(flatbuffer, job)
            images = job.calibration.images[:DIAGNOSIS_IMAGES].transpose(0, 2, 3, 1)
            int8_layers = tflite_layer_sqnr(flatbuffer, quantized, images)
            flatbuffer = quantized
            details["quantizer"] = ("ai-edge-quantizer static_wi8_ai8, activation ranges "
                                    "min/max over the calibration images")
            details["float_first"] = job.options.float_first
            details["variant"] = "aeq"
    interpreter = _interpreter(flatbuffer)
    approximations, wrong, refused = mediapipe_differences(
        job.card, np.dtype(interpreter.get_input_details()[0]["dtype"]))
    details["tflite_metadata"] = {"labels": LABELS_FILE, "display_names": DISPLAY_NAMES_FILE,
                                  "mediapipe_differs": approximations + wrong + refused}
    if wrong:  # MediaPipe says nothing about these (a refusal it reports itself, at load time)
        warnings.warn(f"{job.stem}.tflite: MediaPipe Tasks will load it but predict differently: "
                      f"{'; '.join(wrong)}", UserWarning, stacklevel=2)
    info = ArtifactInfo(
        target="tflite", precision=job.precision, source_checkpoint=job.source,
        source_weights_sha256=job.card.weights_sha256,
        input=_spec(interpreter.get_input_details()[0], "NHWC"),
        output=_spec(interpreter.get_output_details()[0], "NC", kind="logits"),
        calibration=job.calibration_info, details=details,
        versions=package_versions(("litert-torch", "ai-edge-litert", "ai-edge-quantizer")))
    card = job.card_for(info)
    path = job.workdir / f"{job.stem}.tflite"
    flatbuffer = with_metadata(flatbuffer, CARD_KEY, card.to_json().encode())
    path.write_bytes(with_standard_metadata(flatbuffer, card))
    return Exported(path, [path], card, int8_layers=int8_layers)


def _calibrated(card: ModelCard) -> str:
    """How the logits' softmax is calibrated, for the metadata's output description."""
    if card.temperature == 1.0:
        return ""
    return f" (calibrated: the temperature {card.temperature:.4g} fitted on validation is inside)"
