//! Which node this fij is, when the campaign starts on the wall clock, and what this node can
//! say about its clock (docs/multi-node.md). No coordinator: every node reads the same scenario
//! and seed, and these are the only things it decides from its own surroundings.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fij_common::log::Clock;

use crate::scenario::{Scenario, StartAt};

/// The environment variable that names the node (for launchers that cannot add a flag).
pub const NODE_ENV: &str = "FIJ_NODE";
/// Open MPI's rank of this process: with neither `--node` nor `FIJ_NODE`, rank `r` is the
/// `r`-th `[[node]]` (0-based), so `mpirun -n N fij run s.toml` needs no wrapper.
pub const MPI_RANK_ENV: &str = "OMPI_COMM_WORLD_RANK";

/// The node this fij runs as: the index of `--node NAME`, else of `$FIJ_NODE`, else the
/// `$OMPI_COMM_WORLD_RANK`-th node. None for a scenario without `[[node]]`. An error (input:
/// exit 2) for a name that is not a node, a node given to a scenario without nodes, or a
/// multi-node scenario that is not told which node this is.
pub fn this_node(scenario: &Scenario, flag: Option<&str>) -> Result<Option<usize>, String> {
    let env = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    resolve(scenario, flag, env(NODE_ENV), env(MPI_RANK_ENV))
}

fn resolve(
    scenario: &Scenario,
    flag: Option<&str>,
    env_node: Option<String>,
    mpi_rank: Option<String>,
) -> Result<Option<usize>, String> {
    let nodes = &scenario.cluster.nodes;
    let names = || {
        nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, from) = match (flag, env_node) {
        (Some(flag), _) => (flag.to_string(), "--node"),
        (None, Some(env)) => (env, NODE_ENV),
        (None, None) => match mpi_rank {
            Some(rank) if !nodes.is_empty() => {
                let node = rank.parse::<usize>().ok().filter(|r| *r < nodes.len());
                return match node {
                    Some(node) => Ok(Some(node)),
                    None => Err(format!(
                        "{MPI_RANK_ENV}={rank} names no node: the scenario has {} ({})",
                        nodes.len(),
                        names()
                    )),
                };
            }
            _ if nodes.is_empty() => return Ok(None),
            _ => {
                return Err(format!(
                    "{}: the scenario has nodes ({}): say which one this is with --node NAME \
                     or {NODE_ENV}=NAME",
                    scenario.path.display(),
                    names()
                ));
            }
        },
    };
    if nodes.is_empty() {
        return Err(format!(
            "{from} {name}: {} has no [[node]]",
            scenario.path.display()
        ));
    }
    match scenario.cluster.node(&name) {
        Some(node) => Ok(Some(node)),
        None => Err(format!(
            "{from} {name}: no such node in {} (its nodes: {})",
            scenario.path.display(),
            names()
        )),
    }
}

/// `path` with every `{node}` replaced by the node's name (`--log /var/log/fij-{node}.jsonl`):
/// launchers that start the same command on every node, on one shared directory or one
/// machine, get one log per node. Without a node, `{node}` is kept as written.
pub fn per_node_path(path: &std::path::Path, node: Option<&str>) -> std::path::PathBuf {
    match (node, path.to_str()) {
        (Some(node), Some(text)) if text.contains("{node}") => text.replace("{node}", node).into(),
        _ => path.to_path_buf(),
    }
}

/// The wall-clock time at which `start_at` says time 0 is, seen at `now`: a fixed time as
/// written; `next P` is the next multiple of P since the epoch that is at least a second away
/// (time to arm the targets).
pub fn planned_start(start_at: StartAt, now: SystemTime) -> SystemTime {
    match start_at {
        StartAt::Wall(at) => at,
        StartAt::Next(period) => {
            let earliest =
                now.duration_since(UNIX_EPOCH).unwrap_or_default() + Duration::from_secs(1);
            let period_ns = period.as_nanos();
            let next = earliest.as_nanos().div_ceil(period_ns) * period_ns;
            UNIX_EPOCH + Duration::from_nanos(next as u64)
        }
    }
}

/// Unix nanoseconds of `at`.
pub fn unix_ns(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// What this node knows of its clock now: Unix time, and the kernel's synchronization state.
pub fn clock(start: SystemTime, planned: Option<SystemTime>) -> Clock {
    // SAFETY: adjtimex with modes 0 only reads into the timex we own.
    let (state, tx) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        (libc::adjtimex(&mut tx), tx)
    };
    Clock {
        start_unix_ns: unix_ns(start),
        planned_unix_ns: planned.map(unix_ns),
        synchronized: state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0,
        max_error_us: tx.maxerror.max(0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse_str;
    use std::path::Path;

    fn scenario(nodes: &[&str]) -> Scenario {
        let mut text = String::new();
        for n in nodes {
            text += &format!("[[node]]\nname = \"{n}\"\n");
        }
        text += "[[target]]\nname = \"t\"\ncommand = [\"true\"]\n";
        if let Some(first) = nodes.first() {
            text += &format!("node = \"{first}\"\n");
        }
        parse_str(Path::new("s.toml"), &text).unwrap()
    }

    #[test]
    fn the_node_comes_from_the_flag_then_the_environment_then_the_mpi_rank() {
        let s = scenario(&["a", "b", "c"]);
        let some = |v: &str| Some(v.to_string());
        assert_eq!(resolve(&s, Some("b"), some("c"), some("0")), Ok(Some(1)));
        assert_eq!(resolve(&s, None, some("c"), some("0")), Ok(Some(2)));
        assert_eq!(resolve(&s, None, None, some("0")), Ok(Some(0)));
        assert_eq!(
            resolve(&s, None, None, some("3")),
            Err("OMPI_COMM_WORLD_RANK=3 names no node: the scenario has 3 (a, b, c)".into())
        );
        assert_eq!(
            resolve(&s, Some("d"), None, None),
            Err("--node d: no such node in s.toml (its nodes: a, b, c)".into())
        );
        assert_eq!(
            resolve(&s, None, None, None),
            Err("s.toml: the scenario has nodes (a, b, c): say which one this is with --node NAME or FIJ_NODE=NAME".into())
        );
        let single = scenario(&[]);
        assert_eq!(resolve(&single, None, None, some("2")), Ok(None));
        assert_eq!(
            resolve(&single, None, some("a"), None),
            Err("FIJ_NODE a: s.toml has no [[node]]".into())
        );
    }

    #[test]
    fn a_log_path_names_its_node() {
        let p = |s: &str, n| per_node_path(Path::new(s), n);
        assert_eq!(
            p("/l/fij-{node}.jsonl", Some("n2")),
            Path::new("/l/fij-n2.jsonl")
        );
        assert_eq!(
            p("/l/fij-{node}.jsonl", None),
            Path::new("/l/fij-{node}.jsonl")
        );
        assert_eq!(p("/l/fij.jsonl", Some("n2")), Path::new("/l/fij.jsonl"));
    }

    #[test]
    fn next_period_starts_on_a_whole_multiple_at_least_a_second_away() {
        let at = |s: f64| UNIX_EPOCH + Duration::from_secs_f64(s);
        let ten = StartAt::Next(Duration::from_secs(10));
        assert_eq!(planned_start(ten, at(100.0)), at(110.0));
        assert_eq!(planned_start(ten, at(108.5)), at(110.0));
        assert_eq!(planned_start(ten, at(109.5)), at(120.0));
        assert_eq!(planned_start(StartAt::Wall(at(5.0)), at(100.0)), at(5.0));
    }
}
