//! The handler child: everything between `fork()` in the shepherd and the
//! call of the handler's trampoline, plus the signal handlers it installs.
//!
//! The shepherd is single-threaded, so the child could allocate safely.
//! Still, the setup below makes only async-signal-safe system calls and
//! leaves with `_exit` on any failure, so it stays sound if that ever
//! changes. The trampoline that follows is ordinary Rust. The fault handler
//! runs inside a signal and touches nothing but atomics, `write` and
//! `raise`.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

use crate::child::{ChildCall, Trampoline};
use crate::protocol::record;

/// The fd the child writes its records to.
pub const RESULT_FD: RawFd = 3;
/// Exit code of a child whose setup failed.
pub const SETUP_FAILED: i32 = 121;

/// Fds and limits the child needs, prepared by the shepherd before `fork`.
pub struct ChildSetup<'a> {
    /// The shepherd's pid, checked against `getppid()`.
    pub shepherd_pid: libc::pid_t,
    /// `/dev/null`, opened for reading, becomes stdin.
    pub devnull: RawFd,
    /// Write end of the stdout capture pipe.
    pub stdout: RawFd,
    /// Write end of the stderr capture pipe.
    pub stderr: RawFd,
    /// Write end of the result pipe.
    pub result: RawFd,
    /// The heap budget in bytes.
    pub max_heap_size: Option<u64>,
    /// Signals the child must reset, from [`non_default_signals`].
    pub non_default_signals: u64,
    /// The shepherd's data size at start-up, from which the child computes
    /// its own; `None` makes it read procfs.
    pub data_baseline: Option<DataBaseline>,
    /// `type_name` of the requested handler.
    pub handler_type: &'a str,
    /// The encoded handler, arguments and context.
    pub payload: &'a [u8],
}

/// Lowest address the main thread's stack may grow to, estimated before the
/// handler runs; 0 when unknown.
static STACK_LOW: AtomicUsize = AtomicUsize::new(0);

/// Writes a failure record with a static message and leaves.
fn fail(fd: RawFd, message: &'static [u8]) -> ! {
    let mut header = [0u8; record::HEADER_LEN];
    header[0] = record::FAILURE;
    header[1..].copy_from_slice(&(message.len() as u64).to_le_bytes());
    write_all_raw(fd, &header);
    write_all_raw(fd, message);
    // SAFETY: _exit ends the process without running any Rust or libc
    // cleanup, which is what a half-set-up child must do.
    unsafe { libc::_exit(SETUP_FAILED) }
}

/// Writes a record to the result pipe.
fn write_result(bytes: &[u8]) {
    write_all_raw(RESULT_FD, bytes);
}

/// `write` until done or an error, without allocating.
fn write_all_raw(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return;
        }
    }
}

/// Runs in the child right after `fork()`. Never returns.
pub fn run(setup: &ChildSetup<'_>, trampoline: Trampoline) -> ! {
    let result = setup.result;

    // Own process group, so a timeout can signal the child and everything it
    // starts at once.
    // SAFETY: setpgid with integer arguments.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        fail(result, b"setpgid failed in the child");
    }

    // Die with the shepherd, and catch the case where it already died
    // between fork and prctl.
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        fail(result, b"PR_SET_PDEATHSIG failed in the child");
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != setup.shepherd_pid {
        // SAFETY: see `fail`.
        unsafe { libc::_exit(SETUP_FAILED) };
    }

    harden();
    reset_signals(setup.non_default_signals);
    arrange_fds(setup);
    install_fault_handler();

    if let Some(budget) = setup.max_heap_size {
        HEAP_BUDGET.store(budget, Ordering::Relaxed);
        if let Some(baseline) = setup.data_baseline {
            BASELINE_DATA.store(baseline.data_bytes, Ordering::Relaxed);
            BASELINE_MALLOC.store(baseline.malloc_bytes, Ordering::Relaxed);
        }
    }
    let call = ChildCall {
        handler_type: setup.handler_type,
        payload: setup.payload,
        apply_heap_budget,
        lift_heap_budget,
        write_record: write_result,
    };
    let record_bytes = trampoline(&call);

    if !record_bytes.is_empty() {
        write_all_raw(RESULT_FD, &record_bytes);
    }
    let _ = std::io::stdout().flush();
    // SAFETY: the result is written; _exit skips atexit handlers, so the
    // exit marker is only written when the handler itself calls exit.
    unsafe { libc::_exit(0) }
}

/// Core dumps off and no privilege gain through exec.
fn harden() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Size of the kernel's signal set, the last argument of `rt_sigaction`.
const KERNEL_SIGSET_SIZE: usize = 8;

