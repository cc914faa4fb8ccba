//! Builds fij's kernel programs (`fij-ebpf`) from source in the same build, so the `fij` binary
//! always embeds an object that matches `fij-common` — no prebuilt or stale object is possible.
//!
//! The eBPF crate needs `-Z build-std=core` for `bpfel-unknown-none`, which Debian's rustc-web
//! with its matching rust-web-src provides (with RUSTC_BOOTSTRAP), and bpf-linker as the linker.
//! `cargo xtask setup` installs both.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const SETUP_HINT: &str = "run `cargo xtask setup` (as root) to install the eBPF toolchain";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    for dir in [
        "fij-ebpf/src",
        "fij-ebpf/Cargo.toml",
        "fij-common/src",
        "fij-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=FIJ_EBPF_RUSTC");
    println!("cargo:rerun-if-env-changed=FIJ_EBPF_CARGO");

    // Overridable for other layouts; defaults are where Debian's rustc-web/cargo-web put them.
    let rustc = env::var_os("FIJ_EBPF_RUSTC")
        .map_or_else(|| PathBuf::from("/usr/bin/rustc"), PathBuf::from);
    let cargo = env::var_os("FIJ_EBPF_CARGO")
        .map_or_else(|| PathBuf::from("/usr/bin/cargo"), PathBuf::from);
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin"))
        .unwrap_or_default();
    let path = env::join_paths(
        std::iter::once(cargo_bin.clone())
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();

    let missing: Vec<String> = [
        (!rustc.exists()).then(|| format!("{} (Debian package rustc-web)", rustc.display())),
        (!cargo.exists()).then(|| format!("{} (Debian package cargo-web)", cargo.display())),
        (!core_sources_present(&rustc))
            .then(|| "core library sources (Debian package rust-web-src)".into()),
        which("bpf-linker", &path)
            .is_none()
            .then(|| "bpf-linker (cargo install bpf-linker)".into()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        panic!(
            "cannot build fij's eBPF programs, missing: {}; {SETUP_HINT}",
            missing.join(", ")
        );
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new(&cargo);
    // Start from a clean slate: the outer cargo's (or clippy's) settings are for the host build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key);
        }
    }
    // --cpu=v3 for bpf-linker, which does the code generation: the counters' atomic fetch-and-add
    // needs BPF ISA v3 (kernel ≥ 5.12); with the default CPU it is silently emitted without fetch.
    let rustflags = ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f");
    cmd.current_dir(&workspace)
        .env("PATH", &path)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .args([
            "build",
            "--package",
            "fij-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {SETUP_HINT}", cargo.display()));
    if !status.success() {
        panic!("building fij-ebpf failed ({status}); if the toolchain is incomplete, {SETUP_HINT}");
    }
    let object = target_dir.join("bpfel-unknown-none/release/fij");
    std::fs::copy(&object, out_dir.join("fij-ebpf.o"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", object.display()));
}

fn core_sources_present(rustc: &Path) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib/src/rust/library/core/src/lib.rs")
        .exists()
}

fn which(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
