//! A targeted protobuf reader over OTLP request bytes.
//!
//! The hot path reads only the handful of fields the processors need (resource
//! identity, span kind, times, status, one attribute) straight from the
//! request body, without building the full message tree: no allocation per
//! span, strings borrowed from the body. Field numbers are those of the OTLP
//! protos (`opentelemetry/proto/{trace,logs,common,resource}/v1/*.proto`);
//! `tests/decode_differential.rs`-style checks in this module compare every
//! result with a full decode by `opentelemetry-proto`.
//!
//! Every length is checked, so truncated or garbage input is an error, never a
//! panic or an out-of-bounds read. Nested messages the reader does not look
//! into are skipped whole and not validated, as any proto3 reader skips
//! unknown fields.

use bytes::Bytes;

use crate::model::spans::{Attr, SpanDetail, SpanKeys, SpanKind, SpanRef, TEXT_ATTRS, Text, extra};
use crate::model::{
    LogDeployment, LogGroup, LogSummary, RequestGroup, ResourceIdentity, TraceSummary,
    UNKNOWN_SERVICE,
};

/// Why a body is not a valid OTLP protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf in {message}: {problem}")]
pub struct WireError {
    /// The OTLP message being read.
    pub message: &'static str,
    /// What was wrong.
    pub problem: &'static str,
}

/// One field's value, borrowed from the buffer.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(#[allow(dead_code)] u32),
    Bytes(&'a [u8]),
}

/// Iterates over the top-level fields of one message.
struct Fields<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Fields { buf, message }
    }

    fn error(&self, problem: &'static str) -> WireError {
        WireError {
            message: self.message,
            problem,
        }
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Most keys and lengths fit one byte.
        if let Some(&byte) = self.buf.first()
            && byte < 0x80
        {
            self.buf = &self.buf[1..];
            return Ok(u64::from(byte));
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    return Err(self.error("varint overflows 64 bits"));
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(self.error(if self.buf.len() < 10 {
            "truncated varint"
        } else {
            "varint longer than 10 bytes"
        }))
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(self.error("field length runs past the end of the message"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    #[inline]
    fn next_field(&mut self) -> Option<Result<(u32, Value<'a>), WireError>> {
        if self.buf.is_empty() {
            return None;
        }
        Some(self.read_field())
    }

    #[inline(always)]
    fn read_field(&mut self) -> Result<(u32, Value<'a>), WireError> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(self.error("invalid field number"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let bytes = self.take(8)?;
                let mut le = [0u8; 8];
                le.copy_from_slice(bytes);
                Value::Fixed64(u64::from_le_bytes(le))
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| self.error("length too large"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let bytes = self.take(4)?;
                let mut le = [0u8; 4];
                le.copy_from_slice(bytes);
                Value::Fixed32(u32::from_le_bytes(le))
            }
            3 | 4 => return Err(self.error("groups are not used by OTLP")),
            _ => return Err(self.error("invalid wire type")),
        };
        Ok((field as u32, value))
    }
}

fn expect_bytes<'a>(value: Value<'a>, message: &'static str) -> Result<&'a [u8], WireError> {
    match value {
        Value::Bytes(bytes) => Ok(bytes),
        _ => Err(WireError {
            message,
            problem: "wrong wire type for a message or string field",
        }),
    }
}

fn expect_varint(value: Value<'_>, message: &'static str) -> Result<u64, WireError> {
    match value {
        Value::Varint(v) => Ok(v),
        _ => Err(WireError {
            message,
            problem: "wrong wire type for an integer field",
        }),
    }
}

fn expect_fixed64(value: Value<'_>, message: &'static str) -> Result<u64, WireError> {
    match value {
        Value::Fixed64(v) => Ok(v),
        _ => Err(WireError {
            message,
            problem: "wrong wire type for a fixed64 field",
        }),
    }
}

fn utf8<'a>(bytes: &'a [u8], message: &'static str) -> Result<&'a [u8], WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError {
        message,
        problem: "string field is not valid UTF-8",
    })?;
    Ok(bytes)
}

/// Log record attributes that make it a deployment event (OpenTelemetry
/// semantic conventions), in the order `summarize_logs` reads them.
const DEPLOYMENT_KEYS: [&[u8]; 5] = [
    b"deployment.id",
    b"deployment.status",
    b"deployment.environment.name",
    b"service.name",
    b"vcs.ref.head.revision",
];

