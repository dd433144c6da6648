"""Progress bars: drawn on a terminal, never into a pipe, never with --quiet."""

import io
import os
import pty
import subprocess
import sys

import numpy as np
import soundfile as sf
from tqdm import tqdm

from stemlink import progress
from tests.terminal import run_in_pty


def test_bars_only_on_a_terminal_and_not_when_quiet():
    assert not progress.enabled(stream=io.StringIO())
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert progress.enabled(stream=tty)
            assert not progress.enabled(quiet=True, stream=tty)
    finally:
        os.close(master)
        os.close(slave)
    assert progress.callback("x", on=False) is None


def test_callback_counts_to_the_total_and_closes():
    calls = []
    cb = progress.callback("work", "steps", on=True)
    for done in (1, 3, 5):
        cb(done, 5)
        calls.append(done)
    assert calls == [1, 3, 5]  # and no exception from tqdm on a non-terminal stderr


def _clip(tmp_path, example, seconds=4):
    x, sr = example
    p = tmp_path / "clip.wav"
    sf.write(p, x[:, : seconds * sr].T, sr, subtype="FLOAT")
    return p


def test_separate_draws_no_bar_into_a_pipe(tmp_path, model_dir, example):
    r = subprocess.run([sys.executable, "-m", "stemlink", "separate",
                        _clip(tmp_path, example), "--model", model_dir, "--out",
                        tmp_path / "o"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr + r.stdout and "%|" not in r.stderr
    assert r.stderr == ""  # nothing at all on stderr: the bar is the only thing it would draw


def test_separate_draws_a_bar_with_eta_on_a_terminal(tmp_path, model_dir, example):
    clip = _clip(tmp_path, example)
    rc, out = run_in_pty(["separate", clip, "--model", model_dir, "--out", tmp_path / "o"])
    assert rc == 0, out
    bar = [ln for ln in out.replace("\r", "\n").splitlines() if ln.startswith("separating:")]
    assert bar and "100%|" in bar[-1] and "1/1 segments" in bar[-1], out
    assert "<00:00]" in bar[-1]  # elapsed<remaining, the ETA at the end
    assert "vocals: " in out and "accompaniment: " in out
    # the streaming preview counts blocks
    rc, out = run_in_pty(["separate", clip, "--model", model_dir, "--out", tmp_path / "p",
                          "--preset", "ultra"])
    from stemlink.engine.card import load_card
    from stemlink.engine.presets import preset
    from stemlink.engine.streaming import latency_of

    d = latency_of(load_card(model_dir), preset("ultra")).samples
    n = tqdm.format_sizeof(4 * 44100 + d)  # samples in, plus D to flush
    assert rc == 0 and f"{n}/{n} samples" in out, out


def test_quiet_turns_the_bar_off_on_a_terminal(tmp_path, model_dir, example):
    rc, out = run_in_pty(["separate", _clip(tmp_path, example), "--model", model_dir,
                          "--out", tmp_path / "o", "--quiet"])
    assert rc == 0, out
    assert "separating" not in out and "%|" not in out and "vocals: " in out


def test_bench_engine_draws_a_bar_on_a_terminal_only(tmp_path, model_dir):
    args = ["bench", "engine", "--model", model_dir, "--seconds", "1", "--iterations", "5"]
    rc, out = run_in_pty(args)
    assert rc == 0, out
    bar = [ln for ln in out.replace("\r", "\n").splitlines() if ln.startswith("bench engine:")]
    assert bar and "100%|" in bar[-1], out
    assert "one inference (model only)" in out
    r = subprocess.run([sys.executable, "-m", "stemlink", *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "bench engine:" not in r.stderr and "\r" not in r.stderr


def test_timed_bar_completes_and_is_silent_when_off(capsys):
    with progress.timed("t", 0.2, on=False, every_s=0.01):
        pass
    with progress.timed("t", 0.2, on=True, every_s=0.01) as t:
        assert t._bar is not None
    assert t._bar.n == t._bar.total
    assert np.isfinite(t._bar.total)


def test_ctrl_c_ends_the_bar_above_one_error_line(tmp_path, model_dir, example):
    clip = _clip(tmp_path, example, seconds=10)
    rc, out = run_in_pty(["separate", clip, "--model", model_dir, "--out", tmp_path / "o",
                          "--preset", "quality"], interrupt_after="separating:")
    assert rc == 130, out
    lines = [ln for ln in out.replace("\r\n", "\n").split("\n") if ln.strip()]
    assert lines[-1] == "stemlink: error: aborted", out  # no bar redrawn after it
    assert "Traceback" not in out and "separating:" in lines[-2]
