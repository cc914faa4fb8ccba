//! `fij report LOG --html FILE`: the campaign as one self-contained HTML page — an inline SVG
//! timeline with one lane per target process (ordered as the process tree, forks drawn from
//! parent to child), injections marked with the fault and the hit, exits with how the process
//! ended, and the crash silences, partitions and stops as bands. No script, no external fetch.
use std::fmt::Write;

use fij_common::log::Record;

use crate::report::Summary;

/// One target process's lane.
struct Lane {
    target: String,
    pid: u32,
    parent: Option<u32>,
    /// When it joined the campaign (0 for a process there at the start).
    start_ns: u64,
    /// When it exited, and how ("SIGKILL", "code 0").
    exit: Option<(u64, String)>,
    /// Depth in its target's process tree (0 for a root), for the label's indent.
    depth: usize,
}

/// A mark on a lane.
struct Mark {
    pid: u32,
    t_ns: u64,
    label: String,
    failed: bool,
}

/// A band on a lane: (pid, kind, start, end or None = the end).
struct Band {
    pid: u32,
    kind: &'static str,
    start_ns: u64,
    end_ns: Option<u64>,
}

const WIDTH: f64 = 1100.0;
const LABEL_WIDTH: f64 = 210.0;
const LANE_HEIGHT: f64 = 34.0;
const TOP: f64 = 56.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page for a log's records (and the summary told from them, shown under the picture).
pub fn html(records: &[Record], summary: &Summary) -> String {
    let mut lanes: Vec<Lane> = Vec::new();
    let mut marks = Vec::new();
    let mut bands: Vec<Band> = Vec::new();
    let mut end_ns = 0u64;
    let lane_of =
        |lanes: &Vec<Lane>, pid: u32| lanes.iter().rposition(|l| l.pid == pid && l.exit.is_none());
    for record in records {
        match record {
            Record::Start { targets, .. } => {
                for t in targets {
                    lanes.push(Lane {
                        target: t.name.clone(),
                        pid: t.pid,
                        parent: None,
                        start_ns: 0,
                        exit: None,
                        depth: 0,
                    });
                }
            }
            Record::Joined {
                t_ns, target, pid, ..
            } => {
                end_ns = end_ns.max(*t_ns);
                if lane_of(&lanes, *pid).is_none() {
                    lanes.push(Lane {
                        target: target.clone(),
                        pid: *pid,
                        parent: None,
                        start_ns: *t_ns,
                        exit: None,
                        depth: 0,
                    });
                }
            }
            Record::Fork {
                t_ns,
                target,
                parent_pid,
                pid,
            } => {
                end_ns = end_ns.max(*t_ns);
                lanes.push(Lane {
                    target: target.clone(),
                    pid: *pid,
                    parent: Some(*parent_pid),
                    start_ns: *t_ns,
                    exit: None,
                    depth: 0,
                });
            }
            Record::Exit {
                t_ns,
                pid,
                code,
                signal,
                ..
            } => {
                end_ns = end_ns.max(*t_ns);
                if let Some(i) = lane_of(&lanes, *pid) {
                    let how = match (code, signal) {
                        (_, Some(signal)) => signal.clone(),
                        (Some(code), None) => format!("code {code}"),
                        (None, None) => "exit".to_string(),
                    };
                    lanes[i].exit = Some((*t_ns, how));
                }
            }
            Record::Injection {
                t_ns,
                fault,
                pid,
                hit,
                delivered,
                ..
            } => {
                end_ns = end_ns.max(*t_ns);
                let label = match hit {
                    0 => fault.clone(),
                    hit => format!("{fault} #{hit}"),
                };
                marks.push(Mark {
                    pid: *pid,
                    t_ns: *t_ns,
                    label,
                    failed: !delivered,
                });
            }
            Record::Silenced { t_ns, pid, .. } => {
                end_ns = end_ns.max(*t_ns);
                if !bands
                    .iter()
                    .any(|b| b.pid == *pid && b.kind == "crash" && b.end_ns.is_none())
                {
                    bands.push(Band {
                        pid: *pid,
                        kind: "crash",
                        start_ns: *t_ns,
                        end_ns: None,
                    });
                }
            }
            Record::Partitioned { t_ns, pid, .. } => {
                end_ns = end_ns.max(*t_ns);
                bands.push(Band {
                    pid: *pid,
                    kind: "partition",
                    start_ns: *t_ns,
                    end_ns: None,
                });
            }
            Record::Recovered { t_ns, pid, .. } => close(&mut bands, "crash", *pid, *t_ns),
            Record::Healed { t_ns, pid, .. } => close(&mut bands, "partition", *pid, *t_ns),
            Record::Resumed { t_ns, pid } => close(&mut bands, "stop", *pid, *t_ns),
            // A node's silence has no process lane: it shows in the processes' crash bands.
            Record::NodeSilenced { t_ns, .. }
            | Record::NodeRecovered { t_ns, .. }
            | Record::End { t_ns, .. } => end_ns = end_ns.max(*t_ns),
        }
        // A delivered SIGSTOP opens a stop band (closed by `resumed`).
        if let Record::Injection {
            t_ns,
            pid,
            signal,
            delivered: true,
            ..
        } = record
            && signal == "SIGSTOP"
        {
            bands.push(Band {
                pid: *pid,
                kind: "stop",
                start_ns: *t_ns,
                end_ns: None,
            });
        }
    }
    let lanes = tree_order(lanes);
    svg_page(&lanes, &marks, &bands, end_ns.max(1), summary)
}

