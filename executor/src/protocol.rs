//! The framed protocol between the caller and a shepherd, and the records a
//! child writes to its result pipe.
//!
//! Every frame starts with a 16-byte header: the magic `ISEX`, the protocol
//! version (u16), the message kind (u8), a reserved byte and the body length
//! (u64), all little-endian. A decoder is given the maximum body length it
//! accepts and rejects a longer frame before it allocates anything, so a
//! corrupt or hostile stream cannot make the caller allocate beyond that
//! limit. Decoding never panics: every read is bounds-checked.

use std::time::Duration;

/// Protocol version; the caller and the shepherd must agree on it.
pub const VERSION: u16 = 2;
/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"ISEX";
/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 16;
/// Maximum body length of a request frame: 4 GiB.
pub const MAX_REQUEST_LEN: u64 = 4 << 30;
/// Maximum body length of control frames (hello, started, cancel): 64 KiB.
pub const MAX_CONTROL_LEN: u64 = 64 << 10;

/// Kind of a frame, the fifth byte of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Shepherd to caller, once at start: version, pid, executable fingerprint.
    Hello = 1,
    /// Caller to shepherd: run one execution.
    Request = 2,
    /// Caller to shepherd: terminate the execution with the given id.
    Cancel = 3,
    /// Shepherd to caller: the child of an execution has started.
    Started = 4,
    /// Shepherd to caller: the execution has ended.
    Report = 5,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::Request,
            3 => Kind::Cancel,
            4 => Kind::Started,
            5 => Kind::Report,
            _ => return None,
        })
    }
}

/// A decoding failure; the text names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn invalid(message: impl Into<String>) -> DecodeError {
    DecodeError(message.into())
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message kind.
    pub kind: Kind,
    /// The body length in bytes.
    pub len: u64,
}

/// Encodes a frame header for a body of `len` bytes.
pub fn encode_header(kind: Kind, len: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&VERSION.to_le_bytes());
    header[6] = kind as u8;
    header[8..16].copy_from_slice(&len.to_le_bytes());
    header
}

/// Parses a frame header and checks the body length against `max_len`.
pub fn decode_header(bytes: &[u8; HEADER_LEN], max_len: u64) -> Result<Header, DecodeError> {
    if bytes[..4] != MAGIC {
        return Err(invalid(format!(
            "bad frame magic {:02x?}; the peer is not an isolated-executor shepherd",
            &bytes[..4]
        )));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(invalid(format!(
            "protocol version {version} does not match {VERSION}; the caller and shepherd come from different builds"
        )));
    }
    let kind = Kind::from_byte(bytes[6])
        .ok_or_else(|| invalid(format!("unknown frame kind {}", bytes[6])))?;
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len_bytes);
    if len > max_len {
        return Err(invalid(format!(
            "frame of kind {kind:?} is {len} bytes, over the limit of {max_len} bytes"
        )));
    }
    Ok(Header { kind, len })
}

/// Encodes a whole frame: header and body.
pub fn encode_frame(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&encode_header(kind, body.len() as u64));
    frame.extend_from_slice(body);
    frame
}

/// A decoded frame: its kind and body.
pub type Frame = (Kind, Vec<u8>);

/// Incremental frame decoder for a byte stream: feed it bytes as they come
/// and take frames out. It allocates at most `max_len` bytes per body.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: u64,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    current: Option<Header>,
    body: Vec<u8>,
}

impl FrameDecoder {
    /// Creates a decoder that rejects bodies longer than `max_len` bytes.
    pub fn new(max_len: u64) -> Self {
        Self {
            max_len,
            header: [0; HEADER_LEN],
            header_filled: 0,
            current: None,
            body: Vec::new(),
        }
    }

    /// Sets the maximum body length for frames not yet started.
    pub fn set_max_len(&mut self, max_len: u64) {
        self.max_len = max_len;
    }

    /// Returns whether the decoder contains a partial frame.
    pub fn is_mid_frame(&self) -> bool {
        self.header_filled > 0
    }

