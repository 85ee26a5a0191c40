//! Supervisors: pools of shepherd processes that bound how many children run
//! at once.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use crate::sys;

/// Settings of a [`Supervisor`].
///
/// ```
/// use isolated_executor::SupervisorConfig;
/// let config = SupervisorConfig { max_children: 4, ..Default::default() };
/// assert_eq!(config.max_children, 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Maximum number of children running at once; each runs in its own
    /// shepherd, so this is also the maximum number of shepherds. Further
    /// calls wait in FIFO order. Default: twice the available parallelism,
    /// at least 4.
    pub max_children: usize,
    /// Shepherds started by [`Supervisor::start`] before it returns, at most
    /// `max_children`; the rest start on demand. Default: 0.
    pub prestart: usize,
    /// Time a new shepherd has to send its handshake. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Time past an execution's timeout and grace period after which the
    /// caller gives up on a shepherd that sent no report and kills it.
    /// Default: 10 s.
    pub report_margin: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        SupervisorConfig {
            max_children: (parallelism * 2).max(4),
            prestart: 0,
            handshake_timeout: Duration::from_secs(10),
            report_margin: Duration::from_secs(10),
        }
    }
}

/// A pool of shepherd processes that runs executions, at most
/// `max_children` at once. Cloning is cheap and every clone controls the
/// same pool.
///
/// Most callers use [`Supervisor::global()`] through the default
/// [`Options`](crate::Options); start a separate one to bound a group of
/// executions on its own or to shut it down independently.
///
/// # Caveats
///
/// Shepherds are started from one long-lived thread of the calling process,
/// because the kernel's parent-death signal follows the thread that forked
/// a process. They die with the calling process.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("Supervisor")
            .field("max_children", &self.inner.config.max_children)
            .field("running", &state.running)
            .field("idle", &state.idle.len())
            .field("waiting", &state.waiters.len())
            .field("shut_down", &state.shut_down)
            .finish()
    }
}

struct Inner {
    config: SupervisorConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    shut_down: bool,
    /// Permits in use: executions admitted and not finished.
    running: usize,
    idle: Vec<sys::Shepherd>,
    waiters: VecDeque<Arc<Waiter>>,
    busy: HashMap<u64, Busy>,
    next_ticket: u64,
}

struct Busy {
    canceller: sys::Canceller,
    /// The request is fully written, so a cancel may follow it.
    sent: bool,
    cancel_requested: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Grant {
    Waiting,
    Granted,
    ShutDown,
}

struct Waiter {
    grant: Mutex<Grant>,
    ready: Condvar,
    waker: Mutex<Option<Waker>>,
}

impl Waiter {
    fn new() -> Arc<Self> {
        Arc::new(Waiter {
            grant: Mutex::new(Grant::Waiting),
            ready: Condvar::new(),
            waker: Mutex::new(None),
        })
    }

    fn set(&self, grant: Grant) {
        *lock(&self.grant) = grant;
        self.ready.notify_all();
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }

