//! Isolated execution measured side by side with the fork floor, `Command`
//! running `/bin/true`, procspawn and rusty-fork, plus timeout precision,
//! 64 MiB payload rates and start-up times.
//!
//! Run: `cargo bench -p isolated-bench`. Environment:
//! - `ISOLATED_BENCH_QUICK=1` runs about a fifth of the samples;
//! - `ISOLATED_BENCH_ONLY=a,b` runs only the named sections (`startup`,
//!   `command`, `sequential`, `parallel`, `peers`, `timeout`, `data`). The
//!   fork floor always runs, because every ratio needs it.
//!
//! The latency figures are taken in rounds, each round measuring every
//! figure once, so that load from other processes on the machine falls on
//! all figures alike. The fork floor runs in a helper process (this binary
//! started again), which has a single thread when it forks.
//!
//! This binary is re-executed four ways: as a shepherd of the executor
//! (`ISOLATED_EXECUTOR_SHEPHERD_FD` set), as a procspawn child
//! (`__PROCSPAWN_CONTENT_PROCESS_ID` set), as a rusty-fork child
//! (`RUSTY_FORK_OCCURS` set) and as the floor helper
//! (`ISOLATED_BENCH_FLOOR_RUNS` set). Each hook at the top of `main` diverts
//! only on its own variable, so their order does not matter.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use isolated_bench::{
    Samples, measure_fork_floor, megabytes_per_second, micros, millis, ratio, time_each,
};
use isolated_executor::{
    Context, Handler, IsolationError, Supervisor, SupervisorConfig, defaults, execute_isolated,
    execute_isolated_report,
};
use serde::{Deserialize, Serialize};

/// Adds one to its argument: the smallest useful execution.
#[derive(Serialize, Deserialize)]
struct Increment;

impl Handler for Increment {
    type Args = u64;
    type Output = u64;
    type Error = String;
    fn execute(&self, value: u64, _: &Context) -> Result<u64, String> {
        Ok(value + 1)
    }
}

/// Sleeps for the given milliseconds, so the timeout fires first.
#[derive(Serialize, Deserialize)]
struct Sleep;

impl Handler for Sleep {
    type Args = u64;
    type Output = ();
    type Error = String;
    fn execute(&self, millis: u64, _: &Context) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(millis));
        Ok(())
    }
}

/// Takes a large argument and returns its length and the XOR of its first
/// and last byte, so the bytes are known to have arrived.
#[derive(Serialize, Deserialize)]
struct Consume;

impl Handler for Consume {
    type Args = Vec<u8>;
    type Output = (u64, u8);
    type Error = String;
    fn execute(&self, bytes: Vec<u8>, _: &Context) -> Result<(u64, u8), String> {
        let edge = bytes.first().copied().unwrap_or(0) ^ bytes.last().copied().unwrap_or(0);
        Ok((bytes.len() as u64, edge))
    }
}

/// Returns a vector of the requested length.
#[derive(Serialize, Deserialize)]
struct Produce;

impl Handler for Produce {
    type Args = u64;
    type Output = Vec<u8>;
    type Error = String;
    fn execute(&self, len: u64, _: &Context) -> Result<Vec<u8>, String> {
        Ok(vec![0x5a; len as usize])
    }
}

/// Adds one to its argument: procspawn's counterpart of `Increment`.
fn increment(value: u64) -> u64 {
    value + 1
}

/// Runs one rusty-fork child that does nothing and waits for it. The child
/// is this binary re-executed with `RUSTY_FORK_OCCURS` set. `main` calls
/// this function again there, and the same call site gives the same fork
/// id, so rusty-fork runs the empty closure and exits the child.
fn rusty_fork_trivial() {
    let status = rusty_fork::fork(
        "isolated_bench_rusty_fork_trivial",
        rusty_fork::rusty_fork_id!(),
        |_| {},
        |child, _| child.wait(),
        || {},
    )
    .expect("rusty-fork failed to start its child")
    .expect("waiting for the rusty-fork child failed");
    assert!(status.success(), "rusty-fork child ended with {status}");
}

/// Environment variable that makes this binary measure the fork floor and
/// print one duration in nanoseconds per line.
const ENV_FLOOR_RUNS: &str = "ISOLATED_BENCH_FLOOR_RUNS";

/// Measures `runs` forks after a warm-up of a tenth as many and prints each
/// duration in nanoseconds. Runs in the helper process only.
fn floor_helper(runs: usize) -> ! {
    let samples = measure_fork_floor(runs / 10, runs).expect("fork floor");
    let mut out = std::io::stdout().lock();
    for sample in samples.iter() {
        writeln!(out, "{}", sample.as_nanos()).expect("writing a floor sample");
    }
    out.flush().expect("flushing the floor samples");
    std::process::exit(0);
}

