//! Processor `alerts`: the alert rules of a DORA assessment, evaluated on
//! the current state at a fixed interval.
//!
//! Each rule is checked per (service, environment) against facts the other
//! processors hold now: the `red` window (error ratio, p95 latency) and the
//! `dora` history (open incidents, the latest deployment). Because only the
//! present is looked at, what is already over never pages: a backfilled month
//! of resolved incidents and old failed deployments triggers nothing.
//!
//! An alert goes pending → firing → resolved. A rule with `for: 0` fires at
//! once; with a `for` it is pending until the condition has held that long,
//! and a pending alert whose condition clears is dropped without a
//! transition. Each transition is produced once, keyed by (alertname,
//! service, environment).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::delivery::Nanos;
use crate::model::{Resource as UtilizationResource, Utilization};
use crate::settings::ConfigDuration;

/// How bad an alert is (PagerDuty's severities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Wake someone up.
    Critical,
    /// Act today.
    Error,
    /// Look soon.
    Warning,
    /// For the record.
    Info,
}

impl Severity {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// A rule's threshold: a number, or a duration for rules about time.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    /// A ratio, or seconds.
    Number(f64),
    /// A duration such as `1h`.
    Duration(ConfigDuration),
}

impl Threshold {
    fn value(&self) -> f64 {
        match self {
            Threshold::Number(n) => *n,
            Threshold::Duration(d) => d.get().as_secs_f64(),
        }
    }
}

/// `processors.alerts.rules.<alertname>`: what to change of a default rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleOverride {
    /// The threshold: a ratio (HighErrorRate), seconds (HighLatencyP95), a
    /// duration (SlowRecovery).
    pub threshold: Option<Threshold>,
    /// DeploymentFailed: how far back a failed deployment counts (24h);
    /// HighCpuUsage, HighMemoryUsage: the span readings are averaged over
    /// (1m). HighErrorRate and HighLatencyP95 read the `red` window.
    pub window: Option<ConfigDuration>,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for")]
    pub for_: Option<ConfigDuration>,
    /// The severity.
    pub severity: Option<Severity>,
    /// Fewest requests in the window for a rate rule to count.
    pub min_requests: Option<u64>,
    /// Whether the rule runs.
    pub enabled: Option<bool>,
}

/// `processors.alerts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How often rules are evaluated. Default `5s`.
    #[serde(default = "default_interval")]
    pub interval: ConfigDuration,
    /// Changes to the default rules, by alertname.
    #[serde(default)]
    pub rules: BTreeMap<String, RuleOverride>,
}

fn default_interval() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            interval: default_interval(),
            rules: BTreeMap::new(),
        }
    }
}

/// What a rule checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    ErrorRate,
    LatencyP95,
    SlowRecovery,
    DeploymentFailed,
    Utilization(UtilizationResource),
    /// The worst dependency's error ratio (the `dependencies` window).
    DependencyErrorRate,
    /// The slowest dependency's p95.
    DependencyLatencyP95,
    /// The least-hit cache's hit ratio, below the threshold.
    CacheHitRate,
    /// The longest queue's last reported length.
    QueueBacklog,
}

const DAY: Nanos = 86_400_000_000_000;
const MINUTE: Nanos = 60_000_000_000;

/// A rule's defaults.
struct RuleDefaults {
    name: &'static str,
    check: Check,
    threshold: f64,
    hold: Nanos,
    severity: Severity,
    min_requests: u64,
    window: Nanos,
    /// Runs unless configured off; the dependency rules are off unless
    /// configured on.
    enabled: bool,
}

