//! The caller's side of a shepherd: starting it, the handshake, sending a
//! request and reading the report, blocking or through tokio.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use super::syscalls::{self, KillTarget};
use crate::protocol::{
    self, Frame, FrameDecoder, Hello, Kind, Report, Request, Started, encode_cancel, encode_header,
};

/// Environment variable that carries the shepherd's socket fd.
pub const ENV_SOCKET: &str = "ISOLATED_EXECUTOR_SHEPHERD_FD";
/// Environment variable that carries the caller's pid.
pub const ENV_CALLER: &str = "ISOLATED_EXECUTOR_CALLER_PID";
/// Environment variable a shepherd sets to its own pid, so that every
/// process of its executions carries it.
pub const ENV_LINEAGE: &str = "ISOLATED_EXECUTOR_SHEPHERD_PID";

/// Arguments given to the re-executed binary. If the entry hook is missing,
/// libtest gets a filter that matches no test and exits at once, so a
/// missing hook can never run the test suite recursively.
const SHEPHERD_ARGS: [&str; 3] = ["--exact", "--quiet", "__isolated_executor_hook_missing__"];

/// The message given when a re-executed binary did not become a shepherd.
pub const HOOK_MISSING: &str = "the re-executed binary did not start a shepherd: add `isolated_executor::enable_test_support!();` at the top of this integration-test file (`tests/*.rs`, or `src/lib.rs` for unit tests), or call `isolated_executor::init();` first in `main` of a binary";

/// The reason a shepherd connection failed. The shepherd is unusable afterwards.
#[derive(Debug)]
pub struct Lost(pub String);

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Shepherds are started from one long-lived thread, because
/// `PR_SET_PDEATHSIG` fires when the thread that forked a process exits,
/// and callers such as libtest run each test on a short-lived thread.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("isolated-executor-spawner".into())
            .spawn(move || {
                for job in receiver {
                    job();
                }
            })
            .expect("failed to start the isolated-executor spawner thread");
        Mutex::new(sender)
    })
}

/// Starts the shepherd process. Runs on the spawner thread.
fn spawn_process() -> io::Result<(Child, OwnedFd)> {
    let (ours, theirs) = syscalls::socketpair()?;
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new("/proc/self/exe");
    command
        .args(SHEPHERD_ARGS)
        .env(ENV_SOCKET, their_fd.to_string())
        .env(ENV_CALLER, syscalls::getpid().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || syscalls::clear_cloexec(their_fd));
    }
    let child = command.spawn()?;
    drop(theirs);
    syscalls::set_nonblocking(ours.as_raw_fd(), true)?;
    Ok((child, ours))
}

fn spawn_via_thread(reply: impl FnOnce(io::Result<(Child, OwnedFd)>) + Send + 'static) {
    let job: SpawnJob = Box::new(move || reply(spawn_process()));
    let sender = spawner().lock().unwrap_or_else(|e| e.into_inner());
    if let Err(mpsc::SendError(job)) = sender.send(job) {
        // The spawner thread is gone; spawn here as a last resort.
        job();
    }
}

/// A running shepherd owned by a supervisor.
#[derive(Debug)]
pub struct Shepherd {
    /// The shepherd's pid.
    pub pid: u32,
    process: Option<Child>,
    socket: Arc<OwnedFd>,
    decoder: FrameDecoder,
    inbox: Vec<u8>,
    buffer: Vec<u8>,
    next_id: u64,
    /// Id of a cancelled execution whose report is still owed.
    pending: Option<(u64, Instant)>,
    /// The pid of the running child, 0 when none.
    child_pid: Arc<AtomicU32>,
}

/// Sends a cancel for the execution running on a shepherd; used by a
/// supervisor's `shutdown` from another thread.
#[derive(Debug, Clone)]
pub struct Canceller {
    socket: Arc<OwnedFd>,
    id: u64,
}

impl Canceller {
    /// Asks the shepherd to terminate the execution. Returns false if the
    /// request could not be written at once.
    pub fn cancel(&self) -> bool {
        send_cancel(self.socket.as_raw_fd(), self.id)
    }
}

