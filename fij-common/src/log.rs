//! The campaign log's records: one JSON object per line, written by `fij run --log FILE` and read
//! back by `fij run --replay`, the integration tests' harness and `cargo xtask bench`. One type
//! for the writer and every reader, so a field cannot be renamed on one side only.
//!
//! `t_ns` is nanoseconds since the campaign start on the kernel's clock (`CLOCK_MONOTONIC`, the
//! clock of `bpf_ktime_get_ns`); `ktime_ns` is that clock's raw value.
extern crate std;

use std::{string::String, vec::Vec};

use serde::{Deserialize, Serialize};

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    Start {
        seed: u64,
        /// The scenario file, absolute, so `--replay` finds it from any directory.
        scenario: String,
        start_ktime_ns: u64,
        targets: Vec<TargetRecord>,
        /// The node this fij ran as (`--node`, docs/multi-node.md); absent on one machine.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// The wall clock at `t_ns` 0, and how far this node can vouch for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clock: Option<Clock>,
    },
    Injection {
        t_ns: u64,
        ktime_ns: u64,
        fault: String,
        target: String,
        pid: u32,
        tid: u32,
        /// Instance of the target the process belongs to.
        instance: u32,
        /// Hit number of a counted trigger (0 for a time trigger).
        hit: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        syscall: Option<String>,
        /// The trigger as written: `write`, `sched:sched_switch`, `uprobe /bin/x:f`, `time …`.
        trigger: String,
        /// "none" for `partition` and `error`, which signal nothing.
        signal: String,
        /// `action = "error"`: what the failed call returned (`ECONNREFUSED`, `retval 0`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errno: Option<String>,
        /// Who fired it: "kernel" (in the victim's context), or "fij" (a time trigger whose
        /// victim slept through its due time and so could not claim it), or "seccomp" (fij's
        /// answer to a call a spawned target's seccomp filter sent it, `action = "error"`).
        by: String,
        /// Time triggers: when it was due, and how late it fired.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduled_t_ns: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        late_ns: Option<u64>,
        /// The seeded draw that decided a probabilistic fault (see docs/determinism.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        draw: Option<u64>,
        /// Whether the signal was queued (`bpf_send_signal`, or kill(2) for fij's own fires).
        delivered: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Fork {
        t_ns: u64,
        target: String,
        parent_pid: u32,
        pid: u32,
    },
    Exit {
        t_ns: u64,
        ktime_ns: u64,
        target: String,
        pid: u32,
        /// Exit code for a normal exit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        /// Signal that ended the process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        /// When a per-process hit trigger fired on this process: how many more hits of that
        /// fault it made after the last injection (0 when a kill landed on its hit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hits_after_injection: Option<u64>,
    },
    /// A process joined the target set by matching a selector target (`comm`, `exe`, `uid`,
    /// `cgroup`) at exec, or at fork by a matching parent.
    Joined {
        t_ns: u64,
        target: String,
        pid: u32,
        by: String,
    },
    /// A socket of a crashed process went silent (its tuple is dropped by fij's tc programs).
    Silenced {
        t_ns: u64,
        target: String,
        pid: u32,
        fault: String,
        protocol: String,
        local_port: u16,
        /// 0 for listening and unconnected sockets.
        remote_port: u16,
    },
    /// `recover_after` passed (or the campaign ended): the crashed process's tuples speak again
    /// ("the host is back").
    Recovered { t_ns: u64, pid: u32, tuples: usize },
    /// A partition began: the process's current tuples are silent both ways from `t_ns` on,
    /// which is after its injection (fij reads the sockets from /proc when the event arrives).
    Partitioned {
        t_ns: u64,
        pid: u32,
        fault: String,
        tuples: usize,
    },
    /// The partition's `duration` passed (or the campaign ended): its tuples speak again.
    Healed { t_ns: u64, pid: u32, tuples: usize },
    /// `resume_after` passed (or the campaign ended): SIGCONT for a stopped process.
    Resumed { t_ns: u64, pid: u32 },
    /// A node crash silenced its node's addresses: no packet from or to them passes fij's tc
    /// programs, whatever process or protocol (a power loss, seen from the network).
    NodeSilenced {
        t_ns: u64,
        node: String,
        fault: String,
        addresses: Vec<String>,
    },
    /// `recover_after` of a node crash passed (or the campaign ended): its node's addresses
    /// speak again ("the node is back").
    NodeRecovered {
        t_ns: u64,
        node: String,
        fault: String,
        addresses: Vec<String>,
    },
    End {
        t_ns: u64,
        reason: EndReason,
        injections: u64,
        failed_injections: u64,
        exits: u64,
        events_lost: u64,
    },
}

