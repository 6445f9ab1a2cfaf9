//! The service graph: edges client service → server service, paired from
//! spans across services as the OpenTelemetry Collector's `servicegraph`
//! connector (after Grafana Tempo's) pairs them.
//!
//! A CLIENT (or PRODUCER) span waits in a bounded store under its (trace id,
//! span id); a SERVER (or CONSUMER) span under its (trace id, parent span
//! id), or its first link's when it has no parent (a consumer that links to
//! the message's producer). Whichever comes second completes the edge, in
//! either order. A database CLIENT span is an edge at once, to the database
//! node. What waits longer than `wait` expires, counted as unpaired; what
//! arrives while the store is full is dropped, counted.

// foldhash: fast on the short keys here, and seeded per map, so that a
// client choosing trace ids or names cannot aim at one bucket.
use foldhash::{HashMap, HashMapExt};

use serde::Deserialize;

use crate::processors::dora::HistogramCounts;
use crate::settings::ConfigDuration;
use crate::window::{BucketLayout, RollingHistogram, WindowShape, WindowStats};

/// `processors.dependencies.service_graph`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// Pair spans into edges at all. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a span waits for its partner. Default `10s`.
    #[serde(default = "default_wait")]
    pub wait: ConfigDuration,
    /// Most spans waiting at once; more are dropped and counted. Default 10 000.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Most edges kept; the calls of new ones beyond it go to one edge
    /// `_overflow` → `_overflow`. Default 10 000.
    #[serde(default = "default_max_edges")]
    pub max_edges: usize,
    /// Bucket bounds of the edges' latency histograms, seconds. Default the
    /// connector's: 2 ms to 15 s.
    #[serde(default = "default_buckets")]
    pub buckets: Vec<f64>,
}

fn yes() -> bool {
    true
}
fn default_wait() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
const fn default_max_items() -> usize {
    10_000
}
const fn default_max_edges() -> usize {
    10_000
}
fn default_buckets() -> Vec<f64> {
    vec![
        0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
    ]
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            enabled: true,
            wait: default_wait(),
            max_items: default_max_items(),
            max_edges: default_max_edges(),
            buckets: default_buckets(),
        }
    }
}

impl GraphConfig {
    pub(super) fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if self.wait.get().is_zero() {
            errors.push(format!("{path}.wait: must be longer than 0"));
        }
        if self.max_items == 0 {
            errors.push(format!("{path}.max_items: must be at least 1"));
        }
        if self.max_edges == 0 {
            errors.push(format!("{path}.max_edges: must be at least 1"));
        }
        if self.buckets.is_empty()
            || self.buckets.windows(2).any(|w| w[0] >= w[1])
            || self.buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
        {
            errors.push(format!(
                "{path}.buckets: must be positive seconds in increasing order"
            ));
        }
    }
}

/// How two nodes are connected: the `connection_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// CLIENT → SERVER: the connector writes an empty label.
    Direct,
    /// PRODUCER → CONSUMER.
    MessagingSystem,
    /// A database CLIENT span → its database.
    Database,
}

impl Connection {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Direct => "",
            Connection::MessagingSystem => "messaging_system",
            Connection::Database => "database",
        }
    }

    /// The connection of a label value.
    pub fn parse(s: &str) -> Option<Connection> {
        Some(match s {
            "" => Connection::Direct,
            "messaging_system" => Connection::MessagingSystem,
            "database" => Connection::Database,
            _ => return None,
        })
    }
}

/// One side of a request, as it waits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Side {
    /// Interned service name.
    pub service: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub error: bool,
    /// A consumer's messaging series, for the wait once paired.
    pub series: Option<u32>,
}

/// One span waiting for its partner: only one side ever waits (the second
/// completes the edge and removes it), and the store is read at random, so
/// it is kept small.
#[derive(Debug)]
struct Pending {
    side: Side,
    is_client: bool,
    messaging: bool,
    /// When it started waiting (processing time).
    since_ns: u64,
}

/// The key a span seen on one side only is counted under: (client,
/// server, connection), [`NONE`] for the side not seen.
fn lost_key(service: u32, is_client: bool, messaging: bool) -> (u32, u32, Connection) {
    let connection = connection_of(messaging);
    if is_client {
        (service, NONE, connection)
    } else {
        (NONE, service, connection)
    }
}

