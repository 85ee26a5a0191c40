//! Correctness checks for the paths the benchmark optimises: vectored
//! frames, payloads read straight into frame bodies, reused file
//! descriptors and the shortened child setup. They assert outcomes and
//! bytes, never timing.

isolated_executor::enable_test_support!();

use std::time::Duration;

use isolated_executor::{
    Context, CrashReason, Handler, IsolationError, KillReason, Supervisor, SupervisorConfig,
    defaults, execute_isolated, execute_isolated_async, execute_isolated_report,
};
use serde::{Deserialize, Serialize};

/// What the probe handler does.
#[derive(Serialize, Deserialize, Debug, Clone)]
enum Act {
    /// Returns the bytes reversed.
    Reverse(Vec<u8>),
    /// Returns a vector of `len` bytes counting up from `seed`.
    Generate { len: u64, seed: u8 },
    /// Prints to stdout and stderr, then returns 0.
    Print(String),
    /// Sleeps this many milliseconds.
    Sleep(u64),
    /// Allocates and touches this many bytes.
    Allocate(u64),
    /// Panics with the message.
    Panic(String),
    /// Calls `std::process::exit`, which runs `atexit` handlers.
    Exit(i32),
    /// Calls `_exit`, which skips them.
    QuickExit(i32),
    /// Recurses until the stack runs out.
    Overflow,
    /// Writes through a null pointer.
    Segfault,
    /// Reports the handler's ignored, caught and blocked signal sets.
    Signals,
    /// Lists the open file descriptors.
    OpenFds,
    /// Sets `O_NONBLOCK` on stdout, stderr and the result pipe (fd 3) and
    /// returns their status flags from before.
    SetNonBlocking,
    /// Holds the argument and reports the `RLIMIT_DATA` soft limit and the
    /// `VmData` of the handler, from which the room left under the heap
    /// budget follows.
    BudgetRoom(Vec<u8>),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Answer {
    Bytes(Vec<u8>),
    Number(u64),
    Signals {
        ignored: Vec<u32>,
        caught: Vec<u32>,
        blocked: Vec<u32>,
    },
    Fds(Vec<i32>),
    LimitAndData {
        limit: u64,
        data: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct Probe;

impl Handler for Probe {
    type Args = Act;
    type Output = Answer;
    type Error = String;

    fn execute(&self, act: Act, _: &Context) -> Result<Answer, String> {
        match act {
            Act::Reverse(mut bytes) => {
                bytes.reverse();
                Ok(Answer::Bytes(bytes))
            }
            Act::Generate { len, seed } => Ok(Answer::Bytes(counting(len as usize, seed))),
            Act::Print(text) => {
                print!("{text}");
                eprint!("{text}");
                Ok(Answer::Number(0))
            }
            Act::Sleep(millis) => {
                std::thread::sleep(Duration::from_millis(millis));
                Ok(Answer::Number(millis))
            }
            Act::Allocate(len) => {
                let bytes = vec![1u8; len as usize];
                Ok(Answer::Number(std::hint::black_box(bytes).len() as u64))
            }
            Act::Panic(message) => panic!("{message}"),
            Act::Exit(code) => std::process::exit(code),
            Act::Overflow => Ok(Answer::Number(recurse(0))),
            Act::Segfault => {
                // SAFETY: none; the invalid write is the behaviour under
                // test and kills the child.
                unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
                Ok(Answer::Number(1))
            }
            Act::QuickExit(code) => {
                // SAFETY: `_exit` ends the child at once, which is the
                // behaviour under test.
                unsafe { libc::_exit(code) }
            }
            Act::Signals => Ok(signals()),
            Act::BudgetRoom(held) => {
                let status =
                    std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
                let data_kib: u64 = status
                    .lines()
                    .find_map(|line| line.strip_prefix("VmData:"))
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                    .ok_or("no VmData line")?;
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: `limit` is valid for writes.
                if unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut limit) } != 0 {
                    return Err("getrlimit failed".into());
                }
                std::hint::black_box(&held);
                Ok(Answer::LimitAndData {
                    limit: limit.rlim_cur,
                    data: data_kib * 1024,
                })
            }
            Act::SetNonBlocking => {
                let mut before = Vec::new();
                for fd in 1..=3 {
                    // SAFETY: fcntl on the handler's own fds with int
                    // arguments.
                    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                    // SAFETY: as above.
                    unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
                    before.push(flags);
                }
                Ok(Answer::Fds(before))
            }
            Act::OpenFds => {
                let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
                    .map_err(|e| e.to_string())?
                    .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
                fds.sort_unstable();
                Ok(Answer::Fds(fds))
            }
        }
    }
}

/// Recurses without end; each frame keeps a buffer alive so the compiler
/// cannot turn the recursion into a loop.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    std::hint::black_box(&frame);
    recurse(depth + 1) + frame[3]
}

