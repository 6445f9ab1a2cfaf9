//! Processor `red`: requests, errors and duration per (service, environment).
//!
//! Owns one [`RollingHistogram`] per series and the series' cumulative
//! counters. Works a whole batch at a time: each resource group of a batch
//! costs one hash lookup (with a reused key buffer, no allocation), then its
//! latencies go into the current slice. The processor is owned by one task, so
//! nothing here takes a lock; readers ask it for a [`RedSnapshot`].

use std::collections::HashMap;

use bytes::Bytes;
use hdrhistogram::Histogram;
use metrics::counter;

use crate::instruments;
use crate::model::{LogSummary, ResourceIdentity, Telemetry, TraceSummary};
use crate::processors::Applied;
use crate::settings::ConfigDuration;
use crate::window::{BucketLayout, RollingHistogram, WindowShape, WindowStats};
use serde::Deserialize;

/// `processors.red`: per-(service, environment) requests, errors and latency
/// over a rolling window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedConfig {
    /// Length of the rolling window. Default `5m`. A whole multiple of `slice`.
    #[serde(default = "default_red_window")]
    pub window: ConfigDuration,
    /// Granularity of the window: data leaves it one slice at a time. Default `10s`.
    #[serde(default = "default_red_slice")]
    pub slice: ConfigDuration,
    /// Most (service, environment) series kept; spans of new series beyond it are
    /// refused and counted. Default 10 000.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Latency precision in significant decimal digits (1 to 3). Default 2, i.e.
    /// quantiles within 1%.
    #[serde(default = "default_significant_digits")]
    pub significant_digits: u8,
    /// Largest latency told apart; longer requests count as this. Default `1h`.
    #[serde(default = "default_max_latency")]
    pub max_latency: ConfigDuration,
}

pub(crate) fn default_red_window() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
pub(crate) fn default_red_slice() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
pub(crate) const fn default_max_series() -> usize {
    10_000
}
pub(crate) const fn default_significant_digits() -> u8 {
    2
}
pub(crate) fn default_max_latency() -> ConfigDuration {
    ConfigDuration::from_secs(3_600)
}

impl Default for RedConfig {
    fn default() -> Self {
        RedConfig {
            window: default_red_window(),
            slice: default_red_slice(),
            max_series: default_max_series(),
            significant_digits: default_significant_digits(),
            max_latency: default_max_latency(),
        }
    }
}

impl RedConfig {
    /// Collects what is wrong, each under `path`.
    pub(crate) fn validate(&self, path: &str, errors: &mut Vec<String>) {
        let window = self.window.get();
        let slice = self.slice.get();
        if slice.is_zero() {
            errors.push(format!("{path}.slice: must be longer than 0"));
        } else if window < slice || !window.as_millis().is_multiple_of(slice.as_millis()) {
            errors.push(format!(
                "{path}.window: must be a whole multiple of slice ({}), got {}",
                self.slice, self.window
            ));
        } else if window.as_millis() / slice.as_millis() > 10_000 {
            errors.push(format!(
                "{path}.slice: at most 10000 slices per window, got {}",
                window.as_millis() / slice.as_millis()
            ));
        }
        if self.max_series == 0 {
            errors.push(format!("{path}.max_series: must be at least 1"));
        }
        if !(1..=3).contains(&self.significant_digits) {
            errors.push(format!(
                "{path}.significant_digits: must be 1, 2 or 3, got {}",
                self.significant_digits
            ));
        }
        let max_latency = self.max_latency.get();
        if max_latency.as_micros() < 1_000 || max_latency.as_secs() > 86_400 {
            errors.push(format!(
                "{path}.max_latency: must be between 1ms and 1d, got {}",
                self.max_latency
            ));
        }
    }
}

/// One (service, environment) series.
struct Series {
    service: String,
    environment: String,
    window: RollingHistogram,
    /// The cumulative counters, rendered at scrape time straight from here
    /// (not through the `metrics` registry, which would keep three more
    /// label sets per series and render them through a sorted map).
    totals: Totals,
    /// Changed since the last [`RedProcessor::take_changed`]: the changelog
    /// writes only such series.
    changed: bool,
}

/// Cumulative requests, errors and error log records of a series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// `dora_service_requests_total`.
    pub requests: u64,
    /// `dora_service_errors_total`.
    pub errors: u64,
    /// `dora_service_log_errors_total`.
    pub log_errors: u64,
}

