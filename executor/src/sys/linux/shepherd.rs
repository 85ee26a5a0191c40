//! The shepherd: a re-exec of the caller's executable that forks one child
//! per request, enforces the deadline, drains the child's output and
//! reports what happened.
//!
//! It never starts a thread, so `fork()` in it is sound even though the
//! handler child allocates. It is a child subreaper, so descendants that
//! call `setsid()` or double-fork are re-parented to it and killed after
//! each execution, and it dies with its caller through `PR_SET_PDEATHSIG`.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::fork_child::{self, ChildSetup};
use super::identity;
use super::syscalls::{self, KillTarget};
use crate::protocol::{
    self, Frame, FrameDecoder, Hello, Kind, Report, Request, Started, decode_cancel,
};

/// Bytes read from a pipe per `read` call.
const CHUNK: usize = 256 << 10;
/// Size requested for the result pipe, so large results move in big steps.
const RESULT_PIPE_SIZE: i32 = 1 << 20;

/// Runs the shepherd on `socket` until the caller goes away. Never returns.
pub fn run(socket: RawFd, caller_pid: libc::pid_t) -> ! {
    if syscalls::die_with_parent().is_err() || syscalls::getppid() != caller_pid {
        exit(0);
    }
    let _ = syscalls::become_subreaper();
    syscalls::ignore_sigpipe();
    // Every child resets these and only these, so the shepherd must change
    // no disposition from here on.
    let non_default_signals = fork_child::non_default_signals();
    let data_baseline = fork_child::DataBaseline::measure();
    fork_child::prepare_shepherd();
    // The socket is blocking on this side; reads during an execution use poll.
    let _ = syscalls::set_nonblocking(socket, false);

    let fingerprint = identity::fingerprint().unwrap_or_default();
    let hello = Hello {
        pid: syscalls::getpid() as u32,
        fingerprint: fingerprint.clone(),
    };
    if send_frame(socket, Kind::Hello, &[&hello.encode()]).is_err() {
        exit(0);
    }

    let mut shepherd = Shepherd {
        socket,
        decoder: FrameDecoder::new(protocol::MAX_REQUEST_LEN),
        inbox: Vec::new(),
        fingerprint,
        buffer: vec![0; CHUNK],
        current: 0,
        non_default_signals,
        data_baseline,
        child_fds: None,
    };
    loop {
        let Some((kind, body)) = shepherd.next_frame_blocking() else {
            exit(0);
        };
        match kind {
            Kind::Request => {
                let report = match Request::decode(&body) {
                    Ok(request) => shepherd.execute(&request),
                    Err(e) => Report {
                        spawn_failure: Some(format!("invalid request: {e}")),
                        ..Report::default()
                    },
                };
                // Drop the request's body before the report goes out.
                drop(body);
                let tail = report.encode_tail();
                if send_frame(socket, Kind::Report, &[&report.records, &tail]).is_err() {
                    exit(0);
                }
                // Done while the caller reads the report.
                shepherd.reset_child_fds();
            }
            // A cancel for an execution that already ended.
            Kind::Cancel => {}
            _ => exit(0),
        }
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: the shepherd owns no state that needs flushing.
    unsafe { libc::_exit(code) }
}

/// Sends one frame whose body is the concatenation of `parts`; header and
/// body leave in one system call unless the socket buffer fills up.
fn send_frame(socket: RawFd, kind: Kind, parts: &[&[u8]]) -> std::io::Result<()> {
    let len = parts.iter().map(|part| part.len() as u64).sum();
    let header = protocol::encode_header(kind, len);
    let mut slices = Vec::with_capacity(parts.len() + 1);
    slices.push(IoSlice::new(&header));
    slices.extend(parts.iter().map(|part| IoSlice::new(part)));
    write_all(socket, &mut slices)
}

/// Writes every slice, in order, to the blocking socket.
fn write_all(fd: RawFd, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = syscalls::send_vectored(fd, slices)?;
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

struct Shepherd {
    socket: RawFd,
    decoder: FrameDecoder,
    /// Bytes read from the socket and not yet decoded.
    inbox: Vec<u8>,
    fingerprint: Vec<u8>,
    buffer: Vec<u8>,
    /// The pid of the running child, which is also its group id; 0 when idle.
    current: libc::pid_t,
    /// Signals whose disposition each child resets to the default.
    non_default_signals: u64,
    /// Baseline from which each child computes its data size.
    data_baseline: Option<fork_child::DataBaseline>,
    /// The child's stdin and capture pipes, opened at the first execution.
    child_fds: Option<ChildFds>,
}

/// `/dev/null` and the three capture pipes, kept for the shepherd's life:
/// creating three pipes and opening `/dev/null` cost about 35 us per
/// execution. The shepherd keeps the write ends open, so the pipes never
/// reach end of file. Output is complete once every process of an
/// execution is reaped and a read finds the pipe empty.
struct ChildFds {
    devnull: OwnedFd,
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
    result: (OwnedFd, OwnedFd),
}

impl ChildFds {
    /// Clears the status flags of the fds a child gets. Its fds 0-3 share
    /// open file descriptions with these, so flags that a handler set on its
    /// stdout (`O_NONBLOCK`, as some async runtimes do, or `O_ASYNC`) would
    /// otherwise carry over to the next child. The pipes' write ends and
    /// `/dev/null` have no status flags when opened.
    ///
    /// NOTE: a pipe's size belongs to the pipe, so a handler that resizes
    /// one with `F_SETPIPE_SZ` resizes it for later children too. That
    /// changes only how fast output moves.
    fn clear_status_flags(&self) {
        for fd in [
            &self.devnull,
            &self.stdout.1,
            &self.stderr.1,
            &self.result.1,
        ] {
            let _ = syscalls::clear_status_flags(fd.as_raw_fd());
        }
    }

    fn open() -> Result<ChildFds, String> {
        let pipe = || syscalls::pipe().map_err(|e| format!("pipe failed: {e}"));
        let result = pipe()?;
        syscalls::grow_pipe(result.1.as_raw_fd(), RESULT_PIPE_SIZE);
        let devnull = std::fs::File::open("/dev/null")
            .map_err(|e| format!("opening /dev/null failed: {e}"))?;
        Ok(ChildFds {
            devnull: devnull.into(),
            stdout: pipe()?,
            stderr: pipe()?,
            result,
        })
    }
}

/// A stream the shepherd drains, keeping its last `keep` bytes.
struct Tail {
    fd: Option<RawFd>,
    bytes: Vec<u8>,
    keep: usize,
    total: u64,
}

impl Tail {
    fn new(fd: RawFd, keep: usize) -> Self {
        Self {
            fd: Some(fd),
            bytes: Vec::new(),
            keep,
            total: 0,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > self.keep.saturating_mul(2).max(CHUNK) {
            let cut = self.bytes.len() - self.keep;
            self.bytes.drain(..cut);
        }
    }

    fn finish(mut self) -> (Vec<u8>, u64) {
        if self.bytes.len() > self.keep {
            let cut = self.bytes.len() - self.keep;
            self.bytes.drain(..cut);
        }
        (self.bytes, self.total)
    }
}

/// The result pipe, kept up to a limit and counted beyond it.
struct Records {
    fd: Option<RawFd>,
    bytes: Vec<u8>,
    limit: usize,
    total: u64,
}

impl Records {
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..room.min(chunk.len())]);
    }
}

