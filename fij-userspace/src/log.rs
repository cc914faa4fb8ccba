//! The campaign log: one JSON object per line (`--log FILE`), flushed line by line so the log is
//! complete up to the last event even if fij itself is killed. The record types live in
//! `fij_common::log`, shared with every reader of the log.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result};
pub use fij_common::log::{EndReason, Record, TargetRecord};

use crate::report::Summary;

/// The campaign's log: the file, if any, and the summary every record is folded into.
pub struct EventLog {
    out: Option<BufWriter<File>>,
    summary: Summary,
    /// Every record written, when asked to keep them (the library API).
    kept: Option<Vec<Record>>,
}

impl EventLog {
    /// A log written to `path` (or to no file), whose summary starts from `summary`, keeping
    /// every record in memory too if `keep`. Never through a symbolic link: a link planted
    /// where the log goes (a world-writable directory) would have root write wherever it points,
    /// so a path that is a symlink is refused (invalid input, exit 2), and the open itself uses
    /// `O_NOFOLLOW`, so a link planted after the check is refused too.
    pub fn create(path: Option<&Path>, mut summary: Summary, keep: bool) -> Result<Self> {
        let out = path.map(open_log).transpose()?.map(BufWriter::new);
        if let Some(path) = path {
            summary.logged_to(path);
        }
        Ok(Self {
            out,
            summary,
            kept: keep.then(Vec::new),
        })
    }

    /// What the campaign did so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The records kept so far (none unless asked to keep them).
    pub fn take_records(&mut self) -> Vec<Record> {
        self.kept.take().unwrap_or_default()
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        self.summary.add(record);
        if let Some(kept) = &mut self.kept {
            kept.push(record.clone());
        }
        if let Some(out) = &mut self.out {
            serde_json::to_writer(&mut *out, record)?;
            out.write_all(b"\n")?;
            out.flush().context("writing the log")?;
        }
        Ok(())
    }
}

/// Writes a file fij produces (a report page): created or truncated, never through a symlink.
pub fn write_new_file(path: &Path, contents: &[u8]) -> Result<()> {
    open_no_follow(path)
        .with_context(|| {
            format!(
                "cannot write {} (a symbolic link is refused)",
                path.display()
            )
        })?
        .write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates or truncates `path` for writing, 0644, failing with ELOOP if it is a symlink.
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn open_log(path: &Path) -> Result<File> {
    let symlink = |path: &Path| {
        crate::InvalidInput(format!(
            "--log {}: is a symbolic link; fij does not write its log through one (give the \
             file's own path)",
            path.display()
        ))
    };
    if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(symlink(path).into());
    }
    open_no_follow(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => symlink(path).into(),
        _ => anyhow::Error::new(e).context(format!("cannot create log file {}", path.display())),
    })
}
