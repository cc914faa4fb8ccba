//! Finds the running kernel's layout facts that the programs need (`KernelLayout`): member
//! offsets of `struct task_struct` from the kernel's BTF, and tracepoint record offsets from
//! tracefs. Rust eBPF has no CO-RE, so this is how one object stays right on every kernel.
use std::path::Path;

use anyhow::{Context, Result, bail};
use btf_rs::{Btf, Type};
use fij_common::KernelLayout;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Where `discover` keeps the layout of the running kernel between runs: on tmpfs, named after
/// the boot id (the kernel, and so its layout, cannot change within one boot) and after this
/// fij executable (another build may lay `KernelLayout` out differently).
const CACHE_DIR: &str = "/run/fij";

fn cache_key() -> Option<String> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let exe = std::env::current_exe().ok()?.metadata().ok()?;
    let mtime = exe
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("layout-{}-{}-{mtime}", boot_id.trim(), exe.len()))
}

/// The layout of the running kernel, from this boot's cache or found anew (parsing the
/// kernel's BTF takes a few hundred ms, the cache a few µs).
pub fn discover() -> Result<KernelLayout> {
    // The programs trust these offsets (whether a task is a kernel thread, say): only a cache
    // that no one but root can have written is used.
    let cache = cache_key()
        .filter(|_| private_cache_dir())
        .map(|key| Path::new(CACHE_DIR).join(key));
    if let Some(layout) = cache
        .as_ref()
        .and_then(|c| std::fs::read(c).ok())
        .and_then(|b| from_bytes(&b))
    {
        return Ok(layout);
    }
    let layout = discover_anew()?;
    if let Some(cache) = cache {
        // Written whole then renamed, so a concurrent reader never sees half a layout.
        let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, to_bytes(&layout)).is_ok() {
            let _ = std::fs::rename(&tmp, &cache);
        }
    }
    Ok(layout)
}

/// Makes sure `CACHE_DIR` is a directory of fij's user (root) that only it may enter (0700),
/// creating it so; false (no cache) if it is anything else — a symlink, another owner.
fn private_cache_dir() -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let _ = std::fs::DirBuilder::new().mode(0o700).create(CACHE_DIR);
    let Ok(meta) = std::fs::symlink_metadata(CACHE_DIR) else {
        return false;
    };
    // SAFETY: geteuid has no preconditions.
    if !meta.is_dir() || meta.uid() != unsafe { libc::geteuid() } {
        return false;
    }
    // A directory left 0755 by an earlier fij is tightened.
    meta.mode() & 0o077 == 0
        || std::fs::set_permissions(CACHE_DIR, std::fs::Permissions::from_mode(0o700)).is_ok()
}

fn to_bytes(layout: &KernelLayout) -> Vec<u8> {
    // SAFETY: KernelLayout is repr(C) plain u32s.
    unsafe {
        std::slice::from_raw_parts(
            (layout as *const KernelLayout).cast::<u8>(),
            size_of::<KernelLayout>(),
        )
    }
    .to_vec()
}

fn from_bytes(bytes: &[u8]) -> Option<KernelLayout> {
    // SAFETY: any bit pattern is a valid KernelLayout (plain u32s); the length is checked.
    (bytes.len() == size_of::<KernelLayout>())
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<KernelLayout>()) })
}

/// Reads the layout of the running kernel. Fails only when an offset that safety depends on
/// (`task_struct::flags`, `pid`, `tgid`) cannot be found.
fn discover_anew() -> Result<KernelLayout> {
    // Read whole first: parsing from the file seeks once per type (over 100k seeks).
    let bytes = std::fs::read(VMLINUX_BTF).with_context(|| {
        format!("cannot read the kernel's BTF at {VMLINUX_BTF} (needs CONFIG_DEBUG_INFO_BTF)")
    })?;
    let btf = Btf::from_bytes(&bytes).with_context(|| format!("cannot parse {VMLINUX_BTF}"))?;
    let member = |name: &str| member_offset(&btf, "task_struct", name);
    Ok(KernelLayout {
        task_pid: member("pid")?.context("task_struct has no member `pid`")?,
        task_tgid: member("tgid")?.context("task_struct has no member `tgid`")?,
        task_flags: member("flags")?.context("task_struct has no member `flags`")?,
        task_exit_code: member("exit_code")?.unwrap_or(u32::MAX),
        task_start_boottime: member("start_boottime")?.unwrap_or(u32::MAX),
        exit_group_dead: tracepoint_field_offset("sched", "sched_process_exit", "group_dead")?
            .unwrap_or(u32::MAX),
        exec_filename: tracepoint_field_offset("sched", "sched_process_exec", "filename")?
            .unwrap_or(u32::MAX),
        regs_arg2: syscall_arg_offset(&btf, 2)?,
        regs_arg5: syscall_arg_offset(&btf, 5)?,
        regs_syscall_nr: syscall_nr_offset(&btf)?,
        tcp_oldstate: sock_state("oldstate"),
        tcp_sport: sock_state("sport"),
        tcp_dport: sock_state("dport"),
        tcp_protocol: sock_state("protocol"),
        tcp_saddr_v6: sock_state("saddr_v6"),
        tcp_daddr_v6: sock_state("daddr_v6"),
    })
}

