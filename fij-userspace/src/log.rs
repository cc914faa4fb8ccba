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
    /// every record in memory too if `keep`.
    pub fn create(path: Option<&Path>, mut summary: Summary, keep: bool) -> Result<Self> {
        let out = path
            .map(|p| {
                File::create(p).with_context(|| format!("cannot create log file {}", p.display()))
            })
            .transpose()?
            .map(BufWriter::new);
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
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot write {} (a symlink is refused)", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}