// OTLP enum values read here.
const SPAN_KIND_SERVER: u64 = 2;
const SPAN_KIND_CLIENT: u64 = 3;
const SPAN_KIND_PRODUCER: u64 = 4;
const SPAN_KIND_CONSUMER: u64 = 5;
const STATUS_CODE_ERROR: u64 = 2;
const SEVERITY_NUMBER_ERROR: u64 = 17;

/// A scalar attribute value, as far as the processors care.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AttributeValue<'a> {
    String(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Other,
}

/// Reads a `KeyValue` whose key is one of `wanted`: the key's position in
/// `wanted` and the scalar value. Keys are compared as bytes before anything
/// else is read, so the (often long) values of other attributes are skipped
/// unread.
fn wanted_key_value<'a, K: AsRef<[u8]>>(
    buf: &'a [u8],
    wanted: &[K],
) -> Result<Option<(usize, AttributeValue<'a>)>, WireError> {
    key_value(buf, |key| wanted.iter().position(|w| w.as_ref() == key))
}

/// Reads a `KeyValue` whose key `find` places (`None`: not wanted, and
/// its value is skipped unread).
#[inline]
fn key_value<'a>(
    buf: &'a [u8],
    find: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Option<(usize, AttributeValue<'a>)>, WireError> {
    const MSG: &str = "KeyValue";
    let mut which = None;
    let mut value = None;
    let mut fields = Fields::new(buf, MSG);
    while let Some(field) = fields.next_field() {
        match field? {
            (1, v) => {
                which = find(expect_bytes(v, MSG)?);
                if which.is_none() {
                    return Ok(None);
                }
            }
            (2, v) => value = Some(expect_bytes(v, MSG)?),
            _ => {}
        }
    }
    match (which, value) {
        (Some(i), Some(value)) => Ok(Some((i, any_value(value)?))),
        (Some(i), None) => Ok(Some((i, AttributeValue::Other))),
        _ => Ok(None),
    }
}

fn any_value(buf: &[u8]) -> Result<AttributeValue<'_>, WireError> {
    const MSG: &str = "AnyValue";
    let mut value = AttributeValue::Other;
    let mut fields = Fields::new(buf, MSG);
    while let Some(field) = fields.next_field() {
        value = match field? {
            (1, v) => AttributeValue::String(utf8(expect_bytes(v, MSG)?, MSG)?),
            (2, Value::Varint(b)) => AttributeValue::Bool(b != 0),
            (3, v) => AttributeValue::Int(expect_varint(v, MSG)? as i64),
            (4, v) => AttributeValue::Double(f64::from_bits(expect_fixed64(v, MSG)?)),
            _ => AttributeValue::Other,
        };
    }
    Ok(value)
}

/// The request being read, and what its identities are cut from: the
/// shared body itself (no copy; the summary then holds the body until it
/// is applied), or, for a body only borrowed (a Kafka message in
/// librdkafka's buffer), copies of the few bytes of each name.
#[derive(Clone, Copy)]
struct Body<'a> {
    buf: &'a [u8],
    owner: Option<&'a Bytes>,
}

impl<'a> Body<'a> {
    fn shared(body: &'a Bytes) -> Self {
        Body {
            buf: body,
            owner: Some(body),
        }
    }

    fn borrowed(buf: &'a [u8]) -> Self {
        Body { buf, owner: None }
    }

    /// `s`, a slice of this body, as `Bytes`.
    fn share(&self, s: &[u8]) -> Bytes {
        match self.owner {
            Some(body) => body.slice_ref(s),
            None => Bytes::copy_from_slice(s),
        }
    }
}

/// Reads the service identity from a `Resource` message.
fn resource_identity(body: Body<'_>, buf: &[u8]) -> Result<ResourceIdentity, WireError> {
    const MSG: &str = "Resource";
    const KEYS: [&[u8]; 3] = [
        b"service.name",
        b"deployment.environment.name",
        b"deployment.environment",
    ];
    let mut found: [Option<&[u8]>; 3] = [None; 3];
    let mut fields = Fields::new(buf, MSG);
    while let Some(field) = fields.next_field() {
        if let (1, v) = field?
            && let Some((i, AttributeValue::String(s))) =
                wanted_key_value(expect_bytes(v, MSG)?, &KEYS)?
        {
            found[i] = Some(s);
        }
    }
    let [service, env_name, env_legacy] = found;
    let service = match service {
        Some(s) if !s.is_empty() => body.share(s),
        _ => Bytes::from_static(UNKNOWN_SERVICE),
    };
    let environment = env_name
        .or(env_legacy)
        .map(|e| body.share(e))
        .unwrap_or_default();
    Ok(ResourceIdentity {
        service,
        environment,
    })
}

