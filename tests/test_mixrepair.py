"""Mixture repair: stems that add up to the mixture are repaired from it exactly."""

import numpy as np

from stemlink.udp_client.mixrepair import MIN_BLOCKS, MixtureRepair


def stems_and_mix(n_blocks=80, b=128, seed=0):
    rng = np.random.default_rng(seed)
    stems = rng.standard_normal((2, 2, n_blocks * b)).astype(np.float32)
    stems[1] *= 0.5
    return stems, stems.sum(axis=0)


def warm(mr, stems, mix, b):
    for k in range(MIN_BLOCKS):
        mr.observe(stems[:, :, k * b:(k + 1) * b], mix[:, k * b:(k + 1) * b])


def test_a_lost_stem_block_is_the_mixture_minus_the_others():
    b = 128
    stems, mix = stems_and_mix(b=b)
    mr = MixtureRepair(2, 2, b)
    warm(mr, stems, mix, b)
    assert mr.enabled and mr.ratio < 1e-10
    k = 50
    blocks = stems[:, :, k * b:(k + 1) * b].copy()
    blocks[0] = 0.3 * np.roll(blocks[0], 5)  # a poor concealment of stem 0
    assert mr.repair(blocks, np.array([False, True]), mix[:, k * b:(k + 1) * b])
    np.testing.assert_allclose(blocks[0], stems[0, :, k * b:(k + 1) * b], atol=1e-5)
    np.testing.assert_array_equal(blocks[1], stems[1, :, k * b:(k + 1) * b])  # untouched


def test_an_error_is_shared_by_energy_and_the_sum_is_restored():
    b = 128
    stems, mix = stems_and_mix(b=b)
    mr = MixtureRepair(2, 2, b)
    warm(mr, stems, mix, b)
    k = 60
    blocks = stems[:, :, k * b:(k + 1) * b] * 0.5  # both wrong (the input was concealed)
    mr.repair(blocks, None, mix[:, k * b:(k + 1) * b], 10, 100)
    np.testing.assert_allclose(blocks.sum(axis=0)[:, 10:100], mix[:, k * b + 10:k * b + 100],
                               atol=1e-5)
    np.testing.assert_array_equal(blocks[:, :, :10], stems[:, :, k * b:k * b + 10] * 0.5)
    err = [float(np.sum((blocks[s, :, 10:100] - stems[s, :, k * b + 10:k * b + 100]) ** 2))
           for s in range(2)]
    before = [float(np.sum((0.5 * stems[s, :, k * b + 10:k * b + 100]) ** 2))
              for s in range(2)]
    assert err[0] < before[0] and err[1] < before[1]


def test_stems_that_do_not_add_up_disable_it():
    b = 128
    stems, mix = stems_and_mix(b=b)
    mix = mix + 0.8 * np.random.default_rng(9).standard_normal(mix.shape).astype(np.float32)
    mr = MixtureRepair(2, 2, b)
    warm(mr, stems, mix, b)
    assert not mr.enabled
    blocks = np.zeros((2, 2, b), np.float32)
    assert not mr.repair(blocks, np.array([False, True]), mix[:, :b])
    assert not blocks.any()
