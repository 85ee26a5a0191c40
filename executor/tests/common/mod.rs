//! Helpers shared by the integration tests: a lock that serializes tests
//! which inspect process-wide state, a check that a test leaves no process,
//! zombie or file descriptor behind, and small readers of `/proc`.
//!
//! Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use isolated_executor::Supervisor;

/// How long `LeakCheck::finish` waits for processes that are still being
/// killed or reaped (for example after a cancelled execution) to go away.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serializes the tests of one test binary. The leak check compares
/// process-wide state, so two tests running at once would see each other's
/// shepherds and fds.
static SERIAL: Mutex<()> = Mutex::new(());

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process id.
    pub pid: u32,
    /// The parent's process id.
    pub ppid: u32,
    /// The state letter: `R`, `S`, `Z` and so on.
    pub state: char,
    /// The executable name, at most 15 bytes.
    pub comm: String,
    /// Start time in clock ticks since boot; tells a reused pid apart.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`. `None` when the process is gone.
pub fn process_info(pid: u32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may itself contain spaces or ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the name: state (field 3), ppid (4), ... starttime (22).
    Some(ProcessInfo {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        comm,
        start_time: rest.get(19)?.parse().ok()?,
    })
}

/// Every process on the system, by pid.
fn all_processes() -> BTreeMap<u32, ProcessInfo> {
    let mut processes = BTreeMap::new();
    let entries = std::fs::read_dir("/proc").expect("/proc is readable");
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(info) = process_info(pid) {
            processes.insert(pid, info);
        }
    }
    processes
}

/// Every descendant of this test process (children, grandchildren and so
/// on), zombies included.
pub fn descendants() -> BTreeMap<u32, ProcessInfo> {
    let all = all_processes();
    let mut found = BTreeMap::new();
    let mut frontier = vec![std::process::id()];
    while let Some(parent) = frontier.pop() {
        for info in all.values().filter(|info| info.ppid == parent) {
            if found.insert(info.pid, info.clone()).is_none() {
                frontier.push(info.pid);
            }
        }
    }
    found
}

/// Processes whose parent is a child of this test process. With shepherds
/// as the direct children, these are the handler children.
pub fn grandchildren() -> Vec<ProcessInfo> {
    let all = all_processes();
    let me = std::process::id();
    let children: BTreeSet<u32> = all
        .values()
        .filter(|info| info.ppid == me)
        .map(|info| info.pid)
        .collect();
    all.values()
        .filter(|info| children.contains(&info.ppid))
        .cloned()
        .collect()
}

/// Waits until a handler child is running and returns it. Panics after
/// `timeout`.
pub fn wait_for_grandchild(timeout: Duration) -> ProcessInfo {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(child) = grandchildren().into_iter().next() {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "no handler child appeared within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the process `info` describes has gone from `/proc`: it exited and
/// was reaped. A reused pid with another start time counts as gone.
pub fn is_gone(info: &ProcessInfo) -> bool {
    process_info(info.pid).is_none_or(|now| now.start_time != info.start_time)
}

/// Waits up to `timeout` for the process to be gone; returns whether it is.
pub fn wait_gone(info: &ProcessInfo, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !is_gone(info) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Waits up to `timeout` until `pid` is a zombie or gone.
pub fn wait_dead(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match process_info(pid) {
            None => return true,
            Some(info) if info.state == 'Z' => return true,
            Some(_) if Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The thread ids of this process.
pub fn threads() -> BTreeMap<u32, String> {
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task is readable")
        .flatten()
    {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        threads.insert(tid, comm.trim_end().to_owned());
    }
    threads
}

/// The open fds of this process with what they point to (`socket:[123]`,
/// a path, `anon_inode:[eventpoll]`), leaving out the fd of the directory
/// listing itself.
fn open_fds() -> BTreeMap<i32, String> {
    let listing = format!("/proc/{}/fd", std::process::id());
    let mut fds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .flatten()
    {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // An fd closed by another thread since the listing has no link.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target != listing {
            fds.insert(fd, target);
        }
    }
    fds
}

fn idle_shepherds(supervisors: &[&Supervisor]) -> BTreeSet<u32> {
    let mut idle: BTreeSet<u32> = Supervisor::global()
        .idle_shepherd_pids()
        .into_iter()
        .collect();
    for supervisor in supervisors {
        idle.extend(supervisor.idle_shepherd_pids());
    }
    idle
}

/// Records the fds and descendants of the test process at the start of a
/// test and checks at the end that the test added none, apart from idle
/// shepherds and their sockets. Holding it also serializes the tests of a
/// binary.
pub struct LeakCheck {
    _serial: MutexGuard<'static, ()>,
    fds: BTreeMap<i32, String>,
    descendants: BTreeSet<u32>,
    idle: BTreeSet<u32>,
}

impl LeakCheck {
    /// Takes the serial lock and records the current state.
    pub fn start() -> LeakCheck {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        LeakCheck {
            _serial: serial,
            fds: open_fds(),
            descendants: descendants().into_keys().collect(),
            idle: idle_shepherds(&[]),
        }
    }

    /// Checks that the test left nothing behind. Idle shepherds of the
    /// global supervisor and of `supervisors` are allowed, and so is one
    /// socket fd per idle shepherd added since `start`. Processes still
    /// being torn down get a few seconds to go away.
    pub fn finish(self, supervisors: &[&Supervisor]) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let problems = self.problems(supervisors);
            if problems.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the test left resources behind:\n  {}",
                    problems.join("\n  ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn problems(&self, supervisors: &[&Supervisor]) -> Vec<String> {
        let mut problems = Vec::new();
        let idle = idle_shepherds(supervisors);

        for (pid, info) in descendants() {
            if !self.descendants.contains(&pid) && !idle.contains(&pid) {
                problems.push(format!(
                    "process {pid} ({}) state {} parent {} is still there",
                    info.comm, info.state, info.ppid
                ));
            }
        }

        let fds = open_fds();
        let is_socket = |target: &String| target.starts_with("socket:");
        for (fd, target) in &fds {
            if !is_socket(target) && self.fds.get(fd) != Some(target) {
                problems.push(format!("fd {fd} -> {target} is still open"));
            }
        }
        // Each idle shepherd holds one socket of this process; a shepherd
        // that went away must take its socket with it.
        let sockets_before = self.fds.values().filter(|t| is_socket(t)).count() as i64;
        let sockets_after = fds.values().filter(|t| is_socket(t)).count() as i64;
        let shepherds_added = idle.len() as i64 - self.idle.len() as i64;
        if sockets_after - sockets_before > shepherds_added {
            problems.push(format!(
                "{sockets_after} sockets are open, {sockets_before} before the test, \
                 but idle shepherds changed by {shepherds_added}"
            ));
        }
        problems
    }
}