    /// Consumes bytes from `input` until one frame is complete. Returns the
    /// frame and the number of bytes consumed; `None` when `input` ran out
    /// first (all of it was consumed).
    pub fn feed(&mut self, input: &[u8]) -> Result<(Option<Frame>, usize), DecodeError> {
        let mut used = 0;
        if self.current.is_none() {
            let want = HEADER_LEN - self.header_filled;
            let take = want.min(input.len());
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&input[..take]);
            self.header_filled += take;
            used += take;
            if self.header_filled < HEADER_LEN {
                return Ok((None, used));
            }
            let header = decode_header(&self.header, self.max_len)?;
            self.current = Some(header);
            // The capacity is bounded by max_len, checked above; grow lazily
            // beyond 1 MiB so a lying header costs no more than the bytes sent.
            let initial = usize::try_from(header.len.min(1 << 20)).unwrap_or(1 << 20);
            self.body = Vec::with_capacity(initial);
        }
        let Some(header) = self.current else {
            return Ok((None, used));
        };
        let missing = usize::try_from(header.len).unwrap_or(usize::MAX) - self.body.len();
        let rest = &input[used..];
        let take = missing.min(rest.len());
        // Grow by doubling, but never past the announced length, so the
        // body's capacity never exceeds `max_len` bytes.
        let needed = self.body.len() + take;
        if needed > self.body.capacity() {
            let announced = usize::try_from(header.len).unwrap_or(usize::MAX);
            let target = (self.body.capacity() * 2).max(needed).min(announced);
            self.body.reserve_exact(target - self.body.len());
        }
        self.body.extend_from_slice(&rest[..take]);
        used += take;
        if self.body.len() as u64 == header.len {
            self.current = None;
            self.header_filled = 0;
            let body = std::mem::take(&mut self.body);
            return Ok((Some((header.kind, body)), used));
        }
        Ok((None, used))
    }

    /// Returns the body of the frame being decoded and how many bytes to
    /// append to it next, when the frame's header is complete and its body
    /// is not. This lets a reader put large bodies straight into place
    /// instead of passing them through `feed`.
    ///
    /// The count is at most the bytes still missing. It is also at most the
    /// body's length so far or 1 MiB, whichever is larger. So the body grows
    /// by doubling, and a lying header costs no more memory than about twice
    /// the bytes actually sent. Append at most that many bytes,
    /// then call [`take_filled`](Self::take_filled).
    pub fn body_to_fill(&mut self) -> Option<(&mut Vec<u8>, usize)> {
        let header = self.current?;
        let missing = usize::try_from(header.len)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.body.len());
        if missing == 0 {
            return None;
        }
        let step = missing.min(self.body.len().max(1 << 20));
        Some((&mut self.body, step))
    }

    /// Returns the frame whose body [`body_to_fill`](Self::body_to_fill)
    /// completed, if it is complete.
    pub fn take_filled(&mut self) -> Option<Frame> {
        let header = self.current?;
        if self.body.len() as u64 != header.len {
            return None;
        }
        self.current = None;
        self.header_filled = 0;
        Some((header.kind, std::mem::take(&mut self.body)))
    }
}

/// Appends fields to a body.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Creates an empty body.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.buf.push(value);
        self
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }
    /// Appends a little-endian i64.
    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }
    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.u64(value.len() as u64);
        self.buf.extend_from_slice(value);
        self
    }
    /// Appends a length-prefixed UTF-8 string.
    pub fn str(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }
    /// Returns the encoded body.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from a body; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` from its first byte.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| {
                invalid(format!(
                    "truncated body: {what} needs {n} bytes at offset {}, body has {}",
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    /// Reads a byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    /// Reads a little-endian u32.
    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(b))
    }
    /// Reads a little-endian u64.
    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }
    /// Reads a little-endian i64.
    pub fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(i64::from_le_bytes(b))
    }
    /// Reads a length-prefixed byte string, borrowing from the body.
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], DecodeError> {
        let len = self.u64(what)?;
        let len =
            usize::try_from(len).map_err(|_| invalid(format!("{what}: length {len} too large")))?;
        self.take(len, what)
    }
    /// Reads a length-prefixed UTF-8 string.
    pub fn str(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes).map_err(|e| invalid(format!("{what}: invalid UTF-8: {e}")))
    }
    /// Fails unless every byte was read.
    pub fn finish(self, what: &str) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(invalid(format!(
                "{what}: {} trailing bytes",
                self.buf.len() - self.pos
            )))
        }
    }
}

