import json

import numpy as np
import pytest

from stemlink.engine.backend import OrtBackend, make_backend
from stemlink.engine.card import card_from_dict, load_card
from stemlink.engine.errors import EngineError, ModelCardError


def test_exported_card_describes_the_model(card):
    assert card.stems == ["vocals", "accompaniment"]
    assert (card.sample_rate, card.n_fft, card.hop, card.bins) == (44100, 4096, 1024, 1024)
    assert card.streaming.inputs[0].shape == ["batch", 2, 64, 1024]
    assert card.streaming.outputs[0].shape == ["batch", 2, 2, 64, 1024]
    assert all(len(c["sha256"]) == 64 for c in card.source["checkpoints"])
    assert card.exporter["verified_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("stems"), "lacks stems"),
    (lambda d: d.update(hop=1000), "hop 1000"),
    (lambda d: d.update(n_fft=4000), "power of two"),
    (lambda d: d.update(stems=["a", "a"]), "distinct"),
    (lambda d: d.update(window_frames=128), "window_frames"),
    (lambda d: d.update(representation="telepathy"), "unknown"),
    (lambda d: d.update(sample_rate="fast"), "wrong type"),
    (lambda d: d["streaming"]["inputs"][0].update(shape=["batch", 2, 64, 999]), "input shape"),
])
def test_inconsistent_cards_are_refused(model_dir, mutate, message):
    d = json.loads((model_dir / "model.json").read_text())
    mutate(d)
    with pytest.raises(ModelCardError, match=message):
        card_from_dict(d)


def test_missing_and_corrupt_folders(tmp_path):
    with pytest.raises(ModelCardError, match="does not exist"):
        load_card(tmp_path / "nope")
    with pytest.raises(ModelCardError, match="missing"):
        load_card(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelCardError, match="not readable JSON"):
        load_card(tmp_path)


def test_corrupt_onnx_is_one_clear_error(broken_model):
    card = load_card(broken_model)
    with pytest.raises(EngineError, match="cannot load"):
        make_backend("cpu", card, broken_model).activate()


def test_backend_reuses_its_buffers(card, model_dir):
    be = OrtBackend(card, model_dir)
    be.activate()
    try:
        inp, out = be.inputs, be.outputs
        be.inputs[...] = np.random.default_rng(0).random(be.inputs.shape, np.float32)
        r1 = be.infer()
        first = r1.copy()
        be.inputs[...] = 0.0
        r2 = be.infer()
        assert r1 is out and r2 is out and be.inputs is inp
        assert not np.allclose(first, r2)  # results land in the same, bound buffer
        # the two ratio masks sum to 1 everywhere
        np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-5)
    finally:
        be.deactivate()
    with pytest.raises(EngineError, match="not active"):
        be.infer()


def test_cuda_backend_refuses_clearly_or_works(card, model_dir):
    """Where the CUDA provider (or a GPU) is absent, one clear line naming the fix; where
    it is present, a working backend whose masks are valid ratio masks."""
    import onnxruntime as ort

    from stemlink.engine.cuda_backend import provider_problem
    from stemlink.engine.cudart import gpu_present

    be = make_backend("cuda", card, model_dir)
    problem = provider_problem(ort.get_available_providers()) or gpu_present()
    if problem:
        with pytest.raises(EngineError) as e:
            be.activate()
        msg = str(e.value)
        assert "\n" not in msg and ("CUDAExecutionProvider" in msg or "GPU" in msg
                                     or "CUDA" in msg)
        return
    be.activate()
    try:
        be.inputs[...] = np.random.default_rng(0).random(be.inputs.shape, np.float32)
        out = be.infer()
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)
    finally:
        be.deactivate()


def test_unknown_backend_says_so(card, model_dir):
    with pytest.raises(EngineError, match="unknown backend"):
        make_backend("abacus", card, model_dir)
