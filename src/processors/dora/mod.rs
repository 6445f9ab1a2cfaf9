//! Processor `dora`: the four DORA metrics per (service, environment) and
//! window, from delivery events.
//!
//! The processor keeps the delivery history (deployments per series, change
//! and artifact links, incidents) and computes every figure from it when a
//! snapshot is asked for. Keeping facts rather than running totals is what
//! makes the result independent of arrival order: a late deployment, a
//! replayed incident or a backfill lands in its place in the history and the
//! next snapshot is as if the events had come in order. Events are
//! de-duplicated by their id (CDEvents `context.id`).
//!
//! Definitions (windows are `(now - window, now]`):
//! - deployment frequency: successful deployments / the window's days;
//! - lead time: for each change deployed for the first time to the
//!   environment in the window, deployment time − change time (created, else
//!   merged, or the time the producer linked); p50, p95;
//! - change failure rate: failed changes / deployments (successful and
//!   failed; rollbacks are neither). A deployment is a failed change when it
//!   failed, was rolled back (the deployment a rollback replaced), or an
//!   incident of its series opened after it and before the next deployment
//!   within `failure_window` (an incident naming an artifact goes to that
//!   artifact's latest deployment before it instead);
//! - time to restore: incidents resolved in the window, opened → resolved;
//!   mean, p50, p95;
//! - failed deployment recovery: failed deployments in the window, to the
//!   earlier of the next successful deployment or rollback and the
//!   resolution of the incidents that failed them.

pub mod calendar;
mod check;
pub mod config;
pub mod levels;
pub mod regression;
pub mod state;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::model::delivery::{
    ChangeStage, DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome, Health,
    IncidentDetails, Nanos, Regressed, Source, Verdict, commit_digits,
};
use crate::processors::Applied;
use crate::processors::red::SeriesErrors;
pub use config::{DeployPipeline, DerivedIncidentsConfig, DoraConfig, IncidentFilter};
use levels::{Cutoffs, Level};

const NS_PER_SEC: f64 = 1e9;

/// Distinct teams learned from deployments (`customData.team`) at most:
/// the `team` label's bound.
pub const MAX_LEARNED_TEAMS: usize = 100;

/// A 128-bit fingerprint of an id (event, change, artifact, incident).
///
/// The history refers to ids only to match them, never to show them, so it
/// keeps 16 bytes instead of the string (artifact ids run to 100 bytes). Two
/// independent 64-bit multiply-rotate lanes over 8-byte words, each finished
/// with the MurmurHash3 avalanche: stable across versions and platforms
/// (checkpoints need that), and at 128 bits an accidental collision among
/// billions of ids is negligible. Not a defence against crafted collisions,
/// which only someone who may send events at all could attempt.
type Key = u128;

/// The fingerprint the processor keys an event, change, artifact or
/// incident id by (stable across versions: checkpoints and changelog keys
/// hold it).
pub fn fingerprint(id: &str) -> u128 {
    key(id)
}

fn key(id: &str) -> Key {
    fn mix(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    let bytes = id.as_bytes();
    let (mut a, mut b) = (0x9E37_79B9_7F4A_7C15u64, 0xC2B2_AE3D_27D4_EB4Fu64);
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        a = (a ^ w).wrapping_mul(0x87C3_7B91_1142_53D5).rotate_left(31);
        b = (b ^ w).wrapping_mul(0x4CF5_AD43_2745_937F).rotate_left(27);
    }
    let len = bytes.len() as u64;
    (u128::from(mix(a ^ len)) << 64) | u128::from(mix(b ^ len.rotate_left(32)))
}

/// Hashes a [`Key`] by taking its low 64 bits: keys are already well-mixed
/// fingerprints, so hashing them again (SipHash) would only cost time.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-Key types, which these maps never hold.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

/// A series' (service, environment) as borrowed names: the series maps,
/// keyed by owned names, are looked up through it without building two
/// `String`s per look-up (see [`series_name`]).
trait SeriesName {
    fn parts(&self) -> (&str, &str);
}

impl SeriesName for (String, String) {
    fn parts(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl SeriesName for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn SeriesName + 'a> for (String, String) {
    fn borrow(&self) -> &(dyn SeriesName + 'a) {
        self
    }
}

// Ordered, compared and hashed as the tuple of strings is, as `Borrow`
// requires: field by field, a `String` as its `str`.
impl PartialEq for dyn SeriesName + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn SeriesName + '_ {}

impl PartialOrd for dyn SeriesName + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn SeriesName + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl std::hash::Hash for dyn SeriesName + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

/// The look-up key of the series `name` in a map keyed by `(String, String)`.
fn series_name<'a>(name: &'a (&'a str, &'a str)) -> &'a (dyn SeriesName + 'a) {
    name
}

/// A map keyed by fingerprints.
type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// One deployment as kept in the history.
#[derive(Debug, Clone)]
struct DeploymentRecord {
    time: Nanos,
    /// Part of the event id's fingerprint: orders deployments of the same instant.
    order: u64,
    outcome: DeploymentOutcome,
    artifact: Option<Key>,
    /// Changes the producer linked, with the time it gave; usually none, so
    /// a boxed slice (16 bytes) rather than a vector (24).
    changes: Box<[(Key, Option<Nanos>)]>,
    /// Marked as rework by its producer.
    rework: bool,
    /// The key of the commit deployed (0: unknown; see [`revision_key`]):
    /// reports of one deployment by several tools share it.
    revision: u64,
    /// The tools that reported it: one as applied, several once reports
    /// of one deployment are merged.
    sources: SourceSet,
}

/// A set of [`Source`]s, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceSet(u16);

impl SourceSet {
    /// The set of one source.
    pub fn of(source: Source) -> Self {
        SourceSet(1 << source as u16)
    }

    /// Whether `source` is in it.
    pub fn contains(self, source: Source) -> bool {
        self.0 & (1 << source as u16) != 0
    }

    /// Whether any of `other`'s are in it.
    pub fn meets(self, other: SourceSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Both sets' sources.
    pub fn union(self, other: SourceSet) -> Self {
        SourceSet(self.0 | other.0)
    }

    /// Its sources, in [`Source::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Source> {
        Source::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Its sources' names.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Source::as_str).collect()
    }
}

/// Why a deployment is a failed change, strongest evidence first: a
/// deployment with several is counted under the strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureReason {
    /// The deployment itself failed.
    DeploymentFailed,
    /// A rollback replaced it.
    RolledBack,
    /// An incident named its artifact.
    IncidentArtifact,
    /// The service's health regressed after it (`processors.dora.regression`).
    Regression,
    /// An incident of its series opened within the failure window after it.
    IncidentWindow,
}

impl FailureReason {
    /// Every reason, strongest first.
    pub const ALL: [FailureReason; 5] = [
        FailureReason::DeploymentFailed,
        FailureReason::RolledBack,
        FailureReason::IncidentArtifact,
        FailureReason::Regression,
        FailureReason::IncidentWindow,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::DeploymentFailed => "deployment_failed",
            FailureReason::RolledBack => "rolled_back",
            FailureReason::IncidentArtifact => "incident_artifact",
            FailureReason::Regression => "regression",
            FailureReason::IncidentWindow => "incident_window",
        }
    }

    /// The cause as the API has always named it: `deployment failed`,
    /// `rolled back`, `incident` (either incident reason) or `regression`.
    pub const fn cause(self) -> &'static str {
        match self {
            FailureReason::DeploymentFailed => "deployment failed",
            FailureReason::RolledBack => "rolled back",
            FailureReason::IncidentArtifact | FailureReason::IncidentWindow => "incident",
            FailureReason::Regression => "regression",
        }
    }
}

impl Serialize for FailureReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Keeps the stronger of `reason` and `found`.
fn strongest(reason: &mut Option<FailureReason>, found: FailureReason) {
    *reason = Some(reason.map_or(found, |r| r.min(found)));
}

/// The commit a deployment names (its revision, else its artifact's), as
/// kept in a [`DeploymentRecord`].
fn revision_key(d: &Deployment) -> u64 {
    let Some(digits) = d
        .revision
        .as_deref()
        .and_then(commit_digits)
        .or_else(|| d.artifact.as_deref().and_then(commit_digits))
    else {
        return 0;
    };
    // A commit id is a hash already: its first 16 hex digits are the key,
    // with its length (a 7-digit short id is not the full one), read
    // without a hash or an allocation, as this runs for every deployment.
    let value = digits.bytes().take(16).fold(0u64, |v, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            _ => (b | 0x20) - b'a' + 10,
        };
        (v << 4) | u64::from(digit)
    });
    (value ^ ((digits.len() as u64) << 57)).max(1)
}

/// An incident as far as it is known: its open and resolve events may come
/// in either order.
#[derive(Debug, Clone, Default)]
struct Incident {
    series: Option<(String, String)>,
    artifact: Option<Key>,
    /// (time, event id) of the open event that set `series` and `artifact`.
    opened_by: Option<(Nanos, Key)>,
    opened: Option<Nanos>,
    /// The earliest resolution.
    resolved: Option<Nanos>,
    /// The latest resolution and the latest reopening (PagerDuty's
    /// `incident.reopened`), kept only once an incident is reopened.
    last_resolved: Option<Nanos>,
    reopened: Option<Nanos>,
    /// Its id, as the open event that set `series` named it: the evidence
    /// a failed change cites.
    name: Option<Box<str>>,
    /// Its source, severity, urgency, priority and labels (from that event).
    details: IncidentDetails,
}

impl Incident {
    /// When service was restored: the earliest resolution, or for a
    /// reopened incident the resolution after the reopening (none while it
    /// is open again). A reopening means service was not restored, so the
    /// time to restore runs from the first opening to the last resolution.
    fn restored(&self) -> Option<Nanos> {
        match self.reopened {
            None => self.resolved,
            Some(reopened) => self.last_resolved.filter(|&r| r >= reopened),
        }
    }
}

/// Created and merged times of a change.
#[derive(Debug, Clone, Copy, Default)]
struct ChangeTimes {
    created: Option<Nanos>,
    merged: Option<Nanos>,
    /// A pull request's merge commit: its work began with the first of
    /// this many commits ending at this revision.
    first_commit_of: Option<(Key, u32)>,
    /// Labelled rework (a hotfix pull request).
    rework: bool,
}

