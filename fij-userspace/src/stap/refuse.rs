//! What a SystemTap runtime cannot express, refused at the scenario key that asks for it: `fij
//! stap` then exits 2 with every reason as `file:line:col: message` and prints no script. A
//! script that quietly did less than the scenario says would make a side-by-side run compare
//! two different campaigns.
use std::{collections::BTreeMap, path::Path, process::Command};

use super::Runtime;
use crate::scenario::{
    Action, Diagnostic, Diagnostics, ProbeKind, ProbeLocation, Scenario, Selector, SourcePos,
    TargetSource, Trigger,
};

/// Uprobe binaries as the script names them: the scenario's `PATH` or library name → an
/// absolute path.
pub type ProbeBinaries = BTreeMap<String, String>;

/// Every refusal of `scenario` for `runtime`, in file order; else the uprobe binaries resolved.
pub fn check(scenario: &Scenario, runtime: Runtime) -> Result<ProbeBinaries, Diagnostics> {
    let mut found = Vec::new();
    let mut at = |pos: SourcePos, message: String| {
        found.push(Diagnostic {
            file: scenario.path.clone(),
            line: pos.line,
            col: pos.col,
            message,
        })
    };
    let bpf = runtime == Runtime::Bpf;
    for target in &scenario.targets {
        if let TargetSource::Selector(Selector::Cgroup(_)) = target.source {
            at(
                target.at,
                format!(
                    "target `{}`: SystemTap cannot select by `cgroup` (no tapset function reads a \
                     task's cgroup v2 id); use `comm`, `exe` or `uid`",
                    target.name
                ),
            );
        }
    }
    let mut binaries = ProbeBinaries::new();
    for fault in &scenario.faults {
        let name = &fault.name;
        if bpf {
            let keys = &fault.conditions_at;
            let limits = [
                ("nth", fault.nth, keys.nth),
                ("every", fault.every, keys.every),
                ("count", Some(fault.count), keys.count),
            ];
            for (key, value, key_at) in limits {
                if let Some(value) = value.filter(|&v| v > BPF_IMMEDIATE_MAX) {
                    at(
                        key_at.unwrap_or(fault.at),
                        format!(
                            "fault `{name}`: the BPF runtime cannot express `{key} = {value}`: \
                             stap's BPF code generator mishandles a number above \
                             {BPF_IMMEDIATE_MAX} (2^31 - 1) and the kernel's verifier rejects \
                             the program (\"unreachable insn\"); use at most {BPF_IMMEDIATE_MAX}, \
                             or --runtime module"
                        ),
                    );
                }
            }
            if let Some(after) = fault.after
                && bpf_after_in_units(after.as_nanos() as u64).is_none()
            {
                at(
                    keys.after.unwrap_or(fault.at),
                    format!(
                        "fault `{name}`: the BPF runtime cannot express `after = {after:?}` \
                         exactly: stap's BPF code generator mishandles a number above \
                         {BPF_IMMEDIATE_MAX}, and this duration in ns, µs, ms or s is either \
                         above it or not a whole number; round it, or use --runtime module"
                    ),
                );
            }
        }
        match &fault.action {
            Action::Crash { .. } => at(
                fault.at,
                format!(
                    "fault `{name}`: SystemTap cannot express `crash`: it can kill the victim \
                     (`raise(SIGKILL)`), but the kernel then closes the victim's sockets (FIN, \
                     RST) — that is fij's `kill`; keeping them silent needs packets dropped, and \
                     stap cannot drop packets"
                ),
            ),
            Action::Partition { .. } => at(
                fault.at,
                format!(
                    "fault `{name}`: SystemTap cannot express `partition`: silencing a process's \
                     connections needs packets dropped, and stap cannot drop packets"
                ),
            ),
            Action::Stop { .. } if bpf => at(
                fault.at,
                format!(
                    "fault `{name}`: the BPF runtime cannot express `stop`: the SIGCONT that \
                     ends it is sent from a timer to another process, and BPF's send_signal \
                     signals only the current one; use --runtime module"
                ),
            ),
            Action::Error { at: errno_at, .. } => at(
                *errno_at,
                format!(
                    "fault `{name}`: fij stap does not write `error` faults: a guru-mode write to \
                     `$return` in a syscall's .return probe changes what the call returns only \
                     after it has run (a failed `write` would still have written), which is not \
                     fij's failed call"
                ),
            ),
            Action::Kill | Action::Signal(_) | Action::Stop { .. } => {}
        }
        match &fault.trigger {
            Trigger::Syscall { port: Some(_), .. } if bpf => at(
                fault.trigger_at,
                format!(
                    "fault `{name}`: the BPF runtime cannot express `port`: reading the call's \
                     sockaddr from user memory needs the module runtime's user_ushort(); use \
                     --runtime module"
                ),
            ),
            Trigger::Time(_) if bpf => at(
                fault.trigger_at,
                format!(
                    "fault `{name}`: the BPF runtime cannot express time triggers: the signal \
                     is sent from a timer to the instance's process, and BPF's send_signal \
                     signals only the current one; use --runtime module"
                ),
            ),
            Trigger::Probe(probe) => {
                if !matches!(probe.location, ProbeLocation::Symbol(_)) {
                    at(
                        fault.trigger_at,
                        format!(
                            "fault `{name}`: SystemTap probes a function by name only here: \
                             `{probe}` gives an offset, which stap would read as an address of \
                             its own kind (not fij's file offset); use `PATH:SYMBOL`"
                        ),
                    );
                }
                if matches!(probe.kind, ProbeKind::Uprobe | ProbeKind::Uretprobe) {
                    match resolve_binary(&probe.binary) {
                        Some(path) => {
                            binaries.insert(probe.binary.clone(), path);
                        }
                        None => at(
                            fault.trigger_at,
                            format!(
                                "fault `{name}`: `{}` is no file, nor a library the dynamic \
                                 loader's cache (`ldconfig -p`) knows: stap needs the path",
                                probe.binary
                            ),
                        ),
                    }
                }
            }
            Trigger::Syscall { .. } | Trigger::Tracepoint { .. } | Trigger::Time(_) => {}
        }
    }
    if found.is_empty() {
        Ok(binaries)
    } else {
        found.sort_by_key(|d| (d.line, d.col));
        Err(Diagnostics(found))
    }
}

