//! The DORA metrics assessment report: `GET /report` (Markdown, `?format=json`,
//! `?format=html`), `doraflow report --url`, and the end of `doraflow replay`.
//!
//! The report is built from one set of snapshots ([`ReportInputs`]) into a
//! [`Report`], whose figures are the very structures `/api/v1/dora` serves
//! (so the two agree number for number), and rendered through one document
//! model ([`Block`]) to Markdown or HTML.

pub mod advice;
pub mod dashboard;
mod render;

use serde::Serialize;

use crate::processors::alerts::{ActiveAlert, RuleInfo, State};
use crate::processors::dora::levels::{Cutoffs, Level};
use crate::processors::dora::{DayFigures, DoraSnapshot, FailedChange, WindowFigures};
use crate::processors::red::RedSnapshot;

pub use render::{
    Block, document, format_duration, format_frequency, format_level, format_ratio, html, markdown,
};

/// What a report is made of, taken from the engine at one instant.
#[derive(Debug, Clone, Default)]
pub struct ReportInputs {
    /// The `dora` snapshot, with the previous windows (trend).
    pub dora: Option<DoraSnapshot>,
    /// The `red` snapshot.
    pub red: Option<RedSnapshot>,
    /// The alert rules in force (empty without an `alerts` processor).
    pub rules: Vec<RuleInfo>,
    /// The alerts pending or firing.
    pub active: Vec<ActiveAlert>,
    /// Production figures per day, oldest first (only when asked for).
    pub trend: Vec<DayFigures>,
}

/// The assessment.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When, RFC 3339.
    pub generated_at: String,
    /// When, ns since the epoch.
    pub at: i64,
    /// The window of the executive summary: the longest one configured.
    pub summary_window: Option<String>,
    /// Level cut-offs (elite, high, medium) per metric.
    pub cutoffs: Option<Cutoffs>,
    /// Every production service pooled, over the summary window.
    pub production: Option<WindowFigures>,
    /// Each production series over the summary window.
    pub summary: Vec<SummaryRow>,
    /// The keys of every production service pooled that fall below the
    /// targeted level (`processors.dora.target_level`): what the data
    /// shows and the practices for each, ranked by it.
    pub advice: Vec<advice::Advice>,
    /// Each key of every production service pooled, the summary window
    /// against the one before.
    pub trends: Vec<advice::Trend>,
    /// Each team (`processors.dora.teams`) per environment, its series
    /// pooled, over the summary window.
    pub teams: Vec<TeamRow>,
    /// Production series whose figures fall below `high`, and why.
    pub below_high: Vec<BelowHigh>,
    /// Every series in detail.
    pub services: Vec<ServiceSection>,
    /// The alert rules and their state.
    pub alerts: AlertsSection,
    /// What the figures rest on.
    pub events: EventCounts,
}

/// One production series in the executive summary.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// Its figures over the summary window.
    pub figures: WindowFigures,
}

/// A team's series in one environment, pooled.
#[derive(Debug, Clone, Serialize)]
pub struct TeamRow {
    /// The team.
    pub team: String,
    /// The environment.
    pub environment: String,
    /// Its services.
    pub services: Vec<String>,
    /// Their figures together over the summary window.
    pub figures: WindowFigures,
}

/// A production series below `high`, with what drags it down.
#[derive(Debug, Clone, Serialize)]
pub struct BelowHigh {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The metrics below `high`.
    pub drags: Vec<Drag>,
}

/// One metric below `high`.
#[derive(Debug, Clone, Serialize)]
pub struct Drag {
    /// `deployment_frequency`, `lead_time`, `change_failure_rate` or `time_to_restore`.
    pub metric: &'static str,
    /// Its value (per day, seconds, or a ratio).
    pub value: f64,
    /// Its level.
    pub level: Level,
    /// What `high` needs: at least (frequency) or at most / below (the others).
    pub high_needs: f64,
}

/// One series in detail.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSection {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// Whether the environment is a production one.
    pub production: bool,
    /// Per window, with the window before it (`previous`).
    pub windows: Vec<WindowFigures>,
    /// Incidents open now.
    pub open_incidents: u64,
    /// When the oldest of them opened, RFC 3339.
    pub oldest_open_incident: Option<String>,
    /// The latest failed changes, newest first.
    pub recent_failed_changes: Vec<FailedChange>,
    /// Service health over the `red` window, if `red` has the series.
    pub health: Option<Health>,
}

/// Service health of one series.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// The `red` window.
    pub window: String,
    /// Requests in it.
    pub requests: u64,
    /// Errors in it.
    pub errors: u64,
    /// Errors / requests.
    pub error_ratio: Option<f64>,
    /// Latency p95, seconds.
    pub p95_seconds: Option<f64>,
}

/// The alert rules with their current state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AlertsSection {
    /// Each rule, with how many series it fires or is pending for.
    pub rules: Vec<RuleState>,
    /// Every alert pending or firing.
    pub active: Vec<ActiveAlert>,
}

/// A rule and its state.
#[derive(Debug, Clone, Serialize)]
pub struct RuleState {
    /// The rule.
    #[serde(flatten)]
    pub rule: RuleInfo,
    /// Series it fires for.
    pub firing: usize,
    /// Series it is pending for.
    pub pending: usize,
}

/// The event counts the figures rest on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventCounts {
    /// Delivery events applied.
    pub applied: u64,
    /// Dropped as duplicates.
    pub duplicates: u64,
    /// Of types that feed no DORA figure.
    pub ignored: u64,
    /// Older than the retention.
    pub expired: u64,
}

