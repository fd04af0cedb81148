//! Small host helpers shared by the agent and the shim: atomic file writes, process
//! identity across pid reuse, timestamps. A leaf: it uses nothing else of the crate.

use std::path::Path;

/// Writes `data` to `path` through a temporary file and a rename, so readers see the old
/// content or the new one, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Start time of a process in clock ticks since boot, or None when it is gone or a zombie.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive and is the same process that had `ticks` as its start time.
pub fn same_process(pid: u32, ticks: u64) -> bool {
    proc_start_ticks(pid) == Some(ticks)
}

pub fn now_rfc3339() -> String {
    format!("{:.9}", jiff::Timestamp::now())
}
