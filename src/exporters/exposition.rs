//! Prometheus text exposition of the DORA and per-service figures.
//!
//! The DORA metrics are derived from the delivery history at scrape time
//! (so they never depend on arrival order), which the `metrics` recorder
//! cannot express for counters and histograms; they are written here
//! instead, one family at a time, and appended to the recorder's output.
//! The per-service `red` families are written here too, straight from the
//! processor's snapshot: with thousands of series, going through the
//! recorder kept seven label sets per series and rendered them through a
//! sorted map, tens of MB for a moment at every scrape.

use std::fmt::Write;

use crate::instruments;
use crate::processors::dependencies::{
    CacheFigures, DependencyFigures, DependencySnapshot, EdgeFigures, GraphSnapshot, QueueFigures,
};
use crate::processors::dora::levels::{FrequencyAnswer, Level};
use crate::processors::dora::{
    DoraSnapshot, HistogramCounts, INCIDENT_BUCKETS, LEAD_TIME_BUCKETS, Quantiles, SeriesFigures,
    WindowFigures,
};
use crate::processors::red::{RedSnapshot, SeriesSnapshot, Totals};
use crate::window::QUANTILES;

/// Appends `value` escaped as a label value.
fn escape_into(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a family.
fn family_head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A sample value as Prometheus writes it: `NaN` for none, `+Inf`.
struct Number(Option<f64>);

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) if v.is_finite() => write!(f, "{v}"),
            Some(v) if v.is_infinite() && v > 0.0 => f.write_str("+Inf"),
            _ => f.write_str("NaN"),
        }
    }
}

/// A family's type: how Prometheus names it, and which OTLP data it becomes
/// (a cumulative monotonic sum, a gauge, a cumulative histogram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value now.
    Gauge,
    /// Observations in buckets, with their sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Where metric families are written, one family at a time: the text
/// exposition ([`render_dora`]), or OTLP (`exporters::otlp`). The families
/// are walked once, in [`write_dora`] and [`write_red`], so both outputs
/// carry the same names, labels and values.
pub trait Families {
    /// Starts the family `name`; the samples that follow are its own.
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str);
    /// One sample of the current family; `None` when there is no value
    /// (`NaN` in the text exposition).
    fn sample(&mut self, labels: &[(&str, &str)], value: Option<f64>);
    /// One series of the current family, a [`Kind::Histogram`].
    fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], counts: &HistogramCounts);
}

/// The text exposition.
struct Writer {
    out: String,
    name: &'static str,
}

impl Writer {
    fn new() -> Self {
        Writer {
            out: String::new(),
            name: "",
        }
    }

    /// One sample line, written straight into the output (thousands of
    /// series: no string per label set).
    fn line(&mut self, name: &str, pairs: &[(&str, &str)], value: Option<f64>) {
        let out = &mut self.out;
        out.push_str(name);
        out.push('{');
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_into(out, v);
            out.push('"');
        }
        let _ = writeln!(out, "}} {}", Number(value));
    }
}

impl Families for Writer {
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) {
        self.name = name;
        family_head(&mut self.out, name, kind.as_str(), help);
    }

    fn sample(&mut self, pairs: &[(&str, &str)], value: Option<f64>) {
        self.line(self.name, pairs, value);
    }

    fn histogram(&mut self, series: &[(&str, &str)], bounds: &[f64], counts: &HistogramCounts) {
        let name = self.name;
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(&counts.buckets) {
            cumulative += count;
            let le = format!("{bound}");
            let mut pairs = series.to_vec();
            pairs.push(("le", &le));
            self.line(&bucket, &pairs, Some(cumulative as f64));
        }
        let mut pairs = series.to_vec();
        pairs.push(("le", "+Inf"));
        self.line(&bucket, &pairs, Some(counts.count as f64));
        self.line(&format!("{name}_sum"), series, Some(counts.sum));
        self.line(&format!("{name}_count"), series, Some(counts.count as f64));
    }
}

