//! What the `dependencies` processor reads of a span (and of metrics: the
//! queue lengths), beyond the entry
//! spans' latencies: kinds, ids and the semantic-convention attributes that
//! name a dependency, a queue or a cache.
//!
//! Only decoded when a pipeline has that processor (the decoder is handed
//! [`SpanKeys`]); otherwise the hot path reads no more than before. Values
//! are copied into one text buffer per summary ([`TraceSummary::detail_text`])
//! and referred to by [`Text`] offsets, so a detail is a fixed-size record
//! whether its body was shared or only borrowed.
//!
//! [`TraceSummary::detail_text`]: super::TraceSummary::detail_text

/// A span kind, as OTLP numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpanKind {
    /// `SPAN_KIND_UNSPECIFIED` or `SPAN_KIND_INTERNAL`.
    Internal,
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
    /// `SPAN_KIND_PRODUCER`.
    Producer,
    /// `SPAN_KIND_CONSUMER`.
    Consumer,
}

impl SpanKind {
    /// The kind of OTLP's number `n`; unknown numbers read as internal.
    pub fn from_otlp(n: u64) -> SpanKind {
        match n {
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Internal,
        }
    }
}

/// The attributes a detail keeps, by position in [`SpanKeys::keys`]: the
/// current semantic-convention name first, then the older one it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Attr {
    /// `db.system.name`.
    DbSystemName,
    /// `db.system` (before semantic conventions 1.26).
    DbSystem,
    /// `db.namespace`.
    DbNamespace,
    /// `db.name` (older).
    DbName,
    /// `db.operation.name`.
    DbOperationName,
    /// `db.operation` (older).
    DbOperation,
    /// `db.collection.name`.
    DbCollectionName,
    /// `db.sql.table` (older).
    DbSqlTable,
    /// `server.address`.
    ServerAddress,
    /// `net.peer.name` (older).
    NetPeerName,
    /// `peer.service`.
    PeerService,
    /// `rpc.system`.
    RpcSystem,
    /// `rpc.service`.
    RpcService,
    /// `rpc.method`.
    RpcMethod,
    /// `http.request.method`.
    HttpRequestMethod,
    /// `http.method` (older).
    HttpMethod,
    /// `messaging.system`.
    MessagingSystem,
    /// `messaging.destination.name`.
    MessagingDestination,
    /// `messaging.operation.type`.
    MessagingOperationType,
    /// `messaging.operation` (older).
    MessagingOperation,
    /// `messaging.consumer.group.name`.
    MessagingConsumerGroup,
    /// The configured attribute naming a cache (default `cache.name`).
    CacheName,
}

/// Attributes kept as text.
pub const TEXT_ATTRS: usize = Attr::CacheName as usize + 1;

/// Keys longer than this are never looked for (a configured one is ignored).
pub const MAX_KEY: usize = 128;

/// Positions, in [`SpanKeys::keys`], of the keys that are not text.
pub mod extra {
    /// `http.response.status_code`.
    pub const HTTP_STATUS: usize = super::TEXT_ATTRS;
    /// `http.status_code` (older).
    pub const HTTP_STATUS_OLD: usize = super::TEXT_ATTRS + 1;
    /// The configured cache hit attribute (default `cache.hit`).
    pub const CACHE_HIT: usize = super::TEXT_ATTRS + 2;
    /// The configured message creation time attribute, if any.
    pub const CREATION_TIME: usize = super::TEXT_ATTRS + 3;
}

const FIXED_KEYS: [&str; TEXT_ATTRS - 1] = [
    "db.system.name",
    "db.system",
    "db.namespace",
    "db.name",
    "db.operation.name",
    "db.operation",
    "db.collection.name",
    "db.sql.table",
    "server.address",
    "net.peer.name",
    "peer.service",
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "http.request.method",
    "http.method",
    "messaging.system",
    "messaging.destination.name",
    "messaging.operation.type",
    "messaging.operation",
    "messaging.consumer.group.name",
];

