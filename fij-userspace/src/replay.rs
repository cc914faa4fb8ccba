//! `fij run --replay LOG`: rerun a logged campaign with its scenario and seed, and say whether
//! it injected the same faults on the same hits with the same draws (pids and times aside).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The scenario file and seed a log's `start` record names.
pub fn origin(log: &Path) -> Result<(PathBuf, u64)> {
    let start = records(log)?
        .into_iter()
        .find(|r| r["event"] == "start")
        .with_context(|| format!("{}: no `start` record: not a fij log", log.display()))?;
    let scenario = start["scenario"]
        .as_str()
        .context("`start` record without `scenario`")?;
    let seed = start["seed"]
        .as_u64()
        .context("`start` record without `seed`")?;
    Ok((PathBuf::from(scenario), seed))
}

/// The injections of a log, as (fault, target, instance, hit, syscall, signal, draw): what a
/// seed decides. Pids, times and who fired (kernel or fij) are not part of it.
pub fn injections(log: &Path) -> Result<Vec<String>> {
    Ok(records(log)?
        .iter()
        .filter(|r| r["event"] == "injection")
        .map(|r| {
            format!(
                "fault {} target {} instance {} hit {} {} {} draw {}",
                r["fault"],
                r["target"],
                r["instance"],
                r["hit"],
                r["syscall"],
                r["signal"],
                r["draw"]
            )
        })
        .collect())
}

fn records(log: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", log.display(), i + 1))
        })
        .collect()
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
