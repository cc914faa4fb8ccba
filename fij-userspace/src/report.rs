//! What a campaign did, told from its log: per fault, its injections; per target, its processes
//! and how each ended; the crash silences, partitions and stops with their start and end; the
//! seed and the command that replays it. `fij run` prints it at the end (folding each record in
//! as it is written), `fij report LOG` from a log file; `--json` for scripts.
use std::{collections::BTreeMap, fmt, path::Path};

use anyhow::{Context, Result, anyhow};
use fij_common::log::{EndReason, Record, parse_log};
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    /// Why the campaign ended; absent when the log stops before its `end` record (fij killed).
    pub ended: Option<EndReason>,
    /// Seconds from the start to the `end` record (or to the last record).
    pub duration_s: f64,
    pub faults: Vec<FaultSummary>,
    pub targets: Vec<TargetSummary>,
    /// Crash silences, partitions and stops, in the order they began.
    pub windows: Vec<Window>,
    /// Events the kernel could not deliver to fij (its ring buffer was full).
    pub events_lost: u64,
    /// The command that reruns this campaign (and, with the log, checks it injects the same).
    pub replay: String,
    #[serde(skip)]
    signalled: Signalled,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultSummary {
    pub fault: String,
    pub trigger: String,
    /// Injections fired (delivered or not).
    pub injections: u64,
    /// Of those, the ones whose signal could not be sent or that fij refused (a protected pid).
    pub failed: u64,
    /// Of those, the ones fij fired itself (a time-triggered victim asleep at its due time).
    pub by_fij: u64,
    /// `action = "error"`: what the failed calls returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetSummary {
    pub target: String,
    pub processes: Vec<ProcessSummary>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    /// The target process that forked it (absent for an instance's root or a joined process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    /// `code N`, `signal NAME`, or absent while it still ran at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Its end was fij's doing: an injection delivered to it sent the signal it died of.
    pub by_fij: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// "crash silence", "partition" or "stop".
    pub kind: &'static str,
    pub pid: u32,
    pub fault: String,
    pub start_s: f64,
    /// Absent when it lasted to the end of the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_s: Option<f64>,
}

fn secs(t_ns: u64) -> f64 {
    t_ns as f64 / 1e9
}

/// The records of a fij log file (every complete line; it must begin with `start`).
pub fn read_log(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let records = parse_log(&text)
        .map_err(|(line, e)| anyhow!("{}:{line}: not a fij log record: {e}", path.display()))?;
    anyhow::ensure!(
        matches!(records.first(), Some(Record::Start { .. })),
        "{}: does not begin with a `start` record: not a fij log",
        path.display()
    );
    Ok(records)
}

impl Summary {
    /// The summary of a log's records, read from `path`.
    pub fn of_records(path: &Path, records: &[Record]) -> Summary {
        let mut summary = Summary::default();
        summary.logged_to(path);
        for record in records {
            summary.add(record);
        }
        summary
    }

