//! fij's one source of randomness: ChaCha20, addressed by (seed, stream, position).
//!
//! Every random decision, in the kernel programs and in userspace (`fij plan`), is a [`draw`]:
//! the `position`-th `u64` of ChaCha20 stream `stream` under the key derived from the campaign
//! seed. A draw is computed from its address alone — there is no generator state to carry, share
//! or race on — so the same seed gives the same decisions, bit for bit, wherever they are made.
//!
//! The output is exactly `rand_chacha::ChaCha20Rng`'s (tested against rand_chacha 0.10):
//!
//! ```text
//! let mut rng = ChaCha20Rng::from_seed(seed_bytes(seed));
//! rng.set_stream(stream);
//! rng.set_word_pos(2 * position as u128);
//! assert_eq!(rng.next_u64(), draw(&key_from_seed(seed), stream, position));
//! ```
//!
//! Everything here except [`probability_threshold`] is BPF-safe: no heap, no floats, no
//! indexing, no panics, one loop with a constant bound. `docs/determinism.md` has the contract.

/// A ChaCha key: eight little-endian 32-bit words (state words 4..12).
pub type Key = [u32; 8];

/// Double rounds of ChaCha20 (`rand_chacha::ChaCha20Rng`): 10 double rounds = 20 rounds.
pub const DOUBLE_ROUNDS: u32 = 10;

/// `u64` draws per 64-byte block.
pub const DRAWS_PER_BLOCK: u64 = 8;

/// "expand 32-byte k", state words 0..4.
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// The campaign key of `seed`: key word 0 = low 32 bits of the seed, word 1 = high 32 bits,
/// words 2..8 = 0. Not `SeedableRng::seed_from_u64`, whose expansion is rand_core's business.
#[inline(always)]
pub const fn key_from_seed(seed: u64) -> Key {
    [seed as u32, (seed >> 32) as u32, 0, 0, 0, 0, 0, 0]
}

/// The 32 seed bytes of `seed` for `rand_chacha::ChaCha20Rng::from_seed`: the seed in
/// little-endian order, then 24 zero bytes. Same key as [`key_from_seed`].
pub const fn seed_bytes(seed: u64) -> [u8; 32] {
    let le = seed.to_le_bytes();
    let mut bytes = [0u8; 32];
    let mut i = 0;
    while i < le.len() {
        bytes[i] = le[i];
        i += 1;
    }
    bytes
}

/// Stream domains: the high 32 bits of a stream id say what kind of decision it feeds, the low
/// 32 bits which fault or target, so two kinds of decision never share a stream. Domain 0 (stream
/// ids below 2^32, including a fresh `ChaCha20Rng`'s stream 0) is never used by fij; domains 7 and
/// up are free for new kinds of decision.
pub const DOMAIN_FAULT_HITS: u32 = 1;
/// Domain of a time-triggered fault's due times (userspace, `rand_distr`): instance `i` samples
/// from word position `i << 32` of the fault's stream.
pub const DOMAIN_FAULT_TIMES: u32 = 2;
/// Domain of a fault's `select` draw (userspace, `rand::seq::index::sample` from word 0).
pub const DOMAIN_FAULT_SELECTION: u32 = 3;
/// Domain of a node fault's due times (userspace): the `i`-th selected node samples from word
/// position `i << 32`, as instances do for `DOMAIN_FAULT_TIMES`.
pub const DOMAIN_NODE_FAULT_TIMES: u32 = 4;
/// Domain of a node fault's `select` among its `nodes` (userspace).
pub const DOMAIN_NODE_FAULT_SELECTION: u32 = 5;
/// Domain of the per-hit draws of the faults whose targets run on one `[[node]]`: id =
/// `node << 16 | the fault's position among that node's faults`, so a node's draws come from
/// (seed, node) and no other node's faults move them.
pub const DOMAIN_NODE_HITS: u32 = 6;

/// The stream id of `id` in `domain`: `domain << 32 | id`.
#[inline(always)]
pub const fn stream_id(domain: u32, id: u32) -> u64 {
    ((domain as u64) << 32) | id as u64
}

/// Stream of fault `fault_id`'s per-hit draws (probability): position `hit - 1` is hit `hit`'s.
#[inline(always)]
pub const fn stream_for_fault(fault_id: u32) -> u64 {
    stream_id(DOMAIN_FAULT_HITS, fault_id)
}

