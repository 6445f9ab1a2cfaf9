//! `processors.dora`: the `dora` processor's configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::processors::red::default_max_series;
use crate::settings::ConfigDuration;

/// `processors.dora`: the four DORA metrics per (service, environment) and window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoraConfig {
    /// Windows the metrics are computed over. Default `[7d, 30d]`.
    #[serde(default = "default_dora_windows")]
    pub windows: Vec<ConfigDuration>,
    /// Environments that are production: the report's headline. Default `[production, prod]`.
    #[serde(default = "default_production_environments")]
    pub production_environments: Vec<String>,
    /// How long after a deployment an incident still makes it a failed change. Default `24h`.
    #[serde(default = "default_failure_window")]
    pub failure_window: ConfigDuration,
    /// The level the report's advice aims at: `elite`, `high` (default) or
    /// `medium`; keys below it get a finding and the practices for them.
    #[serde(default = "default_target_level")]
    pub target_level: crate::processors::dora::levels::Level,
    /// Service → team: each team's figures pool its services' events (and
    /// the organisation's pool every service's). Default: no teams.
    #[serde(default)]
    pub teams: BTreeMap<String, String>,
    /// Whether the next deployment of a series after one of its incidents
    /// opened, while it is still open, is rework (the fix). Default `true`.
    #[serde(default = "default_true")]
    pub rework_after_incident: bool,
    /// The DORA benchmark profile the levels follow: `2023` (default),
    /// `2024`, `2021` or `2019`; `levels: <preset>` says the same.
    #[serde(default)]
    pub profile: crate::processors::dora::levels::ProfileName,
    /// A preset (`levels: 2024`), or cut-offs that replace the preset's,
    /// metric by metric (`levels: { preset: 2024, lead_time: [...] }`).
    #[serde(default)]
    pub levels: crate::processors::dora::levels::CutoffOverrides,
    /// Pipelines whose failed runs (`pipelinerun.finished`, outcome `failure`)
    /// are failed deployments, with the service and environment they deploy.
    #[serde(default)]
    pub deploy_pipelines: Vec<DeployPipeline>,
    /// Incidents derived from the `red` error ratio.
    #[serde(default)]
    pub derived_incidents: DerivedIncidentsConfig,
    /// The regression check: each production deployment judged by the
    /// service's `red` figures after it against before it. Off unless given.
    #[serde(default)]
    pub regression: Option<crate::processors::dora::regression::RegressionConfig>,
    /// How long delivery history is kept; at least the longest window plus
    /// `failure_window`. Lead times longer than this are not measured. Default `90d`.
    #[serde(default = "default_retention")]
    pub retention: ConfigDuration,
    /// Most (service, environment) series with deployments; events that would
    /// start another are refused and counted. Default 10 000.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Reports of one deployment by several tools (same service,
    /// environment and commit, different sources) this close to the first
    /// are one deployment, its sources listed. `0s` counts every report.
    /// Default `15m`.
    #[serde(default = "default_deduplicate_within")]
    pub deduplicate_within: ConfigDuration,
    /// Per source (`pagerduty`, `alertmanager`, `cdevents`, ...), which of
    /// its incidents count for the change failure rate, time to restore
    /// and the open-incident figures and alerts. A source not listed: all.
    #[serde(default)]
    pub incident_filters: BTreeMap<String, IncidentFilter>,
    /// The IANA time zone (e.g. `Europe/Berlin`) whose calendar days the
    /// per-day trend and the deployment-frequency answer count. Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
}

/// Which incidents of one source count: all of the given conditions hold
/// (each list: the incident's value is one of them, compared without
/// regard to case; an incident without the field does not match).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentFilter {
    /// Whether the source's incidents count at all. Default `true`.
    #[serde(default = "default_true")]
    pub counted: bool,
    /// Severities that count, e.g. `[critical, page]` (Alertmanager's `severity` label).
    #[serde(default)]
    pub severity: Vec<String>,
    /// Urgencies that count, e.g. `[high]` (PagerDuty's).
    #[serde(default)]
    pub urgency: Vec<String>,
    /// Priorities that count, e.g. `[P1, P2]` (PagerDuty's).
    #[serde(default)]
    pub priority: Vec<String>,
    /// Label → the values that count, e.g. `{ team: [payments] }`.
    #[serde(default)]
    pub labels: BTreeMap<String, Vec<String>>,
}

impl IncidentFilter {
    /// Whether an incident with these details counts.
    pub fn admits(&self, details: &crate::model::delivery::IncidentDetails) -> bool {
        let one_of = |wanted: &[String], value: Option<&str>| {
            wanted.is_empty()
                || value.is_some_and(|v| wanted.iter().any(|w| w.eq_ignore_ascii_case(v)))
        };
        self.counted
            && one_of(&self.severity, details.severity.as_deref())
            && one_of(&self.urgency, details.urgency.as_deref())
            && one_of(&self.priority, details.priority.as_deref())
            && self.labels.iter().all(|(name, wanted)| {
                let value = details
                    .labels
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str());
                one_of(wanted, value) && (!wanted.is_empty() || value.is_some())
            })
    }
}

fn default_deduplicate_within() -> ConfigDuration {
    ConfigDuration::from_secs(15 * 60)
}

fn default_retention() -> ConfigDuration {
    ConfigDuration::from_secs(90 * 86_400)
}

