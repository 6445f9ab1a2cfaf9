//! Processor `dependencies`: what services call and how it answers.
//!
//! The assessment's list of metrics to track beyond the four keys and the
//! entry spans' RED: database query performance, queue lengths and
//! processing times, cache hit rates, and the call graph the tracing and
//! circuit-breaker advice rests on. All from what services already send:
//!
//! - per (service, environment, dependency): calls, errors and latency
//!   quantiles of CLIENT, PRODUCER and CONSUMER spans in the same rolling
//!   HDR windows as `red`, the dependency named by the semantic conventions
//!   ([`naming`]); for consumers, also the time a message waited;
//! - per (service, environment, cache): lookups and hits, from spans with
//!   the configured hit attribute;
//! - per (service, environment, metric, destination): queue lengths from
//!   the OTLP gauges or sums the user names;
//! - the service graph ([`graph`]).
//!
//! Cardinality is bounded: names are normalised, and past `max_series` the
//! calls of new series go to one `_overflow` series per family.

pub mod graph;
pub mod naming;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::model::spans::{SpanKeys, SpanKind};
use crate::model::{MetricSummary, ResourceIdentity, TraceSummary};
use crate::processors::red::RedConfig;
use crate::settings::ConfigDuration;
use crate::window::{BucketLayout, RollingHistogram, WindowShape, WindowStats};

pub use graph::{Connection, EdgeFigures, GraphConfig, GraphSnapshot, Unmatched};
pub use naming::DependencyType;

/// `processors.dependencies`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependenciesConfig {
    /// Length of the rolling window. Default `5m`, as `red`'s.
    #[serde(default = "crate::processors::red::default_red_window")]
    pub window: ConfigDuration,
    /// Granularity of the window. Default `10s`.
    #[serde(default = "crate::processors::red::default_red_slice")]
    pub slice: ConfigDuration,
    /// Most series kept per family (dependencies, caches, queues); the
    /// calls of new ones beyond it go to the family's `_overflow` series.
    /// Default 10 000.
    #[serde(default = "crate::processors::red::default_max_series")]
    pub max_series: usize,
    /// Latency precision in significant decimal digits (1 to 3). Default 2.
    #[serde(default = "crate::processors::red::default_significant_digits")]
    pub significant_digits: u8,
    /// Largest latency told apart. Default `1h`.
    #[serde(default = "crate::processors::red::default_max_latency")]
    pub max_latency: ConfigDuration,
    /// Which spans are cache lookups.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Messaging: the creation time attribute and the queue-length metrics.
    #[serde(default)]
    pub messaging: MessagingConfig,
    /// The service graph.
    #[serde(default)]
    pub service_graph: GraphConfig,
}

/// `processors.dependencies.cache`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// A span with this attribute (boolean, `true`/`false`/`hit`/`miss`, or
    /// 1/0) is a cache lookup, a hit or a miss. Default `cache.hit`.
    #[serde(default = "default_hit_attribute")]
    pub hit_attribute: String,
    /// The attribute naming the cache; without it a lookup's cache is its
    /// `db.system.name` (e.g. `redis`), else `cache`. Default `cache.name`.
    #[serde(default = "default_name_attribute")]
    pub name_attribute: String,
    /// Caches whose hits and misses come as OTLP metrics (e.g. the
    /// Collector's redis receiver: `redis.keyspace.hits`,
    /// `redis.keyspace.misses`). Default none.
    #[serde(default)]
    pub metrics: Vec<CacheMetrics>,
}

/// `processors.dependencies.cache.metrics[]`: a cache's hit and miss counters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheMetrics {
    /// The metric counting hits (a sum, cumulative or delta, or a gauge
    /// holding a running count).
    pub hits: String,
    /// The metric counting misses.
    pub misses: String,
    /// The cache's name. Default the hits metric's name up to its first
    /// dot (`redis`).
    #[serde(default)]
    pub cache: Option<String>,
}