fn quantile_samples(w: &mut impl Families, base: &[(&str, &str)], q: &Quantiles) {
    for (label, value) in [("0.5", q.p50), ("0.95", q.p95)] {
        let mut pairs = base.to_vec();
        pairs.push(("quantile", label));
        w.sample(&pairs, value);
    }
}

/// A `dora_service_*` family: name, HELP text.
type Family = (&'static str, &'static str);

const REQUESTS: Family = (
    instruments::SERVICE_REQUESTS_TOTAL,
    "Requests (entry spans: SERVER and CONSUMER) received per service.",
);
const ERRORS: Family = (
    instruments::SERVICE_ERRORS_TOTAL,
    "Requests that were errors (status ERROR, or HTTP server spans with status >= 500).",
);
const LOG_ERRORS: Family = (
    instruments::SERVICE_LOG_ERRORS_TOTAL,
    "Log records with severity ERROR or above (severity_number >= 17).",
);
const ERROR_RATIO: Family = (
    instruments::SERVICE_ERROR_RATIO,
    "Errors / requests over the rolling window; NaN without requests.",
);
const LATENCY: Family = (
    instruments::SERVICE_LATENCY_SECONDS,
    "Request latency quantiles over the rolling window (HDR precision); NaN without requests.",
);

/// Writes the per-service `dora_service_*` families of `snapshot` to `out`:
/// the cumulative counters, and the error ratio and latency quantiles over
/// the window (labelled `window`).
pub fn render_red(snapshot: &RedSnapshot, out: &mut String) {
    // About 700 bytes a series; reserving once avoids copying a growing
    // multi-megabyte string over and over.
    out.reserve(snapshot.series.len() * 768 + 1024);
    // `{service="…",environment="…"` of each series, escaped once.
    let ids: Vec<String> = snapshot
        .series
        .iter()
        .map(|s| {
            let mut id = String::with_capacity(s.service.len() + s.environment.len() + 32);
            id.push_str("{service=\"");
            escape_into(&mut id, &s.service);
            id.push_str("\",environment=\"");
            escape_into(&mut id, &s.environment);
            id.push('"');
            id
        })
        .collect();
    let series = || snapshot.series.iter().zip(&ids);
    let head = |out: &mut String, (name, help): Family, kind: &str| {
        family_head(out, name, kind, help);
    };
    type Total = (Family, fn(&Totals) -> u64);
    let counters: [Total; 3] = [
        (REQUESTS, |t| t.requests),
        (ERRORS, |t| t.errors),
        (LOG_ERRORS, |t| t.log_errors),
    ];
    for (family, total) in counters {
        head(out, family, "counter");
        for (s, id) in series() {
            let _ = writeln!(out, "{}{id}}} {}", family.0, total(&s.totals));
        }
    }
    let mut window = String::new();
    escape_into(&mut window, &snapshot.window);
    head(out, ERROR_RATIO, "gauge");
    for (s, id) in series() {
        let ratio = Number(s.stats.error_ratio());
        let _ = writeln!(out, "{}{id},window=\"{window}\"}} {ratio}", ERROR_RATIO.0);
    }
    head(out, LATENCY, "gauge");
    for (s, id) in series() {
        for (i, quantile) in QUANTILE_LABELS.iter().enumerate() {
            let seconds = Number(s.stats.quantiles_us.map(|q| q[i] as f64 / 1e6));
            let _ = writeln!(
                out,
                "{}{id},window=\"{window}\",quantile=\"{quantile}\"}} {seconds}",
                LATENCY.0
            );
        }
    }
}

/// The `quantile` label of each of [`QUANTILES`].
const QUANTILE_LABELS: [&str; 3] = ["0.5", "0.95", "0.99"];
const _: () = assert!(QUANTILES.len() == QUANTILE_LABELS.len());

/// Writes every `dora_*` family of `snapshot` as text.
pub fn render_dora(snapshot: &DoraSnapshot) -> String {
    let mut w = Writer::new();
    write_dora(snapshot, &mut w);
    w.out
}

