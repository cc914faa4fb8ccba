//! Scenario files: TOML in, a validated [`Scenario`] out, or every error with its position.
pub mod model;
mod parse;

pub use model::*;
pub use parse::{
    Diagnostic, Diagnostics, KPROBE_PMU, KernelFeatures, PORT_SYSCALLS, load, load_for, parse_str,
    parse_str_for,
};
