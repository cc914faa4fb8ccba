//! The ChaCha20 draw in C, for the module runtime's scripts: stap's own `randint()` is a
//! jiffies-seeded LCG that no run can replay, so a probabilistic fault embeds this instead and
//! draws exactly what `fij_common::random::hit_draw` draws (docs/determinism.md). SystemTap's
//! `-p2` does not compile embedded C, so the test below compiles this very text with gcc and
//! compares it with `fij_common::random` and `rand_chacha`.

/// Kernel-safe C: no includes (the kernel and the test's wrapper provide `uint32_t` and
/// `uint64_t`), no floats, no division but by 8, 128 bytes of stack. Everything is prefixed
/// `fij_` so that it cannot clash with stap's runtime.
pub const CHACHA20_C: &str = r#"/* fij's ChaCha20 draw: bit for bit rand_chacha's ChaCha20Rng (docs/determinism.md). */
#define FIJ_ROTL32(v, n) (((v) << (n)) | ((v) >> (32 - (n))))
#define FIJ_QUARTER_ROUND(a, b, c, d) do { \
	a += b; d ^= a; d = FIJ_ROTL32(d, 16); \
	c += d; b ^= c; b = FIJ_ROTL32(b, 12); \
	a += b; d ^= a; d = FIJ_ROTL32(d, 8); \
	c += d; b ^= c; b = FIJ_ROTL32(b, 7); \
} while (0)

/* Draw `position` of ChaCha20 stream `stream` under the key of `seed` (key words: seed low,
 * seed high, then zeros): words 2*(position % 8) (low half) and +1 (high half) of block
 * position / 8. */
static uint64_t fij_chacha20_draw(uint64_t seed, uint64_t stream, uint64_t position)
{
	uint32_t input[16], x[16];
	uint64_t counter = position / 8;
	unsigned int word = 2 * (unsigned int)(position % 8);
	int i;

	input[0] = 0x61707865; input[1] = 0x3320646e; input[2] = 0x79622d32; input[3] = 0x6b206574;
	input[4] = (uint32_t)seed; input[5] = (uint32_t)(seed >> 32);
	for (i = 6; i < 12; i++)
		input[i] = 0;
	input[12] = (uint32_t)counter; input[13] = (uint32_t)(counter >> 32);
	input[14] = (uint32_t)stream; input[15] = (uint32_t)(stream >> 32);
	for (i = 0; i < 16; i++)
		x[i] = input[i];
	for (i = 0; i < 10; i++) {
		FIJ_QUARTER_ROUND(x[0], x[4], x[8], x[12]);
		FIJ_QUARTER_ROUND(x[1], x[5], x[9], x[13]);
		FIJ_QUARTER_ROUND(x[2], x[6], x[10], x[14]);
		FIJ_QUARTER_ROUND(x[3], x[7], x[11], x[15]);
		FIJ_QUARTER_ROUND(x[0], x[5], x[10], x[15]);
		FIJ_QUARTER_ROUND(x[1], x[6], x[11], x[12]);
		FIJ_QUARTER_ROUND(x[2], x[7], x[8], x[13]);
		FIJ_QUARTER_ROUND(x[3], x[4], x[9], x[14]);
	}
	return ((uint64_t)(uint32_t)(x[word + 1] + input[word + 1]) << 32)
		| (uint32_t)(x[word] + input[word]);
}

/* Hit `hit` (1-based) of a fault takes draw hit - 1 of its hit stream (FaultRule::hit_stream:
   1 << 32 | fault_id without [[node]]). */
static uint64_t fij_hit_draw(uint64_t seed, uint64_t stream, uint64_t hit)
{
	return fij_chacha20_draw(seed, stream, hit - 1);
}

/* Whether a draw fires under a probability threshold (fij_common::random::fires_with). */
static int fij_fires_with(uint64_t draw, uint64_t threshold)
{
	return threshold == ~0ULL || draw < threshold;
}
"#;

#[cfg(test)]
mod tests {
    use super::CHACHA20_C;
    use fij_common::random::{
        fires_with, hit_draw, key_from_seed, probability_threshold, seed_bytes, stream_for_fault,
    };
    use rand_chacha::{
        ChaCha20Rng,
        rand_core::{Rng, SeedableRng},
    };
    use std::{
        fmt::Write as _,
        io::Write as _,
        process::{Command, Stdio},
    };