impl CacheMetrics {
    /// The cache's name.
    pub fn name(&self) -> String {
        self.cache.clone().unwrap_or_else(|| {
            self.hits
                .split('.')
                .next()
                .unwrap_or(&self.hits)
                .to_string()
        })
    }
}

fn default_hit_attribute() -> String {
    "cache.hit".into()
}
fn default_name_attribute() -> String {
    "cache.name".into()
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            hit_attribute: default_hit_attribute(),
            name_attribute: default_name_attribute(),
            metrics: Vec::new(),
        }
    }
}

/// `processors.dependencies.messaging`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingConfig {
    /// An integer attribute on consumer spans holding the message's creation
    /// time, ns since the epoch: the wait is the span's start minus it.
    /// Without it (the default), the wait is known only when the consumer
    /// span is paired with its producer span (parent or link).
    #[serde(default)]
    pub creation_time_attribute: Option<String>,
    /// OTLP metrics (gauges or sums) that are queue lengths, e.g. a consumer
    /// lag gauge; per service and `messaging.destination.name` (or `topic`,
    /// `queue`) point attribute. Default none.
    #[serde(default)]
    pub queue_metrics: Vec<String>,
}

impl Default for DependenciesConfig {
    fn default() -> Self {
        use crate::processors::red::{
            default_max_latency, default_max_series, default_red_slice, default_red_window,
            default_significant_digits,
        };
        DependenciesConfig {
            window: default_red_window(),
            slice: default_red_slice(),
            max_series: default_max_series(),
            significant_digits: default_significant_digits(),
            max_latency: default_max_latency(),
            cache: CacheConfig::default(),
            messaging: MessagingConfig::default(),
            service_graph: GraphConfig::default(),
        }
    }
}

impl DependenciesConfig {
    /// Collects what is wrong, each under its path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        self.window_config().validate(path, errors);
        for (name, key) in [
            ("cache.hit_attribute", &self.cache.hit_attribute),
            ("cache.name_attribute", &self.cache.name_attribute),
        ] {
            if key.is_empty() {
                errors.push(format!("{path}.{name}: must not be empty"));
            }
        }
        for (i, m) in self.cache.metrics.iter().enumerate() {
            if m.hits.is_empty() || m.misses.is_empty() || m.hits == m.misses {
                errors.push(format!(
                    "{path}.cache.metrics[{i}]: hits and misses must be two metric names"
                ));
            }
        }
        if self
            .messaging
            .creation_time_attribute
            .as_ref()
            .is_some_and(String::is_empty)
        {
            errors.push(format!(
                "{path}.messaging.creation_time_attribute: must not be empty"
            ));
        }
        self.service_graph
            .validate(&format!("{path}.service_graph"), errors);
    }

    /// The window settings, as `red` has them.
    fn window_config(&self) -> RedConfig {
        RedConfig {
            window: self.window.clone(),
            slice: self.slice.clone(),
            max_series: self.max_series,
            significant_digits: self.significant_digits,
            max_latency: self.max_latency.clone(),
        }
    }

    /// The span attributes decoders must read for this processor.
    pub fn span_keys(&self) -> SpanKeys {
        let mut keys = SpanKeys::new(
            &self.cache.name_attribute,
            &self.cache.hit_attribute,
            self.messaging.creation_time_attribute.as_deref(),
        );
        keys.queue_metrics = self.messaging.queue_metrics.clone();
        keys.cache_metrics = self
            .cache
            .metrics
            .iter()
            .map(|m| (m.hits.clone(), m.misses.clone(), m.name()))
            .collect();
        keys
    }
}

/// One dependency series.
struct Series {
    service: String,
    environment: String,
    kind: DependencyType,
    system: String,
    dependency: String,
    operation: String,
    window: RollingHistogram,
    /// Consumers: how long their messages waited.
    wait: Option<RollingHistogram>,
    calls: u64,
    errors: u64,
}

