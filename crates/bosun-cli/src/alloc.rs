//! mimalloc's options, set at the start of `main`.
//!
//! mimalloc's defaults favour throughput over footprint: memory freed by a thread is handed
//! back to the OS only a second later, and only when some thread next calls into the
//! allocator, so the threads of an idle `bosun up` kept tens of megabytes they had used
//! during start-up (BENCHMARKS.md, "Footprint"). Freed pages are handed back at once here.
//! A `MIMALLOC_*` environment variable still overrides each setting (mimalloc reads them
//! when the process starts), which is how the settings were compared.
//!
//! Transparent huge pages are switched off for bosun's own process: mimalloc asks for them
//! on its arenas (`madvise`), and a 2 MiB page is resident and zeroed as a whole once one
//! byte of it is touched. An idle `bosun up` held 47 MB of huge pages for about 25 MB in
//! use, and zeroing them was the largest single cost of scheduling pods. Programs bosun
//! starts get the system's setting back before exec (`bosun_agent::signals`).

// The options are set through mimalloc's C API; the calls take plain integers.
#![allow(unsafe_code)]

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// `mi_option_arena_eager_commit` in mimalloc.h (v3).
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay` in mimalloc.h (v3).
const PURGE_DELAY: mi_option_t = 15;

/// (option, the environment variable that overrides it, value).
const SETTINGS: [(mi_option_t, &str, std::os::raw::c_long); 2] = [
    // Commit arena memory as it is used rather than all at once, so that a purge
    // decommits it (and the resident size falls) instead of leaving it committed.
    (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
    // Return freed pages to the OS immediately (default: 1 s later, on the next call).
    (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0),
];

/// Set to keep transparent huge pages for bosun's own process (as mimalloc's own option).
const ALLOW_THP_ENV: &str = "MIMALLOC_ALLOW_THP";

/// Applies `SETTINGS` and switches transparent huge pages off, except where the environment
/// sets an option.
pub fn configure() {
    if std::env::var_os(ALLOW_THP_ENV).is_none() {
        // Pages already faulted in stay; every later fault of any mapping (mimalloc's arenas
        // were reserved before `main`) gets 4 KiB pages. Failure only means huge pages.
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
    for (option, env, value) in SETTINGS {
        if std::env::var_os(env).is_none() {
            // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; any
            // option id below `_mi_option_last` and any value are accepted.
            unsafe { mi_option_set(option, value) };
        }
    }
}

/// The value mimalloc uses for `option`.
#[cfg(test)]
fn get(option: mi_option_t) -> std::os::raw::c_long {
    // SAFETY: reads an entry of mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_get(option) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_ids_match_the_linked_mimalloc() {
        // The ids above are positions in mimalloc v3's option enum; a libmimalloc-sys
        // that links another version (`_mi_option_last` moves) needs them checked again.
        assert_eq!(libmimalloc_sys::_mi_option_last, 47);
    }

    #[test]
    fn huge_pages_are_off_unless_the_environment_allows_them() {
        configure();
        let off = nix::sys::prctl::get_thp_disable().unwrap();
        assert_eq!(off, std::env::var_os(ALLOW_THP_ENV).is_none());
        if off {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            assert!(status.contains("THP_enabled:\t0"), "{status}");
        }
    }

    #[test]
    fn settings_take_effect_unless_the_environment_sets_them() {
        configure();
        for (option, env, value) in SETTINGS {
            match std::env::var(env) {
                Ok(v) => assert_eq!(get(option).to_string(), v.trim()),
                Err(_) => assert_eq!(get(option), value),
            }
        }
    }
}