    /// A wrapper around [`CHACHA20_C`]: for each input line `seed fault hit threshold` it prints
    /// `draw fires`, all in decimal.
    const MAIN_C: &str = r#"
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
%CHACHA%
int main(void)
{
	uint64_t seed, hit, threshold;
	uint32_t fault;
	while (scanf("%" SCNu64 " %" SCNu32 " %" SCNu64 " %" SCNu64, &seed, &fault, &hit, &threshold) == 4) {
		uint64_t draw = fij_hit_draw(seed, (1ULL << 32) | fault, hit);
		printf("%" PRIu64 " %d\n", draw, fij_fires_with(draw, threshold));
	}
	return 0;
}
"#;

    /// Compiles the embedded C with gcc (as the kernel would: -O2, warnings are errors) and runs
    /// it on `input`; gcc is a build dependency of fij (`cargo xtask setup`), so its absence
    /// fails the test.
    fn run_c(label: &str, input: &str) -> String {
        // One directory per test: the tests of a binary run in parallel.
        let dir = std::env::temp_dir().join(format!("fij-chacha-c-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("chacha.c");
        let binary = dir.join("chacha");
        std::fs::write(&source, MAIN_C.replace("%CHACHA%", CHACHA20_C)).unwrap();
        let gcc = Command::new("gcc")
            .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&binary)
            .arg(&source)
            .output()
            .expect("gcc must be installed (cargo xtask setup installs it)");
        assert!(
            gcc.status.success(),
            "gcc failed on the embedded C:\n{}",
            String::from_utf8_lossy(&gcc.stderr)
        );
        let mut child = Command::new(&binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        std::fs::remove_dir_all(&dir).unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn the_embedded_c_draws_what_rand_chacha_and_fij_common_draw() {
        let seeds = [0, 1, 7, 42, u64::MAX, 0x0123_4567_89ab_cdef];
        let faults = [0, 1, 5, 1023, u32::MAX];
        // Hits 1..=20 cross two block boundaries; the far ones cross the 32-bit counter word.
        let hits: Vec<u64> = (1..=20)
            .chain([1_000_003, 8 << 32, (8 << 32) + 1, u64::MAX - 7, u64::MAX])
            .collect();
        let thresholds = [
            probability_threshold(0.2),
            probability_threshold(0.5),
            probability_threshold(1.0),
            1,
        ];
        let mut input = String::new();
        let mut expected = Vec::new();
        for &seed in &seeds {
            for &fault in &faults {
                let mut rng = ChaCha20Rng::from_seed(seed_bytes(seed));
                rng.set_stream(stream_for_fault(fault));
                for (i, &hit) in hits.iter().enumerate() {
                    let threshold = thresholds[i % thresholds.len()];
                    writeln!(input, "{seed} {fault} {hit} {threshold}").unwrap();
                    let draw = hit_draw(&key_from_seed(seed), stream_for_fault(fault), hit);
                    // The reference itself, independently of fij_common: draw k-1 of the stream.
                    rng.set_word_pos(2 * u128::from(hit - 1));
                    assert_eq!(draw, rng.next_u64(), "seed {seed} fault {fault} hit {hit}");
                    expected.push(format!("{draw} {}", u8::from(fires_with(draw, threshold))));
                }
            }
        }
        let got: Vec<String> = run_c("draws", &input).lines().map(str::to_string).collect();
        assert_eq!(got.len(), expected.len());
        for (line, (got, expected)) in input.lines().zip(got.iter().zip(&expected)) {
            assert_eq!(got, expected, "input `{line}`");
        }
    }

    #[test]
    fn the_embedded_c_decides_probability_edges_like_fires_with() {
        // Threshold u64::MAX always fires, 0 never; a draw equal to the threshold does not fire.
        let draw = hit_draw(&key_from_seed(3), stream_for_fault(2), 9);
        let cases = [
            (u64::MAX, true),
            (0, false),
            (draw, false),
            (draw + 1, true),
        ];
        let input: String = cases
            .iter()
            .map(|(threshold, _)| format!("3 2 9 {threshold}\n"))
            .collect();
        let got: Vec<String> = run_c("edges", &input).lines().map(str::to_string).collect();
        for ((threshold, fires), got) in cases.iter().zip(&got) {
            assert_eq!(fires_with(draw, *threshold), *fires);
            assert_eq!(
                *got,
                format!("{draw} {}", u8::from(*fires)),
                "threshold {threshold}"
            );
        }
    }
}