fn counting(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_add(seed)).collect()
}

/// Reads the handler's signal sets from `/proc/self/status`.
fn signals() -> Answer {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let set = |field: &str| {
        let mask = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(u64::MAX);
        (1..=64u32)
            .filter(|signal| mask & (1u64 << (signal - 1)) != 0)
            .collect()
    };
    Answer::Signals {
        ignored: set("SigIgn:"),
        caught: set("SigCgt:"),
        blocked: set("SigBlk:"),
    }
}

fn run(act: Act) -> Result<Answer, IsolationError<String>> {
    execute_isolated(
        &Probe,
        act,
        &Context::new(),
        &defaults().max_heap_size(None),
    )
}

#[test]
fn large_argument_arrives_intact() {
    let bytes = counting(24 << 20, 3);
    let mut expected = bytes.clone();
    expected.reverse();
    assert_eq!(run(Act::Reverse(bytes)), Ok(Answer::Bytes(expected)));
}

#[test]
fn large_result_arrives_intact() {
    let len = 24 << 20;
    assert_eq!(
        run(Act::Generate {
            len: len as u64,
            seed: 11
        }),
        Ok(Answer::Bytes(counting(len, 11)))
    );
}

#[test]
fn payload_sizes_around_buffer_edges() {
    for len in [
        0,
        1,
        15,
        16,
        17,
        4095,
        4096,
        65_536,
        (256 << 10) - 1,
        256 << 10,
        (1 << 20) + 7,
    ] {
        let bytes = counting(len, len as u8);
        let mut expected = bytes.clone();
        expected.reverse();
        assert_eq!(
            run(Act::Reverse(bytes)),
            Ok(Answer::Bytes(expected)),
            "argument of {len} bytes"
        );
        assert_eq!(
            run(Act::Generate {
                len: len as u64,
                seed: 1
            }),
            Ok(Answer::Bytes(counting(len, 1))),
            "result of {len} bytes"
        );
    }
}

#[test]
fn result_over_limit_is_protocol_crash() {
    let options = defaults().max_heap_size(None).max_result_size(1 << 20);
    let outcome = execute_isolated(
        &Probe,
        Act::Generate {
            len: 3 << 20,
            seed: 0,
        },
        &Context::new(),
        &options,
    );
    assert!(
        matches!(
            outcome,
            Err(IsolationError::Crashed(CrashReason::Protocol { .. }))
        ),
        "{outcome:?}"
    );
}

#[test]
fn output_is_captured_every_run() {
    for i in 0..20 {
        let text = format!("line {i}\n");
        let report = execute_isolated_report(
            &Probe,
            Act::Print(text.clone()),
            &Context::new(),
            &defaults(),
        );
        assert_eq!(report.outcome, Ok(Answer::Number(0)));
        assert_eq!(report.stdout_tail, text);
        assert_eq!(report.stderr_tail, text);
    }
}

