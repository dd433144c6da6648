"""Mixture repair: stems that add up to the mixture are repaired from it exactly."""

import numpy as np

from stemlink.udp_client.mixrepair import (
    MIN_BLOCKS,
    MixtureRepair,
    _istft,
    _stft,
    _stretches,
    band_repair,
    band_trust,
    frame_len,
)


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


# ---- per-band repair (archival) ---------------------------------------------------------

RATE = 44100


def tones(n, freqs_per_stem, seed=1):
    """Stems [S, 2, n]: stem s is a sum of tones at freqs_per_stem[s] (Hz), both channels."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    out = np.zeros((len(freqs_per_stem), 2, n), np.float32)
    for s, freqs in enumerate(freqs_per_stem):
        for f in freqs:
            for c in range(2):
                out[s, c] += 0.3 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out


def test_the_stft_pair_reconstructs_exactly():
    x = np.random.default_rng(3).standard_normal((2, 3, 5001))
    np.testing.assert_allclose(_istft(_stft(x, 256), 256, 5001), x, atol=1e-12)
    assert frame_len(44100) == 2048 and frame_len(48000) == 2048 and frame_len(22050) == 1024


def test_band_trust_is_one_where_the_stems_add_up_and_zero_where_they_never_do():
    n, nfft = 44100, 2048
    stems = tones(n, [[440.0], [2000.0]])
    hiss = tones(n, [[15000.0]])[0]  # in the mixture only, as above a model's band
    mix = stems.sum(axis=0) + hiss
    trust = band_trust(stems, mix, np.ones(n, bool), nfft)
    f = np.fft.rfftfreq(nfft, 1 / RATE)
    assert trust[np.argmin(abs(f - 440))] > 0.999 and trust[np.argmin(abs(f - 2000))] > 0.999
    assert trust[np.argmin(abs(f - 15000))] < 1e-3
    # nothing observed (ok nowhere): trusted everywhere
    np.testing.assert_array_equal(band_trust(stems, mix, np.zeros(n, bool), nfft), 1.0)


def test_band_repair_splits_the_residual_by_band_and_restores_the_sum():
    n, nfft = 32768, 2048
    truth = tones(n, [[440.0, 660.0], [3000.0, 5000.0]])
    mix = truth.sum(axis=0)
    lo, hi = 12000, 14000  # both stems wrong here (the input was concealed): scaled, shifted
    stems = truth.copy()
    stems[0, :, lo:hi] = 0.4 * np.roll(truth[0], 37)[:, lo:hi]
    stems[1, :, lo:hi] = 1.5 * np.roll(truth[1], -11)[:, lo:hi]
    shared = np.zeros(n, bool)
    shared[lo:hi] = True
    ones = np.ones(nfft // 2 + 1)
    fixed = stems.copy()
    band_repair(fixed, mix, np.zeros_like(stems), shared, ones, nfft)
    # trust 1 everywhere: the stems add up to the mixture exactly where shared ...
    np.testing.assert_allclose(fixed.sum(axis=0)[:, lo:hi], mix[:, lo:hi], atol=1e-5)
    # ... and nothing outside the shared samples moved by more than the frames' reach
    np.testing.assert_array_equal(fixed[:, :, :lo - nfft], stems[:, :, :lo - nfft])
    np.testing.assert_array_equal(fixed[:, :, hi + nfft:], stems[:, :, hi + nfft:])
    # each stem got its own band's share: far closer to the truth than sharing by energy
    by_energy = stems.copy()
    res = (mix - stems.sum(axis=0))[:, lo:hi]
    e = np.array([np.sum(stems[s, :, lo:hi] ** 2) for s in range(2)])
    for s in range(2):
        by_energy[s, :, lo:hi] += res * e[s] / e.sum()
    for s in range(2):
        err = np.sum((fixed[s] - truth[s]) ** 2)
        err_e = np.sum((by_energy[s] - truth[s]) ** 2)
        before = np.sum((stems[s] - truth[s]) ** 2)
        assert err < 0.01 * before and err < 0.05 * err_e


def test_band_repair_adds_a_lost_stems_own_remainder_only_where_trusted():
    n, nfft = 16384, 2048
    truth = tones(n, [[440.0], [2000.0]])
    hiss = tones(n, [[15000.0]])[0]
    mix = truth.sum(axis=0) + hiss  # the model's stems never hold the hiss
    trust = band_trust(truth, mix, np.ones(n, bool), nfft)
    stems = truth.copy()
    lo, hi = 6000, 6256
    stems[0, :, lo:hi] = 0.0  # lost; the mixture minus the other stem is its own
    own = np.zeros_like(stems)
    own[0, :, lo:hi] = (mix - stems.sum(axis=0))[:, lo:hi]
    plain = stems + own  # the time-domain remainder: the hiss lands in stem 0
    band_repair(stems, mix, own, np.zeros(n, bool), trust, nfft)
    np.testing.assert_array_equal(stems[1], truth[1])  # the stem that arrived: untouched
    err = np.sum((stems[0] - truth[0]) ** 2)
    err_plain = np.sum((plain[0] - truth[0]) ** 2)
    assert err < 0.05 * err_plain
    # with trust 1 everywhere it is exactly the time-domain remainder
    again = truth.copy()
    again[0, :, lo:hi] = 0.0
    band_repair(again, mix, own, np.zeros(n, bool), np.ones(nfft // 2 + 1), nfft)
    np.testing.assert_allclose(again, plain, atol=1e-5)


def test_repair_stretches_cover_each_hole_with_its_reach_and_merge():
    need = np.zeros(100, bool)
    need[[10, 12, 60]] = True
    assert _stretches(need, 5) == [(5, 18), (55, 66)]
    assert _stretches(need, 30) == [(0, 91)]
    assert _stretches(np.zeros(10, bool), 3) == []


# ---- per-band repair within one block (the live playout buffer) -------------------------


def bin_tones(n, bins_per_stem, b):
    """Tones exactly on the block FFT's bins (k * RATE / b), so each lies in one bin."""
    return tones(n, [[k * RATE / b for k in ks] for ks in bins_per_stem])


