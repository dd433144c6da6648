import numpy as np

from stemlink.udp_client.jitter import JitterBuffer


def blk(v, b=4, c=2):
    return np.full((c, b), v, np.float32)


def test_plays_in_order_after_the_stated_delay():
    jb = JitterBuffer(2, 4, target=2, capacity=8)
    assert jb.delay_samples == 8
    for k in (0, 2, 1, 3):  # reordered arrival
        jb.push(k * 4, blk(k + 1))
    out = np.zeros((2, 6), np.float32)
    jb.pop(out)
    np.testing.assert_array_equal(out[0], [0, 0, 0, 0, 0, 0])  # 8 samples of prefill
    jb.pop(out)
    np.testing.assert_array_equal(out[0], [0, 0, 1, 1, 1, 1])
    jb.pop(out)
    np.testing.assert_array_equal(out[0], [2, 2, 2, 2, 3, 3])
    assert jb.stats.prefill == 8 and jb.stats.concealed == 0


def test_missing_block_is_concealed_and_late_block_dropped():
    jb = JitterBuffer(2, 4, target=1, capacity=8)
    jb.push(0, blk(1.0))
    out = np.zeros((2, 4), np.float32)
    jb.pop(out)  # prefill
    jb.pop(out)
    np.testing.assert_array_equal(out[0], 1.0)
    jb.pop(out)  # block at ts 4 never came: faded repeat
    assert jb.stats.concealed == 1 and out[0, 0] == 1.0 and out[0, -1] < out[0, 0]
    jb.pop(out)  # second missing block: silence
    np.testing.assert_array_equal(out[0], 0.0)
    assert not jb.push(4, blk(5.0)) and jb.stats.late == 1
    assert jb.push(12, blk(7.0)) and not jb.push(12, blk(7.0))
    assert jb.stats.duplicates == 1
    jb.pop(out)
    np.testing.assert_array_equal(out[0], 7.0)
    assert not jb.push(1000, blk(1.0)) and jb.stats.too_early == 1
