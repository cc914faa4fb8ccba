//! fij: kernel-level failure injection. The data path, one module per step (docs/architecture.md):
//! scenario file → [`scenario`] (validated model) → [`compile`] (compiled campaign) → backend:
//! [`kernel`] (eBPF maps and programs) → kernel events → [`events`] → [`log`]; [`campaign`] runs
//! it, [`actions`] carries each action's follow-ups, [`time_faults`] the time triggers.
//!
//! [`stap`] writes the same compiled campaign as a SystemTap script. As a library for tests:
//! [`Campaign`] (see [`api`]).
pub mod actions;
pub mod api;
pub mod campaign;
pub mod caps;
pub mod compile;
pub mod doctor;
pub mod draws;
pub mod error_paths;
pub mod events;
pub mod guardian;
pub mod kernel;
pub mod layout;
pub mod log;
pub mod merge;
pub mod net;
pub mod node_faults;
pub mod nodes;
pub mod plan;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod seccomp;
pub mod selectors;
pub mod signals;
pub mod sockets;
pub mod stap;
pub mod status;
pub mod targets;
pub mod time_faults;
pub mod timeline;

pub use api::{Campaign, Outcome, Running};

/// An error in what the user asked for (exit status 2), found after the scenario file was read:
/// a target that cannot be spawned or adopted, a probe whose symbol is missing. Anything else
/// that stops a run is a runtime failure (exit status 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);