/// An edge's figures, cumulative since it was first seen, and its rolling
/// window of server-side latency.
#[derive(Debug)]
struct Edge {
    client: String,
    server: String,
    connection: Connection,
    requests: u64,
    failed: u64,
    server_seconds: HistogramCounts,
    client_seconds: HistogramCounts,
    messaging_seconds: Option<HistogramCounts>,
    window: RollingHistogram,
}

/// The figures of one edge.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EdgeFigures {
    /// The calling service.
    pub client: String,
    /// The called service (or database).
    pub server: String,
    /// How they are connected.
    pub connection_type: Connection,
    /// Requests paired, cumulative.
    pub requests: u64,
    /// Of which failed (either side an error), cumulative.
    pub failed: u64,
    /// Over the window: requests, failed and the server side's latency quantiles.
    pub window: WindowStats,
    /// Server-side latency, cumulative, in the configured buckets.
    #[serde(skip)]
    pub server_seconds: HistogramCounts,
    /// Client-side latency, cumulative.
    #[serde(skip)]
    pub client_seconds: HistogramCounts,
    /// Messaging edges: consumer start − producer end, cumulative.
    #[serde(skip)]
    pub messaging_seconds: Option<HistogramCounts>,
}

/// Spans that found no partner, or no room, by the side that was seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unmatched {
    /// The client's service, empty when the client side is the one missing.
    pub client: String,
    /// The server's service, empty when the server side is the one missing.
    pub server: String,
    /// How they would have been connected.
    pub connection_type: Connection,
    /// Spans, cumulative.
    pub spans: u64,
}

/// The service graph at one instant.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GraphSnapshot {
    /// Every edge, by (client, server, connection type).
    pub edges: Vec<EdgeFigures>,
    /// Spans expired unpaired.
    pub unpaired: Vec<Unmatched>,
    /// Spans dropped because the store was full.
    pub dropped: Vec<Unmatched>,
    /// Spans waiting now.
    pub waiting: usize,
    /// The histogram bounds, seconds.
    #[serde(skip)]
    pub buckets: Vec<f64>,
}

type Key = crate::model::spans::SpanRef;
type Lost = HashMap<(u32, u32, Connection), u64>;

/// What pairing a span completed, for the caller: a consumer's series and
/// how long its message waited.
pub(super) struct Waited {
    pub series: u32,
    pub wait_ns: u64,
}

/// No service: the missing side of an unmatched span.
const NONE: u32 = u32::MAX;

/// The service graph's state.
pub(super) struct ServiceGraph {
    config: GraphConfig,
    services: Vec<String>,
    service_ids: HashMap<Box<[u8]>, u32>,
    pending: HashMap<Key, Pending>,
    edges: Vec<Edge>,
    edge_index: HashMap<(u32, u32, Connection), usize>,
    /// Edges of database nodes, by (client, node name).
    database_index: HashMap<(u32, String), usize>,
    overflow: Option<usize>,
    unpaired: Lost,
    dropped: Lost,
    next_sweep_ns: u64,
}

impl ServiceGraph {
    pub(super) fn new(config: &GraphConfig) -> ServiceGraph {
        ServiceGraph {
            config: config.clone(),
            services: Vec::new(),
            service_ids: HashMap::new(),
            pending: HashMap::new(),
            edges: Vec::new(),
            edge_index: HashMap::new(),
            database_index: HashMap::new(),
            overflow: None,
            unpaired: HashMap::new(),
            dropped: HashMap::new(),
            next_sweep_ns: 0,
        }
    }

    /// The id of service `name`.
    pub(super) fn service(&mut self, name: &[u8]) -> u32 {
        if let Some(&id) = self.service_ids.get(name) {
            return id;
        }
        let id = self.services.len() as u32;
        self.services
            .push(String::from_utf8_lossy(name).into_owned());
        self.service_ids.insert(name.into(), id);
        id
    }

    /// A client or producer span `span` of `key` = (trace, its span id).
    pub(super) fn client(
        &mut self,
        key: Key,
        side: Side,
        messaging: bool,
        ctx: &Ctx<'_>,
    ) -> Option<Waited> {
        self.side(key, side, messaging, true, ctx)
    }