/// The rules of SPEC §3.3, with their defaults, then the rules on the
/// `dependencies` processor's figures (off by default).
const DEFAULT_RULES: [RuleDefaults; 10] = [
    RuleDefaults {
        name: "HighErrorRate",
        check: Check::ErrorRate,
        threshold: 0.01,
        hold: 0,
        severity: Severity::Critical,
        min_requests: 100,
        window: 0,
        enabled: true,
    },
    RuleDefaults {
        name: "HighLatencyP95",
        check: Check::LatencyP95,
        threshold: 0.5,
        hold: 0,
        severity: Severity::Warning,
        min_requests: 1,
        window: 0,
        enabled: true,
    },
    RuleDefaults {
        name: "HighCpuUsage",
        check: Check::Utilization(UtilizationResource::Cpu),
        threshold: 0.8,
        hold: 5 * MINUTE,
        severity: Severity::Warning,
        min_requests: 0,
        window: MINUTE,
        enabled: true,
    },
    RuleDefaults {
        name: "HighMemoryUsage",
        check: Check::Utilization(UtilizationResource::Memory),
        threshold: 0.85,
        hold: 5 * MINUTE,
        severity: Severity::Warning,
        min_requests: 0,
        window: MINUTE,
        enabled: true,
    },
    RuleDefaults {
        name: "SlowRecovery",
        check: Check::SlowRecovery,
        threshold: 3_600.0,
        hold: 0,
        severity: Severity::Critical,
        min_requests: 0,
        window: 0,
        enabled: true,
    },
    RuleDefaults {
        name: "DeploymentFailed",
        check: Check::DeploymentFailed,
        threshold: 0.0,
        hold: 0,
        severity: Severity::Critical,
        min_requests: 0,
        window: DAY,
        enabled: true,
    },
    RuleDefaults {
        name: "DependencyErrorRate",
        check: Check::DependencyErrorRate,
        threshold: 0.05,
        hold: 0,
        severity: Severity::Warning,
        min_requests: 20,
        window: 0,
        enabled: false,
    },
    RuleDefaults {
        name: "DependencyLatencyP95",
        check: Check::DependencyLatencyP95,
        threshold: 0.5,
        hold: 0,
        severity: Severity::Warning,
        min_requests: 20,
        window: 0,
        enabled: false,
    },
    RuleDefaults {
        name: "LowCacheHitRate",
        check: Check::CacheHitRate,
        threshold: 0.8,
        hold: 5 * MINUTE,
        severity: Severity::Warning,
        min_requests: 100,
        window: 0,
        enabled: false,
    },
    RuleDefaults {
        name: "QueueBacklog",
        check: Check::QueueBacklog,
        threshold: 1_000.0,
        hold: 5 * MINUTE,
        severity: Severity::Warning,
        min_requests: 0,
        window: 0,
        enabled: false,
    },
];

/// Most utilization readings kept per instance and resource.
const MAX_READINGS: usize = 4_096;

/// One rule, as configured.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The `alertname`.
    pub name: &'static str,
    check: Check,
    /// The threshold (ratio or seconds).
    pub threshold: f64,
    lookback: Nanos,
    hold: Nanos,
    /// The severity.
    pub severity: Severity,
    min_requests: u64,
    /// The window the rule looks over, as written (`5m`), if it has one.
    pub window: Option<String>,
}

impl AlertsConfig {
    /// Checks rule names and values; every problem with its path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if self.interval.get().is_zero() {
            errors.push(format!("{path}.interval: must be longer than 0"));
        }
        for (name, rule) in &self.rules {
            if !DEFAULT_RULES.iter().any(|r| r.name == name) {
                errors.push(format!(
                    "{path}.rules.{name}: unknown rule, expected one of {}",
                    DEFAULT_RULES.map(|r| r.name).join(", ")
                ));
            }
            if let Some(t) = &rule.threshold
                && !(t.value().is_finite() && t.value() >= 0.0)
            {
                errors.push(format!("{path}.rules.{name}.threshold: must be >= 0"));
            }
        }
    }

    /// The rules to evaluate: the defaults with the overrides applied.
    pub fn rules(&self) -> Vec<Rule> {
        DEFAULT_RULES
            .iter()
            .filter_map(|d| {
                let o = self.rules.get(d.name).cloned().unwrap_or_default();
                if !o.enabled.unwrap_or(d.enabled) {
                    return None;
                }
                Some(Rule {
                    name: d.name,
                    check: d.check,
                    threshold: o.threshold.map_or(d.threshold, |t| t.value()),
                    lookback: o
                        .window
                        .as_ref()
                        .map_or(d.window, |w| w.get().as_nanos() as Nanos),
                    hold: o.for_.map_or(d.hold, |f| f.get().as_nanos() as Nanos),
                    severity: o.severity.unwrap_or(d.severity),
                    min_requests: o.min_requests.unwrap_or(d.min_requests),
                    window: match (&o.window, d.window) {
                        (Some(w), _) => Some(w.as_str().to_string()),
                        (None, 0) => None,
                        (None, ns) => Some(
                            ConfigDuration::from_secs((ns / 1_000_000_000) as u64)
                                .as_str()
                                .to_string(),
                        ),
                    },
                })
            })
            .collect()
    }
}

