"""XOR-parity redundancy: every single loss repaired bit for bit, in any arrival order."""

import numpy as np
import pytest

from stemlink.wire import packets as pk
from stemlink.wire.constants import BLOCK_FRAMES, MAX_PAYLOAD, Flags, PacketType, SampleFormat
from stemlink.wire.redundancy import RedundancyDecoder, RedundancyEncoder

KEY = bytes(32)


def stream(n, frames=256, channels=2, fmt=SampleFormat.S16LE, seq0=0xFFFFFFF0, seed=0):
    """Real encoded datagrams of n blocks plus their parities, in sending order."""
    rng = np.random.default_rng(seed)
    w = pk.MediaWriter(frames, channels, fmt)
    enc = RedundancyEncoder(frames, w.payload_len)
    seq, out, blocks = seq0, [], []
    for k in range(n):
        x = (0.3 * rng.standard_normal((channels, frames))).astype(np.float32)
        last = k == n - 1
        d = w.write(PacketType.AUDIO, x, session=1, seq=seq & 0xFFFFFFFF, timestamp=k * frames,
                    send_time=k, key=KEY, flags=Flags.LAST if last else 0)
        seq += 1
        out.append(d)
        blocks.append(bytes(pk.payload(d, pk.decode_header(d))))
        p = enc.add(k * frames, pk.payload(d, pk.decode_header(d)), last)
        if p is not None:
            ts, body, flags = p
            out.append(pk.encode(pk.Header(PacketType.AUDIO, flags, 1, seq & 0xFFFFFFFF, ts, k,
                                           frames, channels, fmt), body, KEY))
            seq += 1
    return out, blocks


def deliver(dec, datagrams):
    got = []
    for t, d in enumerate(datagrams):
        h = pk.decode_header(d)
        got += dec.feed(h, pk.payload(d, h), now=t * 0.001)
    return got


@pytest.mark.parametrize("n", [7, 8])  # the stream ends on a lone first block / a pair
@pytest.mark.parametrize("ordered", [False, True])
def test_every_single_loss_is_repaired_exactly(n, ordered):
    sent, blocks = stream(n)
    for lost in range(len(sent)):
        got = deliver(RedundancyDecoder(256, ordered), sent[:lost] + sent[lost + 1:])
        ts = [h.timestamp for h, _ in got]
        assert sorted(ts) == [k * 256 for k in range(n)], lost
        if ordered:
            assert ts == sorted(ts)
        for h, body in got:
            assert body == blocks[h.timestamp // 256]  # bit for bit
            assert not h.flags & Flags.REDUNDANT
            if h.flags & Flags.LAST:  # (a repaired last block of a pair loses the flag)
                assert h.timestamp == (n - 1) * 256


def test_one_loss_in_every_pair_at_once_and_reordering():
    sent, blocks = stream(40, frames=128, seed=1)
    # drop the first block of even pairs and the second of odd pairs, then swap neighbours
    keep = []
    for d in sent:
        h = pk.decode_header(d)
        k = h.timestamp // 128
        if not h.flags & Flags.REDUNDANT and (k // 2) % 2 == k % 2:
            continue
        keep.append(d)
    for i in range(0, len(keep) - 1, 3):
        keep[i], keep[i + 1] = keep[i + 1], keep[i]
    dec = RedundancyDecoder(128, ordered=True)
    got = deliver(dec, keep)
    assert [h.timestamp for h, _ in got] == [k * 128 for k in range(40)]
    assert all(body == blocks[h.timestamp // 128] for h, body in got)
    assert dec.recovered == 20


def test_two_losses_in_a_pair_are_skipped_in_order_and_duplicates_ignored():
    sent, blocks = stream(12)
    sent = [d for d in sent if pk.decode_header(d).timestamp // 256 not in (4, 5)
            or pk.decode_header(d).flags & Flags.REDUNDANT]
    sent = sent + sent[:3]  # duplicates (a relay may duplicate)
    dec = RedundancyDecoder(256, ordered=True)
    got = deliver(dec, sent)
    assert [h.timestamp // 256 for h, _ in got] == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]
    assert dec.skipped == 2


def test_ordered_decoder_gives_up_after_max_hold():
    sent, _ = stream(4)
    h = [pk.decode_header(d) for d in sent]
    dec = RedundancyDecoder(256, ordered=True, max_hold=0.010)
    assert [x.timestamp for x, _ in dec.feed(h[1], pk.payload(sent[1], h[1]), 0.0)] == []
    assert dec.poll(0.005) == []  # still waiting for the parity that would repair block 0
    assert [x.timestamp for x, _ in dec.poll(0.011)] == [256]


@pytest.mark.parametrize("frames", BLOCK_FRAMES)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", list(SampleFormat))
def test_parity_datagrams_are_media_sized_and_under_1200_bytes(frames, channels, fmt):
    if frames * channels * fmt.width > MAX_PAYLOAD:
        return  # the server refuses this block size anyway
    sent, _ = stream(3, frames, channels, fmt)
    sizes = {len(d) for d in sent}
    assert len(sizes) == 1 and max(sizes) <= 1200
