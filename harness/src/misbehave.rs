//! Handlers that misbehave on purpose, so tests can check that the executor
//! survives each misbehaviour with the right outcome and leaves nothing
//! behind.
//!
//! [`Misbehave`] runs one [`Misbehaviour`] per execution. Some happen in
//! the handler's own process, such as flooding stdout, closing its fds or
//! killing its shepherd. Others run a program of the `isolated-fixtures`
//! crate as a grandchild, or in place of the handler through `exec`, so the
//! child itself misbehaves and the deadline applies to it. The caller
//! resolves the programs' paths with `isolated_fixtures::path`.
//!
//! The handlers below [`Misbehave`] have argument, output or error types
//! whose serde round trip fails on one side, for the protocol error paths.
//!
//! This module is the one place in the harness with `unsafe` code: a few
//! `libc` calls that misbehave on purpose (ignoring SIGTERM, closing the
//! standard fds, killing the parent process).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use isolated_executor::{Context, Handler};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How long a misbehaviour that "never ends" sleeps: one hour, far longer
/// than any test waits.
const LONG_SLEEP: std::time::Duration = std::time::Duration::from_secs(3600);

/// The line [`fill_pattern`] repeats: 64 printable bytes ending in a newline.
pub const PATTERN_LINE: &[u8; 64] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n";

/// The misbehaviour of one [`Misbehave`] execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Misbehaviour {
    /// Replaces the handler process with `program` (a fixture) through
    /// `exec`, so the child keeps its pid and process group and does what
    /// the program does. Nothing returns unless the exec fails.
    Exec {
        /// The program, usually from `isolated_fixtures::path`.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
    /// Ignores SIGTERM in the handler process itself and sleeps for an hour.
    IgnoreSigterm,
    /// Starts `program` (the `hold_stdio` fixture) with the handler's stdout
    /// and stderr, then returns its pid at once while it sleeps holding them.
    ReturnWhileGrandchildHoldsStdio {
        /// Path of the `hold_stdio` fixture.
        program: PathBuf,
    },
    /// Runs `program` (the `double_fork_daemon` fixture) to completion and
    /// returns the pids it prints: the middle process, then the daemon.
    DetachDaemon {
        /// Path of the `double_fork_daemon` fixture.
        program: PathBuf,
    },
    /// Starts `program` (the `setsid_sleeper` fixture), waits for the line
    /// that confirms its `setsid`, and returns its pid while it sleeps.
    SpawnSetsidSleeper {
        /// Path of the `setsid_sleeper` fixture.
        program: PathBuf,
    },
    /// Writes `stdout_bytes` of [`PATTERN_LINE`] repeats to stdout, then
    /// `stderr_bytes` to stderr, and returns both counts.
    FloodOutput {
        /// Bytes written to stdout.
        stdout_bytes: u64,
        /// Bytes written to stderr.
        stderr_bytes: u64,
    },
    /// Closes fds 0, 1 and 2, then returns.
    CloseStdio,
    /// Closes fds 0 to 3, which includes the executor's result pipe, then
    /// returns.
    CloseResultPipe,
    /// Returns `bytes` bytes filled by [`fill_pattern`].
    LargeResult {
        /// Size of the returned buffer.
        bytes: usize,
    },
    /// Sends SIGKILL to its parent, the shepherd, then sleeps until the
    /// parent-death signal kills it.
    KillShepherd,
    /// Starts `program` (the `setsid_sleeper` fixture) like
    /// [`Misbehaviour::SpawnSetsidSleeper`], writes its pid to `pidfile`,
    /// then kills the shepherd like [`Misbehaviour::KillShepherd`].
    KillShepherdAfterSetsid {
        /// Path of the `setsid_sleeper` fixture.
        program: PathBuf,
        /// File that receives the sleeper's pid in decimal.
        pidfile: PathBuf,
    },
}

/// The output of a [`Misbehave`] execution that returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Returned {
    /// Pids of processes the handler started and left running.
    Pids(Vec<u32>),
    /// Bytes written by [`Misbehaviour::FloodOutput`].
    Written {
        /// Bytes written to stdout.
        stdout: u64,
        /// Bytes written to stderr.
        stderr: u64,
    },
    /// The buffer of [`Misbehaviour::LargeResult`].
    Bytes(Vec<u8>),
    /// The misbehaviour finished and had nothing to return.
    Done,
}