/// One instance of a target as the campaign armed it (in the `start` record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub name: String,
    pub instance: u32,
    pub pid: u32,
    pub spawned: bool,
}

/// The wall clock of a campaign's start (`CLOCK_REALTIME`), to order several nodes' logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// Unix time in nanoseconds at `t_ns` 0.
    pub start_unix_ns: u64,
    /// `start_at`: the planned start, Unix nanoseconds (the start is this plus fij's lateness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_unix_ns: Option<u64>,
    /// Whether the kernel says the clock is synchronized (NTP/PTP: `adjtimex`'s STA_UNSYNC clear).
    pub synchronized: bool,
    /// The kernel's maximum error of the clock (`adjtimex` maxerror), microseconds: how far this
    /// node's clock may be from true time, so from another node's by at most the sum of both.
    pub max_error_us: u64,
}

/// Why a campaign ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Every target process exited.
    TargetsExited,
    /// `duration` passed.
    Duration,
    /// fij got SIGINT or SIGTERM.
    Interrupted,
}

impl Record {
    /// The `event` tag as written in the log: "start", "injection", …
    pub fn event(&self) -> &'static str {
        match self {
            Record::Start { .. } => "start",
            Record::Injection { .. } => "injection",
            Record::Fork { .. } => "fork",
            Record::Exit { .. } => "exit",
            Record::Joined { .. } => "joined",
            Record::Silenced { .. } => "silenced",
            Record::Recovered { .. } => "recovered",
            Record::Partitioned { .. } => "partitioned",
            Record::Healed { .. } => "healed",
            Record::Resumed { .. } => "resumed",
            Record::NodeSilenced { .. } => "node_silenced",
            Record::NodeRecovered { .. } => "node_recovered",
            Record::End { .. } => "end",
        }
    }

    /// Parses one line of a log.
    pub fn from_line(line: &str) -> Result<Record, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// The line as written in the log (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("log records serialize")
    }
}

/// Reads every complete record of a log's text: a last line without its newline (still being
/// written) is left out. An error names the 1-based line that is not a record.
pub fn parse_log(text: &str) -> Result<Vec<Record>, (usize, serde_json::Error)> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Record::from_line(line).map_err(|e| (i + 1, e)))
        .collect()
}

/// `CLOCK_MONOTONIC` now in nanoseconds: the clock of `bpf_ktime_get_ns`, so userspace times
/// compare with the kernel's event times.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{string::ToString, vec};

    #[test]
    fn a_record_written_reads_back_the_same() {
        let records = vec![
            Record::Start {
                seed: 7,
                scenario: "/s.toml".into(),
                start_ktime_ns: 12,
                targets: vec![TargetRecord {
                    name: "w".into(),
                    instance: 0,
                    pid: 42,
                    spawned: true,
                }],
                node: Some("n1".into()),
                clock: Some(Clock {
                    start_unix_ns: 1_796_407_200_000_000_000,
                    planned_unix_ns: Some(1_796_407_200_000_000_000),
                    synchronized: true,
                    max_error_us: 500,
                }),
            },
            Record::Exit {
                t_ns: 5,
                ktime_ns: 17,
                target: "w".into(),
                pid: 42,
                code: None,
                signal: Some("SIGKILL".into()),
                hits_after_injection: None,
            },
        ];
        let text: String = records.iter().map(|r| r.to_line() + "\n").collect();
        assert_eq!(parse_log(&text).unwrap(), records);
        assert!(text.contains(
            r#"{"event":"exit","t_ns":5,"ktime_ns":17,"target":"w","pid":42,"signal":"SIGKILL"}"#
        ));
    }

    #[test]
    fn a_line_from_an_earlier_fij_still_reads() {
        // An injection record as fij wrote it before this type moved here.
        let line = r#"{"event":"injection","t_ns":1,"ktime_ns":2,"fault":"f","target":"w","pid":3,"tid":3,"instance":0,"hit":5,"syscall":"write","trigger":"write","signal":"SIGKILL","by":"kernel","delivered":true}"#;
        let record = Record::from_line(line).unwrap();
        assert_eq!(record.event(), "injection");
        assert_eq!(record.to_line(), line.to_string());
    }

    #[test]
    fn an_unfinished_last_line_is_left_out_and_a_bad_line_is_named() {
        assert_eq!(parse_log("{\"event\":\"resumed\",\"t_").unwrap(), vec![]);
        let bad = "{\"event\":\"resumed\",\"t_ns\":1,\"pid\":2}\nnot json\n";
        assert_eq!(parse_log(bad).unwrap_err().0, 2);
    }
}
