//! `execute_isolated` and its variants: serialize the request, take a
//! shepherd from the supervisor, wait for the report, classify it and emit
//! the telemetry event.

use std::time::{Duration, Instant};

use crate::classify::{Limits, classify};
use crate::error::{CrashReason, IsolationError};
use crate::handler::{Context, Handler};
use crate::options::Options;
use crate::protocol::{Report, Request};
use crate::report::ExecutionReport;
use crate::supervisor::Supervisor;
use crate::{sys, telemetry};

/// Runs `handler` with `args` and `context` in a child process and returns
/// its result, or how the child failed to produce one.
///
/// The call blocks until the child has ended and every process it started
/// has been killed and reaped. Exactly one telemetry event is emitted (see
/// [`telemetry`](crate::telemetry)).
///
/// # Errors
///
/// - [`IsolationError::Handler`] with the handler's own error;
/// - [`IsolationError::Timeout`] when the child was still running at the
///   deadline;
/// - [`IsolationError::Killed`] when it went over its heap budget;
/// - [`IsolationError::Crashed`] when it panicked, aborted, overflowed its
///   stack, died of a signal, exited without a result, or its result could
///   not be decoded;
/// - [`IsolationError::Unavailable`] when the supervisor is shut down, no
///   shepherd could be started (for example because
///   [`enable_test_support!`](crate::enable_test_support) is missing), or
///   the platform is not Linux.
///
/// # Examples
///
/// ```
/// use isolated_executor::{Context, Handler, defaults, execute_isolated};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Add;
///
/// impl Handler for Add {
///     type Args = (u32, u32);
///     type Output = u32;
///     type Error = String;
///     fn execute(&self, (a, b): (u32, u32), _: &Context) -> Result<u32, String> {
///         Ok(a + b)
///     }
/// }
///
/// # fn demo() {
/// let sum = execute_isolated(&Add, (2, 3), &Context::new(), &defaults());
/// assert_eq!(sum.unwrap(), 5);
/// # }
/// ```
pub fn execute_isolated<H: Handler>(
    handler: &H,
    args: H::Args,
    context: &Context,
    options: &Options,
) -> Result<H::Output, IsolationError<H::Error>> {
    execute_isolated_report(handler, args, context, options).outcome
}

/// Like [`execute_isolated`], and also returns the pid, durations, peak
/// memory and output tails of the child.
pub fn execute_isolated_report<H: Handler>(
    handler: &H,
    args: H::Args,
    context: &Context,
    options: &Options,
) -> ExecutionReport<H::Output, H::Error> {
    let span = tracing::debug_span!("isolated_execution", handler = handler.name());
    let _entered = span.enter();
    let prepared = Prepared::new(handler, &args, context, options);
    let report = run_blocking::<H>(prepared);
    telemetry::emit(&report);
    report
}

/// Everything needed to run one execution, computed on the caller's thread
/// before anything waits.
pub(crate) struct Prepared {
    name: &'static str,
    handler_type: &'static str,
    trampoline_offset: i64,
    payload: Result<Vec<u8>, String>,
    options: Options,
    entered: Instant,
}

impl Prepared {
    pub(crate) fn new<H: Handler>(
        handler: &H,
        args: &H::Args,
        context: &Context,
        options: &Options,
    ) -> Self {
        telemetry::register_idle_dispatcher();
        let payload = postcard::to_stdvec(&(handler, args, context)).map_err(|e| {
            format!(
                "failed to serialize the handler or arguments of {}: {e}; check their Serialize impls",
                std::any::type_name::<H>()
            )
        });
        Prepared {
            name: handler.name(),
            handler_type: std::any::type_name::<H>(),
            trampoline_offset: trampoline_offset::<H>(),
            payload,
            options: options.clone(),
            entered: Instant::now(),
        }
    }

    fn supervisor(&self) -> Supervisor {
        self.options
            .supervisor
            .clone()
            .unwrap_or_else(|| Supervisor::global().clone())
    }