/// Sent by a shepherd once it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The shepherd's pid.
    pub pid: u32,
    /// Fingerprint of the executable the shepherd runs.
    pub fingerprint: Vec<u8>,
}

impl Hello {
    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.pid).bytes(&self.fingerprint);
        w.finish()
    }
    /// Decodes the body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let hello = Hello {
            pid: r.u32("hello pid")?,
            fingerprint: r.bytes("hello fingerprint")?.to_vec(),
        };
        r.finish("hello")?;
        Ok(hello)
    }
}

/// One execution, sent by the caller. It borrows its strings and payload, so
/// neither building a request nor decoding one copies the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Id of the execution, unique per shepherd connection.
    pub id: u64,
    /// Offset of the handler's trampoline from the anchor function.
    pub trampoline_offset: i64,
    /// `std::any::type_name` of the handler, checked by the trampoline.
    pub handler_type: &'a str,
    /// Fingerprint of the caller's executable.
    pub fingerprint: &'a [u8],
    /// Timeout from the child's start.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Heap budget in bytes.
    pub max_heap_size: Option<u64>,
    /// Maximum bytes of child records kept.
    pub max_result_size: u64,
    /// Bytes kept of each output stream.
    pub output_tail: u64,
    /// The serialized handler, arguments and context.
    pub payload: &'a [u8],
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<'a> Request<'a> {
    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = self.encode_head();
        body.extend_from_slice(self.payload);
        body
    }

    /// Encodes the body up to and including the payload's length, so the
    /// payload can be written after it without being copied.
    pub fn encode_head(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.id)
            .i64(self.trampoline_offset)
            .str(self.handler_type)
            .bytes(self.fingerprint)
            .u64(duration_nanos(self.timeout))
            .u64(duration_nanos(self.grace))
            .u8(u8::from(self.max_heap_size.is_some()))
            .u64(self.max_heap_size.unwrap_or(0))
            .u64(self.max_result_size)
            .u64(self.output_tail)
            .u64(self.payload.len() as u64);
        w.finish()
    }

    /// Decodes the body, borrowing the strings and the payload from it.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let id = r.u64("request id")?;
        let trampoline_offset = r.i64("trampoline offset")?;
        let handler_type = r.str("handler type")?;
        let fingerprint = r.bytes("fingerprint")?;
        let timeout = Duration::from_nanos(r.u64("timeout")?);
        let grace = Duration::from_nanos(r.u64("grace")?);
        let has_heap = r.u8("heap flag")?;
        let heap = r.u64("heap budget")?;
        let max_result_size = r.u64("max result size")?;
        let output_tail = r.u64("output tail")?;
        let payload = r.bytes("payload")?;
        r.finish("request")?;
        Ok(Request {
            id,
            trampoline_offset,
            handler_type,
            fingerprint,
            timeout,
            grace,
            max_heap_size: (has_heap != 0).then_some(heap),
            max_result_size,
            output_tail,
            payload,
        })
    }
}

/// Encodes a cancel body.
pub fn encode_cancel(id: u64) -> Vec<u8> {
    id.to_le_bytes().to_vec()
}

/// Decodes a cancel body.
pub fn decode_cancel(body: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::new(body);
    let id = r.u64("cancel id")?;
    r.finish("cancel")?;
    Ok(id)
}

/// Sent when the child of an execution has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The execution id.
    pub id: u64,
    /// The child's pid, which is also its process group id.
    pub pid: u32,
}

impl Started {
    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.id).u32(self.pid);
        w.finish()
    }
    /// Decodes the body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let started = Started {
            id: r.u64("started id")?,
            pid: r.u32("started pid")?,
        };
        r.finish("started")?;
        Ok(started)
    }
}