/// Finds the `Resource` of a `ResourceSpans`/`ResourceLogs`/`ResourceMetrics`
/// (field 1 in all three), wherever it stands among the fields.
fn find_resource(
    body: Body<'_>,
    buf: &[u8],
    message: &'static str,
) -> Result<ResourceIdentity, WireError> {
    let mut identity = None;
    let mut fields = Fields::new(buf, message);
    while let Some(field) = fields.next_field() {
        if let (1, v) = field? {
            identity = Some(resource_identity(body, expect_bytes(v, message)?)?);
        }
    }
    Ok(identity.unwrap_or_else(|| resource_identity(body, &[]).unwrap_or_default()))
}

/// What the reader needs of one span.
struct SpanFacts {
    kind: u64,
    start: u64,
    end: u64,
    status_error: bool,
    /// For a SERVER span, whether its HTTP response status is 5xx; `None`
    /// when it has no status attribute (or is not SERVER).
    http_error: Option<bool>,
}

/// Reads a span's kind, times and status in one pass, and for a SERVER span
/// whose kind comes before its attributes (as every encoder writes them),
/// its HTTP status as well, so that the span is walked once.
#[inline(always)]
fn span_facts(buf: &[u8]) -> Result<SpanFacts, WireError> {
    const MSG: &str = "Span";
    let mut facts = SpanFacts {
        kind: 0,
        start: 0,
        end: 0,
        status_error: false,
        http_error: None,
    };
    // Attributes passed over while the span did not read as SERVER (its
    // kind not yet seen, in an unusual field order): if it ends up SERVER,
    // they are looked at again (`http_server_error`), so that the first
    // status attribute decides, as in a full decode.
    let mut unchecked_attributes = false;
    let mut fields = Fields::new(buf, MSG);
    while let Some(field) = fields.next_field() {
        match field? {
            (6, v) => facts.kind = expect_varint(v, MSG)?,
            (7, v) => facts.start = expect_fixed64(v, MSG)?,
            (8, v) => facts.end = expect_fixed64(v, MSG)?,
            (9, v) => {
                if facts.kind != SPAN_KIND_SERVER {
                    unchecked_attributes = true;
                } else if facts.http_error.is_none() {
                    facts.http_error = http_status_attribute(expect_bytes(v, MSG)?)?;
                }
            }
            (15, v) => facts.status_error = status_is_error(expect_bytes(v, MSG)?)?,
            _ => {}
        }
    }
    if facts.kind == SPAN_KIND_SERVER && unchecked_attributes {
        facts.http_error = Some(http_server_error(buf)?);
    }
    Ok(facts)
}

/// The longest attribute value a detail keeps, in bytes: the processors
/// normalise to shorter, and a client's megabyte-long "table name" is not
/// copied.
const MAX_DETAIL_TEXT: usize = 256;