    fn limits(&self) -> Limits {
        Limits {
            timeout: self.options.timeout,
            max_heap_size: self.options.max_heap_size,
            max_result_size: self.options.max_result_size,
        }
    }

    /// Largest report frame accepted from the shepherd.
    fn report_limit(&self) -> u64 {
        let tail = self.options.output_tail as u64;
        self.options
            .max_result_size
            .saturating_add(tail.saturating_mul(2))
            .saturating_add(1 << 20)
    }

    fn request<'a>(&self, id: u64, fingerprint: &'a [u8], payload: &'a [u8]) -> Request<'a> {
        Request {
            id,
            trampoline_offset: self.trampoline_offset,
            handler_type: self.handler_type,
            fingerprint,
            timeout: self.options.timeout,
            grace: self.options.shutdown_grace,
            max_heap_size: self.options.max_heap_size,
            max_result_size: self.options.max_result_size,
            output_tail: self.options.output_tail as u64,
            payload,
        }
    }

    /// Builds the report of an execution that never reached a child.
    fn early<T, E>(&self, error: IsolationError<E>) -> ExecutionReport<T, E> {
        ExecutionReport::without_child(self.name, Err(error), self.entered.elapsed())
    }

    /// Returns the payload, or the error that ends the execution before it
    /// takes a shepherd.
    fn precheck<E>(&self) -> Result<&[u8], IsolationError<E>> {
        if !sys::SUPPORTED {
            return Err(IsolationError::Unavailable {
                reason: sys::UNSUPPORTED.into(),
            });
        }
        if sys::entry::is_undiverted_shepherd() {
            return Err(IsolationError::Unavailable {
                reason: sys::HOOK_MISSING.into(),
            });
        }
        match &self.payload {
            Ok(payload) => Ok(payload),
            Err(detail) => Err(IsolationError::Crashed(CrashReason::Protocol {
                detail: detail.clone(),
            })),
        }
    }

    fn finish<T, E>(&self, report: &Report, queue_wait: Duration) -> ExecutionReport<T, E>
    where
        T: serde::de::DeserializeOwned,
        E: serde::de::DeserializeOwned,
    {
        ExecutionReport {
            outcome: classify(report, &self.limits()),
            handler: self.name,
            pid: (report.pid != 0).then_some(report.pid),
            duration: self.entered.elapsed(),
            queue_wait,
            child_duration: report.elapsed,
            peak_rss_bytes: report.peak_rss_bytes,
            stdout_tail: String::from_utf8_lossy(&report.stdout_tail).into_owned(),
            stdout_bytes: report.stdout_total,
            stderr_tail: String::from_utf8_lossy(&report.stderr_tail).into_owned(),
            stderr_bytes: report.stderr_total,
            descendants_killed: report.descendants_killed,
        }
    }

    /// Builds the report of an execution whose shepherd died.
    fn lost<T, E>(
        &self,
        supervisor: &Supervisor,
        detail: String,
        pid: Option<u32>,
        queue_wait: Duration,
    ) -> ExecutionReport<T, E> {
        let error = if supervisor.is_shut_down() {
            IsolationError::Unavailable {
                reason: format!("the supervisor was shut down during the execution ({detail})"),
            }
        } else {
            IsolationError::Crashed(CrashReason::ShepherdLost { detail })
        };
        let mut report = self.early(error);
        report.pid = pid;
        report.queue_wait = queue_wait;
        report
    }
}

fn trampoline_offset<H: Handler>() -> i64 {
    sys::trampoline_offset(crate::child::trampoline_of::<H>())
}

/// How many times a request is sent when the shepherd is found dead while
/// the request is written, which happens when an idle shepherd was killed
/// from outside. A request that was written in full is never sent again,
/// because the shepherd may have started its child and died before it
/// reported the start, and a second run would repeat the handler's side
/// effects.
const ATTEMPTS: u32 = 2;

