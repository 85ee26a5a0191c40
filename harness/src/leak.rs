//! A check that executions leave no process and no file descriptor behind.
//!
//! [`LeakCheck::start`] records the calling process's open fds
//! (`/proc/self/fd`) and every process descended from it (found through the
//! parent pid in `/proc/<pid>/stat`). [`LeakCheck::check`] compares the
//! current state with that baseline and reports what is new, apart from
//! what a supervisor keeps on purpose:
//!
//! - idle shepherds of [`Supervisor::global()`] and of every supervisor
//!   passed to [`LeakCheck::with_supervisor`];
//! - one `socket:[..]` fd per idle shepherd started since the baseline,
//!   because the caller keeps one end of a socket pair to each shepherd.
//!   Sockets are matched by count, not by identity.
//!
//! Processes are reaped and fds closed before `execute_isolated` returns,
//! so the check normally passes at once. It retries for a short, bounded
//! time ([`LeakCheck::settle_time`], 2 s by default), because some cleanup
//! finishes asynchronously, such as a supervisor shut down from another
//! thread.
//!
//! ```no_run
//! use isolated_executor::{Context, defaults, execute_isolated};
//! use isolated_harness::fixtures::{CrashHandler, CrashMode};
//! use isolated_harness::leak::LeakCheck;
//!
//! let leaks = LeakCheck::start();
//! let _ = execute_isolated(&CrashHandler::new(CrashMode::Abort), (), &Context::new(), &defaults());
//! leaks.assert_clean();
//! ```
//!
//! # Caveats
//!
//! Fds and processes belong to the whole test binary, and libtest runs tests
//! on parallel threads. Leak checks in one binary take a shared lock, so two
//! checked regions never overlap, but a test without a check that runs at
//! the same time can still open fds or start processes that the check then
//! reports. Put leak-checked tests in their own test file, or check every
//! test of that file. Starting a second `LeakCheck` on a thread that holds
//! one deadlocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use isolated_executor::Supervisor;

/// A process found under `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process id.
    pub pid: u32,
    /// The parent's process id.
    pub ppid: u32,
    /// The command name (`comm`), at most 15 bytes.
    pub name: String,
    /// The state letter: `R`, `S`, `D`, `Z` (zombie), `T`, ...
    pub state: char,
}

impl fmt::Display for ProcessInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} ({}) state {} parent {}",
            self.pid, self.name, self.state, self.ppid
        )
    }
}

/// An open file descriptor of the calling process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdInfo {
    /// The descriptor number.
    pub fd: i32,
    /// The link target of `/proc/self/fd/<fd>`, such as `socket:[1234]`, `pipe:[99]` or a file path.
    pub target: String,
}

impl FdInfo {
    /// Returns whether the fd is a socket.
    pub fn is_socket(&self) -> bool {
        self.target.starts_with("socket:")
    }
}

impl fmt::Display for FdInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {} -> {}", self.fd, self.target)
    }
}

/// Processes and fds left behind since a [`LeakCheck`] started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaks {
    /// Descendants that are new (or became zombies) and are not idle
    /// shepherds.
    pub processes: Vec<ProcessInfo>,
    /// New fds that are not sockets of new idle shepherds. When there are
    /// more new sockets than new idle shepherds, every new socket is listed.
    pub fds: Vec<FdInfo>,
    /// The number of new socket fds that the new idle shepherds account for.
    pub allowed_sockets: usize,
}