/// Writes every `dora_*` family of `snapshot` to `w`.
pub fn write_dora(snapshot: &DoraSnapshot, w: &mut impl Families) {
    let series = &snapshot.series;
    let ids = |s: &SeriesFigures| {
        [
            ("service", s.service.clone()),
            ("environment", s.environment.clone()),
        ]
    };

    w.family(
        "dora_deployments_total",
        Kind::Counter,
        "Deployments by outcome (success, failure, rollback).",
    );
    for s in series {
        let [a, b] = ids(s);
        for (outcome, count) in &s.deployments_total {
            w.sample(
                &[(a.0, &a.1), (b.0, &b.1), ("outcome", outcome)],
                Some(*count as f64),
            );
        }
    }
    w.family(
        "dora_failed_changes_total",
        Kind::Counter,
        "Deployments that were failed changes, by the strongest evidence (reason: deployment_failed, rolled_back, incident_artifact, regression, incident_window).",
    );
    for s in series {
        let [a, b] = ids(s);
        for (reason, count) in &s.failed_changes_by_reason {
            w.sample(
                &[(a.0, &a.1), (b.0, &b.1), ("reason", reason)],
                Some(*count as f64),
            );
        }
    }
    w.family("dora_incidents_open", Kind::Gauge, "Incidents open now.");
    for s in series {
        let [a, b] = ids(s);
        w.sample(&[(a.0, &a.1), (b.0, &b.1)], Some(s.open_incidents as f64));
    }

    type Gauge = (
        &'static str,
        &'static str,
        fn(&WindowFigures) -> Option<f64>,
    );
    let gauges: [Gauge; 4] = [
        (
            "dora_deployment_frequency_per_day",
            "Successful deployments per day over the window.",
            |f| Some(f.deployment_frequency_per_day),
        ),
        (
            "dora_change_failure_ratio",
            "Failed changes / deployments over the window; NaN without deployments.",
            |f| f.change_failure_ratio,
        ),
        (
            "dora_deployment_rework_ratio",
            "Deployment rework rate (DORA 2024): rework deployments (unplanned, made because of an incident) / deployments over the window; NaN without deployments.",
            |f| f.rework_ratio,
        ),
        (
            "dora_mean_time_to_restore_seconds",
            "Mean time to restore over the window; NaN without resolved incidents.",
            |f| f.time_to_restore.mean,
        ),
    ];
    for (name, help, value) in gauges {
        w.family(name, Kind::Gauge, help);
        for s in series {
            let [a, b] = ids(s);
            for f in &s.windows {
                let pairs = [(a.0, a.1.as_str()), (b.0, &b.1), ("window", &f.window)];
                w.sample(&pairs, value(f));
            }
        }
    }
    type Quantiled = (&'static str, &'static str, fn(&WindowFigures) -> &Quantiles);
    let quantiled: [Quantiled; 3] = [
        (
            "dora_lead_time_seconds",
            "Lead time for changes over the window (exact nearest-rank quantiles); NaN without changes.",
            |f| &f.lead_time,
        ),
        (
            "dora_time_to_restore_seconds",
            "Time to restore over the window (exact nearest-rank quantiles); NaN without resolved incidents.",
            |f| &f.time_to_restore,
        ),
        (
            "dora_failed_deployment_recovery_seconds",
            "Failed deployment recovery time over the window (exact nearest-rank quantiles).",
            |f| &f.failed_deployment_recovery,
        ),
    ];
    for (name, help, quantiles) in quantiled {
        w.family(name, Kind::Gauge, help);
        for s in series {
            let [a, b] = ids(s);
            for f in &s.windows {
                let pairs = [(a.0, a.1.as_str()), (b.0, &b.1), ("window", &f.window)];
                quantile_samples(w, &pairs, quantiles(f));
            }
        }
    }
    w.family(
        "dora_performance_level",
        Kind::Gauge,
        "DORA performance level per metric: 1 for the current level, 0 for the others.",
    );
    for s in series {
        let [a, b] = ids(s);
        for f in &s.windows {
            let metrics = [
                ("deployment_frequency", f.levels.deployment_frequency),
                ("lead_time", f.levels.lead_time),
                ("change_failure_rate", f.levels.change_failure_rate),
                ("time_to_restore", f.levels.time_to_restore),
            ];
            for (metric, level) in metrics {
                let Some(level) = level else { continue };
                for candidate in Level::ALL {
                    w.sample(
                        &[
                            (a.0, &a.1),
                            (b.0, &b.1),
                            ("window", &f.window),
                            ("metric", metric),
                            ("level", candidate.as_str()),
                        ],
                        Some(if candidate == level { 1.0 } else { 0.0 }),
                    );
                }
            }
        }
    }
    w.family(
        "dora_deployment_frequency_answer",
        Kind::Gauge,
        "Deployment frequency as the DORA survey's answer (on_demand, daily, weekly, monthly, less), from the days with deployments: 1 for the answer, 0 for the others.",
    );
    for s in series {
        let [a, b] = ids(s);
        for f in &s.windows {
            for candidate in FrequencyAnswer::ALL {
                w.sample(
                    &[
                        (a.0, &a.1),
                        (b.0, &b.1),
                        ("window", &f.window),
                        ("answer", candidate.as_str()),
                    ],
                    Some(if candidate == f.deployment_frequency_answer {
                        1.0
                    } else {
                        0.0
                    }),
                );
            }
        }
    }
    w.family(
        "dora_change_lead_time_seconds",
        Kind::Histogram,
        "Lead time of every change at its first deployment to the environment.",
    );
    for s in series {
        let [a, b] = ids(s);
        w.histogram(
            &[(a.0, &a.1), (b.0, &b.1)],
            &LEAD_TIME_BUCKETS,
            &s.lead_times,
        );
    }
    w.family(
        "dora_incident_duration_seconds",
        Kind::Histogram,
        "Duration of every resolved incident, opened to resolved.",
    );
    for s in series {
        let [a, b] = ids(s);
        w.histogram(
            &[(a.0, &a.1), (b.0, &b.1)],
            &INCIDENT_BUCKETS,
            &s.incident_durations,
        );
    }
    write_teams(snapshot, w);
}