/// Everything the shepherd observed about one execution. Classification is
/// a pure function of this value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The execution id.
    pub id: u64,
    /// The child's pid; 0 when no child started.
    pub pid: u32,
    /// Set when no child could be started, with the reason.
    pub spawn_failure: Option<String>,
    /// The raw wait status of the child.
    pub wait_status: i32,
    /// Peak resident set size of the child in bytes (`ru_maxrss`).
    pub peak_rss_bytes: u64,
    /// Time from the child's start to its exit.
    pub elapsed: Duration,
    /// The deadline passed while the child was running.
    pub timed_out: bool,
    /// SIGKILL was sent after the grace period.
    pub escalated_to_kill: bool,
    /// The caller cancelled the execution.
    pub cancelled: bool,
    /// Bytes the child wrote to its result pipe, up to the limit.
    pub records: Vec<u8>,
    /// Total bytes the child wrote to its result pipe.
    pub records_total: u64,
    /// The last bytes of stdout.
    pub stdout_tail: Vec<u8>,
    /// Total bytes written to stdout.
    pub stdout_total: u64,
    /// The last bytes of stderr.
    pub stderr_tail: Vec<u8>,
    /// Total bytes written to stderr.
    pub stderr_total: u64,
    /// Descendants that were still alive after the child ended and were killed.
    pub descendants_killed: u32,
}

const FLAG_TIMED_OUT: u8 = 1;
const FLAG_ESCALATED: u8 = 2;
const FLAG_CANCELLED: u8 = 4;

impl Report {
    /// Encodes the body: the records, then every other field, then the
    /// records' length. The records come first so that
    /// [`decode_owned`](Self::decode_owned) keeps the body's allocation as
    /// the records instead of copying them, which matters for large
    /// results.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = self.records.clone();
        body.extend_from_slice(&self.encode_tail());
        body
    }

    /// Encodes the part of the body after the records, so a writer can send
    /// the records from where they are.
    pub fn encode_tail(&self) -> Vec<u8> {
        let mut w = Writer::new();
        let mut flags = 0;
        if self.timed_out {
            flags |= FLAG_TIMED_OUT;
        }
        if self.escalated_to_kill {
            flags |= FLAG_ESCALATED;
        }
        if self.cancelled {
            flags |= FLAG_CANCELLED;
        }
        w.u64(self.id)
            .u32(self.pid)
            .u8(u8::from(self.spawn_failure.is_some()))
            .str(self.spawn_failure.as_deref().unwrap_or(""))
            .u32(self.wait_status as u32)
            .u64(self.peak_rss_bytes)
            .u64(duration_nanos(self.elapsed))
            .u8(flags)
            .u64(self.records_total)
            .bytes(&self.stdout_tail)
            .u64(self.stdout_total)
            .bytes(&self.stderr_tail)
            .u64(self.stderr_total)
            .u32(self.descendants_killed)
            .u64(self.records.len() as u64);
        w.finish()
    }

    /// Decodes the body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_owned(body.to_vec())
    }

    /// Decodes the body, keeping its allocation as `records`.
    pub fn decode_owned(mut body: Vec<u8>) -> Result<Self, DecodeError> {
        let Some(fields_end) = body.len().checked_sub(8) else {
            return Err(invalid(format!(
                "truncated body: report needs at least 8 bytes, body has {}",
                body.len()
            )));
        };
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&body[fields_end..]);
        let records_len = u64::from_le_bytes(len_bytes);
        let records_len = usize::try_from(records_len)
            .ok()
            .filter(|len| *len <= fields_end)
            .ok_or_else(|| {
                invalid(format!(
                    "report records of {records_len} bytes do not fit a body of {} bytes",
                    body.len()
                ))
            })?;

        let mut r = Reader::new(&body[records_len..fields_end]);
        let id = r.u64("report id")?;
        let pid = r.u32("report pid")?;
        let has_failure = r.u8("spawn failure flag")?;
        let failure = r.str("spawn failure")?.to_owned();
        let wait_status = r.u32("wait status")? as i32;
        let peak_rss_bytes = r.u64("peak rss")?;
        let elapsed = Duration::from_nanos(r.u64("elapsed")?);
        let flags = r.u8("flags")?;
        let records_total = r.u64("records total")?;
        let stdout_tail = r.bytes("stdout tail")?.to_vec();
        let stdout_total = r.u64("stdout total")?;
        let stderr_tail = r.bytes("stderr tail")?.to_vec();
        let stderr_total = r.u64("stderr total")?;
        let descendants_killed = r.u32("descendants killed")?;
        r.finish("report")?;

        body.truncate(records_len);
        Ok(Report {
            id,
            pid,
            spawn_failure: (has_failure != 0).then_some(failure),
            wait_status,
            peak_rss_bytes,
            elapsed,
            timed_out: flags & FLAG_TIMED_OUT != 0,
            escalated_to_kill: flags & FLAG_ESCALATED != 0,
            cancelled: flags & FLAG_CANCELLED != 0,
            records: body,
            records_total,
            stdout_tail,
            stdout_total,
            stderr_tail,
            stderr_total,
            descendants_killed,
        })
    }
}