    /// A server or consumer span of `key` = (trace, its parent's span id).
    pub(super) fn server(
        &mut self,
        key: Key,
        side: Side,
        messaging: bool,
        ctx: &Ctx<'_>,
    ) -> Option<Waited> {
        self.side(key, side, messaging, false, ctx)
    }

    fn side(
        &mut self,
        key: Key,
        side: Side,
        messaging: bool,
        is_client: bool,
        ctx: &Ctx<'_>,
    ) -> Option<Waited> {
        if let Some(p) = self.pending.get(&key) {
            if p.is_client != is_client {
                let (waiting, messaging) = (p.side, p.messaging || messaging);
                self.pending.remove(&key);
                let (client, server) = if is_client {
                    (side, waiting)
                } else {
                    (waiting, side)
                };
                return self.complete(client, server, messaging, ctx);
            }
            // A second span of the same side and key (two consumers of one
            // message, a reused span id): the first keeps its place; this
            // one can never pair, and counts as unpaired now.
            let lost = lost_key(side.service, is_client, p.messaging || messaging);
            *self.unpaired.entry(lost).or_default() += 1;
            return None;
        }
        if self.pending.len() >= self.config.max_items {
            let lost = lost_key(side.service, is_client, messaging);
            *self.dropped.entry(lost).or_default() += 1;
            return None;
        }
        self.pending.insert(
            key,
            Pending {
                side,
                is_client,
                messaging,
                since_ns: ctx.now_ns,
            },
        );
        None
    }

    /// A database client span: an edge to its database node at once.
    pub(super) fn database(&mut self, client: Side, node: String, ctx: &Ctx<'_>) {
        let i = match self.database_index.get(&(client.service, node.clone())) {
            Some(&i) => i,
            None => {
                let name = self.services[client.service as usize].clone();
                match self.new_edge(name, node.clone(), Connection::Database) {
                    Some(i) => {
                        self.database_index.insert((client.service, node), i);
                        i
                    }
                    None => self.overflow_edge(),
                }
            }
        };
        self.record(i, client, client, false, ctx);
    }

    fn complete(
        &mut self,
        client: Side,
        server: Side,
        messaging: bool,
        ctx: &Ctx<'_>,
    ) -> Option<Waited> {
        let connection = connection_of(messaging);
        let i = match self
            .edge_index
            .get(&(client.service, server.service, connection))
        {
            Some(&i) => i,
            None => match self.new_edge(
                self.services[client.service as usize].clone(),
                self.services[server.service as usize].clone(),
                connection,
            ) {
                Some(i) => {
                    self.edge_index
                        .insert((client.service, server.service, connection), i);
                    i
                }
                None => self.overflow_edge(),
            },
        };
        self.record(i, client, server, messaging, ctx);
        let wait_ns = server.start_ns.saturating_sub(client.end_ns);
        server
            .series
            .filter(|_| messaging)
            .map(|series| Waited { series, wait_ns })
    }

    fn new_edge(
        &mut self,
        client: String,
        server: String,
        connection: Connection,
    ) -> Option<usize> {
        if self.edges.len() >= self.config.max_edges {
            return None;
        }
        let buckets = &self.config.buckets;
        self.edges.push(Edge {
            client,
            server,
            connection,
            requests: 0,
            failed: 0,
            server_seconds: HistogramCounts::new(buckets),
            client_seconds: HistogramCounts::new(buckets),
            messaging_seconds: (connection == Connection::MessagingSystem)
                .then(|| HistogramCounts::new(buckets)),
            window: RollingHistogram::default(),
        });
        Some(self.edges.len() - 1)
    }

    fn overflow_edge(&mut self) -> usize {
        if let Some(i) = self.overflow {
            return i;
        }
        let buckets = &self.config.buckets;
        self.edges.push(Edge {
            client: "_overflow".into(),
            server: "_overflow".into(),
            connection: Connection::Direct,
            requests: 0,
            failed: 0,
            server_seconds: HistogramCounts::new(buckets),
            client_seconds: HistogramCounts::new(buckets),
            messaging_seconds: None,
            window: RollingHistogram::default(),
        });
        self.overflow = Some(self.edges.len() - 1);
        self.edges.len() - 1
    }