/// The `dora_team_*` families: each team's series pooled, per environment
/// and window (teams from config, and at most `MAX_LEARNED_TEAMS` named by
/// deployments: the label is bounded).
fn write_teams(snapshot: &DoraSnapshot, w: &mut impl Families) {
    if snapshot.teams.is_empty() {
        return;
    }
    type TeamGauge = (
        &'static str,
        &'static str,
        fn(&WindowFigures) -> Option<f64>,
    );
    let gauges: [TeamGauge; 4] = [
        (
            "dora_team_deployment_frequency_per_day",
            "Successful deployments per day of the team's services together.",
            |f| Some(f.deployment_frequency_per_day),
        ),
        (
            "dora_team_change_failure_ratio",
            "Failed changes / deployments over all the team's deployments; NaN without deployments.",
            |f| f.change_failure_ratio,
        ),
        (
            "dora_team_deployment_rework_ratio",
            "Rework deployments / deployments over all the team's deployments; NaN without deployments.",
            |f| f.rework_ratio,
        ),
        (
            "dora_team_mean_time_to_restore_seconds",
            "Mean time to restore over all the team's resolved incidents; NaN without any.",
            |f| f.time_to_restore.mean,
        ),
    ];
    for (name, help, value) in gauges {
        w.family(name, Kind::Gauge, help);
        for t in &snapshot.teams {
            let team = t.team.as_deref().unwrap_or_default();
            for f in &t.windows {
                let pairs = [
                    ("team", team),
                    ("environment", t.environment.as_str()),
                    ("window", f.window.as_str()),
                ];
                w.sample(&pairs, value(f));
            }
        }
    }
    w.family(
        "dora_team_lead_time_seconds",
        Kind::Gauge,
        "Lead time for changes over all the team's changes (p50, p95), seconds.",
    );
    for t in &snapshot.teams {
        let team = t.team.as_deref().unwrap_or_default();
        for f in &t.windows {
            let pairs = [
                ("team", team),
                ("environment", t.environment.as_str()),
                ("window", f.window.as_str()),
            ];
            quantile_samples(w, &pairs, &f.lead_time);
        }
    }
}

