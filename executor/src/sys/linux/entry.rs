//! The entry hook: diverts a re-executed binary into the shepherd before
//! `main` or libtest runs.

use super::connection::{ENV_CALLER, ENV_LINEAGE, ENV_SOCKET};

/// Becomes a shepherd and never returns if this process was started as one;
/// returns at once otherwise.
pub fn divert_if_shepherd() {
    let Some(socket) = std::env::var_os(ENV_SOCKET) else {
        return;
    };
    let socket = socket.to_str().and_then(|s| s.parse::<i32>().ok());
    let caller = std::env::var(ENV_CALLER)
        .ok()
        .and_then(|s| s.parse::<libc::pid_t>().ok());
    // SAFETY: the hook runs before `main` and before libtest, when this
    // process has a single thread, so nothing reads the environment
    // concurrently. Removing the variables keeps the handler's own child
    // processes from taking themselves for shepherds.
    // The lineage mark is inherited by every child and descendant, so the
    // caller can still find them if this shepherd dies.
    unsafe {
        std::env::remove_var(ENV_SOCKET);
        std::env::remove_var(ENV_CALLER);
        std::env::set_var(ENV_LINEAGE, std::process::id().to_string());
    }
    match (socket, caller) {
        (Some(socket), Some(caller)) => super::shepherd::run(socket, caller),
        _ => {
            eprintln!("isolated-executor: invalid {ENV_SOCKET} or {ENV_CALLER}; exiting");
            // SAFETY: leaving without running main is the point of the hook.
            unsafe { libc::_exit(2) }
        }
    }
}

/// Whether this process was started as a shepherd but the hook did not
/// divert it, which means `enable_test_support!()` or `init()` is missing.
pub fn is_undiverted_shepherd() -> bool {
    std::env::var_os(ENV_SOCKET).is_some()
}