/// What the rules look at for one (service, environment), now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Requests in the `red` window.
    pub requests: u64,
    /// Errors in the `red` window.
    pub errors: u64,
    /// p95 latency over the `red` window, seconds.
    pub p95_seconds: Option<f64>,
    /// When the oldest incident still open opened.
    pub oldest_open_incident: Option<Nanos>,
    /// The latest deployment: when, and whether it failed.
    pub latest_deployment: Option<(Nanos, bool)>,
    /// The service's dependencies over the `dependencies` window.
    pub dependencies: Vec<DependencyFact>,
    /// The service's caches over the window.
    pub caches: Vec<CacheFact>,
    /// The queues the service reports, their last length.
    pub queues: Vec<(String, f64)>,
}

/// One dependency of a service, as the dependency rules look at it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DependencyFact {
    /// How the summary names it, e.g. `postgresql shop SELECT orders`.
    pub name: String,
    /// Calls in the window.
    pub calls: u64,
    /// Errors in the window.
    pub errors: u64,
    /// p95 latency over the window, seconds.
    pub p95_seconds: Option<f64>,
}

/// One cache of a service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheFact {
    /// The cache.
    pub name: String,
    /// Lookups in the window.
    pub lookups: u64,
    /// Hits / lookups over the window.
    pub hit_ratio: Option<f64>,
}

/// Where an alert goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The condition holds, not yet for long enough.
    Pending,
    /// The alert is active.
    Firing,
    /// The condition cleared.
    Resolved,
}

/// (alertname, service, environment).
pub type AlertKey = (&'static str, String, String);

/// An alert changing state, for every alert exporter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// The rule.
    pub alertname: &'static str,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The new state.
    pub state: State,
    /// When, ns since the epoch.
    pub at: Nanos,
    /// The observed value (ratio or seconds) at that moment.
    pub value: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// The rule's severity.
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
    /// The window the rule looked over (`5m`), if it has one.
    pub window: Option<String>,
}

/// An alert that is pending or firing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveAlert {
    /// The rule.
    pub alertname: &'static str,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// Pending or firing.
    pub state: State,
    /// Since when, ns since the epoch.
    pub since: Nanos,
    /// The latest observed value.
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
    /// The severity.
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
}

/// A rule as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleInfo {
    /// The `alertname`.
    pub alertname: &'static str,
    /// The threshold, in `unit`.
    pub threshold: f64,
    /// `ratio`, `seconds` or `failed deployments`.
    pub unit: &'static str,
    /// The window the rule looks over, if it has one.
    pub window: Option<String>,
    /// How long the condition must hold before firing, seconds.
    pub for_seconds: f64,
    /// The severity.
    pub severity: Severity,
}

/// The `alerts` processor's state: the active alerts.
pub struct AlertsProcessor {
    rules: Vec<Rule>,
    active: BTreeMap<AlertKey, ActiveAlert>,
    /// Recent utilization readings per instance.
    readings: BTreeMap<InstanceKey, VecDeque<(Nanos, f64)>>,
    default_environment: String,
}

/// (service, environment, instance, resource) of a utilization reading.
type InstanceKey = (String, String, String, UtilizationResource);

impl AlertsProcessor {
    /// A processor with the configured rules.
    pub fn new(config: &AlertsConfig) -> Self {
        AlertsProcessor {
            rules: config.rules(),
            active: BTreeMap::new(),
            readings: BTreeMap::new(),
            default_environment: "unknown".to_string(),
        }
    }

    /// Whether a rule on the `dependencies` processor's figures is on: only
    /// then are they gathered for [`Self::evaluate`].
    pub fn reads_dependencies(&self) -> bool {
        self.rules.iter().any(|r| {
            matches!(
                r.check,
                Check::DependencyErrorRate
                    | Check::DependencyLatencyP95
                    | Check::CacheHitRate
                    | Check::QueueBacklog
            )
        })
    }