impl Leaks {
    /// Returns whether nothing leaked.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.fds.is_empty()
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} leaked processes and {} leaked fds",
            self.processes.len(),
            self.fds.len()
        )?;
        for process in &self.processes {
            writeln!(f, "  process {process}")?;
        }
        for fd in &self.fds {
            writeln!(f, "  {fd}")?;
        }
        if self.allowed_sockets > 0 {
            writeln!(
                f,
                "  ({} new sockets are allowed for new idle shepherds)",
                self.allowed_sockets
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Leaks {}

/// Held by every live [`LeakCheck`], so checked regions never overlap.
static SERIAL: Mutex<()> = Mutex::new(());

/// Default of [`LeakCheck::settle_time`]: 2 s.
pub const DEFAULT_SETTLE_TIME: Duration = Duration::from_secs(2);

/// A baseline of the calling process's fds and descendants; see the module
/// docs.
pub struct LeakCheck {
    fds: BTreeSet<FdInfo>,
    processes: BTreeMap<u32, ProcessInfo>,
    supervisors: Vec<Supervisor>,
    settle_time: Duration,
    _serial: MutexGuard<'static, ()>,
}

impl fmt::Debug for LeakCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakCheck")
            .field("fds", &self.fds.len())
            .field("processes", &self.processes.len())
            .field("supervisors", &self.supervisors.len())
            .field("settle_time", &self.settle_time)
            .finish()
    }
}

impl LeakCheck {
    /// Takes the lock shared by all leak checks and records the baseline.
    ///
    /// # Panics
    ///
    /// When `/proc/self/fd` or `/proc` cannot be read.
    pub fn start() -> LeakCheck {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        LeakCheck {
            fds: open_fds()
                .expect("failed to read /proc/self/fd")
                .into_iter()
                .collect(),
            processes: descendants(std::process::id())
                .expect("failed to read /proc")
                .into_iter()
                .map(|p| (p.pid, p))
                .collect(),
            supervisors: Vec::new(),
            settle_time: DEFAULT_SETTLE_TIME,
            _serial: serial,
        }
    }

    /// Also allows the idle shepherds of `supervisor` and their sockets.
    #[must_use]
    pub fn with_supervisor(mut self, supervisor: &Supervisor) -> LeakCheck {
        self.supervisors.push(supervisor.clone());
        self
    }

    /// Sets how long [`check`](Self::check) retries before it reports a
    /// leak. Default: [`DEFAULT_SETTLE_TIME`].
    #[must_use]
    pub fn settle_time(mut self, settle_time: Duration) -> LeakCheck {
        self.settle_time = settle_time;
        self
    }

