//! `fij run --replay LOG`: rerun a logged campaign with its scenario and seed, and say whether
//! it injected the same faults on the same hits with the same draws (pids and times aside).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use fij_common::log::{Record, parse_log};

/// The scenario file and seed a log's `start` record names.
pub fn origin(log: &Path) -> Result<(PathBuf, u64)> {
    records(log)?
        .into_iter()
        .find_map(|r| match r {
            Record::Start { scenario, seed, .. } => Some((PathBuf::from(scenario), seed)),
            _ => None,
        })
        .with_context(|| format!("{}: no `start` record: not a fij log", log.display()))
}

/// The node a log's `start` record names (`fij run --node`), if any.
pub fn origin_node(log: &Path) -> Result<Option<String>> {
    Ok(records(log)?
        .into_iter()
        .find_map(|r| match r {
            Record::Start { node, .. } => Some(node),
            _ => None,
        })
        .flatten())
}

/// The injections of a log, as (fault, target, instance, hit, syscall, signal, draw): what a
/// seed decides. Pids, times and who fired (kernel or fij) are not part of it.
pub fn injections(log: &Path) -> Result<Vec<String>> {
    Ok(records(log)?
        .into_iter()
        .filter_map(|r| match r {
            Record::Injection {
                fault,
                target,
                instance,
                hit,
                syscall,
                signal,
                errno,
                draw,
                ..
            } => Some(format!(
                "fault {fault:?} target {target:?} instance {instance} hit {hit} {} {signal:?}{} draw {}",
                syscall.map_or("null".to_string(), |s| format!("{s:?}")),
                errno.map_or(String::new(), |e| format!(" {e}")),
                draw.map_or("null".to_string(), |d| d.to_string()),
            )),
            _ => None,
        })
        .collect())
}

fn records(log: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    // A log cut short (fij killed mid-line) still replays up to its last whole record.
    parse_log(&text)
        .map_err(|(line, e)| anyhow!("{}:{line}: not a fij log record: {e}", log.display()))
}

/// Compares the injections of the original and the replayed campaign, as sorted lists: the seed
/// decides which injections happen, while the order of injections of different faults or
/// processes close in time is the scheduler's. An error names the first difference.
pub fn compare(original: &Path, replayed: &Path) -> Result<usize> {
    let (mut a, mut b) = (injections(original)?, injections(replayed)?);
    a.sort();
    b.sort();
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        bail!(
            "replay differs at injection {}: logged {}, replayed {} ({} vs {} injections)",
            i + 1,
            a.get(i).map_or("nothing", String::as_str),
            b.get(i).map_or("nothing", String::as_str),
            a.len(),
            b.len()
        );
    }
    Ok(a.len())
}
