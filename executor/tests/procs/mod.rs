//! Process and fd inspection shared by the executor's integration tests.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Parent pid from `/proc/PID/stat`, parsed after the command name.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// State letter from `/proc/PID/stat` (`Z` for a zombie).
pub fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// Every process descended from `root`, found by scanning `/proc`.
pub fn descendants_of(root: u32) -> BTreeSet<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            if let Some(parent) = parent_of(pid) {
                parents.push((pid, parent));
            }
        }
    }
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, p) in &parents {
            if *p == parent && found.insert(*pid) {
                frontier.push(*pid);
            }
        }
    }
    found
}

/// Whether a process with this pid exists, zombie or not.
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits up to `limit` for `pid` to disappear completely (reaped, not a
/// zombie). Returns whether it did.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !exists(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !exists(pid)
}

/// Open fds of this process, with what they point to.
pub fn open_fds() -> BTreeSet<(u32, String)> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect()
}

/// Asserts that the shepherds of `supervisor` hold no child processes,
/// which means every execution they ran was cleaned up.
pub fn assert_shepherds_idle_and_childless(supervisor: &isolated_executor::Supervisor) {
    for shepherd in supervisor.idle_shepherd_pids() {
        let left = descendants_of(shepherd);
        assert!(
            left.is_empty(),
            "shepherd {shepherd} still has descendants {left:?}"
        );
    }
}
