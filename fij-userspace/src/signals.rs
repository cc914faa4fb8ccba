//! Signal names and numbers (x86-64 Linux): one table for the scenario parser (`signal =
//! "SIGTERM"`), the logs and the plans.

/// Names of signals 1–31 without `SIG`, by number; then the aliases the parser also accepts.
const NAMES: [&str; 32] = [
    "", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];
const ALIASES: [(&str, i32); 2] = [("IOT", libc::SIGIOT), ("POLL", libc::SIGPOLL)];

/// Highest signal number on Linux (`SIGRTMAX`).
pub const SIGNAL_MAX: i32 = 64;

/// Signal name for logs ("SIGKILL", "SIGRTMIN+2"), or the number when unknown.
pub fn name(sig: i32) -> String {
    match NAMES.get(sig as usize) {
        Some(name) if sig > 0 => format!("SIG{name}"),
        _ if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) => {
            format!("SIGRTMIN+{}", sig - libc::SIGRTMIN())
        }
        _ => sig.to_string(),
    }
}

/// The number of a signal named with or without `SIG`, in any case ("term", "SIGTERM").
pub fn number(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    known()
        .find(|(known, _)| *known == bare)
        .map(|(_, number)| number)
}

/// Every name the parser accepts (without `SIG`), with its number: for suggestions.
pub fn known() -> impl Iterator<Item = (&'static str, i32)> {
    NAMES
        .iter()
        .enumerate()
        .skip(1)
        .map(|(n, name)| (*name, n as i32))
        .chain(ALIASES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_agree_with_libc() {
        for (sig, expected) in [
            (libc::SIGKILL, "SIGKILL"),
            (libc::SIGSTKFLT, "SIGSTKFLT"),
            (libc::SIGSYS, "SIGSYS"),
            (libc::SIGRTMIN() + 2, "SIGRTMIN+2"),
            (0, "0"),
        ] {
            assert_eq!(name(sig), expected);
        }
        assert_eq!(number("term"), Some(libc::SIGTERM));
        assert_eq!(number("SIGSTKFLT"), Some(libc::SIGSTKFLT));
        assert_eq!(number("SIGIOT"), Some(libc::SIGABRT));
        assert_eq!(number("SIGNOPE"), None);
        for (name, n) in known() {
            assert_eq!(number(name), Some(n));
        }
    }
}