    fn record(&mut self, i: usize, client: Side, server: Side, messaging: bool, ctx: &Ctx<'_>) {
        let buckets = &self.config.buckets;
        let edge = &mut self.edges[i];
        let failed = client.error || server.error;
        edge.requests += 1;
        edge.failed += u64::from(failed);
        let server_ns = server.end_ns - server.start_ns;
        let client_ns = client.end_ns - client.start_ns;
        edge.server_seconds.observe(buckets, server_ns as f64 / 1e9);
        edge.client_seconds.observe(buckets, client_ns as f64 / 1e9);
        if let (true, Some(h)) = (messaging, edge.messaging_seconds.as_mut()) {
            let wait = server.start_ns.saturating_sub(client.end_ns);
            h.observe(buckets, wait as f64 / 1e9);
        }
        edge.window.record(
            ctx.shape,
            ctx.layout,
            ctx.now_ns,
            std::iter::once(server_ns / 1_000),
            u64::from(failed),
        );
    }

    /// Expires what waited longer than `wait` at `now_ns` (at most once a
    /// second, or whenever `force`).
    pub(super) fn expire(&mut self, now_ns: u64, force: bool) {
        if !force && now_ns < self.next_sweep_ns {
            return;
        }
        self.next_sweep_ns = now_ns + 1_000_000_000;
        let wait = self.config.wait.get().as_nanos() as u64;
        let unpaired = &mut self.unpaired;
        self.pending.retain(|_, p| {
            if p.since_ns + wait > now_ns {
                return true;
            }
            *unpaired
                .entry(lost_key(p.side.service, p.is_client, p.messaging))
                .or_default() += 1;
            false
        });
    }

    pub(super) fn snapshot(
        &mut self,
        ctx: &Ctx<'_>,
        scratch: &mut hdrhistogram::Histogram<u64>,
    ) -> GraphSnapshot {
        self.expire(ctx.now_ns, true);
        let name = |id: u32| self.services.get(id as usize).cloned().unwrap_or_default();
        let lost = |map: &Lost| {
            let mut lost: Vec<Unmatched> = map
                .iter()
                .map(|(&(client, server, connection), &spans)| Unmatched {
                    client: name(client),
                    server: name(server),
                    connection_type: connection,
                    spans,
                })
                .collect();
            lost.sort_by(|a, b| {
                (&a.client, &a.server, a.connection_type).cmp(&(
                    &b.client,
                    &b.server,
                    b.connection_type,
                ))
            });
            lost
        };
        let mut edges: Vec<EdgeFigures> = self
            .edges
            .iter_mut()
            .map(|e| {
                e.window
                    .expire(ctx.shape, ctx.now_ns / ctx.shape.slice_ns());
                EdgeFigures {
                    client: e.client.clone(),
                    server: e.server.clone(),
                    connection_type: e.connection,
                    requests: e.requests,
                    failed: e.failed,
                    window: e.window.stats(ctx.shape, ctx.layout, ctx.now_ns, scratch),
                    server_seconds: e.server_seconds.clone(),
                    client_seconds: e.client_seconds.clone(),
                    messaging_seconds: e.messaging_seconds.clone(),
                }
            })
            .collect();
        edges.sort_by(|a, b| {
            (&a.client, &a.server, a.connection_type).cmp(&(
                &b.client,
                &b.server,
                b.connection_type,
            ))
        });
        GraphSnapshot {
            edges,
            unpaired: lost(&self.unpaired),
            dropped: lost(&self.dropped),
            waiting: self.pending.len(),
            buckets: self.config.buckets.clone(),
        }
    }

    /// The edges and the unmatched counts, for a checkpoint (the spans
    /// waiting are not kept: a restart loses at most `wait` of pairing).
    pub(super) fn to_state(
        &self,
        shape: &WindowShape,
        layout: &BucketLayout,
        out: &mut crate::proto::DependenciesState,
    ) {
        use crate::processors::dora::state::to_histogram;
        out.edges = self
            .edges
            .iter()
            .map(|e| crate::proto::EdgeRecord {
                client: e.client.clone(),
                server: e.server.clone(),
                connection_type: e.connection.as_str().to_string(),
                requests: e.requests,
                failed: e.failed,
                server_seconds: Some(to_histogram(&e.server_seconds)),
                client_seconds: Some(to_histogram(&e.client_seconds)),
                messaging_seconds: e.messaging_seconds.as_ref().map(to_histogram),
                window: Some(e.window.to_state(shape, layout)),
            })
            .collect();
        let name = |id: u32| self.services.get(id as usize).cloned().unwrap_or_default();
        let lost = |map: &Lost| {
            map.iter()
                .map(
                    |(&(client, server, connection), &spans)| crate::proto::UnmatchedRecord {
                        client: name(client),
                        server: name(server),
                        connection_type: connection.as_str().to_string(),
                        spans,
                    },
                )
                .collect()
        };
        out.unpaired = lost(&self.unpaired);
        out.dropped = lost(&self.dropped);
    }

