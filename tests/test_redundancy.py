"""XOR-parity redundancy: every single loss repaired bit for bit, in any arrival order;
the uplink's chain layout also every double loss."""

import itertools

import numpy as np
import pytest

from stemlink.wire import packets as pk
from stemlink.wire.constants import BLOCK_FRAMES, MAX_PAYLOAD, Flags, PacketType, SampleFormat
from stemlink.wire.redundancy import (
    DOWNLINK,
    UPLINK,
    WINDOW_BLOCKS,
    Layout,
    RedundancyDecoder,
    RedundancyEncoder,
    datagrams_per_block,
)

KEY = bytes(32)


def stream(n, frames=256, channels=2, fmt=SampleFormat.S16LE, seq0=0xFFFFFFF0, seed=0,
           layout=Layout.PAIRS):
    """Real encoded datagrams of n blocks plus their parities, in sending order."""
    rng = np.random.default_rng(seed)
    w = pk.MediaWriter(frames, channels, fmt)
    enc = RedundancyEncoder(frames, w.payload_len, layout)
    seq, out, blocks = seq0, [], []
    for k in range(n):
        x = (0.3 * rng.standard_normal((channels, frames))).astype(np.float32)
        last = k == n - 1
        d = w.write(PacketType.AUDIO, x, session=1, seq=seq & 0xFFFFFFFF, timestamp=k * frames,
                    send_time=k, key=KEY, flags=Flags.LAST if last else 0)
        seq += 1
        out.append(d)
        blocks.append(bytes(pk.payload(d, pk.decode_header(d))))
        for ts, body, flags in enc.add(k * frames, pk.payload(d, pk.decode_header(d)), last):
            out.append(pk.encode(pk.Header(PacketType.AUDIO, flags, 1, seq & 0xFFFFFFFF, ts, k,
                                           frames, channels, fmt), body, KEY))
            seq += 1
    return out, blocks


def deliver(dec, datagrams):
    got = []
    for d in datagrams:
        h = pk.decode_header(d)
        got += dec.feed(h, pk.payload(d, h))
    return got


def check_complete(got, blocks, why):
    n = len(blocks)
    ts = [h.timestamp for h, _ in got]
    assert sorted(ts) == [k * 256 for k in range(n)], why
    for h, body in got:
        assert body == blocks[h.timestamp // 256]  # bit for bit
        assert not h.flags & Flags.REDUNDANT
        if h.flags & Flags.LAST:  # (a repaired last block of a pair loses the flag)
            assert h.timestamp == (n - 1) * 256


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("n", [7, 8])  # the stream ends on a lone first block / a pair
def test_every_single_loss_is_repaired_exactly(n, layout):
    sent, blocks = stream(n, layout=layout)
    for lost in range(len(sent)):
        got = deliver(RedundancyDecoder(256), sent[:lost] + sent[lost + 1:])
        check_complete(got, blocks, lost)


@pytest.mark.parametrize("n", [7, 8])
def test_chain_repairs_every_double_loss_but_the_first_block_with_its_parity(n):
    sent, blocks = stream(n, layout=Layout.CHAIN)
    assert len(sent) == 2 * n  # n blocks, n - 1 parities over neighbours, a copy of the last
    first_parity = next(i for i, d in enumerate(sent)
                        if pk.decode_header(d).flags & Flags.REDUNDANT)
    failures = []
    for pair in itertools.combinations(range(len(sent)), 2):
        got = deliver(RedundancyDecoder(256), [d for i, d in enumerate(sent) if i not in pair])
        if sorted(h.timestamp for h, _ in got) != [k * 256 for k in range(n)]:
            failures.append(pair)
            continue
        check_complete(got, blocks, pair)
    # a run's first block has one parity (nothing before it to pair with)
    assert failures == [(0, first_parity)]


def test_chain_loses_far_fewer_blocks_than_pairs_at_five_percent():
    """Independent 5 % loss over a long stream: the uplink's chain leaves about 4p^3 of
    the blocks lost, pairs about 2p^2 (exact counts of one seeded draw)."""
    rng = np.random.default_rng(3)
    n = 4000
    left = {}
    for layout in Layout:
        sent, blocks = stream(n, frames=64, channels=1, layout=layout, seed=4)
        keep = [d for d in sent if rng.random() >= 0.05]
        got = deliver(RedundancyDecoder(64), keep)
        assert all(body == blocks[h.timestamp // 64] for h, body in got)
        left[layout] = n - len({h.timestamp for h, _ in got})
    assert left[Layout.PAIRS] >= 0.5 * 2 * 0.05 ** 2 * n  # ~20: the model holds
    assert left[Layout.CHAIN] <= 4 * 4 * 0.05 ** 3 * n  # ~2
    assert left[Layout.CHAIN] * 5 <= left[Layout.PAIRS]


def test_layouts_and_their_overhead():
    assert (UPLINK, DOWNLINK) == (Layout.CHAIN, Layout.PAIRS)
    assert datagrams_per_block(Layout.CHAIN) == 2.0
    assert datagrams_per_block(Layout.PAIRS) == 1.5


def test_a_restarted_timeline_resets_the_decoder_and_is_repaired_again():
    sent, blocks = stream(6, layout=Layout.CHAIN)
    far, _ = stream(300, layout=Layout.CHAIN, seed=2)  # a long stream first, then over
    dec = RedundancyDecoder(256)
    deliver(dec, far)
    got = deliver(dec, sent[:2] + sent[3:])  # block 1 lost after the restart
    assert dec.resets == 1
    assert {h.timestamp: b for h, b in got} == {k * 256: blocks[k] for k in range(6)}


@pytest.mark.parametrize("layout", list(Layout))
def test_one_loss_in_every_pair_at_once_reordering_and_duplicates(layout):
    sent, blocks = stream(40, frames=128, seed=1, layout=layout)
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
    keep += keep[:5]  # duplicates (a relay may duplicate): ignored
    dec = RedundancyDecoder(128)
    got = deliver(dec, keep)
    assert sorted(h.timestamp for h, _ in got) == [k * 128 for k in range(40)]
    assert all(body == blocks[h.timestamp // 128] for h, body in got)
    # (in a chain a swap can put a block's second parity ahead of it: the block is rebuilt
    # before it arrives, and its arrival is then a duplicate)
    assert dec.recovered == 20 if layout is Layout.PAIRS else dec.recovered >= 20


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("frames", BLOCK_FRAMES)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", list(SampleFormat))
def test_parity_datagrams_are_media_sized_and_under_1200_bytes(frames, channels, fmt, layout):
    if frames * channels * fmt.width > MAX_PAYLOAD:
        return  # the server refuses this block size anyway
    sent, _ = stream(3, frames, channels, fmt, layout=layout)
    sizes = {len(d) for d in sent}
    assert len(sizes) == 1 and max(sizes) <= 1200


def test_decoder_memory_is_bounded_on_a_long_stream():
    sent, _ = stream(1500, frames=64, channels=1, layout=Layout.CHAIN, seed=5)
    dec = RedundancyDecoder(64)
    most = 0
    for i, d in enumerate(sent):
        if i % 7:  # losses keep parities and blocks waiting
            deliver(dec, [d])
        most = max(most, len(dec._blocks), len(dec._parities))
    assert most <= WINDOW_BLOCKS + WINDOW_BLOCKS // 4 + 1