/// One cache series: lookups in the window, misses as its "errors".
struct Cache {
    service: String,
    environment: String,
    cache: String,
    window: RollingHistogram,
    lookups: u64,
    hits: u64,
}

/// One queue-length series: the value last reported and each slice's
/// largest.
struct Queue {
    service: String,
    environment: String,
    metric: String,
    destination: String,
    last: f64,
    /// (slice epoch, largest value in it), oldest first.
    slices: VecDeque<(u64, f64)>,
}

/// One dependency's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DependencyFigures {
    /// The calling service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The `type` label.
    #[serde(rename = "type")]
    pub kind: DependencyType,
    /// `db.system.name`, `rpc.system`, `messaging.system`, `http` or `other`.
    pub system: String,
    /// The database namespace, peer, RPC service or destination.
    pub dependency: String,
    /// The operation (normalised).
    pub operation: String,
    /// Calls since the series was created, cumulative.
    pub calls: u64,
    /// Of which errors, cumulative.
    pub errors: u64,
    /// Over the window: calls, errors and latency quantiles (µs).
    pub window: WindowStats,
    /// Consumers: the wait of their messages over the window (its
    /// `requests` are the messages whose wait is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<WindowStats>,
}

/// One cache's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CacheFigures {
    /// The service looking up.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The cache.
    pub cache: String,
    /// Lookups, cumulative.
    pub lookups: u64,
    /// Hits, cumulative.
    pub hits: u64,
    /// Lookups in the window.
    pub window_lookups: u64,
    /// Hits / lookups over the window; `None` without lookups.
    pub hit_ratio: Option<f64>,
}

/// One queue's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueFigures {
    /// The reporting service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The OTLP metric.
    pub metric: String,
    /// The queue, topic or partition set.
    pub destination: String,
    /// The value last reported.
    pub last: f64,
    /// The largest value reported in the window; `None` if none was.
    pub max: Option<f64>,
}

/// The processor's figures at one instant.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DependencySnapshot {
    /// The window, e.g. `5m`: the `window` label.
    pub window: String,
    /// Every dependency series.
    pub dependencies: Vec<DependencyFigures>,
    /// Every cache series.
    pub caches: Vec<CacheFigures>,
    /// Every queue series.
    pub queues: Vec<QueueFigures>,
    /// The service graph, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<GraphSnapshot>,
    /// Heap bytes held by the windows and the graph's store, roughly.
    pub heap_bytes: usize,
}

/// The label value of an overflow series.
pub const OVERFLOW: &str = "_overflow";

/// The `dependencies` processor's state.
pub struct DependencyProcessor {
    shape: WindowShape,
    layout: BucketLayout,
    window_label: String,
    max_series: usize,
    default_environment: Bytes,
    keys: Arc<SpanKeys>,
    index: HashMap<Box<[u8]>, usize>,
    series: Vec<Series>,
    cache_index: HashMap<Box<[u8]>, usize>,
    caches: Vec<Cache>,
    /// Per cumulative cache counter (its series), the last value.
    cache_counters: HashMap<Box<[u8]>, f64>,
    queue_index: HashMap<Box<[u8]>, usize>,
    queues: Vec<Queue>,
    graph: Option<graph::ServiceGraph>,
    key: Vec<u8>,
    scratch: Histogram<u64>,
}

impl DependencyProcessor {
    /// A processor as configured; resources without an environment get
    /// `default_environment`.
    pub fn new(config: &DependenciesConfig, default_environment: &str) -> Self {
        let layout = BucketLayout::new(
            config.significant_digits,
            config.max_latency.get().as_micros() as u64,
        );
        DependencyProcessor {
            shape: WindowShape::new(config.window.get(), config.slice.get()),
            scratch: layout.dense(),
            layout,
            window_label: config.window.as_str().to_string(),
            max_series: config.max_series,
            default_environment: Bytes::copy_from_slice(default_environment.as_bytes()),
            keys: Arc::new(config.span_keys()),
            index: HashMap::new(),
            series: Vec::new(),
            cache_index: HashMap::new(),
            caches: Vec::new(),
            cache_counters: HashMap::new(),
            queue_index: HashMap::new(),
            queues: Vec::new(),
            graph: config
                .service_graph
                .enabled
                .then(|| graph::ServiceGraph::new(&config.service_graph)),
            key: Vec::with_capacity(256),
        }
    }

