//! Fuzz-style properties of the caller–shepherd protocol decoder: on any
//! byte stream (arbitrary, truncated, mutated valid frames, lying length
//! headers) `FrameDecoder`, the body decoders and `decode_records` never
//! panic and never allocate more than the frame limit allows.
//!
//! Allocation sizes are measured by a global allocator that records the
//! largest single request made on a thread while that thread measures.

isolated_executor::enable_test_support!();

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use isolated_executor::protocol::{
    self, FrameDecoder, Hello, Kind, Report, Request, Started, decode_cancel, decode_records,
    encode_cancel, encode_frame, encode_header, encode_panic, encode_record, record,
};
use proptest::prelude::*;

/// Passes every call to the system allocator and records the largest
/// requested size on threads that are measuring.
struct Measuring;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with` because the allocator also runs while thread-locals are
    // torn down; a Cell has no destructor, so this normally succeeds.
    let measuring = MEASURING.try_with(Cell::get).unwrap_or(false);
    if measuring {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }
}

// SAFETY: every method forwards to `System` with the same arguments, so the
// allocator contract is met as it is for `System`. `note` only touches
// const-initialized thread-locals without destructors, which never
// allocate.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator,
        // which is `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Measuring = Measuring;

/// Runs `f` and returns its result with the largest single allocation it
/// made on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(0));
    MEASURING.with(|measuring| measuring.set(true));
    let result = f();
    MEASURING.with(|measuring| measuring.set(false));
    (result, LARGEST.with(Cell::get))
}

/// Cap on the capacity the decoder reserves for a body before its bytes
/// arrive.
const INITIAL_CAPACITY_CAP: usize = 1 << 20;

/// What feeding a stream produced.
#[derive(Debug, Default)]
struct Fed {
    frames: Vec<(Kind, Vec<u8>)>,
    error: Option<String>,
}

/// Feeds `stream` to `decoder` in chunks of the given sizes (cycled), the
/// way a socket delivers it, until the stream ends or the decoder fails.
fn feed_in_chunks(decoder: &mut FrameDecoder, stream: &[u8], chunks: &[usize]) -> Fed {
    let mut fed = Fed::default();
    let mut rest = stream;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let mut chunk = &rest[..size];
        rest = &rest[size..];
        while !chunk.is_empty() {
            match decoder.feed(chunk) {
                Ok((frame, used)) => {
                    assert!(used > 0, "feed consumed nothing of {} bytes", chunk.len());
                    assert!(used <= chunk.len());
                    fed.frames.extend(frame);
                    chunk = &chunk[used..];
                }
                Err(error) => {
                    fed.error = Some(error.0);
                    return fed;
                }
            }
        }
    }
    fed
}

