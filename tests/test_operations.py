"""Keys and operations as a user meets them: real processes for the CLI, and a real server
(real model, real sockets) for metrics, /healthz and the structured session log."""

import json
import logging
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from stemlink.loop import run_loop
from stemlink.udp_client.core import ClientError
from stemlink.udp_client.sender import SendOptions, send_file
from stemlink.udp_server.server import ServeOptions, ServerThread
from stemlink.wire.auth import aead_available
from stemlink.wire.keys import generate_key_file, load_key_file
from tests.test_cli import assert_one_line_error, run


def test_keygen_and_open_server_refusal(tmp_path, model_dir):
    r = run("keygen", tmp_path / "k")
    assert r.returncode == 0 and (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert_one_line_error(run("keygen", tmp_path / "k"), "exists")
    r = run("serve", "--model", model_dir, "--host", "0.0.0.0", "--port", "0", timeout=60)
    assert_one_line_error(r, "refusing to serve on 0.0.0.0 without a key", "keygen")
    os.chmod(tmp_path / "k", 0o644)
    r = run("send", "x.wav", "--out", tmp_path, "--key-file", tmp_path / "k")
    assert_one_line_error(r, "readable by others", "chmod 600")


def test_insecure_serves_with_a_loud_warning(model_dir):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "stemlink", "serve", "--model",
                          str(model_dir), "--host", "0.0.0.0", "--port", "0", "--insecure"],
                         stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in p.stderr:
            lines.append(line)
            if "stemlink serving" in line:
                break
        text = "".join(lines)
        assert "WARNING" in text and "WITHOUT A KEY" in text and "key: none" in text
    finally:
        p.terminate()
        p.wait(20)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, example):
    x, sr = example
    p = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(p, x[:, :3 * sr].T, sr, subtype="PCM_16")
    return p


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_healthz_and_session_log(model_dir, clip, tmp_path, caplog):
    key = load_key_file(generate_key_file(tmp_path / "key"))
    caplog.set_level(logging.INFO, logger="stemlink.server")
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0, key=key,
                                   metrics_port=0)) as st:
        host, port = st.server.metrics.address
        base = f"http://{host}:{port}"
        assert _get(f"{base}/healthz") == (200, "ok\n")
        rep = run_loop(send_file(SendOptions(clip, st.address, tmp_path / "o", key=key,
                                             realtime=False)))
        assert rep.lost == 0
        with pytest.raises(ClientError, match="wrong key"):
            run_loop(send_file(SendOptions(clip, st.address, None, key=bytes(32))))
        code, text = _get(f"{base}/metrics")
        assert code == 200
        values = {ln.rpartition(" ")[0]: float(ln.rpartition(" ")[2])
                  for ln in text.splitlines() if ln and not ln.startswith("#")}
        blocks = rep.sent
        assert values['stemlink_packets_accepted_total{type="audio"}'] == blocks
        assert values['stemlink_datagrams_sent_total{type="stem"}'] == rep.received
        assert values['stemlink_drops_total{reason="bad-tag"}'] >= 1  # the wrong key
        assert values["stemlink_sessions_open"] == 0
        assert values['stemlink_inference_seconds_count'] == blocks
        assert values["stemlink_worker_busy_seconds_total"] > 0
        assert "stemlink_queue_depth" in values and "stemlink_concealed_blocks_total" in values
        assert _get(f"{base}/nope")[0] == 404
    events = [json.loads(r.getMessage()) for r in caplog.records
              if r.getMessage().startswith("{")]
    start, end = [e for e in events if e["event"] == "session_start"], \
        [e for e in events if e["event"] == "session_end"]
    assert len(start) == 1 and len(end) == 1 and start[0]["session"] == end[0]["session"]
    assert end[0]["reason"] == "bye" and end[0]["audio"] == blocks
    assert start[0]["key"] == "key file" and start[0]["delay"] == 5119


@pytest.mark.skipif(not aead_available(), reason="cryptography missing")
def test_encrypted_session_streams_the_same_stems(model_dir, clip, tmp_path):
    key = load_key_file(generate_key_file(tmp_path / "key"))
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0, key=key,
                                   encrypt=True)) as st:
        enc = run_loop(send_file(SendOptions(clip, st.address, tmp_path / "enc", key=key,
                                             encrypt=True, realtime=False)))
        with pytest.raises(ClientError, match="requires encryption"):
            run_loop(send_file(SendOptions(clip, st.address, None, key=key)))
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0, key=key)) as st:
        plain = run_loop(send_file(SendOptions(clip, st.address, tmp_path / "plain", key=key,
                                               realtime=False)))
    assert enc.lost == 0 and plain.lost == 0
    for stem in ("vocals", "accompaniment"):
        a, _ = sf.read(tmp_path / "enc" / f"{stem}.wav")
        b, _ = sf.read(tmp_path / "plain" / f"{stem}.wav")
        np.testing.assert_array_equal(a, b)