/// Tags of the records a child writes to its result pipe. Each record is the
/// tag byte, a little-endian u64 length and the payload.
pub mod record {
    /// The handler returned `Ok`; payload: the postcard-encoded output.
    pub const OK: u8 = 1;
    /// The handler returned `Err`; payload: the postcard-encoded error.
    pub const ERR: u8 = 2;
    /// The handler panicked; payload: message and location strings.
    pub const PANIC: u8 = 3;
    /// The stack-overflow signal handler ran; empty payload.
    pub const STACK_OVERFLOW: u8 = 4;
    /// `exit` was called; empty payload.
    pub const EXIT_CALLED: u8 = 5;
    /// The child-side executor failed (request decoding, output encoding,
    /// handler mismatch); payload: a message.
    pub const FAILURE: u8 = 6;
    /// Length of a record header.
    pub const HEADER_LEN: usize = 9;
}

/// Encodes one child record.
pub fn encode_record(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record::HEADER_LEN + payload.len());
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The outcome the child wrote, as decoded from its records. The encoded
/// output and error borrow from the records, so a large result is not
/// copied before it is deserialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildResult<'a> {
    /// Encoded `Ok` output.
    Ok(&'a [u8]),
    /// Encoded handler error.
    Err(&'a [u8]),
    /// A panic caught by the child.
    Panic {
        /// The panic message.
        message: String,
        /// The panic's source location, when known.
        location: Option<String>,
    },
    /// The child-side executor failed.
    Failure(String),
}

/// Everything decoded from the result pipe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildRecords<'a> {
    /// The last result record.
    pub result: Option<ChildResult<'a>>,
    /// The stack-overflow marker was written.
    pub stack_overflow: bool,
    /// The `exit` marker was written.
    pub exit_called: bool,
    /// The records were cut short or malformed.
    pub malformed: Option<String>,
}

/// Decodes the records a child wrote. Never panics; a malformed stream gives
/// the records read before the fault and a `malformed` message.
pub fn decode_records(bytes: &[u8]) -> ChildRecords<'_> {
    let mut out = ChildRecords::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < record::HEADER_LEN {
            out.malformed = Some(format!(
                "result record header cut short after {} of {} bytes",
                rest.len(),
                record::HEADER_LEN
            ));
            break;
        }
        let tag = rest[0];
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&rest[1..9]);
        let len = u64::from_le_bytes(len_bytes);
        let available = (rest.len() - record::HEADER_LEN) as u64;
        if len > available {
            out.malformed = Some(format!(
                "result record of {len} bytes cut short after {available} bytes"
            ));
            break;
        }
        let payload = &rest[record::HEADER_LEN..record::HEADER_LEN + len as usize];
        rest = &rest[record::HEADER_LEN + len as usize..];
        match tag {
            record::OK => out.result = Some(ChildResult::Ok(payload)),
            record::ERR => out.result = Some(ChildResult::Err(payload)),
            record::PANIC => {
                let mut r = Reader::new(payload);
                let decoded = r.str("panic message").and_then(|message| {
                    let has_location = r.u8("panic location flag")?;
                    let location = r.str("panic location")?;
                    Ok((
                        message.to_owned(),
                        (has_location != 0).then(|| location.to_owned()),
                    ))
                });
                match decoded {
                    Ok((message, location)) => {
                        out.result = Some(ChildResult::Panic { message, location })
                    }
                    Err(e) => out.malformed = Some(format!("panic record: {e}")),
                }
            }
            record::STACK_OVERFLOW => out.stack_overflow = true,
            record::EXIT_CALLED => out.exit_called = true,
            record::FAILURE => {
                out.result = Some(ChildResult::Failure(
                    String::from_utf8_lossy(payload).into_owned(),
                ))
            }
            other => {
                out.malformed = Some(format!("unknown result record tag {other}"));
                break;
            }
        }
    }
    out
}