    /// The span attributes decoders must read for this processor.
    pub fn span_keys(&self) -> &Arc<SpanKeys> {
        &self.keys
    }

    /// Applies one trace batch received at `now_ns`: every span detail.
    pub fn apply_traces(&mut self, summary: &TraceSummary, now_ns: u64) {
        // What waited too long leaves before this batch pairs (a sweep at
        // most once a second).
        if let Some(graph) = self.graph.as_mut() {
            graph.expire(now_ns, false);
        }
        if summary.details.is_empty() {
            return;
        }
        // Per resource: its key prefix (`service \0 environment \0`) and,
        // with the graph, its service's id.
        let prefixes: Vec<(Vec<u8>, u32)> = summary
            .detail_resources
            .iter()
            .map(|identity| {
                let environment = if identity.environment.is_empty() {
                    &self.default_environment
                } else {
                    &identity.environment
                };
                let mut prefix = Vec::with_capacity(identity.service.len() + environment.len() + 2);
                prefix.extend_from_slice(&identity.service);
                prefix.push(0);
                prefix.extend_from_slice(environment);
                prefix.push(0);
                let id = self
                    .graph
                    .as_mut()
                    .map_or(0, |g| g.service(&identity.service));
                (prefix, id)
            })
            .collect();
        let mut key = std::mem::take(&mut self.key);
        for d in &summary.details {
            let Some((prefix, service)) = prefixes.get(d.resource as usize) else {
                continue;
            };
            let duration_us = d.duration_ns() / 1_000;
            let mut consumer_series = None;
            key.clear();
            key.extend_from_slice(prefix);
            if naming::name_call(summary, d, &mut key).is_some() {
                let i = self.series_index(&key);
                let series = &mut self.series[i];
                series.calls += 1;
                series.errors += u64::from(d.error);
                series.window.record(
                    &self.shape,
                    &self.layout,
                    now_ns,
                    std::iter::once(duration_us),
                    u64::from(d.error),
                );
                if d.kind == SpanKind::Consumer {
                    consumer_series = Some(i as u32);
                    if let Some(created) = d.creation_ns {
                        let wait_us = d.start_ns.saturating_sub(created) / 1_000;
                        self.record_wait(i, wait_us, now_ns);
                    }
                }
            }
            if let Some(hit) = d.cache_hit {
                key.truncate(prefix.len());
                naming::name_cache(summary, d, &mut key);
                let i = self.cache_index(&key);
                let cache = &mut self.caches[i];
                cache.lookups += 1;
                cache.hits += u64::from(hit);
                cache.window.record(
                    &self.shape,
                    &self.layout,
                    now_ns,
                    std::iter::once(duration_us),
                    u64::from(!hit),
                );
            }
            if let Some(graph) = self.graph.as_mut() {
                let ctx = graph::Ctx {
                    shape: &self.shape,
                    layout: &self.layout,
                    now_ns,
                };
                let side = graph::Side {
                    service: *service,
                    start_ns: d.start_ns,
                    end_ns: d.end_ns,
                    error: d.error,
                    series: consumer_series,
                };
                let messaging = matches!(d.kind, SpanKind::Producer | SpanKind::Consumer);
                let waited = match d.kind {
                    SpanKind::Client => match naming::database_node(summary, d) {
                        Some(node) => {
                            graph.database(side, node, &ctx);
                            None
                        }
                        None => graph.client((d.trace_id, d.span_id), side, false, &ctx),
                    },
                    SpanKind::Producer => graph.client((d.trace_id, d.span_id), side, true, &ctx),
                    SpanKind::Server | SpanKind::Consumer => {
                        let partner = if d.has_parent() {
                            Some((d.trace_id, d.parent_span_id))
                        } else {
                            d.link
                        };
                        match partner {
                            Some(key) => graph.server(key, side, messaging, &ctx),
                            None => None,
                        }
                    }
                    SpanKind::Internal => None,
                };
                // Only a consumer paired here whose wait the creation
                // time did not already give.
                if let Some(w) = waited.filter(|_| d.creation_ns.is_none()) {
                    self.record_wait(w.series as usize, w.wait_ns / 1_000, now_ns);
                }
            }
        }
        self.key = key;
    }

