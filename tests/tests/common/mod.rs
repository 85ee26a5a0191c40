//! Leak checks shared by the reliability and soak suites: the caller's open
//! fds, its descendant processes and its resident memory, read from
//! `/proc`.
//!
//! A check compares against a baseline taken before the executions. Idle
//! shepherds, and the one socket fd the caller keeps for each, may differ
//! from the baseline because a supervisor keeps them between executions.
//! Anything else that is new, a zombie included, is a leak.

// Each suite uses a different part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use isolated_executor::Supervisor;

/// How long a check waits for the state to settle before it reports a leak.
/// Cleanup is synchronous in the executor, so a clean run passes on the
/// first look; the wait only absorbs scheduling delays on a loaded machine.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Serializes the tests of one binary. libtest runs tests on parallel
/// threads, and one test's executions would show up as another's leaks.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The caller's fds, descendants and idle shepherds at one moment.
#[derive(Debug, Clone)]
pub struct Baseline {
    fds: BTreeMap<i32, String>,
    descendants: BTreeSet<u32>,
    idle: BTreeSet<u32>,
    supervisors: Vec<Supervisor>,
}

impl Baseline {
    /// Records the current state. `supervisors` are checked besides the
    /// global one for idle shepherds.
    pub fn capture(supervisors: &[&Supervisor]) -> Baseline {
        let supervisors: Vec<Supervisor> = supervisors.iter().map(|s| (*s).clone()).collect();
        Baseline {
            fds: open_fds(),
            descendants: descendants(std::process::id()),
            idle: idle_shepherds(&supervisors),
            supervisors,
        }
    }

    /// Waits until the caller has no fd and no descendant beyond the
    /// baseline and its idle shepherds, and panics with the leaks after
    /// ten seconds.
    pub fn assert_clean(&self) {
        let start = Instant::now();
        loop {
            let leaks = self.leaks();
            if leaks.is_empty() {
                return;
            }
            if start.elapsed() > SETTLE_LIMIT {
                panic!("leaked after {SETTLE_LIMIT:?}:\n{}", leaks.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Describes every fd and process beyond the baseline; empty when clean.
    pub fn leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        let idle = idle_shepherds(&self.supervisors);
        let long_lived: BTreeSet<u32> = self.descendants.difference(&self.idle).copied().collect();

        for pid in descendants(std::process::id()) {
            if !idle.contains(&pid) && !long_lived.contains(&pid) {
                leaks.push(format!("process {}", describe_process(pid)));
            }
        }

        // Each idle shepherd that was not idle before accounts for one new socket.
        let new_shepherds = idle.difference(&self.idle).count();
        let mut new_sockets = 0;
        let now = open_fds();
        for (fd, target) in &now {
            if self.fds.get(fd) == Some(target) {
                continue;
            }
            if target.starts_with("socket:") && new_sockets < new_shepherds {
                new_sockets += 1;
                continue;
            }
            leaks.push(format!("fd {fd} -> {target}"));
        }

        // A shepherd that went away must take its socket with it.
        let sockets =
            |fds: &BTreeMap<i32, String>| fds.values().filter(|t| t.starts_with("socket:")).count();
        let extra_now = sockets(&now).saturating_sub(idle.len());
        let extra_before = sockets(&self.fds).saturating_sub(self.idle.len());
        if extra_now > extra_before {
            leaks.push(format!(
                "{extra_now} sockets beyond the {} idle shepherds, {extra_before} before",
                idle.len()
            ));
        }
        leaks
    }

    /// Number of descendants at the baseline, idle shepherds included.
    pub fn descendant_count(&self) -> usize {
        self.descendants.len()
    }

    /// Number of open fds at the baseline.
    pub fn fd_count(&self) -> usize {
        self.fds.len()
    }
}

fn idle_shepherds(supervisors: &[Supervisor]) -> BTreeSet<u32> {
    let mut idle: BTreeSet<u32> = Supervisor::global()
        .idle_shepherd_pids()
        .into_iter()
        .collect();
    for supervisor in supervisors {
        idle.extend(supervisor.idle_shepherd_pids());
    }
    idle
}

/// Lists `/proc/self/fd` as fd number and link target, without the fd of
/// the listing itself.
pub fn open_fds() -> BTreeMap<i32, String> {
    let listing_target = format!("/proc/{}/fd", std::process::id());
    let mut fds = BTreeMap::new();
    let entries = std::fs::read_dir("/proc/self/fd").expect("reading /proc/self/fd failed");
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            // The listing's own fd is closed by the time it is read back.
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target != listing_target {
            fds.insert(fd, target);
        }
    }
    fds
}

/// Returns every descendant of `root` (children, their children, ...),
/// zombies included, from the parent pid in each `/proc/PID/stat`.
pub fn descendants(root: u32) -> BTreeSet<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (pid, stat) in process_stats() {
        children.entry(stat.parent).or_default().push(pid);
    }
    let mut found = BTreeSet::new();
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if found.insert(child) {
                pending.push(child);
            }
        }
    }
    found
}

