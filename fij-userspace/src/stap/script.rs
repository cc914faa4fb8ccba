//! The SystemTap script of a compiled campaign. Its parts follow fij's own data path:
//!
//! - the target set (`fij_target`, `fij_instance`: tgid → target, instance), filled in `begin`
//!   with each instance's root process, by `sched_process_fork` with descendants and, for
//!   selector targets, with matching processes; emptied at `sched_process_exit` when the
//!   whole thread group is dead (as fij's, so a recycled pid is never a target);
//! - one probe per hook of the hook table (`raw_syscalls:sys_enter` for syscalls, so that hit
//!   numbers count the same entries as fij's), which calls the function of each fault on it;
//! - one function per fault: its conditions in `decide.rs`'s order (select, after, port, count
//!   the hit, nth/every, probability, count), then `fij_fire`;
//! - one `timer.ms` probe per due time the compile stage drew (time triggers).
//!
//! Every line the script prints for fij is `fij-stap RECORD key=value …`, one record per line,
//! values without spaces (names are referred to by index: fault ids are `[[fault]]` indices,
//! target ids `[[target]]` indices, listed in the script's header):
//!
//! ```text
//! fij-stap armed ktime_ns=N
//! fij-stap injection fault=F target=T instance=I pid=P tid=T hit=K draw=D signal=S result=R by=hit|timer scheduled_ns=N ktime_ns=N
//! fij-stap fork parent=P child=C target=T instance=I ktime_ns=N
//! fij-stap joined pid=P target=T by=comm|exe|uid ktime_ns=N
//! fij-stap resumed pid=P result=R by=resume_after|end ktime_ns=N
//! fij-stap exit pid=P target=T instance=I status=W ktime_ns=N
//! fij-stap end reason=duration|exit ktime_ns=N
//! ```
//!
//! `draw` is unsigned (`%u`), `result` is the kernel's (0: signal queued, -4096: fij's
//! exclusions refused it, as `fij_common::SIGNAL_REFUSED`), `scheduled_ns` the due time of a
//! time trigger counted from `armed` (0 for hits), `status` the exit's wait status (signal in
//! the low 7 bits, exit code << 8; -1 in the BPF runtime, whose exit event does not carry it).
use std::fmt::Write;

use fij_common::{
    HOOK_PROBE, HOOK_TRACEPOINT, SIGNAL_REFUSED,
    random::{fires_with, hit_draw, key_from_seed, probability_threshold},
};

use super::{
    OUTPUT_PREFIX, Runtime,
    chacha::CHACHA20_C,
    refuse::{self, ProbeBinaries},
};
use crate::{
    compile::CompiledCampaign,
    scenario::{
        Action, Fault, Per, Probe, ProbeKind, ProbeLocation, Scenario, Select, Selector,
        TargetSource, Trigger,
    },
};

/// Capacity of the target set and of the per-process hit counters: fij's own
/// (`fij_common::MAX_TARGET_PROCESSES`, `MAX_PROCESS_COUNTERS`), so one script holds what one
/// `fij run` holds. stap's default (2048 entries) would end a campaign with many processes.
const TABLE_ENTRIES: u32 = fij_common::MAX_TARGET_PROCESSES;

/// How many hits of each probabilistic fault the BPF runtime's script has decisions for: the
/// decisions are written into the script (`fij_fires`), and a later hit never fires there.
pub const BPF_DECIDED_HITS: u64 = 1024;

/// A script being written: the campaign, and where its probe binaries are.
pub struct Script<'a> {
    pub scenario: &'a Scenario,
    pub compiled: &'a CompiledCampaign,
    pub runtime: Runtime,
    /// Uprobe binaries as written in the scenario → absolute paths (see `refuse::check`).
    pub probe_binaries: &'a ProbeBinaries,
    /// Root processes known when the script is written, `(target, instance, pid)`: set in
    /// `probe begin` (`fij run --backend stap`).
    pub roots: &'a [(usize, u32, u32)],
}