/// Offset in `struct pt_regs` of syscall argument `n` (1-based), or `u32::MAX` where fij does
/// not know the architecture's calling convention (then the `port` filter is refused).
fn syscall_arg_offset(btf: &Btf, n: usize) -> Result<u32> {
    // x86_64 syscall ABI: di, si, dx, r10, r8, r9.
    const X86_64: [&str; 6] = ["di", "si", "dx", "r10", "r8", "r9"];
    if !cfg!(target_arch = "x86_64") {
        return Ok(u32::MAX);
    }
    Ok(member_offset(btf, "pt_regs", X86_64[n - 1])?.unwrap_or(u32::MAX))
}

/// Offset in `struct pt_regs` of the current syscall's number (x86_64: `orig_ax`), or
/// `u32::MAX` (then the BPF LSM error path is refused).
fn syscall_nr_offset(btf: &Btf) -> Result<u32> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(u32::MAX);
    }
    Ok(member_offset(btf, "pt_regs", "orig_ax")?.unwrap_or(u32::MAX))
}

/// A field of `sock/inet_sock_set_state`, or `u32::MAX` (then `crash` refuses to start).
fn sock_state(field: &str) -> u32 {
    tracepoint_field_offset("sock", "inet_sock_set_state", field)
        .ok()
        .flatten()
        .unwrap_or(u32::MAX)
}

/// Byte offset of `member` in `struct name`, looking into anonymous structs and unions.
pub fn member_offset(btf: &Btf, name: &str, member: &str) -> Result<Option<u32>> {
    for ty in btf
        .resolve_types_by_name(name)
        .with_context(|| format!("no type `{name}` in BTF"))?
    {
        if let Type::Struct(s) = ty
            && let Some(bits) = find_member(btf, &s, member, 0)?
        {
            if bits % 8 != 0 {
                bail!("{name}.{member} is a bitfield");
            }
            return Ok(Some(bits / 8));
        }
    }
    Ok(None)
}

fn find_member(btf: &Btf, s: &btf_rs::Struct, wanted: &str, base_bits: u32) -> Result<Option<u32>> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let bits = base_bits + m.bit_offset();
        if name == wanted {
            return Ok(Some(bits));
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = btf.resolve_chained_type(m)?
            && let Some(found) = find_member(btf, &inner, wanted, bits)?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Offset of `field` in the record of tracepoint `category/name`, from its tracefs `format`.
pub fn tracepoint_field_offset(category: &str, name: &str, field: &str) -> Result<Option<u32>> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (is tracefs mounted at {TRACEFS}?)",
            path.display()
        )
    })?;
    Ok(parse_format_offset(&text, field))
}

/// Parses a line like `field:bool group_dead;<TAB>offset:32;<TAB>size:1;<TAB>signed:0;`.
fn parse_format_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
        let ident = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?;
        let ident = ident.split('[').next()?;
        if ident != field {
            return None;
        }
        let offset = line.split("offset:").nth(1)?.split(';').next()?;
        offset.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_FORMAT: &str = "name: sched_process_exit\nformat:\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";

    #[test]
    fn format_offsets_are_found_by_field_name() {
        assert_eq!(parse_format_offset(EXIT_FORMAT, "group_dead"), Some(32));
        assert_eq!(parse_format_offset(EXIT_FORMAT, "pid"), Some(24));
        assert_eq!(parse_format_offset(EXIT_FORMAT, "comm"), Some(8));
        assert_eq!(parse_format_offset(EXIT_FORMAT, "prio"), None);
    }
}
