//! The campaign log: one JSON object per line (`--log FILE`), flushed line by line so the log is
//! complete up to the last event even if fij itself is killed.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result};
use serde::Serialize;

/// One line of the log. `t_ns` is nanoseconds since the campaign start (kernel clock).
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record<'a> {
    Start {
        seed: u64,
        scenario: &'a str,
        start_ktime_ns: u64,
        targets: Vec<TargetRecord<'a>>,
    },
    Injection {
        t_ns: u64,
        ktime_ns: u64,
        fault: &'a str,
        target: &'a str,
        pid: u32,
        tid: u32,
        /// Instance of the target the process belongs to.
        instance: u32,
        /// Hit number of a syscall trigger (0 for a time trigger).
        hit: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        syscall: Option<&'a str>,
        /// The trigger as written: `write`, `sched:sched_switch`, `uprobe /bin/x:f`, `time …`.
        trigger: String,
        /// "none" for `partition`, which signals nothing.
        signal: String,
        /// Who fired it: "kernel" (in the victim's context), or "fij" (a time trigger whose
        /// victim slept through its due time and so could not claim it).
        by: &'a str,
        /// Time triggers: when it was due, and how late it fired.
        #[serde(skip_serializing_if = "Option::is_none")]
        scheduled_t_ns: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        late_ns: Option<u64>,
        /// The seeded draw that decided a probabilistic fault (see docs/determinism.md).
        #[serde(skip_serializing_if = "Option::is_none")]
        draw: Option<u64>,
        /// Whether `bpf_send_signal` queued the signal.
        delivered: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Fork {
        t_ns: u64,
        target: &'a str,
        parent_pid: u32,
        pid: u32,
    },
    Exit {
        t_ns: u64,
        ktime_ns: u64,
        target: &'a str,
        pid: u32,
        /// Exit code for a normal exit.
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        /// Signal that ended the process.
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        /// When a per-process hit trigger fired on this process: how many more hits of that
        /// fault it made after the last injection (0 when a kill landed on its hit).
        #[serde(skip_serializing_if = "Option::is_none")]
        hits_after_injection: Option<u64>,
    },
    /// A process joined the target set by matching a selector target (`comm`, `exe`, `uid`,
    /// `cgroup`) at exec, or at fork by a matching parent.
    Joined {
        t_ns: u64,
        target: &'a str,
        pid: u32,
        by: &'a str,
    },
    /// A socket of a crashed process went silent (its tuple is dropped by fij's tc programs).
    Silenced {
        t_ns: u64,
        target: &'a str,
        pid: u32,
        fault: &'a str,
        protocol: &'a str,
        local_port: u16,
        /// 0 for listening and unconnected sockets.
        remote_port: u16,
    },
    /// `recover_after` passed: the crashed process's tuples speak again ("the host is back").
    Recovered { t_ns: u64, pid: u32, tuples: usize },
    /// A partition began: the process's current tuples are silent both ways.
    Partitioned {
        t_ns: u64,
        pid: u32,
        fault: &'a str,
        tuples: usize,
    },
    /// The partition's `duration` passed: its tuples speak again.
    Healed { t_ns: u64, pid: u32, tuples: usize },
    /// `resume_after` passed (or the campaign ended): SIGCONT for a stopped process.
    Resumed { t_ns: u64, pid: u32 },
    End {
        t_ns: u64,
        reason: EndReason,
        injections: u64,
        failed_injections: u64,
        exits: u64,
        events_lost: u64,
    },
}

#[derive(Debug, Serialize)]
pub struct TargetRecord<'a> {
    pub name: &'a str,
    pub instance: u32,
    pub pid: u32,
    pub spawned: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Every target process exited.
    TargetsExited,
    /// `duration` passed.
    Duration,
    /// fij got SIGINT or SIGTERM.
    Interrupted,
}

pub struct EventLog {
    out: Option<BufWriter<File>>,
}

impl EventLog {
    /// Creates (or truncates) the log file. Never through a symbolic link: a link planted
    /// where the log goes (a world-writable directory) would have root write wherever it points,
    /// so a path that is a symlink is refused (invalid input, exit 2) and the open itself uses
    /// `O_NOFOLLOW`, so a link planted after the check is refused too.
    pub fn create(path: Option<&Path>) -> Result<Self> {
        let out = path.map(open_log).transpose()?.map(BufWriter::new);
        Ok(Self { out })
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        if let Some(out) = &mut self.out {
            serde_json::to_writer(&mut *out, record)?;
            out.write_all(b"\n")?;
            out.flush().context("writing the log")?;
        }
        Ok(())
    }
}

fn open_log(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let symlink = |path: &Path| {
        crate::campaign::InvalidInput(format!(
            "--log {}: is a symbolic link; fij does not write its log through one (give the \
             file's own path)",
            path.display()
        ))
    };
    if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(symlink(path).into());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => symlink(path).into(),
            _ => {
                anyhow::Error::new(e).context(format!("cannot create log file {}", path.display()))
            }
        })
}