/// Stream of the per-hit draws of the `fault_on_node`-th fault (0-based, file order) of the
/// targets of node `node` (its position in `[[node]]`); both below 2^16.
#[inline(always)]
pub const fn stream_for_hits_on_node(node: u32, fault_on_node: u32) -> u64 {
    stream_id(DOMAIN_NODE_HITS, (node << 16) | (fault_on_node & 0xffff))
}

/// Stream of fault `fault_id`'s due times (one region of 2^32 words per instance).
#[inline(always)]
pub const fn stream_for_fault_times(fault_id: u32) -> u64 {
    stream_id(DOMAIN_FAULT_TIMES, fault_id)
}

/// Stream of fault `fault_id`'s instance selection.
#[inline(always)]
pub const fn stream_for_fault_selection(fault_id: u32) -> u64 {
    stream_id(DOMAIN_FAULT_SELECTION, fault_id)
}

/// Stream of node fault `node_fault_id`'s due times (one region of 2^32 words per node).
#[inline(always)]
pub const fn stream_for_node_fault_times(node_fault_id: u32) -> u64 {
    stream_id(DOMAIN_NODE_FAULT_TIMES, node_fault_id)
}

/// Stream of node fault `node_fault_id`'s node selection.
#[inline(always)]
pub const fn stream_for_node_fault_selection(node_fault_id: u32) -> u64 {
    stream_id(DOMAIN_NODE_FAULT_SELECTION, node_fault_id)
}

/// Position in the fault's stream of counted hit number `hit` (1-based): `hit - 1`, so hit k
/// takes the k-th `next_u64` of the stream. Hit 0 does not exist (it wraps to `u64::MAX`).
#[inline(always)]
pub const fn position_for_hit(hit: u64) -> u64 {
    hit.wrapping_sub(1)
}

/// The draw of counted hit `hit` (1-based) of a fault whose hits draw from `stream`
/// (`FaultRule::hit_stream`: [`stream_for_fault`] without `[[node]]`, else
/// [`stream_for_hits_on_node`]).
#[inline(always)]
pub fn hit_draw(key: &Key, stream: u64, hit: u64) -> u64 {
    draw(key, stream, position_for_hit(hit))
}

#[inline(always)]
fn quarter_round(mut a: u32, mut b: u32, mut c: u32, mut d: u32) -> (u32, u32, u32, u32) {
    a = a.wrapping_add(b);
    d = (d ^ a).rotate_left(16);
    c = c.wrapping_add(d);
    b = (b ^ c).rotate_left(12);
    a = a.wrapping_add(b);
    d = (d ^ a).rotate_left(8);
    c = c.wrapping_add(d);
    b = (b ^ c).rotate_left(7);
    (a, b, c, d)
}

/// Block `counter` of ChaCha20 stream `stream` under `key`, as 16 words (word i = bytes 4i..4i+4
/// of the keystream block, little-endian).
///
/// State layout (as rand_chacha's, Bernstein's original 64-bit nonce variant, not RFC 8439):
///
/// ```text
/// sigma0    sigma1    sigma2    sigma3
/// key0      key1      key2      key3
/// key4      key5      key6      key7
/// ctr_lo    ctr_hi    stream_lo stream_hi
/// ```
#[inline(always)]
pub fn block(key: &Key, stream: u64, counter: u64) -> [u32; 16] {
    let [k0, k1, k2, k3, k4, k5, k6, k7] = *key;
    let [s0, s1, s2, s3] = SIGMA;
    let (s12, s13) = (counter as u32, (counter >> 32) as u32);
    let (s14, s15) = (stream as u32, (stream >> 32) as u32);

    let (mut x0, mut x1, mut x2, mut x3) = (s0, s1, s2, s3);
    let (mut x4, mut x5, mut x6, mut x7) = (k0, k1, k2, k3);
    let (mut x8, mut x9, mut x10, mut x11) = (k4, k5, k6, k7);
    let (mut x12, mut x13, mut x14, mut x15) = (s12, s13, s14, s15);
    for _ in 0..DOUBLE_ROUNDS {
        // Columns.
        (x0, x4, x8, x12) = quarter_round(x0, x4, x8, x12);
        (x1, x5, x9, x13) = quarter_round(x1, x5, x9, x13);
        (x2, x6, x10, x14) = quarter_round(x2, x6, x10, x14);
        (x3, x7, x11, x15) = quarter_round(x3, x7, x11, x15);
        // Diagonals.
        (x0, x5, x10, x15) = quarter_round(x0, x5, x10, x15);
        (x1, x6, x11, x12) = quarter_round(x1, x6, x11, x12);
        (x2, x7, x8, x13) = quarter_round(x2, x7, x8, x13);
        (x3, x4, x9, x14) = quarter_round(x3, x4, x9, x14);
    }
    [
        x0.wrapping_add(s0),
        x1.wrapping_add(s1),
        x2.wrapping_add(s2),
        x3.wrapping_add(s3),
        x4.wrapping_add(k0),
        x5.wrapping_add(k1),
        x6.wrapping_add(k2),
        x7.wrapping_add(k3),
        x8.wrapping_add(k4),
        x9.wrapping_add(k5),
        x10.wrapping_add(k6),
        x11.wrapping_add(k7),
        x12.wrapping_add(s12),
        x13.wrapping_add(s13),
        x14.wrapping_add(s14),
        x15.wrapping_add(s15),
    ]
}

