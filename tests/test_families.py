"""HTDemucs and MDX-Net through the same card, engine, server and clients.

No pretrained weights of these families can be downloaded here, so the models are built
locally with real classes and real file formats: an HTDemucs from the `demucs` package
with random weights (saved as the official `.th` package and as {state, kwargs}), and
ONNX files with the UVR/MDX-Net tensor layout whose answers are known (identity, zeros).
"""

import asyncio
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf

from stemlink.engine import families
from stemlink.engine.card import ModelCardError, card_from_dict, load_card
from stemlink.engine.session import open_engine
from stemlink.separate import separate_file, stream_array
from tests.conftest import sdr

pytest.importorskip("demucs")
torch = pytest.importorskip("torch")

FOUR = ["drums", "bass", "other", "vocals"]
FIVE = ["drums", "bass", "other", "vocals", "piano"]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "stemlink", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("stemlink: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def ht4(tmp_path_factory):
    """A 4-stem HTDemucs (random weights), `.th` package, exported by the CLI."""
    d = tmp_path_factory.mktemp("ht4")
    r = run("testmodel", "htdemucs", "--out", d / "ht4.th", "--sources", ",".join(FOUR),
            "--segment-seconds", "1.0")
    assert r.returncode == 0, r.stderr
    r = run("export", "htdemucs", "--checkpoint", d / "ht4.th", "--out", d / "model")
    assert r.returncode == 0, r.stderr
    assert "max |ORT - PyTorch| / peak" in r.stderr
    return d / "ht4.th", d / "model"


@pytest.fixture(scope="module")
def ht5(tmp_path_factory):
    """A 5-stem HTDemucs saved as {state, kwargs} in half precision, 0.8 s segment."""
    from stemlink.export.htdemucs import export_htdemucs
    from stemlink.export.testmodels import random_htdemucs

    d = tmp_path_factory.mktemp("ht5")
    ckpt = random_htdemucs(d / "ht5.pt", FIVE, segment=1.0, seed=5, fmt="state", half=True)
    export_htdemucs(ckpt, d / "model", segment_seconds=0.8, say=lambda s: None)
    return ckpt, d / "model"


@pytest.fixture(scope="module")
def clip(example, tmp_path_factory):
    """4.3 s of the example (an odd length), as a float WAV."""
    x, sr = example
    x = x[:, sr:sr + int(4.3 * sr) + 17]
    p = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(p, x.T, sr, subtype="FLOAT")
    return p, x


def mdx_model(folder, kind, dim_f=3072, dim_t=256, n_fft=6144, stem="vocals"):
    from stemlink.export.mdx import import_mdx
    from stemlink.export.testmodels import mdx_onnx

    name = f"{kind}-{n_fft}-{dim_f}-{dim_t}"
    src = mdx_onnx(folder / f"{name}.onnx", kind, dim_f, dim_t)
    import_mdx(src, folder / name, n_fft=n_fft, dim_f=dim_f, dim_t=dim_t, stem=stem,
               say=lambda s: None)
    return folder / name


# --------------------------------------------------------------------------- transforms
def test_numpy_transforms_match_the_models_own_torch_code():
    from demucs.htdemucs import HTDemucs

    from stemlink.engine import segments

    m = HTDemucs(sources=["a", "b"], channels=4, depth=4, t_layers=1, t_heads=1).eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 30001)).astype(np.float32)
    z = m._magnitude(m._spec(torch.from_numpy(x)[None]))[0].numpy()
    got = segments.demucs_spec(x, 4096, 1024)
    assert got.shape == z.shape
    assert np.max(np.abs(got - z)) <= 1e-5 * np.max(np.abs(z))
    out = torch.from_numpy(rng.standard_normal((1, 2, 4, 2048, z.shape[-1])).astype(np.float32))
    ref = m._ispec(m._mask(None, out), 30001)[0].numpy()
    got = segments.demucs_ispec(out[0].numpy(), 4096, 1024, 30001)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
    # MDX: UVR's STFT class is torch.stft/istft with a periodic Hann, centred, hop 1024
    seg = 1024 * 63
    xm = torch.from_numpy(rng.standard_normal((2, seg)).astype(np.float32))
    win = torch.hann_window(6144)
    zc = torch.stft(xm, 6144, 1024, window=win, center=True, return_complex=True)
    ref = torch.view_as_real(zc).permute(0, 3, 1, 2).reshape(4, 3073, 64)[:, :3072].numpy()
    got = segments.mdx_spec(xm.numpy(), 6144, 1024, 3072)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
    back = torch.istft(zc, 6144, 1024, window=win, center=True).numpy()
    full = segments.mdx_spec(xm.numpy(), 6144, 1024, 3073)
    assert np.max(np.abs(segments.mdx_ispec(full, 6144, 1024, seg) - back)) <= 1e-5