/// Where a label next to a mark at `x` goes: to its right, or to its left near the right edge.
fn label_at(x: f64) -> (f64, &'static str) {
    if x > WIDTH - 160.0 {
        (x - 8.0, "end")
    } else {
        (x + 6.0, "start")
    }
}

fn close(bands: &mut [Band], kind: &str, pid: u32, t_ns: u64) {
    if let Some(b) = bands
        .iter_mut()
        .rev()
        .find(|b| b.kind == kind && b.pid == pid && b.end_ns.is_none())
    {
        b.end_ns = Some(t_ns);
    }
}

/// Lanes in process-tree order: each root, then its children depth first, by start time.
fn tree_order(lanes: Vec<Lane>) -> Vec<Lane> {
    let mut ordered: Vec<Lane> = Vec::new();
    let mut rest = lanes;
    fn take_children(parent: u32, depth: usize, rest: &mut Vec<Lane>, ordered: &mut Vec<Lane>) {
        while let Some(i) = rest.iter().position(|l| l.parent == Some(parent)) {
            let mut child = rest.remove(i);
            child.depth = depth;
            let pid = child.pid;
            ordered.push(child);
            take_children(pid, depth + 1, rest, ordered);
        }
    }
    while !rest.is_empty() {
        // A lane whose parent is not a lane (a root, or one whose parent is unknown).
        let i = rest
            .iter()
            .position(|l| l.parent.is_none_or(|p| !rest.iter().any(|o| o.pid == p)))
            .unwrap_or(0);
        let root = rest.remove(i);
        let pid = root.pid;
        ordered.push(root);
        take_children(pid, 1, &mut rest, &mut ordered);
    }
    ordered
}