enum Drained {
    /// The fd has no more data for now.
    Empty,
    /// End of file or a read error; the fd is not read again.
    Closed,
}

fn drain(fd: RawFd, buffer: &mut [u8], mut sink: impl FnMut(&[u8])) -> Drained {
    loop {
        match syscalls::read(fd, buffer) {
            Ok(0) => return Drained::Closed,
            Ok(n) => sink(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drained::Empty,
            Err(_) => return Drained::Closed,
        }
    }
}

/// State of the wait loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The child runs and the deadline has not passed.
    Running,
    /// SIGTERM was sent; SIGKILL follows at the instant held.
    Terminating(Instant),
    /// SIGKILL was sent.
    Killed,
}

impl Shepherd {
    /// Reads the next frame, blocking. `None` when the caller is gone or sent
    /// something undecodable.
    fn next_frame_blocking(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decode_inbox()? {
                return Some(frame);
            }
            // The inbox is empty now. The rest of a large body goes straight
            // into the body, never past its end.
            if let Some((body, step)) = self.decoder.body_to_fill() {
                if syscalls::read_appending(self.socket, body, step).ok()? == 0 {
                    return None;
                }
                if let Some(frame) = self.decoder.take_filled() {
                    return Some(frame);
                }
                continue;
            }
            let n = syscalls::read(self.socket, &mut self.buffer).ok()?;
            if n == 0 {
                return None;
            }
            self.inbox.extend_from_slice(&self.buffer[..n]);
        }
    }

    /// Decodes one frame from the bytes already read. `Some(None)` means more
    /// bytes are needed; `None` means the stream is corrupt.
    fn decode_inbox(&mut self) -> Option<Option<Frame>> {
        if self.inbox.is_empty() {
            return Some(None);
        }
        let (frame, used) = self.decoder.feed(&self.inbox).ok()?;
        self.inbox.drain(..used);
        Some(frame)
    }

    /// Clears what the last handler may have changed on the fds the next
    /// child gets.
    fn reset_child_fds(&self) {
        if let Some(fds) = &self.child_fds {
            fds.clear_status_flags();
        }
    }

    fn execute(&mut self, request: &Request<'_>) -> Report {
        let mut report = Report {
            id: request.id,
            ..Report::default()
        };
        if request.fingerprint != self.fingerprint.as_slice() {
            report.spawn_failure = Some(
                "the caller's executable differs from the shepherd's; the request was not run"
                    .into(),
            );
            return report;
        }
        match self.start_and_wait(request, &mut report) {
            Ok(()) => report,
            Err(e) => {
                report.spawn_failure = Some(e);
                report
            }
        }
    }

    fn start_and_wait(&mut self, request: &Request<'_>, report: &mut Report) -> Result<(), String> {
        if self.child_fds.is_none() {
            self.child_fds = Some(ChildFds::open()?);
        }
        let Some(fds) = &self.child_fds else {
            unreachable!("the child fds were opened above");
        };
        let stdout_read = fds.stdout.0.as_raw_fd();
        let stderr_read = fds.stderr.0.as_raw_fd();
        let result_read = fds.result.0.as_raw_fd();

        // SAFETY: the request's fingerprint equals this executable's, checked
        // in `execute`, so the offset names a trampoline of this file.
        let trampoline = unsafe { identity::resolve(request.trampoline_offset) };
        let setup = ChildSetup {
            shepherd_pid: syscalls::getpid(),
            devnull: fds.devnull.as_raw_fd(),
            stdout: fds.stdout.1.as_raw_fd(),
            stderr: fds.stderr.1.as_raw_fd(),
            result: fds.result.1.as_raw_fd(),
            max_heap_size: request.max_heap_size,
            non_default_signals: self.non_default_signals,
            data_baseline: self.data_baseline,
            handler_type: request.handler_type,
            payload: request.payload,
        };

        let started_at = Instant::now();
        // SAFETY: the shepherd is single-threaded, so the child may run any
        // code after fork; `fork_child::run` never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork failed: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            fork_child::run(&setup, trampoline);
        }
        // Set the group from this side too, so a kill sent before the child
        // ran its own setpgid still reaches the group.
        // SAFETY: setpgid with integer arguments.
        unsafe { libc::setpgid(pid, pid) };
        self.current = pid;

        report.pid = pid as u32;
        let pidfd = match syscalls::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = syscalls::kill(KillTarget::Group(pid), libc::SIGKILL);
                let _ = syscalls::kill(KillTarget::Process(pid), libc::SIGKILL);
                let _ = syscalls::wait4(pid, false);
                self.kill_descendants(pid);
                return Err(format!(
                    "pidfd_open failed (Linux 5.3 or later is required): {e}"
                ));
            }
        };

        let started = Started {
            id: request.id,
            pid: pid as u32,
        };
        if send_frame(self.socket, Kind::Started, &[&started.encode()]).is_err() {
            self.abandon(pid);
        }

        let tail = usize::try_from(request.output_tail).unwrap_or(usize::MAX);
        let mut stdout = Tail::new(stdout_read, tail);
        let mut stderr = Tail::new(stderr_read, tail);
        let limit = usize::try_from(request.max_result_size)
            .unwrap_or(usize::MAX)
            .saturating_add(64 << 10);
        let mut records = Records {
            fd: Some(result_read),
            bytes: Vec::new(),
            limit,
            total: 0,
        };

        self.wait(
            request,
            pid,
            &pidfd,
            started_at,
            report,
            &mut stdout,
            &mut stderr,
            &mut records,
        );

        let reaped = syscalls::wait4(pid, false).ok().flatten();
        report.elapsed = started_at.elapsed();
        if let Some(reaped) = reaped {
            report.wait_status = reaped.status;
            report.peak_rss_bytes = reaped.max_rss_bytes;
        }

        // Data written before the exit is still in the pipes.
        self.drain_all(&mut stdout, &mut stderr, &mut records);
        report.descendants_killed = self.kill_descendants(pid);
        self.current = 0;
        // Every writer but the shepherd is gone now, so once a read finds a
        // pipe empty it stays empty: this reads the rest, and leaves the
        // pipes empty for the next execution.
        self.drain_all(&mut stdout, &mut stderr, &mut records);

        (report.stdout_tail, report.stdout_total) = stdout.finish();
        (report.stderr_tail, report.stderr_total) = stderr.finish();
        report.records = records.bytes;
        report.records_total = records.total;
        Ok(())
    }

    fn drain_all(&mut self, stdout: &mut Tail, stderr: &mut Tail, records: &mut Records) {
        drain_stream(stdout, &mut self.buffer);
        drain_stream(stderr, &mut self.buffer);
        drain_stream(records, &mut self.buffer);
    }

    /// Waits for the child to exit while draining its pipes, enforcing the
    /// deadline and watching the socket for a cancel.
    #[allow(clippy::too_many_arguments)]
    fn wait(
        &mut self,
        request: &Request<'_>,
        pid: libc::pid_t,
        pidfd: &OwnedFd,
        started_at: Instant,
        report: &mut Report,
        stdout: &mut Tail,
        stderr: &mut Tail,
        records: &mut Records,
    ) {
        let deadline = super::deadline_after(started_at, request.timeout);
        let mut phase = Phase::Running;
        // A cancel may have arrived in the same read as the request.
        if self.scan_for_cancel(request.id) {
            report.cancelled = true;
            phase = self.terminate(pid, request.grace, report);
        }
        loop {
            let now = Instant::now();
            match phase {
                Phase::Running if now >= deadline => {
                    report.timed_out = true;
                    phase = self.terminate(pid, request.grace, report);
                    continue;
                }
                Phase::Terminating(kill_at) if now >= kill_at => {
                    phase = self.force_kill(pid, report);
                    continue;
                }
                _ => {}
            }
            let timeout = match phase {
                Phase::Running => Some(deadline - now),
                Phase::Terminating(kill_at) => Some(kill_at - now),
                Phase::Killed => None,
            };

            let mut fds = vec![pollfd(pidfd.as_raw_fd()), pollfd(self.socket)];
            let mut owners = vec![0u8, 1];
            for (tag, fd) in [(2u8, stdout.fd), (3, stderr.fd), (4, records.fd)] {
                if let Some(fd) = fd {
                    fds.push(pollfd(fd));
                    owners.push(tag);
                }
            }
            if syscalls::poll(&mut fds, timeout).is_err() {
                continue;
            }

            let mut exited = false;
            for (entry, owner) in fds.iter().zip(&owners) {
                if entry.revents == 0 {
                    continue;
                }
                match owner {
                    0 => exited = true,
                    1 => {
                        if self.read_control(request.id) && phase == Phase::Running {
                            report.cancelled = true;
                            phase = self.terminate(pid, request.grace, report);
                        }
                    }
                    2 => drain_stream(stdout, &mut self.buffer),
                    3 => drain_stream(stderr, &mut self.buffer),
                    _ => drain_stream(records, &mut self.buffer),
                }
            }
            if exited {
                return;
            }
        }
    }

    /// Reads what the caller sent during an execution. Returns whether it
    /// cancelled the execution `id`. Exits the shepherd if the caller is gone.
    fn read_control(&mut self, id: u64) -> bool {
        match syscalls::read(self.socket, &mut self.buffer) {
            Ok(0) => self.caller_gone(),
            Ok(n) => self.inbox.extend_from_slice(&self.buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.caller_gone(),
        }
        self.scan_for_cancel(id)
    }

    /// Decodes the frames already read from the socket. Returns whether one
    /// cancels the execution `id`.
    fn scan_for_cancel(&mut self, id: u64) -> bool {
        let mut cancelled = false;
        loop {
            match self.decode_inbox() {
                None => self.caller_gone(),
                Some(None) => break,
                Some(Some((Kind::Cancel, body))) => {
                    if decode_cancel(&body) == Ok(id) {
                        cancelled = true;
                    }
                }
                // Only cancels are valid while an execution runs.
                Some(Some(_)) => self.caller_gone(),
            }
        }
        cancelled
    }

    /// Kills everything of the execution and exits, because the caller
    /// closed its end or broke the protocol. The pending pid is killed
    /// through its group and reaped by the descendant sweep.
    fn caller_gone(&mut self) -> ! {
        self.kill_descendants(self.current);
        exit(0)
    }

    fn abandon(&mut self, pid: libc::pid_t) -> ! {
        let _ = syscalls::kill(KillTarget::Group(pid), libc::SIGKILL);
        self.kill_descendants(pid);
        exit(0)
    }

    /// Sends SIGTERM to the child's group, or SIGKILL at once when there is
    /// no grace period.
    fn terminate(&mut self, pid: libc::pid_t, grace: Duration, report: &mut Report) -> Phase {
        if grace.is_zero() {
            return self.force_kill(pid, report);
        }
        let _ = syscalls::kill(KillTarget::Group(pid), libc::SIGTERM);
        Phase::Terminating(Instant::now() + grace)
    }

    /// SIGCONT, so a stopped group cannot delay anything, then SIGKILL.
    fn force_kill(&mut self, pid: libc::pid_t, report: &mut Report) -> Phase {
        report.escalated_to_kill = true;
        let _ = syscalls::kill(KillTarget::Group(pid), libc::SIGCONT);
        let _ = syscalls::kill(KillTarget::Group(pid), libc::SIGKILL);
        let _ = syscalls::kill(KillTarget::Process(pid), libc::SIGKILL);
        Phase::Killed
    }

    /// Kills and reaps every remaining descendant: the child's group first,
    /// then every direct child of the shepherd (orphans are re-parented here
    /// because the shepherd is a subreaper), until none is left. Returns how
    /// many were reaped.
    fn kill_descendants(&mut self, group: libc::pid_t) -> u32 {
        let mut reaped = 0;
        if group > 0 {
            let _ = syscalls::kill(KillTarget::Group(group), libc::SIGKILL);
        }
        let me = syscalls::getpid();
        loop {
            // Reap whatever has already exited.
            loop {
                match syscalls::wait4(-1, true) {
                    Ok(Some(_)) => reaped += 1,
                    Ok(None) => break,
                    // ECHILD: no descendant is left.
                    Err(_) => return reaped,
                }
            }
            let children = syscalls::children_of(me);
            if children.is_empty() {
                // A child exists but /proc did not list it yet. Look again
                // shortly rather than block on a child that was not killed.
                if group > 0 {
                    let _ = syscalls::kill(KillTarget::Group(group), libc::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            for child in &children {
                let _ = syscalls::kill(KillTarget::Group(*child), libc::SIGKILL);
                let _ = syscalls::kill(KillTarget::Process(*child), libc::SIGKILL);
            }
            // Block until one of the killed children exits; its own children
            // are then re-parented here and found on the next round.
            match syscalls::wait4(-1, false) {
                Ok(Some(_)) => reaped += 1,
                Ok(None) => {}
                Err(_) => return reaped,
            }
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// A pipe the shepherd reads from.
trait Stream {
    fn fd(&mut self) -> &mut Option<RawFd>;
    fn push(&mut self, chunk: &[u8]);

    /// Reads everything available from `fd` through `scratch`.
    fn drain_from(&mut self, fd: RawFd, scratch: &mut [u8]) -> Drained {
        drain(fd, scratch, |chunk| self.push(chunk))
    }
}

impl Stream for Tail {
    fn fd(&mut self) -> &mut Option<RawFd> {
        &mut self.fd
    }
    fn push(&mut self, chunk: &[u8]) {
        Tail::push(self, chunk);
    }
}

impl Stream for Records {
    fn fd(&mut self) -> &mut Option<RawFd> {
        &mut self.fd
    }
    fn push(&mut self, chunk: &[u8]) {
        Records::push(self, chunk);
    }

    /// Reads straight into `bytes` while they are under the limit, so a
    /// large result is copied once on its way out of the pipe. Past the
    /// limit it only counts bytes.
    fn drain_from(&mut self, fd: RawFd, scratch: &mut [u8]) -> Drained {
        loop {
            let room = self.limit.saturating_sub(self.bytes.len());
            if room == 0 {
                return drain(fd, scratch, |chunk| self.push(chunk));
            }
            // Start small, since most results are tiny, then double.
            let step = room.min(self.bytes.len().max(64 << 10));
            match syscalls::read_appending(fd, &mut self.bytes, step) {
                Ok(0) => return Drained::Closed,
                Ok(n) => self.total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drained::Empty,
                Err(_) => return Drained::Closed,
            }
        }
    }
}

/// Reads everything available from a stream; closes it at end of file.
fn drain_stream(stream: &mut impl Stream, buffer: &mut [u8]) {
    let Some(raw) = *stream.fd() else {
        return;
    };
    if let Drained::Closed = stream.drain_from(raw, buffer) {
        *stream.fd() = None;
    }
}