impl Script<'_> {
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.header(&mut out);
        self.globals(&mut out);
        self.functions(&mut out);
        for (id, fault) in self.scenario.faults.iter().enumerate() {
            if !matches!(fault.trigger, Trigger::Time(_)) {
                self.fault_function(&mut out, id, fault);
            }
        }
        self.begin(&mut out);
        self.lifecycle(&mut out);
        self.hit_probes(&mut out);
        self.time_probes(&mut out);
        self.end(&mut out);
        out
    }

    fn module(&self) -> bool {
        self.runtime == Runtime::Module
    }

    /// How an output line prints `ktime_ns` from the stap local `now`: decimal; in the BPF
    /// runtime hex from its two halves, since stapbpf's printf takes 32-bit integers (and
    /// crashes on the 0xffffffff mask, hence the subtraction).
    fn ktime(&self) -> (&'static str, &'static str) {
        if self.module() {
            ("%d", "now")
        } else {
            ("0x%x%08x", "now >> 32, now - ((now >> 32) << 32)")
        }
    }

    fn has_probability(&self) -> bool {
        self.scenario.faults.iter().any(|f| f.probability.is_some())
    }

    /// For the BPF runtime, which cannot run ChaCha20: each probabilistic fault's hits among
    /// the first [`BPF_DECIDED_HITS`] that are eligible (`nth`, `every`) and whose draw fires,
    /// as the kernel programs would decide them (the same draws as `fij plan`'s).
    fn bpf_fires(&self) -> impl Iterator<Item = (usize, Vec<u64>)> + '_ {
        let key = key_from_seed(self.compiled.seed);
        self.scenario
            .faults
            .iter()
            .enumerate()
            .filter_map(move |(id, fault)| {
                fault.probability?;
                let rule = &self.compiled.rules[id];
                let hits = (1..=BPF_DECIDED_HITS)
                    .filter(|&hit| rule.fires_on(hit))
                    .filter(|&hit| {
                        fires_with(hit_draw(&key, rule.hit_stream, hit), rule.probability)
                    })
                    .collect();
                Some((id, hits))
            })
    }

    fn has_stop(&self) -> bool {
        self.scenario
            .faults
            .iter()
            .any(|f| matches!(f.action, Action::Stop { .. }))
    }

    fn has_port(&self) -> bool {
        self.scenario
            .faults
            .iter()
            .any(|f| matches!(f.trigger, Trigger::Syscall { port: Some(_), .. }))
    }

    fn selectors(&self) -> impl Iterator<Item = (usize, &Selector)> {
        self.scenario
            .targets
            .iter()
            .enumerate()
            .filter_map(|(idx, t)| match &t.source {
                TargetSource::Selector(selector) => Some((idx, selector)),
                _ => None,
            })
    }

    /// The first instance of the first command target: the one `stap -c` runs (`target()`).
    fn c_target(&self) -> Option<usize> {
        self.scenario
            .targets
            .iter()
            .position(|t| matches!(t.source, TargetSource::Command { .. }))
    }

    fn header(&self, out: &mut String) {
        let s = self.scenario;
        let runtime = self.runtime.name();
        // The BPF script reads tracepoint fields: stap's 4.1 tracepoint behaviour (docs/stap.md).
        let flags = if self.module() {
            "-g"
        } else {
            "-g --runtime=bpf --compatible=4.1"
        };
        let _ = writeln!(
            out,
            "// Generated by `fij stap {} --seed {} --runtime {runtime}` (fij {}): the campaign fij\n\
             // would run, as a SystemTap script (docs/stap.md tells how each key maps).\n//",
            s.path.display(),
            self.compiled.seed,
            env!("CARGO_PKG_VERSION"),
        );
        let _ = writeln!(
            out,
            "// Run as root, in guru mode (the script signals processes):"
        );
        let mut run = format!("//   stap {flags} SCRIPT.stp");
        if let Some(c) = self.c_target() {
            let TargetSource::Command { argv, .. } = &s.targets[c].source else {
                unreachable!("c_target is a command target")
            };
            // One word for the shell that runs stap, holding the words stap's `-c` splits.
            let _ = write!(run, " -c {}", shell_word(&shell_words(argv)));
        }
        let mut later_roots = Vec::new();
        for (t, target) in s.targets.iter().enumerate() {
            if let TargetSource::Command { instances, .. } = target.source {
                for i in 0..instances {
                    if (Some(t), i) != (self.c_target(), 0) {
                        later_roots.push(format!("-G fij_root_{t}_{i}=PID"));
                    }
                }
            }
        }
        for root in &later_roots {
            let _ = write!(run, " {root}");
        }
        let _ = writeln!(out, "{}\n//", comment(&run));
        let _ = writeln!(out, "// Targets (the target ids of the output):");
        for (t, target) in s.targets.iter().enumerate() {
            let what = match &target.source {
                TargetSource::Command {
                    argv,
                    cwd,
                    env,
                    instances,
                    user,
                    group,
                } => {
                    let mut what = format!("command {}", shell_words(argv));
                    if let Some(cwd) = cwd {
                        let _ = write!(what, " in {}", cwd.display());
                    }
                    // Who it runs as is the launcher's business under stap (`-c` runs as root).
                    if let Some(uid) = user {
                        let _ = write!(what, " as uid {uid}");
                    }
                    if let Some(gid) = group {
                        let _ = write!(what, " with gid {gid}");
                    }
                    for (key, value) in env {
                        let _ = write!(what, " with {key}={}", shell_word(value));
                    }
                    let roots: Vec<String> = (0..*instances)
                        .map(|i| match (Some(t), i) == (self.c_target(), 0) {
                            true => format!("instance {i}: -c's command (fij_root_{t}_{i})"),
                            false => format!("instance {i}: -G fij_root_{t}_{i}=PID"),
                        })
                        .collect();
                    format!("{what}; {}", roots.join(", "))
                }
                TargetSource::Pid(pid) => format!("pid {pid} (fij_root_{t}_0)"),
                TargetSource::Selector(selector) => match selector {
                    Selector::Comm(comm) => format!(
                        "every process named {comm:?}: joins at exec, at a hit, or when it forks"
                    ),
                    Selector::Exe(exe) => format!(
                        "every process that execs {} from now on (already running ones are not \
                         seen: stap cannot read their executable)",
                        exe.display()
                    ),
                    Selector::Uid(uid) => {
                        format!(
                            "every process of uid {uid}: joins at exec, at a hit, or when it forks"
                        )
                    }
                    Selector::Cgroup(_) => unreachable!("refused by refuse::check"),
                },
            };
            let _ = writeln!(out, "//   {t} `{}`: {}", target.name, comment(&what));
        }
        let _ = writeln!(
            out,
            "// Descendants forked after the start join their parent's target and instance."
        );
        let _ = writeln!(out, "//\n// Faults (the fault ids of the output):");
        for (id, fault) in s.faults.iter().enumerate() {
            let _ = writeln!(
                out,
                "//   {id} `{}`: {} on target `{}`, trigger {}",
                fault.name,
                action_name(&fault.action),
                s.targets[fault.target].name,
                fault.trigger.describe(),
            );
        }
        let _ = writeln!(
            out,
            "//\n// Output: one `{OUTPUT_PREFIX} RECORD key=value ...` line per event (fij-userspace/src/stap/script.rs);\n\
             // `stap -o FILE` keeps it apart from the targets' own output.\n"
        );
    }

    fn globals(&self, out: &mut String) {
        // stap's `%` makes an array wrap (the oldest entry goes) instead of failing the probe
        // when full: fij's per-process counters are an LRU map too. The BPF runtime has
        // fixed-size maps and no wrapping.
        let wrap = if self.module() { "%" } else { "" };
        let _ = writeln!(
            out,
            "global fij_target[{TABLE_ENTRIES}]   // tgid → target id: the target set\n\
             global fij_instance[{TABLE_ENTRIES}] // tgid → instance of its target\n\
             global fij_hits{wrap}[{TABLE_ENTRIES}]    // [fault, tgid] → hits counted (per = \"process\")\n\
             global fij_target_hits    // fault → hits counted (per = \"target\")\n\
             global fij_injections     // fault → injections claimed (count)\n\
             global fij_selected       // [fault, instance] → 1: the instances `select` drew\n\
             global fij_start_ns       // when the script armed: `after` and due times count from it\n\
             global fij_end_reason     // set in begin: the BPF runtime ignores a string global's initialiser"
        );
        if self.has_stop() {
            let _ = writeln!(
                out,
                "global fij_stopped        // tgid → when to SIGCONT it (0: at the end)\n\
                 global fij_resuming"
            );
        }
        if !self.compiled.due.is_empty() {
            let _ = writeln!(
                out,
                "global fij_due_fired      // due-time index → 1 once fired"
            );
        }
        if self.has_probability() && !self.module() {
            let entries: usize = self.bpf_fires().map(|(_, hits)| hits.len()).sum();
            let _ = writeln!(
                out,
                "global fij_fires[{}]      // [fault, hit] → 1: the hits whose draw fires (the first {BPF_DECIDED_HITS})",
                entries.max(1)
            );
        }
        for (t, target) in self.scenario.targets.iter().enumerate() {
            match target.source {
                TargetSource::Command { instances, .. } => {
                    for i in 0..instances {
                        let _ = writeln!(out, "global fij_root_{t}_{i} = 0");
                    }
                }
                TargetSource::Pid(pid) => {
                    let _ = writeln!(out, "global fij_root_{t}_0 = {pid}");
                }
                TargetSource::Selector(_) => {}
            }
        }
        out.push('\n');
    }

    fn functions(&self, out: &mut String) {
        let (kt_fmt, kt_args) = self.ktime();
        let refused = SIGNAL_REFUSED;
        if self.module() {
            if self.has_probability() {
                let thresholds: Vec<String> = self
                    .scenario
                    .faults
                    .iter()
                    .map(|f| format!("{:#x}ULL", f.probability.map_or(0, probability_threshold)))
                    .collect();
                let streams: Vec<String> = self
                    .compiled
                    .rules
                    .iter()
                    .map(|r| format!("{:#x}ULL", r.hit_stream))
                    .collect();
                let _ = writeln!(
                    out,
                    "%{{\n#define FIJ_SEED {:#x}ULL\n{CHACHA20_C}\n\
                     /* Each fault's probability threshold, floor(p * 2^64) (0: no probability). */\n\
                     static const uint64_t fij_thresholds[{}] = {{ {} }};\n\
                     /* Each fault's hit stream (FaultRule::hit_stream). */\n\
                     static const uint64_t fij_hit_streams[{}] = {{ {} }};\n%}}\n",
                    self.compiled.seed,
                    thresholds.len(),
                    thresholds.join(", "),
                    streams.len(),
                    streams.join(", ")
                );
                let _ = writeln!(
                    out,
                    "// Draw hit - 1 of the fault's ChaCha20 stream: what fij's kernel programs draw.\n\
                     function fij_draw:long (fault:long, hit:long) %{{ /* pure */\n\
                     \tuint64_t fault_id = (uint64_t) STAP_ARG_fault;\n\
                     \tSTAP_RETVALUE = fault_id < {n} ? (int64_t) fij_hit_draw(FIJ_SEED, fij_hit_streams[fault_id], (uint64_t) STAP_ARG_hit) : 0;\n\
                     %}}\n\n\
                     function fij_fires:long (fault:long, draw:long) %{{ /* pure */\n\
                     \tuint64_t fault_id = (uint64_t) STAP_ARG_fault;\n\
                     \tSTAP_RETVALUE = fault_id < {n} && fij_fires_with((uint64_t) STAP_ARG_draw, fij_thresholds[fault_id]);\n\
                     %}}\n",
                    n = thresholds.len()
                );
            }
            let _ = writeln!(
                out,
                "// raise()'s body (tapset guru-signal.stp): send_sig to the current process, whose\n\
                 // exit then closes its sockets as any kill does; the result is returned instead of\n\
                 // failing the probe, so that the injection line can carry it.\n\
                 function fij_send_signal:long (signal:long) %{{ /* guru */\n\
                 \tSTAP_RETVALUE = send_sig((int) STAP_ARG_signal, current, 1);\n\
                 %}}\n"
            );
            if self.has_stop() || !self.compiled.due.is_empty() {
                let _ = writeln!(
                    out,
                    "%{{\n#include <linux/pid.h>\n#include <linux/pid_namespace.h>\n#include <linux/sched/signal.h>\n%}}\n\n\
                     // A signal from a timer: `current` is whichever task the timer interrupted,\n\
                     // so the process is looked up by its (initial namespace) pid.\n\
                     function fij_signal_pid:long (pid:long, signal:long) %{{ /* guru */\n\
                     \tstruct pid *p;\n\tint rc = -ESRCH;\n\n\
                     \trcu_read_lock();\n\
                     \tp = find_pid_ns((int) STAP_ARG_pid, &init_pid_ns);\n\
                     \tif (p)\n\t\trc = kill_pid(p, (int) STAP_ARG_signal, 1);\n\
                     \trcu_read_unlock();\n\
                     \tSTAP_RETVALUE = rc;\n\
                     %}}\n"
                );
            }
        } else {
            let _ = writeln!(
                out,
                "// BPF's send_signal helper: the current process, as fij's own kernel programs.\n\
                 function fij_send_signal:long (signal:long) %{{ /* bpf */ /* guru */\n\
                 \tcall, $$, send_signal, $signal;\n\
                 %}}\n"
            );
        }
        if self.has_port() {
            let _ = writeln!(
                out,
                "// Whether a call's sockaddr (IPv4 or IPv6) names `port`: both start with a u16\n\
                 // family, then the port in network order.\n\
                 function fij_port_is:long (sockaddr:long, port:long) {{\n\
                 \tif (sockaddr == 0) return 0\n\
                 \tfamily = user_ushort(sockaddr)\n\
                 \tif (family != 2 && family != 10) return 0\n\
                 \tbe = user_ushort(sockaddr + 2)\n\
                 \treturn (((be & 0xff) << 8) | (be >> 8)) == port\n\
                 }}\n"
            );
        }
        let protect = if self.module() {
            "tgid <= 1 || tgid == stp_pid()"
        } else {
            "tgid <= 1"
        };
        let _ = writeln!(
            out,
            "// Fires fault `fault` on the current process. As fij, never pid 1 nor stap itself.\n\
             function fij_fire(fault, signal, hit, draw) {{\n\
             \ttgid = pid()\n\
             \tresult = {refused}\n\
             \tif (!({protect}))\n\
             \t\tresult = fij_send_signal(signal)\n\
             \tnow = ktime_get_ns()\n\
             \tprintf(\"{OUTPUT_PREFIX} injection fault=%d target=%d instance=%d pid=%d tid=%d hit=%d draw=%u signal=%d result=%d by=hit scheduled_ns=0 ktime_ns={kt_fmt}\\n\",\n\
             \t       fault, fij_target[tgid], fij_instance[tgid], tgid, tid(), hit, draw, signal, result, {kt_args})\n\
             }}\n"
        );
        if !self.compiled.due.is_empty() {
            let _ = writeln!(
                out,
                "// Fires a time-triggered fault on an instance's root process, if it is still a target.\n\
                 function fij_fire_due(fault, target, instance, root, signal, scheduled_ns) {{\n\
                 \tresult = -3 // ESRCH: the root process has exited\n\
                 \tif (root in fij_target)\n\
                 \t\tresult = (root <= 1 || root == stp_pid()) ? {refused} : fij_signal_pid(root, signal)\n\
                 \tnow = ktime_get_ns()\n\
             \tprintf(\"{OUTPUT_PREFIX} injection fault=%d target=%d instance=%d pid=%d tid=%d hit=0 draw=0 signal=%d result=%d by=timer scheduled_ns=%d ktime_ns={kt_fmt}\\n\",\n\
                 \t       fault, target, instance, root, root, signal, result, scheduled_ns, {kt_args})\n\
                 }}\n"
            );
        }
        if self.has_stop() {
            let _ = writeln!(
                out,
                "function fij_resume(tgid, by) {{\n\
                 \tnow = ktime_get_ns()\n\
                 \tprintf(\"{OUTPUT_PREFIX} resumed pid=%d result=%d by=%s ktime_ns={kt_fmt}\\n\",\n\
                 \t       tgid, fij_signal_pid(tgid, {cont}), by, {kt_args})\n\
                 }}\n",
                cont = libc::SIGCONT
            );
        }
        let selectors: Vec<_> = self.selectors().collect();
        if !selectors.is_empty() {
            let _ = writeln!(
                out,
                "function fij_join(tgid, target, by) {{\n\
                 \tfij_target[tgid] = target\n\
                 \tfij_instance[tgid] = 0\n\
                 \tnow = ktime_get_ns()\n\
                 \tprintf(\"{OUTPUT_PREFIX} joined pid=%d target=%d by=%s ktime_ns={kt_fmt}\\n\", tgid, target, by, {kt_args})\n\
                 \treturn 1\n\
                 }}\n"
            );
            // `exe` is matched at exec only (the path as passed to execve, as fij matches
            // processes started later); comm and uid also at a hit or a fork, which is where
            // processes that were running before the start are first seen.
            let _ = writeln!(
                out,
                "// Lets the current process join the selector target it matches, if any.\n\
                 function fij_join_by_selector(tgid) {{"
            );
            for (t, selector) in &selectors {
                match selector {
                    Selector::Comm(comm) => {
                        let _ = writeln!(
                            out,
                            "\tif (execname() == {}) return fij_join(tgid, {t}, \"comm\")",
                            stap_string(comm)
                        );
                    }
                    Selector::Uid(uid) => {
                        let _ = writeln!(
                            out,
                            "\tif (uid() == {uid}) return fij_join(tgid, {t}, \"uid\")"
                        );
                    }
                    Selector::Exe(_) | Selector::Cgroup(_) => {}
                }
            }
            let _ = writeln!(out, "\treturn 0\n}}\n");
        }
    }

    /// The conditions of one hit-triggered fault, in the kernel's order (`decide.rs`).
    fn fault_function(&self, out: &mut String, id: usize, fault: &Fault) {
        let rule = &self.compiled.rules[id];
        let _ = writeln!(
            out,
            "// Fault {id} `{}`: {}; returns whether it fired.\nfunction fij_fault_{id}(sockaddr) {{",
            fault.name,
            fault.trigger.describe()
        );
        let uses_tgid = fault.select != Select::All
            || fault.per == Per::Process
            || matches!(fault.action, Action::Stop { .. });
        if uses_tgid {
            let _ = writeln!(out, "\ttgid = pid()");
        }
        if fault.select != Select::All {
            let _ = writeln!(
                out,
                "\tif (!([{id}, fij_instance[tgid]] in fij_selected)) return 0 // select"
            );
        }
        if rule.after_ns != 0 {
            // The BPF runtime holds no number above 2^31 - 1 (`refuse`): a long `after` is
            // compared in µs, ms or s, exactly (it is a whole number of them).
            let (unit, after) = match self.runtime {
                Runtime::Bpf => refuse::bpf_after_in_units(rule.after_ns)
                    .expect("refused by refuse::check when no unit holds it"),
                Runtime::Module => (1, rule.after_ns),
            };
            let elapsed = if unit == 1 {
                "ktime_get_ns() - fij_start_ns".to_owned()
            } else {
                format!("(ktime_get_ns() - fij_start_ns) / {unit}")
            };
            let _ = writeln!(
                out,
                "\tif ({elapsed} < {after}) return 0 // after: earlier hits are not counted"
            );
        }
        if rule.flags & fij_common::RULE_PORT != 0 {
            let _ = writeln!(
                out,
                "\tif (!fij_port_is(sockaddr, {})) return 0 // port",
                rule.port
            );
        }
        let counter = match fault.per {
            Per::Process => format!("fij_hits[{id}, tgid]"),
            Per::Target => format!("fij_target_hits[{id}]"),
        };
        let _ = writeln!(out, "\thit = ++{counter}");
        let eligible = match (rule.nth, rule.every) {
            (0, 0) => None,
            (n, 0) => Some(format!("hit != {n}")),
            (0, e) => Some(format!("hit % {e} != 0")),
            (n, e) => Some(format!("hit < {n} || (hit - {n}) % {e} != 0")),
        };
        if let Some(not_eligible) = eligible {
            let _ = writeln!(out, "\tif ({not_eligible}) return 0 // nth, every");
        }
        if fault.probability.is_some() && self.module() {
            let _ = writeln!(
                out,
                "\tdraw = fij_draw({id}, hit)\n\
                 \tif (!fij_fires({id}, draw)) return 0 // probability"
            );
        } else if fault.probability.is_some() {
            // The compile stage's decisions (`bpf_fires`): stapbpf cannot run ChaCha20. The
            // draw is left to the reader of the line, which knows the seed.
            let _ = writeln!(
                out,
                "\tif (!([{id}, hit] in fij_fires)) return 0 // probability, decided by the compile stage\n\
                 \tdraw = 0"
            );
        } else {
            let _ = writeln!(out, "\tdraw = 0");
        }
        let _ = writeln!(
            out,
            "\tif (fij_injections[{id}] >= {}) return 0 // count\n\
             \tfij_injections[{id}]++\n\
             \tfij_fire({id}, {}, hit, draw)",
            rule.count, rule.signal
        );
        if let Action::Stop { resume_after } = &fault.action {
            let _ = writeln!(out, "\t{}", stop_until("tgid", *resume_after));
        }
        // A value to return on every path: stap reads a bare `return` followed by a line
        // break as returning the next line's expression.
        let _ = writeln!(out, "\treturn 1\n}}\n");
    }

    fn begin(&self, out: &mut String) {
        let (kt_fmt, kt_args) = self.ktime();
        let _ = writeln!(
            out,
            "probe begin {{\n\tfij_start_ns = ktime_get_ns()\n\tfij_end_reason = \"exit\""
        );
        for (t, i, pid) in self.roots {
            let _ = writeln!(out, "\tfij_root_{t}_{i} = {pid} // spawned by fij");
        }
        if let Some(c) = self.c_target() {
            let _ = writeln!(out, "\tif (fij_root_{c}_0 == 0) fij_root_{c}_0 = target()");
        }
        for (t, target) in self.scenario.targets.iter().enumerate() {
            let instances = match target.source {
                TargetSource::Selector(_) => continue,
                _ => target.source.instances(),
            };
            for i in 0..instances {
                let _ = writeln!(
                    out,
                    "\t// Target `{name}` instance {i}: its process comes from -c, -G or the scenario.\n\
                     \t// (Short message: the BPF runtime's string literals are at most 64 bytes.)\n\
                     \tif (fij_root_{t}_{i} <= 0) error(\"no pid for fij_root_{t}_{i}: give -c CMD or -G\")\n\
                     \tfij_target[fij_root_{t}_{i}] = {t}\n\
                     \tfij_instance[fij_root_{t}_{i}] = {i}",
                    name = target.name
                );
            }
        }
        for (fault, instance) in &self.compiled.selections {
            let _ = writeln!(out, "\tfij_selected[{fault}, {instance}] = 1");
        }
        if !self.module() {
            for (fault, hits) in self.bpf_fires() {
                for hit in hits {
                    let _ = writeln!(out, "\tfij_fires[{fault}, {hit}] = 1");
                }
            }
        }
        let _ = writeln!(
            out,
            "\tnow = fij_start_ns\n\tprintf(\"{OUTPUT_PREFIX} armed ktime_ns={kt_fmt}\\n\", {kt_args})\n}}\n"
        );
    }

    /// Fork, exec and exit: the target set follows the processes, as fij's lifecycle programs.
    fn lifecycle(&self, out: &mut String) {
        let (kt_fmt, kt_args) = self.ktime();
        let join = if self.selectors().next().is_some() {
            "\tif (!(parent in fij_target)) fij_join_by_selector(parent)\n"
        } else {
            ""
        };
        // The module runtime sees the tracepoints' arguments (the task_structs), the BPF runtime
        // only their trace-event fields (stap's 4.1 tracepoint behaviour, docs/stap.md).
        let child = if self.module() {
            "\t// In the parent's context; a new thread (same tgid) is no new process.\n\
             \tchild = $child->tgid\n\
             \tif (!(parent in fij_target) || child == parent) next\n"
        } else {
            "\t// In the parent's context. The event tells no thread from a process: a new thread\n\
             \t// joins under its tid, and leaves at its exit.\n\
             \tchild = $child_pid\n\
             \t// 0 when the event's layout is not the headers' (docs/stap.md): pid 0 is no child.\n\
             \tif (!(parent in fij_target) || child <= 0) next\n"
        };
        let _ = writeln!(
            out,
            "probe kernel.trace(\"sched:sched_process_fork\") {{\n\
             \tparent = pid()\n{join}{child}\
             \tfij_target[child] = fij_target[parent]\n\
             \tfij_instance[child] = fij_instance[parent]\n\
             \tnow = ktime_get_ns()\n\
             \tprintf(\"{OUTPUT_PREFIX} fork parent=%d child=%d target=%d instance=%d ktime_ns={kt_fmt}\\n\",\n\
             \t       parent, child, fij_target[child], fij_instance[child], {kt_args})\n\
             }}\n"
        );
        let per_process: Vec<usize> = self
            .scenario
            .faults
            .iter()
            .enumerate()
            .filter(|(_, f)| f.per == Per::Process && !matches!(f.trigger, Trigger::Time(_)))
            .map(|(id, _)| id)
            .collect();
        let mut forget = String::new();
        for id in per_process {
            let _ = writeln!(forget, "\tdelete fij_hits[{id}, tgid]");
        }
        if self.has_stop() {
            forget.push_str("\tdelete fij_stopped[tgid]\n");
        }
        let (dead, code) = if self.module() {
            (
                "\t// The process leaves the set when its last thread exits (signal->live reached 0\n\
                 \t// just before this tracepoint); its counters go with it.\n\
                 \ttgid = $p->tgid\n\
                 \tif (!(tgid in fij_target) || $p->signal->live->counter != 0) next\n",
                "$p->exit_code",
            )
        } else {
            (
                "\t// A thread's entry goes at its exit; the process leaves when its main thread\n\
                 \t// exits (the event has no task_struct to tell whether other threads live on).\n\
                 \ttgid = pid()\n\
                 \tif (tid() != tgid) {\n\
                 \t\tdelete fij_target[tid()]\n\
                 \t\tdelete fij_instance[tid()]\n\
                 \t\tnext\n\
                 \t}\n\
                 \tif (!(tgid in fij_target)) next\n",
                "-1",
            )
        };
        let _ = writeln!(
            out,
            "probe kernel.trace(\"sched:sched_process_exit\") {{\n{dead}\
             \tnow = ktime_get_ns()\n\
             \tprintf(\"{OUTPUT_PREFIX} exit pid=%d target=%d instance=%d status=%d ktime_ns={kt_fmt}\\n\",\n\
             \t       tgid, fij_target[tgid], fij_instance[tgid], {code}, {kt_args})\n\
             \tdelete fij_target[tgid]\n\
             \tdelete fij_instance[tgid]\n{forget}}}\n"
        );
        let selectors: Vec<_> = self.selectors().collect();
        if !selectors.is_empty() {
            let _ = writeln!(
                out,
                "// After exec: the new name, and the path as passed to execve.\n\
                 probe kernel.trace(\"sched:sched_process_exec\") {{\n\
                 \ttgid = pid()\n\
                 \tif (tgid in fij_target) next"
            );
            for (t, selector) in &selectors {
                if let Selector::Exe(exe) = selector {
                    let _ = writeln!(
                        out,
                        "\tif (kernel_string({}) == {}) {{ fij_join(tgid, {t}, \"exe\"); next }}",
                        if self.module() {
                            "$bprm->filename"
                        } else {
                            "$filename"
                        },
                        stap_string(&exe.to_string_lossy())
                    );
                }
            }
            let _ = writeln!(out, "\tfij_join_by_selector(tgid)\n}}\n");
        }
    }

    /// One probe per hook (syscall entry, tracepoint, probe) that some fault counts hits of.
    fn hit_probes(&self, out: &mut String) {
        let join = if self.selectors().next().is_some() {
            "\tif (!(tgid in fij_target) && !fij_join_by_selector(tgid)) next\n"
        } else {
            "\tif (!(tgid in fij_target)) next\n"
        };
        let hooks = &self.compiled.hooks;
        // Syscalls: one probe on the raw entry tracepoint, dispatching on the number.
        let syscalls: Vec<_> = hooks
            .iter()
            .filter(|(k, _)| k.hook < HOOK_TRACEPOINT)
            .collect();
        if !syscalls.is_empty() {
            let sockaddr = if self.has_port() {
                // x86_64: arguments 2 and 5 (connect/bind, sendto) are in rsi and r8.
                "\targ2 = $regs->si\n\targ5 = $regs->r8\n"
            } else {
                ""
            };
            let header = |out: &mut String| {
                let _ = writeln!(
                    out,
                    "// Every syscall entry, as fij's sys_enter program: hit numbers count the same calls.\n\
                     probe kernel.trace(\"raw_syscalls:sys_enter\") {{\n\ttgid = pid()\n{join}\
                     \ttarget = fij_target[tgid]\n\tnr = $id\n{sockaddr}"
                );
            };
            // The BPF runtime inlines every function a probe calls into one program, whose
            // 512-byte stack a handful of faults overflows ("register allocation failed"): one
            // probe per (target, syscall) there, each its own program.
            let one_probe_per_hook = !self.module();
            if !one_probe_per_hook {
                header(out);
            }
            for (key, faults) in syscalls {
                if one_probe_per_hook {
                    header(out);
                }
                let calls: Vec<String> = faults
                    .iter()
                    .map(|&id| {
                        let arg = match self.compiled.rules[id as usize].port_arg {
                            2 if self.has_port() => "arg2",
                            5 if self.has_port() => "arg5",
                            _ => "0",
                        };
                        format!("fij_fault_{id}({arg})")
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "\tif (target == {} && nr == {}) {{ {} }}",
                    key.target_idx,
                    key.hook,
                    calls.join("; ")
                );
                if one_probe_per_hook {
                    let _ = writeln!(out, "}}\n");
                }
            }
            if !one_probe_per_hook {
                let _ = writeln!(out, "}}\n");
            }
        }
        let attach = &self.compiled.attach;
        for (slot, (category, name)) in attach.tracepoints.iter().enumerate() {
            let point = format!("kernel.trace(\"{category}:{name}\")");
            self.hit_probe(out, &point, HOOK_TRACEPOINT | slot as u32, join);
        }
        for (index, probe) in attach.probes.iter().enumerate() {
            let point = self.probe_point(probe);
            self.hit_probe(out, &point, HOOK_PROBE | index as u32, join);
        }
    }

    /// A probe whose every firing in a target's context is a hit of the faults on `hook`.
    fn hit_probe(&self, out: &mut String, point: &str, hook: u32, join: &str) {
        let _ = writeln!(
            out,
            "probe {point} {{\n\ttgid = pid()\n{join}\ttarget = fij_target[tgid]"
        );
        for (key, faults) in self.compiled.hooks.iter().filter(|(k, _)| k.hook == hook) {
            let calls: Vec<String> = faults
                .iter()
                .map(|id| format!("fij_fault_{id}(0)"))
                .collect();
            let _ = writeln!(
                out,
                "\tif (target == {}) {{ {} }}",
                key.target_idx,
                calls.join("; ")
            );
        }
        let _ = writeln!(out, "}}\n");
    }

    fn probe_point(&self, probe: &Probe) -> String {
        let ProbeLocation::Symbol(symbol) = &probe.location else {
            unreachable!("offsets are refused by refuse::check")
        };
        let symbol = stap_string(symbol);
        match probe.kind {
            ProbeKind::Uprobe | ProbeKind::Uretprobe => {
                let binary = &self.probe_binaries[&probe.binary];
                let ret = if probe.kind == ProbeKind::Uretprobe {
                    ".return"
                } else {
                    ""
                };
                format!("process({}).function({symbol}){ret}", stap_string(binary))
            }
            // `kprobe.function`, not `kernel.function`: it needs the kernel's symbol table,
            // not its debuginfo.
            ProbeKind::Kprobe => format!("kprobe.function({symbol})"),
            ProbeKind::Kretprobe => format!("kprobe.function({symbol}).return"),
        }
    }

    /// One `timer.ms` probe per due time: it fires once (a `timer.ms(N)` probe repeats every
    /// N ms), at the due time rounded up to the millisecond (the timer ticks in jiffies).
    fn time_probes(&self, out: &mut String) {
        for (index, due) in self.compiled.due.iter().enumerate() {
            let fault = &self.scenario.faults[due.fault_id as usize];
            let nanos = due.after.as_nanos();
            let ms = nanos.div_ceil(1_000_000).max(1);
            let (t, i) = (due.target_idx, due.instance);
            let _ = writeln!(
                out,
                "// Fault {id} `{name}`, instance {i}: due {nanos} ns after the start.\n\
                 probe timer.ms({ms}) {{\n\
                 \tif ({index} in fij_due_fired) next\n\
                 \tfij_due_fired[{index}] = 1\n\
                 \tfij_fire_due({id}, {t}, {i}, fij_root_{t}_{i}, {signal}, {nanos})",
                id = due.fault_id,
                name = fault.name,
                signal = fault.action.signal(),
            );
            if let Action::Stop { resume_after } = &fault.action {
                let _ = writeln!(
                    out,
                    "\tif (fij_root_{t}_{i} in fij_target) {}",
                    stop_until(&format!("fij_root_{t}_{i}"), *resume_after)
                );
            }
            let _ = writeln!(out, "}}\n");
        }
    }

    fn end(&self, out: &mut String) {
        let (kt_fmt, kt_args) = self.ktime();
        if self.has_stop() {
            let _ = writeln!(
                out,
                "// stop's resume_after: SIGCONT once due (checked every tick).\n\
                 probe timer.ms(1) {{\n\
                 \tnow = ktime_get_ns()\n\
                 \tforeach (tgid in fij_stopped)\n\
                 \t\tif (fij_stopped[tgid] != 0 && fij_stopped[tgid] <= now) fij_resuming[tgid] = 1\n\
                 \tforeach (tgid in fij_resuming) {{\n\
                 \t\tfij_resume(tgid, \"resume_after\")\n\
                 \t\tdelete fij_stopped[tgid]\n\
                 \t}}\n\
                 \tdelete fij_resuming\n\
                 }}\n"
            );
        }
        if let Some(duration) = self.scenario.duration {
            let _ = writeln!(
                out,
                "// The scenario's duration.\nprobe timer.ms({}) {{\n\tfij_end_reason = \"duration\"\n\texit()\n}}\n",
                duration.as_millis().max(1)
            );
        }
        let resume = if self.has_stop() {
            "\t// As fij, never leave a process stopped.\n\
             \tforeach (tgid in fij_stopped) fij_resume(tgid, \"end\")\n"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "probe end {{\n{resume}\
             \tnow = ktime_get_ns()\n\
             \tprintf(\"{OUTPUT_PREFIX} end reason=%s ktime_ns={kt_fmt}\\n\", fij_end_reason, {kt_args})\n}}"
        );
    }
}