    fn record_wait(&mut self, i: usize, wait_us: u64, now_ns: u64) {
        let Some(series) = self.series.get_mut(i) else {
            return;
        };
        series
            .wait
            .get_or_insert_with(RollingHistogram::default)
            .record(
                &self.shape,
                &self.layout,
                now_ns,
                std::iter::once(wait_us),
                0,
            );
    }

    /// The series of `key` (prefix and name parts), created if new; the
    /// overflow series past the cap.
    fn series_index(&mut self, key: &[u8]) -> usize {
        slot(
            &mut self.index,
            &mut self.series,
            self.max_series,
            key,
            |[service, environment, kind, system, dependency, operation]| Series {
                service,
                environment,
                kind: DependencyType::parse(&kind).unwrap_or(DependencyType::Other),
                system,
                dependency,
                operation,
                window: RollingHistogram::default(),
                wait: None,
                calls: 0,
                errors: 0,
            },
        )
    }

    fn cache_index(&mut self, key: &[u8]) -> usize {
        slot(
            &mut self.cache_index,
            &mut self.caches,
            self.max_series,
            key,
            |[service, environment, cache]| Cache {
                service,
                environment,
                cache,
                window: RollingHistogram::default(),
                lookups: 0,
                hits: 0,
            },
        )
    }

    /// Applies one metrics batch received at `now_ns`: the queue lengths
    /// and the cache counts.
    pub fn apply_metrics(&mut self, metrics: &MetricSummary, now_ns: u64) {
        for q in &metrics.queues {
            self.observe_queue(&q.identity, &q.metric, &q.destination, q.value, now_ns);
        }
        for c in &metrics.cache_counts {
            self.observe_cache_count(c, now_ns);
        }
    }

    /// Adds a hit or miss count to its cache: a delta as it is; a
    /// cumulative count as its rise since the series' last point (the first
    /// point is the baseline; a fall is a restart, counting from zero).
    fn observe_cache_count(&mut self, c: &crate::model::CacheReading, now_ns: u64) {
        let environment = if c.identity.environment.is_empty() {
            &self.default_environment
        } else {
            &c.identity.environment
        };
        let mut key = Vec::with_capacity(64);
        for part in [&c.identity.service[..], environment, c.cache.as_bytes()] {
            key.extend_from_slice(part);
            key.push(0);
        }
        let count = if c.cumulative {
            let mut series = key.clone();
            series.push(u8::from(c.hits));
            series.extend_from_slice(c.series.as_bytes());
            // Bounded like the series: past the cap, new counters are not
            // followed.
            if !self.cache_counters.contains_key(series.as_slice())
                && self.cache_counters.len() >= 4 * self.max_series
            {
                return;
            }
            match self.cache_counters.insert(series.into(), c.value) {
                None => return,
                Some(last) if c.value >= last => c.value - last,
                Some(_) => c.value,
            }
        } else {
            c.value
        };
        let count = count.round() as u64;
        if count == 0 {
            return;
        }
        let i = self.cache_index(&key);
        let cache = &mut self.caches[i];
        cache.lookups += count;
        let (hits, misses) = if c.hits { (count, 0) } else { (0, count) };
        cache.hits += hits;
        cache.window.add_counts(&self.shape, now_ns, count, misses);
    }