/// Draw number `position` (0-based) of stream `stream` under `key`: the `position + 1`-th
/// `next_u64` of a `ChaCha20Rng` after `set_stream(stream)` and `set_word_pos(0)`.
///
/// Draw p is words 2·(p mod 8) (low half) and 2·(p mod 8) + 1 (high half) of block p / 8.
/// Only that block is computed.
#[inline(always)]
pub fn draw(key: &Key, stream: u64, position: u64) -> u64 {
    let w = block(key, stream, position / DRAWS_PER_BLOCK);
    let pair = |lo: u32, hi: u32| ((hi as u64) << 32) | lo as u64;
    // A three-level multiplexer on the bits of `position % 8`, without branches: a `match` would
    // split the verifier's path eight ways at every draw, and a later draw at the same position
    // would keep them apart (16 such draws in one program exceeded the 1M-instruction limit).
    let (b0, b1, b2) = (position & 1, (position >> 1) & 1, (position >> 2) & 1);
    let p01 = mux(b0, pair(w[0], w[1]), pair(w[2], w[3]));
    let p23 = mux(b0, pair(w[4], w[5]), pair(w[6], w[7]));
    let p45 = mux(b0, pair(w[8], w[9]), pair(w[10], w[11]));
    let p67 = mux(b0, pair(w[12], w[13]), pair(w[14], w[15]));
    mux(b2, mux(b1, p01, p23), mux(b1, p45, p67))
}

/// `a` when `bit` is 0, `b` when it is 1, by masking. BPF has no conditional move: LLVM lowers a
/// `select` to a branch, and it would turn the mask back into a `select` without the `black_box`.
#[inline(always)]
fn mux(bit: u64, a: u64, b: u64) -> u64 {
    let mask = core::hint::black_box(0u64.wrapping_sub(bit));
    a ^ ((a ^ b) & mask)
}

/// The threshold of firing probability `p`: ⌊p·2^64⌋, saturating — `u64::MAX` for `p >= 1.0`,
/// 0 for `p <= 0` and NaN. With [`fires_with`], an f64 `p` in (0, 1) fires with probability
/// ⌊p·2^64⌋ / 2^64 (off by less than 2^-64), `p = 1.0` always and `p = 0.0` never.
///
/// Userspace only (scenario loading, `fij plan`): floats do not exist in BPF code, so the
/// kernel gets the threshold. Range checks of `p` are the scenario parser's job.
#[cfg(not(target_arch = "bpf"))]
pub fn probability_threshold(p: f64) -> u64 {
    // 2^64 is exact in f64, so the product is exact; `as` truncates and saturates (NaN → 0).
    (p * 18_446_744_073_709_551_616.0) as u64
}

