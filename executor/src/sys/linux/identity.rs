//! How a request names its handler: the offset of the handler's trampoline
//! from a fixed anchor function, checked against a fingerprint of the
//! executable.
//!
//! The shepherd runs the same executable image as the caller, loaded at a
//! different base address, so the distance between two functions is the
//! same in both processes. The shepherd only resolves an offset when the
//! request's fingerprint equals its own, which means the offset was taken
//! from a real trampoline of this very file. The trampoline then checks the
//! handler's type name before it decodes anything.

use std::os::unix::fs::MetadataExt;

use crate::child::Trampoline;

/// Anchor function: the fixed point that offsets are measured from.
#[inline(never)]
fn anchor() {}

/// Returns the offset of `trampoline` from the anchor.
pub fn offset_of(trampoline: Trampoline) -> i64 {
    let anchor_address = anchor as fn() as usize;
    (trampoline as usize as i64).wrapping_sub(anchor_address as i64)
}

/// Turns an offset back into a trampoline.
///
/// # Safety
///
/// `offset` must come from [`offset_of`] in a process running the same
/// executable file; the caller checks this with [`fingerprint`].
pub unsafe fn resolve(offset: i64) -> Trampoline {
    let anchor_address = anchor as fn() as usize;
    let address = (anchor_address as i64).wrapping_add(offset) as usize;
    // SAFETY: by the contract above, `address` is the entry of a function of
    // type `Trampoline` in this executable, mapped at this process's base.
    unsafe { std::mem::transmute::<usize, Trampoline>(address) }
}

/// Returns a fingerprint of the running executable: device, inode, size and
/// modification time of `/proc/self/exe`. The link resolves to the file this
/// process was started from even after it was replaced or deleted.
pub fn fingerprint() -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata("/proc/self/exe")?;
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(&meta.dev().to_le_bytes());
    out.extend_from_slice(&meta.ino().to_le_bytes());
    out.extend_from_slice(&meta.size().to_le_bytes());
    out.extend_from_slice(&meta.mtime().to_le_bytes());
    out.extend_from_slice(&meta.mtime_nsec().to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(_: &crate::child::ChildCall<'_>) -> Vec<u8> {
        vec![42]
    }

    #[test]
    fn offset_round_trips_in_process() {
        let offset = offset_of(sample);
        // SAFETY: the offset was taken in this process from a real trampoline.
        let resolved = unsafe { resolve(offset) };
        assert_eq!(resolved as usize, sample as Trampoline as usize);
    }

    #[test]
    fn fingerprint_is_stable() {
        assert_eq!(fingerprint().unwrap(), fingerprint().unwrap());
    }
}