    /// Records a queue length reading.
    fn observe_queue(
        &mut self,
        identity: &ResourceIdentity,
        metric: &str,
        destination: &str,
        value: f64,
        now_ns: u64,
    ) {
        if !value.is_finite() {
            return;
        }
        let environment = if identity.environment.is_empty() {
            &self.default_environment
        } else {
            &identity.environment
        };
        let mut key = Vec::with_capacity(64);
        for part in [
            &identity.service[..],
            environment,
            metric.as_bytes(),
            destination.as_bytes(),
        ] {
            key.extend_from_slice(part);
            key.push(0);
        }
        let i = slot(
            &mut self.queue_index,
            &mut self.queues,
            self.max_series,
            &key,
            |[service, environment, metric, destination]| Queue {
                service,
                environment,
                metric,
                destination,
                last: 0.0,
                slices: VecDeque::new(),
            },
        );
        let epoch = now_ns / self.shape.slice_ns();
        let queue = &mut self.queues[i];
        queue.last = value;
        match queue.slices.back_mut() {
            Some((e, max)) if *e >= epoch => *max = max.max(value),
            _ => queue.slices.push_back((epoch, value)),
        }
        let slices = self.shape.slices();
        while queue
            .slices
            .front()
            .is_some_and(|(e, _)| e + slices <= epoch)
        {
            queue.slices.pop_front();
        }
    }

    /// Every series' figures at `now_ns`; also frees expired slices.
    pub fn snapshot(&mut self, now_ns: u64) -> DependencySnapshot {
        let (shape, layout, scratch) = (&self.shape, &self.layout, &mut self.scratch);
        let current = now_ns / shape.slice_ns();
        let mut heap_bytes = 0;
        let dependencies = self
            .series
            .iter_mut()
            .map(|s| {
                s.window.expire(shape, current);
                heap_bytes += s.window.heap_bytes() + 192;
                let wait = s.wait.as_mut().map(|w| {
                    w.expire(shape, current);
                    heap_bytes += w.heap_bytes();
                    w.stats(shape, layout, now_ns, scratch)
                });
                DependencyFigures {
                    service: s.service.clone(),
                    environment: s.environment.clone(),
                    kind: s.kind,
                    system: s.system.clone(),
                    dependency: s.dependency.clone(),
                    operation: s.operation.clone(),
                    calls: s.calls,
                    errors: s.errors,
                    window: s.window.stats(shape, layout, now_ns, scratch),
                    wait,
                }
            })
            .collect();
        let caches = self
            .caches
            .iter_mut()
            .map(|c| {
                c.window.expire(shape, current);
                heap_bytes += c.window.heap_bytes() + 128;
                let (lookups, misses) = c.window.counts(shape, now_ns);
                CacheFigures {
                    service: c.service.clone(),
                    environment: c.environment.clone(),
                    cache: c.cache.clone(),
                    lookups: c.lookups,
                    hits: c.hits,
                    window_lookups: lookups,
                    hit_ratio: (lookups > 0)
                        .then(|| (lookups - misses.min(lookups)) as f64 / lookups as f64),
                }
            })
            .collect();
        let slices = shape.slices();
        let queues = self
            .queues
            .iter()
            .map(|q| QueueFigures {
                service: q.service.clone(),
                environment: q.environment.clone(),
                metric: q.metric.clone(),
                destination: q.destination.clone(),
                last: q.last,
                max: q
                    .slices
                    .iter()
                    .filter(|(e, _)| e + slices > current)
                    .map(|(_, v)| *v)
                    .reduce(f64::max),
            })
            .collect();
        let graph = self.graph.as_mut().map(|g| {
            heap_bytes += g.heap_bytes();
            let ctx = graph::Ctx {
                shape,
                layout,
                now_ns,
            };
            g.snapshot(&ctx, scratch)
        });
        DependencySnapshot {
            window: self.window_label.clone(),
            dependencies,
            caches,
            queues,
            graph,
            heap_bytes,
        }
    }

