"""`stemlink doctor` on this machine, and each kind of problem it must name with a fix."""

import os
import socket
import subprocess
import sys

from stemlink import doctor as dr
from stemlink.doctor import Level

NAMES = ["python", "numpy", "soundfile", "uvloop", "onnxruntime", "cuda", "tensorrt",
         "portaudio", "sound devices", "model", "demo audio", "udp 127.0.0.1:any",
         "udp 127.0.0.1:", "key file"]


def doctor(*args):
    return subprocess.run([sys.executable, "-m", "stemlink", "doctor", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def rows(stdout):
    """{check name: (status, found, fix)} from the table."""
    out, last = {}, None
    for ln in stdout.splitlines()[1:]:
        if ln.strip().startswith("fix: ") and last:
            out[last] = (*out[last][:2], ln.strip()[5:])
            continue
        parts = ln.split("  ")
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) >= 3 and parts[1] in {lv.value for lv in Level}:
            last = parts[0]
            out[last] = (parts[1], "  ".join(parts[2:]), "")
    return out


def test_doctor_on_this_machine(model_dir, tmp_path):
    key = tmp_path / "stemlink.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    r = doctor("--model", model_dir, "--key-file", key, "--port", free)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("check") and "Traceback" not in r.stdout + r.stderr
    table = rows(r.stdout)
    for name in NAMES:
        assert any(k.startswith(name) for k in table), (name, r.stdout)
    for name in ("python", "numpy", "soundfile", "onnxruntime", "model", "demo audio",
                 "udp 127.0.0.1:any", f"udp 127.0.0.1:{free}", "key file"):
        assert table[name][0] == "ok", (name, table[name])
    assert table["model"][1].endswith(": by stemlink 0.1.0 (this version), graphs load")
    assert "CPU" in table["onnxruntime"][1]
    assert table["key file"][1].endswith("mode 0600, 32 bytes")
    # every line that is not ok (warn) carries its fix
    for name, (level, _, fix) in table.items():
        assert level in ("ok", "--") or fix, (name, table[name])
    assert r.stdout.rstrip().endswith("ready for `stemlink demo`")


def test_a_broken_model_fails_with_a_fix(broken_model):
    r = doctor("--model", broken_model)
    assert r.returncode == 1
    level, found, fix = rows(r.stdout)["model"]
    assert level == "FAIL" and "cannot load" in found
    assert fix == f"stemlink export spleeter --out {broken_model}"
    assert "problem(s) stop the demo" in r.stdout and "model" in r.stdout.splitlines()[-1]


def test_key_file_permissions(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(b"x" * 32)
    key.chmod(0o644)
    c = dr._key_file(str(key))
    assert c.level is Level.FAIL and "mode 0644" in c.found and c.fix == f"chmod 600 {key}"
    assert dr.exit_code([c]) == 1
    key.chmod(0o600)
    assert dr._key_file(str(key)).level is Level.OK
    key.write_bytes(b"")
    assert dr._key_file(str(key)).level is Level.FAIL
    assert dr._key_file(str(tmp_path / "none")).level is Level.FAIL
    assert dr._key_file(None).level is Level.NA


def test_a_busy_port_warns_without_failing():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        c = dr._udp_port("127.0.0.1", port)
    assert c.level is Level.WARN and "--port" in c.fix and dr.exit_code([c]) == 0
    assert dr._udp_port("127.0.0.1", 0).level is Level.OK


def test_a_missing_model_with_and_without_the_export_extra(tmp_path, monkeypatch):
    c = dr._model(str(tmp_path / "none"))
    assert c.level is Level.WARN and "demo` exports it first" in c.found  # export extra here
    monkeypatch.setattr(dr, "EXPORT_MODULES", ("stemlink_no_such_module",))
    c = dr._model(str(tmp_path / "none"))
    assert c.level is Level.FAIL and c.fix.startswith("pip install torch==2.13.0")


def test_missing_onnxruntime_and_portaudio_are_named(monkeypatch, model_dir):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    checks = {c.name: c for c in dr.run_checks(dr.DoctorOptions(str(model_dir)))}
    assert checks["onnxruntime"].level is Level.FAIL
    assert checks["onnxruntime"].fix.startswith("pip install onnxruntime")
    assert checks["model"].level is Level.FAIL  # present, but nothing can load it
    assert checks["portaudio"].level is Level.WARN  # only live needs it
    assert "apt-get install libportaudio2" in checks["portaudio"].fix
    assert dr.exit_code(list(checks.values())) == 1
    text = dr.render(list(checks.values()))
    assert "fix: pip install onnxruntime" in text


def test_a_model_from_another_version_warns_with_a_fix(tmp_path, model_dir):
    import json

    d = tmp_path / "old-model"
    d.mkdir()
    card = json.loads((model_dir / "model.json").read_text())
    card["exporter"]["stemlink"] = "0.0.9"
    (d / "model.json").write_text(json.dumps(card))
    for f in ("model.onnx", "offline.onnx"):
        (d / f).symlink_to(model_dir / f)
    c = dr._model(str(d))
    assert c.level is Level.WARN and "by stemlink 0.0.9, not by this version (0.1.0)" in c.found
    assert c.fix.endswith(f"stemlink export spleeter --out {d}")
    card["card_version"] = 99
    (d / "model.json").write_text(json.dumps(card))
    assert dr._model(str(d)).level is Level.FAIL
