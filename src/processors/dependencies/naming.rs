//! What a span calls, named by the OpenTelemetry semantic conventions, with
//! the names normalised so that a series stays a series: operations cut to
//! their verb, methods to the known ones, everything to a bounded length.

use crate::model::TraceSummary;
use crate::model::spans::{Attr, SpanDetail, SpanKind};

/// The kind of a dependency: the `type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyType {
    /// A CLIENT span with `db.system.name` (or `db.system`).
    Database,
    /// A CLIENT span with `http.request.method` (or `http.method`).
    Http,
    /// A CLIENT span with `rpc.system`.
    Rpc,
    /// A PRODUCER or CONSUMER span, or a CLIENT span with `messaging.system`.
    Messaging,
    /// Any other CLIENT span.
    Other,
}

impl DependencyType {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyType::Database => "database",
            DependencyType::Http => "http",
            DependencyType::Rpc => "rpc",
            DependencyType::Messaging => "messaging",
            DependencyType::Other => "other",
        }
    }

    /// The type of a label value.
    pub fn parse(s: &str) -> Option<DependencyType> {
        Some(match s {
            "database" => DependencyType::Database,
            "http" => DependencyType::Http,
            "rpc" => DependencyType::Rpc,
            "messaging" => DependencyType::Messaging,
            "other" => DependencyType::Other,
            _ => return None,
        })
    }
}

/// Longest name kept in a label, in bytes (longer ones are cut).
pub const MAX_NAME: usize = 64;

/// Appends the (type, system, dependency, operation) of `d`'s call to `key`
/// (each part followed by a 0 byte), or `None` if `d` calls nothing: a
/// SERVER or INTERNAL span that is not messaging.
pub fn name_call(
    summary: &TraceSummary,
    d: &SpanDetail,
    key: &mut Vec<u8>,
) -> Option<DependencyType> {
    let text = |a: Attr| summary.text(d, a);
    let first = |attrs: &[Attr]| {
        attrs
            .iter()
            .map(|&a| text(a))
            .find(|t| !t.is_empty())
            .unwrap_or_default()
    };
    let messaging_system = text(Attr::MessagingSystem);
    let kind = match d.kind {
        SpanKind::Producer | SpanKind::Consumer => DependencyType::Messaging,
        SpanKind::Client if !messaging_system.is_empty() => DependencyType::Messaging,
        SpanKind::Client if !first(&[Attr::DbSystemName, Attr::DbSystem]).is_empty() => {
            DependencyType::Database
        }
        SpanKind::Client if !text(Attr::RpcSystem).is_empty() => DependencyType::Rpc,
        SpanKind::Client if !first(&[Attr::HttpRequestMethod, Attr::HttpMethod]).is_empty() => {
            DependencyType::Http
        }
        SpanKind::Client => DependencyType::Other,
        SpanKind::Server | SpanKind::Internal => return None,
    };
    key.extend_from_slice(kind.as_str().as_bytes());
    key.push(0);
    let peer = [Attr::PeerService, Attr::ServerAddress, Attr::NetPeerName];
    match kind {
        DependencyType::Messaging => {
            lower(key, non_empty(messaging_system, b"unknown"));
            name(key, non_empty(text(Attr::MessagingDestination), b"unknown"));
            let operation = first(&[Attr::MessagingOperationType, Attr::MessagingOperation]);
            let operation = match operation {
                b"" if d.kind == SpanKind::Consumer => b"process".as_slice(),
                b"" => b"send".as_slice(),
                op => op,
            };
            known(key, operation, MESSAGING_OPERATIONS);
        }
        DependencyType::Database => {
            let system = first(&[Attr::DbSystemName, Attr::DbSystem]);
            lower(key, system);
            let namespace = first(&[
                Attr::DbNamespace,
                Attr::DbName,
                Attr::PeerService,
                Attr::ServerAddress,
                Attr::NetPeerName,
            ]);
            name(key, non_empty(namespace, system));
            let operation = first(&[Attr::DbOperationName, Attr::DbOperation]);
            let collection = first(&[Attr::DbCollectionName, Attr::DbSqlTable]);
            db_operation(key, operation, collection);
        }
        DependencyType::Rpc => {
            lower(key, text(Attr::RpcSystem));
            let service = first(&[Attr::RpcService, Attr::PeerService, Attr::ServerAddress]);
            name(key, non_empty(service, b"unknown"));
            name(key, text(Attr::RpcMethod));
        }
        DependencyType::Http => {
            key.extend_from_slice(b"http\0");
            name(key, non_empty(first(&peer), b"unknown"));
            let method = first(&[Attr::HttpRequestMethod, Attr::HttpMethod]);
            known(key, method, HTTP_METHODS);
        }
        DependencyType::Other => {
            key.extend_from_slice(b"other\0");
            name(key, non_empty(first(&peer), b"unknown"));
            key.push(0);
        }
    }
    Some(kind)
}