/// Writes the per-service families of `snapshot` to `w`, as [`render_red`]
/// writes them as text (a test holds the two to the same output): for
/// OTLP, where the text path's shortcuts do not apply.
pub fn write_red(snapshot: &RedSnapshot, w: &mut impl Families) {
    fn ids(s: &SeriesSnapshot) -> [(&'static str, &str); 2] {
        [("service", &s.service), ("environment", &s.environment)]
    }
    type Total = (Family, fn(&Totals) -> u64);
    let counters: [Total; 3] = [
        (REQUESTS, |t| t.requests),
        (ERRORS, |t| t.errors),
        (LOG_ERRORS, |t| t.log_errors),
    ];
    for ((name, help), total) in counters {
        w.family(name, Kind::Counter, help);
        for s in &snapshot.series {
            w.sample(&ids(s), Some(total(&s.totals) as f64));
        }
    }
    let window = snapshot.window.as_str();
    w.family(ERROR_RATIO.0, Kind::Gauge, ERROR_RATIO.1);
    for s in &snapshot.series {
        let [a, b] = ids(s);
        w.sample(&[a, b, ("window", window)], s.stats.error_ratio());
    }
    w.family(LATENCY.0, Kind::Gauge, LATENCY.1);
    for s in &snapshot.series {
        let [a, b] = ids(s);
        for (i, quantile) in QUANTILE_LABELS.iter().enumerate() {
            let seconds = s.stats.quantiles_us.map(|q| q[i] as f64 / 1e6);
            w.sample(&[a, b, ("window", window), ("quantile", quantile)], seconds);
        }
    }
}

/// Writes the `dependencies` processor's families of `snapshot` to `w`:
/// `dora_dependency_*`, `dora_messaging_wait_seconds`, `dora_cache_*`,
/// `dora_queue_length*`, and the service graph in the OpenTelemetry
/// Collector `servicegraph` connector's names and labels.
pub fn write_dependencies(snapshot: &DependencySnapshot, w: &mut impl Families) {
    fn ids(d: &DependencyFigures) -> [(&'static str, &str); 6] {
        [
            ("service", &d.service),
            ("environment", &d.environment),
            ("type", d.kind.as_str()),
            ("system", &d.system),
            ("dependency", &d.dependency),
            ("operation", &d.operation),
        ]
    }
    let window = snapshot.window.as_str();
    let deps = &snapshot.dependencies;
    w.family(
        "dora_dependency_calls_total",
        Kind::Counter,
        "Calls to a dependency (CLIENT, PRODUCER and CONSUMER spans) per service.",
    );
    for d in deps {
        w.sample(&ids(d), Some(d.calls as f64));
    }
    w.family(
        "dora_dependency_errors_total",
        Kind::Counter,
        "Calls to a dependency that were errors (status ERROR, or HTTP status >= 500).",
    );
    for d in deps {
        w.sample(&ids(d), Some(d.errors as f64));
    }
    w.family(
        "dora_dependency_error_ratio",
        Kind::Gauge,
        "Errors / calls to a dependency over the rolling window; NaN without calls.",
    );
    for d in deps {
        let mut pairs = ids(d).to_vec();
        pairs.push(("window", window));
        w.sample(&pairs, d.window.error_ratio());
    }
    w.family(
        "dora_dependency_latency_seconds",
        Kind::Gauge,
        "Latency quantiles of calls to a dependency over the rolling window (a consumer's: its processing time); NaN without calls.",
    );
    for d in deps {
        let mut pairs = ids(d).to_vec();
        pairs.push(("window", window));
        latency_samples(w, &pairs, d.window.quantiles_us);
    }
    w.family(
        "dora_messaging_wait_seconds",
        Kind::Gauge,
        "How long consumed messages waited (consumer start - producer end, or - creation time) over the rolling window; NaN without a known wait.",
    );
    for d in deps {
        let Some(wait) = &d.wait else { continue };
        let mut pairs = ids(d).to_vec();
        pairs.push(("window", window));
        latency_samples(w, &pairs, wait.quantiles_us);
    }
    type Cache = (&'static str, &'static str, fn(&CacheFigures) -> u64);
    let counters: [Cache; 2] = [
        (
            "dora_cache_lookups_total",
            "Cache lookups (spans with the cache hit attribute) per service and cache.",
            |c| c.lookups,
        ),
        ("dora_cache_hits_total", "Cache lookups that hit.", |c| {
            c.hits
        }),
    ];
    fn cache_ids(c: &CacheFigures) -> [(&'static str, &str); 3] {
        [
            ("service", &c.service),
            ("environment", &c.environment),
            ("cache", &c.cache),
        ]
    }
    for (name, help, value) in counters {
        w.family(name, Kind::Counter, help);
        for c in &snapshot.caches {
            w.sample(&cache_ids(c), Some(value(c) as f64));
        }
    }
    w.family(
        "dora_cache_hit_ratio",
        Kind::Gauge,
        "Hits / lookups over the rolling window; NaN without lookups.",
    );
    for c in &snapshot.caches {
        let [a, b, c3] = cache_ids(c);
        w.sample(&[a, b, c3, ("window", window)], c.hit_ratio);
    }
    fn queue_ids(q: &QueueFigures) -> [(&'static str, &str); 4] {
        [
            ("service", &q.service),
            ("environment", &q.environment),
            ("metric", &q.metric),
            ("destination", &q.destination),
        ]
    }
    w.family(
        "dora_queue_length",
        Kind::Gauge,
        "The queue length last reported in a configured OTLP metric.",
    );
    for q in &snapshot.queues {
        w.sample(&queue_ids(q), Some(q.last));
    }
    w.family(
        "dora_queue_length_max",
        Kind::Gauge,
        "The largest queue length reported over the rolling window; NaN if none was.",
    );
    for q in &snapshot.queues {
        let [a, b, c, d] = queue_ids(q);
        w.sample(&[a, b, c, d, ("window", window)], q.max);
    }
    if let Some(graph) = &snapshot.graph {
        write_service_graph(graph, w);
    }
}

/// p50, p95, p99 in seconds (NaN without data) of a window's quantiles.
fn latency_samples(w: &mut impl Families, base: &[(&str, &str)], quantiles_us: Option<[u64; 3]>) {
    for (i, quantile) in QUANTILE_LABELS.iter().enumerate() {
        let mut pairs = base.to_vec();
        pairs.push(("quantile", quantile));
        w.sample(&pairs, quantiles_us.map(|q| q[i] as f64 / 1e6));
    }
}

/// The service graph, as the `servicegraph` connector names it, so that
/// Grafana's service graph panels read it unchanged.
fn write_service_graph(graph: &GraphSnapshot, w: &mut impl Families) {
    fn ids(e: &EdgeFigures) -> [(&'static str, &str); 3] {
        [
            ("client", &e.client),
            ("server", &e.server),
            ("connection_type", e.connection_type.as_str()),
        ]
    }
    w.family(
        "traces_service_graph_request_total",
        Kind::Counter,
        "Requests between two nodes (paired client and server spans).",
    );
    for e in &graph.edges {
        w.sample(&ids(e), Some(e.requests as f64));
    }
    w.family(
        "traces_service_graph_request_failed_total",
        Kind::Counter,
        "Requests between two nodes that failed (either side an error).",
    );
    for e in &graph.edges {
        w.sample(&ids(e), Some(e.failed as f64));
    }
    w.family(
        "traces_service_graph_request_server_seconds",
        Kind::Histogram,
        "Time for a request between two nodes as seen from the server.",
    );
    for e in &graph.edges {
        w.histogram(&ids(e), &graph.buckets, &e.server_seconds);
    }
    w.family(
        "traces_service_graph_request_client_seconds",
        Kind::Histogram,
        "Time for a request between two nodes as seen from the client.",
    );
    for e in &graph.edges {
        w.histogram(&ids(e), &graph.buckets, &e.client_seconds);
    }
    w.family(
        "traces_service_graph_request_messaging_system_seconds",
        Kind::Histogram,
        "Time between the producer's end and the consumer's start, for services communicating through a messaging system.",
    );
    for e in &graph.edges {
        if let Some(h) = &e.messaging_seconds {
            w.histogram(&ids(e), &graph.buckets, h);
        }
    }
    for (name, help, lost) in [
        (
            "traces_service_graph_unpaired_spans_total",
            "Spans whose partner did not come within the wait (the missing side's label empty).",
            &graph.unpaired,
        ),
        (
            "traces_service_graph_dropped_spans_total",
            "Spans dropped because the store of spans waiting was full.",
            &graph.dropped,
        ),
    ] {
        w.family(name, Kind::Counter, help);
        for u in lost {
            let pairs = [
                ("client", u.client.as_str()),
                ("server", u.server.as_str()),
                ("connection_type", u.connection_type.as_str()),
            ];
            w.sample(&pairs, Some(u.spans as f64));
        }
    }
}

/// Writes the `dependencies` families of `snapshot` as text.
pub fn render_dependencies(snapshot: &DependencySnapshot, out: &mut String) {
    let mut w = Writer::new();
    write_dependencies(snapshot, &mut w);
    out.push_str(&w.out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut w = Writer::new();
        w.line("m", &[("service", "a\"b\\c\nd"), ("x", "")], None);
        assert_eq!(w.out, "m{service=\"a\\\"b\\\\c\\nd\",x=\"\"} NaN\n");
    }

    #[test]
    fn red_families_are_written_per_series_with_nan_without_requests() {
        use crate::processors::red::SeriesSnapshot;
        use crate::window::WindowStats;
        let snapshot = RedSnapshot {
            window: "5m".into(),
            series: vec![
                SeriesSnapshot {
                    service: "check\"out".into(),
                    environment: "prod".into(),
                    stats: WindowStats {
                        requests: 8,
                        errors: 2,
                        quantiles_us: Some([1_500, 250_000, 2_000_000]),
                    },
                    totals: Totals {
                        requests: 10,
                        errors: 3,
                        log_errors: 4,
                    },
                },
                SeriesSnapshot {
                    service: "cart".into(),
                    environment: "dev".into(),
                    stats: WindowStats::default(),
                    totals: Totals::default(),
                },
            ],
            window_bytes: 0,
        };
        let mut out = String::new();
        render_red(&snapshot, &mut out);
        // The generic walk (what OTLP gets) writes the very same text.
        let mut w = Writer::new();
        write_red(&snapshot, &mut w);
        assert_eq!(w.out, out);
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        let a = r#"{service="check\"out",environment="prod""#;
        let b = r#"{service="cart",environment="dev""#;
        assert_eq!(
            samples,
            [
                format!("dora_service_requests_total{a}}} 10"),
                format!("dora_service_requests_total{b}}} 0"),
                format!("dora_service_errors_total{a}}} 3"),
                format!("dora_service_errors_total{b}}} 0"),
                format!("dora_service_log_errors_total{a}}} 4"),
                format!("dora_service_log_errors_total{b}}} 0"),
                format!("dora_service_error_ratio{a},window=\"5m\"}} 0.25"),
                format!("dora_service_error_ratio{b},window=\"5m\"}} NaN"),
                format!("dora_service_latency_seconds{a},window=\"5m\",quantile=\"0.5\"}} 0.0015"),
                format!("dora_service_latency_seconds{a},window=\"5m\",quantile=\"0.95\"}} 0.25"),
                format!("dora_service_latency_seconds{a},window=\"5m\",quantile=\"0.99\"}} 2"),
                format!("dora_service_latency_seconds{b},window=\"5m\",quantile=\"0.5\"}} NaN"),
                format!("dora_service_latency_seconds{b},window=\"5m\",quantile=\"0.95\"}} NaN"),
                format!("dora_service_latency_seconds{b},window=\"5m\",quantile=\"0.99\"}} NaN"),
            ]
        );
        let types: Vec<&str> = out.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            [
                "# TYPE dora_service_requests_total counter",
                "# TYPE dora_service_errors_total counter",
                "# TYPE dora_service_log_errors_total counter",
                "# TYPE dora_service_error_ratio gauge",
                "# TYPE dora_service_latency_seconds gauge",
            ]
        );
    }

    #[test]
    fn team_families_carry_the_pooled_figures() {
        use crate::model::delivery::{
            DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome, LinkedChange,
        };
        use crate::processors::dora::DoraConfig;
        use crate::processors::dora::DoraProcessor;
        let mut config = DoraConfig::default();
        config.teams.insert("checkout".into(), "payments".into());
        config.teams.insert("cart".into(), "payments".into());
        let hour = 3_600_000_000_000i64;
        let now = 1_714_521_600_000_000_000i64;
        let deploy = |id: &str, service: &str, ago: i64, lead: i64| DeliveryEvent {
            id: id.into(),
            time: now - ago,
            kind: DeliveryKind::Deployment(Deployment {
                service: service.into(),
                environment: "production".into(),
                artifact: None,
                outcome: DeploymentOutcome::Success,
                changes: vec![LinkedChange {
                    id: format!("{id}-c"),
                    time: Some(now - ago - lead),
                }],
                rework: false,
                team: None,
                ..Default::default()
            }),
        };
        let mut dora = DoraProcessor::new(&config);
        dora.apply(&[
            deploy("a", "checkout", 2 * hour, hour),
            deploy("b", "cart", 3 * hour, 3 * hour),
            deploy("c", "search", hour, 5 * hour),
        ]);
        let text = render_dora(&dora.snapshot(now));
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                .to_string()
        };
        assert_eq!(
            line(
                "dora_team_deployment_frequency_per_day{team=\"payments\",environment=\"production\",window=\"7d\"}"
            ),
            format!(
                "dora_team_deployment_frequency_per_day{{team=\"payments\",environment=\"production\",window=\"7d\"}} {}",
                2.0 / 7.0
            )
        );
        // Lead times 1h and 3h pooled: p95 3h (search, in no team, is not in it).
        assert_eq!(
            line(
                "dora_team_lead_time_seconds{team=\"payments\",environment=\"production\",window=\"7d\",quantile=\"0.95\"}"
            ),
            "dora_team_lead_time_seconds{team=\"payments\",environment=\"production\",window=\"7d\",quantile=\"0.95\"} 10800"
        );
        assert!(!text.contains("team=\"search\""));
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut w = Writer::new();
        let counts = HistogramCounts {
            buckets: vec![1, 1, 1],
            sum: 55.5,
            count: 3,
        };
        w.family("h", Kind::Histogram, "help");
        w.out.clear();
        w.histogram(&[("s", "x")], &[1.0, 10.0], &counts);
        assert_eq!(
            w.out,
            "h_bucket{s=\"x\",le=\"1\"} 1\nh_bucket{s=\"x\",le=\"10\"} 2\nh_bucket{s=\"x\",le=\"+Inf\"} 3\nh_sum{s=\"x\"} 55.5\nh_count{s=\"x\"} 3\n"
        );
    }
}