/// Marks process `tgid` (a stap expression) stopped until `resume_after`, or the end.
fn stop_until(tgid: &str, resume_after: Option<std::time::Duration>) -> String {
    match resume_after {
        Some(after) => format!(
            "fij_stopped[{tgid}] = ktime_get_ns() + {} // resume_after",
            after.as_nanos()
        ),
        None => format!("fij_stopped[{tgid}] = 0 // resumed at the end"),
    }
}

fn action_name(action: &Action) -> String {
    match action {
        Action::Kill => "kill".into(),
        Action::Signal(sig) => format!("signal {}", crate::signals::name(*sig)),
        Action::Crash { .. } => "crash".into(),
        Action::Stop { .. } => "stop".into(),
        Action::Partition { .. } => "partition".into(),
        Action::Error { returns, .. } => format!("error {returns}"),
    }
}

/// Text for a `//` comment: a line break inside (a multi-line argument of a command) goes on
/// in a new comment line, so the script stays valid.
fn comment(text: &str) -> String {
    text.replace('\n', "\n//     ")
}

/// A stap string literal.
fn stap_string(s: &str) -> String {
    let mut literal = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => literal.push_str("\\\""),
            '\\' => literal.push_str("\\\\"),
            '\n' => literal.push_str("\\n"),
            '\t' => literal.push_str("\\t"),
            c => literal.push(c),
        }
    }
    literal.push('"');
    literal
}