    /// The `dependencies` window (e.g. `5m`), which the dependency and
    /// cache rules look over.
    pub fn with_dependencies_window(mut self, window: &str) -> Self {
        for rule in &mut self.rules {
            if matches!(
                rule.check,
                Check::DependencyErrorRate | Check::DependencyLatencyP95 | Check::CacheHitRate
            ) {
                rule.window = Some(window.to_string());
            }
        }
        self
    }

    /// The `red` window (e.g. `5m`), which the error-rate and latency rules
    /// look over.
    pub fn with_red_window(mut self, window: &str) -> Self {
        for rule in &mut self.rules {
            if matches!(rule.check, Check::ErrorRate | Check::LatencyP95) {
                rule.window = Some(window.to_string());
            }
        }
        self
    }

    /// Resources without an environment get `environment`.
    pub fn with_default_environment(mut self, environment: &str) -> Self {
        self.default_environment = environment.to_string();
        self
    }

    /// Keeps utilization readings received at `now`, and forgets readings
    /// older than the longest utilization window.
    pub fn observe_utilization(&mut self, readings: &[Utilization], now: Nanos) {
        for reading in readings {
            let service = String::from_utf8_lossy(&reading.identity.service).into_owned();
            let environment = if reading.identity.environment.is_empty() {
                self.default_environment.clone()
            } else {
                String::from_utf8_lossy(&reading.identity.environment).into_owned()
            };
            let key = (
                service,
                environment,
                reading.instance.clone(),
                reading.resource,
            );
            let series = self.readings.entry(key).or_default();
            if series.len() == MAX_READINGS {
                series.pop_front();
            }
            series.push_back((now, reading.value));
        }
        let keep = self
            .rules
            .iter()
            .filter(|r| matches!(r.check, Check::Utilization(_)))
            .map(|r| r.lookback)
            .max()
            .unwrap_or(0);
        self.readings.retain(|_, series| {
            while series.front().is_some_and(|(t, _)| now - t >= keep) {
                series.pop_front();
            }
            !series.is_empty()
        });
    }

    /// Per series, the highest of its instances' average readings of
    /// `resource` over `(now - window, now]`.
    fn utilization(
        &self,
        resource: UtilizationResource,
        window: Nanos,
        now: Nanos,
    ) -> BTreeMap<(String, String), f64> {
        let mut out: BTreeMap<(String, String), f64> = BTreeMap::new();
        for ((service, environment, _, r), series) in &self.readings {
            if *r != resource {
                continue;
            }
            let recent: Vec<f64> = series
                .iter()
                .filter(|(t, _)| now - t < window)
                .map(|&(_, v)| v)
                .collect();
            if recent.is_empty() {
                continue;
            }
            let average = recent.iter().sum::<f64>() / recent.len() as f64;
            let slot = out
                .entry((service.clone(), environment.clone()))
                .or_insert(average);
            *slot = slot.max(average);
        }
        out
    }

    /// The state to checkpoint: the alerts pending or firing and the
    /// utilization readings their rules look back over.
    pub fn to_state(&self) -> crate::proto::AlertsState {
        use crate::proto;
        proto::AlertsState {
            active: self
                .active
                .values()
                .map(|a| proto::AlertRecord {
                    alertname: a.alertname.to_string(),
                    service: a.service.clone(),
                    environment: a.environment.clone(),
                    state: match a.state {
                        State::Pending => proto::AlertStage::Pending,
                        State::Firing | State::Resolved => proto::AlertStage::Firing,
                    } as i32,
                    since_ns: a.since,
                    value: a.value,
                })
                .collect(),
            readings: self
                .readings
                .iter()
                .map(|((service, environment, instance, resource), series)| {
                    proto::UtilizationRecord {
                        service: service.clone(),
                        environment: environment.clone(),
                        instance: instance.clone(),
                        resource: match resource {
                            UtilizationResource::Cpu => proto::Resource::Cpu,
                            UtilizationResource::Memory => proto::Resource::Memory,
                        } as i32,
                        times_ns: series.iter().map(|r| r.0).collect(),
                        values: series.iter().map(|r| r.1).collect(),
                    }
                })
                .collect(),
        }
    }

