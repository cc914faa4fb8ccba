//! The one place where xtask runs other programs: every command that changes something is echoed
//! (`+ ENV=value program args`) before it runs, and a failure names the command.
use std::{
    fmt,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context, Result};

/// A command that ran but exited unsuccessfully; `main` turns it into xtask's own exit code.
#[derive(Debug)]
pub struct Failed {
    pub command: String,
    pub status: ExitStatus,
}

impl Failed {
    /// The exit code to pass on: the command's own, or 1 if it was killed by a signal.
    pub fn exit_code(&self) -> i32 {
        match self.status.code() {
            Some(0) | None => 1,
            Some(code) => code,
        }
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)
    }
}

impl std::error::Error for Failed {}

/// Echoes `cmd`, runs it with inherited stdio and fails (with [`Failed`]) unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        return Err(Failed {
            command: display(cmd),
            status,
        }
        .into());
    }
    Ok(())
}

/// Echoes `cmd`, runs it with inherited stdio and returns its exit status, whatever it is.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let shown = display(cmd);
    println!("+ {shown}");
    cmd.status()
        .with_context(|| format!("cannot run `{shown}`"))
}

/// Runs a query `cmd` quietly (not echoed, stderr discarded) and returns its stdout if it
/// succeeded, or `None` if it exited unsuccessfully. Fails only if it cannot be started.
pub fn query(cmd: &mut Command) -> Result<Option<String>> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", display(cmd)))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `ENV=value program args`, quoted where needed so it can be pasted into a shell.
pub fn display(cmd: &Command) -> String {
    let inherited_path = std::env::var("PATH").ok().map(|p| format!(":{p}"));
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        let (key, value) = (key.to_string_lossy(), value?.to_string_lossy());
        // A PATH that only prepends to ours is shown as `PATH=dir:$PATH`.
        let prefix = inherited_path
            .as_deref()
            .filter(|_| key == "PATH")
            .and_then(|tail| value.strip_suffix(tail));
        Some(match prefix {
            Some(prefix) => format!("{key}={}:$PATH", quote(prefix)),
            None => format!("{key}={}", quote(&value)),
        })
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| quote(&w.to_string_lossy()));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// `word` as one shell word: as is when plain, else in single quotes.
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