/// Returns the signals, as bit `n - 1` for signal `n`, whose disposition is
/// not the default: ignored, caught, or set with flags.
///
/// The shepherd calls this once at start-up and changes no disposition
/// afterwards, so each child resets only these signals instead of all 62.
/// It uses the raw system call, because glibc's `sigaction` rejects 32 and
/// 33, which glibc reserves, and those stay ignored across `exec` if the
/// caller ignored them.
pub fn non_default_signals() -> u64 {
    let mut set = 0;
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let mut current = [0u64; 4];
        // SAFETY: `current` is writable for 32 bytes, at least the size of
        // the kernel's sigaction on every 64-bit Linux, and no new action
        // is given.
        let queried = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                std::ptr::null::<u64>(),
                current.as_mut_ptr(),
                KERNEL_SIGSET_SIZE,
            )
        };
        // All zero is SIG_DFL with no flags and an empty mask, whatever the
        // field order of the architecture. Anything else is reset.
        if queried != 0 || current != [0; 4] {
            set |= 1 << (signal - 1);
        }
    }
    set
}

/// Default dispositions for every signal and an empty mask, so nothing the
/// caller blocked or ignored reaches the handler. `non_default` comes from
/// [`non_default_signals`] in the shepherd.
fn reset_signals(non_default: u64) {
    let default_action = [0u64; 4];
    for signal in 1..=64 {
        if non_default & (1 << (signal - 1)) == 0 {
            continue;
        }
        // SAFETY: `default_action` is readable for 32 bytes, at least the
        // size of the kernel's sigaction on every 64-bit Linux, and the old
        // action is not requested.
        let reset = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default_action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                KERNEL_SIGSET_SIZE,
            )
        };
        if reset != 0 {
            // SAFETY: SIG_DFL is valid for every signal that glibc accepts;
            // this covers kernels whose signal set is not 8 bytes.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    // SAFETY: `set` is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// stdin from /dev/null, stdout and stderr into the capture pipes, the
/// result pipe on fd 3, and every other fd closed.
fn arrange_fds(setup: &ChildSetup<'_>) {
    // Move the sources above the targets first, so no dup2 overwrites a
    // source that happens to sit on a target number.
    let sources = [setup.devnull, setup.stdout, setup.stderr, setup.result];
    let mut moved = [0; 4];
    for (slot, source) in moved.iter_mut().zip(sources) {
        // SAFETY: fcntl duplicates an fd we own.
        let fd = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, 10) };
        if fd < 0 {
            fail(setup.result, b"F_DUPFD_CLOEXEC failed in the child");
        }
        *slot = fd;
    }
    for (target, source) in moved.iter().enumerate() {
        // SAFETY: dup2 onto a small fixed number; this also clears CLOEXEC.
        if unsafe { libc::dup2(*source, target as RawFd) } < 0 {
            fail(moved[3], b"dup2 failed in the child");
        }
    }
    // The result fd must not survive exec, so a program exec'd by the
    // handler cannot write records.
    // SAFETY: fcntl with an int argument.
    unsafe { libc::fcntl(RESULT_FD, libc::F_SETFD, libc::FD_CLOEXEC) };

    // SAFETY: close_range closes fds we own; no Rust object refers to them in
    // the child, because the shepherd's OwnedFds are never dropped here.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    if closed != 0 {
        for fd in 4..65536 {
            // SAFETY: as above; closing an unused number fails harmlessly.
            unsafe { libc::close(fd) };
        }
    }
}

const STACK_OVERFLOW_MESSAGE: &[u8] = b"\nisolated-executor: the handler overflowed its stack\n";
const ALT_STACK_SIZE: usize = 64 << 10;

/// Installs the SIGSEGV and SIGBUS handler on an alternate stack, so it can
/// run when the main stack is exhausted.
///
/// NOTE: only the child's main thread, where the handler runs, gets the
/// alternate stack. std sets one up for new threads only after its own
/// runtime start-up, which the shepherd skips. So a stack overflow in a
/// thread the handler spawns is reported as `Signal` (SIGSEGV), not
/// `StackOverflow`.
fn install_fault_handler() {
    // Estimate the lowest address of the main stack: the current stack
    // pointer minus RLIMIT_STACK.
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
    {
        STACK_LOW.store(
            sp.saturating_sub(limit.rlim_cur as usize),
            Ordering::Relaxed,
        );
    }

    // SAFETY: an anonymous private mapping, checked for failure; it lives
    // until the child exits.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ALT_STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return;
    }
    ALT_STACK_MAPPED.store(true, Ordering::Relaxed);
    let alt = libc::stack_t {
        ss_sp: stack,
        ss_flags: 0,
        ss_size: ALT_STACK_SIZE,
    };
    // SAFETY: `alt` describes the mapping above.
    unsafe { libc::sigaltstack(&alt, std::ptr::null_mut()) };

    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: `action` is zeroed and then filled; the handler has the
        // three-argument form that SA_SIGINFO requires.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Reads the interrupted stack pointer from the signal context.