/// The attribute keys the decoder looks for, in [`Attr`] order then
/// [`extra`]: fixed semantic-convention names and the configured ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanKeys {
    /// Every key, as bytes.
    pub keys: Vec<Vec<u8>>,
    /// Per key length (up to [`MAX_KEY`]), the keys of that length: a
    /// span's other attributes are passed over on their length alone, most
    /// of the time, rather than compared with every key.
    by_len: Vec<Vec<(u64, u8)>>,
    /// The OTLP metrics that are queue lengths (read from metrics requests).
    pub queue_metrics: Vec<String>,
    /// The OTLP metrics that count cache hits and misses: (hits metric,
    /// misses metric, cache name).
    pub cache_metrics: Vec<(String, String, String)>,
}

impl SpanKeys {
    /// The keys, with the configured cache attributes and, when set, the
    /// attribute carrying a message's creation time (ns since the epoch).
    pub fn new(cache_name: &str, cache_hit: &str, creation_time: Option<&str>) -> SpanKeys {
        let mut keys: Vec<Vec<u8>> = FIXED_KEYS.iter().map(|k| k.as_bytes().to_vec()).collect();
        keys.push(cache_name.as_bytes().to_vec());
        keys.push(b"http.response.status_code".to_vec());
        keys.push(b"http.status_code".to_vec());
        keys.push(cache_hit.as_bytes().to_vec());
        // Without a configured one, a key no attribute can have (keys are
        // UTF-8; 0xff never is).
        keys.push(creation_time.map_or_else(|| vec![0xff], |k| k.as_bytes().to_vec()));
        let mut by_len = vec![Vec::new(); MAX_KEY + 1];
        for (i, key) in keys.iter().enumerate() {
            if let Some(same) = by_len.get_mut(key.len()) {
                same.push((prefix(key), i as u8));
            }
        }
        SpanKeys {
            keys,
            by_len,
            queue_metrics: Vec::new(),
            cache_metrics: Vec::new(),
        }
    }

    /// The position of `key` among the keys, if it is one.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let same = self.by_len.get(key.len())?;
        if same.is_empty() {
            return None;
        }
        // Keys of one length mostly differ in their first 8 bytes: compared
        // as one number, before any byte-wise comparison.
        let head = prefix(key);
        same.iter()
            .filter(|(p, _)| *p == head)
            .map(|&(_, i)| i as usize)
            .find(|&i| self.keys[i] == key)
    }
}

/// The first 8 bytes of `key` as a number (zero-padded when shorter).
#[inline]
fn prefix(key: &[u8]) -> u64 {
    match key.first_chunk::<8>() {
        Some(head) => u64::from_le_bytes(*head),
        None => {
            let mut head = [0u8; 8];
            head[..key.len()].copy_from_slice(key);
            u64::from_le_bytes(head)
        }
    }
}

impl Default for SpanKeys {
    fn default() -> Self {
        SpanKeys::new("cache.name", "cache.hit", None)
    }
}

/// A (trace id, span id): where a span stands.
pub type SpanRef = ([u8; 16], [u8; 8]);

/// A text attribute of a detail: which, and where its value is in
/// [`super::TraceSummary::detail_text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Text {
    /// The attribute, an [`Attr`] as a number.
    pub attr: u8,
    /// Offset of the first byte.
    pub start: u32,
    /// Length in bytes.
    pub len: u32,
}

/// What the `dependencies` processor reads of one span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanDetail {
    /// Index of the span's resource in [`super::TraceSummary::detail_resources`].
    pub resource: u32,
    /// The span's kind.
    pub kind: SpanKind,
    /// Status ERROR, or an HTTP response status of 500 or more.
    pub error: bool,
    /// Start, ns since the epoch.
    pub start_ns: u64,
    /// End, ns since the epoch (not before the start).
    pub end_ns: u64,
    /// The trace id; all zero when absent.
    pub trace_id: [u8; 16],
    /// The span id; all zero when absent.
    pub span_id: [u8; 8],
    /// The parent span id; all zero for a root span.
    pub parent_span_id: [u8; 8],
    /// The first link's (trace id, span id), if the span has links.
    pub link: Option<SpanRef>,
    /// Where the span's text attributes are in
    /// [`super::TraceSummary::detail_attributes`]: the first, and how many.
    pub attributes: (u32, u32),
    /// The cache hit attribute: true, false, or absent.
    pub cache_hit: Option<bool>,
    /// The message creation time attribute, ns since the epoch.
    pub creation_ns: Option<u64>,
}

impl SpanDetail {
    /// Whether the span has a parent.
    pub fn has_parent(&self) -> bool {
        self.parent_span_id != [0; 8]
    }

    /// Duration in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}
