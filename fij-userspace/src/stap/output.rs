//! The lines a generated script prints for fij (`fij-stap RECORD key=value …`, see
//! [`super::script`]), read back by `fij run --backend stap`.
use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};

use super::OUTPUT_PREFIX;

/// One line of the script's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Armed {
        ktime_ns: u64,
    },
    Injection {
        fault: u32,
        target: u32,
        instance: u32,
        pid: u32,
        tid: u32,
        hit: u64,
        signal: i32,
        result: i32,
        ktime_ns: u64,
    },
    Fork {
        parent: u32,
        child: u32,
        target: u32,
        ktime_ns: u64,
    },
    Joined {
        pid: u32,
        target: u32,
        by: String,
        ktime_ns: u64,
    },
    Exit {
        pid: u32,
        target: u32,
        /// A wait status; -1 in the BPF runtime, whose exit event has none.
        status: i32,
        ktime_ns: u64,
    },
    End {
        /// `duration` (the scenario's duration ended the script) or `exit` (stopped from outside).
        reason: String,
        ktime_ns: u64,
    },
}

/// Parses one line of output; `None` for a line that is not the script's (a warning of stap's).
pub fn parse(line: &str) -> Option<Result<Line>> {
    let rest = line
        .trim_end()
        .strip_prefix(OUTPUT_PREFIX)?
        .strip_prefix(' ')?;
    Some(parse_record(rest).with_context(|| format!("stap printed `{line}`")))
}

fn parse_record(rest: &str) -> Result<Line> {
    let mut words = rest.split(' ');
    let record = words.next().unwrap_or_default();
    let fields: HashMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
    let text = |key: &str| -> Result<&str> {
        fields
            .get(key)
            .copied()
            .ok_or_else(|| anyhow!("no `{key}`"))
    };
    let int = |key: &str| -> Result<i64> {
        let value = text(key)?;
        value
            .parse()
            .map_err(|_| anyhow!("`{key}` is not a number: {value}"))
    };
    let u32_ = |key: &str| -> Result<u32> {
        u32::try_from(int(key)?).map_err(|_| anyhow!("`{key}` out of range"))
    };
    let ktime_ns = || -> Result<u64> {
        let value = text("ktime_ns")?;
        // Hex in the BPF runtime (its printf has 32-bit integers: two halves), decimal else.
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => value.parse(),
        }
        .map_err(|_| anyhow!("`ktime_ns` is not a number: {value}"))
    };
    Ok(match record {
        "armed" => Line::Armed {
            ktime_ns: ktime_ns()?,
        },
        "injection" => Line::Injection {
            fault: u32_("fault")?,
            target: u32_("target")?,
            instance: u32_("instance")?,
            pid: u32_("pid")?,
            tid: u32_("tid")?,
            hit: int("hit")? as u64,
            signal: int("signal")? as i32,
            result: int("result")? as i32,
            ktime_ns: ktime_ns()?,
        },
        "fork" => Line::Fork {
            parent: u32_("parent")?,
            child: u32_("child")?,
            target: u32_("target")?,
            ktime_ns: ktime_ns()?,
        },
        "joined" => Line::Joined {
            pid: u32_("pid")?,
            target: u32_("target")?,
            by: text("by")?.to_string(),
            ktime_ns: ktime_ns()?,
        },
        "exit" => Line::Exit {
            pid: u32_("pid")?,
            target: u32_("target")?,
            status: int("status")? as i32,
            ktime_ns: ktime_ns()?,
        },
        "end" => Line::End {
            reason: text("reason")?.to_string(),
            ktime_ns: ktime_ns()?,
        },
        other => bail!("unknown record `{other}`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines as the BPF runtime printed them in a real run (docs/stap.md).
    #[test]
    fn the_bpf_runtime_lines_parse_with_their_hex_times() {
        let got = |line: &str| parse(line).unwrap().unwrap();
        assert_eq!(
            got("fij-stap armed ktime_ns=0x510ece87a58"),
            Line::Armed {
                ktime_ns: 0x510ece87a58
            }
        );
        assert_eq!(
            got(
                "fij-stap injection fault=0 target=0 instance=0 pid=5896 tid=5896 hit=5 draw=0 \
                 signal=9 result=0 by=hit scheduled_ns=0 ktime_ns=0x510f966c7e2"
            ),
            Line::Injection {
                fault: 0,
                target: 0,
                instance: 0,
                pid: 5896,
                tid: 5896,
                hit: 5,
                signal: 9,
                result: 0,
                ktime_ns: 0x510f966c7e2,
            }
        );
        assert_eq!(
            got("fij-stap exit pid=5896 target=0 instance=0 status=-1 ktime_ns=0x510f96a0379"),
            Line::Exit {
                pid: 5896,
                target: 0,
                status: -1,
                ktime_ns: 0x510f96a0379
            }
        );
        assert_eq!(
            got("fij-stap end reason=exit ktime_ns=123"),
            Line::End {
                reason: "exit".into(),
                ktime_ns: 123
            }
        );
        // Not the script's: stap's own warnings pass by; a broken record is an error.
        assert!(parse("WARNING: something").is_none());
        assert!(parse("fij-stap injection fault=x").unwrap().is_err());
    }
}