///
/// # Safety
///
/// `context` must be the `ucontext_t` pointer passed to an SA_SIGINFO handler.
unsafe fn stack_pointer(context: *mut libc::c_void) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: by the contract, `context` points to a valid ucontext_t.
        let uc = unsafe { &*(context as *const libc::ucontext_t) };
        uc.uc_mcontext.gregs[libc::REG_RSP as usize] as usize
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: by the contract, `context` points to a valid ucontext_t.
        let uc = unsafe { &*(context as *const libc::ucontext_t) };
        uc.uc_mcontext.sp as usize
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = context;
        0
    }
}

/// SIGSEGV and SIGBUS handler. Async-signal-safe: it reads the fault
/// address, writes the stack-overflow marker when the fault is next to the
/// stack pointer or below the main stack's limit, and re-raises the signal
/// with the default disposition so the child dies of it.
extern "C" fn on_fault(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes valid siginfo and ucontext pointers to an
    // SA_SIGINFO handler.
    let (code, address, sp) = unsafe {
        (
            (*info).si_code,
            (*info).si_addr() as usize,
            stack_pointer(context),
        )
    };
    let near_sp = sp != 0 && address.abs_diff(sp) <= 64 << 10;
    let low = STACK_LOW.load(Ordering::Relaxed);
    let near_limit =
        low != 0 && address >= low.saturating_sub(2 << 20) && address < low + (1 << 20);
    // A positive si_code means the kernel raised the fault, not kill(2).
    if code > 0 && (near_sp || near_limit) {
        let mut marker = [0u8; record::HEADER_LEN];
        marker[0] = record::STACK_OVERFLOW;
        write_all_raw(RESULT_FD, &marker);
        write_all_raw(2, STACK_OVERFLOW_MESSAGE);
    }
    // SAFETY: signal and raise are async-signal-safe. The raised signal stays
    // pending until this handler returns and then kills the process.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// The shepherd's pid, set by [`prepare_shepherd`]; the exit marker is
/// written only by other processes, which are its children.
static SHEPHERD_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_exit() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == SHEPHERD_PID.load(Ordering::Relaxed) {
        return;
    }
    let mut marker = [0u8; record::HEADER_LEN];
    marker[0] = record::EXIT_CALLED;
    write_all_raw(RESULT_FD, &marker);
}

/// Sets up, once in the shepherd, what every child inherits instead of
/// setting it up itself: the `exit` marker (registered with `atexit`, which
/// `_exit` and `exec` skip), the panic hook, and stdout's buffer, which the
/// child flushes before it leaves. Each of these writes static data or
/// allocates, which costs a forked child a page fault per page touched.
pub fn prepare_shepherd() {
    SHEPHERD_PID.store(super::syscalls::getpid(), Ordering::Relaxed);
    // SAFETY: `on_exit` is a valid extern "C" fn with no arguments.
    unsafe { libc::atexit(on_exit) };
    crate::child::install_panic_hook(lift_heap_budget, restore_heap_budget);
    drop(std::io::stdout());
}

/// The heap budget of this child in bytes; `u64::MAX` when there is none.
static HEAP_BUDGET: AtomicU64 = AtomicU64::new(u64::MAX);
/// The `RLIMIT_DATA` soft limit set by `apply_heap_budget`; 0 before.
static HEAP_LIMIT: AtomicU64 = AtomicU64::new(0);
/// The [`DataBaseline`] the shepherd passed; `u64::MAX` when there is none.
static BASELINE_DATA: AtomicU64 = AtomicU64::new(u64::MAX);
static BASELINE_MALLOC: AtomicU64 = AtomicU64::new(0);
/// Whether the alternate signal stack, a data mapping the baseline does
/// not contain, was mapped.
static ALT_STACK_MAPPED: AtomicBool = AtomicBool::new(false);

/// Sets `RLIMIT_DATA` to the data size now plus the budget, so only what
/// the handler allocates from here on counts.
fn apply_heap_budget() {
    let budget = HEAP_BUDGET.load(Ordering::Relaxed);
    if budget == u64::MAX {
        return;
    }
    let current = computed_data_bytes()
        .or_else(current_data_bytes)
        .unwrap_or(0);
    let limit = current.saturating_add(budget);
    HEAP_LIMIT.store(limit, Ordering::Relaxed);
    let _ = super::syscalls::set_soft_limit(libc::RLIMIT_DATA, limit);
}

/// Raises `RLIMIT_DATA` to the hard limit.
fn lift_heap_budget() {
    if HEAP_LIMIT.load(Ordering::Relaxed) != 0 {
        let _ = super::syscalls::set_soft_limit(libc::RLIMIT_DATA, u64::MAX);
    }
}