/// RFC 3339 (seconds) of ns since the epoch.
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Builds the report.
pub fn build(inputs: &ReportInputs, now: i64) -> Report {
    let dora = inputs.dora.as_ref();
    // The summary window: the longest configured one.
    let summary_at = dora.and_then(|d| {
        d.production
            .iter()
            .enumerate()
            .max_by_key(|(_, w)| window_length(&w.window))
            .map(|(i, _)| i)
    });
    let strip = |w: &WindowFigures| WindowFigures {
        previous: None,
        ..w.clone()
    };
    let pooled = dora.zip(summary_at).and_then(|(d, i)| d.production.get(i));
    let trends = pooled.map(advice::trends).unwrap_or_default();
    let advice = match (dora, pooled) {
        (Some(d), Some(p)) => advice::advise(p, &p.window, &d.cutoffs, d.target_level),
        _ => Vec::new(),
    };
    let production = pooled.map(strip);
    let mut summary = Vec::new();
    let mut below_high = Vec::new();
    if let (Some(dora), Some(i)) = (dora, summary_at) {
        for s in dora.series.iter().filter(|s| s.production) {
            let Some(figures) = s.windows.get(i) else {
                continue;
            };
            let drags = drags(figures, &dora.cutoffs);
            if !drags.is_empty() {
                below_high.push(BelowHigh {
                    service: s.service.clone(),
                    environment: s.environment.clone(),
                    drags,
                });
            }
            summary.push(SummaryRow {
                service: s.service.clone(),
                environment: s.environment.clone(),
                figures: strip(figures),
            });
        }
    }
    let teams = match (dora, summary_at) {
        (Some(d), Some(i)) => d
            .teams
            .iter()
            .filter_map(|t| {
                Some(TeamRow {
                    team: t.team.clone()?,
                    environment: t.environment.clone(),
                    services: t.services.clone(),
                    figures: strip(t.windows.get(i)?),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let services = dora
        .map(|d| {
            d.series
                .iter()
                .map(|s| ServiceSection {
                    service: s.service.clone(),
                    environment: s.environment.clone(),
                    production: s.production,
                    windows: s.windows.clone(),
                    open_incidents: s.open_incidents,
                    oldest_open_incident: s.oldest_open_incident.map(rfc3339),
                    recent_failed_changes: s.recent_failed_changes.clone(),
                    health: inputs.red.as_ref().and_then(|red| {
                        red.series
                            .iter()
                            .find(|h| h.service == s.service && h.environment == s.environment)
                            .map(|h| Health {
                                window: red.window.clone(),
                                requests: h.stats.requests,
                                errors: h.stats.errors,
                                error_ratio: h.stats.error_ratio(),
                                p95_seconds: h.stats.quantiles_us.map(|q| q[1] as f64 / 1e6),
                            })
                    }),
                })
                .collect()
        })
        .unwrap_or_default();
    let rules = inputs
        .rules
        .iter()
        .map(|rule| {
            let of = |state: State| {
                inputs
                    .active
                    .iter()
                    .filter(|a| a.alertname == rule.alertname && a.state == state)
                    .count()
            };
            RuleState {
                rule: rule.clone(),
                firing: of(State::Firing),
                pending: of(State::Pending),
            }
        })
        .collect();
    Report {
        generated_at: rfc3339(now),
        at: now,
        summary_window: production.as_ref().map(|p| p.window.clone()),
        cutoffs: dora.map(|d| d.cutoffs),
        production,
        summary,
        advice,
        trends,
        teams,
        below_high,
        services,
        alerts: AlertsSection {
            rules,
            active: inputs.active.clone(),
        },
        events: dora
            .map(|d| EventCounts {
                applied: d.events_applied,
                duplicates: d.duplicates,
                ignored: d.ignored,
                expired: d.expired,
            })
            .unwrap_or_default(),
    }
}

/// The metrics of `figures` below `high`, with what `high` needs.
fn drags(figures: &WindowFigures, cutoffs: &Cutoffs) -> Vec<Drag> {
    let below = |level: Option<Level>| matches!(level, Some(Level::Medium | Level::Low));
    let l = &figures.levels;
    let mut out = Vec::new();
    if below(l.deployment_frequency) {
        out.push(Drag {
            metric: "deployment_frequency",
            value: figures.deployment_frequency_per_day,
            level: l.deployment_frequency.unwrap_or(Level::Low),
            high_needs: cutoffs.deployment_frequency[1],
        });
    }
    if let (true, Some(value)) = (below(l.lead_time), figures.lead_time.p50) {
        out.push(Drag {
            metric: "lead_time",
            value,
            level: l.lead_time.unwrap_or(Level::Low),
            high_needs: cutoffs.lead_time[1],
        });
    }
    if let (true, Some(value)) = (below(l.change_failure_rate), figures.change_failure_ratio) {
        out.push(Drag {
            metric: "change_failure_rate",
            value,
            level: l.change_failure_rate.unwrap_or(Level::Low),
            high_needs: cutoffs.change_failure_rate[1],
        });
    }
    if let (true, Some(value)) = (below(l.time_to_restore), figures.time_to_restore.p50) {
        out.push(Drag {
            metric: "time_to_restore",
            value,
            level: l.time_to_restore.unwrap_or(Level::Low),
            high_needs: cutoffs.time_to_restore[1],
        });
    }
    out
}

/// A window's length in seconds, from its label (`7d`), for ordering.
fn window_length(label: &str) -> u64 {
    label
        .parse::<crate::settings::ConfigDuration>()
        .map(|d| d.get().as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