    /// Dependency series held (the overflow series included).
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The state to checkpoint: every series, cache, queue and edge, and
    /// the cache counters' last values.
    pub fn to_state(&self) -> crate::proto::DependenciesState {
        use crate::proto;
        let (shape, layout) = (&self.shape, &self.layout);
        let mut state = proto::DependenciesState {
            series: self
                .series
                .iter()
                .map(|s| proto::DependencySeriesRecord {
                    service: s.service.clone(),
                    environment: s.environment.clone(),
                    r#type: s.kind.as_str().to_string(),
                    system: s.system.clone(),
                    dependency: s.dependency.clone(),
                    operation: s.operation.clone(),
                    window: Some(s.window.to_state(shape, layout)),
                    wait: s.wait.as_ref().map(|w| w.to_state(shape, layout)),
                    calls: s.calls,
                    errors: s.errors,
                })
                .collect(),
            caches: self
                .caches
                .iter()
                .map(|c| proto::CacheSeriesRecord {
                    service: c.service.clone(),
                    environment: c.environment.clone(),
                    cache: c.cache.clone(),
                    window: Some(c.window.to_state(shape, layout)),
                    lookups: c.lookups,
                    hits: c.hits,
                })
                .collect(),
            queues: self
                .queues
                .iter()
                .map(|q| proto::QueueSeriesRecord {
                    service: q.service.clone(),
                    environment: q.environment.clone(),
                    metric: q.metric.clone(),
                    destination: q.destination.clone(),
                    last: q.last,
                    slice_epochs: q.slices.iter().map(|s| s.0).collect(),
                    slice_max: q.slices.iter().map(|s| s.1).collect(),
                })
                .collect(),
            cache_counters: self
                .cache_counters
                .iter()
                .map(|(key, &value)| proto::CacheCounterRecord {
                    key: key.to_vec(),
                    value,
                })
                .collect(),
            ..Default::default()
        };
        if let Some(graph) = &self.graph {
            graph.to_state(shape, layout, &mut state);
        }
        state
    }