impl ChangeTimes {
    fn time(&self) -> Option<Nanos> {
        self.created.or(self.merged)
    }
}

fn min_option(a: Option<Nanos>, b: Nanos) -> Option<Nanos> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The figures of one (service, environment) over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowFigures {
    /// The window as configured, e.g. `7d`.
    pub window: String,
    /// Successful deployments in the window.
    pub deployments: u64,
    /// Failed deployments in the window.
    pub failed_deployments: u64,
    /// Rollbacks in the window.
    pub rollbacks: u64,
    /// Successful deployments per day.
    pub deployment_frequency_per_day: f64,
    /// Deployment frequency as the DORA survey's answer.
    pub deployment_frequency_answer: levels::FrequencyAnswer,
    /// Lead time for changes, seconds.
    pub lead_time: Quantiles,
    /// Of the changes whose merge time is known: their start to the merge.
    pub lead_time_before_merge: Quantiles,
    /// ... and the merge to their first deployment.
    pub lead_time_after_merge: Quantiles,
    /// Deployments that were failed changes / deployments (successful and failed).
    pub change_failure_ratio: Option<f64>,
    /// Failed changes in the window.
    pub failed_changes: u64,
    /// Deployment rework rate (DORA 2024): rework deployments / deployments
    /// (successful and failed); `None` without deployments.
    pub rework_ratio: Option<f64>,
    /// Rework deployments in the window.
    pub rework_deployments: u64,
    /// The failed changes by what made them so.
    pub failed_by_cause: FailureCauses,
    /// Time to restore, seconds.
    pub time_to_restore: Quantiles,
    /// Failed deployment recovery time, seconds.
    pub failed_deployment_recovery: Quantiles,
    /// Level per metric (absent where there is nothing to classify).
    pub levels: MetricLevels,
    /// The same figures over the window before this one (the trend), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<WindowFigures>>,
}

/// Failed changes by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FailureCauses {
    /// An incident of the series opened after the deployment.
    pub incident: u64,
    /// A rollback replaced it.
    pub rolled_back: u64,
    /// The deployment itself failed.
    pub deployment_failed: u64,
    /// The service's health regressed after it.
    pub regression: u64,
}

/// Levels per metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct MetricLevels {
    /// Deployment frequency.
    pub deployment_frequency: Option<Level>,
    /// Lead time for changes (its p50).
    pub lead_time: Option<Level>,
    /// Change failure rate.
    pub change_failure_rate: Option<Level>,
    /// Time to restore (its p50).
    pub time_to_restore: Option<Level>,
}

/// Count, mean and quantiles of durations in seconds (`None` without data).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Quantiles {
    /// Observations.
    pub count: u64,
    /// Exact mean.
    pub mean: Option<f64>,
    /// Median (exact, nearest rank).
    pub p50: Option<f64>,
    /// 95th percentile (exact, nearest rank).
    pub p95: Option<f64>,
}

/// Upper bounds of the lead-time histogram: 5 minutes to 180 days.
pub const LEAD_TIME_BUCKETS: [f64; 17] = [
    300.0,
    900.0,
    1_800.0,
    3_600.0,
    7_200.0,
    14_400.0,
    28_800.0,
    43_200.0,
    86_400.0,
    172_800.0,
    259_200.0,
    604_800.0,
    1_209_600.0,
    2_592_000.0,
    5_184_000.0,
    7_776_000.0,
    15_552_000.0,
];

/// Upper bounds of the incident-duration histogram: 1 minute to 30 days.
pub const INCIDENT_BUCKETS: [f64; 14] = [
    60.0,
    300.0,
    900.0,
    1_800.0,
    3_600.0,
    7_200.0,
    14_400.0,
    28_800.0,
    43_200.0,
    86_400.0,
    172_800.0,
    604_800.0,
    1_209_600.0,
    2_592_000.0,
];

/// A classic (cumulative-bucket) histogram's counts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramCounts {
    /// Observations at or below each bound (not cumulative), then above the last.
    pub buckets: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl HistogramCounts {
    /// Empty counts for `bounds`.
    pub(crate) fn new(bounds: &[f64]) -> Self {
        HistogramCounts {
            buckets: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts `value` into the bucket of `bounds` it falls in.
    pub(crate) fn observe(&mut self, bounds: &[f64], value: f64) {
        let at = bounds.partition_point(|b| *b < value);
        self.buckets[at] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn add(&mut self, other: &HistogramCounts) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// `self - other`, bucket by bucket, never below zero.
    fn minus(&self, other: &HistogramCounts) -> HistogramCounts {
        HistogramCounts {
            buckets: self
                .buckets
                .iter()
                .zip(&other.buckets)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            sum: (self.sum - other.sum).max(0.0),
            count: self.count.saturating_sub(other.count),
        }
    }
}

/// What pruning removed from a series' history, so that its counters and
/// histograms keep counting it.
#[derive(Debug, Clone, Default)]
struct Baseline {
    deployments: BTreeMap<&'static str, u64>,
    failed_changes: u64,
    /// Of `failed_changes`, by reason (checkpoints before reasons were
    /// kept have none: the rest is `unattributed`).
    failed_by_reason: BTreeMap<&'static str, u64>,
    lead_times: HistogramCounts,
    incident_durations: HistogramCounts,
}

/// Everything about one (service, environment).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesFigures {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// Whether the environment is a production one.
    pub production: bool,
    /// Per configured window.
    pub windows: Vec<WindowFigures>,
    /// Incidents open now.
    pub open_incidents: u64,
    /// When the oldest incident open now opened (ns since the epoch).
    pub oldest_open_incident: Option<Nanos>,
    /// The latest failed changes in the longest window, newest first (at most 10).
    pub recent_failed_changes: Vec<FailedChange>,
    /// The latest deployments in the longest window, newest first (at most
    /// 10), each with the tools that reported it.
    pub recent_deployments: Vec<RecentDeployment>,
    /// All deployments ever applied, by outcome.
    pub deployments_total: BTreeMap<&'static str, u64>,
    /// All failed changes ever found.
    pub failed_changes_total: u64,
    /// ... by reason (the `reason` label; `unattributed` for those pruned
    /// before reasons were kept).
    pub failed_changes_by_reason: BTreeMap<&'static str, u64>,
    /// Every lead time, seconds, in the buckets of [`LEAD_TIME_BUCKETS`].
    #[serde(skip)]
    pub lead_times: HistogramCounts,
    /// Every incident duration, seconds, in the buckets of [`INCIDENT_BUCKETS`].
    #[serde(skip)]
    pub incident_durations: HistogramCounts,
}

/// The `dora` processor's figures at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoraSnapshot {
    /// When, in nanoseconds since the epoch.
    pub at: Nanos,
    /// Every production series pooled, per window: the organisation's figures
    /// (quantiles over all the production lead and restore times, not an
    /// average of per-service ones).
    pub production: Vec<WindowFigures>,
    /// The level cut-offs in force (elite, high, medium per metric).
    pub cutoffs: levels::Cutoffs,
    /// The level the report's advice aims at (`processors.dora.target_level`).
    pub target_level: levels::Level,
    /// Every series, ordered by service then environment.
    pub series: Vec<SeriesFigures>,
    /// Per team (`processors.dora.teams`) and environment, the team's
    /// series pooled: every deployment, lead and restore time of its
    /// services counted together, not an average of theirs.
    pub teams: Vec<GroupFigures>,
    /// Per environment, every series pooled: the organisation's figures.
    pub organisation: Vec<GroupFigures>,
    /// Events applied (after de-duplication).
    pub events_applied: u64,
    /// Events dropped as duplicates of one already applied.
    pub duplicates: u64,
    /// Events of types that do not feed DORA figures.
    pub ignored: u64,
    /// Events dropped as older than the retention.
    pub expired: u64,
    /// Incidents that do not count: their source's `incident_filters` refuse them.
    pub incidents_filtered_out: u64,
}

/// The figures of a group of series pooled: a team's in one environment,
/// or the organisation's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupFigures {
    /// The team; `None` for the organisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The environment.
    pub environment: String,
    /// Its services, in order.
    pub services: Vec<String>,
    /// Per window, as for a series.
    pub windows: Vec<WindowFigures>,
}

/// A deployment that was a failed change, with why it counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedChange {
    /// When it was deployed (ns since the epoch).
    pub at: Nanos,
    /// Its own outcome (`success` when an incident or rollback made it fail).
    pub outcome: &'static str,
    /// What made it a failed change: `deployment failed`, `rolled back`,
    /// `incident` or `regression`.
    pub cause: &'static str,
    /// The strongest evidence, as the `reason` label names it.
    pub reason: FailureReason,
    /// The tools that reported the deployment (several when their reports
    /// were one deployment).
    pub sources: Vec<&'static str>,
    /// What the reason rests on.
    pub evidence: Evidence,
}

/// A deployment as the series lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentDeployment {
    /// When (ns since the epoch).
    pub at: Nanos,
    /// `success`, `failure` or `rollback`.
    pub outcome: &'static str,
    /// The tools that reported it (several when their reports were one deployment).
    pub sources: Vec<&'static str>,
    /// Why it is a failed change, if it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<FailureReason>,
    /// The regression check's verdict, once it judged the deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionCheck>,
}

/// The regression check's verdict on a deployment, with its figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegressionCheck {
    /// `regression`, `healthy` or `not_judged`.
    pub verdict: Verdict,
    /// Which figures regressed: `error_ratio`, `p95`, `p99`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regressed: Vec<&'static str>,
    /// Not judged because another deployment came within the stretch after it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
    /// The service's figures in the stretch before the deployment.
    pub before: Health,
    /// ... and in the stretch after it.
    pub after: Health,
}

impl From<&VerdictRecord> for RegressionCheck {
    fn from(v: &VerdictRecord) -> Self {
        RegressionCheck {
            verdict: v.verdict,
            regressed: v.regressed.names(),
            superseded: v.superseded,
            before: v.before,
            after: v.after,
        }
    }
}