/// Reads a span in one pass for the `dependencies` processor: its facts, as
/// [`span_facts`] gives them (the same figures for `red`), and its detail
/// when the span is one that processor reads.
fn span_detail(
    buf: &[u8],
    keys: &SpanKeys,
    out: &mut TraceSummary,
    resource: u32,
) -> Result<(SpanFacts, Option<SpanDetail>), WireError> {
    const MSG: &str = "Span";
    let text = &mut out.detail_text;
    let attributes = &mut out.detail_attributes;
    let (text_start, attributes_start) = (text.len(), attributes.len());
    let mut facts = SpanFacts {
        kind: 0,
        start: 0,
        end: 0,
        status_error: false,
        http_error: None,
    };
    let mut detail = SpanDetail {
        resource,
        kind: SpanKind::Internal,
        error: false,
        start_ns: 0,
        end_ns: 0,
        trace_id: [0; 16],
        span_id: [0; 8],
        parent_span_id: [0; 8],
        link: None,
        attributes: (attributes_start as u32, 0),
        cache_hit: None,
        creation_ns: None,
    };
    // The first of a repeated attribute decides, as for `red`'s status.
    let mut seen: u64 = 0;
    // Which attributes the span's kind needs (all, until the kind is
    // known: encoders write it first, but need not).
    let mut needed = u64::MAX;
    let mut fields = Fields::new(buf, MSG);
    while let Some(field) = fields.next_field() {
        match field? {
            (1, v) => detail.trace_id = id(expect_bytes(v, MSG)?),
            (2, v) => detail.span_id = id(expect_bytes(v, MSG)?),
            (4, v) => detail.parent_span_id = id(expect_bytes(v, MSG)?),
            (6, v) => {
                facts.kind = expect_varint(v, MSG)?;
                needed = needed_by(facts.kind);
            }
            (7, v) => facts.start = expect_fixed64(v, MSG)?,
            (8, v) => facts.end = expect_fixed64(v, MSG)?,
            (9, v) => {
                let Some((i, value)) = key_value(expect_bytes(v, MSG)?, |k| keys.find(k))? else {
                    continue;
                };
                if seen & (1 << i) != 0 || needed & (1 << i) == 0 {
                    continue;
                }
                seen |= 1 << i;
                match (i, value) {
                    (i, AttributeValue::String(s)) if i < TEXT_ATTRS => {
                        let mut n = s.len().min(MAX_DETAIL_TEXT);
                        // `s` is UTF-8: cut at a character boundary.
                        while n < s.len() && (s[n] & 0xC0) == 0x80 {
                            n -= 1;
                        }
                        attributes.push(Text {
                            attr: i as u8,
                            start: text.len() as u32,
                            len: n as u32,
                        });
                        text.extend_from_slice(&s[..n]);
                    }
                    (extra::HTTP_STATUS | extra::HTTP_STATUS_OLD, value)
                        if facts.http_error.is_none() =>
                    {
                        facts.http_error = Some(status_code(value) >= 500);
                    }
                    (extra::CACHE_HIT, value) => detail.cache_hit = cache_hit(value),
                    (extra::CREATION_TIME, AttributeValue::Int(ns)) if ns > 0 => {
                        detail.creation_ns = Some(ns as u64);
                    }
                    _ => {}
                }
            }
            (13, v) if detail.link.is_none() => detail.link = link(expect_bytes(v, MSG)?)?,
            (15, v) => facts.status_error = status_is_error(expect_bytes(v, MSG)?)?,
            _ => {}
        }
    }
    detail.kind = SpanKind::from_otlp(facts.kind);
    let needed = needed_by(facts.kind);
    if needed != u64::MAX {
        // Attributes read before the kind was known: keep what a span of
        // its kind keeps, as if it had come first.
        let mut i = attributes_start;
        while i < attributes.len() {
            if needed & (1 << attributes[i].attr) == 0 {
                attributes.remove(i);
            } else {
                i += 1;
            }
        }
        if needed & (1 << extra::CACHE_HIT) == 0 {
            detail.cache_hit = None;
        }
        if needed & (1 << extra::CREATION_TIME) == 0 {
            detail.creation_ns = None;
        }
        if needed & (1 << extra::HTTP_STATUS) == 0 {
            facts.http_error = None;
        }
    }
    detail.error = facts.status_error || facts.http_error == Some(true);
    // `red` reads the HTTP status of SERVER spans only.
    if facts.kind != SPAN_KIND_SERVER {
        facts.http_error = None;
    }
    let wanted = match detail.kind {
        SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => true,
        SpanKind::Server => detail.parent_span_id != [0; 8],
        SpanKind::Internal => false,
    } || detail.cache_hit.is_some();
    if !wanted || facts.end < facts.start {
        text.truncate(text_start);
        attributes.truncate(attributes_start);
        return Ok((facts, None));
    }
    detail.attributes.1 = (attributes.len() - attributes_start) as u32;
    detail.start_ns = facts.start;
    detail.end_ns = facts.end;
    Ok((facts, Some(detail)))
}

/// The attributes (bits by position in [`SpanKeys::keys`]) a span of OTLP
/// kind `kind` needs: a SERVER span its HTTP status only (for its error; it
/// is read for the service graph, by its ids), an INTERNAL one the cache
/// attributes only, the others everything.
fn needed_by(kind: u64) -> u64 {
    const fn bit(i: usize) -> u64 {
        1 << i
    }
    const STATUS: u64 = bit(extra::HTTP_STATUS) | bit(extra::HTTP_STATUS_OLD);
    const CACHE: u64 = bit(Attr::CacheName as usize)
        | bit(Attr::DbSystemName as usize)
        | bit(Attr::DbSystem as usize)
        | bit(extra::CACHE_HIT);
    match kind {
        SPAN_KIND_SERVER => STATUS,
        SPAN_KIND_CLIENT | SPAN_KIND_PRODUCER | SPAN_KIND_CONSUMER => u64::MAX,
        _ => CACHE,
    }
}

/// A trace or span id of `N` bytes; all zero when it has another length
/// (absent, or invalid: such a span pairs with nothing).
fn id<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().unwrap_or([0; N])
}

