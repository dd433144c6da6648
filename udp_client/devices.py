"""`stemlink devices`: the PortAudio devices `live` can use, as sounddevice sees them.

`live --input-device/--output-device` take the index printed here, or the name (a
unique part of "name, host API" is enough, as sounddevice matches it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stemlink.udp_client.core import ClientError

INSTALL_HINT = ("install the PortAudio library and sounddevice: apt-get install libportaudio2 "
                "(macOS: brew install portaudio) and pip install sounddevice "
                "(or pip install 'stemlink[live]')")


class PortAudioMissing(ClientError):
    """sounddevice or the PortAudio library it loads is not installed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; {INSTALL_HINT}")
        self.what = what


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    hostapi: str
    inputs: int  # max input channels
    outputs: int  # max output channels
    sample_rate: float  # default sample rate (Hz)
    default_input: bool
    default_output: bool


def load_sounddevice() -> Any:
    """The sounddevice module, or PortAudioMissing with how to install it."""
    try:
        import sounddevice
    except ImportError:
        raise PortAudioMissing("sounddevice is not installed") from None
    except OSError as e:  # sounddevice is there, the PortAudio library is not
        raise PortAudioMissing(f"the PortAudio library cannot be loaded ({e})") from None
    return sounddevice


def parse_device(text: str | None) -> int | str | None:
    """What `--input-device/--output-device` take: an index as printed, or a name."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else text


def portaudio_version(sd: Any) -> str:
    return str(sd.get_portaudio_version()[1]).split(",")[0]


def list_devices(sd: Any | None = None) -> list[Device]:
    sd = sd if sd is not None else load_sounddevice()
    try:
        infos = sd.query_devices()
        apis = sd.query_hostapis()
        default_in, default_out = _defaults(sd)
    except sd.PortAudioError as e:
        raise ClientError(f"PortAudio cannot list the devices: {e}") from None
    return [Device(index=i, name=str(d["name"]), hostapi=str(apis[d["hostapi"]]["name"]),
                   inputs=int(d["max_input_channels"]), outputs=int(d["max_output_channels"]),
                   sample_rate=float(d["default_samplerate"]),
                   default_input=i == default_in, default_output=i == default_out)
            for i, d in enumerate(infos)]


def _defaults(sd: Any) -> tuple[int, int]:
    dev = sd.default.device  # [input, output]; -1 where there is none
    ids = []
    for kind, d in zip(("input", "output"), dev, strict=True):
        if isinstance(d, str):  # a default set by name: resolve it as live would
            try:
                d = int(sd.query_devices(d, kind)["index"])
            except (ValueError, KeyError, sd.PortAudioError):
                d = -1
        ids.append(int(d) if d is not None else -1)
    return ids[0], ids[1]


def render(devices: list[Device], portaudio: str) -> str:
    """A table for people; the last lines say how to pass a device to `live`."""
    if not devices:
        return (f"no sound devices found ({portaudio}); `live` needs a sound card or an "
                f"audio server")
    head = ("index", "name", "host API", "in", "out", "rate Hz", "default")
    rows = [(str(d.index), d.name, d.hostapi, str(d.inputs), str(d.outputs),
             f"{d.sample_rate:g}",
             ", ".join(k for k, on in (("input", d.default_input),
                                       ("output", d.default_output)) if on))
            for d in devices]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in (head, *rows)]
    return "\n".join([*lines, "", f"{portaudio}. Pass an index or a name to live: "
                      "stemlink live --input-device 0 --output-device \"NAME\""])
