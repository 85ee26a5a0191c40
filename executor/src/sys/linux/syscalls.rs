//! Thin safe wrappers over the system calls the executor uses. Each wrapper
//! states the call it makes; errors come back as `io::Error` from `errno`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Converts a -1 return into the current `errno`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Creates a pipe with `O_CLOEXEC`; the read end is also `O_NONBLOCK`.
/// Returns `(read, write)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and have no other owner.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_nonblocking(read.as_raw_fd(), true)?;
    Ok((read, write))
}

/// Grows a pipe's buffer with `F_SETPIPE_SZ`; failures are ignored because
/// the default size only costs speed.
pub fn grow_pipe(fd: RawFd, bytes: i32) {
    // SAFETY: fcntl on an fd we own with an int argument has no memory effects.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, bytes) };
}

/// Creates a connected pair of Unix stream sockets with `SOCK_CLOEXEC`.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both fds are open and unowned.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets or clears `O_NONBLOCK` with `fcntl`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer argument.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an int argument.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
    Ok(())
}

/// Clears every file status flag that `F_SETFL` can change (`O_NONBLOCK`,
/// `O_APPEND`, `O_ASYNC`, `O_DIRECT`, `O_NOATIME`) with `fcntl`.
pub fn clear_status_flags(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFL takes an int argument.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, 0) })?;
    Ok(())
}

/// Clears `FD_CLOEXEC` so the fd survives `exec`.
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD takes an int argument.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    Ok(())
}

/// Reads into `buf` with `read(2)`; `Ok(0)` is end of file.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Appends up to `max` bytes read with `read(2)` to `buf`, straight into its
/// spare capacity, so large bodies need no staging buffer. Room for `max`
/// bytes is reserved only when `buf` is full: growing it whenever it lacks
/// `max` would reallocate, and copy, on every call. `Ok(0)` is end of file,
/// or `max` was 0.
pub fn read_appending(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    if buf.len() == buf.capacity() {
        buf.reserve(max);
    }
    let spare = buf.spare_capacity_mut();
    let want = max.min(spare.len());
    loop {
        // SAFETY: `spare` is valid for writes of `want` bytes, which
        // `read` fills before the length below is raised over them.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), want) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: the kernel initialised the first `n` spare bytes, and
            // `n <= want <= spare.len()`.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Writes from `buf` with `send(2)` and `MSG_NOSIGNAL`, so a closed peer
/// gives `EPIPE` instead of SIGPIPE. Returns the bytes written.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Writes the slices in order with one `sendmsg(2)` and `MSG_NOSIGNAL`, so a
/// frame's header and body leave in one system call. Returns the bytes
/// written, which may end inside any slice.
pub fn send_vectored(fd: RawFd, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid: no address, no control data.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed to be ABI-compatible with iovec on Unix.
    message.msg_iov = slices.as_ptr() as *mut libc::iovec;
    message.msg_iovlen = slices.len() as _;
    loop {
        // SAFETY: `message` points to `slices`, which stay borrowed and
        // valid for reads for the duration of the call.
        let n = unsafe { libc::sendmsg(fd, &message, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Waits with `poll(2)` for the given events; `None` waits forever.
/// Returns the `revents` of each entry.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let millis = match timeout {
        None => -1,
        // Round up so a wait never ends before the deadline it serves.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    loop {
        // SAFETY: `fds` is a valid slice of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Opens a pidfd for `pid` with `pidfd_open(2)` (Linux 5.3).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that has no other owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whom a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillTarget {
    /// One process.
    Process(libc::pid_t),
    /// Every process of a process group.
    Group(libc::pid_t),
}

/// Sends `signal` with `kill(2)`; a target that is already gone (`ESRCH`)
/// is not an error.
pub fn kill(target: KillTarget, signal: libc::c_int) -> io::Result<()> {
    let pid = match target {
        KillTarget::Process(pid) => pid,
        KillTarget::Group(pgid) => -pgid,
    };
    // A pid of 0 or -1 would signal our own group or every process.
    if pid == 0 || pid == -1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to send a signal to {target:?}"),
        ));
    }
    // SAFETY: kill takes plain integers.
    match check(unsafe { libc::kill(pid, signal) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// The result of reaping a child.
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    /// The raw wait status.
    pub status: libc::c_int,
    /// `ru_maxrss` in bytes.
    pub max_rss_bytes: u64,
}

/// Reaps `pid` (or any child for -1) with `wait4(2)`. With `nohang`,
/// `Ok(None)` means no child has exited yet.
pub fn wait4(pid: libc::pid_t, nohang: bool) -> io::Result<Option<Reaped>> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if nohang { libc::WNOHANG } else { 0 } | libc::__WALL;
    loop {
        // SAFETY: `status` and `usage` are valid for writes.
        let ret = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if ret > 0 {
            return Ok(Some(Reaped {
                status,
                max_rss_bytes: (usage.ru_maxrss.max(0) as u64) * 1024,
            }));
        }
        if ret == 0 {
            return Ok(None);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Returns this process's pid.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Returns the parent's pid.
pub fn getppid() -> libc::pid_t {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

/// Sets `PR_SET_PDEATHSIG` to SIGKILL: the kernel kills this process when the
/// thread that created it exits.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    Ok(())
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so
/// orphaned descendants are re-parented to it.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// Ignores SIGPIPE in this process.
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Sets the soft limit of `resource` with `setrlimit(2)`, keeping the hard limit.
pub fn set_soft_limit(resource: libc::__rlimit_resource_t, soft: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for writes.
    check(unsafe { libc::getrlimit(resource, &mut limit) })?;
    limit.rlim_cur = soft.min(limit.rlim_max);
    // SAFETY: `limit` is a valid rlimit.
    check(unsafe { libc::setrlimit(resource, &limit) })?;
    Ok(())
}

/// Returns the pids whose parent is `parent`, by scanning `/proc/*/stat`.
/// (`/proc/PID/task/TID/children` needs `CONFIG_PROC_CHILDREN`, which not
/// every kernel has.)
pub fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parent_in_stat(&stat) == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// Parses the parent pid, the fourth field of `/proc/PID/stat`. The second
/// field is the command name in parentheses and may contain spaces, so
/// parsing starts after its last `)`.
pub fn parent_in_stat(stat: &str) -> Option<libc::pid_t> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_in_stat_handles_spaces_in_name() {
        let stat = "123 (a b) c) S 45 123 123 0 -1";
        assert_eq!(parent_in_stat(stat), Some(45));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn kill_rejects_broadcast_targets() {
        assert!(kill(KillTarget::Process(-1), 0).is_err());
        assert!(kill(KillTarget::Group(0), 0).is_err());
        assert!(kill(KillTarget::Group(1), 0).is_err());
        assert!(kill(KillTarget::Process(0), 0).is_err());
    }
}