/// The figures of one series at one instant.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesSnapshot {
    /// `service.name`.
    pub service: String,
    /// The environment, or the default one.
    pub environment: String,
    /// The window's figures.
    pub stats: WindowStats,
    /// The cumulative counters since the series was created (or restored).
    pub totals: Totals,
}

/// Requests and errors of one series over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesErrors {
    /// `service.name`.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// Requests in the window.
    pub requests: u64,
    /// Errors in the window.
    pub errors: u64,
}

/// Every series' figures, for exporters and the read API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RedSnapshot {
    /// The window as configured, e.g. `5m`: the `window` label.
    pub window: String,
    /// Every series, in order of creation.
    pub series: Vec<SeriesSnapshot>,
    /// Heap bytes held by the windows.
    pub window_bytes: usize,
}

/// The `red` processor's state.
pub struct RedProcessor {
    shape: WindowShape,
    layout: BucketLayout,
    window_label: String,
    max_series: usize,
    default_environment: Bytes,
    /// `service \0 environment` → position in `series`.
    index: HashMap<Box<[u8]>, usize>,
    series: Vec<Series>,
    key: Vec<u8>,
    scratch: Histogram<u64>,
}

impl RedProcessor {
    /// A processor as configured; resources without an environment get
    /// `default_environment`.
    pub fn new(config: &RedConfig, default_environment: &str) -> Self {
        let layout = BucketLayout::new(
            config.significant_digits,
            config.max_latency.get().as_micros() as u64,
        );
        RedProcessor {
            shape: WindowShape::new(config.window.get(), config.slice.get()),
            scratch: layout.dense(),
            layout,
            window_label: config.window.as_str().to_string(),
            max_series: config.max_series,
            default_environment: Bytes::copy_from_slice(default_environment.as_bytes()),
            index: HashMap::new(),
            series: Vec::new(),
            key: Vec::with_capacity(128),
        }
    }

    /// Applies one batch received at `now_ns`.
    pub fn apply(&mut self, item: &Telemetry, now_ns: u64) -> Applied {
        match item {
            Telemetry::Traces(traces) => self.apply_traces(traces, now_ns),
            Telemetry::Logs(logs) => self.apply_logs(logs),
            Telemetry::Metrics(_) | Telemetry::Delivery(_) => Applied::default(),
        }
    }

    fn apply_traces(&mut self, traces: &TraceSummary, now_ns: u64) -> Applied {
        let mut refused = 0;
        for group in &traces.groups {
            let latencies = &traces.latencies_ns[group.latencies.clone()];
            let Some(i) = self.series_index(&group.identity) else {
                refused += latencies.len() as u64;
                continue;
            };
            let series = &mut self.series[i];
            series.changed = true;
            series.totals.requests += latencies.len() as u64;
            series.totals.errors += group.errors;
            series.window.record(
                &self.shape,
                &self.layout,
                now_ns,
                latencies.iter().map(|ns| ns / 1_000),
                group.errors,
            );
        }
        self.refusal(refused, "spans")
    }

    fn apply_logs(&mut self, logs: &LogSummary) -> Applied {
        let mut refused = 0;
        for group in &logs.groups {
            if group.errors == 0 {
                continue;
            }
            match self.series_index(&group.identity) {
                Some(i) => {
                    let series = &mut self.series[i];
                    series.changed = true;
                    series.totals.log_errors += group.errors;
                }
                None => refused += group.records,
            }
        }
        self.refusal(refused, "log records")
    }

    fn refusal(&self, refused: u64, what: &str) -> Applied {
        if refused == 0 {
            return Applied::default();
        }
        counter!(instruments::RECEIVER_REFUSED, "reason" => "series_limit").increment(refused);
        Applied {
            refused,
            reason: Some(format!(
                "{refused} {what} refused: the series limit (processors.red.max_series = {}) is reached",
                self.max_series
            )),
        }
    }