    /// A transition of the rule named `alertname`, as it would have been
    /// made (threshold, severity, summary and window from the rule in
    /// force); `None` if no such rule is configured.
    pub fn transition(
        &self,
        alertname: &str,
        service: &str,
        environment: &str,
        state: State,
        at: Nanos,
        value: f64,
    ) -> Option<Transition> {
        let rule = self.rules.iter().find(|r| r.name == alertname)?;
        Some(Transition {
            alertname: rule.name,
            service: service.to_string(),
            environment: environment.to_string(),
            state,
            at,
            value,
            threshold: rule.threshold,
            severity: rule.severity,
            summary: summary(rule, service, environment, value, None),
            window: rule.window.clone(),
        })
    }

    /// Restores checkpointed alerts and readings. Alerts of rules no longer
    /// configured are dropped (and returned by name); thresholds, severities
    /// and summaries come from the rules in force. On error nothing changed.
    pub fn restore(&mut self, state: &crate::proto::AlertsState) -> Result<Vec<String>, String> {
        use crate::proto;
        let mut active = BTreeMap::new();
        let mut dropped = Vec::new();
        for a in &state.active {
            let Some(rule) = self.rules.iter().find(|r| r.name == a.alertname) else {
                dropped.push(a.alertname.clone());
                continue;
            };
            let state = match proto::AlertStage::try_from(a.state) {
                Ok(proto::AlertStage::Pending) => State::Pending,
                Ok(proto::AlertStage::Firing) => State::Firing,
                _ => return Err(format!("alert {}: unknown state {}", a.alertname, a.state)),
            };
            active.insert(
                (rule.name, a.service.clone(), a.environment.clone()),
                ActiveAlert {
                    alertname: rule.name,
                    service: a.service.clone(),
                    environment: a.environment.clone(),
                    state,
                    since: a.since_ns,
                    value: a.value,
                    threshold: rule.threshold,
                    severity: rule.severity,
                    summary: summary(rule, &a.service, &a.environment, a.value, None),
                },
            );
        }
        let mut readings = BTreeMap::new();
        for r in &state.readings {
            let resource = match proto::Resource::try_from(r.resource) {
                Ok(proto::Resource::Cpu) => UtilizationResource::Cpu,
                Ok(proto::Resource::Memory) => UtilizationResource::Memory,
                _ => return Err(format!("utilization of {}: unknown resource", r.service)),
            };
            if r.times_ns.len() != r.values.len() || r.times_ns.len() > MAX_READINGS {
                return Err(format!("utilization of {}: malformed readings", r.service));
            }
            readings.insert(
                (
                    r.service.clone(),
                    r.environment.clone(),
                    r.instance.clone(),
                    resource,
                ),
                r.times_ns
                    .iter()
                    .copied()
                    .zip(r.values.iter().copied())
                    .collect(),
            );
        }
        self.active = active;
        self.readings = readings;
        Ok(dropped)
    }