    /// Compares the current state with the baseline, retrying every 10 ms
    /// until nothing is left behind or the settle time has passed.
    ///
    /// # Errors
    ///
    /// The [`Leaks`] found at the last attempt.
    ///
    /// # Panics
    ///
    /// When `/proc/self/fd` or `/proc` cannot be read.
    pub fn check(&self) -> Result<(), Leaks> {
        let deadline = Instant::now() + self.settle_time;
        loop {
            let leaks = self.leaks_now();
            if leaks.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(leaks);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`check`](Self::check), and panics with the list of leaks.
    ///
    /// # Panics
    ///
    /// When something leaked.
    pub fn assert_clean(self) {
        if let Err(leaks) = self.check() {
            panic!("leak check failed: {leaks}");
        }
    }

    fn idle_shepherds(&self) -> BTreeSet<u32> {
        std::iter::once(Supervisor::global())
            .chain(&self.supervisors)
            .flat_map(Supervisor::idle_shepherd_pids)
            .collect()
    }

    fn leaks_now(&self) -> Leaks {
        let idle = self.idle_shepherds();
        let current = descendants(std::process::id()).expect("failed to read /proc");
        let processes: Vec<ProcessInfo> = current
            .into_iter()
            .filter(|process| !idle.contains(&process.pid))
            .filter(|process| match self.processes.get(&process.pid) {
                None => true,
                Some(before) => process.state == 'Z' && before.state != 'Z',
            })
            .collect();

        let new_idle = idle
            .iter()
            .filter(|pid| !self.processes.contains_key(pid))
            .count();
        let (sockets, mut fds): (Vec<FdInfo>, Vec<FdInfo>) = open_fds()
            .expect("failed to read /proc/self/fd")
            .into_iter()
            .filter(|fd| !self.fds.contains(fd))
            .partition(FdInfo::is_socket);
        if sockets.len() > new_idle {
            fds.extend(sockets);
            fds.sort();
        }
        Leaks {
            processes,
            fds,
            allowed_sockets: new_idle,
        }
    }
}

/// Returns the open fds of the calling process, sorted by number.
///
/// The fd that reading the directory itself uses is closed before the
/// targets are read, so it does not appear.
///
/// # Errors
///
/// When `/proc/self/fd` cannot be read.
pub fn open_fds() -> std::io::Result<Vec<FdInfo>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            numbers.push(fd);
        }
    }
    numbers.sort_unstable();
    Ok(numbers
        .into_iter()
        .filter_map(|fd: i32| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some(FdInfo {
                fd,
                target: target.to_string_lossy().into_owned(),
            })
        })
        .collect())
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid ...`, where `comm` may
/// contain spaces and parentheses, so the fields after it are found from
/// the last `)`.
fn parse_stat(stat: &str) -> Option<ProcessInfo> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let pid = stat[..open].trim().parse().ok()?;
    let name = stat.get(open + 1..close)?.to_owned();
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(ProcessInfo {
        pid,
        ppid,
        name,
        state,
    })
}

/// Returns every process descended from `root` (children, their children,
/// and so on), sorted by pid. Processes that exit during the scan are
/// skipped.
///
/// # Errors
///
/// When `/proc` cannot be read.
pub fn descendants(root: u32) -> std::io::Result<Vec<ProcessInfo>> {
    let mut by_parent: BTreeMap<u32, Vec<ProcessInfo>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(process) = parse_stat(&stat) {
            by_parent.entry(process.ppid).or_default().push(process);
        }
    }

    let mut found = Vec::new();
    let mut pending = vec![root];
    while let Some(parent) = pending.pop() {
        for child in by_parent.remove(&parent).unwrap_or_default() {
            pending.push(child.pid);
            found.push(child);
        }
    }
    found.sort_by_key(|p| p.pid);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn stat_with_odd_command_name_parses() {
        let info = parse_stat("4719 (a) b (c)) S 12 4719 4719 0 -1").unwrap();
        assert_eq!(info.pid, 4719);
        assert_eq!(info.name, "a) b (c)");
        assert_eq!(info.state, 'S');
        assert_eq!(info.ppid, 12);
    }

    #[test]
    fn open_file_is_reported_until_closed() {
        let check = LeakCheck::start().settle_time(Duration::from_millis(50));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let leaks = check.check().unwrap_err();
        let fd = file.as_raw_fd();
        assert!(
            leaks
                .fds
                .iter()
                .any(|leak| leak.fd == fd && leak.target.ends_with("/status")),
            "{leaks}"
        );
        drop(file);
        check.check().unwrap();
    }

    #[test]
    fn new_socket_without_shepherd_is_reported() {
        let check = LeakCheck::start().settle_time(Duration::from_millis(50));
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let leaks = check.check().unwrap_err();
        for end in [a.as_raw_fd(), b.as_raw_fd()] {
            assert!(
                leaks
                    .fds
                    .iter()
                    .any(|leak| leak.fd == end && leak.is_socket()),
                "{leaks}"
            );
        }
        drop((a, b));
        check.check().unwrap();
    }

    #[test]
    fn child_process_is_reported_until_reaped() {
        let check = LeakCheck::start().settle_time(Duration::from_millis(50));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let leaks = check.check().unwrap_err();
        assert!(
            leaks.processes.iter().any(|p| p.pid == child.id()),
            "{leaks}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        check.check().unwrap();
    }

    #[test]
    fn zombie_is_reported() {
        let check = LeakCheck::start().settle_time(Duration::from_millis(50));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait for the exit without reaping, by polling the state.
        let deadline = Instant::now() + Duration::from_secs(10);
        while descendants(std::process::id())
            .unwrap()
            .iter()
            .any(|p| p.pid == pid && p.state != 'Z')
        {
            assert!(Instant::now() < deadline, "`true` did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        let leaks = check.check().unwrap_err();
        assert!(
            leaks
                .processes
                .iter()
                .any(|p| p.pid == pid && p.state == 'Z'),
            "{leaks}"
        );
        child.wait().unwrap();
        check.check().unwrap();
    }
}
