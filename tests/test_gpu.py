"""GPU backends. The pure parts (ONNX Runtime CUDA options, the provider check and its
messages, the FP16 graph and its fidelity on the CPU) run everywhere; the parts that need
a GPU skip with the reason where there is none, and run the real model where there is."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from stemlink.engine.cuda_backend import (
    CUDA_EP,
    cuda_provider_options,
    cuda_session_config,
    provider_problem,
)
from stemlink.engine.cudart import gpu_present, runtime_candidates
from stemlink.engine.errors import EngineError

NO_GPU = gpu_present()


def _cuda_ep_reason() -> str | None:
    if NO_GPU:
        return NO_GPU
    import onnxruntime as ort

    return provider_problem(ort.get_available_providers())


NO_CUDA_EP = _cuda_ep_reason()


# ------------------------------------------------------------------ pure parts
def test_cuda_options():
    o = cuda_provider_options(1, cuda_graph=True)
    assert o["device_id"] == "1" and o["enable_cuda_graph"] == "1"
    assert all(isinstance(v, str) for v in o.values())  # ORT takes strings only
    assert cuda_provider_options(0, cuda_graph=False)["enable_cuda_graph"] == "0"
    assert cuda_session_config() == {"session.disable_cpu_ep_fallback": "1"}
    with pytest.raises(EngineError, match="device id"):
        cuda_provider_options(-1)


def test_provider_problem_messages():
    assert provider_problem([CUDA_EP, "CPUExecutionProvider"]) is None
    assert provider_problem([CUDA_EP, "CPUExecutionProvider"],
                            [CUDA_EP, "CPUExecutionProvider"]) is None
    missing = provider_problem(["CPUExecutionProvider"])
    assert "not in this onnxruntime" in missing and "stemlink[gpu]" in missing
    fell_back = provider_problem([CUDA_EP, "CPUExecutionProvider"], ["CPUExecutionProvider"])
    assert "did not activate CUDAExecutionProvider" in fell_back
    assert "active: CPUExecutionProvider" in fell_back
    for m in (missing, fell_back):
        assert "\n" not in m


def test_runtime_candidates_look_in_the_nvidia_wheels(tmp_path):
    lib = tmp_path / "nvidia" / "cuda_runtime" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart.so.13").write_bytes(b"")
    c = runtime_candidates([str(tmp_path)])
    assert c[0] == "libcudart.so.13" and str(lib / "libcudart.so.13") in c


# ------------------------------------------------------------------ FP16 graph (CPU)
@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory, model_dir):
    from stemlink.export.fp16 import convert_fp16

    folder = tmp_path_factory.mktemp("fp16")
    for f in ("model.json", "model.onnx", "offline.onnx"):
        shutil.copy(model_dir / f, folder / f)
    info = convert_fp16(folder / "model.onnx", folder / "model-fp16.onnx")
    return folder, info


def test_fp16_graph_keeps_io_and_mask_ratio_fp32(fp16_model):
    import onnx
    from onnx import TensorProto

    folder, info = fp16_model
    m = onnx.load(str(folder / "model-fp16.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    ops = {n.name: n.op_type for n in m.graph.node}
    head = set(info["fp32_nodes"])
    assert {ops[n] for n in head} >= {"Div", "ReduceSum", "Mul", "Add"}
    assert not {ops[n] for n in head} & {"Conv", "ConvTranspose", "BatchNormalization"}
    weights = {t.name: t.data_type for t in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) == 26
    assert all(weights[n.input[1]] == TensorProto.FLOAT16 for n in convs)


def test_fp16_graph_fidelity_on_the_cpu(fp16_model, example):
    """Streamed stems of the FP16 graph against the FP32 graph, real model, real music
    and a synthetic song: >= 30 dB, the issue's floor for FP16 on a GPU."""
    from stemlink.bench import precision as pr
    from stemlink.engine.backend import OrtBackend
    from stemlink.engine.card import load_card

    folder, _ = fp16_model
    card = load_card(folder)
    a, b = OrtBackend(card, folder), OrtBackend(card, folder, onnx_file="model-fp16.onnx")
    a.activate()
    b.activate()
    try:
        for name, x in pr.audio_set(4.0, card).items():
            s = pr.stem_sdr(card, pr.streamed(card, a, x), pr.streamed(card, b, x))
            assert min(s.values()) >= 30.0, (name, s)
        b.inputs[...] = 0.0  # silence: the FP32 epsilon keeps 0/0 away, masks are 1/S
        np.testing.assert_allclose(b.infer(), 0.5, atol=1e-6)
    finally:
        a.deactivate()
        b.deactivate()