    /// The alerts pending or firing now.
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.active.values().cloned().collect()
    }

    /// The rules in force, with their thresholds, for the report.
    pub fn rule_table(&self) -> Vec<RuleInfo> {
        self.rules
            .iter()
            .map(|r| RuleInfo {
                alertname: r.name,
                threshold: r.threshold,
                unit: match r.check {
                    Check::ErrorRate
                    | Check::Utilization(_)
                    | Check::DependencyErrorRate
                    | Check::CacheHitRate => "ratio",
                    Check::LatencyP95 | Check::SlowRecovery | Check::DependencyLatencyP95 => {
                        "seconds"
                    }
                    Check::QueueBacklog => "messages",
                    Check::DeploymentFailed => "failed deployments",
                },
                window: r.window.clone(),
                for_seconds: r.hold as f64 / 1e9,
                severity: r.severity,
            })
            .collect()
    }

    /// Evaluates every rule on `facts` at `now`; returns the transitions.
    /// Series absent from `facts` have nothing that holds: their alerts resolve.
    pub fn evaluate(
        &mut self,
        facts: &BTreeMap<(String, String), Facts>,
        now: Nanos,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for rule in &self.rules {
            let observed: BTreeMap<(String, String), Observed> = match rule.check {
                Check::Utilization(resource) => self
                    .utilization(resource, rule.lookback, now)
                    .into_iter()
                    .map(|(series, value)| (series, (value > rule.threshold, value, None)))
                    .collect(),
                _ => facts
                    .iter()
                    .map(|(series, f)| (series.clone(), observe(rule, f, now)))
                    .collect(),
            };
            for ((service, environment), holds) in &observed {
                let key = (rule.name, service.clone(), environment.clone());
                step(
                    &mut self.active,
                    &mut transitions,
                    rule,
                    key,
                    holds.clone(),
                    now,
                );
            }
            // Alerts of series that disappeared from the facts resolve too.
            let gone: Vec<AlertKey> = self
                .active
                .keys()
                .filter(|(name, s, e)| {
                    *name == rule.name && !observed.contains_key(&(s.clone(), e.clone()))
                })
                .cloned()
                .collect();
            for key in gone {
                step(
                    &mut self.active,
                    &mut transitions,
                    rule,
                    key,
                    (false, 0.0, None),
                    now,
                );
            }
        }
        transitions
    }
}

/// Whether the rule's condition holds, the value it looked at, and what
/// it is about when a service has several (a dependency, a cache, a queue).
fn observe(rule: &Rule, f: &Facts, now: Nanos) -> Observed {
    let worst = |values: Vec<(f64, &str)>, holds: &dyn Fn(f64) -> bool, low: bool| {
        let pick = values.into_iter().reduce(|a, b| {
            if (low && b.0 < a.0) || (!low && b.0 > a.0) {
                b
            } else {
                a
            }
        });
        match pick {
            Some((value, name)) => (holds(value), value, Some(name.to_string())),
            None => (false, 0.0, None),
        }
    };
    let min = rule.min_requests;
    let (holds, value) = match rule.check {
        Check::DependencyErrorRate => {
            return worst(
                f.dependencies
                    .iter()
                    .filter(|d| d.calls >= min.max(1))
                    .map(|d| (d.errors as f64 / d.calls as f64, d.name.as_str()))
                    .collect(),
                &|v| v > rule.threshold,
                false,
            );
        }
        Check::DependencyLatencyP95 => {
            return worst(
                f.dependencies
                    .iter()
                    .filter(|d| d.calls >= min)
                    .filter_map(|d| Some((d.p95_seconds?, d.name.as_str())))
                    .collect(),
                &|v| v > rule.threshold,
                false,
            );
        }
        Check::CacheHitRate => {
            return worst(
                f.caches
                    .iter()
                    .filter(|c| c.lookups >= min.max(1))
                    .filter_map(|c| Some((c.hit_ratio?, c.name.as_str())))
                    .collect(),
                &|v| v < rule.threshold,
                true,
            );
        }
        Check::QueueBacklog => {
            return worst(
                f.queues.iter().map(|(n, v)| (*v, n.as_str())).collect(),
                &|v| v > rule.threshold,
                false,
            );
        }
        _ => observe_service(rule, f, now),
    };
    (holds, value, None)
}

/// (holds, value, subject) of one rule on one series.
type Observed = (bool, f64, Option<String>);

/// [`observe`] for the rules about the service itself.
fn observe_service(rule: &Rule, f: &Facts, now: Nanos) -> (bool, f64) {
    match rule.check {
        Check::ErrorRate => {
            let ratio = if f.requests == 0 {
                0.0
            } else {
                f.errors as f64 / f.requests as f64
            };
            (
                f.requests >= rule.min_requests.max(1) && ratio > rule.threshold,
                ratio,
            )
        }
        Check::LatencyP95 => {
            let p95 = f.p95_seconds.unwrap_or(0.0);
            (
                f.requests >= rule.min_requests && f.p95_seconds.is_some() && p95 > rule.threshold,
                p95,
            )
        }
        Check::SlowRecovery => {
            let open_for = f
                .oldest_open_incident
                .map_or(0.0, |o| (now - o) as f64 / 1e9);
            (open_for > rule.threshold, open_for)
        }
        Check::DeploymentFailed => match f.latest_deployment {
            Some((at, true)) if now - at <= rule.lookback => (true, 1.0),
            _ => (false, 0.0),
        },
        // Read from the processor's own readings in `evaluate`; the
        // dependency rules in `observe`.
        Check::Utilization(_)
        | Check::DependencyErrorRate
        | Check::DependencyLatencyP95
        | Check::CacheHitRate
        | Check::QueueBacklog => (false, 0.0),
    }
}