/// The fields of `/proc/PID/stat` the checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStat {
    /// The command name, without parentheses.
    pub name: String,
    /// The state letter: R, S, D, T, Z and so on.
    pub state: char,
    /// The parent pid.
    pub parent: u32,
}

/// Parses `/proc/PID/stat`. The name is in parentheses and may contain
/// spaces or parentheses, so the fields after it are found from its last
/// `)`.
pub fn parse_stat(stat: &str) -> Option<ProcessStat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some(ProcessStat {
        name: stat.get(open + 1..close)?.to_owned(),
        state,
        parent,
    })
}

/// Reads `/proc/PID/stat` of one process; `None` when it does not exist.
pub fn process_stat(pid: u32) -> Option<ProcessStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn process_stats() -> Vec<(u32, ProcessStat)> {
    let mut stats = Vec::new();
    let entries = std::fs::read_dir("/proc").expect("reading /proc failed");
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(stat) = process_stat(pid) {
            stats.push((pid, stat));
        }
    }
    stats
}

fn describe_process(pid: u32) -> String {
    match process_stat(pid) {
        Some(stat) => format!(
            "{pid} ({}) state {} parent {}",
            stat.name, stat.state, stat.parent
        ),
        None => format!("{pid} (exited while listed)"),
    }
}

/// Waits until no process `pid` exists, zombies included, and panics
/// after ten seconds. Pids are not reused within a test's few seconds
/// unless the machine forks through the whole pid range, so a process that
/// is found is the one the test started.
pub fn assert_gone(pid: u32, what: &str) {
    let start = Instant::now();
    while let Some(stat) = process_stat(pid) {
        assert!(
            start.elapsed() < SETTLE_LIMIT,
            "{what} (pid {pid}) still exists after {SETTLE_LIMIT:?}: {stat:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resident set size of this process in bytes (`VmRSS` of
/// `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status =
        std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status failed");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("no VmRSS line in /proc/self/status");
    kib * 1024
}

/// A directory under the system temp dir for one test, removed on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: std::path::PathBuf,
}

impl ScratchDir {
    /// Creates an empty directory named after the test and this process.
    pub fn new(test: &str) -> ScratchDir {
        let path =
            std::env::temp_dir().join(format!("isolated-tests-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {} failed: {e}", path.display()));
        ScratchDir { path }
    }

    /// Returns the directory's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[test]
fn parse_stat_handles_parentheses_in_name() {
    let stat = parse_stat("42 (a (b) c) S 7 42 42 0 -1").unwrap();
    assert_eq!(stat.name, "a (b) c");
    assert_eq!(stat.state, 'S');
    assert_eq!(stat.parent, 7);
    assert_eq!(parse_stat("garbage"), None);
}
