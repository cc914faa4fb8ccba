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

pub struct EventLog {
    out: Option<BufWriter<File>>,
}

impl EventLog {
    pub fn create(path: Option<&Path>) -> Result<Self> {
        let out = path
            .map(|p| {
                File::create(p).with_context(|| format!("cannot create log file {}", p.display()))
            })
            .transpose()?
            .map(BufWriter::new);
        Ok(Self { out })
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        if let Some(out) = &mut self.out {
            serde_json::to_writer(&mut *out, record)?;
            out.write_all(b"\n")?;
            out.flush().context("writing the log")?;
        }
        Ok(())
    }
}
