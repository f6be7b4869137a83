"""ONNX export (issue 14): checker-valid graphs whose onnxruntime predictions equal PyTorch's on real MNIST,
the paper's sign(0) = +1, k-bit activations (exact arithmetic and Q/DQ), clear errors, torch.onnx.export."""

import re

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from lowbit.cli import main  # noqa: E402
from lowbit.errors import CheckpointError  # noqa: E402
from lowbit.export.onnx import export_onnx_model  # noqa: E402
from lowbit.nn.layers import QuantAct, QuantLinear  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_CNN = ["--set", "model.channels=8,M,16,M", "--set", "model.fc=64"]
RUNS = {
    "mlp": ["mnist-mlp", "--set", "model.hidden=128", "--set", "model.depth=2"],
    "cnn": ["mnist-cnn", *SMALL_CNN],
    "w2a2": ["mnist-cnn-qnn", *SMALL_CNN, "--set", "model.weight_quantizer=sawb:bits=2",
             "--set", "model.act_quantizer=pact:bits=2,alpha=3"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """Three small models trained briefly (30 steps) on real MNIST: W1A1 MLP, W1A1 ConvNet, W2A2 PACT+SAWB."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, args in RUNS.items():
        d = root / name
        assert main(["train", *args, "--epochs", "1", "--data-dir", str(shared_data), "--out", str(d),
                     "--set", "train_subset=3000", "--set", "test_subset=500", "--no-progress"]) == 0
        out[name] = d
    return out


@pytest.fixture(scope="module")
def mnist_test(shared_data):
    from lowbit.data import load_dataset

    return load_dataset("mnist", "test", data_dir=shared_data)


def _run(path, x, batch=2000):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"pixels": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _torch(checkpoint, x):
    import lowbit

    model = lowbit.load_checkpoint(checkpoint).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_onnxruntime_equals_pytorch_on_all_10000_test_images(trained, mnist_test, name):
    ck, path = trained[name] / "checkpoint.pt", trained[name] / "model.onnx"
    assert main(["export", str(ck), "-o", str(path)]) == 0
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert "Sign" not in ops  # the paper's sign is Where(x >= 0, 1, -1): ONNX's Sign maps 0 to 0
    assert ("Where" in ops) == (name != "w2a2") and ("Floor" in ops) == (name == "w2a2")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = mnist_test.images.astype(np.float32)
    ref, out = _torch(ck, x), _run(path, x)
    assert out.shape == (10000, 10)
    assert np.array_equal(out.argmax(1), ref.argmax(1))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
    # the weights are constants with their quantized values: 2 (binary) or 4 (2-bit SAWB) distinct levels
    weights = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer
               if re.fullmatch(r"weight(_t)?_\d+", t.name)]
    assert weights and all(len(np.unique(w)) <= (4 if name == "w2a2" else 2) for w in weights)
    # dynamic batch: one image at a time gives the same logits
    np.testing.assert_allclose(_run(path, x[:3], batch=1), out[:3], rtol=1e-6, atol=1e-6)


def _ort_runs(proto) -> bool:
    try:
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return True
    except Exception:  # noqa: BLE001 - an onnxruntime without int2 kernels refuses the model
        return False


def _initializer_types(proto, prefix):
    return {t.data_type for t in proto.graph.initializer if t.name.startswith(prefix)}


@pytest.mark.parametrize("int2", ["auto", "no"])
def test_w2a2_qdq_activations_and_weights(trained, mnist_test, tmp_path, int2):
    """--onnx-activations qdq --onnx-weights qdq: PACT 2-bit activations as QuantizeLinear/DequantizeLinear
    pairs in uint2 (where the installed onnx has it; uint4 with --onnx-int2 no), SAWB 2-bit weights as int4
    odd codes +-1, +-3 and a DequantizeLinear; predictions equal PyTorch's (up to ties and last-bit levels)."""
    from lowbit.export.onnx import INT2_OPSET, int2_available

    use_int2 = int2 == "auto" and int2_available()
    ck = trained["w2a2"] / "checkpoint.pt"
    path = tmp_path / "model.bin"
    assert main(["export", str(ck), "-o", str(path), "--format", "onnx", "--onnx-activations", "qdq",
                 "--onnx-weights", "qdq", "--onnx-int2", int2]) == 0
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == (INT2_OPSET if use_int2 else 21)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") == ops.count("QuantizeLinear") + 4
    T = onnx.TensorProto
    # activation zero points are uint2/uint4; weight zero points (int4) sit beside their int4 codes
    assert _initializer_types(proto, "weight") == {T.FLOAT, T.INT4}  # scales, sums (float) and codes
    zp_types = _initializer_types(proto, "zero_point")
    assert zp_types == {T.UINT2 if use_int2 else T.UINT4, T.INT4}
    codes = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if "_codes" in t.name]
    assert len(codes) == 4 and all(set(np.unique(c)) <= {-3, -1, 1, 3} for c in codes)
    x = mnist_test.images[:2000].astype(np.float32)
    ref = _torch(ck, x)
    if _ort_runs(proto):
        out = _run(path, x)
    else:  # an onnxruntime without int2 kernels: ONNX's reference evaluator runs the graph
        from onnx.reference import ReferenceEvaluator

        x = x[:200]
        ref, out = ref[:200], ReferenceEvaluator(proto).run(None, {"pixels": x})[0]
    # not bit-exact: QuantizeLinear divides by the scale and rounds ties to even, and DequantizeLinear's
    # code * scale can differ from PyTorch's SAWB level in the last bit, so activations at near-ties may take
    # the neighbouring level (a few in a thousand images, depending on the trained model and its threads);
    # the default export (levels as constants) is the exact one
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_binary_weights_as_int2_codes(trained, mnist_test, tmp_path):
    """A W1A1 ConvNet's binary weights as int2 codes +-1 (scale 1, exact) where onnx has int2: onnxruntime
    (or the reference evaluator) gives PyTorch's logits."""
    from lowbit.export.onnx import export_onnx_checkpoint, int2_available

    if not int2_available():
        pytest.skip(f"onnx {onnx.__version__} has no int2 (needs onnx >= 1.20)")
    ck = trained["cnn"] / "checkpoint.pt"
    export_onnx_checkpoint(ck, tmp_path / "m.onnx", weights="qdq")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    codes = [t for t in proto.graph.initializer if "_codes" in t.name]
    assert codes and all(t.data_type == onnx.TensorProto.INT2 for t in codes)
    assert all(set(np.unique(onnx.numpy_helper.to_array(t))) == {-1, 1} for t in codes)
    x = mnist_test.images[:500].astype(np.float32)
    if _ort_runs(proto):
        out = _run(tmp_path / "m.onnx", x)
    else:
        from onnx.reference import ReferenceEvaluator

        x = x[:50]
        out = ReferenceEvaluator(proto).run(None, {"pixels": x})[0]
    np.testing.assert_allclose(out, _torch(ck, x), rtol=1e-5, atol=1e-4)


def test_int2_when_onnx_lacks_it_is_a_clear_error(monkeypatch):
    import lowbit.export.onnx as ex

    monkeypatch.setattr(ex, "int2_available", lambda: False)
    with pytest.raises(CheckpointError, match=r"int2 Q/DQ needs onnx >= 1.20.*--onnx-int2 no"):
        export_onnx_model(nn.Sequential(QuantAct("pact:bits=2")), [4], activations="qdq", int2=True)
    proto = export_onnx_model(nn.Sequential(QuantAct("pact:bits=2")), [4], activations="qdq")  # auto: uint4
    assert _initializer_types(proto, "zero_point") == {onnx.TensorProto.UINT4}


def test_sign_of_zero_is_plus_one_and_kbit_levels_are_exact():
    x = np.array([[0.0, -0.0, 1e-30, -1e-30, 2.0, -3.0, 0.5, 0.49999997]], dtype=np.float32)
    for spec in ("ste_sign", "linear:bits=2", "linear:bits=3,mode=unsigned", "pact:bits=2,alpha=1.7"):
        model = nn.Sequential(QuantAct(spec)).eval()
        proto = export_onnx_model(model, [8])
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, {"pixels": x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert np.array_equal(out, ref), spec
    assert np.array_equal(out[0, :2], [0.0, 0.0])
    model = nn.Sequential(QuantAct("ste_sign")).eval()
    sess = ort.InferenceSession(export_onnx_model(model, [8]).SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"pixels": x})[0].tolist() == [[1, 1, 1, -1, 1, -1, 1, 1]]


def test_module_without_onnx_form_is_a_clear_error():
    with pytest.raises(CheckpointError, match=r"layer 1 \(GELU\).*no ONNX form"):
        export_onnx_model(nn.Sequential(nn.Flatten(), nn.GELU()), [4])
    with pytest.raises(CheckpointError, match=r"quantizer 'log' has no ONNX form"):
        export_onnx_model(nn.Sequential(QuantLinear(4, 3, bias=False), QuantAct("log:bits=3")), [4])


def test_torch_onnx_export_of_sawb_pact_modules():
    """PyTorch's own exporter (dynamo) handles lowbit's modules: SAWB's scale reduces over explicit dims."""
    pytest.importorskip("onnxscript")
    from lowbit.models.image import convnet

    torch.manual_seed(0)
    model = convnet(in_shape=(1, 12, 12), channels=(4, "M"), fc=(8,), weight_quantizer="sawb:bits=2",
                    act_quantizer="pact:bits=2,alpha=3").eval()
    x = torch.rand(3, 1, 12, 12).mul(255).floor()
    prog = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    sess = ort.InferenceSession(prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    xb = torch.rand(5, 1, 12, 12).mul(255).floor()
    out = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(xb).numpy(), rtol=1e-5, atol=1e-5)


def _qonnx_run(path, x, batch=2000):
    """Execute a QONNX file with the qonnx package's executor (it needs a fixed batch size)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    mw = ModelWrapper(str(path))
    for t in list(mw.graph.input) + list(mw.graph.output):
        t.type.tensor_type.shape.dim[0].dim_value = batch
    mw = mw.transform(InferShapes())
    return np.concatenate([execute_onnx(mw, {"pixels": x[i:i + batch]})["logits"] for i in range(0, len(x), batch)])


@pytest.mark.parametrize("name", sorted(RUNS))
def test_qonnx_executor_equals_pytorch_on_all_10000_test_images(trained, mnist_test, name, tmp_path):
    pytest.importorskip("qonnx")
    ck, path = trained[name] / "checkpoint.pt", tmp_path / "model.onnx"
    assert main(["export", str(ck), "-o", str(path), "--format", "qonnx"]) == 0
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    custom = {n.op_type for n in proto.graph.node if n.domain == "qonnx.custom_op.general"}
    assert custom == ({"Quant"} if name == "w2a2" else {"Quant", "BipolarQuant"})  # Quant: the 8-bit pixel input
    assert "Where" not in {n.op_type for n in proto.graph.node}
    x = mnist_test.images.astype(np.float32)
    ref, out = _torch(ck, x), _qonnx_run(path, x)
    assert np.array_equal(out.argmax(1), ref.argmax(1))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_qonnx_quantizers_match_pytorch_levels(tmp_path):
    """Each QONNX activation quantization, run by qonnx, gives PyTorch's levels (sign(0) = +1 included)."""
    pytest.importorskip("qonnx")
    from lowbit.export.onnx import export_qonnx_model

    torch.manual_seed(0)
    x = torch.cat([torch.randn(63, 8) * 2, torch.zeros(1, 8)]).numpy()
    for i, spec in enumerate(("ste_sign", "linear:bits=2", "linear:bits=3,mode=unsigned", "pact:bits=2,alpha=1.7",
                              "pact:bits=4")):
        model = nn.Sequential(QuantAct(spec)).eval()
        proto = export_qonnx_model(model, [8])
        # drop the graph's 8-bit pixel Quant so the quantizer sees real values of both signs
        first = proto.graph.node[0]
        assert first.op_type == "Quant" and first.input[0] == "pixels"
        for node in proto.graph.node[1:]:
            node.input[:] = ["pixels" if t == first.output[0] else t for t in node.input]
        proto.graph.node.remove(first)
        path = tmp_path / f"q{i}.onnx"
        onnx.save(proto, str(path))
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(_qonnx_run(path, x, batch=64), ref, rtol=1e-6, atol=1e-6, err_msg=spec)
    with pytest.raises(CheckpointError, match="quantizer 'log' has no QONNX form"):
        export_qonnx_model(nn.Sequential(QuantAct("log:bits=3")), [4])