/// Runs the floor helper and returns its samples.
fn floor_in_helper(runs: usize) -> Vec<Duration> {
    let exe = std::env::current_exe().expect("current_exe");
    let output = std::process::Command::new(exe)
        .env(ENV_FLOOR_RUNS, runs.to_string())
        .output()
        .expect("starting the floor helper");
    assert!(
        output.status.success(),
        "the floor helper failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("floor helper output")
        .lines()
        .map(|line| Duration::from_nanos(line.parse().expect("a floor sample")))
        .collect()
}

const DATA_LEN: usize = 64 << 20;
const FLOOR: &str = "fork + _exit + waitpid (floor)";
const COMMAND: &str = "Command::new(\"/bin/true\").status()";
const SEQUENTIAL: &str = "isolated, sequential (default options)";
const NO_BUDGET: &str = "isolated, sequential, no heap budget";
const PROCSPAWN: &str = "procspawn spawn + join";
const RUSTY_FORK: &str = "rusty-fork fork + wait";
/// Row order of the latency table.
const ROWS: [&str; 6] = [FLOOR, COMMAND, SEQUENTIAL, NO_BUDGET, PROCSPAWN, RUSTY_FORK];

struct Settings {
    quick: bool,
    only: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> Self {
        let quick = std::env::var_os("ISOLATED_BENCH_QUICK").is_some_and(|v| v != "0");
        let only = std::env::var("ISOLATED_BENCH_ONLY")
            .ok()
            .map(|list| list.split(',').map(|s| s.trim().to_owned()).collect());
        Settings { quick, only }
    }

    /// `full` runs, or about a fifth of them in quick mode.
    fn runs(&self, full: usize) -> usize {
        if self.quick { (full / 5).max(3) } else { full }
    }

    fn rounds(&self) -> usize {
        if self.quick { 2 } else { 10 }
    }

    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == section))
    }
}

fn main() {
    isolated_executor::init();
    procspawn::init();
    if std::env::var_os("RUSTY_FORK_OCCURS").is_some() {
        rusty_fork_trivial();
        unreachable!("rusty-fork exits its child after the closure");
    }
    if let Ok(runs) = std::env::var(ENV_FLOOR_RUNS) {
        floor_helper(runs.parse().expect("ISOLATED_BENCH_FLOOR_RUNS is a count"));
    }

    let settings = Settings::from_env();
    print_machine();

    // Must be the first isolated execution of this process.
    if settings.wants("startup") {
        startup(&settings);
    }

    let mut samples: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut parallel = Throughput::default();
    for _ in 0..settings.rounds() {
        measure_round(&settings, &mut samples, &mut parallel);
    }
    let samples: BTreeMap<&str, Samples> = samples
        .into_iter()
        .map(|(name, values)| (name, Samples::new(values)))
        .collect();
    print_latency_table(&samples, &parallel);

    if settings.wants("timeout") {
        timeout_precision(&settings);
    }
    if settings.wants("data") {
        data_rates(&settings);
    }
    println!();
    println!("load average at the end: {}", load_average());
}

/// Prints what the figures were measured on.
fn print_machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .map(|rest| rest.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cpus} CPUs ({model}), {memory} memory, Linux {}",
        kernel.trim()
    );
    println!("load average at the start: {}", load_average());
    println!();
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Wall time of parallel executions, summed over rounds.
#[derive(Default)]
struct Throughput {
    callers: usize,
    executions: u32,
    wall: Duration,
}

/// Measures every latency figure once.
fn measure_round(
    settings: &Settings,
    samples: &mut BTreeMap<&'static str, Vec<Duration>>,
    parallel: &mut Throughput,
) {
    samples
        .entry(FLOOR)
        .or_default()
        .extend(floor_in_helper(settings.runs(500)));

    if settings.wants("command") {
        let measured = time_each(5, settings.runs(50), || {
            let status = std::process::Command::new("/bin/true")
                .status()
                .expect("running /bin/true");
            assert!(status.success());
        });
        samples.entry(COMMAND).or_default().extend(measured.iter());
    }

    if settings.wants("sequential") {
        for (name, options) in [
            (SEQUENTIAL, defaults()),
            (NO_BUDGET, defaults().max_heap_size(None)),
        ] {
            let measured = time_each(settings.runs(50), settings.runs(500), || {
                assert_eq!(
                    execute_isolated(&Increment, 41, &Context::new(), &options),
                    Ok(42)
                );
            });
            samples.entry(name).or_default().extend(measured.iter());
        }
    }

    if settings.wants("parallel") {
        let (callers, executions, wall) = parallel_round(settings.runs(500));
        parallel.callers = callers;
        parallel.executions += executions;
        parallel.wall += wall;
    }

    if settings.wants("peers") {
        let measured = time_each(2, settings.runs(20), || {
            let result = procspawn::spawn(41u64, increment).join();
            assert_eq!(result.expect("procspawn join"), 42);
        });
        samples
            .entry(PROCSPAWN)
            .or_default()
            .extend(measured.iter());

        let measured = time_each(2, settings.runs(20), rusty_fork_trivial);
        samples
            .entry(RUSTY_FORK)
            .or_default()
            .extend(measured.iter());
    }
}