/// A verdict of the regression check, as the history keeps it (per
/// series, sorted by the deployment's time).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VerdictRecord {
    deployed_at: Nanos,
    verdict: Verdict,
    regressed: Regressed,
    superseded: bool,
    before: Health,
    after: Health,
    /// The incident opened for a regression.
    incident: Option<Box<str>>,
}

impl VerdictRecord {
    /// The record of a verdict event.
    fn of(j: &crate::model::delivery::Judged) -> Self {
        VerdictRecord {
            deployed_at: j.deployed_at,
            verdict: j.verdict,
            regressed: j.regressed,
            superseded: j.superseded,
            before: j.before,
            after: j.after,
            incident: j.incident.as_deref().map(Box::from),
        }
    }

    /// The verdict event of series `(service, environment)` it records.
    fn judged(&self, (service, environment): &(String, String)) -> crate::model::delivery::Judged {
        crate::model::delivery::Judged {
            service: service.clone(),
            environment: environment.clone(),
            deployed_at: self.deployed_at,
            verdict: self.verdict,
            regressed: self.regressed,
            superseded: self.superseded,
            before: self.before,
            after: self.after,
            incident: self.incident.as_deref().map(str::to_string),
        }
    }
}

/// What a failed change's reason rests on: the rollback, the incidents
/// (each with its source) and the regression's figures.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Evidence {
    /// The rollback that replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackEvidence>,
    /// The incidents attributed to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incidents: Vec<IncidentEvidence>,
    /// The regression check's verdict and the figures before and after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionCheck>,
}

/// The rollback behind a failed change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackEvidence {
    /// When it was rolled back (ns since the epoch).
    pub at: Nanos,
    /// Who reported the rollback.
    pub sources: Vec<&'static str>,
}

/// An incident behind a failed change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentEvidence {
    /// The incident's id.
    pub id: String,
    /// The tool that reported it.
    pub source: &'static str,
    /// When it opened (ns since the epoch).
    pub opened: Nanos,
    /// Whether it named the deployment's artifact (else it opened within
    /// the failure window after it, or doraflow opened it for the
    /// deployment's regression).
    pub named_the_artifact: bool,
}

/// Production figures of one calendar day (the dashboard's trend).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct DayFigures {
    /// The local date, `YYYY-MM-DD`.
    pub date: String,
    /// When the day began: its local midnight (ns since the epoch).
    pub start: Nanos,
    /// When it ends: the next local midnight, or now for today.
    pub end: Nanos,
    /// Successful deployments.
    pub deployments: u64,
    /// Deployments that were failed changes.
    pub failed_changes: u64,
    /// Failed changes / deployments (successful and failed).
    pub change_failure_ratio: Option<f64>,
    /// Median lead time of the changes first deployed that day, seconds.
    pub lead_time_p50: Option<f64>,
    /// Median duration of the incidents resolved that day, seconds.
    pub time_to_restore_p50: Option<f64>,
}

/// How many failed changes a series lists.
const RECENT_FAILED_CHANGES: usize = 10;

/// One series' history reduced to what windows are computed from.
struct History {
    deployments: Vec<Deployed>,
    /// (first deployed, lead time) per change.
    lead_times: Vec<(Nanos, Nanos)>,
    /// (first deployed, started → merged, merged → deployed) per change
    /// whose merge time is known: where the lead time was spent.
    merge_waits: Vec<(Nanos, Nanos, Nanos)>,
    /// (resolved, duration) per incident.
    incident_durations: Vec<(Nanos, Nanos)>,
    /// (deployed, time to recovery) per failed deployment.
    recovery: Vec<(Nanos, Nanos)>,
}

/// A deployment, judged.
struct Deployed {
    time: Nanos,
    outcome: DeploymentOutcome,
    /// A failed change (rollbacks never are: they are the fix).
    failed: bool,
    /// Rework: unplanned, made because of an incident (rollbacks never are:
    /// they are not changes).
    rework: bool,
    /// Why it is a failed change (set only when it is one).
    reason: Option<FailureReason>,
    /// The tools that reported it.
    sources: SourceSet,
    /// What the reason rests on (failed changes only: few, so boxed).
    evidence: Option<Box<Evidence>>,
    /// Its verdict's index in the series' verdicts, once judged.
    verdict: Option<u32>,
}

/// Derived-incident state of one series.
#[derive(Debug, Clone, Default)]
struct DerivedState {
    /// The incident open for it, if any.
    open: Option<String>,
    /// Since when its error ratio has been back at or below the threshold.
    below_since: Option<Nanos>,
}

/// Settings derived from [`DoraConfig`].
struct Settings {
    windows: Vec<(String, Nanos)>,
    failure_window: Nanos,
    production: Vec<String>,
    cutoffs: Cutoffs,
    deploy_pipelines: HashMap<String, (String, String)>,
    derived: DerivedIncidentsConfig,
    retention: Nanos,
    max_series: usize,
    rework_after_incident: bool,
    /// Service → team.
    teams: HashMap<String, String>,
    target_level: levels::Level,
    /// Reports of one commit's deployment within this long of the first are one.
    deduplicate_within: Nanos,
    /// Per source (by `Source as usize`), the filter its incidents pass.
    incident_filters: [Option<IncidentFilter>; Source::ALL.len()],
    /// The calendar days are counted in (`timezone`).
    calendar: calendar::Calendar,
    /// The regression check, if on.
    regression: Option<regression::RegressionConfig>,
}

/// The `dora` processor's state: the delivery history.
pub struct DoraProcessor {
    settings: Settings,
    /// Event ids applied, with the event's time (for pruning).
    seen: KeyMap<Nanos>,
    changes: KeyMap<ChangeTimes>,
    /// Artifact → (time of its latest link event, its changes).
    artifact_changes: KeyMap<(Nanos, Vec<Key>)>,
    /// Revision → the revision it follows (a push's `before`); kept while
    /// the revision is in `artifact_changes`.
    revision_parents: KeyMap<Key>,
    /// Service → (time, team) of the latest deployment that named its team.
    learned_teams: HashMap<String, (Nanos, String)>,
    /// Team → how many services `learned_teams` gives it: the distinct
    /// teams, counted without a scan of every service.
    learned_team_sizes: HashMap<String, usize>,
    /// What pruning took out of each series.
    baselines: HashMap<(String, String), Baseline>,
    /// Events older than this are dropped: their ids may have been pruned.
    horizon: Nanos,
    /// Production deployments applied since the last take, when asked to keep them.
    new_production: Option<Vec<(Deployment, Nanos)>>,
    expired: u64,
    series: BTreeMap<(String, String), Vec<DeploymentRecord>>,
    incidents: KeyMap<Incident>,
    derived: HashMap<(String, String), DerivedState>,
    applied: u64,
    duplicates: u64,
    ignored: u64,
    /// Event ids forgotten by pruning since the last take, when asked to
    /// keep them (a changelog deletes their records).
    forgotten: Option<Vec<Key>>,
    /// The regression check's verdicts, per series, by deployment time.
    verdicts: HashMap<(String, String), Vec<VerdictRecord>>,
    /// The regressions whose incident is open (rebuilt from the verdicts
    /// and incidents on a restore): few, so a list.
    open_regressions: Vec<check::OpenRegression>,
    /// Per series, when its latest regression incident was resolved: the
    /// error ratio's derived incidents keep quiet for a `red` window after,
    /// as the window still holds the regression's errors.
    regression_resolved: HashMap<(String, String), Nanos>,
    /// The `red` window's length, as the last regression check read it.
    red_window: Nanos,
}

impl DoraProcessor {
    /// A processor as configured.
    pub fn new(config: &DoraConfig) -> Self {
        DoraProcessor {
            settings: Settings {
                windows: config
                    .windows
                    .iter()
                    .map(|w| (w.as_str().to_string(), w.get().as_nanos() as Nanos))
                    .collect(),
                failure_window: config.failure_window.get().as_nanos() as Nanos,
                production: config.production_environments.clone(),
                cutoffs: Cutoffs::of(config.levels.preset.unwrap_or(config.profile))
                    .with(&config.levels),
                deploy_pipelines: config
                    .deploy_pipelines
                    .iter()
                    .map(|p| {
                        (
                            p.pipeline.clone(),
                            (p.service.clone(), p.environment.clone()),
                        )
                    })
                    .collect(),
                derived: config.derived_incidents.clone(),
                retention: config.retention.get().as_nanos() as Nanos,
                max_series: config.max_series,
                rework_after_incident: config.rework_after_incident,
                target_level: config.target_level,
                teams: config
                    .teams
                    .iter()
                    .map(|(service, team)| (service.clone(), team.clone()))
                    .collect(),
                deduplicate_within: config.deduplicate_within.get().as_nanos() as Nanos,
                incident_filters: Source::ALL
                    .map(|source| config.incident_filters.get(source.as_str()).cloned()),
                // Validated with the configuration: a name that does not
                // resolve here is UTC's.
                calendar: config
                    .timezone
                    .as_deref()
                    .and_then(|zone| calendar::Calendar::named(zone).ok())
                    .unwrap_or_else(calendar::Calendar::utc),
                regression: config.regression.clone().filter(|r| r.enabled),
            },
            derived: HashMap::new(),
            seen: KeyMap::default(),
            changes: KeyMap::default(),
            artifact_changes: KeyMap::default(),
            revision_parents: KeyMap::default(),
            learned_teams: HashMap::new(),
            learned_team_sizes: HashMap::new(),
            baselines: HashMap::new(),
            horizon: Nanos::MIN,
            new_production: None,
            expired: 0,
            series: BTreeMap::new(),
            incidents: KeyMap::default(),
            applied: 0,
            duplicates: 0,
            ignored: 0,
            forgotten: None,
            verdicts: HashMap::new(),
            open_regressions: Vec::new(),
            regression_resolved: HashMap::new(),
            red_window: 0,
        }
    }

    /// Keeps the ids of events pruning forgets, for [`Self::take_forgotten`].
    pub fn keep_forgotten(&mut self) {
        self.forgotten.get_or_insert_with(Vec::new);
    }

