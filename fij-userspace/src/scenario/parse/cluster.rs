//! The multi-node keys of a scenario (docs/multi-node.md): `[[node]]`, a target's `node`,
//! `[[node_fault]]` and `start_at`, read and checked with the same positions and messages as the
//! rest of the file.
use std::{net::IpAddr, str::FromStr, time::Duration};

use toml_edit::TableLike;

use super::{Cx, Entry, Reader, Seen, did_you_mean, select, trigger, without_tcx};
use crate::scenario::model::{Node, NodeAction, NodeFault, StartAt, Trigger};

/// `[[node]]` tables: name, `addresses`, `netns`. The valid nodes, and whether all were.
pub(super) fn nodes(cx: &mut Cx<'_>, e: &Entry<'_>) -> (Vec<Node>, bool) {
    let Some(tables) = cx.tables(e, "[[node]]") else {
        return (Vec::new(), false);
    };
    let mut seen = Seen::default();
    let mut nodes = Vec::new();
    let mut ok = true;
    for (table, at) in tables {
        let node = node(cx, table, at, &mut seen);
        ok &= node.is_some();
        nodes.extend(node);
    }
    (nodes, ok)
}

fn node(cx: &mut Cx<'_>, table: &dyn TableLike, at: usize, seen: &mut Seen) -> Option<Node> {
    let mut r = Reader::new(table, "in [[node]]", "", at);
    let name = r
        .required(cx, "name")
        .and_then(|e| seen.name(cx, &e, "node"));
    let addresses = r.get("addresses").map(|e| addresses(cx, &e));
    let netns = r.get("netns").map(|e| {
        let name = cx.non_empty_string(&e)?;
        // A name under /run/netns (as `ip netns` makes), never a path.
        if name.contains('/') || name == "." || name == ".." {
            cx.error(
                e.at,
                format!("`netns` is a name under /run/netns (as `ip netns add` makes), not a path: `{name}`"),
            );
            return None;
        }
        Some(name.to_string())
    });
    r.finish(cx);
    let name = name?;
    if name.contains(char::is_whitespace) {
        cx.error(at, format!("node name `{name}` must not contain spaces"));
        return None;
    }
    Some(Node {
        name,
        addresses: addresses.unwrap_or(Some(Vec::new()))?,
        netns: match netns {
            None => None,
            Some(netns) => Some(netns?),
        },
        at: cx.pos(at),
    })
}

