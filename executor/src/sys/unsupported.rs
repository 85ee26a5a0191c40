//! Stand-ins for platforms without pidfd, `RLIMIT_DATA` on mmap and child
//! subreapers. They compile, and every execution reports what is missing:
//! the executor checks [`SUPPORTED`] before it touches a shepherd.

use std::time::Duration;

use crate::protocol::{Report, Request};

/// The reason isolation is unavailable on this platform.
pub const UNSUPPORTED: &str = "isolated-executor supports Linux only: it needs pidfd_open, RLIMIT_DATA on mmap and PR_SET_CHILD_SUBREAPER";
/// The missing-hook message; never produced on this platform.
pub const HOOK_MISSING: &str = "";
/// Whether this platform supports isolation.
pub const SUPPORTED: bool = false;

/// Entry hook stand-in; there is no shepherd to divert to.
pub mod entry {
    /// Does nothing on this platform.
    pub fn divert_if_shepherd() {}
    /// Always false on this platform.
    pub fn is_undiverted_shepherd() -> bool {
        false
    }
}

/// Returns an empty fingerprint.
pub fn fingerprint() -> &'static [u8] {
    &[]
}

/// Returns 0; requests are never sent on this platform.
pub fn trampoline_offset(_trampoline: crate::child::Trampoline) -> i64 {
    0
}

/// The reason a shepherd connection failed.
#[derive(Debug)]
pub struct Lost(pub String);

/// A canceller stand-in.
#[derive(Debug, Clone)]
pub struct Canceller;

impl Canceller {
    /// Does nothing and returns false.
    pub fn cancel(&self) -> bool {
        false
    }
}

/// A shepherd stand-in; none can exist on this platform.
#[derive(Debug)]
pub struct Shepherd {
    /// Always 0.
    pub pid: u32,
}

fn lost() -> Lost {
    Lost(UNSUPPORTED.to_string())
}

impl Shepherd {
    /// Always fails with the reason isolation is unsupported.
    pub fn start_blocking(_handshake_timeout: Duration) -> Result<Shepherd, String> {
        Err(UNSUPPORTED.to_string())
    }
    /// Always fails with the reason isolation is unsupported.
    #[cfg(feature = "tokio")]
    pub async fn start_async(_handshake_timeout: Duration) -> Result<Shepherd, String> {
        Err(UNSUPPORTED.to_string())
    }
    /// Returns id 0.
    pub fn prepare(&mut self) -> (u64, Canceller) {
        (0, Canceller)
    }
    /// Always fails.
    pub fn send_blocking(&mut self, _request: &Request<'_>) -> Result<(), Lost> {
        Err(lost())
    }
    /// Always fails.
    pub fn receive_blocking(
        &mut self,
        _request: &Request<'_>,
        _limit: u64,
        _margin: Duration,
    ) -> Result<Report, Lost> {
        Err(lost())
    }
    /// Always fails.
    #[cfg(feature = "tokio")]
    pub async fn send_async(&mut self, _request: &Request<'_>) -> Result<(), Lost> {
        Err(lost())
    }
    /// Always fails.
    #[cfg(feature = "tokio")]
    pub async fn receive_async(
        &mut self,
        _request: &Request<'_>,
        _limit: u64,
        _margin: Duration,
    ) -> Result<Report, Lost> {
        Err(lost())
    }
    /// Always `None`.
    pub fn last_child_pid(&self) -> Option<u32> {
        None
    }
    /// Always false.
    pub fn abandon(&mut self, _id: u64) -> bool {
        false
    }
    /// Does nothing.
    pub fn destroy(&mut self) -> String {
        String::new()
    }
}

/// Always fails with the reason isolation is unsupported.
pub fn start_shepherd(handshake_timeout: Duration) -> Result<Shepherd, String> {
    Shepherd::start_blocking(handshake_timeout)
}
