//! Stand-ins for platforms without pidfd, `RLIMIT_DATA` on mmap and child
//! subreapers. They compile, and every execution reports what is missing.

/// Why isolation is unavailable on this platform.
pub const UNSUPPORTED: &str = "isolated-executor supports Linux only: it needs pidfd_open, RLIMIT_DATA and PR_SET_CHILD_SUBREAPER";

/// Entry hook stand-in; there is no shepherd to divert to.
pub mod entry {
    /// Does nothing on this platform.
    pub fn divert_if_shepherd() {}
    /// Always false on this platform.
    pub fn is_undiverted_shepherd() -> bool {
        false
    }
}

/// Whether this platform supports isolation.
pub const SUPPORTED: bool = false;

/// A shepherd stand-in; none can exist on this platform.
#[derive(Debug)]
pub struct Shepherd {
    /// Always 0.
    pub pid: u32,
}

/// A canceller stand-in.
#[derive(Debug, Clone)]
pub struct Canceller;

impl Canceller {
    /// Does nothing and returns false.
    pub fn cancel(&self) -> bool {
        false
    }
}

/// Always fails with the reason isolation is unsupported.
pub fn start_shepherd(_handshake_timeout: std::time::Duration) -> Result<Shepherd, String> {
    Err(UNSUPPORTED.to_string())
}