/// `processors.dora.derived_incidents`: an incident opens for a service when
/// its error ratio (over the `red` window) exceeds the threshold, and resolves
/// once the ratio has stayed at or below it for `resolve_after`; the incident
/// counts as resolved from the moment the ratio went back below.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedIncidentsConfig {
    /// Whether to derive incidents (needs the `red` processor). Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Error ratio above which an incident opens. Default 0.01 (1%).
    #[serde(default = "default_error_ratio_threshold")]
    pub error_ratio_threshold: f64,
    /// Fewest requests in the window for the ratio to count. Default 100.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// How long the ratio must stay below before the incident resolves. Default `5m`.
    #[serde(default = "default_resolve_after")]
    pub resolve_after: ConfigDuration,
    /// How often the error ratios are checked. Default `5s`.
    #[serde(default = "default_evaluation_interval")]
    pub evaluation_interval: ConfigDuration,
}

const fn default_true() -> bool {
    true
}
const fn default_error_ratio_threshold() -> f64 {
    0.01
}
const fn default_min_requests() -> u64 {
    100
}
fn default_resolve_after() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_evaluation_interval() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

impl Default for DerivedIncidentsConfig {
    fn default() -> Self {
        DerivedIncidentsConfig {
            enabled: true,
            error_ratio_threshold: default_error_ratio_threshold(),
            min_requests: default_min_requests(),
            resolve_after: default_resolve_after(),
            evaluation_interval: default_evaluation_interval(),
        }
    }
}

/// A deploy pipeline: `pipelinerun.finished` failures of `pipeline` are failed
/// deployments of `service` in `environment` (unless the event's `customData`
/// names them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployPipeline {
    /// `content.pipelineName` of the run.
    pub pipeline: String,
    /// The service it deploys.
    pub service: String,
    /// The environment it deploys to.
    pub environment: String,
}

fn default_dora_windows() -> Vec<ConfigDuration> {
    vec![
        ConfigDuration::from_secs(7 * 86_400),
        ConfigDuration::from_secs(30 * 86_400),
    ]
}

fn default_production_environments() -> Vec<String> {
    vec!["production".to_string(), "prod".to_string()]
}

fn default_target_level() -> crate::processors::dora::levels::Level {
    crate::processors::dora::levels::Level::High
}

fn default_failure_window() -> ConfigDuration {
    ConfigDuration::from_secs(86_400)
}

impl Default for DoraConfig {
    fn default() -> Self {
        DoraConfig {
            windows: default_dora_windows(),
            production_environments: default_production_environments(),
            failure_window: default_failure_window(),
            rework_after_incident: true,
            target_level: default_target_level(),
            teams: BTreeMap::new(),
            profile: Default::default(),
            levels: Default::default(),
            deploy_pipelines: Vec::new(),
            derived_incidents: DerivedIncidentsConfig::default(),
            regression: None,
            retention: default_retention(),
            max_series: default_max_series(),
            deduplicate_within: default_deduplicate_within(),
            incident_filters: BTreeMap::new(),
            timezone: None,
        }
    }
}

impl DoraConfig {
    /// Collects what is wrong, each under `path`.
    pub(crate) fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if self.windows.is_empty() {
            errors.push(format!("{path}.windows: at least one window is needed"));
        }
        for (i, window) in self.windows.iter().enumerate() {
            if window.get().as_secs() < 3_600 {
                errors.push(format!(
                    "{path}.windows[{i}]: DORA windows are at least 1h, got {window}"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for window in &self.windows {
            if !seen.insert(window.get()) {
                errors.push(format!("{path}.windows: `{window}` is listed twice"));
            }
        }
        if self.max_series == 0 {
            errors.push(format!("{path}.max_series: must be at least 1"));
        }
        if self.failure_window.get().is_zero() {
            errors.push(format!("{path}.failure_window: must be longer than 0"));
        }
        self.levels.validate(&format!("{path}.levels"), errors);
        if let Some(preset) = self.levels.preset
            && self.profile != crate::processors::dora::levels::ProfileName::default()
            && preset != self.profile
        {
            errors.push(format!(
                "{path}.levels: preset `{}` and {path}.profile `{}` disagree: give one",
                preset.as_str(),
                self.profile.as_str()
            ));
        }
        let longest = self
            .windows
            .iter()
            .map(|w| w.get())
            .max()
            .unwrap_or_default();
        if self.retention.get() < longest + self.failure_window.get() {
            errors.push(format!(
                "{path}.retention: must be at least the longest window plus failure_window ({}), got {}",
                ConfigDuration::from_secs((longest + self.failure_window.get()).as_secs()),
                self.retention
            ));
        }
        for source in self.incident_filters.keys() {
            if crate::model::delivery::Source::parse(source).is_none() {
                let known: Vec<&str> = crate::model::delivery::Source::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect();
                errors.push(format!(
                    "{path}.incident_filters.{source}: not a source (one of {})",
                    known.join(", ")
                ));
            }
        }
        if let Some(zone) = &self.timezone
            && let Err(e) = crate::processors::dora::calendar::Calendar::named(zone)
        {
            errors.push(format!("{path}.timezone: {e}"));
        }
        let derived = &self.derived_incidents;
        if !(0.0..1.0).contains(&derived.error_ratio_threshold) {
            errors.push(format!(
                "{path}.derived_incidents.error_ratio_threshold: must be in 0..1, got {}",
                derived.error_ratio_threshold
            ));
        }
        if derived.evaluation_interval.get().is_zero() {
            errors.push(format!(
                "{path}.derived_incidents.evaluation_interval: must be longer than 0"
            ));
        }
    }
}