/// Whether a draw fires under `threshold`: `draw < threshold`, except that `u64::MAX` fires on
/// every draw (it stands for p = 1.0; no f64 below 1.0 maps to it).
#[inline(always)]
pub const fn fires_with(draw: u64, threshold: u64) -> bool {
    threshold == u64::MAX || draw < threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::{Rng, SeedableRng};

    const SEEDS: [u64; 6] = [
        0,
        1,
        u64::MAX,
        42,
        0x0123_4567_89ab_cdef,
        0x8000_0000_0000_0001,
    ];
    const STREAMS: [u64; 7] = [
        0,
        1,
        (1 << 32) + 5,
        u64::MAX,
        0xdead_beef_0000_0001,
        stream_for_fault(3),
        stream_for_fault_times(7),
    ];

    fn reference(seed: u64, stream: u64) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::from_seed(seed_bytes(seed));
        rng.set_stream(stream);
        rng
    }

    /// rand_chacha's draw at `position`, by seeking.
    fn reference_draw(seed: u64, stream: u64, position: u64) -> u64 {
        let mut rng = reference(seed, stream);
        rng.set_word_pos(2 * u128::from(position));
        rng.next_u64()
    }

    /// Deterministic test inputs.
    fn splitmix64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn seed_bytes_and_key_are_the_same_key() {
        for seed in SEEDS {
            let bytes = seed_bytes(seed);
            let key = key_from_seed(seed);
            for (i, word) in key.iter().enumerate() {
                let le = [
                    bytes[4 * i],
                    bytes[4 * i + 1],
                    bytes[4 * i + 2],
                    bytes[4 * i + 3],
                ];
                assert_eq!(*word, u32::from_le_bytes(le));
            }
            assert_eq!(ChaCha20Rng::from_seed(bytes).get_seed(), bytes);
        }
    }

    #[test]
    fn zero_key_block_zero_is_the_chacha20_test_vector() {
        // Keystream of key 0, nonce 0, block 0 (draft-agl-tls-chacha20poly1305 / rand_chacha).
        let expected = [
            0xade0b876, 0x903df1a0, 0xe56a5d40, 0x28bd8653, 0xb819d2bd, 0x1aed8da0, 0xccef36a8,
            0xc70d778b, 0x7c5941da, 0x8d485751, 0x3fe02477, 0x374ad8b8, 0xf4b8436a, 0x1ca11815,
            0x69b687c3, 0x8665eeb2,
        ];
        assert_eq!(block(&key_from_seed(0), 0, 0), expected);
    }

    #[test]
    fn consecutive_draws_match_next_u64() {
        // Positions 0..40 cross four block boundaries; the reference is a plain sequential rng.
        for seed in SEEDS {
            for stream in STREAMS {
                let key = key_from_seed(seed);
                let mut rng = reference(seed, stream);
                rng.set_word_pos(0);
                for position in 0..40 {
                    assert_eq!(
                        draw(&key, stream, position),
                        rng.next_u64(),
                        "seed {seed} stream {stream:#x} position {position}"
                    );
                }
                assert_eq!(rng.get_word_pos(), 80);
            }
        }
    }

    #[test]
    fn next_u32_pairs_are_low_then_high() {
        let mut rng = reference(7, stream_for_fault(1));
        let key = key_from_seed(7);
        for position in 0..20 {
            let lo = u64::from(rng.next_u32());
            let hi = u64::from(rng.next_u32());
            assert_eq!(draw(&key, stream_for_fault(1), position), hi << 32 | lo);
        }
    }

    #[test]
    fn far_draws_match_seeking() {
        let positions = [
            7,
            8,
            1_000_003,
            (1 << 32) - 1,
            1 << 32,
            1 << 40,
            (1 << 61) - 1,
            1 << 61,
            u64::MAX - 1,
            u64::MAX,
        ];
        for seed in SEEDS {
            for stream in STREAMS {
                let key = key_from_seed(seed);
                for position in positions {
                    assert_eq!(
                        draw(&key, stream, position),
                        reference_draw(seed, stream, position),
                        "seed {seed} stream {stream:#x} position {position}"
                    );
                }
            }
        }
    }

    #[test]
    fn random_triples_match() {
        let mut state = 0x5eed;
        for _ in 0..2000 {
            let seed = splitmix64(&mut state);
            let stream = splitmix64(&mut state);
            // Mix small and full-range positions.
            let raw = splitmix64(&mut state);
            let position = if raw & 1 == 0 { raw >> 40 } else { raw };
            assert_eq!(
                draw(&key_from_seed(seed), stream, position),
                reference_draw(seed, stream, position),
                "seed {seed} stream {stream:#x} position {position}"
            );
        }
    }

    #[test]
    fn block_counter_is_64_bits_and_does_not_touch_the_stream() {
        // Block counter words 12..14 (lo, hi); blocks 2^32 - 1 and 2^32 straddle the carry.
        for counter in [0, 1, (1 << 32) - 1, 1 << 32, u64::MAX] {
            for stream in STREAMS {
                let mut rng = reference(99, stream);
                rng.set_word_pos(u128::from(counter) * 16);
                let expected: [u32; 16] = core::array::from_fn(|_| rng.next_u32());
                assert_eq!(block(&key_from_seed(99), stream, counter), expected);
            }
        }
    }

    #[test]
    fn hit_draws_are_the_fault_stream_from_its_start() {
        let key = key_from_seed(42);
        let mut rng = reference(42, stream_for_fault(5));
        for hit in 1..=20 {
            assert_eq!(hit_draw(&key, stream_for_fault(5), hit), rng.next_u64());
        }
    }

    #[test]
    fn stream_domains_are_disjoint() {
        assert_eq!(stream_for_fault(0), 1 << 32);
        assert_eq!(stream_for_fault(u32::MAX), (2 << 32) - 1);
        assert_eq!(stream_for_fault_times(0), 2 << 32);
        assert_eq!(stream_for_fault_selection(0), 3 << 32);
        assert!(stream_for_fault(u32::MAX) < stream_for_fault_times(0));
        assert!(stream_for_fault_times(u32::MAX) < stream_for_fault_selection(0));
        let key = key_from_seed(1);
        assert_ne!(
            draw(&key, stream_for_fault(0), 0),
            draw(&key, stream_for_fault_times(0), 0)
        );
    }

    #[test]
    fn probability_one_always_fires() {
        let t = probability_threshold(1.0);
        assert_eq!(t, u64::MAX);
        for d in [0, 1, 1 << 63, u64::MAX - 1, u64::MAX] {
            assert!(fires_with(d, t));
        }
        assert_eq!(probability_threshold(2.0), u64::MAX);
        assert_eq!(probability_threshold(f64::INFINITY), u64::MAX);
    }

    #[test]
    fn probability_zero_never_fires() {
        for p in [0.0, -0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            let t = probability_threshold(p);
            assert_eq!(t, 0, "p = {p}");
            assert!(!fires_with(0, t) && !fires_with(u64::MAX - 1, t));
        }
    }

    #[test]
    fn probability_half_is_exactly_half_the_range() {
        let t = probability_threshold(0.5);
        assert_eq!(t, 1 << 63);
        assert!(fires_with((1 << 63) - 1, t));
        assert!(!fires_with(1 << 63, t));
        assert_eq!(probability_threshold(0.25), 1 << 62);
    }

    #[test]
    fn tiny_and_almost_one_probabilities() {
        // 2^-64 fires on draw 0 only; anything smaller never fires.
        let smallest = 1.0 / 18_446_744_073_709_551_616.0;
        assert_eq!(probability_threshold(smallest), 1);
        assert!(fires_with(0, 1) && !fires_with(1, 1));
        assert_eq!(probability_threshold(smallest / 2.0), 0);
        assert_eq!(probability_threshold(1e-300), 0);
        assert_eq!(probability_threshold(f64::MIN_POSITIVE), 0);
        // 1e-12 · 2^64 = 18446744.07…
        assert_eq!(probability_threshold(1e-12), 18_446_744);
        // The largest f64 below 1.0 is 1 - 2^-53: not "always".
        let below_one = 1.0 - f64::EPSILON / 2.0;
        assert_eq!(probability_threshold(below_one), u64::MAX - (1 << 11) + 1);
        assert!(!fires_with(u64::MAX, probability_threshold(below_one)));
    }

    #[test]
    fn fire_rate_follows_probability() {
        let key = key_from_seed(2024);
        for (p, n) in [(0.5, 20_000u64), (0.1, 20_000), (0.01, 50_000)] {
            let t = probability_threshold(p);
            let fired = (1..=n)
                .filter(|&hit| fires_with(hit_draw(&key, stream_for_fault(0), hit), t))
                .count();
            let rate = fired as f64 / n as f64;
            // Over 5 standard deviations off would be a bug, not bad luck.
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!((rate - p).abs() < 5.0 * sigma, "p = {p}: rate {rate}");
        }
    }
}