    /// Finds or creates the series of `identity`; `None` when the cap is reached.
    fn series_index(&mut self, identity: &ResourceIdentity) -> Option<usize> {
        let environment = if identity.environment.is_empty() {
            &self.default_environment
        } else {
            &identity.environment
        };
        self.key.clear();
        self.key.extend_from_slice(&identity.service);
        self.key.push(0);
        self.key.extend_from_slice(environment);
        if let Some(&i) = self.index.get(self.key.as_slice()) {
            return Some(i);
        }
        if self.series.len() >= self.max_series {
            return None;
        }
        // Decoders checked UTF-8; lossy conversion only guards the invariant.
        let service = String::from_utf8_lossy(&identity.service).into_owned();
        let environment = String::from_utf8_lossy(environment).into_owned();
        let series = Series {
            service,
            environment,
            window: RollingHistogram::default(),
            totals: Totals::default(),
            changed: true,
        };
        self.series.push(series);
        self.index
            .insert(self.key.clone().into_boxed_slice(), self.series.len() - 1);
        Some(self.series.len() - 1)
    }

    /// Every series' window figures at `now_ns`; also frees expired slices.
    pub fn snapshot(&mut self, now_ns: u64) -> RedSnapshot {
        let mut window_bytes = 0;
        let (shape, layout, scratch) = (&self.shape, &self.layout, &mut self.scratch);
        let series = self
            .series
            .iter_mut()
            .map(|s| {
                s.window.expire(shape, now_ns / shape.slice_ns());
                window_bytes += s.window.heap_bytes();
                SeriesSnapshot {
                    service: s.service.clone(),
                    environment: s.environment.clone(),
                    stats: s.window.stats(shape, layout, now_ns, scratch),
                    totals: s.totals,
                }
            })
            .collect();
        RedSnapshot {
            window: self.window_label.clone(),
            series,
            window_bytes,
        }
    }

    /// Requests and errors of every series over the window at `now_ns`: the
    /// cheap part of a snapshot, for derived incidents.
    pub fn error_counts(&self, now_ns: u64) -> Vec<SeriesErrors> {
        self.series
            .iter()
            .map(|s| {
                let (requests, errors) = s.window.counts(&self.shape, now_ns);
                SeriesErrors {
                    service: s.service.clone(),
                    environment: s.environment.clone(),
                    requests,
                    errors,
                }
            })
            .collect()
    }

    /// The figures of `service` in `environment` over `[from_ns, to_ns)`,
    /// whole slices only (a slice partly outside is left out), if that
    /// stretch is still in the window at `now_ns` and has ended by then:
    /// the health before and after a deployment, for the regression check.
    /// A series the processor does not have had no requests.
    pub fn health_between(
        &mut self,
        service: &str,
        environment: &str,
        from_ns: u64,
        to_ns: u64,
        now_ns: u64,
    ) -> Option<WindowStats> {
        let slice = self.shape.slice_ns();
        let (first, end) = (from_ns.div_ceil(slice), to_ns / slice);
        let current = now_ns / slice;
        // Every slice wanted must have ended and still be in the window.
        if first >= end || end > current || first + self.shape.slices() <= current {
            return None;
        }
        let mut key = Vec::with_capacity(service.len() + environment.len() + 1);
        key.extend_from_slice(service.as_bytes());
        key.push(0);
        key.extend_from_slice(environment.as_bytes());
        // A series with no spans yet had no requests in the stretch.
        let Some(&i) = self.index.get(key.as_slice()) else {
            return Some(WindowStats::default());
        };
        let (layout, scratch) = (&self.layout, &mut self.scratch);
        Some(self.series[i].window.stats_of(layout, first..end, scratch))
    }

    /// The slice's and the window's lengths, ns.
    pub fn window_ns(&self) -> (u64, u64) {
        let slice = self.shape.slice_ns();
        (slice, slice * self.shape.slices())
    }

    /// The state to checkpoint: every series' window and counters.
    pub fn to_state(&self) -> crate::proto::RedState {
        crate::proto::RedState {
            series: self.series.iter().map(|s| self.record(s)).collect(),
        }
    }

    /// The series changed since the last call (new data or new ones), as
    /// records, and marks them unchanged: what a changelog flush writes.
    pub fn take_changed(&mut self) -> Vec<crate::proto::RedSeriesRecord> {
        let mut out = Vec::new();
        for i in 0..self.series.len() {
            if self.series[i].changed {
                out.push(self.record(&self.series[i]));
                self.series[i].changed = false;
            }
        }
        out
    }