/// Sets the limit computed by `apply_heap_budget` again.
fn restore_heap_budget() {
    let limit = HEAP_LIMIT.load(Ordering::Relaxed);
    if limit != 0 {
        let _ = super::syscalls::set_soft_limit(libc::RLIMIT_DATA, limit);
    }
}

/// The shepherd's `VmData` and the bytes glibc's malloc held from the
/// kernel, measured together at its start-up.
///
/// A child is a copy of the shepherd, and after start-up neither maps
/// private writable memory except through malloc, apart from the child's
/// alternate signal stack. So the child's `VmData` is the baseline plus
/// what malloc gained since, which `mallinfo2` tells without a system call.
/// Reading `/proc/self/status` instead costs a fresh process about 35 us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBaseline {
    data_bytes: u64,
    malloc_bytes: u64,
}

impl DataBaseline {
    /// Measures the baseline, or returns `None` where the computation
    /// cannot be trusted: off glibc, when procfs cannot be read, or when
    /// Rust's global allocator does not take its memory from glibc's malloc
    /// (a 40 MiB allocation, above glibc's largest mmap threshold, must
    /// show up in `mallinfo2`).
    pub fn measure() -> Option<DataBaseline> {
        let before = malloc_bytes()?;
        // black_box keeps the compiler from removing the unused allocation.
        let probe: Vec<u8> = std::hint::black_box(Vec::with_capacity(40 << 20));
        let during = malloc_bytes()?;
        drop(probe);
        if during < before + (40 << 20) {
            return None;
        }
        // Back to the state before the probe, so nothing is counted twice.
        let malloc_bytes = malloc_bytes()?;
        let data_bytes = current_data_bytes()?;
        (malloc_bytes_unchanged(malloc_bytes)).then_some(DataBaseline {
            data_bytes,
            malloc_bytes,
        })
    }
}

/// Whether malloc's holdings still equal `expected`, so a procfs reading
/// taken in between belongs to the same state.
fn malloc_bytes_unchanged(expected: u64) -> bool {
    malloc_bytes() == Some(expected)
}

/// Bytes glibc's malloc holds from the kernel: its arenas' heaps plus the
/// chunks it mapped on their own.
#[cfg(target_env = "gnu")]
fn malloc_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 takes no arguments and only reads malloc's state.
    let info = unsafe { libc::mallinfo2() };
    Some((info.arena + info.hblkhd) as u64)
}

#[cfg(not(target_env = "gnu"))]
fn malloc_bytes() -> Option<u64> {
    None
}

/// Computes this child's `VmData` from the shepherd's [`DataBaseline`];
/// `None` without one.
fn computed_data_bytes() -> Option<u64> {
    let baseline = BASELINE_DATA.load(Ordering::Relaxed);
    if baseline == u64::MAX {
        return None;
    }
    let gained = malloc_bytes()? as i64 - BASELINE_MALLOC.load(Ordering::Relaxed) as i64;
    let alt_stack = if ALT_STACK_MAPPED.load(Ordering::Relaxed) {
        ALT_STACK_SIZE as i64
    } else {
        0
    };
    u64::try_from(baseline as i64 + gained + alt_stack).ok()
}

/// Reads `VmData` from `/proc/self/status`: the size of the private
/// writable mappings that `RLIMIT_DATA` counts, in bytes.
///
/// Plain reads into a stack buffer take two system calls. `read_to_string`
/// takes about ten, because procfs reports a file size of 0, and each
/// partial read of a procfs file runs its generator again.
fn current_data_bytes() -> Option<u64> {
    let mut file = std::fs::File::open("/proc/self/status").ok()?;
    // The whole file is about 1.4 KiB on Linux 6.18, and `VmData` comes
    // within its first 500 bytes.
    let mut buffer = [0u8; 4096];
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    vm_data_bytes(&buffer[..filled])
}

/// Parses the `VmData:` line of a `/proc/PID/status` text into bytes.
fn vm_data_bytes(status: &[u8]) -> Option<u64> {
    let line = status
        .split(|&byte| byte == b'\n')
        .find_map(|line| line.strip_prefix(b"VmData:"))?;
    let text = std::str::from_utf8(line).ok()?;
    let kib: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_data_parses_kib_line() {
        let status = b"Name:\texe\nVmPeak:\t  9000 kB\nVmData:\t    1532 kB\nVmStk:\t 132 kB\n";
        assert_eq!(vm_data_bytes(status), Some(1532 * 1024));
    }

    #[test]
    fn vm_data_missing_or_garbled_is_none() {
        assert_eq!(vm_data_bytes(b"Name:\texe\nVmStk:\t 132 kB\n"), None);
        assert_eq!(vm_data_bytes(b"VmData:\t lots kB\n"), None);
    }

    #[test]
    fn current_data_bytes_reads_this_process() {
        let bytes = current_data_bytes().expect("VmData of this process");
        assert!(bytes > 0);
        assert_eq!(bytes % 1024, 0);
    }
}