/// Encodes the payload of a panic record.
pub fn encode_panic(message: &str, location: Option<&str>) -> Vec<u8> {
    let mut w = Writer::new();
    w.str(message)
        .u8(u8::from(location.is_some()))
        .str(location.unwrap_or(""));
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_report() -> Report {
        Report {
            id: 7,
            pid: 1234,
            spawn_failure: None,
            wait_status: 0x0b,
            peak_rss_bytes: 4096,
            elapsed: Duration::from_micros(1500),
            timed_out: true,
            escalated_to_kill: false,
            cancelled: true,
            records: encode_record(record::OK, b"abc"),
            records_total: 12,
            stdout_tail: b"out".to_vec(),
            stdout_total: 3,
            stderr_tail: b"err".to_vec(),
            stderr_total: 3,
            descendants_killed: 2,
        }
    }

    #[test]
    fn report_round_trips() {
        let report = sample_report();
        assert_eq!(Report::decode(&report.encode()).unwrap(), report);
    }

    #[test]
    fn request_round_trips() {
        let payload = vec![9; 100];
        let request = Request {
            id: 1,
            trampoline_offset: -4096,
            handler_type: "a::B",
            fingerprint: &[1, 2, 3],
            timeout: Duration::from_millis(100),
            grace: Duration::ZERO,
            max_heap_size: Some(1 << 20),
            max_result_size: 99,
            output_tail: 10,
            payload: &payload,
        };
        let body = request.encode();
        assert_eq!(Request::decode(&body).unwrap(), request);
    }

    #[test]
    fn request_head_is_body_prefix() {
        let payload = b"payload bytes";
        let request = Request {
            id: 2,
            trampoline_offset: 8,
            handler_type: "c::D",
            fingerprint: &[4],
            timeout: Duration::from_secs(1),
            grace: Duration::from_millis(5),
            max_heap_size: None,
            max_result_size: 1,
            output_tail: 2,
            payload,
        };
        let head = request.encode_head();
        let body = request.encode();
        assert_eq!(&body[..head.len()], &head[..]);
        assert_eq!(&body[head.len()..], &payload[..]);
    }

    #[test]
    fn report_decode_owned_keeps_records_allocation() {
        let mut report = sample_report();
        report.records = vec![7; 5000];
        let body = report.encode();
        let address = body.as_ptr();
        let decoded = Report::decode_owned(body).unwrap();
        assert_eq!(decoded, report);
        assert_eq!(decoded.records.as_ptr(), address);
    }

    #[test]
    fn report_rejects_records_longer_than_body() {
        let mut body = sample_report().encode();
        let len = body.len();
        body[len - 8..].copy_from_slice(&(len as u64).to_le_bytes());
        let error = Report::decode(&body).unwrap_err();
        assert!(error.0.contains("do not fit"), "{error}");
        assert!(Report::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn decoder_fills_large_body_in_doubling_steps() {
        let body: Vec<u8> = (0..(5 << 20) + 3).map(|i| i as u8).collect();
        let frame = encode_frame(Kind::Request, &body);
        let mut decoder = FrameDecoder::new(u64::MAX);
        let (first, used) = decoder.feed(&frame[..100]).unwrap();
        assert!(first.is_none());
        assert_eq!(used, 100);
        let mut position = 100;
        let mut steps = Vec::new();
        while let Some((partial, step)) = decoder.body_to_fill() {
            assert!(step <= partial.len().max(1 << 20), "step {step}");
            steps.push(step);
            partial.extend_from_slice(&frame[position..position + step]);
            position += step;
        }
        assert_eq!(position, frame.len());
        assert_eq!(steps.len(), 4, "{steps:?}");
        let (kind, decoded) = decoder.take_filled().unwrap();
        assert_eq!(kind, Kind::Request);
        assert_eq!(decoded, body);
        assert!(decoder.take_filled().is_none());
        assert!(!decoder.is_mid_frame());
    }

    #[test]
    fn decoder_feeds_after_filled_frame() {
        let mut stream = encode_frame(Kind::Report, &[5; 3000]);
        stream.extend(encode_frame(Kind::Cancel, &encode_cancel(9)));
        let mut decoder = FrameDecoder::new(1 << 20);
        let (_, used) = decoder.feed(&stream[..20]).unwrap();
        let (partial, step) = decoder.body_to_fill().unwrap();
        assert_eq!(step, 3000 - 4);
        partial.extend_from_slice(&stream[used..used + step]);
        let (kind, body) = decoder.take_filled().unwrap();
        assert_eq!((kind, body.len()), (Kind::Report, 3000));
        let rest = &stream[used + step..];
        let (cancel, used) = decoder.feed(rest).unwrap();
        assert_eq!(used, rest.len());
        let (kind, body) = cancel.unwrap();
        assert_eq!(kind, Kind::Cancel);
        assert_eq!(decode_cancel(&body), Ok(9));
    }

    #[test]
    fn decoder_rejects_oversized_frame_before_allocating() {
        let mut decoder = FrameDecoder::new(10);
        let header = encode_header(Kind::Report, 11);
        let error = decoder.feed(&header).unwrap_err();
        assert!(error.0.contains("over the limit of 10 bytes"), "{error}");
    }

    #[test]
    fn decoder_rejects_bad_magic_and_version() {
        let mut header = encode_header(Kind::Hello, 0);
        header[0] = b'X';
        assert!(
            FrameDecoder::new(10)
                .feed(&header)
                .unwrap_err()
                .0
                .contains("magic")
        );
        let mut header = encode_header(Kind::Hello, 0);
        header[4] = 9;
        assert!(
            FrameDecoder::new(10)
                .feed(&header)
                .unwrap_err()
                .0
                .contains("version")
        );
    }

    #[test]
    fn records_decode_panic_and_markers() {
        let mut bytes = encode_record(record::STACK_OVERFLOW, &[]);
        bytes.extend(encode_record(
            record::PANIC,
            &encode_panic("boom", Some("src/lib.rs:1:2")),
        ));
        let records = decode_records(&bytes);
        assert!(records.stack_overflow);
        assert_eq!(
            records.result,
            Some(ChildResult::Panic {
                message: "boom".into(),
                location: Some("src/lib.rs:1:2".into())
            })
        );
        assert_eq!(records.malformed, None);
    }

    #[test]
    fn records_report_truncation() {
        let bytes = encode_record(record::OK, b"abcdef");
        let records = decode_records(&bytes[..12]);
        assert_eq!(records.result, None);
        assert!(records.malformed.unwrap().contains("cut short"));
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), split in 0usize..512) {
            let mut decoder = FrameDecoder::new(256);
            let split = split.min(bytes.len());
            let mut input = &bytes[..split];
            for _ in 0..2 {
                while !input.is_empty() {
                    match decoder.feed(input) {
                        Ok((frame, used)) => {
                            if let Some((_, body)) = frame {
                                prop_assert!(body.len() <= 256);
                                let _ = Report::decode(&body);
                                let _ = Request::decode(&body);
                                let _ = Hello::decode(&body);
                                let _ = Started::decode(&body);
                            }
                            prop_assert!(used > 0 || input.is_empty());
                            input = &input[used..];
                        }
                        Err(_) => { input = &[]; }
                    }
                }
                input = &bytes[split..];
            }
        }

        #[test]
        fn records_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_records(&bytes);
        }

        #[test]
        fn truncated_report_is_an_error(cut in 0usize..200) {
            let body = sample_report().encode();
            let cut = cut.min(body.len() - 1);
            prop_assert!(Report::decode(&body[..cut]).is_err());
        }

        #[test]
        fn frames_survive_any_split(split in 0usize..64) {
            let body = sample_report().encode();
            let frame = encode_frame(Kind::Report, &body);
            let split = split.min(frame.len());
            let mut decoder = FrameDecoder::new(1 << 20);
            let (first, used) = decoder.feed(&frame[..split]).unwrap();
            prop_assert!(first.is_none() || split == frame.len());
            prop_assert_eq!(used, split);
            if first.is_none() {
                let (second, _) = decoder.feed(&frame[split..]).unwrap();
                let (kind, got) = second.unwrap();
                prop_assert_eq!(kind, Kind::Report);
                prop_assert_eq!(got, body.clone());
            }
        }
    }
}