    /// Lists `faults` (name, trigger) up front, so faults that never fired show too.
    pub fn with_faults<'a>(faults: impl IntoIterator<Item = (&'a str, String)>) -> Summary {
        Summary {
            faults: faults
                .into_iter()
                .map(|(fault, trigger)| FaultSummary {
                    fault: fault.to_string(),
                    trigger,
                    ..FaultSummary::default()
                })
                .collect(),
            ..Summary::default()
        }
    }

    /// Names the log this summary comes from: replaying it also checks the injections.
    pub fn logged_to(&mut self, log: &Path) {
        self.replay = format!("fij run --replay {}", log.display());
    }

    /// Folds one record in.
    pub fn add(&mut self, record: &Record) {
        match record {
            Record::Start {
                seed,
                scenario,
                targets,
                ..
            } => {
                self.seed = *seed;
                self.scenario = scenario.clone();
                if !self.replay.starts_with("fij run --replay") {
                    self.replay = format!("fij run {scenario} --seed {seed}");
                }
                for t in targets {
                    self.process(&t.name, t.pid, None);
                }
            }
            Record::Injection {
                t_ns,
                fault,
                trigger,
                pid,
                signal,
                errno,
                by,
                delivered,
                ..
            } => {
                self.duration_s = secs(*t_ns);
                let summary = match self.faults.iter_mut().find(|f| f.fault == *fault) {
                    Some(summary) => summary,
                    None => {
                        self.faults.push(FaultSummary {
                            fault: fault.clone(),
                            trigger: trigger.clone(),
                            ..FaultSummary::default()
                        });
                        self.faults.last_mut().expect("just pushed")
                    }
                };
                summary.injections += 1;
                if summary.errno.is_none() {
                    summary.errno = errno.clone();
                }
                summary.failed += u64::from(!delivered);
                summary.by_fij += u64::from(by == "fij");
                if *delivered && signal == "SIGSTOP" {
                    self.open(Window {
                        kind: "stop",
                        pid: *pid,
                        fault: fault.clone(),
                        start_s: secs(*t_ns),
                        end_s: None,
                    });
                }
                if *delivered {
                    self.signalled.entry(*pid).or_default().push(signal.clone());
                }
            }
            Record::Fork {
                t_ns,
                target,
                parent_pid,
                pid,
            } => {
                self.duration_s = secs(*t_ns);
                self.process(target, *pid, Some(*parent_pid));
            }
            Record::Joined { target, pid, .. } => {
                self.process(target, *pid, None);
            }
            Record::Exit {
                t_ns,
                target,
                pid,
                code,
                signal,
                ..
            } => {
                self.duration_s = secs(*t_ns);
                let by_fij = signal
                    .as_ref()
                    .is_some_and(|s| self.signalled.get(pid).is_some_and(|sent| sent.contains(s)));
                let ended = match (code, signal) {
                    (_, Some(signal)) => format!("signal {signal}"),
                    (Some(code), None) => format!("code {code}"),
                    (None, None) => "unknown".to_string(),
                };
                let process = self.process(target, *pid, None);
                process.ended = Some(ended);
                process.by_fij = by_fij;
            }
            Record::Silenced {
                t_ns, pid, fault, ..
            } => {
                let open = self
                    .windows
                    .iter()
                    .any(|w| w.kind == "crash silence" && w.pid == *pid && w.end_s.is_none());
                if !open {
                    self.open(Window {
                        kind: "crash silence",
                        pid: *pid,
                        fault: fault.clone(),
                        start_s: secs(*t_ns),
                        end_s: None,
                    });
                }
            }
            Record::Recovered { t_ns, pid, .. } => self.close("crash silence", *pid, *t_ns),
            Record::Partitioned {
                t_ns, pid, fault, ..
            } => self.open(Window {
                kind: "partition",
                pid: *pid,
                fault: fault.clone(),
                start_s: secs(*t_ns),
                end_s: None,
            }),
            Record::Healed { t_ns, pid, .. } => self.close("partition", *pid, *t_ns),
            Record::Resumed { t_ns, pid } => self.close("stop", *pid, *t_ns),
            // Windows are per process; a node's silence shows in its processes' crash windows.
            Record::NodeSilenced { t_ns, .. } | Record::NodeRecovered { t_ns, .. } => {
                self.duration_s = self.duration_s.max(secs(*t_ns));
            }
            Record::End {
                t_ns,
                reason,
                events_lost,
                ..
            } => {
                self.duration_s = secs(*t_ns);
                self.ended = Some(*reason);
                self.events_lost = *events_lost;
            }
        }
    }

    fn process(&mut self, target: &str, pid: u32, parent: Option<u32>) -> &mut ProcessSummary {
        let index = match self.targets.iter().position(|t| t.target == target) {
            Some(index) => index,
            None => {
                self.targets.push(TargetSummary {
                    target: target.to_string(),
                    processes: Vec::new(),
                });
                self.targets.len() - 1
            }
        };
        let processes = &mut self.targets[index].processes;
        // A pid is listed once per life: a recycled pid (ended before) is a new process.
        match processes
            .iter()
            .rposition(|p| p.pid == pid && p.ended.is_none())
        {
            Some(i) => &mut processes[i],
            None => {
                processes.push(ProcessSummary {
                    pid,
                    parent,
                    ..ProcessSummary::default()
                });
                processes.last_mut().expect("just pushed")
            }
        }
    }

    fn open(&mut self, window: Window) {
        self.windows.push(window);
    }

    fn close(&mut self, kind: &str, pid: u32, t_ns: u64) {
        if let Some(w) = self
            .windows
            .iter_mut()
            .rev()
            .find(|w| w.kind == kind && w.pid == pid && w.end_s.is_none())
        {
            w.end_s = Some(secs(t_ns));
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ended = match self.ended {
            Some(EndReason::TargetsExited) => "every target exited",
            Some(EndReason::Duration) => "its duration passed",
            Some(EndReason::Interrupted) => "fij was interrupted (SIGINT/SIGTERM)",
            None => "the log stops before its end (fij was killed?)",
        };
        writeln!(
            f,
            "campaign {} (seed {}): {:.3} s, ended because {ended}",
            self.scenario, self.seed, self.duration_s
        )?;
        writeln!(f, "faults:")?;
        for fault in &self.faults {
            let mut extra = Vec::new();
            if fault.failed > 0 {
                extra.push(format!("{} failed or refused", fault.failed));
            }
            if fault.by_fij > 0 {
                extra.push(format!("{} fired by fij", fault.by_fij));
            }
            let extra = match extra.is_empty() {
                true => String::new(),
                false => format!(" ({})", extra.join(", ")),
            };
            writeln!(
                f,
                "  {:<24} {:>6} injection(s), trigger {}{}{extra}",
                fault.fault,
                fault.injections,
                fault.trigger,
                fault
                    .errno
                    .as_ref()
                    .map_or(String::new(), |e| format!(", the call returned {e}"))
            )?;
        }
        writeln!(f, "targets:")?;
        for target in &self.targets {
            writeln!(
                f,
                "  {} ({} process(es))",
                target.target,
                target.processes.len()
            )?;
            for p in &target.processes {
                let parent = p
                    .parent
                    .map_or(String::new(), |p| format!(" (forked by {p})"));
                let ended = match (&p.ended, p.by_fij) {
                    (Some(e), true) => format!("ended: {e}, by fij"),
                    (Some(e), false) => format!("ended: {e}"),
                    (None, _) => "still running at the end".to_string(),
                };
                writeln!(f, "    pid {:<8}{parent} {ended}", p.pid)?;
            }
        }
        if !self.windows.is_empty() {
            writeln!(f, "windows:")?;
            for w in &self.windows {
                let end = w
                    .end_s
                    .map_or("the end".to_string(), |e| format!("{e:.3} s"));
                writeln!(
                    f,
                    "  {:<13} pid {:<8} {:.3} s → {end}  ({})",
                    w.kind, w.pid, w.start_s, w.fault
                )?;
            }
        }
        if self.events_lost > 0 {
            writeln!(
                f,
                "warning: the kernel dropped {} event(s): the ring buffer was full",
                self.events_lost
            )?;
        }
        writeln!(f, "replay: {}", self.replay)
    }
}