    /// Restores a checkpointed state into an empty processor. Windows
    /// recorded with another shape or precision start empty (their
    /// counters kept) and are returned by name; on any other error the
    /// state is refused.
    pub fn restore(
        &mut self,
        state: &crate::proto::DependenciesState,
    ) -> Result<Vec<String>, String> {
        if !self.series.is_empty() || !self.caches.is_empty() || !self.queues.is_empty() {
            return Err("the dependencies processor already holds series".into());
        }
        let mut reset = Vec::new();
        let (shape, layout) = (self.shape, self.layout);
        for r in &state.series {
            let name = || {
                format!(
                    "{} ({}) -> {} {}",
                    r.service, r.environment, r.dependency, r.operation
                )
            };
            let window = restore_window(r.window.as_ref(), &shape, &layout, name, &mut reset)?;
            let wait = match &r.wait {
                Some(w) => Some(restore_window(Some(w), &shape, &layout, name, &mut reset)?),
                None => None,
            };
            let key = series_key(&[
                &r.service,
                &r.environment,
                &r.r#type,
                &r.system,
                &r.dependency,
                &r.operation,
            ]);
            let stored = stored_key(&key, r.service == OVERFLOW && r.dependency == OVERFLOW);
            self.index.insert(stored, self.series.len());
            self.series.push(Series {
                service: r.service.clone(),
                environment: r.environment.clone(),
                kind: DependencyType::parse(&r.r#type).unwrap_or(DependencyType::Other),
                system: r.system.clone(),
                dependency: r.dependency.clone(),
                operation: r.operation.clone(),
                window,
                wait,
                calls: r.calls,
                errors: r.errors,
            });
        }
        for r in &state.caches {
            let name = || format!("cache {} ({}) {}", r.service, r.environment, r.cache);
            let window = restore_window(r.window.as_ref(), &shape, &layout, name, &mut reset)?;
            let key = series_key(&[&r.service, &r.environment, &r.cache]);
            let stored = stored_key(&key, r.service == OVERFLOW && r.cache == OVERFLOW);
            self.cache_index.insert(stored, self.caches.len());
            self.caches.push(Cache {
                service: r.service.clone(),
                environment: r.environment.clone(),
                cache: r.cache.clone(),
                window,
                lookups: r.lookups,
                hits: r.hits,
            });
        }
        for r in &state.queues {
            if r.slice_epochs.len() != r.slice_max.len() {
                return Err(format!(
                    "queue {} {}: malformed slices",
                    r.service, r.destination
                ));
            }
            let key = series_key(&[&r.service, &r.environment, &r.metric, &r.destination]);
            let stored = stored_key(&key, r.service == OVERFLOW && r.metric == OVERFLOW);
            self.queue_index.insert(stored, self.queues.len());
            self.queues.push(Queue {
                service: r.service.clone(),
                environment: r.environment.clone(),
                metric: r.metric.clone(),
                destination: r.destination.clone(),
                last: r.last,
                slices: r
                    .slice_epochs
                    .iter()
                    .copied()
                    .zip(r.slice_max.iter().copied())
                    .collect(),
            });
        }
        for c in &state.cache_counters {
            self.cache_counters.insert(c.key.clone().into(), c.value);
        }
        if let Some(graph) = self.graph.as_mut() {
            graph.restore(state, &shape, &layout, &mut reset)?;
        }
        Ok(reset)
    }
}

/// `parts`, each followed by a 0: a series' key, as the processor builds it.
fn series_key(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for part in parts {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key
}

/// A checkpointed window: empty when absent or recorded with another shape
/// or precision (then `what` goes to `reset`); an error when inconsistent.
fn restore_window(
    state: Option<&crate::proto::RollingHistogramState>,
    shape: &WindowShape,
    layout: &BucketLayout,
    what: impl Fn() -> String,
    reset: &mut Vec<String>,
) -> Result<RollingHistogram, String> {
    match state {
        None => Ok(RollingHistogram::default()),
        Some(w) => match RollingHistogram::from_state(w, shape, layout) {
            Ok(window) => Ok(window),
            Err(crate::window::StateError::LayoutMismatch { .. }) => {
                reset.push(what());
                Ok(RollingHistogram::default())
            }
            Err(e) => Err(format!("{}: {e}", what())),
        },
    }
}

/// The slot of `key` in a family (`index` over `items`): found, or made by
/// `make` from the key's `N` parts (padded or cut to `N`); past `max` items,
/// the family's one `_overflow` slot, every part `_overflow`.
fn slot<T, const N: usize>(
    index: &mut HashMap<Box<[u8]>, usize>,
    items: &mut Vec<T>,
    max: usize,
    key: &[u8],
    make: impl FnOnce([String; N]) -> T,
) -> usize {
    if let Some(&i) = index.get(key) {
        return i;
    }
    let overflow = items.len() >= max;
    let stored = stored_key(key, overflow);
    if let Some(&i) = index.get(&stored) {
        return i;
    }
    let parts: [String; N] = if overflow {
        std::array::from_fn(|_| OVERFLOW.to_string())
    } else {
        let mut parts = split(key);
        parts.resize(N, String::new());
        std::array::from_fn(|i| std::mem::take(&mut parts[i]))
    };
    items.push(make(parts));
    index.insert(stored, items.len() - 1);
    items.len() - 1
}

/// The key a series is kept under: its own, or the overflow series' (which
/// no real key can be: real keys hold 0 bytes).
fn stored_key(key: &[u8], overflow: bool) -> Box<[u8]> {
    if overflow {
        OVERFLOW.as_bytes().into()
    } else {
        key.into()
    }
}

/// The 0-terminated parts of a key, as text.
fn split(key: &[u8]) -> Vec<String> {
    let mut parts: Vec<String> = key
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    // The key ends with a 0: the last piece is empty.
    parts.pop();
    parts
}

#[cfg(test)]
mod tests;
