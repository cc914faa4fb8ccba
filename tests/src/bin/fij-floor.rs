//! `fij-floor [OBJECT]`: attaches the floor program `fij_floor` (`fij-ebpf/src/floor.rs`, an
//! empty program on the raw `sys_enter` tracepoint, the hook of `fij_sys_enter`) and keeps it
//! attached until its standard input closes or it is killed (SIGTERM). `cargo xtask bench`
//! measures the syscall cost it adds: the least any program on that hook can cost.
//!
//! OBJECT is fij's eBPF object; by default the newest `build/fij-*/out/fij-ebpf.o` in the build
//! directory this binary is in (`target/<profile>/`), where `fij-userspace/build.rs` puts it.
//! Prints `fij-floor: attached (prog id N)` on stdout once the program is attached.
//!
//! No dependencies: the object is read with a minimal ELF reader (only `fij_floor`'s
//! instructions are needed; being empty, it has no relocations, which is checked) and loaded
//! with the `bpf` system call directly (BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN).
use std::{
    ffi::{CString, c_long},
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

const PROGRAM: &str = "fij_floor";
const TRACEPOINT: &str = "sys_enter";

#[cfg(target_arch = "x86_64")]
const SYS_BPF: c_long = 321;
#[cfg(target_arch = "aarch64")]
const SYS_BPF: c_long = 280;

const BPF_PROG_LOAD: c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: c_long = 15;
const BPF_RAW_TRACEPOINT_OPEN: c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

unsafe extern "C" {
    fn syscall(number: c_long, ...) -> c_long;
}

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fij-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let object = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => find_object()?,
    };
    let data =
        std::fs::read(&object).map_err(|e| format!("cannot read {}: {e}", object.display()))?;
    let insns = program_bytes(&data, PROGRAM).map_err(|e| format!("{}: {e}", object.display()))?;
    let prog = load(&insns)?;
    let _link = attach(prog, TRACEPOINT)?;
    println!("fij-floor: attached (prog id {})", prog_id(prog)?);
    // Hold the fds (and with them the attachment) until stdin closes; SIGTERM's default action
    // ends the process, which detaches as well.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// The newest `<dir of this binary>/build/fij-*/out/fij-ebpf.o`.
fn find_object() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let build = exe.parent().unwrap_or(Path::new(".")).join("build");
    let entries = std::fs::read_dir(&build).map_err(|e| {
        format!(
            "cannot list {}: {e}; pass the object's path",
            build.display()
        )
    })?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("fij-"))
        .map(|e| e.path().join("out/fij-ebpf.o"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| format!("no fij-*/out/fij-ebpf.o under {}", build.display()))
}

fn u16_at(d: &[u8], off: usize) -> Result<u16> {
    d.get(off..off + 2)
        .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| "truncated ELF file".into())
}

fn u32_at(d: &[u8], off: usize) -> Result<u32> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| "truncated ELF file".into())
}

fn u64_at(d: &[u8], off: usize) -> Result<usize> {
    d.get(off..off + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
        .ok_or_else(|| "truncated ELF file".into())
}

fn c_str(d: &[u8], off: usize) -> &[u8] {
    let tail = d.get(off..).unwrap_or_default();
    &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())]
}

/// One ELF64 section header: (type, offset, size, link, entry size).
struct Section {
    kind: u32,
    offset: usize,
    size: usize,
    link: usize,
    info: usize,
    entsize: usize,
}

const SHT_SYMTAB: u32 = 2;
const SHT_REL: u32 = 9;