fn summary(
    rule: &Rule,
    service: &str,
    environment: &str,
    value: f64,
    subject: Option<&str>,
) -> String {
    let subject = subject.unwrap_or("one");
    match rule.check {
        Check::DependencyErrorRate => format!(
            "{service} ({environment}): calls to {subject} fail at {:.2}% > {:.2}%",
            value * 100.0,
            rule.threshold * 100.0
        ),
        Check::DependencyLatencyP95 => format!(
            "{service} ({environment}): calls to {subject} take {:.0} ms at p95 > {:.0} ms",
            value * 1_000.0,
            rule.threshold * 1_000.0
        ),
        Check::CacheHitRate => format!(
            "{service} ({environment}): cache {subject} hits {:.1}% < {:.1}%",
            value * 100.0,
            rule.threshold * 100.0
        ),
        Check::QueueBacklog => format!(
            "{service} ({environment}): queue {subject} holds {value:.0} > {:.0}",
            rule.threshold
        ),
        Check::ErrorRate => format!(
            "{service} ({environment}): error ratio {:.2}% > {:.2}%",
            value * 100.0,
            rule.threshold * 100.0
        ),
        Check::LatencyP95 => format!(
            "{service} ({environment}): p95 latency {:.0} ms > {:.0} ms",
            value * 1_000.0,
            rule.threshold * 1_000.0
        ),
        Check::SlowRecovery => format!(
            "{service} ({environment}): an incident open for {:.0} min > {:.0} min",
            value / 60.0,
            rule.threshold / 60.0
        ),
        Check::DeploymentFailed => {
            format!("{service} ({environment}): the latest deployment failed")
        }
        Check::Utilization(resource) => format!(
            "{service} ({environment}): {} utilization {:.0}% > {:.0}%",
            match resource {
                UtilizationResource::Cpu => "CPU",
                UtilizationResource::Memory => "memory",
            },
            value * 100.0,
            rule.threshold * 100.0
        ),
    }
}

fn step(
    active: &mut BTreeMap<AlertKey, ActiveAlert>,
    transitions: &mut Vec<Transition>,
    rule: &Rule,
    key: AlertKey,
    (holds, value, subject): Observed,
    now: Nanos,
) {
    let (service, environment) = (key.1.clone(), key.2.clone());
    let text = summary(rule, &service, &environment, value, subject.as_deref());
    let emit = |state, transitions: &mut Vec<Transition>| {
        transitions.push(Transition {
            alertname: rule.name,
            service: service.clone(),
            environment: environment.clone(),
            state,
            at: now,
            value,
            threshold: rule.threshold,
            severity: rule.severity,
            summary: text.clone(),
            window: rule.window.clone(),
        })
    };
    match (active.get_mut(&key), holds) {
        (None, true) => {
            let state = if rule.hold == 0 {
                State::Firing
            } else {
                State::Pending
            };
            emit(state, transitions);
            active.insert(
                key,
                ActiveAlert {
                    alertname: rule.name,
                    service: service.clone(),
                    environment: environment.clone(),
                    state,
                    since: now,
                    value,
                    threshold: rule.threshold,
                    severity: rule.severity,
                    summary: text.clone(),
                },
            );
        }
        (Some(alert), true) => {
            alert.value = value;
            alert.summary = text.clone();
            if alert.state == State::Pending && now - alert.since >= rule.hold {
                alert.state = State::Firing;
                alert.since = now;
                emit(State::Firing, transitions);
            }
        }
        (Some(alert), false) => {
            if alert.state == State::Firing {
                emit(State::Resolved, transitions);
            }
            active.remove(&key);
        }
        (None, false) => {}
    }
}

#[cfg(test)]
mod tests;
