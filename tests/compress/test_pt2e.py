"""PT2E INT8: ReLU6 quantized after its clip (the fix), and the per-layer SQNR that found it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchao")

from skinedge.compress.int8_diagnosis import describe, layer_sqnr  # noqa: E402
from skinedge.compress.pt2e import quantize_pt2e, relu6_fused  # noqa: E402


class _Net(torch.nn.Module):
    """Conv-BN-ReLU6 twice, as in EfficientNet-Lite; the convolutions' outputs span about
    +/-40 before the clip, as the distilled Lite0 student's did (range 48 where ReLU6 keeps 6)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
        self.conv2, self.bn2 = torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
        self.act = torch.nn.ReLU6()
        self.head = torch.nn.Linear(16, 5)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.weight.fill_(12.0)  # wide pre-clip range; most values still inside [0, 6]
                bn.running_var.fill_(1.0)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def _images(n: int = 24) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, 16, 16, generator=generator) for _ in range(n)]


def _quantizer(fused: bool):
    xnn = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    cls = relu6_fused(xnn.XNNPACKQuantizer) if fused else xnn.XNNPACKQuantizer
    return cls().set_global(xnn.get_symmetric_quantization_config(is_per_channel=True))


def _litert_quantizer():
    """The TFLite exporter's PT2E quantizer (litert-torch's, ReLU6 fused), nothing kept float."""
    pytest.importorskip("litert_torch")
    from skinedge.export.targets.tflite import pt2e_quantizer

    return pt2e_quantizer(0)


def _clamp_output_scales(graph: torch.fx.GraphModule) -> list[float]:
    """The scale of the quantize op right after each hardtanh (ReLU6)."""
    scales = []
    for node in graph.graph.nodes:
        if node.op == "call_function" and "hardtanh" in str(node.target):
            quantize = [u for u in node.users if "quantize_per_tensor" in str(u.target)]
            scales += [float(q.args[1]) for q in quantize]
    return scales


@pytest.fixture(scope="module")
def quantized():
    model, images = _Net().eval(), _images()
    sample = (images[0],)
    return {fused: quantize_pt2e(model, sample, _quantizer(fused), images, fold_quantize=False)
            for fused in (False, True)}


def test_relu6_output_is_quantized_on_its_clipped_range(quantized) -> None:
    plain = _clamp_output_scales(quantized[False][0])
    fused = _clamp_output_scales(quantized[True][0])
    assert len(fused) == 2
    # [0, 6] in int8 steps: 6/255 (asymmetric) at most; the plain quantizer shares the
    # convolution's unclipped range, several times wider.
    assert all(s <= 6 / 255 * 1.001 for s in fused), fused
    assert plain and min(plain) > 4 * max(fused), (plain, fused)


def test_the_fix_shows_in_the_per_layer_sqnr(quantized) -> None:
    plain, fused = quantized[False][1], quantized[True][1]
    assert fused["logits_sqnr_db"] > plain["logits_sqnr_db"] + 6  # at least a bit back
    ops = [row["op"] for row in fused["layers"]]
    assert ops.count("conv2d") == 2 and "linear" in ops
    for row in fused["layers"]:  # local error is never worse than what has accumulated
        if row["local_sqnr_db"] is not None:  # None: no error of its own at all
            assert row["local_sqnr_db"] >= row["sqnr_db"] - 0.5, row
    weakest = fused["weakest"]
    assert [r["local_sqnr_db"] for r in weakest] == sorted(r["local_sqnr_db"] for r in weakest)
    assert "logits" in describe(fused) and weakest[0]["layer"] in describe(fused)


def test_clamps_that_are_not_relu6_keep_the_base_annotation() -> None:
    from skinedge.compress.pt2e import annotate_conv_relu6

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Hardtanh(-1.0, 1.0)).eval()
    graph = torch.export.export(model, (torch.zeros(1, 3, 8, 8),)).module()
    config = _quantizer(True).global_config
    assert annotate_conv_relu6(graph, config) == 0
    relu6 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU6()).eval()
    graph = torch.export.export(relu6, (torch.zeros(1, 3, 8, 8),)).module()
    assert annotate_conv_relu6(graph, config) == 1