# --------------------------------------------------------------------------- HTDemucs
def test_htdemucs_card_names_the_graph(ht4):
    card = load_card(ht4[1])
    assert card.representation == "hybrid" and card.stems == FOUR
    assert card.segment == 44100 and card.window_frames == 44 and card.bins == 2048
    assert [t.name for t in card.streaming.inputs] == ["mix", "spec"]
    assert [t.name for t in card.streaming.outputs] == ["time", "spec_out"]
    assert card.exporter["verified_max_rel_diff"] <= 1e-3


@pytest.mark.parametrize("which", ["ht4", "ht5"])
def test_htdemucs_offline_separate_matches_demucs_apply_model(which, request, clip, tmp_path):
    """`separate --offline` (numpy STFT + ONNX Runtime) against demucs' own
    apply_model(shifts=0, split=True, overlap=0.25) on the PyTorch model."""
    from demucs.apply import apply_model

    from stemlink.export.htdemucs import load_htdemucs

    ckpt, model = request.getfixturevalue(which)
    card = load_card(model)
    path, x = clip
    m = load_htdemucs(ckpt)
    m.segment = Fraction(card.segment, card.sample_rate)
    with torch.no_grad():
        ref = apply_model(m, torch.from_numpy(x)[None], shifts=0, split=True,
                          overlap=0.25)[0].numpy()
    r = separate_file(path, model, tmp_path, offline=True)
    assert list(r.files) == card.stems
    for i, s in enumerate(card.stems):
        y, sr = sf.read(r.files[s], always_2d=True)
        assert y.shape == (x.shape[1], 2)
        assert sdr(ref[i], y.T) >= 40.0, s


def test_htdemucs_whole_segment_streaming_equals_offline_sample_for_sample(ht4, clip):
    """Away from the file's end (where offline pads its last chunk with real audio on
    both sides and streaming cannot know the end), `quality` streaming computes the same
    chunks as the offline reference: equal to float precision once D is removed. One
    sample of misalignment would show as a large error."""
    _, x = clip
    eng = open_engine(ht4[1])
    try:
        ref = families.separate_offline(eng.card, eng.backend, x)
        sep = eng.separator(eng.config("quality"))
        assert sep.delay == eng.card.segment - 1
        y = stream_array(sep, x)
    finally:
        eng.close()
    seg, stride = eng.card.segment, sep.latency.stride
    interior = (x.shape[1] - seg) // stride * stride  # every chunk covering it is whole
    assert interior > 2 * seg
    scale = np.max(np.abs(ref))
    assert np.max(np.abs(y[..., :interior] - ref[..., :interior])) <= 1e-5 * scale
    shifted = np.max(np.abs(y[..., 1:interior] - ref[..., :interior - 1]))
    assert shifted > 1e-2 * scale