#[test]
fn large_output_leaves_nothing_for_next_run() {
    let supervisor = Supervisor::start(SupervisorConfig {
        max_children: 1,
        ..SupervisorConfig::default()
    })
    .expect("supervisor");
    let options = defaults().supervisor(supervisor.clone());
    let text = "0123456789abcdef".repeat(64 << 10);
    let report =
        execute_isolated_report(&Probe, Act::Print(text.clone()), &Context::new(), &options);
    assert_eq!(report.outcome, Ok(Answer::Number(0)));
    assert_eq!(report.stdout_bytes, text.len() as u64);
    assert_eq!(report.stderr_bytes, text.len() as u64);
    let keep = isolated_executor::DEFAULT_OUTPUT_TAIL;
    assert_eq!(report.stdout_tail, text[text.len() - keep..]);

    let quiet =
        execute_isolated_report(&Probe, Act::Print(String::new()), &Context::new(), &options);
    assert_eq!(quiet.outcome, Ok(Answer::Number(0)));
    assert_eq!(quiet.stdout_bytes, 0);
    assert_eq!(quiet.stderr_bytes, 0);
    assert_eq!(quiet.stdout_tail, "");
    supervisor.shutdown();
}

#[test]
fn fd_flags_do_not_carry_over() {
    let supervisor = Supervisor::start(SupervisorConfig {
        max_children: 1,
        ..SupervisorConfig::default()
    })
    .expect("supervisor");
    let options = defaults().supervisor(supervisor.clone());
    for _ in 0..3 {
        let answer = execute_isolated(&Probe, Act::SetNonBlocking, &Context::new(), &options);
        let Ok(Answer::Fds(flags)) = answer else {
            panic!("unexpected answer {answer:?}");
        };
        for (fd, flags) in (1..=3).zip(flags) {
            assert_eq!(flags & libc::O_NONBLOCK, 0, "fd {fd} started non-blocking");
        }
    }
    supervisor.shutdown();
}

#[test]
fn handler_sees_default_signals_and_empty_mask() {
    // A signal the caller ignores stays ignored across the shepherd's exec,
    // and the handler must still see it at its default.
    // SAFETY: ignoring SIGUSR1 installs no handler, and no test in this
    // binary relies on receiving it.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    let supervisor = Supervisor::start(SupervisorConfig::default()).expect("supervisor");
    let options = defaults().supervisor(supervisor.clone());
    for _ in 0..3 {
        let answer = execute_isolated(&Probe, Act::Signals, &Context::new(), &options);
        let Ok(Answer::Signals {
            ignored,
            caught,
            blocked,
        }) = answer
        else {
            panic!("unexpected answer {answer:?}");
        };
        assert_eq!(ignored, Vec::<u32>::new(), "ignored signals");
        // Only the executor's own SIGBUS and SIGSEGV handler is installed.
        assert_eq!(caught, vec![7, 11], "caught signals");
        assert_eq!(blocked, Vec::<u32>::new(), "blocked signals");
    }
    supervisor.shutdown();
}

#[test]
fn handler_inherits_only_its_own_fds() {
    for _ in 0..3 {
        // 0-2 are stdio, 3 the result pipe, 4 the directory listing itself.
        assert_eq!(run(Act::OpenFds), Ok(Answer::Fds(vec![0, 1, 2, 3, 4])));
    }
}

#[test]
fn heap_budget_still_enforced() {
    let options = defaults().max_heap_size(4 << 20);
    let within = execute_isolated(&Probe, Act::Allocate(1 << 20), &Context::new(), &options);
    assert_eq!(within, Ok(Answer::Number(1 << 20)));
    let over = execute_isolated(&Probe, Act::Allocate(64 << 20), &Context::new(), &options);
    assert!(
        matches!(
            over,
            Err(IsolationError::Killed(KillReason::MaxHeapSize { .. }))
        ),
        "{over:?}"
    );
    let after = execute_isolated(&Probe, Act::Allocate(1 << 20), &Context::new(), &options);
    assert_eq!(after, Ok(Answer::Number(1 << 20)));
}