fn run_blocking<H: Handler>(prepared: Prepared) -> ExecutionReport<H::Output, H::Error> {
    let payload = match prepared.precheck() {
        Ok(payload) => payload,
        Err(error) => return prepared.early(error),
    };
    let supervisor = prepared.supervisor();
    let _permit = match supervisor.acquire_blocking() {
        Ok(permit) => permit,
        Err(reason) => return prepared.early(IsolationError::Unavailable { reason }),
    };
    let queue_wait = prepared.entered.elapsed();
    let config = supervisor.config().clone();
    let fingerprint = sys::fingerprint();

    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut shepherd = match supervisor.take_idle() {
            Some(shepherd) => shepherd,
            None => match sys::start_shepherd(config.handshake_timeout) {
                Ok(shepherd) => shepherd,
                Err(reason) => return prepared.early(IsolationError::Unavailable { reason }),
            },
        };
        let (id, canceller) = shepherd.prepare();
        let request = prepared.request(id, fingerprint, payload);
        let ticket = match supervisor.register(canceller) {
            Ok(ticket) => ticket,
            Err(reason) => {
                supervisor.put_back(shepherd);
                return prepared.early(IsolationError::Unavailable { reason });
            }
        };
        tracing::debug!(
            shepherd = shepherd.pid,
            handler = prepared.name,
            "sending request"
        );
        let mut delivered = false;
        let result = shepherd.send_blocking(&request).and_then(|()| {
            delivered = true;
            supervisor.mark_sent(ticket);
            shepherd.receive_blocking(&request, prepared.report_limit(), config.report_margin)
        });
        supervisor.unregister(ticket);

        match result {
            Ok(report) => {
                supervisor.put_back(shepherd);
                return prepared.finish(&report, queue_wait);
            }
            Err(sys::Lost(detail)) => {
                let pid = shepherd.last_child_pid();
                drop(shepherd);
                if !delivered && attempt < ATTEMPTS && !supervisor.is_shut_down() {
                    tracing::warn!(%detail, "shepherd lost before it received the request; retrying with a new shepherd");
                    continue;
                }
                return prepared.lost(&supervisor, detail, pid, queue_wait);
            }
        }
    }
}

#[cfg(feature = "tokio")]
pub use self::tokio_api::{execute_isolated_async, execute_isolated_report_async};

#[cfg(feature = "tokio")]
mod tokio_api {
    use std::future::Future;

    use tracing::Instrument;

    use super::*;

    /// Runs `handler` in a child process like [`execute_isolated`], without
    /// blocking the tokio runtime: no thread is started or blocked per
    /// execution.
    ///
    /// The handler and arguments are serialized when this function is
    /// called, so the returned future borrows nothing and can be spawned.
    ///
    /// # Errors
    ///
    /// The same as [`execute_isolated`].
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with I/O and time enabled.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes terminates the child:
    /// the shepherd sends SIGTERM to the child's process group, SIGKILL
    /// after `shutdown_grace`, then kills and reaps every descendant. The
    /// shepherd finishes this on its own after the drop and goes back to
    /// the pool, where the next execution on it first waits for its report.
    /// A future dropped while it waits for a free shepherd leaves the queue.
    /// One dropped while a shepherd starts, or while the request is being
    /// written, kills and reaps that shepherd. No telemetry event is emitted
    /// for a dropped future.
    pub fn execute_isolated_async<H: Handler>(
        handler: &H,
        args: H::Args,
        context: &Context,
        options: &Options,
    ) -> impl Future<Output = Result<H::Output, IsolationError<H::Error>>> + Send + 'static
    where
        H::Output: Send,
        H::Error: Send,
    {
        let report = execute_isolated_report_async(handler, args, context, options);
        async move { report.await.outcome }
    }