/// One word for `sh` (and for `stap -c`, which splits its command with wordexp): single
/// quotes, each `'` closed, escaped and reopened.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::compile, scenario::parse_str};
    use std::path::Path;

    fn script(text: &str, runtime: Runtime) -> String {
        let scenario = parse_str(Path::new("s.toml"), text).unwrap();
        let compiled = compile(&scenario, 3).unwrap();
        super::super::generate(&scenario, &compiled, runtime).unwrap()
    }

    /// The lines of the function `name` in `script`, up to its closing brace.
    fn function<'a>(script: &'a str, name: &str) -> Vec<&'a str> {
        let start = format!("function {name}(");
        let mut lines = script.lines().skip_while(|l| !l.starts_with(&start));
        let mut body: Vec<&str> = lines.by_ref().take_while(|l| *l != "}").collect();
        body.push("}");
        body
    }

    /// `-p2` cannot tell `return` from `return <next line>`, nor a wrong order: the text is
    /// pinned here, in `decide.rs`'s order (select, after, port, count, nth/every,
    /// probability, count cap, fire).
    #[test]
    fn a_fault_function_checks_the_conditions_in_the_kernel_order() {
        let text = "[[target]]\nname = \"t\"\ncommand = [\"true\"]\ninstances = 4\n\n\
                    [[fault]]\nname = \"f\"\ntarget = \"t\"\naction = \"stop\"\n\
                    resume_after = \"2s\"\ntrigger = { syscall = \"connect\", port = 2379 }\n\
                    select = { fixed = 2 }\nafter = \"1s\"\nnth = 2\nevery = 3\ncount = 2\n\
                    probability = 0.5\n";
        let script = script(text, Runtime::Module);
        assert_eq!(
            function(&script, "fij_fault_0"),
            [
                "function fij_fault_0(sockaddr) {",
                "\ttgid = pid()",
                "\tif (!([0, fij_instance[tgid]] in fij_selected)) return 0 // select",
                "\tif (ktime_get_ns() - fij_start_ns < 1000000000) return 0 // after: earlier hits are not counted",
                "\tif (!fij_port_is(sockaddr, 2379)) return 0 // port",
                "\thit = ++fij_hits[0, tgid]",
                "\tif (hit < 2 || (hit - 2) % 3 != 0) return 0 // nth, every",
                "\tdraw = fij_draw(0, hit)",
                "\tif (!fij_fires(0, draw)) return 0 // probability",
                "\tif (fij_injections[0] >= 2) return 0 // count",
                "\tfij_injections[0]++",
                "\tfij_fire(0, 19, hit, draw)",
                "\tfij_stopped[tgid] = ktime_get_ns() + 2000000000 // resume_after",
                "\treturn 1",
                "}",
            ]
        );
        // The seed and the threshold ⌊0.5·2^64⌋ reach the embedded C.
        assert!(script.contains("#define FIJ_SEED 0x3ULL"), "{script}");
        assert!(
            script.contains("fij_thresholds[1] = { 0x8000000000000000ULL }"),
            "{script}"
        );
        // The connect syscall's sockaddr is argument 2 (rsi on x86_64).
        let nr = libc::SYS_connect;
        assert!(
            script.contains(&format!(
                "if (target == 0 && nr == {nr}) {{ fij_fault_0(arg2) }}"
            )),
            "{script}"
        );
        // The selected instances are the compile stage's draws.
        let compiled = compile(&parse_str(Path::new("s.toml"), text).unwrap(), 3).unwrap();
        for (fault, instance) in compiled.selections {
            assert!(script.contains(&format!("fij_selected[{fault}, {instance}] = 1")));
        }
    }

    /// The BPF runtime cannot run ChaCha20: its script holds the hits whose draw fires, which
    /// are exactly `fij plan`'s decisions (the kernel programs' draws) for those hits.
    #[test]
    fn the_bpf_script_holds_the_plan_s_probability_decisions() {
        let text = "[[target]]\nname = \"t\"\ncommand = [\"true\"]\n\n\
                    [[fault]]\nname = \"f\"\ntarget = \"t\"\naction = \"kill\"\n\
                    trigger = { syscall = \"write\" }\nevery = 2\nprobability = 0.25\n";
        let scenario = parse_str(Path::new("s.toml"), text).unwrap();
        let compiled = compile(&scenario, 9).unwrap();
        let script = super::super::generate(&scenario, &compiled, Runtime::Bpf).unwrap();
        let plan = crate::plan::plan(&scenario, &compiled, BPF_DECIDED_HITS);
        let planned: Vec<u64> = serde_json::to_value(&plan).unwrap()["faults"][0]["fires"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["hit"].as_u64().unwrap())
            .collect();
        let in_script: Vec<u64> = script
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("fij_fires[0, ")?
                    .strip_suffix("] = 1")
            })
            .map(|hit| hit.parse().unwrap())
            .collect();
        assert!(planned.len() > 100, "{planned:?}");
        assert!(planned.iter().all(|hit| hit % 2 == 0));
        assert_eq!(in_script, planned);
        assert!(
            script.contains("if (!([0, hit] in fij_fires)) return 0"),
            "{script}"
        );
    }

    #[test]
    fn time_triggers_fire_once_at_the_compiled_due_time_rounded_up_to_the_millisecond() {
        let text = "[[target]]\nname = \"t\"\ncommand = [\"true\"]\ninstances = 2\n\n\
                    [[fault]]\nname = \"f\"\ntarget = \"t\"\naction = \"kill\"\n\
                    trigger = { after = { uniform = { min = \"1s\", max = \"2s\" } } }\n";
        let scenario = parse_str(Path::new("s.toml"), text).unwrap();
        let compiled = compile(&scenario, 3).unwrap();
        let script = super::super::generate(&scenario, &compiled, Runtime::Module).unwrap();
        assert_eq!(compiled.due.len(), 2);
        for (index, due) in compiled.due.iter().enumerate() {
            let nanos = due.after.as_nanos();
            let i = due.instance;
            assert!(
                script.contains(&format!(
                    "probe timer.ms({}) {{\n\tif ({index} in fij_due_fired) next\n\
                     \tfij_due_fired[{index}] = 1\n\tfij_fire_due(0, 0, {i}, fij_root_0_{i}, 9, {nanos})",
                    nanos.div_ceil(1_000_000)
                )),
                "{script}"
            );
        }
    }

    #[test]
    fn the_run_line_quotes_the_command_for_sh_as_stap_runs_it() {
        let argv: Vec<String> = ["sh", "-c", "echo 'it''s' \"$HOME\"\nexit 3", "", "a b"]
            .map(String::from)
            .to_vec();
        // stap -c CMD runs `sh -c CMD`; here CMD prints its words NUL-separated instead.
        let command = format!("printf '%s\\0' {}", shell_words(&argv));
        let out = std::process::Command::new("sh")
            .args(["-c", &command])
            .output()
            .unwrap();
        let words: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(String::from)
            .collect();
        assert_eq!(words, argv);
        // The header's `-c` argument is one shell word holding that command.
        let header = script(
            "[[target]]\nname = \"t\"\ncommand = [\"sh\", \"-c\", \"echo 'x'\"]\n",
            Runtime::Module,
        );
        assert!(
            header.contains(
                r#"//   stap -g SCRIPT.stp -c 'sh -c '\''echo '\''\'\'''\''x'\''\'\'''\'''\'''"#
            ),
            "{header}"
        );
    }
}