/// Pids that received a delivered injection, with the signals sent, for "ended by fij".
type Signalled = BTreeMap<u32, Vec<String>>;

#[cfg(test)]
mod tests {
    use super::*;
    use fij_common::log::TargetRecord;

    fn injection(t_ns: u64, fault: &str, pid: u32, signal: &str, delivered: bool) -> Record {
        Record::Injection {
            t_ns,
            ktime_ns: t_ns,
            fault: fault.into(),
            target: "w".into(),
            pid,
            tid: pid,
            instance: 0,
            hit: 3,
            syscall: Some("write".into()),
            trigger: "write".into(),
            signal: signal.into(),
            errno: None,
            by: "kernel".into(),
            scheduled_t_ns: None,
            late_ns: None,
            draw: None,
            delivered,
            error: (!delivered).then(|| "refused".into()),
        }
    }

    fn exit(t_ns: u64, pid: u32, code: Option<i32>, signal: Option<&str>) -> Record {
        Record::Exit {
            t_ns,
            ktime_ns: t_ns,
            target: "w".into(),
            pid,
            code,
            signal: signal.map(Into::into),
            hits_after_injection: None,
        }
    }

    #[test]
    fn a_campaign_is_summarized_per_fault_per_process_and_per_window() {
        let mut summary = Summary::with_faults([
            ("kill", "write".to_string()),
            ("stop", "write".to_string()),
            ("never", "read".to_string()),
        ]);
        for record in [
            Record::Start {
                seed: 5,
                scenario: "/s.toml".into(),
                start_ktime_ns: 0,
                targets: vec![TargetRecord {
                    name: "w".into(),
                    instance: 0,
                    pid: 10,
                    spawned: true,
                }],
                node: None,
                clock: None,
            },
            Record::Fork {
                t_ns: 1_000_000,
                target: "w".into(),
                parent_pid: 10,
                pid: 11,
            },
            injection(2_000_000_000, "stop", 11, "SIGSTOP", true),
            Record::Resumed {
                t_ns: 3_000_000_000,
                pid: 11,
            },
            injection(3_500_000_000, "kill", 10, "SIGKILL", true),
            injection(3_600_000_000, "kill", 1, "SIGKILL", false),
            exit(3_500_100_000, 10, None, Some("SIGKILL")),
            exit(3_700_000_000, 11, None, Some("SIGTERM")),
            Record::End {
                t_ns: 4_000_000_000,
                reason: EndReason::TargetsExited,
                injections: 3,
                failed_injections: 1,
                exits: 2,
                events_lost: 0,
            },
        ] {
            summary.add(&record);
        }
        let faults: Vec<_> = summary
            .faults
            .iter()
            .map(|f| (f.fault.as_str(), f.injections, f.failed))
            .collect();
        assert_eq!(faults, [("kill", 2, 1), ("stop", 1, 0), ("never", 0, 0)]);
        let processes: Vec<_> = summary.targets[0]
            .processes
            .iter()
            .map(|p| (p.pid, p.parent, p.ended.as_deref(), p.by_fij))
            .collect();
        assert_eq!(
            processes,
            [
                (10, None, Some("signal SIGKILL"), true),
                // Stopped by fij, but the SIGTERM it died of was not fij's.
                (11, Some(10), Some("signal SIGTERM"), false),
            ]
        );
        assert_eq!(summary.windows.len(), 1);
        let stop = &summary.windows[0];
        assert_eq!(
            (stop.kind, stop.pid, stop.start_s, stop.end_s),
            ("stop", 11, 2.0, Some(3.0))
        );
        assert_eq!(summary.ended, Some(EndReason::TargetsExited));
        assert_eq!(summary.replay, "fij run /s.toml --seed 5");
        let text = summary.to_string();
        assert!(
            text.contains("pid 10       ended: signal SIGKILL, by fij"),
            "{text}"
        );
        assert!(text.contains("1 failed or refused"), "{text}");
        assert!(
            text.contains("stop          pid 11       2.000 s → 3.000 s"),
            "{text}"
        );
    }
}