#[test]
fn heap_budget_counts_from_handler_start() {
    const BUDGET: u64 = 8 << 20;
    let options = defaults().max_heap_size(BUDGET);
    // A large argument is decoded before the handler starts, so it must
    // not use up the budget.
    for held in [0, 1 << 20, 24 << 20] {
        let answer = execute_isolated(
            &Probe,
            Act::BudgetRoom(vec![3; held]),
            &Context::new(),
            &options,
        );
        let Ok(Answer::LimitAndData { limit, data }) = answer else {
            panic!("unexpected answer {answer:?}");
        };
        let room = limit.saturating_sub(data);
        // The handler's own reading of procfs allocates a little before
        // VmData is read.
        assert!(
            room <= BUDGET && room + (512 << 10) >= BUDGET,
            "room {room} under a budget of {BUDGET} with {held} bytes held"
        );
    }
}

#[test]
fn exit_kinds_are_told_apart() {
    for _ in 0..2 {
        assert_eq!(
            run(Act::Exit(3)),
            Err(IsolationError::Crashed(CrashReason::Exit { code: 3 }))
        );
        assert_eq!(
            run(Act::QuickExit(4)),
            Err(IsolationError::Crashed(CrashReason::NoResult { code: 4 }))
        );
    }
}

#[test]
fn stack_overflow_and_segfault_are_told_apart() {
    for _ in 0..2 {
        let overflow = run(Act::Overflow);
        assert!(
            matches!(
                overflow,
                Err(IsolationError::Crashed(CrashReason::StackOverflow { .. }))
            ),
            "{overflow:?}"
        );
        let segfault = run(Act::Segfault);
        assert!(
            matches!(
                segfault,
                Err(IsolationError::Crashed(CrashReason::Signal {
                    number: 11,
                    ..
                }))
            ),
            "{segfault:?}"
        );
    }
}

#[test]
fn panic_location_is_reported() {
    let outcome = run(Act::Panic("located".into()));
    let Err(IsolationError::Crashed(CrashReason::Panic { message, location })) = outcome else {
        panic!("unexpected outcome {outcome:?}");
    };
    assert_eq!(message, "located");
    let location = location.expect("a panic location");
    assert!(location.contains("fast_paths.rs"), "{location}");
}

#[test]
fn panic_then_success_on_same_shepherd() {
    let supervisor = Supervisor::start(SupervisorConfig {
        max_children: 1,
        ..SupervisorConfig::default()
    })
    .expect("supervisor");
    let options = defaults().supervisor(supervisor.clone());
    let panicked = execute_isolated(&Probe, Act::Panic("boom".into()), &Context::new(), &options);
    assert!(
        matches!(
            &panicked,
            Err(IsolationError::Crashed(CrashReason::Panic { message, .. })) if message == "boom"
        ),
        "{panicked:?}"
    );
    let timed_out = execute_isolated(
        &Probe,
        Act::Sleep(5_000),
        &Context::new(),
        &options
            .clone()
            .timeout(Duration::from_millis(50))
            .shutdown_grace(Duration::ZERO),
    );
    assert!(
        matches!(timed_out, Err(IsolationError::Timeout { .. })),
        "{timed_out:?}"
    );
    let bytes = counting(300_000, 5);
    let mut expected = bytes.clone();
    expected.reverse();
    assert_eq!(
        execute_isolated(&Probe, Act::Reverse(bytes), &Context::new(), &options),
        Ok(Answer::Bytes(expected))
    );
    supervisor.shutdown();
}

#[test]
fn async_large_payloads_and_cancel() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options = defaults().max_heap_size(None);
        let bytes = counting(8 << 20, 9);
        let mut expected = bytes.clone();
        expected.reverse();
        let outcome =
            execute_isolated_async(&Probe, Act::Reverse(bytes), &Context::new(), &options).await;
        assert_eq!(outcome, Ok(Answer::Bytes(expected)));

        // Dropping the future cancels the child; the next call still works.
        let slow = execute_isolated_async(&Probe, Act::Sleep(10_000), &Context::new(), &options);
        let raced = tokio::time::timeout(Duration::from_millis(100), slow).await;
        assert!(raced.is_err(), "the sleeping handler finished early");

        let generated = execute_isolated_async(
            &Probe,
            Act::Generate {
                len: 5 << 20,
                seed: 2,
            },
            &Context::new(),
            &options,
        )
        .await;
        assert_eq!(generated, Ok(Answer::Bytes(counting(5 << 20, 2))));
    });
}
