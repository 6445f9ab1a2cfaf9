//! Delivery events: deployments, changes, artifacts and incidents, from
//! CDEvents (v0.4 and v0.5) or OTLP deployment log records, reduced to what
//! the `dora` processor reads.

/// Nanoseconds since the Unix epoch (signed, so differences are plain).
pub type Nanos = i64;

/// One delivery event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    /// The producer's event id (CDEvents `context.id`): the de-duplication key.
    pub id: String,
    /// When it happened (CDEvents `context.timestamp`).
    pub time: Nanos,
    /// What happened.
    pub kind: DeliveryKind,
}

/// What a delivery event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A deployment of a service to an environment (`service.deployed`,
    /// `service.upgraded`, `service.rolledback`, a failed deploy pipeline, an
    /// OTLP deployment log record).
    Deployment(Deployment),
    /// A change was created or merged (`change.created`, `change.merged`).
    Change {
        /// The change's id (`subject.id`).
        change: String,
        /// Created or merged.
        stage: ChangeStage,
    },
    /// An artifact was built from a change (`artifact.packaged`, `artifact.published`).
    ArtifactLink {
        /// The artifact's id (`subject.id`).
        artifact: String,
        /// The change it contains (`content.change.id`).
        change: String,
    },
    /// A source revision and the commits it brought, from a push (GitHub,
    /// GitLab) or a `change.merged` CDEvent with `customData.revision`. A
    /// deployment naming the revision as its artifact deploys these
    /// changes and, through `parent`, those of the revisions before it.
    Revision {
        /// The revision's id (e.g. `pkg:github/owner/repo@<sha>`).
        revision: String,
        /// The revision it follows (the push's `before`), if known.
        parent: Option<String>,
        /// The commits it added, with their times.
        changes: Vec<LinkedChange>,
    },
    /// A change (a merged pull request's merge commit) whose work began
    /// with the first of the `commits` commits that end at revision `head`
    /// (the pull request's branch, as pushed): `change.merged` with
    /// `customData.firstCommitOf`.
    ChangeFromCommits {
        /// The change's id (the merge commit).
        change: String,
        /// The revision its commits end at (the pull request's head).
        head: String,
        /// How many commits it has.
        commits: u32,
    },
    /// A change labelled rework (a pull or merge request with a hotfix
    /// label): the deployment that first carries it is rework.
    /// `change.updated` with `customData.rework: true`.
    ChangeRework {
        /// The change's id.
        change: String,
    },
    /// An incident opened (`incident.detected`, `incident.reported`).
    IncidentOpened {
        /// The incident's id (`subject.id`).
        incident: String,
        /// Service it affects.
        service: String,
        /// Environment it affects.
        environment: String,
        /// The artifact it names, if any.
        artifact: Option<String>,
        /// Where it came from and how grave it is: what the incident
        /// filters (`processors.dora.incident_filters`) read.
        details: IncidentDetails,
    },
    /// An incident was resolved (`incident.resolved`).
    IncidentResolved {
        /// The incident's id (`subject.id`).
        incident: String,
    },
    /// A resolved incident opened again (PagerDuty's `incident.reopened`;
    /// `incident.reported` with `customData.reopened: true`): service was
    /// not restored by the resolution before it.
    IncidentReopened {
        /// The incident's id (`subject.id`).
        incident: String,
    },
    /// A deploy pipeline run failed (`pipelinerun.finished` with outcome `failure`);
    /// the processor decides whether the pipeline is a deploy pipeline.
    PipelineFailed {
        /// `content.pipelineName`.
        pipeline: String,
        /// `customData.service`, if the producer sent it.
        service: Option<String>,
        /// `customData.environment`, if the producer sent it.
        environment: Option<String>,
    },
    /// doraflow's verdict on a production deployment: the service's health
    /// after it against before it (`processors.dora.regression`).
    Regression(Box<Judged>),
    /// Any other type: accepted and counted, otherwise ignored.
    Other {
        /// `<subject>.<predicate>`, e.g. `build.started`.
        event_type: String,
    },
}

/// The stage of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeStage {
    /// `change.created`: work started.
    Created,
    /// `change.merged`.
    Merged,
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deployment {
    /// The service (last `/`-separated segment of its id).
    pub service: String,
    /// The environment (`content.environment.id`).
    pub environment: String,
    /// The artifact deployed (`content.artifactId`), if named.
    pub artifact: Option<String>,
    /// Success, failure or rollback.
    pub outcome: DeploymentOutcome,
    /// Changes the producer linked directly (`customData.changes`).
    pub changes: Vec<LinkedChange>,
    /// Marked as rework by its producer (`customData.rework: true`, a
    /// native source's hotfix rule): unplanned, made because of an incident.
    pub rework: bool,
    /// The team its producer names (`customData.team`), if any.
    pub team: Option<String>,
    /// The source revision deployed (a commit id), if known: with the
    /// service and environment, what tells that two reports from two tools
    /// are one deployment.
    pub revision: Option<String>,
    /// Which tool reported it.
    pub source: Source,
}

