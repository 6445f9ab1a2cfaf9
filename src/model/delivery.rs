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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// How a deployment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeploymentOutcome {
    /// Deployed.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ids_normalise_to_their_last_segment() {
        assert_eq!(service_name("service/checkout"), "checkout");
        assert_eq!(service_name("/clusterA/ns/checkout/"), "checkout");
        assert_eq!(service_name("checkout"), "checkout");
    }
}
