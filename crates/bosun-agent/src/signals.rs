//! The signal state a container's process starts with.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the command's process start as a freshly booted program would: no signal blocked,
/// every signal at its default action, and transparent huge pages as the system sets them.
///
/// Both survive exec: the shim blocks the signals it forwards (a thread takes them with
/// sigwait), std's `Command` passes the parent's mask on unchanged, and whatever the shim
/// inherited as ignored (e.g. SIGHUP under nohup, SIGINT/SIGQUIT for a shell's background
/// job) stays ignored. A workload with SIGTERM blocked never sees it and is SIGKILLed at
/// the end of its grace period.
pub fn reset_in_child(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child between fork and exec, where only
    // async-signal-safe calls are allowed: it calls sigaction(2) (through signal(3) with
    // SIG_DFL, which installs no handler), prctl(2) and sigprocmask(2) on a set on its stack,
    // all async-signal-safe; it allocates nothing and touches no lock or shared memory.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            for sig in 1..=libc::SIGRTMAX() {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                // Fails only for the signals libc reserves for itself (32, 33), which
                // exec resets anyway since libc catches rather than ignores them.
                libc::signal(sig, libc::SIG_DFL);
            }
            // bosun runs with transparent huge pages off (`bosun_cli::alloc`); the flag is
            // inherited and survives exec, so the program gets the system's setting back.
            // prctl(2) is a plain system call. Failure leaves it off: slower, not wrong.
            libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
