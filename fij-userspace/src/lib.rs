//! fij: kernel-level failure injection. The data path, one module per step:
//! scenario file → [`scenario`] (validated model) → [`campaign::compile_rules`] (rules in maps,
//! via [`kernel`]) → decision in the kernel programs (`fij-ebpf`) → events → [`log`].
pub mod campaign;
pub mod caps;
pub mod doctor;
pub mod guardian;
pub mod hooks;
pub mod kernel;
pub mod layout;
pub mod log;
pub mod net;
pub mod plan;
pub mod replay;
pub mod scenario;
pub mod schedule;
pub mod selectors;
pub mod sockets;
pub mod targets;