/// A handler that does the [`Misbehaviour`] it is given. Its error is a
/// message naming what failed, such as an `exec` that could not start.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Misbehave;

impl Handler for Misbehave {
    type Args = Misbehaviour;
    type Output = Returned;
    type Error = String;

    fn execute(&self, misbehaviour: Misbehaviour, _context: &Context) -> Result<Returned, String> {
        match misbehaviour {
            Misbehaviour::Exec { program, args } => {
                let error = Command::new(&program).args(&args).exec();
                Err(format!("exec of {} failed: {error}", program.display()))
            }
            Misbehaviour::IgnoreSigterm => {
                ignore_sigterm()?;
                eprintln!("misbehave: ignoring SIGTERM");
                std::thread::sleep(LONG_SLEEP);
                Ok(Returned::Done)
            }
            Misbehaviour::ReturnWhileGrandchildHoldsStdio { program } => {
                let child = Command::new(&program)
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("starting {} failed: {e}", program.display()))?;
                // The child is neither waited for nor killed: the executor
                // has to clean it up.
                Ok(Returned::Pids(vec![child.id()]))
            }
            Misbehaviour::DetachDaemon { program } => detach_daemon(&program),
            Misbehaviour::SpawnSetsidSleeper { program } => spawn_setsid_sleeper(&program),
            Misbehaviour::FloodOutput {
                stdout_bytes,
                stderr_bytes,
            } => {
                flood(&mut std::io::stdout().lock(), stdout_bytes)
                    .map_err(|e| format!("writing to stdout failed: {e}"))?;
                flood(&mut std::io::stderr().lock(), stderr_bytes)
                    .map_err(|e| format!("writing to stderr failed: {e}"))?;
                Ok(Returned::Written {
                    stdout: stdout_bytes,
                    stderr: stderr_bytes,
                })
            }
            Misbehaviour::CloseStdio => {
                close_fds(0..=2)?;
                Ok(Returned::Done)
            }
            Misbehaviour::CloseResultPipe => {
                close_fds(0..=3)?;
                Ok(Returned::Done)
            }
            Misbehaviour::LargeResult { bytes } => {
                let mut buffer = vec![0; bytes];
                fill_pattern(&mut buffer);
                Ok(Returned::Bytes(buffer))
            }
            Misbehaviour::KillShepherd => {
                kill_parent()?;
                std::thread::sleep(LONG_SLEEP);
                Ok(Returned::Done)
            }
            Misbehaviour::KillShepherdAfterSetsid { program, pidfile } => {
                let Returned::Pids(pids) = spawn_setsid_sleeper(&program)? else {
                    unreachable!("spawn_setsid_sleeper returns pids");
                };
                std::fs::write(&pidfile, pids[0].to_string())
                    .map_err(|e| format!("writing {} failed: {e}", pidfile.display()))?;
                kill_parent()?;
                std::thread::sleep(LONG_SLEEP);
                Ok(Returned::Done)
            }
        }
    }
}

/// Fills `buffer` with repeats of [`PATTERN_LINE`], so any slice of it can
/// be checked against its offset.
pub fn fill_pattern(buffer: &mut [u8]) {
    for (index, byte) in buffer.iter_mut().enumerate() {
        *byte = PATTERN_LINE[index % PATTERN_LINE.len()];
    }
}

fn flood(out: &mut impl Write, bytes: u64) -> std::io::Result<()> {
    let mut chunk = vec![0; 64 << 10];
    fill_pattern(&mut chunk);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()
}

fn detach_daemon(program: &std::path::Path) -> Result<Returned, String> {
    let output = Command::new(program)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {} failed: {e}", program.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed with {}: {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut pids = Vec::new();
    for label in ["intermediate ", "daemon "] {
        let pid = text
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .and_then(|rest| rest.trim().parse().ok())
            .ok_or_else(|| format!("no `{label}PID` line in the output {text:?}"))?;
        pids.push(pid);
    }
    Ok(Returned::Pids(pids))
}