def test_fp16_refuses_a_graph_without_a_mask_ratio(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from stemlink.export.errors import ExportError
    from stemlink.export.fp16 import convert_fp16

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g), str(tmp_path / "m.onnx"))
    with pytest.raises(ExportError, match="no FP32 mask-ratio head"):
        convert_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx")


# ------------------------------------------------------------------ commands
@pytest.mark.skipif(NO_GPU is None, reason="this host has a GPU: bench gpu runs for real")
def test_bench_gpu_without_a_gpu_says_so_and_exits_2(model_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "stemlink", "bench", "gpu", "--model",
                        str(model_dir), "--out", str(tmp_path / "g")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemlink: error: bench gpu needs an "
                                                   "NVIDIA GPU: ")
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------------ on a GPU
@pytest.fixture
def cuda_engine(card, model_dir):
    from stemlink.engine.backend import make_backend

    be = make_backend("cuda", card, model_dir, batch=2)
    be.activate()
    yield be
    be.deactivate()


@pytest.mark.skipif(NO_CUDA_EP is not None, reason=f"needs CUDA: {NO_CUDA_EP}")
def test_cuda_backend_matches_the_cpu_and_reuses_its_buffers(cuda_engine, engine):
    rng = np.random.default_rng(0)
    inp, out = cuda_engine.inputs, cuda_engine.outputs
    cuda_engine.inputs[...] = rng.random(inp.shape, np.float32) * 20
    got = cuda_engine.infer()
    assert got is out and cuda_engine.inputs is inp
    for slot in range(2):
        engine.backend.inputs[0] = cuda_engine.inputs[slot]
        want = engine.backend.infer()[0]
        np.testing.assert_allclose(got[slot], want, atol=1e-3)


@pytest.mark.skipif(NO_CUDA_EP is not None, reason=f"needs CUDA: {NO_CUDA_EP}")
def test_cuda_shifted_upload_equals_full_upload(cuda_engine):
    rng = np.random.default_rng(1)
    tape = rng.random((2, 2, 64 + 4, 1024), np.float32) * 20
    cuda_engine.inputs[...] = tape[:, :, :64]
    cuda_engine.infer()
    for t in range(1, 5):
        cuda_engine.inputs[...] = tape[:, :, t:t + 64]
        shifted = cuda_engine.infer(new_frames=1).copy()
        full = cuda_engine.infer().copy()
        np.testing.assert_array_equal(shifted, full)


@pytest.mark.skipif(NO_CUDA_EP is not None, reason=f"needs CUDA: {NO_CUDA_EP}")
def test_cuda_streams_like_the_cpu(card, model_dir, example, engine):
    """GPU vs CPU output SDR on real music: >= 40 dB (FP32)."""
    from stemlink.bench import precision as pr
    from stemlink.engine.backend import make_backend

    x = example[0][:, :4 * card.sample_rate]
    want = pr.streamed(card, engine.backend, x)
    be = make_backend("cuda", card, model_dir)
    be.activate()
    try:
        got = pr.streamed(card, be, x)
    finally:
        be.deactivate()
    assert min(pr.stem_sdr(card, want, got).values()) >= 40.0