/// The tool that reported a delivery event: the provenance the report and
/// `/api/v1/dora` give for each failed change, and what incident filters
/// are keyed by. Native sources say so in the CDEvents they emit
/// (`customData.source`), so the name survives the Kafka hop; any other
/// CDEvent is `cdevents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Source {
    /// A CDEvent from any producer.
    #[default]
    Cdevents,
    /// An OTLP deployment log record.
    Otlp,
    /// The GitHub webhook source.
    Github,
    /// The GitLab webhook source.
    Gitlab,
    /// Argo CD notifications.
    Argocd,
    /// Flux's notification-controller.
    Flux,
    /// PagerDuty webhooks.
    Pagerduty,
    /// Alertmanager webhooks.
    Alertmanager,
    /// doraflow itself: incidents derived from the error ratio, regressions.
    Doraflow,
}

impl Source {
    /// Every source, in order.
    pub const ALL: [Source; 9] = [
        Source::Cdevents,
        Source::Otlp,
        Source::Github,
        Source::Gitlab,
        Source::Argocd,
        Source::Flux,
        Source::Pagerduty,
        Source::Alertmanager,
        Source::Doraflow,
    ];

    /// Its name, as in `customData.source`, the configuration and the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Cdevents => "cdevents",
            Source::Otlp => "otlp",
            Source::Github => "github",
            Source::Gitlab => "gitlab",
            Source::Argocd => "argocd",
            Source::Flux => "flux",
            Source::Pagerduty => "pagerduty",
            Source::Alertmanager => "alertmanager",
            Source::Doraflow => "doraflow",
        }
    }

    /// The source of that name.
    pub fn parse(name: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an incident's source says of it beyond what it affects: its
/// source, severity, urgency, priority and labels, as the incident filters
/// read them. Empty fields are unknown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IncidentDetails {
    /// Which tool reported it.
    pub source: Source,
    /// E.g. Alertmanager's `severity` label (`critical`, `warning`).
    pub severity: Option<String>,
    /// E.g. PagerDuty's `high` or `low`.
    pub urgency: Option<String>,
    /// E.g. PagerDuty's `P1`.
    pub priority: Option<String>,
    /// Any other labels (Alertmanager's, `customData.labels`), sorted by name.
    pub labels: Vec<(String, String)>,
    /// The deployment it is attributed to, by that deployment's time: the
    /// incident doraflow opens for a regression names its deployment. Any
    /// other incident is attributed by its artifact or the failure window.
    pub deployed_at: Option<Nanos>,
}

impl IncidentDetails {
    /// Whether nothing but the source is known.
    pub fn is_bare(&self) -> bool {
        self.severity.is_none()
            && self.urgency.is_none()
            && self.priority.is_none()
            && self.labels.is_empty()
    }
}

/// The figures of a stretch of a service's requests, as the regression
/// check compares them: counts and HDR quantiles, so a verdict is recorded
/// and read back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// Requests.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// p95 latency, microseconds (`None` without requests).
    pub p95_us: Option<u64>,
    /// p99 latency, microseconds.
    pub p99_us: Option<u64>,
}

impl Health {
    /// Errors / requests (`None` without requests).
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// p95, seconds.
    pub fn p95_seconds(&self) -> Option<f64> {
        self.p95_us.map(|us| us as f64 / 1e6)
    }

    /// p99, seconds.
    pub fn p99_seconds(&self) -> Option<f64> {
        self.p99_us.map(|us| us as f64 / 1e6)
    }
}

impl serde::Serialize for Health {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Health", 5)?;
        s.serialize_field("requests", &self.requests)?;
        s.serialize_field("errors", &self.errors)?;
        s.serialize_field("error_ratio", &self.error_ratio())?;
        s.serialize_field("p95_seconds", &self.p95_seconds())?;
        s.serialize_field("p99_seconds", &self.p99_seconds())?;
        s.end()
    }
}

/// What the regression check made of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Too few requests on one side, or another deployment came within the
    /// stretch after it.
    NotJudged,
    /// Nothing rose past the thresholds.
    Healthy,
    /// A figure rose: a failed change.
    Regression,
}

impl Verdict {
    /// Its name, as the API gives it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::NotJudged => "not_judged",
            Verdict::Healthy => "healthy",
            Verdict::Regression => "regression",
        }
    }
}

