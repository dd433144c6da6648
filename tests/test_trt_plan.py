"""TensorRT plan bookkeeping without TensorRT: batch parsing, profile choice, plan names,
staleness and its one-line messages, the card entry written by the exporter."""

import json
import re
import shutil

import pytest

from stemlink.engine import trt_plan
from stemlink.engine.card import load_card
from stemlink.engine.errors import EngineError
from stemlink.engine.trt_plan import HostFacts

H100 = HostFacts("10.8.0", "NVIDIA H100 80GB HBM3", "9.0")


def test_parse_batches():
    assert trt_plan.parse_batches("32,1,8,8") == [1, 8, 32]
    assert trt_plan.parse_batches(" 1, 256 ") == [1, 256]
    for bad, msg in (("1,x", "sizes like"), ("", "at least one"), ("0,4", "within"),
                     ("2000", "within")):
        with pytest.raises(EngineError, match=msg):
            trt_plan.parse_batches(bad)


def test_profile_choice_prefers_exact_then_smallest_larger():
    profiles = [1, 8, 32]
    assert trt_plan.choose_profile(profiles, 1) == 0
    assert trt_plan.choose_profile(profiles, 8) == 1
    assert trt_plan.choose_profile(profiles, 9) == 2  # padded to 32
    assert trt_plan.choose_profile([32, 8], 5) == 1  # order in the plan, not sorted
    with pytest.raises(EngineError, match=r"no TensorRT profile holds batch 33 .*--batch"):
        trt_plan.choose_profile(profiles, 33)


def test_plan_file_names_the_gpu_and_version():
    name = trt_plan.plan_file("model.onnx", "fp16", H100)
    assert name == "engines/model-fp16-nvidia-h100-80gb-hbm3-sm90-trt10.8.0.plan"
    assert trt_plan.fp16_onnx_name("model.onnx") == "model-fp16.onnx"
    with pytest.raises(EngineError, match="precision"):
        trt_plan.plan_file("model.onnx", "int4", H100)


@pytest.fixture
def built(tmp_path, model_dir):
    """A model folder with a (fake) plan file and a matching card entry for H100."""
    for f in ("model.json", "model.onnx", "offline.onnx"):
        shutil.copy(model_dir / f, tmp_path / f)
    rel = trt_plan.plan_file("model.onnx", "fp32", H100)
    (tmp_path / rel).parent.mkdir()
    (tmp_path / rel).write_bytes(b"plan bytes")
    entry = {"file": rel, "plan_sha256": trt_plan.sha256(tmp_path / rel),
             "graph": "streaming", "precision": "fp32", "onnx": "model.onnx",
             "onnx_sha256": trt_plan.sha256(tmp_path / "model.onnx"), "profiles": [1, 8],
             "tensorrt": H100.tensorrt, "gpu": H100.gpu, "compute_capability": "9.0"}
    return tmp_path, entry


def test_a_current_plan_has_no_problem(built):
    folder, entry = built
    assert trt_plan.plan_problem(entry, H100, folder) is None
    assert trt_plan.find_plan([entry], "fp32", "streaming", H100, folder) is entry


def _then(action, value):
    action()
    return value


@pytest.mark.parametrize("change,message", [
    (lambda f, e, h: (e, HostFacts("10.9.1", h.gpu, h.compute_capability)),
     r"built with TensorRT 10\.8\.0, this host has 10\.9\.1; rebuild it: stemlink export"),
    (lambda f, e, h: (e, HostFacts(h.tensorrt, "NVIDIA A100-SXM4-80GB", "8.0")),
     r"built for NVIDIA H100 80GB HBM3 \(sm 9\.0\), this host has NVIDIA A100.*\(sm 8\.0\)"),
    (lambda f, e, h: (_then((f / e["file"]).unlink, e), h), r"\.plan is missing"),
    (lambda f, e, h: (_then(lambda: (f / "model.onnx").write_bytes(b"other"), e), h),
     "changed since .* was built"),
    (lambda f, e, h: (_then(lambda: (f / e["file"]).write_bytes(b"tampered"), e), h),
     "does not match its recorded checksum"),
    (lambda f, e, h: ({k: v for k, v in e.items() if k != "gpu"}, h), "lacks 'gpu'"),
])
def test_stale_plans_are_refused_in_one_line(built, change, message):
    folder, entry = built
    entry, host = change(folder, entry, H100)
    problem = trt_plan.plan_problem(entry, host, folder)
    assert problem is not None and "\n" not in problem
    assert re.search(message, problem), problem
    with pytest.raises(EngineError, match="rebuild it"):
        trt_plan.find_plan([entry], "fp32", "streaming", host, folder)


def test_find_plan_without_entries_names_the_command(built):
    folder, entry = built
    with pytest.raises(EngineError, match=r"no fp16 TensorRT engine .* --fp16"):
        trt_plan.find_plan([entry], "fp16", "streaming", H100, folder)
    old = dict(entry, file="engines/old.plan", tensorrt="8.6.1")
    assert trt_plan.find_plan([old, entry], "fp32", "streaming", H100, folder) is entry


def test_engine_entry_is_written_into_the_card(built):
    from stemlink.export.tensorrt import write_engine_entry

    folder, entry = built
    before = json.loads((folder / "model.json").read_text())
    write_engine_entry(folder, entry)
    write_engine_entry(folder, dict(entry, profiles=[1, 8, 32]))  # replaces, not appends
    card = load_card(folder)
    assert len(card.engines) == 1 and card.engines[0]["profiles"] == [1, 8, 32]
    after = json.loads((folder / "model.json").read_text())
    assert {k: v for k, v in after.items() if k != "engines"} == \
        {k: v for k, v in before.items() if k != "engines"}


def test_tensorrt_backend_refuses_in_one_line_without_tensorrt(card, model_dir):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: tests/test_gpu.py runs the real backend")
    except ImportError:
        pass
    from stemlink.engine.backend import make_backend

    with pytest.raises(EngineError, match="TensorRT is not installed here .*--backend cuda"):
        make_backend("tensorrt", card, model_dir).activate()
