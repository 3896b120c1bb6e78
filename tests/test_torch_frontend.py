"""``compile(torch_module, example_inputs=...)``: torch.export + TVM's importer, the ONNX
fallback, pruning masks and BatchNorm folded, k-WTA found as from ONNX, the same plan."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import tvm_sparse  # noqa: E402
from tvm_sparse.errors import InputShapeError, ModelLoadError, UnsupportedModelError  # noqa: E402
from tvm_sparse.torch_frontend import fold_reparametrizations, import_torch  # noqa: E402
from tvm_sparse.zoo import cnn, gsc  # noqa: E402
from tvm_sparse.zoo.prune import export_onnx, seeded_images  # noqa: E402


def assert_module_output(out, ref: torch.Tensor) -> None:
    """Equal to the module's own output: rtol 1e-4, atol 1e-4 of the output's magnitude."""
    ref = ref.detach().numpy()
    scale = float(np.abs(ref).max()) or 1.0
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4 * scale)


def _plan(report) -> list[tuple]:
    return [(layer.op, layer.chosen, tuple(layer.epilogue)) for layer in report.layers]


def _pruned_mlp(sparsity: float = 0.9, *, remove: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(),
                        nn.Linear(32, 10))  # fmt: skip
    for layer in (net[0], net[2]):
        prune.l1_unstructured(layer, "weight", amount=sparsity)
        if remove:
            prune.remove(layer, "weight")
    return net.eval()


def test_pruning_masks_fold_into_weights_and_the_callers_module_is_untouched():
    net = _pruned_mlp(remove=False)
    folded_net, folded = fold_reparametrizations(net)
    assert folded == ["0.weight", "2.weight"]
    assert hasattr(net[0], "weight_orig") and not hasattr(folded_net[0], "weight_orig")
    assert float((folded_net[0].weight == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)
    x = torch.randn(4, 64)
    report = tvm_sparse.analyze(net, example_inputs=(x,))
    assert [round(layer.weight_density, 3) for layer in report.layers] == [0.1, 0.1, 1.0]
    assert [layer.name for layer in report.layers] == ["0", "2", "4"]
    module = tvm_sparse.compile(net, "llvm", example_inputs=(x,), measure=False)
    assert module.report.layers[0].chosen != "dense"
    assert_module_output(module.run(x), net(x))
    assert hasattr(net[0], "weight_orig")  # still the caller's pruned module


def test_parametrized_weights_fold_too():
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def __init__(self, mask: torch.Tensor):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    torch.manual_seed(1)
    layer = nn.Linear(32, 16)
    mask = (torch.rand(16, 32) < 0.2).float()
    parametrize.register_parametrization(layer, "weight", Mask(mask))
    x = torch.randn(2, 32)
    report = tvm_sparse.analyze(layer, example_inputs=(x,))
    assert report.layers[0].weight_nnz == int(mask.sum())
    module = tvm_sparse.compile(layer, "llvm", example_inputs=(x,), measure=False)
    assert_module_output(module.run(x), layer(x))
    assert parametrize.is_parametrized(layer, "weight")  # the caller's module keeps it


def test_a_module_in_training_mode_is_compiled_in_eval_mode(caplog):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5))
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 12, 12))  # running statistics that are not 0 / 1
    x = torch.randn(1, 3, 12, 12)
    with caplog.at_level(logging.INFO, logger="tvm_sparse"):
        module = tvm_sparse.compile(net, "llvm", example_inputs=(x,), measure=False)
    assert "eval mode" in caplog.text
    assert net.training  # the caller's module keeps its mode
    assert module.report.layers[0].epilogue == ["bias", "relu"]  # BatchNorm folded
    assert_module_output(module.run(x), net.eval()(x))


@pytest.mark.slow
def test_resnet18_equals_the_module_and_picks_the_onnx_plan(tmp_path):
    net = cnn.build("resnet18", sparsity=0.9, image=32)
    x = torch.from_numpy(seeded_images(1, 32, 0))
    from_torch = tvm_sparse.compile(net, "llvm", example_inputs=(x,), measure=False)
    assert_module_output(from_torch.run(x), net(x))
    path = export_onnx(net, (x,), tmp_path / "r18.onnx", ["input"], ["output"])
    from_onnx = tvm_sparse.compile(path, "llvm", measure=False)
    assert _plan(from_torch.report) == _plan(from_onnx.report)
    names = [layer.name for layer in from_torch.report.layers]
    assert names[:2] == ["conv1", "layer1.0.conv1"] and names[-1] == "fc"
    assert "layer2.0.downsample.0" in names


@pytest.mark.slow
def test_two_layer_bert_equals_the_module_and_picks_the_onnx_plan(tmp_path):
    pytest.importorskip("transformers")
    from tvm_sparse.models_bert import TINY_BERT, pruned_bert_module, tiny_pruned_bert_onnx

    encoder, args = pruned_bert_module(TINY_BERT, sparsity=0.9)
    args = (args[0], args[1].clone())
    args[1][:, -5:] = 0  # a padding mask that masks
    from_torch = tvm_sparse.compile(encoder, "llvm", example_inputs=args, measure=False)
    assert_module_output(from_torch.run(*args), encoder(*args))
    from_onnx = tvm_sparse.compile(tiny_pruned_bert_onnx(tmp_path / "b.onnx"), "llvm",
                                   measure=False)  # fmt: skip
    assert _plan(from_torch.report) == _plan(from_onnx.report)
    ffn_in = from_torch.report.layers[4]
    assert ffn_in.name == "bert.encoder.layer.0.intermediate.dense"
    assert ffn_in.epilogue == ["bias", "gelu"]


@pytest.mark.parametrize("member", sorted(gsc._MEMBERS))
def test_every_nupic_kwta_form_is_found_as_from_onnx(member, tmp_path):
    """nupic.torch's kthvalue / unsorted-topk forms need converters TVM's importer lacks."""
    net = gsc.build(member, sparsity=0.9)
    images = gsc._images(1, 0)
    report = tvm_sparse.analyze(net, example_inputs=(torch.from_numpy(images),))
    onnx_report = tvm_sparse.analyze(gsc.export_torch(net, images, str(tmp_path / "g.onnx")))
    assert [layer.name for layer in report.layers] == ["cnn1", "cnn2", "linear", "output"]
    assert [layer.activation for layer in report.layers] == [
        layer.activation for layer in onnx_report.layers
    ]
    assert all(layer.activation["kind"] == "kwta" for layer in report.layers[1:])


@pytest.mark.parametrize("member", ["gsc_kwta_feature_boost", "gsc_kwta_topk_scatter"])
def test_gsc_from_torch_equals_the_module(member):
    net = gsc.build(member, sparsity=0.9)
    x = torch.from_numpy(gsc._images(1, 3))
    module = tvm_sparse.compile(net, "llvm", example_inputs=(x,), measure=False)
    assert any(layer.chosen != "dense" for layer in module.report.layers)
    assert_module_output(module.run(x), net(x))


class _DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.export refuses it, the ONNX tracer takes
    the branch the example input goes down."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        if x.sum() > 0:
            return torch.relu(self.fc(x))
        return self.fc(x)


def test_what_torch_export_refuses_goes_through_onnx_with_a_warning(caplog):
    net = _DataDependent().eval()
    x = torch.rand(1, 16)  # positive: the relu branch
    with caplog.at_level(logging.WARNING, logger="tvm_sparse"):
        module = tvm_sparse.compile(net, "llvm", example_inputs=(x,), measure=False)
    assert "exporting through ONNX instead" in caplog.text
    assert_module_output(module.run(x), net(x))
    with pytest.raises(UnsupportedModelError, match="torch.export"):
        import_torch(net, (x,), via="export")


def test_bad_torch_calls_name_the_problem():
    net = _pruned_mlp(remove=True)
    with pytest.raises(ModelLoadError, match="example_inputs"):
        tvm_sparse.compile(net, "llvm")
    with pytest.raises(InputShapeError, match="example_inputs fix the shapes"):
        tvm_sparse.analyze(net, "input:1x64", example_inputs=(torch.randn(1, 64),))
    with pytest.raises(ModelLoadError, match="example_inputs is for torch modules"):
        tvm_sparse.analyze(torch.nn.Linear(2, 2).weight, example_inputs=(1,))


def test_kwta_written_with_where_and_zeros_like_is_found():
    """torch.export writes ``zeros_like`` as ``full_like(x, 0)`` (ONNX: a constant)."""

    class KWinners(nn.Module):
        def __init__(self, k: int):
            super().__init__()
            self.k = k

        def forward(self, x):
            kth = torch.topk(x, self.k, dim=1).values[:, self.k - 1 :]
            return torch.where(x >= kth, x, torch.zeros_like(x))

    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(64, 256), KWinners(16), nn.Linear(256, 8)).eval()
    x = torch.randn(1, 64)
    module = tvm_sparse.compile(net, "llvm", example_inputs=(x,), measure=False)
    act = module.report.layers[1].activation
    assert act["kind"] == "kwta" and act["k"] == 16
    assert_module_output(module.run(x), net(x))


@pytest.mark.slow
def test_a_held_out_topology_from_torch_equals_the_module():
    """EfficientNet-B0 (SiLU, squeeze-excitation, depthwise 5x5): written for the zoo's ONNX
    files, never tuned through the torch path."""
    from tvm_sparse.zoo import classic

    net = classic.build("efficientnet_b0", sparsity=0.9, image=32, width=0.25)
    x = torch.from_numpy(seeded_images(1, 32, 0))
    module = tvm_sparse.compile(net, "llvm", example_inputs=(x,), measure=False)
    assert_module_output(module.run(x), net(x))
    assert "silu" in module.report.layers[0].epilogue