fn send_cancel(socket: RawFd, id: u64) -> bool {
    let body = encode_cancel(id);
    let frame = protocol::encode_frame(Kind::Cancel, &body);
    matches!(syscalls::send(socket, &frame), Ok(n) if n == frame.len())
}

/// Encodes the frame header of a request whose body is `head` followed by the payload.
fn request_header(head: &[u8], request: &Request<'_>) -> [u8; protocol::HEADER_LEN] {
    encode_header(Kind::Request, (head.len() + request.payload.len()) as u64)
}

/// A failure while waiting for a frame.
enum ReadError {
    Eof,
    TimedOut,
    Failed(String),
}

impl Shepherd {
    fn new(process: Child, socket: OwnedFd) -> Self {
        Shepherd {
            pid: process.id(),
            process: Some(process),
            socket: Arc::new(socket),
            decoder: FrameDecoder::new(protocol::MAX_CONTROL_LEN),
            inbox: Vec::new(),
            buffer: vec![0; 256 << 10],
            next_id: 1,
            pending: None,
            child_pid: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Starts a shepherd and waits for its handshake.
    pub fn start_blocking(handshake_timeout: Duration) -> Result<Shepherd, String> {
        let (sender, receiver) = mpsc::sync_channel(1);
        spawn_via_thread(move |result| {
            let _ = sender.send(result);
        });
        let (process, socket) = receiver
            .recv()
            .map_err(|_| "the spawner thread dropped the request".to_string())?
            .map_err(|e| format!("failed to start a shepherd from /proc/self/exe: {e}"))?;
        let mut shepherd = Shepherd::new(process, socket);
        let deadline = super::deadline_after(Instant::now(), handshake_timeout);
        match shepherd.read_frame_blocking(Some(deadline)) {
            Ok((Kind::Hello, body)) => shepherd.check_hello(&body).map(|()| shepherd),
            Ok((kind, _)) => Err(format!("shepherd sent {kind:?} instead of its handshake")),
            Err(ReadError::Eof) => Err(HOOK_MISSING.to_string()),
            Err(ReadError::TimedOut) => Err(format!(
                "the shepherd sent no handshake within {handshake_timeout:?}; raise SupervisorConfig::handshake_timeout if the executable starts slowly"
            )),
            Err(ReadError::Failed(e)) => Err(format!("shepherd handshake failed: {e}")),
        }
    }

    /// Starts a shepherd and waits for its handshake without blocking the
    /// runtime.
    #[cfg(feature = "tokio")]
    pub async fn start_async(handshake_timeout: Duration) -> Result<Shepherd, String> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        spawn_via_thread(move |result| {
            // The future may be dropped before the send, which then returns
            // the shepherd to be dropped here, or after it, which drops the
            // shepherd with the channel. Either way the Shepherd's drop kills
            // and reaps the process, so it cannot stay a zombie.
            let _ = sender.send(result.map(|(process, socket)| Shepherd::new(process, socket)));
        });
        let mut shepherd = receiver
            .await
            .map_err(|_| "the spawner thread dropped the request".to_string())?
            .map_err(|e| format!("failed to start a shepherd from /proc/self/exe: {e}"))?;
        let deadline = super::deadline_after(Instant::now(), handshake_timeout);
        match shepherd.read_frame_async(Some(deadline)).await {
            Ok((Kind::Hello, body)) => shepherd.check_hello(&body).map(|()| shepherd),
            Ok((kind, _)) => Err(format!("shepherd sent {kind:?} instead of its handshake")),
            Err(ReadError::Eof) => Err(HOOK_MISSING.to_string()),
            Err(ReadError::TimedOut) => Err(format!(
                "the shepherd sent no handshake within {handshake_timeout:?}; raise SupervisorConfig::handshake_timeout if the executable starts slowly"
            )),
            Err(ReadError::Failed(e)) => Err(format!("shepherd handshake failed: {e}")),
        }
    }

    fn check_hello(&self, body: &[u8]) -> Result<(), String> {
        let hello = Hello::decode(body).map_err(|e| format!("invalid shepherd handshake: {e}"))?;
        let ours = super::identity::fingerprint()
            .map_err(|e| format!("failed to read /proc/self/exe: {e}"))?;
        if hello.fingerprint != ours {
            return Err("the shepherd runs a different executable than the caller".into());
        }
        Ok(())
    }

    /// Prepares the next request id and returns a canceller for it.
    pub fn prepare(&mut self) -> (u64, Canceller) {
        let id = self.next_id;
        self.next_id += 1;
        let canceller = Canceller {
            socket: Arc::clone(&self.socket),
            id,
        };
        (id, canceller)
    }

    /// Returns the pid of the child currently running, if any.
    pub fn child_pid(&self) -> Option<u32> {
        match self.child_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Sends a request, blocking, after reading the report of a cancelled
    /// execution that is still owed.
    pub fn send_blocking(&mut self, request: &Request<'_>) -> Result<(), Lost> {
        self.settle_pending_blocking()?;
        let head = request.encode_head();
        let header = request_header(&head, request);
        let mut slices = [
            IoSlice::new(&header),
            IoSlice::new(&head),
            IoSlice::new(request.payload),
        ];
        self.write_blocking(&mut slices)
            .map_err(|e| self.lost(&format!("sending the request failed: {e}")))
    }

    /// Waits for the report of a request sent with `send_blocking`.
    /// `safety_margin` past the timeout and grace bounds the wait in case the
    /// shepherd hangs.
    pub fn receive_blocking(
        &mut self,
        request: &Request<'_>,
        report_limit: u64,
        safety_margin: Duration,
    ) -> Result<Report, Lost> {
        let deadline = super::deadline_after(
            Instant::now(),
            request
                .timeout
                .saturating_add(request.grace)
                .saturating_add(safety_margin),
        );
        self.await_report_blocking(request.id, report_limit, deadline)
    }

    /// Returns the pid of the current request's child, if it started and has
    /// not reported yet.
    pub fn last_child_pid(&self) -> Option<u32> {
        self.child_pid()
    }

    fn await_report_blocking(
        &mut self,
        id: u64,
        report_limit: u64,
        deadline: Instant,
    ) -> Result<Report, Lost> {
        loop {
            self.decoder
                .set_max_len(report_limit.max(protocol::MAX_CONTROL_LEN));
            match self.read_frame_blocking(Some(deadline)) {
                Ok((kind, body)) => {
                    if let Some(report) = self.handle_frame(id, kind, body)? {
                        return Ok(report);
                    }
                }
                Err(error) => return Err(self.lost_on(error)),
            }
        }
    }

    /// Handles a frame while waiting for the report of `id`.
    fn handle_frame(&mut self, id: u64, kind: Kind, body: Vec<u8>) -> Result<Option<Report>, Lost> {
        match kind {
            Kind::Started => {
                let started = Started::decode(&body)
                    .map_err(|e| self.lost(&format!("invalid frame: {e}")))?;
                if started.id == id {
                    self.child_pid.store(started.pid, Ordering::Relaxed);
                }
                Ok(None)
            }
            Kind::Report => {
                let report = Report::decode_owned(body)
                    .map_err(|e| self.lost(&format!("invalid report: {e}")))?;
                if report.id == id {
                    self.child_pid.store(0, Ordering::Relaxed);
                    self.decoder.set_max_len(protocol::MAX_CONTROL_LEN);
                    Ok(Some(report))
                } else {
                    Ok(None)
                }
            }
            other => Err(self.lost(&format!("unexpected {other:?} frame from the shepherd"))),
        }
    }

    /// Marks the execution `id` as cancelled: its report is read and dropped
    /// before the next request.
    pub fn abandon(&mut self, id: u64) -> bool {
        if !send_cancel(self.socket.as_raw_fd(), id) {
            return false;
        }
        self.pending = Some((id, Instant::now()));
        true
    }

    fn settle_pending_blocking(&mut self) -> Result<(), Lost> {
        if let Some((id, since)) = self.pending.take() {
            let deadline = super::deadline_after(since, Duration::from_secs(30));
            self.await_report_blocking(id, u64::MAX >> 1, deadline)?;
        }
        Ok(())
    }

    /// Writes every slice, in order, waiting for room in the socket buffer.
    fn write_blocking(&mut self, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        while !slices.is_empty() {
            match syscalls::send_vectored(fd, slices) {
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut entry = [libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    }];
                    syscalls::poll(&mut entry, None)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Decodes one frame from the bytes already read.
    fn take_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        if let Some(frame) = self.decoder.take_filled() {
            return Ok(Some(frame));
        }
        if self.inbox.is_empty() {
            return Ok(None);
        }
        let (frame, used) = self
            .decoder
            .feed(&self.inbox)
            .map_err(|e| ReadError::Failed(e.to_string()))?;
        self.inbox.drain(..used);
        Ok(frame)
    }

    /// Reads whatever the socket has; `Ok(false)` when it had nothing.
    fn fill(&mut self) -> Result<bool, ReadError> {
        let fd = self.socket.as_raw_fd();
        // With the inbox empty, the rest of a large body goes straight into
        // the body, never past its end.
        if self.inbox.is_empty() {
            if let Some((body, step)) = self.decoder.body_to_fill() {
                return match syscalls::read_appending(fd, body, step) {
                    Ok(0) => Err(ReadError::Eof),
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(ReadError::Failed(e.to_string())),
                };
            }
        }
        match syscalls::read(fd, &mut self.buffer) {
            Ok(0) => Err(ReadError::Eof),
            Ok(n) => {
                self.inbox.extend_from_slice(&self.buffer[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(ReadError::Failed(e.to_string())),
        }
    }

    fn read_frame_blocking(&mut self, deadline: Option<Instant>) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            if self.fill()? {
                continue;
            }
            let timeout = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ReadError::TimedOut);
                    }
                    Some(deadline - now)
                }
                None => None,
            };
            let mut entry = [libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            syscalls::poll(&mut entry, timeout).map_err(|e| ReadError::Failed(e.to_string()))?;
        }
    }

    fn lost_on(&mut self, error: ReadError) -> Lost {
        match error {
            ReadError::Eof => self.lost("the shepherd closed its socket"),
            ReadError::TimedOut => self.lost(
                "the shepherd sent no report within the timeout, the grace period and the safety margin",
            ),
            ReadError::Failed(e) => self.lost(&format!("reading from the shepherd failed: {e}")),
        }
    }

    /// Kills what is left of the shepherd and its current child, reaps the
    /// shepherd and describes how it ended.
    fn lost(&mut self, what: &str) -> Lost {
        let status = self.destroy();
        kill_lineage(self.pid);
        Lost(format!("{what}; shepherd pid {} {status}", self.pid))
    }

    /// Kills the shepherd and the group of its running child, then reaps the
    /// shepherd. Returns how it ended.
    ///
    /// When the shepherd died before its `Started` frame arrived, the child's
    /// pid is unknown here. The child itself dies through `PR_SET_PDEATHSIG`,
    /// and `kill_lineage` finds the processes it started in another session.
    pub fn destroy(&mut self) -> String {
        if let Some(child) = self.child_pid() {
            let _ = syscalls::kill(KillTarget::Group(child as libc::pid_t), libc::SIGKILL);
        }
        let Some(mut process) = self.process.take() else {
            return "was already reaped".into();
        };
        // A shepherd that already exited keeps its real status; otherwise
        // the SIGKILL below decides it.
        let status = match process.try_wait() {
            Ok(Some(status)) => status,
            _ => {
                let _ = process.kill();
                match process.wait() {
                    Ok(status) => status,
                    Err(e) => return format!("could not be reaped: {e}"),
                }
            }
        };
        format!("ended with {status}")
    }
}

/// Kills every process that still carries the lineage mark of a dead
/// shepherd: descendants of its last execution that left the child's
/// process group, which its subreaper cleanup would have killed. They were
/// re-parented to an ancestor subreaper or PID 1, which reaps them.
/// A descendant that cleared its environment is not found.
fn kill_lineage(shepherd: u32) {
    let mark = format!("{ENV_LINEAGE}={shepherd}");
    let me = std::process::id();
    // A killed process's children are re-parented and may be found on a
    // later round; three rounds cover a few generations.
    for _ in 0..3 {
        let mut killed = 0;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if environ
                .split(|byte| *byte == 0)
                .any(|entry| entry == mark.as_bytes())
            {
                let _ = syscalls::kill(KillTarget::Process(pid as libc::pid_t), libc::SIGKILL);
                killed += 1;
            }
        }
        if killed == 0 {
            return;
        }
        tracing::warn!(shepherd, killed, "killed processes left by a lost shepherd");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Shepherd {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[cfg(feature = "tokio")]
mod async_io {
    use super::*;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// The shepherd's socket, shared with tokio's reactor for one wait.
    struct Registered(Arc<OwnedFd>);

    impl AsRawFd for Registered {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    impl Shepherd {
        fn async_fd(&self) -> Result<AsyncFd<Registered>, String> {
            let socket = Registered(Arc::clone(&self.socket));
            // SAFETY: `Registered` holds a reference count on the OwnedFd, so
            // the fd stays open and names the same socket for the whole life
            // of the AsyncFd.
            unsafe {
                AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE)
            }
            .map_err(|e| {
                format!(
                    "registering the shepherd socket with tokio failed: {}",
                    e.into_parts().1
                )
            })
        }

        pub(super) async fn read_frame_async(
            &mut self,
            deadline: Option<Instant>,
        ) -> Result<Frame, ReadError> {
            let registered = self.async_fd().map_err(ReadError::Failed)?;
            loop {
                if let Some(frame) = self.take_frame()? {
                    return Ok(frame);
                }
                if self.fill()? {
                    continue;
                }
                let ready = registered.readable();
                let mut guard = match deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline.into(), ready).await {
                        Ok(guard) => guard,
                        Err(_) => return Err(ReadError::TimedOut),
                    },
                    None => ready.await,
                }
                .map_err(|e| ReadError::Failed(e.to_string()))?;
                guard.clear_ready();
            }
        }

        async fn write_async(&mut self, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
            let registered = self.async_fd().map_err(io::Error::other)?;
            let fd = self.socket.as_raw_fd();
            while !slices.is_empty() {
                match syscalls::send_vectored(fd, slices) {
                    Ok(n) => IoSlice::advance_slices(&mut slices, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let mut guard = registered.writable().await?;
                        guard.clear_ready();
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }

        async fn await_report_async(
            &mut self,
            id: u64,
            report_limit: u64,
            deadline: Instant,
        ) -> Result<Report, Lost> {
            loop {
                self.decoder
                    .set_max_len(report_limit.max(protocol::MAX_CONTROL_LEN));
                match self.read_frame_async(Some(deadline)).await {
                    Ok((kind, body)) => {
                        if let Some(report) = self.handle_frame(id, kind, body)? {
                            return Ok(report);
                        }
                    }
                    Err(error) => return Err(self.lost_on(error)),
                }
            }
        }

        /// Sends the request of a run without waiting for its report, after
        /// reading the report of a cancelled execution that is still owed.
        pub async fn send_async(&mut self, request: &Request<'_>) -> Result<(), Lost> {
            if let Some((id, since)) = self.pending.take() {
                let deadline = super::super::deadline_after(since, Duration::from_secs(30));
                self.await_report_async(id, u64::MAX >> 1, deadline).await?;
            }
            let head = request.encode_head();
            let header = request_header(&head, request);
            let mut slices = [
                IoSlice::new(&header),
                IoSlice::new(&head),
                IoSlice::new(request.payload),
            ];
            let sent = self.write_async(&mut slices).await;
            sent.map_err(|e| self.lost(&format!("sending the request failed: {e}")))
        }

        /// Waits for the report of a request sent with `send_async`.
        pub async fn receive_async(
            &mut self,
            request: &Request<'_>,
            report_limit: u64,
            safety_margin: Duration,
        ) -> Result<Report, Lost> {
            let deadline = super::super::deadline_after(
                Instant::now(),
                request
                    .timeout
                    .saturating_add(request.grace)
                    .saturating_add(safety_margin),
            );
            self.await_report_async(request.id, report_limit, deadline)
                .await
        }
    }
}