    fn get(&self) -> Grant {
        *lock(&self.grant)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

const SHUT_DOWN: &str = "the supervisor was shut down; start a new one with Supervisor::start";

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Hands a finished execution's permit to the next waiter, or frees it.
    fn release(&self) {
        let mut state = self.lock();
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.get() == Grant::Waiting {
                waiter.set(Grant::Granted);
                return;
            }
        }
        state.running = state.running.saturating_sub(1);
    }
}

/// The right to run one execution, returned to the pool on drop.
pub(crate) struct Permit {
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl Supervisor {
    /// Starts a supervisor with its own pool of shepherds.
    ///
    /// # Errors
    ///
    /// Returns `InvalidInput` when `max_children` is 0 or `prestart` exceeds
    /// it, and the startup error of a prestarted shepherd (for example a
    /// missing entry hook).
    pub fn start(config: SupervisorConfig) -> std::io::Result<Supervisor> {
        if config.max_children == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "SupervisorConfig::max_children is 0; set it to 1 or more",
            ));
        }
        if config.prestart > config.max_children {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "SupervisorConfig::prestart is {} but max_children is {}; lower prestart",
                    config.prestart, config.max_children
                ),
            ));
        }
        let supervisor = Supervisor {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
            }),
        };
        for _ in 0..supervisor.inner.config.prestart {
            let shepherd = sys::start_shepherd(supervisor.inner.config.handshake_timeout)
                .map_err(std::io::Error::other)?;
            supervisor.inner.lock().idle.push(shepherd);
        }
        Ok(supervisor)
    }

    /// Returns the process-wide supervisor with the default configuration,
    /// started on first use. Shepherds start lazily, on the first execution.
    pub fn global() -> &'static Supervisor {
        static GLOBAL: OnceLock<Supervisor> = OnceLock::new();
        GLOBAL.get_or_init(|| Supervisor {
            inner: Arc::new(Inner {
                config: SupervisorConfig::default(),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Returns the configuration the supervisor was started with.
    pub fn config(&self) -> &SupervisorConfig {
        &self.inner.config
    }

    /// Returns whether new executions can run: false after
    /// [`shutdown`](Self::shutdown) and on platforms other than Linux.
    pub fn is_available(&self) -> bool {
        sys::SUPPORTED && !self.inner.lock().shut_down
    }

    /// Stops the supervisor. New executions return `Unavailable` at once,
    /// callers waiting for a free shepherd get `Unavailable`, running
    /// children are terminated (SIGTERM, the execution's grace period, then
    /// SIGKILL) and their callers get `Unavailable`, and idle shepherds are
    /// killed and reaped. Returns without waiting for running executions.
    /// Calling it again does nothing.
    pub fn shutdown(&self) {
        let (idle, to_cancel) = {
            let mut state = self.inner.lock();
            state.shut_down = true;
            for waiter in state.waiters.drain(..) {
                waiter.set(Grant::ShutDown);
            }
            let mut to_cancel = Vec::new();
            for busy in state.busy.values_mut() {
                if busy.sent {
                    to_cancel.push(busy.canceller.clone());
                } else {
                    busy.cancel_requested = true;
                }
            }
            (std::mem::take(&mut state.idle), to_cancel)
        };
        for canceller in to_cancel {
            canceller.cancel();
        }
        drop(idle);
    }

    /// Pids of the shepherd processes that are idle now.
    pub fn idle_shepherd_pids(&self) -> Vec<u32> {
        self.inner.lock().idle.iter().map(|s| s.pid).collect()
    }

    /// Waits, blocking, for the right to run one execution.
    pub(crate) fn acquire_blocking(&self) -> Result<Permit, String> {
        let waiter = {
            let mut state = self.inner.lock();
            if state.shut_down {
                return Err(SHUT_DOWN.into());
            }
            if state.waiters.is_empty() && state.running < self.inner.config.max_children {
                state.running += 1;
                return Ok(self.permit());
            }
            let waiter = Waiter::new();
            state.waiters.push_back(Arc::clone(&waiter));
            waiter
        };
        let mut grant = lock(&waiter.grant);
        while *grant == Grant::Waiting {
            grant = waiter.ready.wait(grant).unwrap_or_else(|e| e.into_inner());
        }
        match *grant {
            Grant::Granted => Ok(self.permit()),
            _ => Err(SHUT_DOWN.into()),
        }
    }

    /// Waits, without blocking the thread, for the right to run one execution.
    pub(crate) fn acquire(&self) -> Acquire {
        Acquire {
            supervisor: self.clone(),
            waiter: None,
        }
    }

    fn permit(&self) -> Permit {
        Permit {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Takes an idle shepherd, if there is one.
    pub(crate) fn take_idle(&self) -> Option<sys::Shepherd> {
        self.inner.lock().idle.pop()
    }

    /// Returns a healthy shepherd to the pool; after shutdown it is killed.
    pub(crate) fn put_back(&self, shepherd: sys::Shepherd) {
        let mut state = self.inner.lock();
        if state.shut_down {
            drop(state);
            drop(shepherd);
        } else {
            state.idle.push(shepherd);
        }
    }

    /// Records a running execution so `shutdown` can cancel it. Fails after
    /// shutdown.
    pub(crate) fn register(&self, canceller: sys::Canceller) -> Result<u64, String> {
        let mut state = self.inner.lock();
        if state.shut_down {
            return Err(SHUT_DOWN.into());
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.busy.insert(
            ticket,
            Busy {
                canceller,
                sent: false,
                cancel_requested: false,
            },
        );
        Ok(ticket)
    }

    /// Marks the request of `ticket` as fully sent, and sends the cancel that
    /// a shutdown requested in the meantime.
    pub(crate) fn mark_sent(&self, ticket: u64) {
        let mut state = self.inner.lock();
        let shut_down = state.shut_down;
        if let Some(busy) = state.busy.get_mut(&ticket) {
            busy.sent = true;
            if busy.cancel_requested || shut_down {
                busy.canceller.cancel();
            }
        }
    }

    /// Forgets a finished execution.
    pub(crate) fn unregister(&self, ticket: u64) {
        self.inner.lock().busy.remove(&ticket);
    }

    /// Returns whether the supervisor was shut down.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.inner.lock().shut_down
    }
}

/// Returns whether `supervisor` can run new executions; the same as
/// [`Supervisor::is_available`].
pub fn supervisor_available(supervisor: &Supervisor) -> bool {
    supervisor.is_available()
}

/// Future of [`Supervisor::acquire`]. Dropping it leaves the queue, and
/// passes on a permit it was granted but never used.
pub(crate) struct Acquire {
    supervisor: Supervisor,
    waiter: Option<Arc<Waiter>>,
}

impl Future for Acquire {
    type Output = Result<Permit, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        if let Some(waiter) = &self.waiter {
            *lock(&waiter.waker) = Some(cx.waker().clone());
            return match waiter.get() {
                Grant::Waiting => Poll::Pending,
                Grant::Granted => {
                    self.waiter = None;
                    Poll::Ready(Ok(self.supervisor.permit()))
                }
                Grant::ShutDown => {
                    self.waiter = None;
                    Poll::Ready(Err(SHUT_DOWN.into()))
                }
            };
        }
        let mut state = self.supervisor.inner.lock();
        if state.shut_down {
            return Poll::Ready(Err(SHUT_DOWN.into()));
        }
        if state.waiters.is_empty() && state.running < self.supervisor.inner.config.max_children {
            state.running += 1;
            drop(state);
            return Poll::Ready(Ok(self.supervisor.permit()));
        }
        let waiter = Waiter::new();
        *lock(&waiter.waker) = Some(cx.waker().clone());
        state.waiters.push_back(Arc::clone(&waiter));
        drop(state);
        self.waiter = Some(waiter);
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let mut state = self.supervisor.inner.lock();
        if let Some(position) = state.waiters.iter().position(|w| Arc::ptr_eq(w, &waiter)) {
            state.waiters.remove(position);
            return;
        }
        drop(state);
        if waiter.get() == Grant::Granted {
            self.supervisor.inner.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstarted(max_children: usize) -> Supervisor {
        Supervisor {
            inner: Arc::new(Inner {
                config: SupervisorConfig {
                    max_children,
                    ..Default::default()
                },
                state: Mutex::new(State::default()),
            }),
        }
    }

    #[test]
    fn permits_are_granted_in_fifo_order() {
        let supervisor = unstarted(1);
        let first = supervisor.acquire_blocking().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..3 {
            let queued = supervisor.clone();
            let order = Arc::clone(&order);
            threads.push(std::thread::spawn(move || {
                let permit = queued.acquire_blocking().unwrap();
                order.lock().unwrap().push(i);
                drop(permit);
            }));
            // Wait until this thread is queued before starting the next.
            while supervisor.inner.lock().waiters.len() < i + 1 {
                std::thread::yield_now();
            }
        }
        drop(first);
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(supervisor.inner.lock().running, 0);
    }

    #[test]
    fn shutdown_fails_waiters_and_new_calls() {
        let supervisor = unstarted(1);
        let held = supervisor.acquire_blocking().unwrap();
        let waiting = {
            let supervisor = supervisor.clone();
            std::thread::spawn(move || supervisor.acquire_blocking().map(drop))
        };
        while supervisor.inner.lock().waiters.is_empty() {
            std::thread::yield_now();
        }
        supervisor.shutdown();
        assert!(waiting.join().unwrap().is_err());
        assert!(supervisor.acquire_blocking().is_err());
        assert!(!supervisor.is_available());
        drop(held);
    }

    #[test]
    fn start_rejects_zero_children() {
        let error = Supervisor::start(SupervisorConfig {
            max_children: 0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("max_children is 0"), "{error}");
    }
}