/// Decodes a body with the decoder of its kind, as the two ends do, and
/// decodes the records of a report. Only panics matter here.
fn decode_body(kind: Kind, body: &[u8]) {
    match kind {
        Kind::Hello => drop(Hello::decode(body)),
        Kind::Request => drop(Request::decode(body)),
        Kind::Cancel => drop(decode_cancel(body)),
        Kind::Started => drop(Started::decode(body)),
        Kind::Report => {
            if let Ok(report) = Report::decode(body) {
                drop(decode_records(&report.records));
            }
        }
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn records() -> impl Strategy<Value = Vec<u8>> {
    let single = prop_oneof![
        bytes(64).prop_map(|payload| encode_record(record::OK, &payload)),
        bytes(64).prop_map(|payload| encode_record(record::ERR, &payload)),
        (".{0,20}", proptest::option::of(".{0,20}")).prop_map(|(message, location)| {
            encode_record(record::PANIC, &encode_panic(&message, location.as_deref()))
        }),
        Just(encode_record(record::STACK_OVERFLOW, &[])),
        Just(encode_record(record::EXIT_CALLED, &[])),
        ".{0,40}".prop_map(|message| encode_record(record::FAILURE, message.as_bytes())),
    ];
    proptest::collection::vec(single, 0..4).prop_map(|records| records.concat())
}

fn report() -> impl Strategy<Value = Report> {
    (
        (
            any::<u64>(),
            any::<u32>(),
            proptest::option::of(".{0,30}"),
            any::<i32>(),
        ),
        (any::<u64>(), any::<u64>(), any::<[bool; 3]>()),
        (
            records(),
            any::<u64>(),
            bytes(64),
            any::<u64>(),
            bytes(64),
            any::<u64>(),
        ),
        any::<u32>(),
    )
        .prop_map(
            |(
                (id, pid, spawn_failure, wait_status),
                (peak_rss_bytes, elapsed, [timed_out, escalated_to_kill, cancelled]),
                (records, records_total, stdout_tail, stdout_total, stderr_tail, stderr_total),
                descendants_killed,
            )| Report {
                id,
                pid,
                spawn_failure,
                wait_status,
                peak_rss_bytes,
                elapsed: Duration::from_nanos(elapsed),
                timed_out,
                escalated_to_kill,
                cancelled,
                records,
                records_total,
                stdout_tail,
                stdout_total,
                stderr_tail,
                stderr_total,
                descendants_killed,
            },
        )
}

/// Generates the encoded body of a request.
fn request_body() -> impl Strategy<Value = Vec<u8>> {
    (
        (any::<u64>(), any::<i64>(), ".{0,30}", bytes(32)),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
        ),
        (any::<u64>(), any::<u64>(), bytes(128)),
    )
        .prop_map(
            |(
                (id, trampoline_offset, handler_type, fingerprint),
                (timeout, grace, max_heap_size),
                (max_result_size, output_tail, payload),
            )| {
                Request {
                    id,
                    trampoline_offset,
                    handler_type: &handler_type,
                    fingerprint: &fingerprint,
                    timeout: Duration::from_nanos(timeout),
                    grace: Duration::from_nanos(grace),
                    max_heap_size,
                    max_result_size,
                    output_tail,
                    payload: &payload,
                }
                .encode()
            },
        )
}

/// Generates one valid frame of any kind, as its kind and body.
fn frame() -> impl Strategy<Value = (Kind, Vec<u8>)> {
    prop_oneof![
        report().prop_map(|report| (Kind::Report, report.encode())),
        request_body().prop_map(|body| (Kind::Request, body)),
        (any::<u32>(), bytes(32))
            .prop_map(|(pid, fingerprint)| { (Kind::Hello, Hello { pid, fingerprint }.encode()) }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(id, pid)| (Kind::Started, Started { id, pid }.encode())),
        any::<u64>().prop_map(|id| (Kind::Cancel, encode_cancel(id))),
    ]
}

/// A change to a byte stream.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at (index modulo length) with a nonzero mask.
    Flip(usize, u8),
    /// Overwrite the byte at (index modulo length).
    Set(usize, u8),
    /// Insert bytes at (index modulo length + 1).
    Insert(usize, Vec<u8>),
    /// Remove up to `count` bytes from (index modulo length).
    Remove(usize, usize),
    /// Cut the stream at (index modulo length + 1).
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set(at, value)),
        (any::<usize>(), bytes(16)).prop_map(|(at, inserted)| Mutation::Insert(at, inserted)),
        (any::<usize>(), 1usize..32).prop_map(|(at, count)| Mutation::Remove(at, count)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(stream: &mut Vec<u8>, mutation: &Mutation) {
    if stream.is_empty() {
        return;
    }
    let len = stream.len();
    match mutation {
        Mutation::Flip(at, mask) => stream[at % len] ^= mask,
        Mutation::Set(at, value) => stream[at % len] = *value,
        Mutation::Insert(at, inserted) => {
            let at = at % len + 1;
            stream.splice(at..at, inserted.iter().copied());
        }
        Mutation::Remove(at, count) => {
            let at = at % len;
            let end = (at + count).min(len);
            stream.drain(at..end);
        }
        Mutation::Truncate(at) => stream.truncate(at % len + 1),
    }
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..300, 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, split anywhere: no panic, no body over the limit.
    #[test]
    fn arbitrary_stream_never_panics(stream in bytes(2048), chunks in chunk_sizes(), max_len in 0u64..1024) {
        let mut decoder = FrameDecoder::new(max_len);
        let (fed, largest) = largest_allocation(|| feed_in_chunks(&mut decoder, &stream, &chunks));
        for (kind, body) in &fed.frames {
            prop_assert!(body.len() as u64 <= max_len);
            decode_body(*kind, body);
        }
        prop_assert!(largest as u64 <= max_len.max(1024), "largest allocation {largest} bytes");
    }

    /// Valid frames survive any split and decode to what was encoded.
    #[test]
    fn valid_frames_round_trip_in_any_split(frames in proptest::collection::vec(frame(), 1..5), chunks in chunk_sizes()) {
        let stream: Vec<u8> = frames.iter().flat_map(|(kind, body)| encode_frame(*kind, body)).collect();
        let mut decoder = FrameDecoder::new(1 << 20);
        let fed = feed_in_chunks(&mut decoder, &stream, &chunks);
        prop_assert_eq!(fed.error, None);
        prop_assert_eq!(&fed.frames, &frames);
        prop_assert!(!decoder.is_mid_frame());
        for (kind, body) in &fed.frames {
            match kind {
                Kind::Report => {
                    let report = Report::decode(body).unwrap();
                    prop_assert_eq!(&report.encode(), body);
                }
                Kind::Request => {
                    let request = Request::decode(body).unwrap();
                    prop_assert_eq!(&request.encode(), body);
                }
                other => decode_body(*other, body),
            }
        }
    }

    /// Valid frames with flipped, overwritten, inserted or removed bytes,
    /// or cut short: no panic in the decoder or the body decoders, and no
    /// allocation beyond the limit.
    #[test]
    fn mutated_frames_never_panic(
        frames in proptest::collection::vec(frame(), 1..4),
        mutations in proptest::collection::vec(mutation(), 1..6),
        chunks in chunk_sizes(),
    ) {
        let mut stream: Vec<u8> = frames.iter().flat_map(|(kind, body)| encode_frame(*kind, body)).collect();
        for mutation in &mutations {
            apply(&mut stream, mutation);
        }
        let max_len = 64 << 10;
        let mut decoder = FrameDecoder::new(max_len);
        let (fed, largest) = largest_allocation(|| {
            let fed = feed_in_chunks(&mut decoder, &stream, &chunks);
            for (kind, body) in &fed.frames {
                decode_body(*kind, body);
            }
            fed
        });
        for (_, body) in &fed.frames {
            prop_assert!(body.len() as u64 <= max_len);
        }
        prop_assert!(largest as u64 <= max_len, "largest allocation {largest} bytes");
    }

    /// Report bodies with mutated bytes, decoded directly: an error or a
    /// report, never a panic, and no allocation larger than the body.
    #[test]
    fn mutated_report_bodies_never_panic(report in report(), mutations in proptest::collection::vec(mutation(), 1..6)) {
        let mut body = report.encode();
        for mutation in &mutations {
            apply(&mut body, mutation);
        }
        let (_, largest) = largest_allocation(|| {
            if let Ok(report) = Report::decode(&body) {
                drop(decode_records(&report.records));
            }
        });
        prop_assert!(largest <= body.len().max(1024), "largest allocation {largest} for a body of {}", body.len());
    }

    /// Every truncation of a valid frame stream leaves the decoder waiting
    /// mid-frame or between frames, without an error.
    #[test]
    fn truncated_frames_wait_for_more(frames in proptest::collection::vec(frame(), 1..4), cut in any::<usize>()) {
        let stream: Vec<u8> = frames.iter().flat_map(|(kind, body)| encode_frame(*kind, body)).collect();
        let cut = cut % stream.len();
        let mut decoder = FrameDecoder::new(1 << 20);
        let fed = feed_in_chunks(&mut decoder, &stream[..cut], &[7]);
        prop_assert_eq!(fed.error, None);
        prop_assert!(fed.frames.len() < frames.len());
        prop_assert_eq!(&fed.frames[..], &frames[..fed.frames.len()]);
    }

    /// Child records with mutated bytes decode to some records and maybe a
    /// `malformed` message, never a panic.
    #[test]
    fn mutated_records_never_panic(stream in records(), mutations in proptest::collection::vec(mutation(), 0..6)) {
        let mut stream = stream;
        for mutation in &mutations {
            apply(&mut stream, mutation);
        }
        let (_, largest) = largest_allocation(|| drop(decode_records(&stream)));
        prop_assert!(largest <= stream.len().max(1024));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A header that claims a body far larger than what follows, but under
    /// the limit: the decoder reserves at most 1 MiB up front, and beyond
    /// that grows only with the bytes that really arrive.
    #[test]
    fn lying_length_costs_only_bytes_sent(
        claimed in (4u64 << 20)..protocol::MAX_REQUEST_LEN,
        sent in 0usize..(3 << 20),
        chunk in 1usize..(256 << 10),
    ) {
        let mut stream = encode_header(Kind::Request, claimed).to_vec();
        stream.resize(stream.len() + sent, 0xab);
        let mut decoder = FrameDecoder::new(protocol::MAX_REQUEST_LEN);
        let (fed, largest) = largest_allocation(|| feed_in_chunks(&mut decoder, &stream, &[chunk]));
        prop_assert_eq!(fed.error, None);
        prop_assert!(fed.frames.is_empty(), "the claimed body never completes");
        prop_assert!(decoder.is_mid_frame());
        // Vec doubles its capacity when it grows, so the body may reserve
        // up to twice the bytes received.
        let bound = INITIAL_CAPACITY_CAP.max(2 * sent);
        prop_assert!(largest <= bound, "largest allocation {largest} bytes after {sent} bytes sent, bound {bound}");
    }
}

#[test]
fn lying_header_alone_reserves_at_most_one_mebibyte() {
    let header = encode_header(Kind::Report, protocol::MAX_REQUEST_LEN);
    let mut decoder = FrameDecoder::new(protocol::MAX_REQUEST_LEN);

    let (fed, largest) = largest_allocation(|| decoder.feed(&header));

    let (frame, used) = fed.expect("a header under the limit is accepted");
    assert!(frame.is_none());
    assert_eq!(used, header.len());
    assert!(
        largest <= INITIAL_CAPACITY_CAP,
        "a 4 GiB claim reserved {largest} bytes"
    );
}

#[test]
fn header_over_limit_is_rejected_without_allocating_body() {
    let header = encode_header(Kind::Report, (64 << 10) + 1);
    let mut decoder = FrameDecoder::new(64 << 10);

    let (fed, largest) = largest_allocation(|| decoder.feed(&header));

    let error = fed.expect_err("a header over the limit is rejected");
    assert!(error.0.contains("over the limit of 65536 bytes"), "{error}");
    assert!(
        largest < 1024,
        "rejecting the header allocated {largest} bytes"
    );
}

#[test]
fn measuring_allocator_sees_large_allocations() {
    // A positive control: the measurement itself must work for the bounds
    // above to mean anything.
    let (buffer, largest) = largest_allocation(|| vec![0u8; 3 << 20]);
    assert_eq!(buffer.len(), 3 << 20);
    assert!(largest >= 3 << 20, "saw {largest} bytes");
}

#[test]
fn body_over_one_mebibyte_stays_within_limit() {
    let limit = 3 << 19; // 1.5 MiB
    let body = vec![7u8; limit];
    let stream = encode_frame(Kind::Report, &body);
    let mut decoder = FrameDecoder::new(limit as u64);

    let (fed, largest) = largest_allocation(|| feed_in_chunks(&mut decoder, &stream, &[64 << 10]));

    assert_eq!(fed.error, None);
    assert_eq!(fed.frames, vec![(Kind::Report, body)]);
    // The body grows by doubling past its 1 MiB start, capped at the
    // announced length.
    assert!(largest <= limit, "largest allocation {largest} bytes");
}
