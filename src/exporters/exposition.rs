//! Prometheus text exposition of the DORA figures.
//!
//! The DORA metrics are derived from the delivery history at scrape time
//! (so they never depend on arrival order), which the `metrics` recorder
//! cannot express for counters and histograms; they are written here
//! instead, one family at a time, and appended to the recorder's output.

use std::fmt::Write;

use crate::processors::dora::levels::Level;
use crate::processors::dora::{
    DoraSnapshot, HistogramCounts, INCIDENT_BUCKETS, LEAD_TIME_BUCKETS, Quantiles, SeriesFigures,
    WindowFigures,
};

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v}"),
        Some(v) if v.is_infinite() && v > 0.0 => "+Inf".into(),
        _ => "NaN".into(),
    }
}

struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: Option<f64>) {
        let _ = writeln!(self.out, "{name}{} {}", labels(pairs), number(value));
    }

    fn histogram(
        &mut self,
        name: &str,
        series: &[(&str, &str)],
        bounds: &[f64],
        counts: &HistogramCounts,
    ) {
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(&counts.buckets) {
            cumulative += count;
            let le = format!("{bound}");
            let mut pairs = series.to_vec();
            pairs.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &pairs, Some(cumulative as f64));
        }
        let mut pairs = series.to_vec();
        pairs.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &pairs, Some(counts.count as f64));
        self.sample(&format!("{name}_sum"), series, Some(counts.sum));
        self.sample(&format!("{name}_count"), series, Some(counts.count as f64));
    }
}

fn quantile_samples(w: &mut Writer, name: &str, base: &[(&str, &str)], q: &Quantiles) {
    for (label, value) in [("0.5", q.p50), ("0.95", q.p95)] {
        let mut pairs = base.to_vec();
        pairs.push(("quantile", label));
        w.sample(name, &pairs, value);
    }
}

/// Writes every `dora_*` family of `snapshot`.
pub fn render_dora(snapshot: &DoraSnapshot) -> String {
    let mut w = Writer { out: String::new() };
    let series = &snapshot.series;
    let ids = |s: &SeriesFigures| {
        [
            ("service", s.service.clone()),
            ("environment", s.environment.clone()),
        ]
    };

    w.family(
        "dora_deployments_total",
        "counter",
        "Deployments by outcome (success, failure, rollback).",
    );
    for s in series {
        let [a, b] = ids(s);
        for (outcome, count) in &s.deployments_total {
            w.sample(
                "dora_deployments_total",
                &[(a.0, &a.1), (b.0, &b.1), ("outcome", outcome)],
                Some(*count as f64),
            );
        }
    }
    w.family(
        "dora_failed_changes_total",
        "counter",
        "Deployments that were failed changes.",
    );
    for s in series {
        let [a, b] = ids(s);
        w.sample(
            "dora_failed_changes_total",
            &[(a.0, &a.1), (b.0, &b.1)],
            Some(s.failed_changes_total as f64),
        );
    }
    w.family("dora_incidents_open", "gauge", "Incidents open now.");
    for s in series {
        let [a, b] = ids(s);
        w.sample(
            "dora_incidents_open",
            &[(a.0, &a.1), (b.0, &b.1)],
            Some(s.open_incidents as f64),
        );
    }

    type Gauge = (
        &'static str,
        &'static str,
        fn(&WindowFigures) -> Option<f64>,
    );
    let gauges: [Gauge; 3] = [
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
            "dora_mean_time_to_restore_seconds",
            "Mean time to restore over the window; NaN without resolved incidents.",
            |f| f.time_to_restore.mean,
        ),
    ];
    for (name, help, value) in gauges {
        w.family(name, "gauge", help);
        for s in series {
            let [a, b] = ids(s);
            for f in &s.windows {
                let pairs = [(a.0, a.1.as_str()), (b.0, &b.1), ("window", &f.window)];
                w.sample(name, &pairs, value(f));
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
        w.family(name, "gauge", help);
        for s in series {
            let [a, b] = ids(s);
            for f in &s.windows {
                let pairs = [(a.0, a.1.as_str()), (b.0, &b.1), ("window", &f.window)];
                quantile_samples(&mut w, name, &pairs, quantiles(f));
            }
        }
    }
    w.family(
        "dora_performance_level",
        "gauge",
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
                        "dora_performance_level",
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
        "dora_change_lead_time_seconds",
        "histogram",
        "Lead time of every change at its first deployment to the environment.",
    );
    for s in series {
        let [a, b] = ids(s);
        w.histogram(
            "dora_change_lead_time_seconds",
            &[(a.0, &a.1), (b.0, &b.1)],
            &LEAD_TIME_BUCKETS,
            &s.lead_times,
        );
    }
    w.family(
        "dora_incident_duration_seconds",
        "histogram",
        "Duration of every resolved incident, opened to resolved.",
    );
    for s in series {
        let [a, b] = ids(s);
        w.histogram(
            "dora_incident_duration_seconds",
            &[(a.0, &a.1), (b.0, &b.1)],
            &INCIDENT_BUCKETS,
            &s.incident_durations,
        );
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("service", "a\"b\\c\nd")]),
            "{service=\"a\\\"b\\\\c\\nd\"}"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut w = Writer { out: String::new() };
        let counts = HistogramCounts {
            buckets: vec![1, 1, 1],
            sum: 55.5,
            count: 3,
        };
        w.histogram("h", &[("s", "x")], &[1.0, 10.0], &counts);
        assert_eq!(
            w.out,
            "h_bucket{s=\"x\",le=\"1\"} 1\nh_bucket{s=\"x\",le=\"10\"} 2\nh_bucket{s=\"x\",le=\"+Inf\"} 3\nh_sum{s=\"x\"} 55.5\nh_count{s=\"x\"} 3\n"
        );
    }
}