/// Runs `Increment` `per_caller` times from each of two threads at once and
/// returns the number of callers, of executions and the wall time.
fn parallel_round(per_caller: usize) -> (usize, u32, Duration) {
    const CALLERS: usize = 2;
    let run = |count: usize| {
        std::thread::scope(|scope| {
            for _ in 0..CALLERS {
                scope.spawn(|| {
                    let options = defaults();
                    for i in 0..count as u64 {
                        assert_eq!(
                            execute_isolated(&Increment, i, &Context::new(), &options),
                            Ok(i + 1)
                        );
                    }
                });
            }
        });
    };
    // The warm-up also starts the second shepherd of the global pool.
    run(per_caller / 10 + 1);
    let start = Instant::now();
    run(per_caller);
    (CALLERS, (CALLERS * per_caller) as u32, start.elapsed())
}

fn print_latency_table(samples: &BTreeMap<&str, Samples>, parallel: &Throughput) {
    let floor = &samples[FLOOR];
    println!(
        "| {:<46} | {:>5} | {:>8} | {:>8} | {:>8} | {:>8} | {:>11} | {:>10} |",
        "figure (µs per execution)", "n", "mean", "p50", "p90", "p99", "mean/floor", "p50/floor"
    );
    println!(
        "|{:-<48}|{:->7}|{:->10}|{:->10}|{:->10}|{:->10}|{:->13}|{:->12}|",
        "", "", "", "", "", "", "", ""
    );
    for name in ROWS {
        let Some(s) = samples.get(name) else {
            continue;
        };
        println!(
            "| {:<46} | {:>5} | {:>8} | {:>8} | {:>8} | {:>8} | {:>11} | {:>10} |",
            name,
            s.len(),
            micros(s.mean()),
            micros(s.percentile(50.0)),
            micros(s.percentile(90.0)),
            micros(s.percentile(99.0)),
            ratio(s.mean(), floor.mean()),
            ratio(s.percentile(50.0), floor.percentile(50.0)),
        );
    }
    if parallel.executions > 0 {
        let per_execution = parallel.wall / parallel.executions;
        println!(
            "| {:<46} | {:>5} | {:>8} | {:>8} | {:>8} | {:>8} | {:>11} | {:>10} |",
            format!("isolated, {} callers: wall / executions", parallel.callers),
            parallel.executions,
            micros(per_execution),
            "",
            "",
            "",
            ratio(per_execution, floor.mean()),
            "",
        );
        if let Some(sequential) = samples.get(SEQUENTIAL) {
            println!();
            println!(
                "parallel throughput / sequential throughput (means): {:.2}x",
                sequential.mean().as_secs_f64() / per_execution.as_secs_f64()
            );
        }
    }
    if let (Some(sequential), Some(procspawn)) = (samples.get(SEQUENTIAL), samples.get(PROCSPAWN)) {
        println!(
            "procspawn spawn + join / isolated sequential: {:.1}x (means), {:.1}x (p50)",
            procspawn.mean().as_secs_f64() / sequential.mean().as_secs_f64(),
            procspawn.percentile(50.0).as_secs_f64() / sequential.percentile(50.0).as_secs_f64()
        );
    }
}