def test_diagnosis_refuses_folded_weights() -> None:
    model, images = _Net().eval(), _images(4)
    converted, _ = quantize_pt2e(model, (images[0],), _quantizer(True), images, diagnose=0)
    with pytest.raises(ValueError, match="fold_quantize=False"):
        layer_sqnr(converted, torch.cat(images))


def test_litert_quantizer_takes_the_same_fix() -> None:
    model, images = _Net().eval(), _images()
    quantizer = _litert_quantizer()
    graph, diagnosis = quantize_pt2e(model, (images[0],), quantizer, images, fold_quantize=False)
    # litert's activations are symmetric int8: [0, 6] takes the positive half, 6/127 steps.
    assert all(s <= 6 / 127 * 1.001 for s in _clamp_output_scales(graph))
    assert diagnosis["logits_sqnr_db"] > 20


def _quantized_weights(graph: torch.fx.GraphModule) -> list[bool]:
    """For each conv2d in order, whether its weight comes through a dequantize op."""
    return ["dequantize" in str(getattr(node.args[1], "target", ""))
            for node in graph.graph.nodes
            if node.op == "call_function" and node.target == torch.ops.aten.conv2d.default]


@pytest.mark.parametrize("quantizer", ["xnnpack", "litert"])
def test_float_first_leaves_the_first_convolutions_in_float(quantizer) -> None:
    """The first convolution, its batch norm and ReLU6 stay float, and so does the classifier;
    the second convolution is int8, its input quantized where the float part ends."""
    if quantizer == "xnnpack":
        q = _quantizer(True)
    else:
        q = _litert_quantizer()
    q.float_first = 1
    model, images = _Net().eval(), _images()
    graph, diagnosis = quantize_pt2e(model, (images[0],), q, images, fold_quantize=False)
    assert _quantized_weights(graph) == [False, True]
    conv2 = [n for n in graph.graph.nodes if n.target == torch.ops.aten.conv2d.default][1]
    assert "dequantize" in str(conv2.args[0].target)  # the boundary: float -> int8
    assert diagnosis["layers"][0]["local_sqnr_db"] is None  # float: no error at all
    assert diagnosis["weakest"] and None not in [r["local_sqnr_db"] for r in diagnosis["weakest"]]
    # Nothing of the float convolution is quantized: no quantize op before the boundary.
    first_quantize = next(n for n in graph.graph.nodes if "quantize_per_tensor" in str(n.target))
    assert list(first_quantize.users)[0] is conv2.args[0]
    linear = next(n for n in graph.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert "dequantize" not in str(linear.args[1].target)  # float weights
    assert not any("quantize" in str(u.target) for u in linear.users)  # float logits out


def test_bias_correction_takes_out_the_mean_shift_of_int8_weights() -> None:
    """NNCF's fast bias correction: each layer's bias absorbs the shift its int8 weights put on
    its mean output, which plain PT2E leaves (on inputs far from zero mean, a rounding error in
    every weight adds up in one direction). Same graph either way."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU6(),
                                torch.nn.Conv2d(64, 8, 1)).eval()
    generator = torch.Generator().manual_seed(4)
    images = [torch.rand(1, 3, 16, 16, generator=generator) + 2 for _ in range(32)]
    batch = torch.cat(images)
    with torch.no_grad():
        reference = model(batch)
    shift, ops = {}, {}
    for corrected in (False, True):
        graph, _ = quantize_pt2e(model, (images[0],), _quantizer(True), images, diagnose=0,
                                 fold_quantize=False, bias_correction=corrected)
        with torch.no_grad():
            out = torch.cat([graph(image) for image in images])
        shift[corrected] = float((out - reference).mean((0, 2, 3)).abs().mean())
        ops[corrected] = sorted(str(n.target) for n in graph.graph.nodes if "quantize" in str(n.target))
    assert ops[True] == ops[False]
    assert shift[True] < shift[False] / 2, shift


def test_an_annotation_nncf_cannot_take_is_calibrated_without_bias_correction() -> None:
    """litert-torch gives sigmoid (EfficientNet-B's squeeze-excitation) a fixed range, which
    NNCF does not take: torchao calibrates it instead, and the graph says so."""
    from skinedge.compress.pt2e import BIAS_CORRECTION

    quantizer = _litert_quantizer()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Sigmoid(),
                                torch.nn.Conv2d(8, 4, 1)).eval()
    images = _images(8)
    graph, _ = quantize_pt2e(model, (images[0],), quantizer, images, diagnose=0,
                             bias_correction=True)
    assert graph.meta[BIAS_CORRECTION].startswith("none: NNCF cannot calibrate")
    assert "FixedQParams" in graph.meta[BIAS_CORRECTION]
    sigmoid = next(n for n in graph.graph.nodes if "sigmoid" in str(n.target))
    quantize = next(iter(sigmoid.users))
    assert "quantize_per_tensor" in str(quantize.target) and quantize.args[1] == 1 / 256
    graph, _ = quantize_pt2e(_Net().eval(), (images[0],), _quantizer(True), images, diagnose=0,
                             bias_correction=True)
    assert graph.meta[BIAS_CORRECTION] == "NNCF fast bias correction"
    graph, _ = quantize_pt2e(_Net().eval(), (images[0],), _quantizer(True), images, diagnose=0)
    assert graph.meta[BIAS_CORRECTION] == "none (turned off)"


def _sqnr(reference: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10((reference ** 2).sum() / ((reference - out) ** 2).sum()))


def _hard_weights_net() -> torch.nn.Sequential:
    """Four Conv-BN-ReLU6 layers whose weights have a few large values in each channel (1% of
    them 30 times larger): per-channel int8 steps are then coarse for all the others, the error
    quantization-aware training learns around."""
    torch.manual_seed(0)
    layers, channels = [], 3
    for width in (16, 16, 32, 32):
        layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.BatchNorm2d(width),
                   torch.nn.ReLU6()]
        channels = width
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(channels, 5)).eval()
    with torch.no_grad():
        for conv in (m for m in net if isinstance(m, torch.nn.Conv2d)):
            conv.weight[torch.rand_like(conv.weight) < 0.01] *= 30
    return net


def test_distillation_brings_int8_logits_closer_to_the_float_model() -> None:
    """Quantization-aware distillation (the ``pt2e-qat`` fallback): the same annotation and
    calibration as PTQ, then the weights learn to give the float model's logits through the
    fake quantizers. On images it never saw, the converted graph's logits are closer to the
    float model's than PTQ's (27 -> 37 dB when written), and the float model itself is left
    as it was."""
    from skinedge.compress.pt2e import QAT_RECORD, DistillQAT

    model, images = _hard_weights_net(), _images(32)
    generator = torch.Generator().manual_seed(7)
    train = torch.randn(256, 3, 16, 16, generator=generator).numpy()
    held_out = torch.randn(64, 3, 16, 16, generator=generator)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = model(held_out)
    sqnr, record = {}, None
    for qat in (None, DistillQAT(train, epochs=4, lr=1e-4, batch_size=16)):
        graph, _ = quantize_pt2e(model, (images[0],), _quantizer(True), images, diagnose=0,
                                 qat=qat)
        with torch.no_grad():
            sqnr[qat is not None] = _sqnr(reference, torch.cat([graph(x[None]) for x in held_out]))
        record = graph.meta[QAT_RECORD]
        assert (record is None) == (qat is None)
    assert sqnr[True] > sqnr[False] + 5, sqnr
    assert record["images"] == 256 and record["steps"] == 4 * 16 and record["epochs"] == 4
    assert 0 < record["loss_last_epoch"] < record["loss_first_epoch"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fake_quantizers_train_with_the_parameters_they_are_exported_with() -> None:
    """The fake quantizers of ``fake_quantized`` compute their scales with the observer that
    conversion reads: what distillation optimised is what the INT8 file computes (the
    quantizers' own QAT configs fake-quantize per-channel weights with other scales)."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    from skinedge.compress.pt2e import fake_quantized

    quantizer = _quantizer(True)
    quantizer.set_global(fake_quantized(quantizer.global_config))
    images = _images(4)
    graph = torch.export.export(_Net().eval(), (images[0],)).module()
    _fuse_conv_bn_(graph)
    graph = prepare_qat_pt2e(graph, quantizer)
    graph(images[0])
    fakes = [m for m in graph.modules() if isinstance(m, FakeQuantize)]
    assert len(fakes) >= 6
    for fake in fakes:
        scale, zero_point = fake.calculate_qparams()
        assert torch.allclose(fake.scale, scale) and torch.equal(fake.zero_point, zero_point)
