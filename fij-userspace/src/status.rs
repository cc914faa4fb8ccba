//! The live status line of `fij run` on a terminal: elapsed / duration, injections so far,
//! target processes alive — redrawn under fij's messages, which are written above it. None when
//! stderr is not a terminal (piped to a file or a CI log).
use std::{
    io::{IsTerminal, Write},
    sync::OnceLock,
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The status line, once `fij run` has armed on a terminal.
static STATUS: OnceLock<ProgressBar> = OnceLock::new();

/// Starts the status line if stderr is a terminal.
pub fn start() {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    let _ = STATUS.set(bar);
}

/// Updates the status line (if there is one).
pub fn update(elapsed: Duration, duration: Option<Duration>, injections: u64, alive: usize) {
    if let Some(bar) = STATUS.get() {
        let of = duration.map_or(String::new(), |d| format!(" / {:.1} s", d.as_secs_f64()));
        bar.set_message(format!(
            "fij: {:.1} s{of} · {injections} injection(s) · {alive} target process(es) alive",
            elapsed.as_secs_f64()
        ));
    }
}

/// Removes the status line (the summary follows).
pub fn finish() {
    if let Some(bar) = STATUS.get() {
        bar.finish_and_clear();
    }
}

/// fij's messages on stderr, written above the status line when there is one.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match STATUS.get() {
            Some(bar) if !bar.is_finished() => bar.suspend(|| std::io::stderr().write(buf)),
            _ => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