fn spawn_setsid_sleeper(program: &std::path::Path) -> Result<Returned, String> {
    let mut child = Command::new(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {} failed: {e}", program.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the sleeper's stdout is missing")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the sleeper's stdout failed: {e}"))?;
    let expected = format!("setsid_sleeper: pid {0} sid {0}", child.id());
    if line.trim() != expected {
        return Err(format!(
            "expected {expected:?} from the sleeper, got {line:?}"
        ));
    }
    Ok(Returned::Pids(vec![child.id()]))
}

#[allow(unsafe_code)]
fn ignore_sigterm() -> Result<(), String> {
    // SAFETY: SIG_IGN is a valid disposition for SIGTERM. This misbehaves
    // on purpose: the executor has to escalate to SIGKILL.
    let previous = unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        return Err(format!(
            "signal(SIGTERM, SIG_IGN) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[allow(unsafe_code)]
fn close_fds(fds: std::ops::RangeInclusive<libc::c_int>) -> Result<(), String> {
    for fd in fds {
        // SAFETY: no Rust object of this process owns fds 0 to 3 (std's
        // stdio handles wrap the numbers without owning them), so closing
        // them invalidates nothing. This misbehaves on purpose.
        if unsafe { libc::close(fd) } != 0 {
            return Err(format!(
                "close({fd}) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[allow(unsafe_code)]
fn kill_parent() -> Result<(), String> {
    let parent = std::os::unix::process::parent_id();
    // SAFETY: kill takes plain integers. The parent is the shepherd that
    // forked this child; killing it misbehaves on purpose.
    if unsafe { libc::kill(parent as libc::pid_t, libc::SIGKILL) } != 0 {
        return Err(format!(
            "kill({parent}, SIGKILL) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A value that serializes (as a unit) but whose `Deserialize` always fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RejectOnDecode;

impl Serialize for RejectOnDecode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for RejectOnDecode {
    fn deserialize<D: Deserializer<'de>>(_deserializer: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "RejectOnDecode always fails to deserialize",
        ))
    }
}

/// A value whose `Serialize` always fails and that deserializes from a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RejectOnEncode;

impl Serialize for RejectOnEncode {
    fn serialize<S: Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "RejectOnEncode always fails to serialize",
        ))
    }
}

impl<'de> Deserialize<'de> for RejectOnEncode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <()>::deserialize(deserializer).map(|()| RejectOnEncode)
    }
}

/// A handler whose arguments serialize in the caller but fail to
/// deserialize in the child.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ArgsFailToDecode;

impl Handler for ArgsFailToDecode {
    type Args = RejectOnDecode;
    type Output = u32;
    type Error = String;

    fn execute(&self, _args: RejectOnDecode, _context: &Context) -> Result<u32, String> {
        Ok(1)
    }
}

/// A handler whose arguments fail to serialize in the caller.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ArgsFailToEncode;

impl Handler for ArgsFailToEncode {
    type Args = RejectOnEncode;
    type Output = u32;
    type Error = String;

    fn execute(&self, _args: RejectOnEncode, _context: &Context) -> Result<u32, String> {
        Ok(1)
    }
}

/// A handler whose output fails to serialize in the child.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct OutputFailsToEncode;

impl Handler for OutputFailsToEncode {
    type Args = ();
    type Output = RejectOnEncode;
    type Error = String;

    fn execute(&self, _args: (), _context: &Context) -> Result<RejectOnEncode, String> {
        Ok(RejectOnEncode)
    }
}

/// A handler whose output serializes in the child but fails to deserialize
/// in the caller.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct OutputFailsToDecode;

impl Handler for OutputFailsToDecode {
    type Args = ();
    type Output = RejectOnDecode;
    type Error = String;

    fn execute(&self, _args: (), _context: &Context) -> Result<RejectOnDecode, String> {
        Ok(RejectOnDecode)
    }
}

/// A handler that returns an error that fails to deserialize in the caller.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ErrorFailsToDecode;

impl Handler for ErrorFailsToDecode {
    type Args = ();
    type Output = u32;
    type Error = RejectOnDecode;

    fn execute(&self, _args: (), _context: &Context) -> Result<u32, RejectOnDecode> {
        Err(RejectOnDecode)
    }
}
