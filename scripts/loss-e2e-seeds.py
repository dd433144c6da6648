"""The end-to-end loss test's runs (tests/test_loss_e2e.py) for many relay seeds, printed:
SDR against the clean run of `send` through `stemlink relay` with 5 % independent loss in
each direction, unpaced, on the first 6 s of the bundled example, without and with
--redundancy. Shows how far a single run moves with which datagrams are dropped.

    python scripts/loss-e2e-seeds.py MODEL_DIR [SEEDS, e.g. 1-9,11] [--on-only]
"""

import asyncio
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from stemlink.audio import read_audio
from stemlink.bench.fidelity import sdr
from stemlink.bench.relay import Relay, make_config
from stemlink.export.checkpoint import example_audio
from stemlink.udp_client.sender import SendOptions, send_file
from stemlink.udp_server.server import ServeOptions, ServerThread


def seeds(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> None:
    model = sys.argv[1]
    todo = seeds(sys.argv[2] if len(sys.argv) > 2 and sys.argv[2][0].isdigit() else "1-9,11")
    modes = (True,) if "--on-only" in sys.argv else (False, True)
    x, sr = read_audio(example_audio())
    tmp = Path(tempfile.mkdtemp())
    wav = tmp / "in.wav"
    sf.write(wav, x[:, :6 * sr].T, sr, subtype="PCM_16")
    with ServerThread(ServeOptions(model, "127.0.0.1", 0)) as st:
        def go(name: str, red: bool, loss: float, seed: int) -> dict:
            with Relay(st.address, make_config(None, seed=seed, loss=loss, burst=1.0)) as r:
                rep = asyncio.run(send_file(SendOptions(wav, r.address, tmp / name,
                                                        realtime=False, redundancy=red)))
            return {s: sf.read(tmp / name / f"{s}.wav", dtype="float32")[0]
                    for s in rep.stems}
        clean = go("clean", False, 0.0, 11)
        for seed in todo:
            cols = []
            for red in modes:
                y = go(f"s{seed}{red}", red, 0.05, seed)
                cols.append(f"redundancy {'on' if red else 'off'}: " + " / ".join(
                    f"{sdr(clean[s], y[s]):.2f}" for s in y))
            print(f"seed {seed}: " + ", ".join(cols), flush=True)


if __name__ == "__main__":
    main()