/// `addresses = ["10.0.0.1", "fd00::1"]`.
fn addresses(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Vec<IpAddr>> {
    let array = cx.array(e, "an array of IP addresses such as [\"10.0.0.1\"]")?;
    let mut found = Vec::new();
    let mut ok = true;
    for value in array.iter() {
        let at = value.span().map_or(e.at, |s| s.start);
        match value.as_str().map(IpAddr::from_str) {
            Some(Ok(ip)) => found.push(ip),
            Some(Err(_)) => {
                cx.error(
                    at,
                    format!(
                        "`addresses`: `{}` is not an IP address",
                        value.as_str().unwrap_or_default()
                    ),
                );
                ok = false;
            }
            None => {
                cx.error(at, "`addresses`: expected a string such as \"10.0.0.1\"");
                ok = false;
            }
        }
    }
    ok.then_some(found)
}

/// A node name that must be defined: its index.
fn node_ref(cx: &mut Cx<'_>, at: usize, name: &str, nodes: &[Node]) -> Option<usize> {
    if let Some(i) = nodes.iter().position(|n| n.name == name) {
        return Some(i);
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let list = match names.is_empty() {
        true => "the scenario has no [[node]]".to_string(),
        false => format!(
            "defined nodes: {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    cx.error(
        at,
        format!(
            "undefined node `{name}` ({list}){}",
            did_you_mean(name, names.iter().copied())
        ),
    );
    None
}

/// A target's `node = "…"`: None when absent, Some(None) when invalid.
pub(super) fn target_node(
    cx: &mut Cx<'_>,
    e: Option<&Entry<'_>>,
    nodes: &[Node],
) -> Option<Option<usize>> {
    let e = e?;
    let name = match cx.string(e) {
        Some(name) => name,
        None => return Some(None),
    };
    Some(node_ref(cx, e.at, name, nodes))
}

/// `nodes = ["a", "b"]`: a non-empty list of defined nodes, each once.
fn node_list(cx: &mut Cx<'_>, e: &Entry<'_>, nodes: &[Node]) -> Option<Vec<usize>> {
    let array = cx.array(e, "an array of node names such as [\"n1\", \"n2\"]")?;
    if array.is_empty() {
        cx.error(e.at, format!("`{}` must name at least one node", e.label));
        return None;
    }
    let mut found = Vec::new();
    let mut ok = true;
    for value in array.iter() {
        let at = value.span().map_or(e.at, |s| s.start);
        let Some(name) = value.as_str() else {
            cx.error(
                at,
                format!("`{}`: expected a node name (a string)", e.label),
            );
            ok = false;
            continue;
        };
        match node_ref(cx, at, name, nodes) {
            Some(i) if found.contains(&i) => {
                cx.error(at, format!("`{}` names node `{name}` twice", e.label));
                ok = false;
            }
            Some(i) => found.push(i),
            None => ok = false,
        }
    }
    ok.then_some(found)
}

/// One `[[node_fault]]` table.
pub(super) fn node_fault(
    cx: &mut Cx<'_>,
    table: &dyn TableLike,
    at: usize,
    nodes: &[Node],
    seen: &mut Seen,
) -> Option<NodeFault> {
    let mut r = Reader::new(table, "in [[node_fault]]", "", at);
    let name = r
        .required(cx, "name")
        .and_then(|e| seen.name(cx, &e, "node_fault"));
    let action = r.required(cx, "action");
    let node_entries = r.required(cx, "nodes");
    let nodes_value = node_entries.as_ref().and_then(|e| node_list(cx, e, nodes));
    let select_value = r.get("select").map(|e| select(cx, &e));
    let recover = r.get("recover_after");
    let from = r.get("from");
    let duration = r.get("duration");
    let trigger_entry = r.required(cx, "trigger");
    r.finish(cx);
    let trigger_at = trigger_entry.as_ref().map_or(at, |e| e.at);
    let schedule = trigger_entry.and_then(|e| match trigger(cx, &e)? {
        Trigger::Time(schedule) => Some(schedule),
        _ => {
            cx.error(
                e.at,
                "a node fault is triggered by time only (`{ at = \"5s\" }` or `{ after = … }`): \
                 an event on one node cannot trigger a fault on another without a coordinator \
                 (docs/multi-node.md)",
            );
            None
        }
    });
    let kind = action.as_ref().and_then(|e| {
        let kind = cx.string(e)?;
        match kind {
            "crash" | "partition" if let Some(refusal) = without_tcx(cx, kind, "nodes'") => {
                cx.error(e.at, refusal);
                None
            }
            "crash" | "kill" | "partition" => Some(kind),
            _ => {
                cx.error(
                    e.at,
                    format!(
                        "unknown node action `{kind}`: expected `crash`, `kill` or `partition`{}",
                        did_you_mean(kind, ["crash", "kill", "partition"])
                    ),
                );
                None
            }
        }
    });
    // Keys of one action only.
    for (entry, key, owner) in [
        (&recover, "recover_after", "crash"),
        (&from, "from", "partition"),
        (&duration, "duration", "partition"),
    ] {
        if let (Some(e), Some(kind)) = (entry, kind)
            && kind != owner
        {
            cx.error(
                e.key_at,
                format!("`{key}` only applies to `action = \"{owner}\"`, not `{kind}`"),
            );
            return None;
        }
    }
    let recover_after = match &recover {
        Some(e) => Some(cx.duration(e)?),
        None => None,
    };
    let heal_after = match &duration {
        Some(e) => Some(cx.duration(e)?),
        None => None,
    };
    let from_value = match &from {
        Some(e) => Some(node_list(cx, e, nodes)?),
        None => None,
    };
    let action = match kind? {
        "crash" => NodeAction::Crash { recover_after },
        "kill" => NodeAction::Kill,
        _ => {
            if let (Some(e), Some(from), Some(cut)) = (&from, &from_value, &nodes_value)
                && let Some(both) = from.iter().find(|n| cut.contains(n))
            {
                cx.error(
                    e.at,
                    format!(
                        "node `{}` is on both sides of the partition (`nodes` and `from`)",
                        nodes[*both].name
                    ),
                );
                return None;
            }
            NodeAction::Partition {
                from: from_value.unwrap_or_default(),
                duration: heal_after,
            }
        }
    };
    Some(NodeFault {
        name: name?,
        action,
        nodes: nodes_value?,
        select: select_value.unwrap_or(Some(Default::default()))?,
        schedule: schedule?,
        at: cx.pos(at),
        trigger_at: cx.pos(trigger_at),
    })
}

/// `start_at`: an RFC 3339 date-time (a TOML date-time or a string) with its offset, or
/// `"next 10s"`.
pub(super) fn start_at(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<StartAt> {
    let text = match (e.item.as_datetime(), e.item.as_str()) {
        (Some(datetime), _) => datetime.to_string(),
        (None, Some(text)) => text.to_string(),
        (None, None) => {
            cx.type_error(
                e,
                "a date-time such as 2026-12-04T19:00:00Z or a string such as \"next 10s\"",
            );
            return None;
        }
    };
    if let Some(period) = text.strip_prefix("next ") {
        return match super::parse_duration(period.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => Some(StartAt::Next(d)),
            Ok(_) => {
                cx.error(
                    e.at,
                    "`start_at = \"next …\"`: the period must be at least 1s",
                );
                None
            }
            Err(why) => {
                cx.error(e.at, format!("invalid period in `start_at`: {why}"));
                None
            }
        };
    }
    match wall_time(&text) {
        Ok(at) => Some(StartAt::Wall(at)),
        Err(why) => {
            cx.error(
                e.at,
                format!(
                    "invalid `start_at` \"{text}\": {why}; expected an RFC 3339 date-time with \
                     its offset (2026-12-04T19:00:00Z) or \"next 10s\""
                ),
            );
            None
        }
    }
}

/// An RFC 3339 date-time with its offset, as a `SystemTime`.
fn wall_time(text: &str) -> Result<std::time::SystemTime, String> {
    let datetime = toml_edit::Datetime::from_str(text).map_err(|e| e.to_string())?;
    let (Some(date), Some(time), Some(offset)) = (datetime.date, datetime.time, datetime.offset)
    else {
        return Err("it needs a date, a time and an offset (Z or ±hh:mm)".into());
    };
    let offset_minutes = match offset {
        toml_edit::Offset::Z => 0,
        toml_edit::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second)
        - offset_minutes * 60;
    let secs = u64::try_from(secs).map_err(|_| "it is before 1970".to_string())?;
    Ok(std::time::UNIX_EPOCH + Duration::new(secs, time.nanosecond))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, Schedule, Select, parse_str};
    use std::path::Path;

    const NODES: &str = "[[node]]\nname = \"a\"\naddresses = [\"10.0.0.1\"]\nnetns = \"fij-a\"\n\
                         [[node]]\nname = \"b\"\n";

    fn parse(text: &str) -> Result<Scenario, Vec<String>> {
        parse_str(Path::new("s.toml"), text)
            .map_err(|d| d.0.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn nodes_targets_and_node_faults_parse_to_the_model() {
        let s = parse(&format!(
            "start_at = \"next 10s\"\n{NODES}\
             [[target]]\nname = \"x\"\ncommand = [\"true\"]\nnode = \"b\"\n\
             [[target]]\nname = \"y\"\npid = 4242\nnode = \"a\"\n\
             [[node_fault]]\nname = \"power\"\naction = \"crash\"\nnodes = [\"a\", \"b\"]\n\
             select = \"one\"\ntrigger = {{ at = \"2s\" }}\nrecover_after = \"1s\"\n\
             [[node_fault]]\nname = \"cut\"\naction = \"partition\"\nnodes = [\"a\"]\n\
             from = [\"b\"]\nduration = \"3s\"\ntrigger = {{ at = \"4s\" }}\n"
        ))
        .unwrap();
        let c = &s.cluster;
        assert_eq!(c.nodes[0].name, "a");
        assert_eq!(
            c.nodes[0].addresses,
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.nodes[0].netns.as_deref(), Some("fij-a"));
        assert_eq!(c.target_node, vec![Some(1), Some(0)]);
        assert!(c.is_on(0, Some(1)) && !c.is_on(0, Some(0)) && !c.is_on(0, None));
        assert_eq!(c.start_at, Some(StartAt::Next(Duration::from_secs(10))));
        assert_eq!(c.node_faults[0].nodes, vec![0, 1]);
        assert_eq!(c.node_faults[0].select, Select::One);
        assert_eq!(
            c.node_faults[0].action,
            NodeAction::Crash {
                recover_after: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(
            c.node_faults[0].schedule,
            Schedule::At(Duration::from_secs(2))
        );
        assert_eq!(
            c.node_faults[1].action,
            NodeAction::Partition {
                from: vec![1],
                duration: Some(Duration::from_secs(3))
            }
        );
        // Without [[node]], every target is local.
        let one = parse("[[target]]\nname = \"x\"\ncommand = [\"true\"]\n").unwrap();
        assert!(one.cluster.nodes.is_empty() && one.cluster.is_on(0, None));
    }

    #[test]
    fn node_errors_have_their_positions() {
        let errors = |text: &str| parse(text).unwrap_err();
        // An unknown node, with a suggestion.
        assert_eq!(
            errors(&format!(
                "{NODES}[[target]]\nname = \"x\"\ncommand = [\"true\"]\nnode = \"bb\"\n"
            )),
            vec!["s.toml:10:8: undefined node `bb` (defined nodes: `a`, `b`) (did you mean `b`?)"]
        );
        // A duplicate node name.
        assert_eq!(
            errors(
                "[[node]]\nname = \"a\"\n[[node]]\nname = \"a\"\n[[target]]\nname = \"x\"\ncommand = [\"true\"]\nnode = \"a\"\n"
            ),
            vec!["s.toml:4:8: duplicate node name `a` (first defined on line 2)"]
        );
        // A target without a node in a multi-node scenario.
        assert_eq!(
            errors(&format!(
                "{NODES}[[target]]\nname = \"x\"\ncommand = [\"true\"]\n"
            )),
            vec![
                "s.toml:7:1: target `x` needs `node = \"…\"`: in a scenario with [[node]], every target runs on one node"
            ]
        );
        // A node on a target without [[node]].
        assert_eq!(
            errors("[[target]]\nname = \"x\"\ncommand = [\"true\"]\nnode = \"a\"\n"),
            vec!["s.toml:4:8: undefined node `a` (the scenario has no [[node]])"]
        );
        let with_target =
            format!("{NODES}[[target]]\nname = \"x\"\ncommand = [\"true\"]\nnode = \"a\"\n");
        // A node fault on a syscall trigger, a bad address, a bad start_at.
        assert_eq!(
            errors(&format!(
                "{with_target}[[node_fault]]\nname = \"n\"\naction = \"crash\"\nnodes = [\"a\"]\ntrigger = {{ syscall = \"write\" }}\n"
            )),
            vec![
                "s.toml:15:11: a node fault is triggered by time only (`{ at = \"5s\" }` or `{ after = … }`): an event on one node cannot trigger a fault on another without a coordinator (docs/multi-node.md)"
            ]
        );
        assert_eq!(
            errors(&format!(
                "[[node]]\nname = \"a\"\naddresses = [\"10.0.0.300\"]\n{}",
                "[[target]]\nname = \"x\"\ncommand = [\"true\"]\nnode = \"a\"\n"
            )),
            vec!["s.toml:3:14: `addresses`: `10.0.0.300` is not an IP address"]
        );
        assert_eq!(
            errors(&format!(
                "start_at = \"2026-12-04T19:00:00\"\n{with_target}"
            )),
            vec![
                "s.toml:1:12: invalid `start_at` \"2026-12-04T19:00:00\": it needs a date, a time and an offset (Z or ±hh:mm); expected an RFC 3339 date-time with its offset (2026-12-04T19:00:00Z) or \"next 10s\""
            ]
        );
        // Both sides of a partition.
        assert_eq!(
            errors(&format!(
                "{with_target}[[node_fault]]\nname = \"n\"\naction = \"partition\"\nnodes = [\"a\"]\nfrom = [\"a\", \"b\"]\ntrigger = {{ at = \"1s\" }}\n"
            )),
            vec!["s.toml:15:8: node `a` is on both sides of the partition (`nodes` and `from`)"]
        );
        // A TOML date-time works as well as a string.
        let s = parse(&format!("start_at = 2026-12-04T18:00:00Z\n{with_target}")).unwrap();
        assert_eq!(
            s.cluster.start_at,
            Some(StartAt::Wall(
                std::time::UNIX_EPOCH + Duration::from_secs(1_796_407_200)
            ))
        );
    }

    #[test]
    fn rfc3339_times_are_seconds_since_the_epoch() {
        let secs = |t: &str| {
            wall_time(t)
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        assert_eq!(secs("1970-01-01T00:00:00Z"), 0.0);
        assert_eq!(secs("2000-03-01T00:00:00Z"), 951_868_800.0);
        assert_eq!(secs("2026-12-04T19:00:00.5+01:00"), 1_796_407_200.5);
        assert!(wall_time("2026-12-04T19:00:00").is_err());
        assert!(wall_time("1969-12-31T23:59:59Z").is_err());
    }
}
