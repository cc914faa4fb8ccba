//! `fij log merge LOG…`: the logs of a campaign's nodes as one timeline. Each record's wall-clock
//! time is its log's start (`clock.start_unix_ns` of the `start` record) plus its `t_ns`; the
//! merged log is ordered by it (ties keep the order of the arguments, then of each log) and every
//! line carries its node and that time: `{"node":"n1","unix_ns":…,"event":"injection",…}`.
use std::path::Path;

use anyhow::{Result, bail};
use fij_common::log::Record;
use serde::Serialize;

use crate::report::read_log;

/// One line of a merged log: the record, flattened, with its node and wall-clock time.
#[derive(Serialize)]
struct Merged<'a> {
    node: &'a str,
    unix_ns: u64,
    #[serde(flatten)]
    record: &'a Record,
}

/// The time of a record since its campaign's start (0 for the `start` record).
fn t_ns(record: &Record) -> u64 {
    match record {
        Record::Start { .. } => 0,
        Record::Injection { t_ns, .. }
        | Record::Fork { t_ns, .. }
        | Record::Exit { t_ns, .. }
        | Record::Joined { t_ns, .. }
        | Record::Silenced { t_ns, .. }
        | Record::Recovered { t_ns, .. }
        | Record::Partitioned { t_ns, .. }
        | Record::Healed { t_ns, .. }
        | Record::Resumed { t_ns, .. }
        | Record::NodeSilenced { t_ns, .. }
        | Record::NodeRecovered { t_ns, .. }
        | Record::End { t_ns, .. } => *t_ns,
    }
}

/// The merged JSONL text of `logs`. A log without a wall clock in its `start` record (written
/// by a fij before multi-node campaigns) cannot be placed on the timeline: an error.
pub fn merge(logs: &[impl AsRef<Path>]) -> Result<String> {
    let mut lines: Vec<(u64, String)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for path in logs {
        let path = path.as_ref();
        let records = read_log(path)?;
        let Some(Record::Start { node, clock, .. }) = records.first() else {
            unreachable!("read_log checks the start record");
        };
        let Some(clock) = clock else {
            bail!(
                "{}: its start record has no wall clock (`clock`): written by an older fij",
                path.display()
            );
        };
        // A log of a campaign without nodes is named by its file.
        let node = node.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or("?".into(), |s| s.to_string_lossy().into_owned())
        });
        if names.contains(&node) {
            bail!(
                "{}: node `{node}` is already in an earlier log",
                path.display()
            );
        }
        names.push(node.clone());
        for record in &records {
            let unix_ns = clock.start_unix_ns + t_ns(record);
            let line = serde_json::to_string(&Merged {
                node: &node,
                unix_ns,
                record,
            })?;
            lines.push((unix_ns, line));
        }
    }
    // Stable: equal times keep argument and log order.
    lines.sort_by_key(|(t, _)| *t);
    Ok(lines.into_iter().map(|(_, line)| line + "\n").collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fij_common::log::{Clock, EndReason};

    fn log(dir: &Path, node: &str, start_unix_ns: u64, records: &[Record]) -> std::path::PathBuf {
        let start = Record::Start {
            seed: 1,
            scenario: "/s.toml".into(),
            start_ktime_ns: 5,
            targets: vec![],
            node: Some(node.into()),
            clock: Some(Clock {
                start_unix_ns,
                planned_unix_ns: None,
                synchronized: true,
                max_error_us: 10,
            }),
        };
        let text: String = std::iter::once(&start)
            .chain(records)
            .map(|r| r.to_line() + "\n")
            .collect();
        let path = dir.join(format!("{node}.jsonl"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn end(t_ns: u64) -> Record {
        Record::End {
            t_ns,
            reason: EndReason::Duration,
            injections: 0,
            failed_injections: 0,
            exits: 0,
            events_lost: 0,
        }
    }

    #[test]
    fn records_of_two_nodes_interleave_by_wall_clock_with_their_node() {
        let dir = std::env::temp_dir().join(format!("fij-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = log(
            &dir,
            "a",
            1_000,
            &[Record::Resumed { t_ns: 50, pid: 7 }, end(500)],
        );
        let b = log(&dir, "b", 1_020, &[end(10)]);
        let merged = merge(&[&a, &b]).unwrap();
        let got: Vec<(String, u64, String)> = merged
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["node"].as_str().unwrap().to_string(),
                    v["unix_ns"].as_u64().unwrap(),
                    v["event"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let row = |n: &str, t, e: &str| (n.to_string(), t, e.to_string());
        assert_eq!(
            got,
            vec![
                row("a", 1_000, "start"),
                row("b", 1_020, "start"),
                row("b", 1_030, "end"),
                row("a", 1_050, "resumed"),
                row("a", 1_500, "end"),
            ]
        );
        // The same node twice is an error (two logs of one node are two campaigns).
        assert!(
            merge(&[&a, &a])
                .unwrap_err()
                .to_string()
                .contains("node `a`")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