/// The largest number the BPF runtime's scripts may contain: stap's BPF code generator
/// (stap 4.8) turns a larger immediate into code the verifier rejects ("unreachable insn"; found
/// with `nth = 4000000000`), so hit numbers and counts above it are refused.
pub const BPF_IMMEDIATE_MAX: u64 = i32::MAX as u64;

/// `after` (ns) as `(unit_ns, count)` with `count * unit_ns == after_ns` and `count` at most
/// [`BPF_IMMEDIATE_MAX`], in the finest unit (ns, µs, ms, s) that holds it exactly: the BPF
/// script compares the elapsed time divided by the unit (an exact test, since `after` is a whole
/// number of units). None when no unit holds it.
pub fn bpf_after_in_units(after_ns: u64) -> Option<(u64, u64)> {
    [1, 1_000, 1_000_000, 1_000_000_000]
        .into_iter()
        .find(|&unit| after_ns.is_multiple_of(unit) && after_ns / unit <= BPF_IMMEDIATE_MAX)
        .map(|unit| (unit, after_ns / unit))
}

/// The absolute path stap's `process("…")` needs for a uprobe's `PATH` or library name (`libc`),
/// found the way fij's own uprobes find it: a path as given (made absolute), a name through the
/// dynamic loader's cache.
fn resolve_binary(binary: &str) -> Option<String> {
    if binary.contains('/') {
        let path = Path::new(binary);
        return path
            .canonicalize()
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
    }
    let cache = Command::new("ldconfig").arg("-p").output().ok()?;
    let cache = String::from_utf8_lossy(&cache.stdout);
    // Lines read `\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6`.
    cache.lines().find_map(|line| {
        let (soname, rest) = line.trim().split_once(' ')?;
        let matches = soname == binary || soname.starts_with(&format!("{binary}.so"));
        let path = rest.rsplit_once("=> ")?.1;
        (matches && rest.contains("x86-64")).then(|| path.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse_str;

    fn refusals(text: &str, runtime: Runtime) -> Vec<String> {
        let scenario = parse_str(Path::new("s.toml"), text).unwrap();
        match check(&scenario, runtime) {
            Ok(_) => vec![],
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    const TARGET: &str = "[[target]]\nname = \"t\"\ncommand = [\"true\"]\n";

    #[test]
    fn crash_and_partition_are_refused_at_their_fault_saying_stap_cannot_drop_packets() {
        let text = format!(
            "{TARGET}[[fault]]\nname = \"c\"\ntarget = \"t\"\naction = \"crash\"\n\
             trigger = {{ syscall = \"write\" }}\n\n[[fault]]\nname = \"p\"\ntarget = \"t\"\n\
             action = \"partition\"\ntrigger = {{ syscall = \"write\" }}\n"
        );
        let got = refusals(&text, Runtime::Module);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("s.toml:4:1: fault `c`: SystemTap cannot express `crash`"));
        assert!(got[0].contains("that is fij's `kill`") && got[0].contains("cannot drop packets"));
        assert!(got[1].starts_with("s.toml:10:1: fault `p`: SystemTap cannot express `partition`"));
        assert!(got[1].contains("cannot drop packets"));
    }

    #[test]
    fn an_error_fault_is_refused_at_its_errno() {
        let text = format!(
            "{TARGET}[[fault]]\nname = \"e\"\ntarget = \"t\"\naction = \"error\"\n\
             errno = \"EIO\"\ntrigger = {{ syscall = \"write\" }}\n"
        );
        for runtime in [Runtime::Module, Runtime::Bpf] {
            let got = refusals(&text, runtime);
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(
                got[0].starts_with("s.toml:8:9: fault `e`: fij stap does not write `error` faults"),
                "{got:?}"
            );
        }
    }

    #[test]
    fn the_bpf_runtime_refuses_what_needs_c_or_a_signal_to_another_process() {
        // `probability` is not refused: the BPF script gets the compile stage's decisions.
        let text = format!(
            "{TARGET}[[fault]]\nname = \"p\"\ntarget = \"t\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"write\" }}\nprobability = 0.5\n\n\
             [[fault]]\nname = \"s\"\ntarget = \"t\"\naction = \"stop\"\n\
             trigger = {{ syscall = \"write\" }}\n\n\
             [[fault]]\nname = \"a\"\ntarget = \"t\"\naction = \"kill\"\ntrigger = {{ at = \"1s\" }}\n"
        );
        assert_eq!(refusals(&text, Runtime::Module), Vec::<String>::new());
        let got = refusals(&text, Runtime::Bpf);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("s.toml:11:1: fault `s`: the BPF runtime cannot express `stop`")
        );
        assert!(
            got[1].starts_with(
                "s.toml:21:11: fault `a`: the BPF runtime cannot express time triggers"
            )
        );
    }

    #[test]
    fn cgroup_targets_and_probe_offsets_are_refused_at_their_key() {
        let text = "[[target]]\nname = \"g\"\ncgroup = 42\n\n[[fault]]\nname = \"u\"\n\
                    target = \"g\"\naction = \"kill\"\ntrigger = { uprobe = \"/bin/sh:0x10\" }\n";
        let got = refusals(text, Runtime::Module);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("s.toml:1:1: target `g`: SystemTap cannot select by `cgroup`"));
        assert!(
            got[1].starts_with("s.toml:9:11: fault `u`: SystemTap probes a function by name only")
        );
    }

    #[test]
    fn the_bpf_runtime_refuses_numbers_its_code_generator_mishandles_at_their_value() {
        let text = format!(
            "{TARGET}[[fault]]\nname = \"n\"\ntarget = \"t\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"write\" }}\nnth = 3000000000\nevery = 2147483647\n\
             count = 2147483648\nafter = \"2147483648ns\"\n"
        );
        assert_eq!(refusals(&text, Runtime::Module), Vec::<String>::new());
        let got = refusals(&text, Runtime::Bpf);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].starts_with(
                "s.toml:9:7: fault `n`: the BPF runtime cannot express `nth = 3000000000`"
            ),
            "{got:?}"
        );
        assert!(got[0].contains("unreachable insn"), "{got:?}");
        assert!(
            got[1].starts_with(
                "s.toml:11:9: fault `n`: the BPF runtime cannot express `count = 2147483648`"
            ),
            "{got:?}"
        );
        assert!(got[2].starts_with("s.toml:12:9: fault `n`: the BPF runtime cannot express `after = 2.147483648s` exactly"), "{got:?}");
    }

    #[test]
    fn a_long_after_is_compared_in_the_finest_unit_that_holds_it() {
        assert_eq!(bpf_after_in_units(1_000_000_000), Some((1, 1_000_000_000)));
        assert_eq!(bpf_after_in_units(3_000_000_000), Some((1_000, 3_000_000)));
        assert_eq!(bpf_after_in_units(3_000_000_001), None);
        assert_eq!(
            bpf_after_in_units(86_400_000_000_000),
            Some((1_000_000, 86_400_000))
        );
        assert_eq!(bpf_after_in_units(0), Some((1, 0)));
    }

    #[test]
    fn library_names_resolve_through_the_loader_cache() {
        let libc = resolve_binary("libc").expect("libc is in ld.so.cache");
        assert!(libc.starts_with('/') && libc.contains("libc.so"), "{libc}");
        assert_eq!(
            resolve_binary("/bin/../bin/sh").as_deref(),
            Path::new("/bin/sh")
                .canonicalize()
                .ok()
                .as_deref()
                .and_then(Path::to_str)
        );
        assert_eq!(resolve_binary("no-such-library-fij"), None);
    }
}