/// Measures the first execution through a supervisor, which starts its
/// shepherd, and `Supervisor::start` with eight prestarted shepherds.
fn startup(settings: &Settings) {
    println!("start-up");

    // The very first call of the process also starts the spawner thread.
    let start = Instant::now();
    assert_eq!(
        execute_isolated(&Increment, 1, &Context::new(), &defaults()),
        Ok(2)
    );
    println!(
        "  first call of the process (global supervisor): {} ms",
        millis(start.elapsed())
    );

    let mut first_calls = Vec::new();
    for _ in 0..settings.runs(20) {
        let supervisor = Supervisor::start(SupervisorConfig::default()).expect("supervisor");
        let options = defaults().supervisor(supervisor.clone());
        let start = Instant::now();
        assert_eq!(
            execute_isolated(&Increment, 1, &Context::new(), &options),
            Ok(2)
        );
        first_calls.push(start.elapsed());
        supervisor.shutdown();
    }
    let first_calls = Samples::new(first_calls);
    println!(
        "  first call through a new supervisor (n={}): mean {} ms, p50 {} ms, max {} ms",
        first_calls.len(),
        millis(first_calls.mean()),
        millis(first_calls.percentile(50.0)),
        millis(first_calls.max())
    );

    let mut starts = Vec::new();
    for _ in 0..settings.runs(10) {
        let config = SupervisorConfig {
            max_children: 8,
            prestart: 8,
            ..SupervisorConfig::default()
        };
        let start = Instant::now();
        let supervisor = Supervisor::start(config).expect("supervisor with prestart 8");
        starts.push(start.elapsed());
        assert_eq!(supervisor.idle_shepherd_pids().len(), 8);
        supervisor.shutdown();
    }
    let starts = Samples::new(starts);
    println!(
        "  Supervisor::start with prestart 8 (n={}): mean {} ms, p50 {} ms, max {} ms",
        starts.len(),
        millis(starts.mean()),
        millis(starts.percentile(50.0)),
        millis(starts.max())
    );
    println!();
}

/// How late a 50 ms timeout with no grace period returns.
fn timeout_precision(settings: &Settings) {
    const TIMEOUT: Duration = Duration::from_millis(50);
    let options = defaults().timeout(TIMEOUT).shutdown_grace(Duration::ZERO);
    let mut caller_late = Vec::new();
    let mut shepherd_late = Vec::new();
    for _ in 0..settings.runs(200) {
        let report = execute_isolated_report(&Sleep, 10_000, &Context::new(), &options);
        assert!(
            matches!(report.outcome, Err(IsolationError::Timeout { .. })),
            "expected a timeout, got {:?}",
            report.outcome
        );
        caller_late.push(report.duration.saturating_sub(TIMEOUT));
        shepherd_late.push(report.child_duration.saturating_sub(TIMEOUT));
    }
    println!();
    println!("timeout precision: 50 ms timeout, zero grace, the handler sleeps 10 s");
    for (name, samples) in [
        (
            "  call returned, after the timeout",
            Samples::new(caller_late),
        ),
        (
            "  child reaped by the shepherd, after the timeout",
            Samples::new(shepherd_late),
        ),
    ] {
        println!(
            "{name} (n={}): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            samples.len(),
            millis(samples.percentile(50.0)),
            millis(samples.percentile(90.0)),
            millis(samples.percentile(99.0)),
            millis(samples.max())
        );
    }
}

/// Rates of a 64 MiB argument and a 64 MiB result, whole calls included.
fn data_rates(settings: &Settings) {
    let options = defaults().max_heap_size(None);
    let template: Vec<u8> = (0..DATA_LEN).map(|i| i as u8).collect();
    let expected_edge = template[0] ^ template[DATA_LEN - 1];

    let mut argument = Vec::new();
    for round in 0..settings.runs(10) + 1 {
        let bytes = template.clone();
        let start = Instant::now();
        let result = execute_isolated(&Consume, bytes, &Context::new(), &options);
        let elapsed = start.elapsed();
        assert_eq!(result, Ok((DATA_LEN as u64, expected_edge)));
        // The first round is a warm-up.
        if round > 0 {
            argument.push(elapsed);
        }
    }

    let mut result = Vec::new();
    for round in 0..settings.runs(10) + 1 {
        let start = Instant::now();
        let output = execute_isolated(&Produce, DATA_LEN as u64, &Context::new(), &options)
            .expect("64 MiB result");
        let elapsed = start.elapsed();
        assert_eq!(output.len(), DATA_LEN);
        assert!(output.iter().all(|&b| b == 0x5a));
        if round > 0 {
            result.push(elapsed);
        }
    }

    println!();
    println!("data: 64 MiB Vec<u8>, max_heap_size(None), whole call timed, MB = 10^6 bytes");
    for (name, samples) in [
        ("  argument", Samples::new(argument)),
        ("  result", Samples::new(result)),
    ] {
        println!(
            "{name} (n={}): mean {} ms ({:.0} MB/s), p50 {} ms ({:.0} MB/s), max {} ms",
            samples.len(),
            millis(samples.mean()),
            megabytes_per_second(DATA_LEN as u64, samples.mean()),
            millis(samples.percentile(50.0)),
            megabytes_per_second(DATA_LEN as u64, samples.percentile(50.0)),
            millis(samples.max()),
        );
    }
}