fn svg_page(
    lanes: &[Lane],
    marks: &[Mark],
    bands: &[Band],
    end_ns: u64,
    summary: &Summary,
) -> String {
    let plot = WIDTH - LABEL_WIDTH - 20.0;
    let x = |t_ns: u64| LABEL_WIDTH + plot * (t_ns as f64 / end_ns as f64);
    let y = |i: usize| TOP + i as f64 * LANE_HEIGHT;
    let height = TOP + lanes.len() as f64 * LANE_HEIGHT + 30.0;
    let lane_index = |pid: u32, t_ns: u64| {
        lanes
            .iter()
            .position(|l| {
                l.pid == pid
                    && l.start_ns <= t_ns
                    && l.exit.as_ref().is_none_or(|(e, _)| *e >= t_ns)
            })
            .or_else(|| lanes.iter().position(|l| l.pid == pid))
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="12">"#
    );
    // Time axis: ticks at tenths of the campaign.
    for tick in 0..=10 {
        let t_ns = end_ns * tick / 10;
        let tx = x(t_ns);
        let _ = write!(
            svg,
            r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{}" stroke="#ddd"/><text x="{tx:.1}" y="{}" text-anchor="middle" fill="#555">{:.2} s</text>"##,
            TOP - 14.0,
            height - 30.0,
            TOP - 20.0,
            t_ns as f64 / 1e9
        );
    }
    for (i, lane) in lanes.iter().enumerate() {
        let ly = y(i);
        let end = lane.exit.as_ref().map_or(end_ns, |(t, _)| *t);
        let indent = "  ".repeat(lane.depth);
        let _ = write!(
            svg,
            r##"<g class="lane" data-pid="{pid}"><text x="6" y="{ty:.1}" fill="#222">{indent}{target} {pid}</text><rect x="{x0:.1}" y="{ry:.1}" width="{w:.1}" height="10" rx="3" fill="#9cc3e6"/></g>"##,
            pid = lane.pid,
            ty = ly + 14.0,
            indent = escape(&indent).replace(' ', "&#160;"),
            target = escape(&lane.target),
            x0 = x(lane.start_ns),
            ry = ly + 5.0,
            w = (x(end) - x(lane.start_ns)).max(1.0),
        );
        if let Some((t, how)) = &lane.exit {
            let ex = x(*t);
            let (tx, anchor) = label_at(ex);
            let _ = write!(
                svg,
                r##"<g class="exit"><path d="M{a:.1},{b:.1} l8,8 m0,-8 l-8,8" stroke="#b00" stroke-width="2"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="{anchor}" fill="#b00">{how}</text></g>"##,
                a = ex - 4.0,
                b = ly + 6.0,
                ty = ly + 28.0,
                how = escape(how),
            );
        }
        if let Some(parent) = lane.parent
            && let Some(p) = lanes.iter().position(|l| l.pid == parent)
        {
            let fx = x(lane.start_ns);
            let _ = write!(
                svg,
                r##"<line class="fork" x1="{fx:.1}" y1="{:.1}" x2="{fx:.1}" y2="{:.1}" stroke="#7a7" stroke-dasharray="3,2"/>"##,
                y(p) + 10.0,
                ly + 5.0
            );
        }
    }
    for band in bands {
        let Some(i) = lane_index(band.pid, band.start_ns) else {
            continue;
        };
        let (fill, label) = match band.kind {
            "crash" => ("#555", "crash silence"),
            "partition" => ("#e69500", "partition"),
            _ => ("#7b3fd8", "stopped"),
        };
        let x0 = x(band.start_ns);
        let x1 = x(band.end_ns.unwrap_or(end_ns));
        let _ = write!(
            svg,
            r#"<g class="band {kind}"><rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="18" fill="{fill}" opacity="0.35"/><title>{label}</title></g>"#,
            y(i) + 1.0,
            (x1 - x0).max(2.0),
            kind = band.kind,
        );
    }
    for mark in marks {
        let Some(i) = lane_index(mark.pid, mark.t_ns) else {
            continue;
        };
        let mx = x(mark.t_ns);
        let colour = if mark.failed { "#999" } else { "#d00" };
        let (tx, anchor) = label_at(mx);
        let _ = write!(
            svg,
            r#"<g class="injection"><path d="M{mx:.1},{:.1} l-5,-9 h10 z" fill="{colour}"/><text x="{tx:.1}" y="{:.1}" text-anchor="{anchor}" fill="{colour}">{}</text></g>"#,
            y(i) + 4.0,
            y(i) + 2.0,
            escape(&mark.label)
        );
    }
    let _ = write!(
        svg,
        r##"<g class="legend" font-size="11"><rect x="{LABEL_WIDTH}" y="8" width="10" height="10" fill="#9cc3e6"/><text x="{}" y="17">process alive</text><path d="M{},18 l-5,-9 h10 z" fill="#d00"/><text x="{}" y="17">injection (fault #hit)</text><rect x="{}" y="8" width="10" height="10" fill="#555" opacity="0.35"/><text x="{}" y="17">crash silence</text><rect x="{}" y="8" width="10" height="10" fill="#e69500" opacity="0.35"/><text x="{}" y="17">partition</text><rect x="{}" y="8" width="10" height="10" fill="#7b3fd8" opacity="0.35"/><text x="{}" y="17">stopped</text></g>"##,
        LABEL_WIDTH + 14.0,
        LABEL_WIDTH + 125.0,
        LABEL_WIDTH + 134.0,
        LABEL_WIDTH + 300.0,
        LABEL_WIDTH + 314.0,
        LABEL_WIDTH + 420.0,
        LABEL_WIDTH + 434.0,
        LABEL_WIDTH + 510.0,
        LABEL_WIDTH + 524.0,
    );
    svg.push_str("</svg>");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fij campaign: {title}</title>\
         <style>body{{font-family:sans-serif;margin:16px;color:#222}}pre{{background:#f6f6f6;padding:10px}}</style>\
         </head><body><h1>fij campaign</h1><p>{title} — seed {seed}</p>\n{svg}\n<h2>Summary</h2><pre>{text}</pre></body></html>\n",
        title = escape(&summary.scenario),
        seed = summary.seed,
        text = escape(&summary.to_string()),
    )
}