    fn record(&self, s: &Series) -> crate::proto::RedSeriesRecord {
        crate::proto::RedSeriesRecord {
            service: s.service.clone(),
            environment: s.environment.clone(),
            window: Some(s.window.to_state(&self.shape, &self.layout)),
            requests_total: s.totals.requests,
            errors_total: s.totals.errors,
            log_errors_total: s.totals.log_errors,
        }
    }

    /// Restores checkpointed series into an empty processor. A window
    /// recorded with another shape or precision than configured starts
    /// empty (its counters are kept) and is returned by name. On any other
    /// error nothing changed.
    pub fn restore(&mut self, state: &crate::proto::RedState) -> Result<Vec<String>, String> {
        if !self.series.is_empty() {
            return Err("the red processor already holds series".into());
        }
        let mut windows = Vec::with_capacity(state.series.len());
        let mut reset = Vec::new();
        for record in &state.series {
            let window = match record.window.as_ref() {
                None => RollingHistogram::default(),
                Some(w) => match RollingHistogram::from_state(w, &self.shape, &self.layout) {
                    Ok(window) => window,
                    Err(crate::window::StateError::LayoutMismatch { .. }) => {
                        reset.push(format!("{} ({})", record.service, record.environment));
                        RollingHistogram::default()
                    }
                    Err(e) => {
                        return Err(format!("{} ({}): {e}", record.service, record.environment));
                    }
                },
            };
            windows.push(window);
        }
        for (record, window) in state.series.iter().zip(windows) {
            let identity = ResourceIdentity {
                service: Bytes::copy_from_slice(record.service.as_bytes()),
                environment: Bytes::copy_from_slice(record.environment.as_bytes()),
            };
            let Some(i) = self.series_index(&identity) else {
                reset.push(format!(
                    "{} ({}): beyond max_series",
                    record.service, record.environment
                ));
                continue;
            };
            let series = &mut self.series[i];
            series.changed = false;
            series.window = window;
            series.totals = Totals {
                requests: record.requests_total,
                errors: record.errors_total,
                log_errors: record.log_errors_total,
            };
        }
        Ok(reset)
    }

    /// Series held.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LogGroup, RequestGroup};

    const S: u64 = 1_000_000_000;

    fn identity(service: &str, environment: &str) -> ResourceIdentity {
        ResourceIdentity {
            service: Bytes::copy_from_slice(service.as_bytes()),
            environment: Bytes::copy_from_slice(environment.as_bytes()),
        }
    }

    fn traces(groups: &[(&str, &str, &[u64], u64)]) -> Telemetry {
        let mut summary = TraceSummary::default();
        for &(service, env, latencies, errors) in groups {
            let first = summary.latencies_ns.len();
            summary.latencies_ns.extend_from_slice(latencies);
            summary.spans += latencies.len() as u64;
            summary.groups.push(RequestGroup {
                identity: identity(service, env),
                latencies: first..summary.latencies_ns.len(),
                errors,
            });
        }
        Telemetry::Traces(summary)
    }

    fn config(max_series: usize) -> RedConfig {
        RedConfig {
            max_series,
            ..RedConfig::default()
        }
    }

    #[test]
    fn health_between_reads_whole_ended_slices_still_in_the_window() {
        // 5m window of 10s slices; a deployment at 1000 s.
        let mut red = RedProcessor::new(&config(10), "unknown");
        let ms = 1_000_000;
        // Before: 100 requests at 10 ms, 1 error, in [900, 1000) s.
        for k in 0..10u64 {
            let errors = u64::from(k == 3);
            red.apply(
                &traces(&[("shop", "production", &[10 * ms; 10], errors)]),
                (900 + 10 * k) * S + S,
            );
        }
        // After: 100 at 600 ms, 5 errors, in [1000, 1100) s.
        for k in 0..10u64 {
            let errors = if k < 5 { 1 } else { 0 };
            red.apply(
                &traces(&[("shop", "production", &[600 * ms; 10], errors)]),
                (1000 + 10 * k) * S + S,
            );
        }
        let before = red
            .health_between("shop", "production", 900 * S, 1000 * S, 1100 * S)
            .unwrap();
        assert_eq!((before.requests, before.errors), (100, 1));
        let after = red
            .health_between("shop", "production", 1000 * S, 1100 * S, 1100 * S)
            .unwrap();
        assert_eq!((after.requests, after.errors), (100, 5));
        let [_, p95, _] = after.quantiles_us.unwrap();
        assert!(
            (594_000..=606_000).contains(&p95),
            "{p95}: 600 ms within the 2-digit precision"
        );
        // A partial slice at either end is left out: [905, 1000) is 9 slices.
        let partial = red
            .health_between("shop", "production", 905 * S, 1000 * S, 1100 * S)
            .unwrap();
        assert_eq!(partial.requests, 90);
        // Not ended yet, gone from the window, or no such series: none.
        assert!(
            red.health_between("shop", "production", 1000 * S, 1100 * S, 1095 * S)
                .is_none()
        );
        assert!(
            red.health_between("shop", "production", 900 * S, 1000 * S, 1200 * S + 300 * S)
                .is_none()
        );
        // A series without spans had no requests.
        assert_eq!(
            red.health_between("cart", "production", 900 * S, 1000 * S, 1100 * S),
            Some(WindowStats::default())
        );
    }