/// The (trace id, span id) of a `Span.Link`.
fn link(buf: &[u8]) -> Result<Option<SpanRef>, WireError> {
    const MSG: &str = "Span.Link";
    let (mut trace, mut span) = ([0; 16], [0; 8]);
    let mut fields = Fields::new(buf, MSG);
    while let Some(field) = fields.next_field() {
        match field? {
            (1, v) => trace = id(expect_bytes(v, MSG)?),
            (2, v) => span = id(expect_bytes(v, MSG)?),
            _ => {}
        }
    }
    Ok((span != [0; 8]).then_some((trace, span)))
}

/// An HTTP status attribute's value as a number (0 when it is none).
fn status_code(value: AttributeValue<'_>) -> i64 {
    match value {
        AttributeValue::Int(i) => i,
        AttributeValue::Double(d) => d as i64,
        AttributeValue::String(s) => std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        AttributeValue::Bool(_) | AttributeValue::Other => 0,
    }
}

/// A cache hit attribute: a boolean, `true`/`false`/`hit`/`miss` (any
/// case), or 1/0.
fn cache_hit(value: AttributeValue<'_>) -> Option<bool> {
    match value {
        AttributeValue::Bool(b) => Some(b),
        AttributeValue::Int(1) => Some(true),
        AttributeValue::Int(0) => Some(false),
        AttributeValue::String(s) => {
            if s.eq_ignore_ascii_case(b"true") || s.eq_ignore_ascii_case(b"hit") {
                Some(true)
            } else if s.eq_ignore_ascii_case(b"false") || s.eq_ignore_ascii_case(b"miss") {
                Some(false)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The keys of a span's HTTP response status: the current semantic
/// convention, then the older one.
const HTTP_STATUS_KEYS: [&[u8]; 2] = [b"http.response.status_code", b"http.status_code"];

/// If the `KeyValue` in `buf` is an HTTP response status, whether it is 5xx.
#[inline]
fn http_status_attribute(buf: &[u8]) -> Result<Option<bool>, WireError> {
    let Some((_, value)) = wanted_key_value(buf, &HTTP_STATUS_KEYS)? else {
        return Ok(None);
    };
    Ok(Some(status_code(value) >= 500))
}

fn status_is_error(buf: &[u8]) -> Result<bool, WireError> {
    const MSG: &str = "Status";
    let mut code = 0;
    let mut fields = Fields::new(buf, MSG);
    while let Some(field) = fields.next_field() {
        if let (3, v) = field? {
            code = expect_varint(v, MSG)?;
        }
    }
    Ok(code == STATUS_CODE_ERROR)
}

/// Whether an HTTP server span's response status is 5xx
/// (`http.response.status_code`, or the older `http.status_code`): the
/// first such attribute decides.
fn http_server_error(buf: &[u8]) -> Result<bool, WireError> {
    const MSG: &str = "Span";
    let mut fields = Fields::new(buf, MSG);
    while let Some(field) = fields.next_field() {
        if let (9, v) = field?
            && let Some(error) = http_status_attribute(expect_bytes(v, MSG)?)?
        {
            return Ok(error);
        }
    }
    Ok(false)
}

/// Reduces an `ExportTraceServiceRequest` body to its requests, appending to
/// `out` (which callers may reuse across requests after clearing it). The
/// summary's identities are slices of `body`.
pub fn summarize_traces(body: &Bytes, out: &mut TraceSummary) -> Result<(), WireError> {
    traces(Body::shared(body), out)
}

/// As [`summarize_traces`], for a body that is only borrowed: the
/// identities are copied out (a few bytes each) rather than the whole body.
pub fn summarize_traces_borrowed(body: &[u8], out: &mut TraceSummary) -> Result<(), WireError> {
    traces(Body::borrowed(body), out)
}

const TRACES_REQUEST: &str = "ExportTraceServiceRequest";
const LOGS_REQUEST: &str = "ExportLogsServiceRequest";

/// Reads one resource entry (`ResourceSpans`, `ResourceLogs`) into a summary.
type ReadResource<S> = fn(Body<'_>, &[u8], &mut S) -> Result<(), WireError>;

/// Reads every resource entry (field 1) of the export request `body`.
fn resources<S>(
    body: Body<'_>,
    message: &'static str,
    read: ReadResource<S>,
    out: &mut S,
) -> Result<(), WireError> {
    let mut requests = Fields::new(body.buf, message);
    while let Some(field) = requests.next_field() {
        let (1, v) = field? else { continue };
        read(body, expect_bytes(v, message)?, out)?;
    }
    Ok(())
}

fn traces(body: Body<'_>, out: &mut TraceSummary) -> Result<(), WireError> {
    resources(body, TRACES_REQUEST, resource_spans, out)
}

/// Reads one `ResourceSpans` (field 1 of the request) into `out`.
fn resource_spans(
    body: Body<'_>,
    resource_spans: &[u8],
    out: &mut TraceSummary,
) -> Result<(), WireError> {
    const RS: &str = "ResourceSpans";
    const SS: &str = "ScopeSpans";
    let identity = find_resource(body, resource_spans, RS)?;
    let first = out.latencies_ns.len();
    let mut errors = 0;
    let keys = out.detail_keys.clone();
    if keys.is_some() && out.details.capacity() == 0 {
        // Most batches have details; growing from one by doubling would
        // copy them over and over.
        out.details.reserve(256);
        out.detail_attributes.reserve(1024);
        out.detail_text.reserve(8192);
    }
    let first_detail = out.details.len();
    let resource = out.detail_resources.len() as u32;
    let mut scopes = Fields::new(resource_spans, RS);
    while let Some(field) = scopes.next_field() {
        let (2, v) = field? else { continue };
        let mut spans = Fields::new(expect_bytes(v, RS)?, SS);
        while let Some(field) = spans.next_field() {
            let (2, v) = field? else { continue };
            let span = expect_bytes(v, SS)?;
            out.spans += 1;
            let facts = match keys.as_deref() {
                None => span_facts(span)?,
                Some(keys) => {
                    let (facts, detail) = span_detail(span, keys, out, resource)?;
                    out.details.extend(detail);
                    facts
                }
            };
            if facts.kind != SPAN_KIND_SERVER && facts.kind != SPAN_KIND_CONSUMER {
                continue;
            }
            if facts.end < facts.start {
                out.rejected_spans += 1;
                continue;
            }
            let error = facts.status_error || facts.http_error == Some(true);
            errors += u64::from(error);
            out.latencies_ns.push(facts.end - facts.start);
        }
    }
    if out.details.len() > first_detail {
        out.detail_resources.push(identity.clone());
    }
    if out.latencies_ns.len() > first {
        out.groups.push(RequestGroup {
            identity,
            latencies: first..out.latencies_ns.len(),
            errors,
        });
    }
    Ok(())
}

/// Splits an export request of any signal (`ExportTraceServiceRequest`,
/// `ExportLogsServiceRequest`, `ExportMetricsServiceRequest`: all hold their
/// resources in field 1) by `service.name`: one request per service, made of
/// that service's resource entries copied byte for byte, in order. A request
/// of one service comes back whole, without a copy.
pub fn split_by_service(body: &Bytes) -> Result<Vec<(Bytes, Bytes)>, WireError> {
    const REQ: &str = "export request";
    let mut parts: Vec<(Bytes, Vec<std::ops::Range<usize>>)> = Vec::new();
    let mut fields = Fields::new(body, REQ);
    loop {
        let start = body.len() - fields.buf.len();
        let Some(field) = fields.next_field() else {
            break;
        };
        let end = body.len() - fields.buf.len();
        // Export requests have no other fields; anything else is dropped.
        let (1, v) = field? else { continue };
        let service =
            find_resource(Body::shared(body), expect_bytes(v, REQ)?, "resource entry")?.service;
        match parts.iter_mut().find(|(s, _)| *s == service) {
            Some((_, ranges)) => ranges.push(start..end),
            // A list of byte ranges, starting with this one.
            #[allow(clippy::single_range_in_vec_init)]
            None => parts.push((service, vec![start..end])),
        }
    }
    if let [(service, ranges)] = parts.as_slice()
        && ranges.len() == 1
        && ranges[0] == (0..body.len())
    {
        return Ok(vec![(service.clone(), body.clone())]);
    }
    Ok(parts
        .into_iter()
        .map(|(service, ranges)| {
            let mut part = Vec::with_capacity(ranges.iter().map(|r| r.len()).sum());
            for range in ranges {
                part.extend_from_slice(&body[range]);
            }
            (service, Bytes::from(part))
        })
        .collect())
}

/// Reduces an `ExportLogsServiceRequest` body to per-resource error counts.
pub fn summarize_logs(body: &Bytes, out: &mut LogSummary) -> Result<(), WireError> {
    logs(Body::shared(body), out)
}

/// As [`summarize_logs`], for a body that is only borrowed (identities copied).
pub fn summarize_logs_borrowed(body: &[u8], out: &mut LogSummary) -> Result<(), WireError> {
    logs(Body::borrowed(body), out)
}

fn logs(body: Body<'_>, out: &mut LogSummary) -> Result<(), WireError> {
    resources(body, LOGS_REQUEST, resource_logs, out)
}

/// Reads one `ResourceLogs` (field 1 of the request) into `out`.
fn resource_logs(
    body: Body<'_>,
    resource_logs: &[u8],
    out: &mut LogSummary,
) -> Result<(), WireError> {
    const RL: &str = "ResourceLogs";
    const SL: &str = "ScopeLogs";
    const LR: &str = "LogRecord";
    let identity = find_resource(body, resource_logs, RL)?;
    let mut group = LogGroup {
        identity,
        records: 0,
        errors: 0,
    };
    let mut scopes = Fields::new(resource_logs, RL);
    while let Some(field) = scopes.next_field() {
        let (2, v) = field? else { continue };
        let mut records = Fields::new(expect_bytes(v, RL)?, SL);
        while let Some(field) = records.next_field() {
            let (2, v) = field? else { continue };
            let mut severity = 0;
            let mut time = 0;
            let mut observed = 0;
            let mut deployment: [Option<&[u8]>; 5] = [None; 5];
            let mut fields = Fields::new(expect_bytes(v, SL)?, LR);
            while let Some(field) = fields.next_field() {
                match field? {
                    (1, v) => time = expect_fixed64(v, LR)?,
                    (2, v) => severity = expect_varint(v, LR)?,
                    (6, v) => {
                        if let Some((i, AttributeValue::String(s))) =
                            wanted_key_value(expect_bytes(v, LR)?, &DEPLOYMENT_KEYS)?
                        {
                            deployment[i] = Some(s);
                        }
                    }
                    (11, v) => observed = expect_fixed64(v, LR)?,
                    _ => {}
                }
            }
            group.records += 1;
            group.errors += u64::from(severity >= SEVERITY_NUMBER_ERROR);
            let [id, status, environment, service, revision] = deployment;
            if id.is_some() || status.is_some() {
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                out.deployments.push(LogDeployment {
                    id: text(id),
                    status: text(status),
                    service: text(service),
                    environment: text(environment),
                    revision: text(revision),
                    time: if time != 0 { time } else { observed },
                    resource: group.identity.clone(),
                });
            }
        }
    }
    out.records += group.records;
    if group.records > 0 {
        out.groups.push(group);
    }
    Ok(())
}

/// How much of a buffer the field at its start takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// The whole field is there: its length in bytes.
    Whole(usize),
    /// Only its start: its length once the key and length are there.
    Part(Option<usize>),
}

/// A varint at the start of `buf` and its length in bytes; `None` if `buf`
/// ends before it does.
fn peek_varint(buf: &[u8], message: &'static str) -> Result<Option<(u64, usize)>, WireError> {
    let mut fields = Fields::new(buf, message);
    match fields.varint() {
        Ok(value) => Ok(Some((value, buf.len() - fields.buf.len()))),
        Err(_) if buf.len() < 10 && buf.iter().all(|b| *b >= 0x80) => Ok(None),
        Err(e) => Err(e),
    }
}

fn extent(buf: &[u8], message: &'static str) -> Result<Extent, WireError> {
    let error = |problem| WireError { message, problem };
    let Some((key, k)) = peek_varint(buf, message)? else {
        return Ok(Extent::Part(None));
    };
    let field = key >> 3;
    if field == 0 || field > u64::from(u32::MAX >> 3) {
        return Err(error("invalid field number"));
    }
    let rest = &buf[k..];
    let total = match key & 7 {
        0 => match peek_varint(rest, message)? {
            Some((_, n)) => k + n,
            None => return Ok(Extent::Part(None)),
        },
        1 => k + 8,
        5 => k + 4,
        2 => match peek_varint(rest, message)? {
            Some((len, n)) => usize::try_from(len)
                .ok()
                .and_then(|len| (k + n).checked_add(len))
                .ok_or_else(|| error("length too large"))?,
            None => return Ok(Extent::Part(None)),
        },
        3 | 4 => return Err(error("groups are not used by OTLP")),
        _ => return Err(error("invalid wire type")),
    };
    Ok(if total <= buf.len() {
        Extent::Whole(total)
    } else {
        Extent::Part(Some(total))
    })
}

/// An export request read as it arrives, in pieces of any size (the DATA
/// frames of an HTTP/2 stream), without first gathering it into one buffer.
///
/// Each top-level field (one resource with all its spans or records) whose
/// bytes lie within one piece is read where it lies; only a field cut by the
/// end of a piece is gathered, alone, in a buffer of its own. Identities are
/// copied out (a few bytes each), so no piece is held once pushed. The
/// result is exactly that of reading the whole request at once
/// ([`summarize_traces`], [`summarize_logs`]).
pub struct RequestStream<S> {
    summary: S,
    /// The start of a field whose end is in a piece yet to come.
    partial: Vec<u8>,
    /// Bytes of the request not pushed yet.
    remaining: usize,
    message: &'static str,
    read: ReadResource<S>,
}

impl RequestStream<TraceSummary> {
    /// Reads an `ExportTraceServiceRequest` of `len` bytes.
    pub fn traces(len: usize) -> Self {
        Self::traces_with(len, None)
    }

    /// As [`Self::traces`], reading span details with `keys`.
    pub fn traces_with(len: usize, keys: Option<std::sync::Arc<SpanKeys>>) -> Self {
        let mut stream = RequestStream::new(len, TRACES_REQUEST, resource_spans);
        stream.summary.detail_keys = keys;
        stream
    }
}

impl RequestStream<LogSummary> {
    /// Reads an `ExportLogsServiceRequest` of `len` bytes.
    pub fn logs(len: usize) -> Self {
        RequestStream::new(len, LOGS_REQUEST, resource_logs)
    }
}

impl<S: Default> RequestStream<S> {
    fn new(len: usize, message: &'static str, read: ReadResource<S>) -> Self {
        RequestStream {
            summary: S::default(),
            partial: Vec::new(),
            remaining: len,
            message,
            read,
        }
    }

    fn error(&self, problem: &'static str) -> WireError {
        WireError {
            message: self.message,
            problem,
        }
    }

    /// Bytes of the request still to come.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Reads the next piece of the request. After an error the request is
    /// malformed and nothing more should be pushed.
    pub fn push(&mut self, mut piece: &[u8]) -> Result<(), WireError> {
        if piece.len() > self.remaining {
            return Err(self.error("more bytes than the message's length"));
        }
        self.remaining -= piece.len();
        while !piece.is_empty() {
            if self.partial.is_empty() {
                match extent(piece, self.message)? {
                    Extent::Whole(n) => {
                        let (field, rest) = piece.split_at(n);
                        self.field(field)?;
                        piece = rest;
                    }
                    Extent::Part(total) => {
                        if let Some(total) = total {
                            // Checked before reserving: the length is the client's.
                            if total > piece.len() + self.remaining {
                                return Err(
                                    self.error("field length runs past the end of the message")
                                );
                            }
                            self.partial.reserve_exact(total);
                        }
                        self.partial.extend_from_slice(piece);
                        return Ok(());
                    }
                }
            } else {
                match extent(&self.partial, self.message)? {
                    Extent::Whole(_) => self.flush_partial()?,
                    Extent::Part(None) => {
                        // The key or length is cut: a byte at a time (at most 20).
                        self.partial.push(piece[0]);
                        piece = &piece[1..];
                        if let Extent::Whole(_) = extent(&self.partial, self.message)? {
                            self.flush_partial()?;
                        }
                    }
                    Extent::Part(Some(total)) => {
                        let wanted = total - self.partial.len();
                        if wanted > piece.len() + self.remaining {
                            return Err(self.error("field length runs past the end of the message"));
                        }
                        let n = wanted.min(piece.len());
                        self.partial.extend_from_slice(&piece[..n]);
                        piece = &piece[n..];
                        if n == wanted {
                            self.flush_partial()?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads the gathered field and empties the buffer (keeping its memory).
    fn flush_partial(&mut self) -> Result<(), WireError> {
        let partial = std::mem::take(&mut self.partial);
        let result = self.field(&partial);
        self.partial = partial;
        self.partial.clear();
        result
    }

    /// Reads one whole top-level field, as the whole-body reader would.
    fn field(&mut self, field: &[u8]) -> Result<(), WireError> {
        resources(
            Body::borrowed(field),
            self.message,
            self.read,
            &mut self.summary,
        )
    }

    /// The summary, once every byte of the request has been pushed.
    pub fn finish(self) -> Result<S, WireError> {
        if self.remaining > 0 || !self.partial.is_empty() {
            return Err(self.error("field length runs past the end of the message"));
        }
        Ok(self.summary)
    }
}
