"""The command line as a user meets it: real processes, real files, real model."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from stemlink.export.checkpoint import example_audio


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "stemlink", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("stemlink: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def lag_of_peak(ref, est):
    n = ref.size + est.size
    xc = np.fft.irfft(np.fft.rfft(est, n) * np.conj(np.fft.rfft(ref, n)), n)
    lag = int(np.argmax(xc))
    return lag if lag < n // 2 else lag - n


@pytest.fixture(scope="module")
def separated(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("sep")
    r = run("separate", example_audio(), "--model", model_dir, "--out", out, "--preset", "monitor")
    assert r.returncode == 0, r.stderr
    return out, r


def test_separate_writes_aligned_full_length_stems(separated, example):
    out, r = separated
    x, sr = example
    total = 0
    for stem in ("vocals", "accompaniment"):
        y, ysr = sf.read(out / f"{stem}.wav", always_2d=True)
        assert ysr == sr and y.shape == (x.shape[1], 2)
        total = total + y
        assert f"{stem}: " in r.stdout
    assert lag_of_peak(x[0], total[:, 0]) == 0
    assert "D = 5119 samples" in r.stdout


@pytest.mark.parametrize("mode", [[], ["--preset", "monitor"]], ids=["whole-file", "monitor"])
def test_mono_and_48k_inputs_keep_their_format_and_alignment(tmp_path, model_dir, example,
                                                             mode):
    x, sr = example
    import soxr

    x48 = soxr.resample(x[:, : 4 * sr].T, sr, 48000).astype(np.float32)
    mono = x48.mean(axis=1)
    sf.write(tmp_path / "mono48.wav", mono, 48000)
    r = run("separate", tmp_path / "mono48.wav", "--model", model_dir, "--out", tmp_path / "o",
            *mode)
    assert r.returncode == 0, r.stderr
    total = 0
    for stem in ("vocals", "accompaniment"):
        y, ysr = sf.read(tmp_path / "o" / f"{stem}.wav", always_2d=True)
        assert ysr == 48000 and y.shape == (mono.size, 1)
        total = total + y[:, 0]
    assert lag_of_peak(mono, total) == 0


def test_separate_defaults_to_the_whole_file_model(tmp_path, model_dir, offline_ref):
    r = run("separate", example_audio(), "--model", model_dir, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("whole-file model (offline)") and "D = " not in r.stdout
    for i, stem in enumerate(("vocals", "accompaniment")):
        y, _ = sf.read(tmp_path / f"{stem}.wav", always_2d=True, dtype="float32")
        assert np.max(np.abs(y.T - offline_ref[i])) < 1e-6  # the offline model's own output
    r = run("separate", example_audio(), "--model", model_dir, "--out", tmp_path,
            "--offline", "--preset", "ultra")
    assert r.returncode == 2 and "exclude each other" in r.stderr


def test_separate_streaming_overrides_start_from_monitor(tmp_path, model_dir, example):
    x, sr = example
    sf.write(tmp_path / "a.wav", x[:, : 2 * sr].T, sr)
    r = run("separate", tmp_path / "a.wav", "--model", model_dir, "--out", tmp_path / "o",
            "-L", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("streaming monitor: H=2 L=4 standard"), r.stdout


def test_nan_and_inf_samples_are_silenced(tmp_path, model_dir):
    x = np.random.default_rng(0).standard_normal((44100, 2)).astype(np.float32) * 0.1
    x[1000, 0], x[2000, 1], x[3000, 0] = np.nan, np.inf, -np.inf
    sf.write(tmp_path / "nan.wav", x, 44100, subtype="FLOAT")
    r = run("separate", tmp_path / "nan.wav", "--model", model_dir, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "3 NaN/Inf input samples" in r.stderr
    y, _ = sf.read(tmp_path / "o" / "vocals.wav")
    assert y.shape == x.shape and np.all(np.isfinite(y))


def test_zero_length_wav_gives_zero_length_stems(tmp_path, model_dir):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), 44100)
    r = run("separate", tmp_path / "empty.wav", "--model", model_dir, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert sf.info(tmp_path / "o" / "vocals.wav").frames == 0


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"RIFF....WAVEfmt garbage" * 10, "not a readable audio file"),
])
def test_bad_files_are_one_line(tmp_path, model_dir, content, needle):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    assert_one_line_error(run("separate", p, "--model", model_dir, "--out", tmp_path / "o"),
                          needle)


def test_missing_file_and_model(tmp_path, model_dir):
    assert_one_line_error(run("separate", tmp_path / "nope.wav", "--out", tmp_path / "o"),
                          "no such file")
    sf.write(tmp_path / "a.wav", np.zeros((100, 2)), 44100)
    assert_one_line_error(run("separate", tmp_path / "a.wav", "--model", tmp_path / "none",
                              "--out", tmp_path / "o"), "does not exist")


def test_corrupt_onnx_model_is_one_line(tmp_path, broken_model):
    sf.write(tmp_path / "a.wav", np.zeros((100, 2)), 44100)
    assert_one_line_error(run("separate", tmp_path / "a.wav", "--model", broken_model,
                              "--out", tmp_path / "o"), "cannot load")


def test_export_refuses_bad_window(tmp_path):
    assert_one_line_error(run("export", "spleeter", "--out", tmp_path, "--window-frames", 100),
                          "multiple of 64")


def test_bad_flags_exit_nonzero_without_traceback(tmp_path):
    r = run("separate", "x.wav", "--out", tmp_path, "--preset", "warp")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "warp" in r.stderr
    r = run("separate", "x.wav", "--out", tmp_path, "-H", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_send_and_relay_refuse_what_would_silently_do_nothing(tmp_path):
    """--jitter sizes only the --as-heard buffer; a relay whose --to does not resolve
    would forward into nothing: both are one line and exit 2 before anything starts."""
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros((4410, 2), np.float32), 44100)
    r = run("send", wav, "--out", tmp_path / "o", "--jitter", "30")
    assert_one_line_error(r, "--jitter", "--as-heard")
    assert r.returncode == 2
    r = run("relay", "--listen", "127.0.0.1:0", "--to", "nosuch.invalid:5055", timeout=60)
    assert_one_line_error(r, "--to", "cannot resolve")
    assert r.returncode == 2