/// Which figures regressed: a set of `error_ratio`, `p95`, `p99`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Regressed(pub u8);

impl Regressed {
    /// The error ratio.
    pub const ERROR_RATIO: Regressed = Regressed(1);
    /// p95 latency.
    pub const P95: Regressed = Regressed(2);
    /// p99 latency.
    pub const P99: Regressed = Regressed(4);

    /// Adds `other`'s figures.
    pub fn add(&mut self, other: Regressed) {
        self.0 |= other.0;
    }

    /// Whether none regressed.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The figures' names, in order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Regressed::ERROR_RATIO, "error_ratio"),
            (Regressed::P95, "p95"),
            (Regressed::P99, "p99"),
        ]
        .into_iter()
        .filter(|(r, _)| self.0 & r.0 != 0)
        .map(|(_, name)| name)
        .collect()
    }
}

/// doraflow's verdict on one production deployment, with the figures it
/// rests on: a delivery event of its own, so that it is kept (log,
/// changelog) and read back like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The deployment's service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// When it was deployed.
    pub deployed_at: Nanos,
    /// The verdict.
    pub verdict: Verdict,
    /// Which figures regressed (a regression only).
    pub regressed: Regressed,
    /// Not judged because another deployment of the series came within the
    /// stretch after it (which then shows both).
    pub superseded: bool,
    /// The stretch before it.
    pub before: Health,
    /// The stretch after it.
    pub after: Health,
    /// The incident opened for a regression.
    pub incident: Option<String>,
}

/// How a deployment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeploymentOutcome {
    /// Deployed.
    #[default]
    Success,
    /// The deployment itself failed.
    Failure,
    /// A rollback: a deployment that marks the one it replaced as failed.
    Rollback,
}

impl DeploymentOutcome {
    /// The `outcome` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeploymentOutcome::Success => "success",
            DeploymentOutcome::Failure => "failure",
            DeploymentOutcome::Rollback => "rollback",
        }
    }
}

/// A change linked to a deployment by its producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedChange {
    /// The change's id.
    pub id: String,
    /// When the change started, if the producer said.
    pub time: Option<Nanos>,
}

/// The service part of a service id: its last `/`-separated segment, so
/// `service/checkout`, `/clusterA/ns/checkout` and `checkout` are one service.
pub fn service_name(id: &str) -> &str {
    let trimmed = id.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

/// The commit a revision or artifact id names, normalised, if it names
/// one: the part after the last `@` (`pkg:github/o/r@<sha>`, Flux's
/// `main@sha1:<sha>`) or the last `/` (Flux's older `main/<sha>`), without
/// an algorithm prefix (`sha1:`), lowercased; a commit id is 7 to 64 hex
/// digits. Two tools reporting one deployment name its commit alike this
/// way, whatever else their ids say.
pub fn commit_of(id: &str) -> Option<String> {
    commit_digits(id).map(str::to_ascii_lowercase)
}

/// The hex digits of the commit `id` names, as written (see [`commit_of`]).
pub fn commit_digits(id: &str) -> Option<&str> {
    let id = id.trim();
    let tail = id
        .rsplit_once('@')
        .map_or_else(|| id.rsplit_once('/').map_or(id, |(_, t)| t), |(_, t)| t);
    let tail = tail.rsplit_once(':').map_or(tail, |(_, t)| t);
    ((7..=64).contains(&tail.len()) && tail.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_read_from_every_tool_s_revision_form() {
        let sha = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
        for id in [
            format!("pkg:github/acme/shop@{sha}"),
            format!("pkg:gitlab/acme/shop@{}", sha.to_uppercase()),
            format!("main@sha1:{sha}"),
            format!("main/{sha}"),
            sha.to_string(),
        ] {
            assert_eq!(commit_of(&id).as_deref(), Some(sha), "{id}");
        }
        assert_eq!(commit_of("pkg:oci/shop@sha256:abc"), None);
        assert_eq!(commit_of("v1.2.3"), None);
        assert_eq!(commit_of("pkg:oci/shop@1.2.3"), None);
    }

    #[test]
    fn sources_round_trip_their_names() {
        for source in Source::ALL {
            assert_eq!(Source::parse(source.as_str()), Some(source));
        }
        assert_eq!(Source::parse("jenkins"), None);
    }

    #[test]
    fn service_ids_normalise_to_their_last_segment() {
        assert_eq!(service_name("service/checkout"), "checkout");
        assert_eq!(service_name("/clusterA/ns/checkout/"), "checkout");
        assert_eq!(service_name("checkout"), "checkout");
    }
}
