//! Linux implementation: the shepherd, the handler child and the caller's
//! connection. All `unsafe` code of the crate lives under this module.

pub mod connection;
pub mod entry;
pub mod fork_child;
pub mod identity;
pub mod shepherd;
pub mod syscalls;

pub use connection::{Canceller, Lost, Shepherd};

/// Whether this platform supports isolation.
pub const SUPPORTED: bool = true;

/// Starts a shepherd and waits for its handshake.
pub fn start_shepherd(handshake_timeout: std::time::Duration) -> Result<Shepherd, String> {
    Shepherd::start_blocking(handshake_timeout)
}

pub use connection::HOOK_MISSING;

/// The reason isolation is unavailable; empty on Linux, where it is available.
pub const UNSUPPORTED: &str = "";

/// Returns the fingerprint of this executable, read on the first call.
pub fn fingerprint() -> &'static [u8] {
    static FINGERPRINT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FINGERPRINT.get_or_init(|| identity::fingerprint().unwrap_or_default())
}

/// Returns the offset that names `trampoline` in a request.
pub fn trampoline_offset(trampoline: crate::child::Trampoline) -> i64 {
    identity::offset_of(trampoline)
}

/// Returns `start + duration`, or a point about 30 years later when the
/// sum does not fit in an `Instant`, which is "never" for a timeout.
pub fn deadline_after(
    start: std::time::Instant,
    duration: std::time::Duration,
) -> std::time::Instant {
    start
        .checked_add(duration)
        .or_else(|| start.checked_add(std::time::Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(start)
}