/// The cache a span with the hit attribute looked up: the configured name
/// attribute, else its database system, else `cache`; appended to `key`.
pub fn name_cache(summary: &TraceSummary, d: &SpanDetail, key: &mut Vec<u8>) {
    let text = |a: Attr| summary.text(d, a);
    let cache = [Attr::CacheName, Attr::DbSystemName, Attr::DbSystem]
        .iter()
        .map(|&a| text(a))
        .find(|t| !t.is_empty())
        .unwrap_or(b"cache");
    name(key, cache);
}

/// The name of a database a server span's client calls: the node a
/// `database` edge of the service graph ends at.
pub fn database_node(summary: &TraceSummary, d: &SpanDetail) -> Option<String> {
    let text = |a: Attr| summary.text(d, a);
    if d.kind != SpanKind::Client {
        return None;
    }
    let system = [Attr::DbSystemName, Attr::DbSystem]
        .iter()
        .map(|&a| text(a))
        .find(|t| !t.is_empty())?;
    let node = [
        Attr::PeerService,
        Attr::ServerAddress,
        Attr::NetPeerName,
        Attr::DbNamespace,
        Attr::DbName,
    ]
    .iter()
    .map(|&a| text(a))
    .find(|t| !t.is_empty())
    .unwrap_or(system);
    let mut out = Vec::new();
    name(&mut out, node);
    out.pop();
    Some(String::from_utf8_lossy(&out).into_owned())
}

const HTTP_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

const MESSAGING_OPERATIONS: &[&[u8]] = &[
    b"create", b"send", b"receive", b"process", b"settle", b"publish", b"deliver",
];

fn non_empty<'a>(s: &'a [u8], otherwise: &'a [u8]) -> &'a [u8] {
    if s.is_empty() { otherwise } else { s }
}

/// `s` cut to [`MAX_NAME`] bytes (at a character boundary) and a 0.
fn name(key: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len().min(MAX_NAME);
    while n < s.len() && (s[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    // A 0 inside a name would cut the key; no label needs one.
    key.extend(s[..n].iter().map(|&b| if b == 0 { b'_' } else { b }));
    key.push(0);
}

/// As [`name`], in lower case (systems: `PostgreSQL` is `postgresql`).
fn lower(key: &mut Vec<u8>, s: &[u8]) {
    let start = key.len();
    name(key, s);
    key[start..].make_ascii_lowercase();
}

/// `s` if it is one of `known` (any case, written as listed), else `_OTHER`
/// as the HTTP semantic conventions write an unknown method.
fn known(key: &mut Vec<u8>, s: &[u8], known: &[&[u8]]) {
    match known.iter().find(|k| k.eq_ignore_ascii_case(s)) {
        Some(k) => key.extend_from_slice(k),
        None if s.is_empty() => {}
        None => key.extend_from_slice(b"_OTHER"),
    }
    key.push(0);
}

/// A database operation: its first word in upper case (a whole query text
/// in `db.operation` is cut to its verb), then the collection, if any.
fn db_operation(key: &mut Vec<u8>, operation: &[u8], collection: &[u8]) {
    let verb: Vec<u8> = operation
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace)
        .take_while(|b| !b.is_ascii_whitespace())
        .take(32)
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    let start = key.len();
    key.extend_from_slice(&verb);
    if !collection.is_empty() {
        if !verb.is_empty() {
            key.push(b' ');
        }
        name(key, collection);
        key.pop();
    }
    if key.len() - start > 2 * MAX_NAME {
        key.truncate(start + 2 * MAX_NAME);
    }
    key.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(operation: &str, collection: &str) -> String {
        let mut key = Vec::new();
        db_operation(&mut key, operation.as_bytes(), collection.as_bytes());
        key.pop();
        String::from_utf8(key).unwrap()
    }

    #[test]
    fn database_operations_are_cut_to_their_verb() {
        assert_eq!(op("select", "orders"), "SELECT orders");
        assert_eq!(op("  SELECT * FROM orders WHERE id = 7", ""), "SELECT");
        assert_eq!(op("", "orders"), "orders");
        assert_eq!(op("findAndModify", ""), "FINDANDMODIFY");
        assert_eq!(op("", ""), "");
    }

    #[test]
    fn methods_and_operations_outside_the_known_set_are_other() {
        let mut key = Vec::new();
        known(&mut key, b"get", HTTP_METHODS);
        known(&mut key, b"BREW", HTTP_METHODS);
        known(&mut key, b"Publish", MESSAGING_OPERATIONS);
        assert_eq!(key, b"GET\0_OTHER\0publish\0");
    }

    #[test]
    fn names_are_bounded_and_cut_at_a_character() {
        let mut key = Vec::new();
        let long = "é".repeat(40); // 80 bytes
        name(&mut key, long.as_bytes());
        assert_eq!(key.len(), 65);
        assert!(std::str::from_utf8(&key[..64]).is_ok());
    }
}
