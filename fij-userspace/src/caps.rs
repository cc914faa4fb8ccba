//! The capabilities a campaign needs, checked before anything is loaded: root with capabilities
//! dropped (a container, `capsh --drop`, a systemd unit's `CapabilityBoundingSet`) otherwise
//! fails deep in the loader with "failed to create map … Operation not permitted", which says
//! nothing of what is missing.
use crate::{
    InvalidInput,
    scenario::{Action, Scenario, TargetSource},
};

/// Capability numbers (linux/capability.h).
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in /proc/self/status); None when it
/// cannot be read (then nothing is checked here).
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// What `scenario` needs that the capability set `effective` lacks, as "CAP_X (why)" phrases.
pub fn missing(scenario: &Scenario, effective: u64) -> Vec<String> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    let mut need = |cap: u32, name: &str, why: &str| {
        if !has(cap) {
            missing.push(format!("{name} ({why})"));
        }
    };
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (kernels before 5.8 know only it).
    if !has(CAP_SYS_ADMIN) {
        need(CAP_BPF, "CAP_BPF", "to create maps and load programs");
        need(
            CAP_PERFMON,
            "CAP_PERFMON",
            "to load tracing programs that read kernel memory",
        );
    }
    let net = scenario.faults.iter().any(|f| {
        matches!(
            f.action,
            Action::Crash { .. } | Action::Partition { .. } | Action::Error { .. }
        )
    });
    if net {
        need(
            CAP_NET_ADMIN,
            "CAP_NET_ADMIN",
            "for `crash`, `partition` and `error`: socket, cgroup and tcx programs",
        );
    }
    let others = scenario
        .targets
        .iter()
        .any(|t| !matches!(t.source, TargetSource::Command { user: None, .. }));
    if others {
        need(
            CAP_KILL,
            "CAP_KILL",
            "to signal adopted targets and targets that run as another user",
        );
    }
    let setid = scenario.targets.iter().any(|t| {
        matches!(t.source, TargetSource::Command { user, group, .. } if user.is_some() || group.is_some())
    });
    if setid {
        need(CAP_SETUID, "CAP_SETUID", "for `user`");
        need(CAP_SETGID, "CAP_SETGID", "for `user` and `group`");
        need(
            CAP_SYS_PTRACE,
            "CAP_SYS_PTRACE",
            "to watch a target that runs as another user wait at its gate",
        );
    }
    missing
}

/// Refuses (invalid input: exit 2) a campaign that this process's capabilities cannot run,
/// naming what is missing.
pub fn check(scenario: &Scenario) -> Result<(), InvalidInput> {
    let Some(effective) = effective() else {
        return Ok(());
    };
    let missing = missing(scenario, effective);
    if missing.is_empty() {
        return Ok(());
    }
    Err(InvalidInput(format!(
        "fij runs as root but without capabilities this campaign needs: {} (effective set \
         {effective:#x}); run it without dropping them (e.g. outside `capsh --drop`, or with \
         them in the container's or unit's capability set)",
        missing.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(target: &str, action: &str) -> Scenario {
        let text = format!(
            "[[target]]\nname = \"w\"\n{target}\n\n[[fault]]\nname = \"f\"\ntarget = \"w\"\n\
             action = \"{action}\"\ntrigger = {{ syscall = \"write\" }}\n"
        );
        crate::scenario::parse_str(std::path::Path::new("/s.toml"), &text).unwrap()
    }

    #[test]
    fn what_each_campaign_needs() {
        let all = u64::MAX;
        let without = |caps: &[u32]| caps.iter().fold(all, |set, cap| set & !(1 << cap));
        let names = |s: &Scenario, set: u64| -> Vec<String> {
            missing(s, set)
                .iter()
                .map(|m| m.split(' ').next().unwrap().to_owned())
                .collect()
        };
        let kill = scenario("command = [\"true\"]", "kill");
        assert!(missing(&kill, all).is_empty());
        assert_eq!(
            names(&kill, without(&[CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN])),
            ["CAP_BPF", "CAP_PERFMON"]
        );
        // CAP_SYS_ADMIN stands in for both.
        assert!(
            missing(
                &kill,
                without(&[CAP_BPF, CAP_PERFMON, CAP_KILL, CAP_NET_ADMIN])
            )
            .is_empty()
        );
        let crash = scenario("command = [\"true\"]", "crash");
        assert_eq!(names(&crash, without(&[CAP_NET_ADMIN])), ["CAP_NET_ADMIN"]);
        let adopted = scenario("pid = 4242", "kill");
        assert_eq!(names(&adopted, without(&[CAP_KILL])), ["CAP_KILL"]);
        let nobody = scenario("command = [\"true\"]\nuser = 65534", "kill");
        assert_eq!(
            names(
                &nobody,
                without(&[CAP_SETUID, CAP_SETGID, CAP_SYS_PTRACE, CAP_KILL])
            ),
            ["CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_SYS_PTRACE"]
        );
    }
}