    #[test]
    fn counts_and_quantiles_per_series() {
        let mut red = RedProcessor::new(&config(10), "unknown");
        let ms = 1_000_000;
        let applied = red.apply(
            &traces(&[
                (
                    "checkout",
                    "production",
                    &[10 * ms, 20 * ms, 30 * ms, 400 * ms],
                    1,
                ),
                ("checkout", "", &[5 * ms], 0),
            ]),
            100 * S,
        );
        assert_eq!(applied, Applied::default());
        red.apply(
            &traces(&[("checkout", "production", &[40 * ms], 1)]),
            101 * S,
        );
        let snapshot = red.snapshot(102 * S);
        assert_eq!(snapshot.window, "5m");
        assert_eq!(snapshot.series.len(), 2);
        let prod = &snapshot.series[0];
        assert_eq!(
            (prod.service.as_str(), prod.environment.as_str()),
            ("checkout", "production")
        );
        assert_eq!(prod.stats.requests, 5);
        assert_eq!(prod.stats.errors, 2);
        assert_eq!(prod.stats.error_ratio(), Some(0.4));
        // p50 of {10, 20, 30, 40, 400} ms is 30 ms; p95 and p99 are 400 ms (within 1%).
        let [p50, p95, p99] = prod.stats.quantiles_us.unwrap();
        for (got, want) in [(p50, 30_000), (p95, 400_000), (p99, 400_000)] {
            assert!(
                got >= want && (got as f64) < want as f64 * 1.01,
                "{got} vs {want}"
            );
        }
        let unknown = &snapshot.series[1];
        assert_eq!(unknown.environment, "unknown");
        assert_eq!(unknown.stats.requests, 1);
    }

    #[test]
    fn the_series_cap_holds_and_refusals_are_reported() {
        let mut red = RedProcessor::new(&config(2), "unknown");
        let applied = red.apply(
            &traces(&[
                ("a", "prod", &[1_000], 0),
                ("b", "prod", &[1_000, 2_000], 0),
                ("c", "prod", &[1_000, 2_000, 3_000], 0),
                ("a", "prod", &[1_000], 0),
            ]),
            S,
        );
        assert_eq!(applied.refused, 3);
        assert!(applied.reason.unwrap().contains("max_series = 2"));
        assert_eq!(red.series_count(), 2);
        let logs = Telemetry::Logs(LogSummary {
            deployments: Vec::new(),
            records: 4,
            groups: vec![LogGroup {
                identity: identity("d", "prod"),
                records: 4,
                errors: 1,
            }],
        });
        assert_eq!(red.apply(&logs, S).refused, 4);
        assert_eq!(red.series_count(), 2);
        let snapshot = red.snapshot(S);
        assert_eq!(snapshot.series[0].stats.requests, 2);
    }

    #[test]
    fn data_leaves_the_window() {
        let mut red = RedProcessor::new(&config(10), "unknown");
        red.apply(&traces(&[("a", "prod", &[1_000], 1)]), 0);
        assert_eq!(red.snapshot(299 * S).series[0].stats.requests, 1);
        let later = red.snapshot(300 * S);
        assert_eq!(later.series[0].stats.requests, 0);
        assert_eq!(later.series[0].stats.error_ratio(), None);
        assert_eq!(later.window_bytes, red.snapshot(300 * S).window_bytes);
    }
}
