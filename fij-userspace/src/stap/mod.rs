//! The SystemTap backend: `fij stap` turns a compiled campaign into a SystemTap
//! script that injects the same faults, for side-by-side runs with the tool fij descends from
//! (Coti & Greneche, "OS-level Failure Injection with SystemTap"). docs/stap.md has the mapping.
//!
//! - [`refuse`]: what a runtime cannot express, each at the position of the scenario key that
//!   asks for it (exit 2, nothing generated);
//! - [`script`]: the script itself, from the [`CompiledCampaign`] (the rules, hook table,
//!   selections and due times every backend gets) and the [`Scenario`] (names, targets);
//! - [`chacha`]: the ChaCha20 draw in C that the module runtime embeds for `probability`;
//! - [`run`]: `fij run --backend stap` — the script run through stap's BPF runtime
//!   ([`bpf_runtime`]: the tools, the compile, stapbpf's work-arounds), its output
//!   ([`output`]) turned into the log's records.
//!
//! Every line the script prints for fij starts with [`OUTPUT_PREFIX`] (see [`script`] for the
//! records), so that `fij run --backend stap` can turn them into the log's records.
pub mod bpf_runtime;
pub mod chacha;
pub mod output;
pub mod refuse;
pub mod run;
pub mod script;

use crate::{
    compile::CompiledCampaign,
    scenario::{Diagnostics, Scenario},
};

/// Which SystemTap runtime the script is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// Classic SystemTap: the script becomes a kernel module, run in guru mode (`stap -g`);
    /// embedded C is allowed. What the paper used.
    Module,
    /// stap's BPF back end (`stap --runtime=bpf`, run by `stapbpf`): no kernel module and no
    /// embedded C, only embedded BPF.
    Bpf,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Module => "module",
            Runtime::Bpf => "bpf",
        }
    }
}

/// What starts every line the script prints for fij (its targets may print too).
pub const OUTPUT_PREFIX: &str = "fij-stap";

/// The script for `scenario` compiled with its seed, or every key the runtime cannot express.
pub fn generate(
    scenario: &Scenario,
    compiled: &CompiledCampaign,
    runtime: Runtime,
) -> Result<String, Diagnostics> {
    generate_with_roots(scenario, compiled, runtime, &[])
}

/// The same, with the root processes of instances already known, as `(target, instance, pid)`:
/// `probe begin` sets them (what `fij run --backend stap` runs; stapbpf takes no `-G`, and the
/// BPF runtime does not apply stap's `-G` to a global either).
pub fn generate_with_roots(
    scenario: &Scenario,
    compiled: &CompiledCampaign,
    runtime: Runtime,
    roots: &[(usize, u32, u32)],
) -> Result<String, Diagnostics> {
    let probe_binaries = refuse::check(scenario, runtime)?;
    Ok(script::Script {
        scenario,
        compiled,
        runtime,
        probe_binaries: &probe_binaries,
        roots,
    }
    .render())
}