/// The instructions of function `name` in a little-endian ELF64 eBPF object, refusing a function
/// that has relocations (which this loader does not apply).
fn program_bytes(d: &[u8], name: &str) -> Result<Vec<u8>> {
    if d.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 file".into());
    }
    let shoff = u64_at(d, 0x28)?;
    let shentsize = u16_at(d, 0x3a)? as usize;
    let shnum = u16_at(d, 0x3c)? as usize;
    let sections = (0..shnum)
        .map(|i| {
            let h = shoff + i * shentsize;
            Ok(Section {
                kind: u32_at(d, h + 4)?,
                offset: u64_at(d, h + 0x18)?,
                size: u64_at(d, h + 0x20)?,
                link: u32_at(d, h + 0x28)? as usize,
                info: u32_at(d, h + 0x2c)? as usize,
                entsize: u64_at(d, h + 0x38)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let symtab = sections
        .iter()
        .find(|s| s.kind == SHT_SYMTAB)
        .ok_or("no symbol table")?;
    let strtab = sections.get(symtab.link).ok_or("bad symbol table link")?;
    let entsize = symtab.entsize.max(24);
    let (shndx, value, size) = (0..symtab.size / entsize)
        .map(|i| symtab.offset + i * entsize)
        .find_map(|sym| {
            let name_off = u32_at(d, sym).ok()? as usize;
            (c_str(d, strtab.offset + name_off) == name.as_bytes()).then(|| {
                Some((
                    u16_at(d, sym + 6).ok()? as usize,
                    u64_at(d, sym + 8).ok()?,
                    u64_at(d, sym + 16).ok()?,
                ))
            })?
        })
        .ok_or_else(|| {
            format!("no symbol {name}: is the object older than fij-ebpf/src/floor.rs?")
        })?;
    let section = sections.get(shndx).ok_or("bad section index")?;
    if size == 0 || size % 8 != 0 || value + size > section.size {
        return Err(format!("symbol {name} has a bad size ({size})"));
    }
    for rel in sections
        .iter()
        .filter(|s| s.kind == SHT_REL && s.info == shndx)
    {
        for i in 0..rel.size / rel.entsize.max(16) {
            let r_offset = u64_at(d, rel.offset + i * rel.entsize.max(16))?;
            if (value..value + size).contains(&r_offset) {
                return Err(format!(
                    "{name} has relocations, which fij-floor does not apply"
                ));
            }
        }
    }
    let start = section.offset + value;
    d.get(start..start + size)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "truncated ELF file".into())
}

fn bpf(cmd: c_long, attr: &mut [u64; 16]) -> Result<i32> {
    // SAFETY: attr is a zero-padded union bpf_attr of size_of_val(attr) bytes; every pointer in
    // it points to memory that outlives the call.
    let r = unsafe { syscall(SYS_BPF, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(r as i32)
}

/// BPF_PROG_LOAD of a raw tracepoint program; returns its fd (kept open for the process's life).
fn load(insns: &[u8]) -> Result<i32> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_RAW_TRACEPOINT) | ((insns.len() as u64 / 8) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32); // log_level 1, log_size
    attr[4] = log.as_mut_ptr() as u64;
    // attr[5]: kern_version, prog_flags = 0; attr[6..8]: prog_name.
    let mut prog_name = [0u8; 16];
    prog_name[..PROGRAM.len()].copy_from_slice(PROGRAM.as_bytes());
    attr[6] = u64::from_le_bytes(prog_name[..8].try_into().unwrap());
    attr[7] = u64::from_le_bytes(prog_name[8..].try_into().unwrap());
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let log = String::from_utf8_lossy(c_str(&log, 0));
        format!("loading {PROGRAM}: {e}\n{log}")
    })
}

/// BPF_RAW_TRACEPOINT_OPEN; the returned fd holds the attachment.
fn attach(prog: i32, tracepoint: &str) -> Result<i32> {
    let name = CString::new(tracepoint).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    attr[1] = prog as u32 as u64;
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
        .map_err(|e| format!("attaching {PROGRAM} to raw tracepoint {tracepoint}: {e}"))
}

/// The program's id, as `bpftool prog` shows it (bpf_prog_info starts with type, id).
fn prog_id(prog: i32) -> Result<u32> {
    let mut info = [0u32; 64];
    let mut attr = [0u64; 16];
    attr[0] = prog as u32 as u64 | ((size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|e| format!("reading prog info: {e}"))?;
    Ok(info[1])
}