def test_block_bands_a_lost_stem_is_exactly_the_mixture_minus_the_others_while_trusted():
    b = 256
    stems, mix = stems_and_mix(b=b)
    mr = MixtureRepair(2, 2, b)
    warm(mr, stems, mix, b)
    np.testing.assert_array_equal(mr.trust, 1.0)  # nothing learned yet: trusted
    k = 50
    blocks = stems[:, :, k * b:(k + 1) * b].copy()
    blocks[0] = 0.3 * np.roll(blocks[0], 5)
    assert mr.repair(blocks, np.array([False, True]), mix[:, k * b:(k + 1) * b], bands=True)
    np.testing.assert_allclose(blocks[0], stems[0, :, k * b:(k + 1) * b], atol=1e-5)
    np.testing.assert_array_equal(blocks[1], stems[1, :, k * b:(k + 1) * b])


def test_block_bands_learn_the_trust_from_clean_blocks_and_keep_the_hiss_out():
    b, nblk = 256, 64
    stems = bin_tones(nblk * b, [[4], [20]], b)
    hiss = 0.2 * bin_tones(nblk * b, [[100]], b)[0]  # in the mixture, never in a stem
    mix = stems.sum(axis=0) + hiss
    mr = MixtureRepair(2, 2, b)
    for k in range(nblk - 1):
        sl = slice(k * b, (k + 1) * b)
        mr.observe(stems[:, :, sl], mix[:, sl], clean=True)
    assert mr.enabled  # the residual (the hiss) is below -10 dB of the mixture
    assert mr.trust[4] > 0.999 and mr.trust[20] > 0.999 and mr.trust[100] < 1e-6
    sl = slice((nblk - 1) * b, nblk * b)
    blocks = stems[:, :, sl].copy()
    blocks[0] = 0.0  # lost
    mr.repair(blocks, np.array([False, True]), mix[:, sl], bands=True)
    np.testing.assert_allclose(blocks[0], stems[0, :, sl], atol=1e-4)  # no hiss in it


def test_block_bands_share_a_residual_by_each_stems_bins():
    b, nblk = 256, 40
    truth = bin_tones(nblk * b, [[6, 9], [30, 45]], b)
    mix = truth.sum(axis=0)
    mr = MixtureRepair(2, 2, b)
    warm(mr, truth, mix, b)
    sl = slice(35 * b, 36 * b)
    blocks = truth[:, :, sl].copy()
    blocks[0] *= 0.4  # both wrong: the input was concealed
    blocks[1] *= 1.5
    by_energy = blocks.copy()
    assert mr.repair_if_off(blocks, mix[:, sl], bands=True)
    mr.repair(by_energy, None, mix[:, sl])
    np.testing.assert_allclose(blocks.sum(axis=0), mix[:, sl], atol=1e-5)  # sum restored
    for s in range(2):
        err = np.sum((blocks[s] - truth[s, :, sl]) ** 2)
        assert err < 0.01 * np.sum((by_energy[s] - truth[s, :, sl]) ** 2)
        assert err < 1e-3 * np.sum(truth[s, :, sl] ** 2)