def test_htdemucs_state_dict_and_package_load_the_same_model(ht4, tmp_path):
    from stemlink.export.htdemucs import load_htdemucs
    from stemlink.export.testmodels import random_htdemucs

    a = load_htdemucs(ht4[0])
    b = load_htdemucs(random_htdemucs(tmp_path / "s.pt", FOUR, segment=1.0, fmt="state"))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_export_htdemucs_refuses_bad_input_with_one_line(ht4, tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint" * 10)
    assert_one_line_error(run("export", "htdemucs", "--checkpoint", bad, "--out",
                              tmp_path / "o"), "not a readable torch checkpoint")
    torch.save({"weights": [1, 2]}, tmp_path / "dict.th")
    assert_one_line_error(run("export", "htdemucs", "--checkpoint", tmp_path / "dict.th",
                              "--out", tmp_path / "o"), "neither a demucs .th package")
    assert_one_line_error(run("export", "htdemucs", "--checkpoint", ht4[0],
                              "--segment-seconds", "3", "--out", tmp_path / "o"),
                          "--segment-seconds")
    assert_one_line_error(run("export", "htdemucs", "--checkpoint", tmp_path / "none.th",
                              "--out", tmp_path / "o"), "does not exist")


def test_export_refuses_when_onnx_runtime_disagrees(ht4, tmp_path, monkeypatch):
    from stemlink.export import htdemucs
    from stemlink.export.errors import ExportError

    monkeypatch.setattr(htdemucs, "TOLERANCE", 0.0)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        htdemucs.export_htdemucs(ht4[0], tmp_path / "m", say=lambda s: None)
    assert not (tmp_path / "m" / "model.json").exists()


# --------------------------------------------------------------------------- MDX
@pytest.fixture(scope="module")
def mdx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mdx")


@pytest.fixture(scope="module")
def mdx_identity(mdx_dir):
    """The real UVR layout: n_fft 6144, dim_f 3072, dim_t 256 (a 5.9 s segment)."""
    return mdx_model(mdx_dir, "identity")


@pytest.fixture(scope="module")
def mdx_gain(mdx_dir):
    """0.5 x input on every bin (dim_f = n_fft/2 + 1), a short 0.72 s segment."""
    return mdx_model(mdx_dir, "gain", dim_f=3073, dim_t=32)


@pytest.mark.parametrize("offline,preset", [(True, None), (False, "quality"),
                                            (False, "monitor"), (False, "ultra")])
def test_mdx_identity_gives_back_the_mixture(mdx_identity, clip, tmp_path, offline, preset):
    model = mdx_identity
    path, x = clip
    r = separate_file(path, model, tmp_path, offline=offline, preset=preset)
    v = sf.read(r.files["vocals"], always_2d=True)[0].T
    rest = sf.read(r.files["instrumental"], always_2d=True)[0].T
    assert v.shape == x.shape and rest.shape == x.shape
    assert sdr(x, v) >= 30.0
    assert sdr(x, x - rest) >= 30.0  # the complement is (almost) silent


def test_mdx_n_fft_7680_reconstructs_although_hop_does_not_divide_it(mdx_dir, clip, tmp_path):
    """n_fft 7680 / hop 1024 = 7.5 frames per window: the iSTFT divides by the window
    envelope (as torch.istft does), so an identity model still returns the mixture."""
    model = mdx_model(mdx_dir, "identity", dim_f=3841, dim_t=64, n_fft=7680)
    path, x = clip
    for offline in (True, False):
        r = separate_file(path, model, tmp_path / str(offline), offline=offline)
        v = sf.read(r.files["vocals"], always_2d=True)[0].T
        assert sdr(x, v) >= 60.0


def test_mdx_zeros_gives_the_mixture_as_the_complement(mdx_dir, clip, tmp_path):
    model = mdx_model(mdx_dir, "zeros")
    path, x = clip
    for offline in (True, False):
        r = separate_file(path, model, tmp_path / str(offline), offline=offline)
        v = sf.read(r.files["vocals"], always_2d=True)[0].T
        rest = sf.read(r.files["instrumental"], always_2d=True)[0].T
        assert np.max(np.abs(v)) == 0.0
        assert sdr(x, rest) >= 30.0


@pytest.mark.parametrize("preset", ["quality", "balanced", "monitor", "ultra"])
def test_segment_streaming_delay_is_exact(mdx_gain, preset):
    """A linear model with a known answer (0.5 x input): an impulse comes out exactly D
    samples later at half height, in both stems, whatever the block sizes."""
    eng = open_engine(mdx_gain)
    try:
        sep = eng.separator(eng.config(preset))
        d = sep.delay
        assert d == sep.latency.segment - sep.latency.offset - 1
        n = 3 * eng.card.segment + d
        x = np.zeros((2, n), np.float32)
        at = eng.card.segment + 1234
        x[0, at] = 1.0
        x[1, at + 7] = -1.0
        rng = np.random.default_rng(3)
        out, i = [], 0
        while i < n:
            k = int(rng.integers(1, 3000))
            out.append(sep.process(x[:, i:i + k]).copy())
            i += k
        y = np.concatenate(out, axis=2)
    finally:
        eng.close()
    assert y.shape == (2, 2, n)
    assert int(np.argmax(np.abs(y[0, 0]))) == at + d
    assert int(np.argmax(np.abs(y[0, 1]))) == at + 7 + d
    assert abs(y[0, 0, at + d] - 0.5) < 1e-4 and abs(y[1, 0, at + d] - 0.5) < 1e-4
    assert np.max(np.abs(np.delete(y[0, 0], at + d))) < 1e-4


def test_import_mdx_refuses_mismatches_with_one_line(mdx_dir, tmp_path):
    from stemlink.export.testmodels import mdx_onnx

    src = mdx_onnx(tmp_path / "m.onnx", "identity", 2048, 256)
    base = ["import", "mdx", src, "--n-fft", "6144", "--stem", "vocals", "--out",
            tmp_path / "o"]
    assert_one_line_error(run(*base, "--dim-f", "2048", "--dim-t", "128"), "--dim-t 128")
    assert_one_line_error(run(*base, "--dim-f", "3072", "--dim-t", "256"), "--dim-f 3072")
    assert_one_line_error(run(*base, "--dim-f", "4000", "--dim-t", "256"), "--dim-f 4000")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07junk" * 50)
    assert_one_line_error(run("import", "mdx", junk, "--n-fft", "6144", "--dim-f", "2048",
                              "--dim-t", "256", "--stem", "vocals", "--out", tmp_path / "o"),
                          "junk.onnx")
    assert not (tmp_path / "o" / "model.json").exists()


# --------------------------------------------------------------------------- any stems
def _card_dict(stems, name="m"):
    g = {"file": "model.onnx", "frames": 32,
         "inputs": [{"name": "input", "shape": ["batch", 4, 2048, 32], "dtype": "float32"}],
         "outputs": [{"name": "output", "shape": ["batch", 4, 2048, 32], "dtype": "float32"}]}
    return {"name": name, "sample_rate": 44100, "channels": 2, "stems": stems,
            "representation": "complex-spectrogram", "n_fft": 6144, "hop": 1024,
            "window": "hann", "bins": 2048, "window_frames": 32, "segment": 1024 * 31,
            "streaming": g, "offline": g}


def test_card_refuses_stems_the_wire_cannot_carry():
    assert card_from_dict(_card_dict(["vocals", "instrumental"])).stems[1] == "instrumental"
    with pytest.raises(ModelCardError, match="1 to 16 distinct"):
        card_from_dict(_card_dict([f"s{i}" for i in range(17)]))
    with pytest.raises(ModelCardError, match="1 to 64 bytes"):
        card_from_dict(_card_dict(["v" * 65, "rest"]))
    # 16 names of 62 bytes: each fits, together they do not fit one ACCEPT datagram
    with pytest.raises(ModelCardError, match="ACCEPT"):
        card_from_dict(_card_dict([f"{i:02d}" + "x" * 60 for i in range(16)]))
    with pytest.raises(ModelCardError, match="stem names"):
        card_from_dict(_card_dict(["../vocals", "rest"]))


def test_monitor_mix_solos_or_mixes_any_stem():
    from stemlink.udp_client.core import ClientError
    from stemlink.udp_client.mix import default_mix, parse_mix

    assert parse_mix("drums=0,vocals=1", FOUR).tolist() == [0, 0, 0, 1]
    assert parse_mix("bass", FIVE).tolist() == [0, 1, 0, 0, 0]
    assert parse_mix("piano=0.5,drums=-1", FIVE).tolist() == [-1, 0, 0, 0, 0.5]
    assert parse_mix("all", FOUR).tolist() == [1, 1, 1, 1]
    assert parse_mix(None, FOUR).tolist() == [1, 1, 1, 0]  # everything but vocals
    assert default_mix(["vocals", "accompaniment"]) == "accompaniment"
    for bad in ("guitar", "drums=loud", "drums=0", "drums,drums", "vocals=9"):
        with pytest.raises(ClientError):
            parse_mix(bad, FOUR)


@pytest.mark.parametrize("which", ["ht4", "ht5"])
def test_many_stem_model_streams_through_serve_and_send(which, request, clip, tmp_path):
    """4 and 5 stems through the real server and client over loopback: every stem comes
    back with the input's exact length, and equals `separate` with the same preset."""
    from stemlink.udp_client.sender import SendOptions, send_file
    from stemlink.udp_server.server import ServeOptions, ServerThread

    _, model = request.getfixturevalue(which)
    card = load_card(model)
    path, x = clip
    with ServerThread(ServeOptions(str(model), "127.0.0.1", 0, preset="monitor",
                                   idle_timeout=5.0)) as st:
        rep = asyncio.run(send_file(SendOptions(path, st.address, tmp_path / "net",
                                                realtime=False)))
    assert rep.lost == 0, rep.summary()
    assert rep.stems == card.stems
    ref = separate_file(path, model, tmp_path / "file", preset="monitor")
    assert rep.delay == ref.delay
    for s in card.stems:
        net = sf.read(tmp_path / "net" / f"{s}.wav", always_2d=True)[0]
        loc = sf.read(ref.files[s], always_2d=True)[0]
        assert net.shape == (x.shape[1], 2), s
        assert sdr(loc, net) >= 40.0, s


# --------------------------------------------------------------------------- benchmarks
def test_bench_fidelity_and_engine_take_any_family(ht4, tmp_path):
    """Both benches run on a 4-stem HTDemucs card with the family's own presets; the
    `quality` row equals the offline reference everywhere before the file's end."""
    import json

    r = run("bench", "fidelity", "--model", ht4[1], "--json", tmp_path / "f.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "f.json").read_text())
    assert res["stems"] == FOUR and [x["config"] for x in res["rows"]] == \
        ["quality", "balanced", "monitor", "ultra"]
    card = load_card(ht4[1])
    for row in res["rows"]:
        cfg = families.preset(card, row["config"])
        assert row["delay_samples"] == families.latency(card, cfg).samples
        assert set(row["sdr_db"]) == set(FOUR)
    assert min(res["rows"][0]["sdr_db_before_end"].values()) >= 80.0
    assert "| drums SDR |" in r.stdout.replace("drums SDR before", "x")
    r = run("bench", "engine", "--model", ht4[1], "--seconds", "3", "--iterations", "5",
            "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    eng = json.loads((tmp_path / "e.json").read_text())
    assert eng["representation"] == "hybrid" and len(eng["presets"]) == 4
    assert eng["presets"][0]["delay_samples"] == families.latency(
        card, families.preset(card, eng["presets"][0]["preset"])).samples


@pytest.mark.parametrize("preset", ["quality", "monitor"])
def test_advance_over_silence_equals_feeding_it_and_skip_equals_process(ht4, clip, preset):
    """advance(n) leaves the state that n zeros would (HTDemucs maps a silent segment to
    exactly 0), with the alignment kept; skip() gives process()'s output."""
    _, x = clip
    a, b = x[:, :50000], x[:, 50000:150000]
    eng = open_engine(ht4[1])
    try:
        fed, jumped = eng.separator(eng.config(preset)), eng.separator(eng.config(preset))
        n = fed.memory + 777
        fed.process(a)
        fed.process(np.zeros((2, n), np.float32))
        want = fed.process(b).copy()
        jumped.skip(a)
        jumped.advance(n)
        got = jumped.process(b).copy()
        with pytest.raises(Exception, match="at least"):
            jumped.advance(jumped.memory - 1)
    finally:
        eng.close()
    assert jumped.stats.skipped_inferences > 0
    assert np.max(np.abs(want)) > 0
    assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want))