    /// Like [`execute_isolated_async`], and returns the full
    /// [`ExecutionReport`].
    ///
    /// # Cancel safety
    ///
    /// The same as [`execute_isolated_async`].
    pub fn execute_isolated_report_async<H: Handler>(
        handler: &H,
        args: H::Args,
        context: &Context,
        options: &Options,
    ) -> impl Future<Output = ExecutionReport<H::Output, H::Error>> + Send + 'static
    where
        H::Output: Send,
        H::Error: Send,
    {
        let span = tracing::debug_span!("isolated_execution", handler = handler.name());
        let prepared = span.in_scope(|| Prepared::new(handler, &args, context, options));
        async move {
            let report = run_async::<H::Output, H::Error>(prepared).await;
            telemetry::emit(&report);
            report
        }
        .instrument(span)
    }

    /// Returns the shepherd of an unfinished execution to a safe state when
    /// the future is dropped.
    struct InFlight {
        supervisor: Supervisor,
        shepherd: Option<sys::Shepherd>,
        ticket: u64,
        id: u64,
        sent: bool,
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            self.supervisor.unregister(self.ticket);
            let Some(mut shepherd) = self.shepherd.take() else {
                return;
            };
            // A half-written request leaves the stream unusable; a sent one
            // can be cancelled and the shepherd reused.
            if self.sent && shepherd.abandon(self.id) {
                self.supervisor.put_back(shepherd);
            }
        }
    }

    async fn run_async<T, E>(prepared: Prepared) -> ExecutionReport<T, E>
    where
        T: serde::de::DeserializeOwned,
        E: serde::de::DeserializeOwned,
    {
        let payload = match prepared.precheck() {
            Ok(payload) => payload,
            Err(error) => return prepared.early(error),
        };
        let supervisor = prepared.supervisor();
        let _permit = match supervisor.acquire().await {
            Ok(permit) => permit,
            Err(reason) => return prepared.early(IsolationError::Unavailable { reason }),
        };
        let queue_wait = prepared.entered.elapsed();
        let config = supervisor.config().clone();
        let fingerprint = sys::fingerprint();

        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut shepherd = match supervisor.take_idle() {
                Some(shepherd) => shepherd,
                None => match sys::Shepherd::start_async(config.handshake_timeout).await {
                    Ok(shepherd) => shepherd,
                    Err(reason) => return prepared.early(IsolationError::Unavailable { reason }),
                },
            };
            let (id, canceller) = shepherd.prepare();
            let request = prepared.request(id, fingerprint, payload);
            let ticket = match supervisor.register(canceller) {
                Ok(ticket) => ticket,
                Err(reason) => {
                    supervisor.put_back(shepherd);
                    return prepared.early(IsolationError::Unavailable { reason });
                }
            };
            let mut flight = InFlight {
                supervisor: supervisor.clone(),
                shepherd: Some(shepherd),
                ticket,
                id,
                sent: false,
            };
            let result = {
                let shepherd = flight
                    .shepherd
                    .as_mut()
                    .expect("the shepherd is taken only on drop");
                match shepherd.send_async(&request).await {
                    Ok(()) => {
                        flight.sent = true;
                        supervisor.mark_sent(ticket);
                        let shepherd = flight
                            .shepherd
                            .as_mut()
                            .expect("the shepherd is taken only on drop");
                        shepherd
                            .receive_async(&request, prepared.report_limit(), config.report_margin)
                            .await
                    }
                    Err(lost) => Err(lost),
                }
            };
            let delivered = flight.sent;
            let mut shepherd = flight
                .shepherd
                .take()
                .expect("the shepherd is taken only on drop");
            drop(flight);

            match result {
                Ok(report) => {
                    supervisor.put_back(shepherd);
                    return prepared.finish(&report, queue_wait);
                }
                Err(sys::Lost(detail)) => {
                    let pid = shepherd.last_child_pid();
                    shepherd.destroy();
                    drop(shepherd);
                    if !delivered && attempt < ATTEMPTS && !supervisor.is_shut_down() {
                        tracing::warn!(%detail, "shepherd lost before it received the request; retrying with a new shepherd");
                        continue;
                    }
                    return prepared.lost(&supervisor, detail, pid, queue_wait);
                }
            }
        }
    }
}