    /// The fingerprints of the events pruning forgot since the last call.
    pub fn take_forgotten(&mut self) -> Vec<u128> {
        self.forgotten
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Applies a batch of events; duplicates (by id) are dropped.
    pub fn apply(&mut self, events: &[DeliveryEvent]) -> Applied {
        let mut refused = 0;
        for event in events {
            if event.time < self.horizon {
                self.expired += 1;
                continue;
            }
            if self.beyond_series_cap(event) {
                refused += 1;
                continue;
            }
            let id = key(&event.id);
            if self.seen.insert(id, event.time).is_some() {
                self.duplicates += 1;
                continue;
            }
            self.applied += 1;
            self.apply_one(id, event);
        }
        if refused == 0 {
            return Applied::default();
        }
        metrics::counter!(crate::instruments::RECEIVER_REFUSED, "reason" => "series_limit")
            .increment(refused);
        Applied {
            refused,
            reason: Some(format!(
                "{refused} events refused: the series limit (processors.dora.max_series = {}) is reached",
                self.settings.max_series
            )),
        }
    }

    /// Whether `event` would start a new series beyond `max_series`.
    fn beyond_series_cap(&self, event: &DeliveryEvent) -> bool {
        if self.series.len() < self.settings.max_series {
            return false;
        }
        let (service, environment) = match &event.kind {
            DeliveryKind::Deployment(d) => (&d.service, &d.environment),
            DeliveryKind::IncidentOpened {
                service,
                environment,
                ..
            } => (service, environment),
            _ => return false,
        };
        !self
            .series
            .contains_key(series_name(&(service, environment)))
    }

    /// Applies one event, `id` its id's fingerprint.
    fn apply_one(&mut self, id: Key, event: &DeliveryEvent) {
        let time = event.time;
        match &event.kind {
            DeliveryKind::Deployment(d) => self.add_deployment(id, time, d),
            DeliveryKind::Change { change, stage } => {
                let times = self.changes.entry(key(change)).or_default();
                match stage {
                    ChangeStage::Created => times.created = min_option(times.created, time),
                    ChangeStage::Merged => times.merged = min_option(times.merged, time),
                }
            }
            DeliveryKind::ArtifactLink { artifact, change } => {
                // Most artifacts carry one change: no room for more until needed.
                let (linked, changes) = self
                    .artifact_changes
                    .entry(key(artifact))
                    .or_insert_with(|| (time, Vec::with_capacity(1)));
                *linked = (*linked).max(time);
                let change = key(change);
                if !changes.contains(&change) {
                    changes.push(change);
                }
            }
            DeliveryKind::ChangeRework { change } => {
                self.changes.entry(key(change)).or_default().rework = true;
            }
            DeliveryKind::ChangeFromCommits {
                change,
                head,
                commits,
            } => {
                let times = self.changes.entry(key(change)).or_default();
                times.merged = min_option(times.merged, time);
                times.first_commit_of = Some((key(head), *commits));
            }
            DeliveryKind::Revision {
                revision,
                parent,
                changes,
            } => {
                let (linked, linked_changes) = self
                    .artifact_changes
                    .entry(key(revision))
                    .or_insert_with(|| (time, Vec::with_capacity(changes.len())));
                *linked = (*linked).max(time);
                for change in changes {
                    let change_key = key(&change.id);
                    if let Some(at) = change.time {
                        let times = self.changes.entry(change_key).or_default();
                        times.created = min_option(times.created, at);
                    }
                    if !linked_changes.contains(&change_key) {
                        linked_changes.push(change_key);
                    }
                }
                if let Some(parent) = parent {
                    self.revision_parents.insert(key(revision), key(parent));
                }
            }
            DeliveryKind::IncidentOpened {
                incident,
                service,
                environment,
                artifact,
                details,
            } => {
                let record = self.incidents.entry(key(incident)).or_default();
                // Two open events for one incident: the earliest (then the
                // lower id) says what it affects, whatever arrived first.
                let rank = (time, id);
                if record.opened_by.is_none_or(|by| rank < by) {
                    record.series = Some((service.clone(), environment.clone()));
                    record.artifact = artifact.as_deref().map(key);
                    record.opened_by = Some(rank);
                    record.name = Some(incident.as_str().into());
                    record.details = details.clone();
                }
                record.opened = min_option(record.opened, time);
            }
            DeliveryKind::IncidentResolved { incident } => {
                let record = self.incidents.entry(key(incident)).or_default();
                record.resolved = min_option(record.resolved, time);
                record.last_resolved = Some(record.last_resolved.map_or(time, |r| r.max(time)));
            }
            DeliveryKind::IncidentReopened { incident } => {
                let record = self.incidents.entry(key(incident)).or_default();
                record.reopened = Some(record.reopened.map_or(time, |r| r.max(time)));
            }
            DeliveryKind::PipelineFailed {
                pipeline,
                service,
                environment,
            } => match self.settings.deploy_pipelines.get(pipeline).cloned() {
                Some((default_service, default_environment)) => self.add_deployment(
                    id,
                    time,
                    &Deployment {
                        service: service.clone().unwrap_or(default_service),
                        environment: environment.clone().unwrap_or(default_environment),
                        outcome: DeploymentOutcome::Failure,
                        ..Default::default()
                    },
                ),
                None => self.ignored += 1,
            },
            DeliveryKind::Regression(judged) => self.add_verdict(judged),
            DeliveryKind::Other { .. } => self.ignored += 1,
        }
    }

    /// Remembers that `service` belongs to `team` as of `time`: the latest
    /// deployment naming one wins (then the greater name, so the order of
    /// arrival does not matter). At most [`MAX_LEARNED_TEAMS`] distinct
    /// teams are learned; a new one beyond is not.
    fn learn_team(&mut self, service: &str, time: Nanos, team: &str) {
        let old = match self.learned_teams.get_mut(service) {
            Some((t, name)) if (*t, name.as_str()) >= (time, team) => return,
            // The same team again, newer: only its time moves.
            Some((t, name)) if name == team => {
                *t = time;
                return;
            }
            Some((_, name)) => Some(name.clone()),
            None => None,
        };
        if !self.learned_team_sizes.contains_key(team)
            && self.learned_team_sizes.len() >= MAX_LEARNED_TEAMS
        {
            return;
        }
        if let Some(old) = old
            && let Some(size) = self.learned_team_sizes.get_mut(&old)
        {
            *size -= 1;
            if *size == 0 {
                self.learned_team_sizes.remove(&old);
            }
        }
        *self.learned_team_sizes.entry(team.to_string()).or_default() += 1;
        self.learned_teams
            .insert(service.to_string(), (time, team.to_string()));
    }

    /// The earliest commit time among the `n` commits that end at revision
    /// `head`, walking back through the revisions before it (newest
    /// first); none if no commit of theirs has a known time.
    fn first_commit(&self, head: Key, n: u32) -> Option<Nanos> {
        let mut earliest: Option<Nanos> = None;
        let mut left = n as usize;
        let mut next = Some(head);
        let mut visited: KeyMap<()> = KeyMap::default();
        while let Some(revision) = next {
            if left == 0 || visited.insert(revision, ()).is_some() {
                break;
            }
            if let Some((_, commits)) = self.artifact_changes.get(&revision) {
                for commit in commits.iter().rev().take(left) {
                    if let Some(at) = self.changes.get(commit).and_then(|c| c.created) {
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                }
                left = left.saturating_sub(commits.len());
            }
            next = self.revision_parents.get(&revision).copied();
        }
        earliest
    }

    /// Keeps the production deployments applied from now on, for
    /// [`DoraProcessor::take_production_deployments`].
    pub fn keep_production_deployments(&mut self) {
        self.new_production.get_or_insert_with(Vec::new);
    }

    /// The production deployments applied since the last call (and since
    /// [`DoraProcessor::keep_production_deployments`]), with their times.
    pub fn take_production_deployments(&mut self) -> Vec<(Deployment, Nanos)> {
        self.new_production
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn add_deployment(&mut self, id: Key, time: Nanos, d: &Deployment) {
        if let Some(team) = d.team.as_deref().filter(|t| !t.is_empty()) {
            self.learn_team(&d.service, time, team);
        }
        let revision = revision_key(d);
        let name = (d.service.as_str(), d.environment.as_str());
        if let Some(kept) = self.new_production.as_mut()
            && self.settings.production.contains(&d.environment)
        {
            // A report of a deployment another tool reported already is
            // not news (a PagerDuty change event each would be one too many).
            let within = self.settings.deduplicate_within;
            let told = revision != 0
                && within > 0
                && self.series.get(series_name(&name)).is_some_and(|history| {
                    let from = history.partition_point(|r| r.time < time - within);
                    history[from..]
                        .iter()
                        .take_while(|r| r.time <= time + within)
                        .any(|r| r.revision == revision && !r.sources.contains(d.source))
                });
            if !told {
                kept.push((d.clone(), time));
            }
        }
        // Looked up by borrowed names: a new series is the rare case, and
        // an owned key per event was a fifth of a restore's allocations.
        let history = match self.series.get_mut(series_name(&name)) {
            Some(history) => history,
            None => self
                .series
                .entry((d.service.clone(), d.environment.clone()))
                .or_default(),
        };
        let record = DeploymentRecord {
            time,
            order: id as u64,
            outcome: d.outcome,
            artifact: d.artifact.as_deref().map(key),
            changes: d
                .changes
                .iter()
                .map(|c| (key(&c.id), c.time))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            rework: d.rework,
            revision,
            sources: SourceSet::of(d.source),
        };
        // Kept sorted by (time, id) whatever the arrival order; in order
        // (a restore replays sorted history, and deployments mostly come in
        // time order) it is a push, not a search through cold memory.
        let after = |r: &DeploymentRecord| (r.time, r.order) < (record.time, record.order);
        match history.last() {
            Some(last) if !after(last) => {
                let at = history.partition_point(after);
                history.insert(at, record);
            }
            _ => history.push(record),
        }
    }

    /// Every series' figures at `now`.
    pub fn snapshot(&self, now: Nanos) -> DoraSnapshot {
        self.snapshot_with(now, false)
    }

    /// As [`Self::snapshot`], with every window's figures for the window
    /// before it too (`previous`): the trend the report shows. About twice
    /// the work of a snapshot.
    pub fn snapshot_with_trend(&self, now: Nanos) -> DoraSnapshot {
        self.snapshot_with(now, true)
    }

    fn snapshot_with(&self, now: Nanos, trend: bool) -> DoraSnapshot {
        Self::pooled(&[self], now, trend)
    }

    /// The figures of several processors' series together, as one
    /// processor holding them all would give: the state of each Kafka
    /// partition a replica owns is a processor of its own, and its
    /// production figures pool the histories of all of them (quantiles over
    /// every lead and restore time, not a mix of per-part ones). `parts`
    /// share one configuration; an empty slice gives `None`.
    pub fn snapshot_of(parts: &[&DoraProcessor], now: Nanos, trend: bool) -> Option<DoraSnapshot> {
        (!parts.is_empty()).then(|| Self::pooled(parts, now, trend))
    }

    fn pooled(parts: &[&DoraProcessor], now: Nanos, trend: bool) -> DoraSnapshot {
        let mut series = Vec::new();
        let mut histories = Vec::new();
        for part in parts {
            part.series_figures_into(now, trend, &mut series, &mut histories);
        }
        series.sort_by(|a, b| (&a.service, &a.environment).cmp(&(&b.service, &b.environment)));
        let first = parts[0];
        let pooled: Vec<&History> = histories
            .iter()
            .filter(|(_, environment, _)| first.is_production(environment))
            .map(|(_, _, h)| h)
            .collect();
        // A service's team: the configured table, else the latest
        // deployment that named one (in any part).
        let team_of = |service: &str| -> Option<String> {
            if let Some(team) = first.settings.teams.get(service) {
                return Some(team.clone());
            }
            parts
                .iter()
                .filter_map(|p| p.learned_teams.get(service))
                .max()
                .map(|(_, team)| team.clone())
        };
        // Teams and the organisation: the histories of their series pooled.
        // Per group: its services and their histories.
        type Members<'a> = (Vec<&'a str>, Vec<&'a History>);
        let mut teams: BTreeMap<(String, &str), Members> = BTreeMap::new();
        let mut organisation: BTreeMap<&str, Members> = BTreeMap::new();
        for (service, environment, history) in &histories {
            if let Some(team) = team_of(service) {
                let entry = teams.entry((team, environment.as_str())).or_default();
                entry.0.push(service);
                entry.1.push(history);
            }
            let entry = organisation.entry(environment.as_str()).or_default();
            entry.0.push(service);
            entry.1.push(history);
        }
        let group = |team: Option<&str>, environment: &str, services: &[&str], of: &[&History]| {
            let mut services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
            services.sort_unstable();
            services.dedup();
            GroupFigures {
                team: team.map(str::to_string),
                environment: environment.to_string(),
                services,
                windows: first
                    .settings
                    .windows
                    .iter()
                    .map(|(label, length)| first.window_figures(of, label, *length, now, trend))
                    .collect(),
            }
        };
        DoraSnapshot {
            teams: teams
                .iter()
                .map(|((team, environment), (services, of))| {
                    group(Some(team), environment, services, of)
                })
                .collect(),
            organisation: organisation
                .iter()
                .map(|(environment, (services, of))| group(None, environment, services, of))
                .collect(),
            at: now,
            cutoffs: first.settings.cutoffs,
            target_level: first.settings.target_level,
            production: first
                .settings
                .windows
                .iter()
                .map(|(label, length)| first.window_figures(&pooled, label, *length, now, trend))
                .collect(),
            series,
            events_applied: parts.iter().map(|p| p.applied).sum(),
            duplicates: parts.iter().map(|p| p.duplicates).sum(),
            ignored: parts.iter().map(|p| p.ignored).sum(),
            expired: parts.iter().map(|p| p.expired).sum(),
            incidents_filtered_out: parts.iter().map(|p| p.filtered_out()).sum(),
        }
    }

    /// Appends every series' figures to `series`, and its history with its
    /// service and environment to `histories`.
    fn series_figures_into(
        &self,
        now: Nanos,
        trend: bool,
        series: &mut Vec<SeriesFigures>,
        histories: &mut Vec<(String, String, History)>,
    ) {
        let mut incidents_by_series: HashMap<(&str, &str), Vec<&Incident>> = HashMap::new();
        for incident in self.incidents.values().filter(|i| self.counts(i)) {
            if let Some((service, environment)) = &incident.series {
                incidents_by_series
                    .entry((service.as_str(), environment.as_str()))
                    .or_default()
                    .push(incident);
            }
        }
        let mut keys: Vec<(&str, &str)> = self
            .series
            .keys()
            .map(|(s, e)| (s.as_str(), e.as_str()))
            .collect();
        for key in incidents_by_series.keys() {
            if !self.series.contains_key(series_name(key)) {
                keys.push(*key);
            }
        }
        keys.sort_unstable();
        let empty = Vec::new();
        for (service, environment) in keys {
            let deployments = self
                .series
                .get(series_name(&(service, environment)))
                .unwrap_or(&empty);
            let incidents = incidents_by_series
                .get(&(service, environment))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let verdicts = self.verdicts_of((service, environment));
            let history = self.history(deployments, incidents, verdicts);
            let figures = self.series_figures(
                (service, environment),
                incidents,
                &history,
                verdicts,
                now,
                trend,
            );
            histories.push((service.to_string(), environment.to_string(), history));
            series.push(figures);
        }
    }

    /// Production figures per calendar day (in `timezone`) for the last
    /// `days` days, oldest first, the last one today so far: day `k` back
    /// covers `[start, end)` of the local day `k` days before today's. For
    /// the dashboard's trend charts.
    pub fn daily_trend(&self, now: Nanos, days: usize) -> Vec<DayFigures> {
        Self::daily_trend_of(&[self], now, days)
    }

    /// As [`Self::daily_trend`], over several processors' series together
    /// (see [`Self::snapshot_of`]).
    pub fn daily_trend_of(parts: &[&DoraProcessor], now: Nanos, days: usize) -> Vec<DayFigures> {
        let histories: Vec<History> = parts
            .iter()
            .flat_map(|p| p.production_histories())
            .collect();
        let utc = calendar::Calendar::utc();
        let calendar = parts.first().map_or(&utc, |p| &p.settings.calendar);
        let today = calendar.day(now);
        // Which day back a time falls on, if within `days`.
        let slot = |t: Nanos| -> Option<usize> {
            if t > now {
                return None;
            }
            let back = usize::try_from(today - calendar.day(t)).ok()?;
            (back < days).then(|| days - 1 - back)
        };
        let mut out: Vec<DayFigures> = (0..days)
            .map(|i| {
                let day = today - (days - 1 - i) as i64;
                DayFigures {
                    date: calendar.date(day),
                    start: calendar.start(day),
                    end: calendar.start(day + 1).min(now),
                    ..Default::default()
                }
            })
            .collect();
        let mut leads: Vec<Vec<Nanos>> = vec![Vec::new(); days];
        let mut restores: Vec<Vec<Nanos>> = vec![Vec::new(); days];
        let mut counted = vec![0u64; days];
        for h in &histories {
            for d in &h.deployments {
                let Some(i) = slot(d.time) else { continue };
                if d.outcome == DeploymentOutcome::Success {
                    out[i].deployments += 1;
                }
                if d.outcome != DeploymentOutcome::Rollback {
                    counted[i] += 1;
                    out[i].failed_changes += u64::from(d.failed);
                }
            }
            for &(t, l) in &h.lead_times {
                if let Some(i) = slot(t) {
                    leads[i].push(l);
                }
            }
            for &(t, l) in &h.incident_durations {
                if let Some(i) = slot(t) {
                    restores[i].push(l);
                }
            }
        }
        for (i, f) in out.iter_mut().enumerate() {
            f.change_failure_ratio =
                (counted[i] > 0).then(|| f.failed_changes as f64 / counted[i] as f64);
            f.lead_time_p50 = quantiles(leads[i].drain(..)).p50;
            f.time_to_restore_p50 = quantiles(restores[i].drain(..)).p50;
        }
        out
    }

    /// The histories of the production series.
    fn production_histories(&self) -> Vec<History> {
        let mut incidents_by_series: HashMap<(&str, &str), Vec<&Incident>> = HashMap::new();
        for incident in self.incidents.values().filter(|i| self.counts(i)) {
            if let Some((service, environment)) = &incident.series
                && self.is_production(environment)
            {
                incidents_by_series
                    .entry((service.as_str(), environment.as_str()))
                    .or_default()
                    .push(incident);
            }
        }
        let empty = Vec::new();
        let mut keys: Vec<(&str, &str)> = self
            .series
            .keys()
            .filter(|(_, e)| self.is_production(e))
            .map(|(s, e)| (s.as_str(), e.as_str()))
            .collect();
        keys.extend(incidents_by_series.keys().copied());
        keys.sort_unstable();
        keys.dedup();
        keys.iter()
            .map(|&(s, e)| {
                let deployments = self.series.get(series_name(&(s, e))).unwrap_or(&empty);
                let incidents = incidents_by_series
                    .get(&(s, e))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                self.history(deployments, incidents, self.verdicts_of((s, e)))
            })
            .collect()
    }

    /// The deployments with the reports of one deployment by several tools
    /// merged: records of one commit from sources not yet in its group (or
    /// from one that reported the same instant), within
    /// `deduplicate_within` of the group's first, are one deployment
    /// (the first's time, every source, the worst outcome: failure, then
    /// rollback, then success; the first artifact named; every linked
    /// change; of the artifacts, one that links changes). Decided on the sorted history, so the order of arrival
    /// does not matter; without any such reports, nothing is copied.
    fn merge_reports<'a>(
        &self,
        deployments: &'a [DeploymentRecord],
    ) -> std::borrow::Cow<'a, [DeploymentRecord]> {
        use std::borrow::Cow;
        let within = self.settings.deduplicate_within;
        if within <= 0 {
            return Cow::Borrowed(deployments);
        }
        // Per record, the first record of the group it joined (allocated at
        // the first report merged: most series have none). Reports of one
        // deployment lie within `within` of each other and the history is
        // sorted, so each record looks back only that far: no table, and
        // next to no work for deployments spaced wider than `within`.
        let mut joined: Vec<Option<usize>> = Vec::new();
        for (i, d) in deployments.iter().enumerate() {
            if d.revision == 0 {
                continue;
            }
            let near = || {
                (0..i)
                    .rev()
                    .take_while(|&j| d.time - deployments[j].time <= within)
            };
            let group_of = |j: usize| joined.get(j).copied().flatten().unwrap_or(j);
            // The latest group of this commit within reach.
            let Some(first) = near()
                .find(|&j| deployments[j].revision == d.revision)
                .map(group_of)
            else {
                continue;
            };
            // A tool new to the group, or one reporting the same instant
            // again (Argo CD's degraded health of a sync it reported
            // deployed): the same deployment.
            let fits = d.time - deployments[first].time <= within
                && near().filter(|&j| group_of(j) == first).all(|j| {
                    !deployments[j].sources.meets(d.sources) || deployments[j].time == d.time
                });
            if fits {
                if joined.is_empty() {
                    joined = vec![None; deployments.len()];
                }
                joined[i] = Some(first);
            }
        }
        if joined.is_empty() {
            return Cow::Borrowed(deployments);
        }
        let rank = |o: DeploymentOutcome| match o {
            DeploymentOutcome::Failure => 2,
            DeploymentOutcome::Rollback => 1,
            DeploymentOutcome::Success => 0,
        };
        // Index in `out` of each group's first record.
        let mut at: Vec<usize> = vec![usize::MAX; deployments.len()];
        let mut out: Vec<DeploymentRecord> = Vec::with_capacity(deployments.len());
        for (i, d) in deployments.iter().enumerate() {
            let Some(first) = joined[i] else {
                at[i] = out.len();
                out.push(d.clone());
                continue;
            };
            let group = &mut out[at[first]];
            group.sources = group.sources.union(d.sources);
            if rank(d.outcome) > rank(group.outcome) {
                group.outcome = d.outcome;
            }
            // The artifact that links changes wins (a GitOps tool's may
            // name the repository in a form no push did).
            let linked = |a: Option<Key>| a.is_some_and(|a| self.artifact_changes.contains_key(&a));
            if d.artifact.is_some()
                && (group.artifact.is_none() || (!linked(group.artifact) && linked(d.artifact)))
            {
                group.artifact = d.artifact;
            }
            group.rework |= d.rework;
            if !d.changes.is_empty() {
                let mut changes = group.changes.to_vec();
                for change in d.changes.iter() {
                    if !changes.iter().any(|c| c.0 == change.0) {
                        changes.push(*change);
                    }
                }
                group.changes = changes.into_boxed_slice();
            }
        }
        Cow::Owned(out)
    }

    /// The regression check's verdicts of a series, by deployment time.
    fn verdicts_of(&self, name: (&str, &str)) -> &[VerdictRecord] {
        self.verdicts
            .get(series_name(&name))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The deployment of `deployments` (sorted, reports merged) a verdict
    /// or incident naming the deployment of `at` belongs to: the latest at
    /// or before it, if no further back than `deduplicate_within` (its
    /// report was merged into an earlier one's).
    fn deployment_at(&self, deployments: &[DeploymentRecord], at: Nanos) -> Option<usize> {
        let i = deployments
            .partition_point(|d| d.time <= at)
            .checked_sub(1)?;
        (at - deployments[i].time <= self.settings.deduplicate_within.max(0)).then_some(i)
    }

    /// What one series' history says, before any window is applied.
    fn history(
        &self,
        deployments: &[DeploymentRecord],
        incidents: &[&Incident],
        verdicts: &[VerdictRecord],
    ) -> History {
        let merged = self.merge_reports(deployments);
        let deployments: &[DeploymentRecord] = &merged;
        let counted = |d: &DeploymentRecord| d.outcome != DeploymentOutcome::Rollback;
        let failure_window = self.settings.failure_window;

        // Which deployments are failed changes, why, and the incidents that
        // made them so (with whether they named the artifact).
        let mut reasons: Vec<Option<FailureReason>> = deployments
            .iter()
            .map(|d| {
                (d.outcome == DeploymentOutcome::Failure).then_some(FailureReason::DeploymentFailed)
            })
            .collect();
        let mut rolled_back_by: Vec<Option<usize>> = vec![None; deployments.len()];
        let mut failing_incidents: Vec<Vec<(&Incident, bool)>> =
            vec![Vec::new(); deployments.len()];
        // The regression check's verdicts, each on its deployment.
        let mut judged: Vec<Option<u32>> = vec![None; deployments.len()];
        for (v, verdict) in verdicts.iter().enumerate() {
            if let Some(i) = self.deployment_at(deployments, verdict.deployed_at)
                && judged[i].is_none()
            {
                judged[i] = Some(v as u32);
                if verdict.verdict == Verdict::Regression && counted(&deployments[i]) {
                    strongest(&mut reasons[i], FailureReason::Regression);
                }
            }
        }
        for (i, d) in deployments.iter().enumerate().skip(1) {
            if d.outcome == DeploymentOutcome::Rollback && counted(&deployments[i - 1]) {
                strongest(&mut reasons[i - 1], FailureReason::RolledBack);
                rolled_back_by[i - 1] = Some(i);
            }
        }
        for incident in incidents {
            let Some(opened) = incident.opened else {
                continue;
            };
            // An incident doraflow opened for a regression is its
            // deployment's, and only its.
            if let Some(at) = incident.details.deployed_at {
                if let Some(i) = self.deployment_at(deployments, at)
                    && counted(&deployments[i])
                {
                    strongest(&mut reasons[i], FailureReason::Regression);
                    failing_incidents[i].push((incident, false));
                }
                continue;
            }
            // Deployments up to the incident: binary search, the history is sorted.
            let up_to = deployments.partition_point(|d| d.time <= opened);
            let by_artifact = incident.artifact.and_then(|artifact| {
                deployments[..up_to]
                    .iter()
                    .rposition(|d| d.artifact == Some(artifact))
            });
            let before = deployments.partition_point(|d| d.time < opened);
            let target = by_artifact.or(before.checked_sub(1));
            if let Some(i) = target
                && counted(&deployments[i])
                && opened - deployments[i].time <= failure_window
            {
                let named = by_artifact == Some(i);
                strongest(
                    &mut reasons[i],
                    if named {
                        FailureReason::IncidentArtifact
                    } else {
                        FailureReason::IncidentWindow
                    },
                );
                failing_incidents[i].push((incident, named));
            }
        }
        let failed: Vec<bool> = reasons.iter().map(Option::is_some).collect();

        // Rework: marked so, or (as configured) the next deployment after an
        // incident of the series opened, while it is still open: the fix.
        let mut rework: Vec<bool> = deployments.iter().map(|d| d.rework && counted(d)).collect();
        if self.settings.rework_after_incident {
            for incident in incidents {
                let Some(opened) = incident.opened else {
                    continue;
                };
                let restored = incident.restored();
                let next = deployments.partition_point(|d| d.time <= opened);
                if let Some(i) = (next..deployments.len()).find(|&i| counted(&deployments[i]))
                    && restored.is_none_or(|r| deployments[i].time < r)
                {
                    rework[i] = true;
                }
            }
        }

        // First successful deployment of each change, with its lead time.
        // Change → (first deployed, started, merged).
        let mut first_deployed: KeyMap<(Nanos, Option<Nanos>, Option<Nanos>)> = KeyMap::default();
        // Revisions whose changes an earlier deployment of the series
        // already took (with their ancestors): the walk stops there, so each
        // revision is read once per series however long the history.
        let mut reached: KeyMap<()> = KeyMap::default();
        let mut artifacts: Vec<Key> = Vec::new();
        for (index, d) in deployments
            .iter()
            .enumerate()
            .filter(|(_, d)| d.outcome == DeploymentOutcome::Success)
        {
            artifacts.clear();
            let mut next = d.artifact;
            while let Some(artifact) = next {
                if self.revision_parents.is_empty() {
                    // No revision graph (CDEvents artifacts only): no walk.
                    artifacts.push(artifact);
                    break;
                }
                if reached.insert(artifact, ()).is_some() {
                    break;
                }
                artifacts.push(artifact);
                next = self.revision_parents.get(&artifact).copied();
            }
            let via_artifact = artifacts
                .iter()
                .filter_map(|a| self.artifact_changes.get(a))
                .flat_map(|(_, changes)| changes)
                .map(|&change| (change, None));
            for (change, linked_time) in d.changes.iter().copied().chain(via_artifact) {
                // Only a change's first deployment counts: what a later one
                // would compute (a first-commit walk among it) is skipped.
                let std::collections::hash_map::Entry::Vacant(slot) = first_deployed.entry(change)
                else {
                    continue;
                };
                let times = self.changes.get(&change);
                let known = times.and_then(|c| {
                    let first = c
                        .first_commit_of
                        .and_then(|(head, n)| self.first_commit(head, n));
                    match (c.time(), first) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                });
                let started = match (linked_time, known) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                slot.insert((d.time, started, times.and_then(|c| c.merged)));
                // A change labelled rework (a hotfix pull request) makes the
                // deployment that first carries it rework.
                if times.is_some_and(|c| c.rework) {
                    rework[index] = true;
                }
            }
        }
        let mut lead_times: Vec<(Nanos, Nanos)> = first_deployed
            .values()
            .filter_map(|&(deployed, started, _)| {
                started.map(|s| (deployed, (deployed - s).max(0)))
            })
            .collect();
        lead_times.sort_unstable();
        // Before and after the merge, for changes whose merge is known and
        // falls between their start and their deployment.
        let mut merge_waits: Vec<(Nanos, Nanos, Nanos)> = first_deployed
            .values()
            .filter_map(|&(deployed, started, merged)| {
                let (started, merged) = (started?, merged?);
                (started <= merged && merged <= deployed).then_some((
                    deployed,
                    merged - started,
                    deployed - merged,
                ))
            })
            .collect();
        merge_waits.sort_unstable();

        let mut incident_durations: Vec<(Nanos, Nanos)> = incidents
            .iter()
            .filter_map(|i| match (i.opened, i.restored()) {
                (Some(o), Some(r)) => Some((r, (r - o).max(0))),
                _ => None,
            })
            .collect();
        incident_durations.sort_unstable();

        // Restore time of each failed deployment.
        let recovery: Vec<(Nanos, Nanos)> = deployments
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                if !(failed[i] && counted(d)) {
                    return None;
                }
                let next_good = deployments[i + 1..]
                    .iter()
                    .find(|n| n.outcome != DeploymentOutcome::Failure)
                    .map(|n| n.time);
                let resolved = if failing_incidents[i].is_empty() {
                    None
                } else {
                    failing_incidents[i]
                        .iter()
                        .map(|(inc, _)| inc.restored())
                        .collect::<Option<Vec<_>>>()
                        .and_then(|times| times.into_iter().max())
                };
                let restored = match (next_good, resolved) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }?;
                Some((d.time, (restored - d.time).max(0)))
            })
            .collect();
        History {
            deployments: deployments
                .iter()
                .enumerate()
                .zip(reasons)
                .zip(rework)
                .map(|(((i, d), reason), rework)| {
                    let reason = reason.filter(|_| counted(d));
                    let evidence = reason.map(|_| {
                        Box::new(Evidence {
                            rollback: rolled_back_by[i].map(|r| RollbackEvidence {
                                at: deployments[r].time,
                                sources: deployments[r].sources.names(),
                            }),
                            incidents: failing_incidents[i]
                                .iter()
                                .map(|(incident, named)| IncidentEvidence {
                                    id: incident.name.as_deref().unwrap_or_default().to_string(),
                                    source: incident.details.source.as_str(),
                                    opened: incident.opened.unwrap_or_default(),
                                    named_the_artifact: *named,
                                })
                                .collect(),
                            regression: judged[i]
                                .map(|v| RegressionCheck::from(&verdicts[v as usize]))
                                .filter(|c| c.verdict == Verdict::Regression),
                        })
                    });
                    Deployed {
                        time: d.time,
                        outcome: d.outcome,
                        failed: reason.is_some(),
                        rework,
                        reason,
                        sources: d.sources,
                        evidence,
                        verdict: judged[i],
                    }
                })
                .collect(),
            lead_times,
            merge_waits,
            incident_durations,
            recovery,
        }
    }

    /// The figures of `histories` pooled (one series, or every production
    /// series) over the window `(now - length, now]`, and with `trend` the
    /// window before it too.
    fn window_figures(
        &self,
        histories: &[&History],
        label: &str,
        length: Nanos,
        now: Nanos,
        trend: bool,
    ) -> WindowFigures {
        let start = now - length;
        let inside = |t: Nanos| t > start && t <= now;
        let mut deployed = 0;
        let mut failed_deployments = 0;
        let mut rollbacks = 0;
        let mut counted_in = 0;
        let mut failed_in = 0;
        let mut rework_in = 0;
        let mut causes = FailureCauses::default();
        // The calendar day (0 today) of each successful deployment.
        let calendar = &self.settings.calendar;
        let today = calendar.day(now);
        let mut deployed_days = Vec::new();
        for d in histories.iter().flat_map(|h| &h.deployments) {
            if !inside(d.time) {
                continue;
            }
            match d.outcome {
                DeploymentOutcome::Success => {
                    deployed += 1;
                    deployed_days.push((today - calendar.day(d.time)) as usize);
                }
                DeploymentOutcome::Failure => failed_deployments += 1,
                DeploymentOutcome::Rollback => rollbacks += 1,
            }
            if d.outcome != DeploymentOutcome::Rollback {
                counted_in += 1;
                failed_in += u64::from(d.failed);
                rework_in += u64::from(d.rework);
                match d.reason {
                    Some(FailureReason::RolledBack) => causes.rolled_back += 1,
                    Some(FailureReason::DeploymentFailed) => causes.deployment_failed += 1,
                    Some(FailureReason::Regression) => causes.regression += 1,
                    Some(FailureReason::IncidentArtifact | FailureReason::IncidentWindow) => {
                        causes.incident += 1
                    }
                    None => {}
                }
            }
        }
        let pooled = |pick: fn(&History) -> &[(Nanos, Nanos)]| {
            quantiles(
                histories
                    .iter()
                    .flat_map(|h| pick(h))
                    .filter(|(t, _)| inside(*t))
                    .map(|&(_, l)| l),
            )
        };
        let days = length as f64 / (86_400.0 * NS_PER_SEC);
        let frequency = deployed as f64 / days;
        let lead_time = pooled(|h| &h.lead_times);
        let waits = |pick: fn(&(Nanos, Nanos, Nanos)) -> Nanos| {
            quantiles(
                histories
                    .iter()
                    .flat_map(|h| &h.merge_waits)
                    .filter(|w| inside(w.0))
                    .map(pick),
            )
        };
        let before_merge = waits(|w| w.1);
        let after_merge = waits(|w| w.2);
        let time_to_restore = pooled(|h| &h.incident_durations);
        let failed_deployment_recovery = pooled(|h| &h.recovery);
        let change_failure_ratio = (counted_in > 0).then(|| failed_in as f64 / counted_in as f64);
        let rework_ratio = (counted_in > 0).then(|| rework_in as f64 / counted_in as f64);
        let cutoffs = &self.settings.cutoffs;
        WindowFigures {
            window: label.to_string(),
            deployments: deployed,
            failed_deployments,
            rollbacks,
            deployment_frequency_per_day: frequency,
            // Over the calendar days the window touches (today's and the
            // first one's in part).
            deployment_frequency_answer: levels::FrequencyAnswer::of_days(
                deployed_days.into_iter(),
                (today - calendar.day(start + 1) + 1) as usize,
            ),
            levels: MetricLevels {
                deployment_frequency: Some(cutoffs.deployment_frequency(frequency)),
                lead_time: lead_time.p50.map(|s| cutoffs.lead_time(s)),
                change_failure_rate: change_failure_ratio.map(|r| cutoffs.change_failure_rate(r)),
                time_to_restore: time_to_restore.p50.map(|s| cutoffs.time_to_restore(s)),
            },
            lead_time,
            lead_time_before_merge: before_merge,
            lead_time_after_merge: after_merge,
            change_failure_ratio,
            failed_changes: failed_in,
            rework_ratio,
            rework_deployments: rework_in,
            failed_by_cause: causes,
            time_to_restore,
            failed_deployment_recovery,
            previous: trend
                .then(|| Box::new(self.window_figures(histories, label, length, start, false))),
        }
    }

    fn series_figures(
        &self,
        (service, environment): (&str, &str),
        incidents: &[&Incident],
        history: &History,
        verdicts: &[VerdictRecord],
        now: Nanos,
        trend: bool,
    ) -> SeriesFigures {
        let windows = self
            .settings
            .windows
            .iter()
            .map(|(label, length)| self.window_figures(&[history], label, *length, now, trend))
            .collect();
        let longest = self
            .settings
            .windows
            .iter()
            .map(|(_, l)| *l)
            .max()
            .unwrap_or(0);
        let recent_failed_changes = history
            .deployments
            .iter()
            .rev()
            .filter(|d| d.failed && d.time > now - longest && d.time <= now)
            .take(RECENT_FAILED_CHANGES)
            .filter_map(|d| {
                let reason = d.reason?;
                Some(FailedChange {
                    at: d.time,
                    outcome: d.outcome.as_str(),
                    cause: reason.cause(),
                    reason,
                    sources: d.sources.names(),
                    evidence: d.evidence.as_deref().cloned().unwrap_or_default(),
                })
            })
            .collect();
        let recent_deployments = history
            .deployments
            .iter()
            .rev()
            .filter(|d| d.time > now - longest && d.time <= now)
            .take(RECENT_FAILED_CHANGES)
            .map(|d| RecentDeployment {
                at: d.time,
                outcome: d.outcome.as_str(),
                sources: d.sources.names(),
                failed: d.reason,
                regression: d
                    .verdict
                    .map(|v| RegressionCheck::from(&verdicts[v as usize])),
            })
            .collect();

        let baseline = self
            .baselines
            .get(&(service.to_string(), environment.to_string()));
        let mut deployments_total = BTreeMap::new();
        for outcome in [
            DeploymentOutcome::Success,
            DeploymentOutcome::Failure,
            DeploymentOutcome::Rollback,
        ] {
            let pruned = baseline
                .and_then(|b| b.deployments.get(outcome.as_str()))
                .copied()
                .unwrap_or(0);
            deployments_total.insert(
                outcome.as_str(),
                pruned
                    + history
                        .deployments
                        .iter()
                        .filter(|d| d.outcome == outcome)
                        .count() as u64,
            );
        }
        let mut failed_changes_by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for reason in history.deployments.iter().filter_map(|d| d.reason) {
            *failed_changes_by_reason.entry(reason.as_str()).or_default() += 1;
        }
        if let Some(b) = baseline {
            for (reason, count) in &b.failed_by_reason {
                *failed_changes_by_reason.entry(reason).or_default() += count;
            }
            let attributed: u64 = b.failed_by_reason.values().sum();
            if b.failed_changes > attributed {
                *failed_changes_by_reason.entry("unattributed").or_default() +=
                    b.failed_changes - attributed;
            }
        }
        let mut lead_histogram = HistogramCounts::new(&LEAD_TIME_BUCKETS);
        for &(_, lead) in &history.lead_times {
            lead_histogram.observe(&LEAD_TIME_BUCKETS, lead as f64 / NS_PER_SEC);
        }
        let mut incident_histogram = HistogramCounts::new(&INCIDENT_BUCKETS);
        for &(_, duration) in &history.incident_durations {
            incident_histogram.observe(&INCIDENT_BUCKETS, duration as f64 / NS_PER_SEC);
        }
        if let Some(b) = baseline {
            lead_histogram.add(&b.lead_times);
            incident_histogram.add(&b.incident_durations);
        }
        let open: Vec<Nanos> = incidents
            .iter()
            .filter(|i| i.opened.is_some_and(|o| o <= now) && i.restored().is_none_or(|r| r > now))
            .filter_map(|i| i.opened)
            .collect();
        SeriesFigures {
            service: service.to_string(),
            environment: environment.to_string(),
            production: self.is_production(environment),
            windows,
            open_incidents: open.len() as u64,
            oldest_open_incident: open.iter().min().copied(),
            recent_failed_changes,
            recent_deployments,
            deployments_total,
            failed_changes_total: baseline.map_or(0, |b| b.failed_changes)
                + history.deployments.iter().filter(|d| d.failed).count() as u64,
            failed_changes_by_reason,
            lead_times: lead_histogram,
            incident_durations: incident_histogram,
        }
    }

    /// Whether `incident` counts: it affects a series and passes its
    /// source's filter (`incident_filters`).
    fn counts(&self, incident: &Incident) -> bool {
        self.settings.incident_filters[incident.details.source as usize]
            .as_ref()
            .is_none_or(|filter| filter.admits(&incident.details))
    }

    /// Incidents that affect a series but do not count.
    fn filtered_out(&self) -> u64 {
        self.incidents
            .values()
            .filter(|i| i.series.is_some() && !self.counts(i))
            .count() as u64
    }

    fn is_production(&self, environment: &str) -> bool {
        self.settings.production.iter().any(|p| p == environment)
    }

    /// How often [`Self::prune`] is worth running: a sixtieth of the
    /// retention, between 10 s and an hour, so that what is kept overshoots
    /// the retention by under 2% (an hour on the default 90 days) and memory
    /// under a steady load stays flat.
    pub fn prune_interval(&self) -> std::time::Duration {
        let retention = std::time::Duration::from_nanos(self.settings.retention.max(0) as u64);
        (retention / 60).clamp(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(3_600),
        )
    }

    /// Forgets history older than the retention (`now - retention`):
    /// deployments, resolved incidents, changes, artifact links and event ids.
    /// The counters and histograms keep what was forgotten in a per-series
    /// baseline; events older than the cut-off are dropped from then on.
    /// Returns the deployments forgotten.
    pub fn prune(&mut self, now: Nanos) -> usize {
        let cutoff = now.saturating_sub(self.settings.retention);
        if cutoff <= self.horizon {
            return 0;
        }
        let before = self.snapshot(now);
        let mut forgotten = 0;
        for history in self.series.values_mut() {
            let keep_from = history.partition_point(|d| d.time < cutoff);
            forgotten += keep_from;
            history.drain(..keep_from);
            history.shrink_to_fit();
        }
        self.series.retain(|_, history| !history.is_empty());
        self.prune_verdicts(cutoff);
        self.incidents.retain(|_, i| {
            i.restored().is_none_or(|r| r >= cutoff)
                && (i.opened.is_some() || i.restored().is_some_and(|r| r >= cutoff))
        });
        self.changes
            .retain(|_, c| c.created.max(c.merged).is_some_and(|t| t >= cutoff));
        self.artifact_changes
            .retain(|_, (linked, _)| *linked >= cutoff);
        let artifacts = &self.artifact_changes;
        self.revision_parents
            .retain(|revision, _| artifacts.contains_key(revision));
        match self.forgotten.as_mut() {
            Some(forgotten) => self.seen.retain(|id, time| {
                let keep = *time >= cutoff;
                if !keep {
                    forgotten.push(*id);
                }
                keep
            }),
            None => self.seen.retain(|_, time| *time >= cutoff),
        }
        self.horizon = cutoff;
        let after = self.snapshot(now);
        for series in &before.series {
            let remaining = after
                .series
                .iter()
                .find(|s| s.service == series.service && s.environment == series.environment);
            let baseline = self
                .baselines
                .entry((series.service.clone(), series.environment.clone()))
                .or_insert_with(|| Baseline {
                    lead_times: HistogramCounts::new(&LEAD_TIME_BUCKETS),
                    incident_durations: HistogramCounts::new(&INCIDENT_BUCKETS),
                    ..Baseline::default()
                });
            for (outcome, total) in &series.deployments_total {
                let left = remaining.map_or(0, |r| r.deployments_total[outcome]);
                *baseline.deployments.entry(outcome).or_default() += total.saturating_sub(left);
            }
            let left = remaining.map_or(0, |r| r.failed_changes_total);
            baseline.failed_changes += series.failed_changes_total.saturating_sub(left);
            for (reason, total) in &series.failed_changes_by_reason {
                if *reason == "unattributed" {
                    continue;
                }
                let left = remaining
                    .and_then(|r| r.failed_changes_by_reason.get(reason))
                    .copied()
                    .unwrap_or(0);
                *baseline.failed_by_reason.entry(reason).or_default() += total.saturating_sub(left);
            }
            let empty_lead = HistogramCounts::new(&LEAD_TIME_BUCKETS);
            let empty_incident = HistogramCounts::new(&INCIDENT_BUCKETS);
            baseline.lead_times.add(
                &series
                    .lead_times
                    .minus(remaining.map_or(&empty_lead, |r| &r.lead_times)),
            );
            baseline.incident_durations.add(
                &series
                    .incident_durations
                    .minus(remaining.map_or(&empty_incident, |r| &r.incident_durations)),
            );
        }
        forgotten
    }

    /// What the alert rules read, per series, at `now`: the oldest incident
    /// still open and the latest deployment (whether its outcome was failure).
    pub fn alert_facts(
        &self,
        now: Nanos,
    ) -> BTreeMap<(String, String), crate::processors::alerts::Facts> {
        let mut facts: BTreeMap<(String, String), crate::processors::alerts::Facts> =
            BTreeMap::new();
        for (key, history) in &self.series {
            if let Some(latest) = history.iter().rev().find(|d| d.time <= now) {
                facts.entry(key.clone()).or_default().latest_deployment =
                    Some((latest.time, latest.outcome == DeploymentOutcome::Failure));
            }
        }
        for incident in self.incidents.values().filter(|i| self.counts(i)) {
            let (Some(series), Some(opened)) = (&incident.series, incident.opened) else {
                continue;
            };
            if opened <= now && incident.restored().is_none_or(|r| r > now) {
                let oldest = &mut facts
                    .entry(series.clone())
                    .or_default()
                    .oldest_open_incident;
                *oldest = Some(oldest.map_or(opened, |o| o.min(opened)));
            }
        }
        facts
    }

    /// How often [`DoraProcessor::observe_errors`] and
    /// [`DoraProcessor::check_regressions`] want to be called, if incidents
    /// are derived or deployments judged at all.
    pub fn derived_interval(&self) -> Option<std::time::Duration> {
        let d = &self.settings.derived;
        (d.enabled || self.checks_regressions()).then(|| d.evaluation_interval.get())
    }

    /// Derives incidents from the services' error ratios at `now`: opens one
    /// when a ratio exceeds the threshold (with enough requests), resolves it
    /// once the ratio has stayed at or below it for `resolve_after`, as of
    /// the moment it went back below. Returns the events applied.
    pub fn observe_errors(
        &mut self,
        health: &[SeriesErrors],
        now: Nanos,
    ) -> Vec<crate::cdevents::DerivedIncident> {
        let settings = &self.settings.derived;
        if !settings.enabled {
            return Vec::new();
        }
        let resolve_after = settings.resolve_after.get().as_nanos() as Nanos;
        let mut events = Vec::new();
        let mut derived = Vec::new();
        for series in health {
            let breach = series.requests >= settings.min_requests
                && series.errors as f64 > settings.error_ratio_threshold * series.requests as f64;
            let quiet = breach && self.regression_quiets(&series.service, &series.environment, now);
            let key = (series.service.clone(), series.environment.clone());
            let state = self.derived.entry(key).or_default();
            match (&state.open, breach) {
                // A regression's incident is this outage's already.
                (None, true) if quiet => {}
                (None, true) => {
                    let incident =
                        format!("derived:{}:{}:{now}", series.service, series.environment);
                    events.push(DeliveryEvent {
                        id: format!("{incident}:opened"),
                        time: now,
                        kind: DeliveryKind::IncidentOpened {
                            incident: incident.clone(),
                            service: series.service.clone(),
                            environment: series.environment.clone(),
                            artifact: None,
                            details: crate::model::delivery::IncidentDetails {
                                source: crate::model::delivery::Source::Doraflow,
                                ..Default::default()
                            },
                        },
                    });
                    state.open = Some(incident);
                    state.below_since = None;
                    derived.push(series);
                }
                (Some(_), true) => state.below_since = None,
                (Some(incident), false) => {
                    let since = *state.below_since.get_or_insert(now);
                    if now - since >= resolve_after {
                        events.push(DeliveryEvent {
                            id: format!("{incident}:resolved"),
                            time: since,
                            kind: DeliveryKind::IncidentResolved {
                                incident: incident.clone(),
                            },
                        });
                        state.open = None;
                        state.below_since = None;
                        derived.push(series);
                    }
                }
                (None, false) => {}
            }
        }
        self.apply(&events);
        events
            .into_iter()
            .zip(derived)
            .map(|(event, series)| crate::cdevents::DerivedIncident {
                event,
                service: series.service.clone(),
                environment: series.environment.clone(),
            })
            .collect()
    }

    /// Series with deployments.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

/// Count, mean and p50/p95 of durations in nanoseconds, all exact: the
/// history is kept anyway, so sorting it beats a histogram's approximation.
/// A quantile q is the nearest-rank one: the smallest value with at least
/// q × count values at or below it (as HDR histograms define it).
fn quantiles(durations: impl Iterator<Item = Nanos>) -> Quantiles {
    let mut values: Vec<Nanos> = durations.collect();
    if values.is_empty() {
        return Quantiles::default();
    }
    values.sort_unstable();
    let count = values.len();
    // An integer sum is exact, so the mean cannot depend on the order.
    let sum: i128 = values.iter().map(|&v| i128::from(v)).sum();
    let at = |q: f64| {
        let rank = ((q * count as f64).ceil() as usize).clamp(1, count);
        values[rank - 1] as f64 / NS_PER_SEC
    };
    Quantiles {
        count: count as u64,
        mean: Some(sum as f64 / NS_PER_SEC / count as f64),
        p50: Some(at(0.5)),
        p95: Some(at(0.95)),
    }
}

#[cfg(test)]
mod attribution_tests;
#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod tests;