    /// Restores checkpointed edges into an empty graph; windows recorded
    /// with another shape start empty (named in `reset`).
    pub(super) fn restore(
        &mut self,
        state: &crate::proto::DependenciesState,
        shape: &WindowShape,
        layout: &BucketLayout,
        reset: &mut Vec<String>,
    ) -> Result<(), String> {
        use crate::processors::dora::state::from_histogram;
        let buckets = self.config.buckets.clone();
        for r in &state.edges {
            let connection = Connection::parse(&r.connection_type).ok_or_else(|| {
                format!("edge {} -> {}: unknown connection type", r.client, r.server)
            })?;
            let what = format!("edge {} -> {}", r.client, r.server);
            // Other bucket bounds configured since: the histograms start
            // empty (the counters and the window are kept).
            let rebucketed = [&r.server_seconds, &r.client_seconds, &r.messaging_seconds]
                .into_iter()
                .flatten()
                .any(|h| h.buckets.len() != buckets.len() + 1);
            if rebucketed {
                reset.push(format!("{what}: histograms (other buckets)"));
            }
            let histogram = |h: Option<&crate::proto::HistogramRecord>| {
                from_histogram(h.filter(|_| !rebucketed), &buckets, &what)
            };
            let window = super::restore_window(
                r.window.as_ref(),
                shape,
                layout,
                || format!("edge {} -> {}", r.client, r.server),
                reset,
            )?;
            let edge = Edge {
                client: r.client.clone(),
                server: r.server.clone(),
                connection,
                requests: r.requests,
                failed: r.failed,
                server_seconds: histogram(r.server_seconds.as_ref())?,
                client_seconds: histogram(r.client_seconds.as_ref())?,
                messaging_seconds: match (&r.messaging_seconds, connection) {
                    (Some(h), _) => Some(histogram(Some(h))?),
                    (None, Connection::MessagingSystem) => Some(HistogramCounts::new(&buckets)),
                    (None, _) => None,
                },
                window,
            };
            let i = self.edges.len();
            if r.client == "_overflow" && r.server == "_overflow" {
                self.overflow = Some(i);
            } else if connection == Connection::Database {
                let client = self.service(r.client.as_bytes());
                self.database_index.insert((client, r.server.clone()), i);
            } else {
                let client = self.service(r.client.as_bytes());
                let server = self.service(r.server.as_bytes());
                self.edge_index.insert((client, server, connection), i);
            }
            self.edges.push(edge);
        }
        for (records, into_dropped) in [(&state.unpaired, false), (&state.dropped, true)] {
            for u in records {
                let connection = Connection::parse(&u.connection_type)
                    .ok_or_else(|| "unmatched spans: unknown connection type".to_string())?;
                let id = |g: &mut ServiceGraph, name: &str| {
                    if name.is_empty() {
                        NONE
                    } else {
                        g.service(name.as_bytes())
                    }
                };
                let key = (id(self, &u.client), id(self, &u.server), connection);
                let map = if into_dropped {
                    &mut self.dropped
                } else {
                    &mut self.unpaired
                };
                *map.entry(key).or_default() += u.spans;
            }
        }
        Ok(())
    }

    /// Bytes held, roughly: the store and the edges.
    pub(super) fn heap_bytes(&self) -> usize {
        self.pending.capacity() * (std::mem::size_of::<(Key, Pending)>() + 1)
            + self
                .edges
                .iter()
                .map(|e| e.window.heap_bytes() + 3 * 8 * self.config.buckets.len() + 128)
                .sum::<usize>()
    }
}

fn connection_of(messaging: bool) -> Connection {
    if messaging {
        Connection::MessagingSystem
    } else {
        Connection::Direct
    }
}

/// The window and clock a batch is applied with.
pub(super) struct Ctx<'a> {
    pub shape: &'a WindowShape,
    pub layout: &'a BucketLayout,
    pub now_ns: u64,
}
