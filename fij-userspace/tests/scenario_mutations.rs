//! A property test of the scenario reader and the compile stage over mutated scenario text (the
//! fuzz target of docs/reliability.md): starting from every example in `scenarios/`, tens of
//! thousands of seeded mutations — bytes flipped, lines dropped, duplicated or swapped, tokens
//! replaced by others that scenarios use, numbers made huge or negative — never panic, and every
//! rejection names a position inside the file. Pure: nothing is loaded or spawned (the reader
//! and the compile stage do no more than look at files and tracefs).
use std::path::{Path, PathBuf};

use fij::{compile::compile, scenario::parse_str};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MUTATIONS_PER_FILE: usize = 3000;

/// Tokens that mean something in a scenario, and some that mean trouble.
const TOKENS: &[&str] = &[
    "[[target]]",
    "[[fault]]",
    "name",
    "command",
    "pid",
    "instances",
    "comm",
    "exe",
    "uid",
    "cgroup",
    "action",
    "trigger",
    "nth",
    "every",
    "after",
    "count",
    "probability",
    "select",
    "per",
    "signal",
    "syscall",
    "tracepoint",
    "uprobe",
    "kprobe",
    "at",
    "duration",
    "seed",
    "recover_after",
    "resume_after",
    "ports",
    "port",
    "exponential",
    "weibull",
    "uniform",
    "mean",
    "shape",
    "scale",
    "min",
    "max",
    "fixed",
    "percent",
    "\"kill\"",
    "\"crash\"",
    "\"stop\"",
    "\"partition\"",
    "\"SIGTERM\"",
    "\"0s\"",
    "\"1h\"",
    "-1",
    "0",
    "1e308",
    "nan",
    "18446744073709551615",
    "9223372036854775807",
    "-9223372036854775808",
    "\"\"",
    "\"\\u0000\"",
    "{",
    "}",
    "[",
    "]",
    "=",
    ",",
    ".",
    "\n",
    "#",
    "'''",
    "\"\"\"",
    "é",
    "\u{202e}",
];

fn examples() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenarios/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn mutate(rng: &mut ChaCha8Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..rng.random_range(1..=4) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let i = rng.random_range(0..lines.len());
        match rng.random_range(0..7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let line = lines[i].clone();
                lines.insert(i, line);
            }
            2 => {
                let j = rng.random_range(0..lines.len());
                lines.swap(i, j);
            }
            3 => {
                // Replace a token (a run of non-space characters) by another.
                let words: Vec<&str> = lines[i].split(' ').collect();
                let w = rng.random_range(0..words.len());
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                lines[i] = words
                    .iter()
                    .enumerate()
                    .map(|(k, word)| if k == w { token } else { word })
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            4 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                lines.insert(
                    i,
                    format!("{} = {}", TOKENS[rng.random_range(0..25)], token),
                );
            }
            5 => {
                // Flip one byte (kept valid UTF-8 by working on chars).
                let mut chars: Vec<char> = lines[i].chars().collect();
                if !chars.is_empty() {
                    let c = rng.random_range(0..chars.len());
                    chars[c] = char::from(rng.random_range(0x20u8..0x7f));
                }
                lines[i] = chars.into_iter().collect();
            }
            _ => {
                // Truncate the file mid-line.
                let cut = rng.random_range(0..=lines[i].len());
                let cut = (0..=cut)
                    .rev()
                    .find(|&c| lines[i].is_char_boundary(c))
                    .unwrap();
                lines[i].truncate(cut);
                lines.truncate(i + 1);
            }
        }
    }
    lines.join("\n")
}

#[test]
fn mutated_scenarios_never_panic_and_every_rejection_has_a_position() {
    let mut accepted = 0;
    let mut rejected = 0;
    for (n, (path, text)) in examples().iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        for _ in 0..MUTATIONS_PER_FILE {
            let mutated = mutate(&mut rng, text);
            let line_count = mutated.lines().count().max(1);
            let outcome = std::panic::catch_unwind(|| {
                parse_str(path, &mutated).and_then(|scenario| compile(&scenario, 7).map(|_| ()))
            });
            match outcome {
                Err(_) => panic!("panicked on:\n{mutated}"),
                Ok(Ok(())) => accepted += 1,
                Ok(Err(diagnostics)) => {
                    rejected += 1;
                    assert!(
                        !diagnostics.0.is_empty(),
                        "rejected without a reason:\n{mutated}"
                    );
                    for d in &diagnostics.0 {
                        assert_eq!(d.file, *path);
                        assert!(
                            d.line >= 1 && d.line <= line_count + 1 && d.col >= 1,
                            "{d} is outside the file ({line_count} lines):\n{mutated}"
                        );
                        assert!(!d.message.is_empty());
                    }
                }
            }
        }
    }
    eprintln!("{accepted} mutated scenarios accepted, {rejected} rejected with positions");
    assert!(rejected > 0 && accepted > 0);
}
