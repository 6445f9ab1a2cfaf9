//! The `dora` processor's state as a checkpoint (`proto/doraflow/v1/checkpoint.proto`)
//! and the delivery events of the log, both ways.
//!
//! Restoring validates everything it reads (ids, outcomes, histogram
//! shapes, ordering) and fails as a whole: a processor is either restored
//! entirely or left as it was.

use std::collections::{BTreeMap, HashMap};

use super::{
    Baseline, ChangeTimes, DeploymentRecord, DerivedState, DoraProcessor, HistogramCounts,
    INCIDENT_BUCKETS, Incident, Key, KeyMap, LEAD_TIME_BUCKETS, VerdictRecord,
};
use crate::model::delivery::{
    ChangeStage, DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome, Health,
    IncidentDetails, Judged, LinkedChange, Regressed, Source, Verdict,
};
use crate::proto::{self, event_record::Kind};

fn to_key(key: Key) -> proto::Key128 {
    proto::Key128 {
        hi: (key >> 64) as u64,
        lo: key as u64,
    }
}

fn from_key(key: Option<&proto::Key128>, what: &str) -> Result<Key, String> {
    key.map(|k| (u128::from(k.hi) << 64) | u128::from(k.lo))
        .ok_or_else(|| format!("{what} without its id"))
}

fn to_outcome(outcome: DeploymentOutcome) -> i32 {
    (match outcome {
        DeploymentOutcome::Success => proto::Outcome::Success,
        DeploymentOutcome::Failure => proto::Outcome::Failure,
        DeploymentOutcome::Rollback => proto::Outcome::Rollback,
    }) as i32
}

fn from_outcome(outcome: i32) -> Result<DeploymentOutcome, String> {
    match proto::Outcome::try_from(outcome) {
        Ok(proto::Outcome::Success) => Ok(DeploymentOutcome::Success),
        Ok(proto::Outcome::Failure) => Ok(DeploymentOutcome::Failure),
        Ok(proto::Outcome::Rollback) => Ok(DeploymentOutcome::Rollback),
        _ => Err(format!("unknown deployment outcome {outcome}")),
    }
}

fn outcome_label(label: &str) -> Result<&'static str, String> {
    [
        DeploymentOutcome::Success,
        DeploymentOutcome::Failure,
        DeploymentOutcome::Rollback,
    ]
    .into_iter()
    .map(DeploymentOutcome::as_str)
    .find(|l| *l == label)
    .ok_or_else(|| format!("unknown deployment outcome `{label}`"))
}

/// A histogram's counts as a record.
pub(crate) fn to_histogram(h: &HistogramCounts) -> proto::HistogramRecord {
    proto::HistogramRecord {
        buckets: h.buckets.clone(),
        sum: h.sum,
        count: h.count,
    }
}

/// A record's counts for `bounds`; absent, empty ones.
pub(crate) fn from_histogram(
    h: Option<&proto::HistogramRecord>,
    bounds: &[f64],
    what: &str,
) -> Result<HistogramCounts, String> {
    let Some(h) = h else {
        return Ok(HistogramCounts::new(bounds));
    };
    if h.buckets.len() != bounds.len() + 1 {
        return Err(format!(
            "{what}: {} buckets where this version has {}",
            h.buckets.len(),
            bounds.len() + 1
        ));
    }
    if h.buckets.iter().sum::<u64>() != h.count {
        return Err(format!("{what}: the buckets do not add up to the count"));
    }
    Ok(HistogramCounts {
        buckets: h.buckets.clone(),
        sum: h.sum,
        count: h.count,
    })
}

impl DoraProcessor {
    /// The state to checkpoint: the whole delivery history and the counters.
    pub fn to_state(&self) -> proto::DoraState {
        proto::DoraState {
            seen: self
                .seen
                .iter()
                .map(|(id, time)| proto::SeenEvent {
                    id: Some(to_key(*id)),
                    time_ns: *time,
                })
                .collect(),
            changes: self
                .changes
                .iter()
                .map(|(change, times)| proto::ChangeRecord {
                    change: Some(to_key(*change)),
                    created_ns: times.created,
                    merged_ns: times.merged,
                    first_commit_head: times.first_commit_of.map(|(head, _)| to_key(head)),
                    first_commit_count: times.first_commit_of.map_or(0, |(_, n)| n),
                    rework: times.rework,
                })
                .collect(),
            artifacts: self
                .artifact_changes
                .iter()
                .map(|(artifact, (linked, changes))| proto::ArtifactRecord {
                    artifact: Some(to_key(*artifact)),
                    linked_ns: *linked,
                    changes: changes.iter().map(|c| to_key(*c)).collect(),
                    parent: self.revision_parents.get(artifact).map(|p| to_key(*p)),
                })
                .collect(),
            baselines: self.baseline_records(),
            horizon_ns: (self.horizon != i64::MIN).then_some(self.horizon),
            teams: self.team_records(),
            series: self
                .series
                .iter()
                .map(
                    |((service, environment), deployments)| proto::SeriesRecord {
                        service: service.clone(),
                        environment: environment.clone(),
                        deployments: deployments
                            .iter()
                            .map(|d| proto::DeploymentRecord {
                                time_ns: d.time,
                                order: d.order,
                                outcome: to_outcome(d.outcome),
                                artifact: d.artifact.map(to_key),
                                changes: d
                                    .changes
                                    .iter()
                                    .map(|(change, time)| proto::LinkedChangeRecord {
                                        change: Some(to_key(*change)),
                                        time_ns: *time,
                                    })
                                    .collect(),
                                rework: d.rework,
                                revision: d.revision,
                                source: source_name(d.sources.iter().next().unwrap_or_default()),
                            })
                            .collect(),
                    },
                )
                .collect(),
            incidents: self
                .incidents
                .iter()
                .map(|(incident, i)| proto::IncidentRecord {
                    incident: Some(to_key(*incident)),
                    service: i.series.as_ref().map(|s| s.0.clone()),
                    environment: i.series.as_ref().map(|s| s.1.clone()),
                    artifact: i.artifact.map(to_key),
                    opened_by_time_ns: i.opened_by.map(|b| b.0),
                    opened_by_event: i.opened_by.map(|b| to_key(b.1)),
                    opened_ns: i.opened,
                    resolved_ns: i.resolved,
                    // Kept where it differs from the earliest resolution.
                    last_resolved_ns: i.last_resolved.filter(|&l| Some(l) != i.resolved),
                    reopened_ns: i.reopened,
                    name: i.name.as_deref().map(str::to_string),
                    details: details_record(&i.details),
                })
                .collect(),
            derived: self
                .derived
                .iter()
                .map(|((service, environment), d)| proto::DerivedRecord {
                    service: service.clone(),
                    environment: environment.clone(),
                    open_incident: d.open.clone(),
                    below_since_ns: d.below_since,
                })
                .collect(),
            applied: self.applied,
            duplicates: self.duplicates,
            ignored: self.ignored,
            expired: self.expired,
            verdicts: self
                .verdicts
                .iter()
                .flat_map(|(series, verdicts)| {
                    verdicts
                        .iter()
                        .map(|v| regression_record(&v.judged(series)))
                })
                .collect(),
        }
    }

    /// The teams deployments named, for a checkpoint (and the pruned
    /// record: they outlive the deployments that named them).
    fn team_records(&self) -> Vec<proto::ServiceTeam> {
        let mut teams: Vec<proto::ServiceTeam> = self
            .learned_teams
            .iter()
            .map(|(service, (time, team))| proto::ServiceTeam {
                service: service.clone(),
                team: team.clone(),
                time_ns: *time,
            })
            .collect();
        teams.sort_by(|a, b| a.service.cmp(&b.service));
        teams
    }

    /// What pruning took out, alone: the horizon, every series' baseline
    /// and the teams deployments named. A changelog writes it whole after
    /// each prune, in the same transaction as the tombstones of the events
    /// it forgot.
    pub fn pruned_state(&self) -> proto::DoraState {
        proto::DoraState {
            baselines: self.baseline_records(),
            horizon_ns: (self.horizon != i64::MIN).then_some(self.horizon),
            teams: self.team_records(),
            ..Default::default()
        }
    }

    fn baseline_records(&self) -> Vec<proto::BaselineRecord> {
        self.baselines
            .iter()
            .map(|((service, environment), b)| proto::BaselineRecord {
                service: service.clone(),
                environment: environment.clone(),
                deployments: b
                    .deployments
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                failed_changes: b.failed_changes,
                failed_changes_by_reason: b
                    .failed_by_reason
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                lead_times: Some(to_histogram(&b.lead_times)),
                incident_durations: Some(to_histogram(&b.incident_durations)),
            })
            .collect()
    }

    /// Replaces the history with a checkpointed one. On error nothing changed.
    pub fn restore(&mut self, state: &proto::DoraState) -> Result<(), String> {
        let mut seen = KeyMap::default();
        seen.reserve(state.seen.len());
        for s in &state.seen {
            seen.insert(from_key(s.id.as_ref(), "a seen event")?, s.time_ns);
        }
        let mut changes = KeyMap::default();
        for c in &state.changes {
            changes.insert(
                from_key(c.change.as_ref(), "a change")?,
                ChangeTimes {
                    created: c.created_ns,
                    merged: c.merged_ns,
                    first_commit_of: match &c.first_commit_head {
                        Some(head) => Some((
                            from_key(Some(head), "a change's first-commit head")?,
                            c.first_commit_count,
                        )),
                        None => None,
                    },
                    rework: c.rework,
                },
            );
        }
        let mut artifact_changes = KeyMap::default();
        let mut revision_parents = KeyMap::default();
        for a in &state.artifacts {
            let linked = a
                .changes
                .iter()
                .map(|c| from_key(Some(c), "an artifact's change"))
                .collect::<Result<Vec<_>, _>>()?;
            let artifact = from_key(a.artifact.as_ref(), "an artifact")?;
            if let Some(parent) = &a.parent {
                revision_parents.insert(artifact, from_key(Some(parent), "a revision's parent")?);
            }
            artifact_changes.insert(artifact, (a.linked_ns, linked));
        }
        let mut baselines = HashMap::new();
        for b in &state.baselines {
            let what = format!("the baseline of {} ({})", b.service, b.environment);
            let mut deployments = BTreeMap::new();
            for (label, count) in &b.deployments {
                deployments.insert(outcome_label(label)?, *count);
            }
            baselines.insert(
                (b.service.clone(), b.environment.clone()),
                Baseline {
                    deployments,
                    failed_changes: b.failed_changes,
                    failed_by_reason: b
                        .failed_changes_by_reason
                        .iter()
                        .map(|(label, count)| {
                            super::FailureReason::ALL
                                .into_iter()
                                .find(|r| r.as_str() == label)
                                .map(|r| (r.as_str(), *count))
                                .ok_or_else(|| format!("{what}: unknown reason `{label}`"))
                        })
                        .collect::<Result<_, String>>()?,
                    lead_times: from_histogram(
                        b.lead_times.as_ref(),
                        &LEAD_TIME_BUCKETS,
                        &format!("{what}: lead times"),
                    )?,
                    incident_durations: from_histogram(
                        b.incident_durations.as_ref(),
                        &INCIDENT_BUCKETS,
                        &format!("{what}: incident durations"),
                    )?,
                },
            );
        }
        let mut series = BTreeMap::new();
        for s in &state.series {
            let mut records = Vec::with_capacity(s.deployments.len());
            for d in &s.deployments {
                let record = DeploymentRecord {
                    time: d.time_ns,
                    order: d.order,
                    outcome: from_outcome(d.outcome)?,
                    artifact: d
                        .artifact
                        .as_ref()
                        .map(|a| from_key(Some(a), ""))
                        .transpose()?,
                    changes: d
                        .changes
                        .iter()
                        .map(|c| Ok((from_key(c.change.as_ref(), "a linked change")?, c.time_ns)))
                        .collect::<Result<Vec<_>, String>>()?
                        .into_boxed_slice(),
                    rework: d.rework,
                    revision: d.revision,
                    sources: super::SourceSet::of(from_source_name(&d.source)?),
                };
                if records.last().is_some_and(|p: &DeploymentRecord| {
                    (p.time, p.order) > (record.time, record.order)
                }) {
                    return Err(format!(
                        "the deployments of {} ({}) are out of order",
                        s.service, s.environment
                    ));
                }
                records.push(record);
            }
            if series
                .insert((s.service.clone(), s.environment.clone()), records)
                .is_some()
            {
                return Err(format!("{} ({}) twice", s.service, s.environment));
            }
        }
        let mut incidents = KeyMap::default();
        for i in &state.incidents {
            let series = match (&i.service, &i.environment) {
                (Some(s), Some(e)) => Some((s.clone(), e.clone())),
                (None, None) => None,
                _ => return Err("an incident with a service and no environment".into()),
            };
            let opened_by = match (i.opened_by_time_ns, &i.opened_by_event) {
                (Some(time), Some(event)) => Some((time, from_key(Some(event), "")?)),
                (None, None) => None,
                _ => return Err("an incident's opening event half recorded".into()),
            };
            incidents.insert(
                from_key(i.incident.as_ref(), "an incident")?,
                Incident {
                    series,
                    artifact: i
                        .artifact
                        .as_ref()
                        .map(|a| from_key(Some(a), ""))
                        .transpose()?,
                    opened_by,
                    opened: i.opened_ns,
                    resolved: i.resolved_ns,
                    last_resolved: i.last_resolved_ns.or(i.resolved_ns),
                    reopened: i.reopened_ns,
                    name: i.name.as_deref().map(Box::from),
                    details: from_details_record(i.details.as_ref())?,
                },
            );
        }
        let mut verdicts: HashMap<(String, String), Vec<VerdictRecord>> = HashMap::new();
        for record in &state.verdicts {
            let v = from_regression_record(record.clone())?;
            let kept = VerdictRecord::of(&v);
            verdicts
                .entry((v.service, v.environment))
                .or_default()
                .push(kept);
        }
        for list in verdicts.values_mut() {
            list.sort_by_key(|v| v.deployed_at);
        }
        let derived = state
            .derived
            .iter()
            .map(|d| {
                (
                    (d.service.clone(), d.environment.clone()),
                    DerivedState {
                        open: d.open_incident.clone(),
                        below_since: d.below_since_ns,
                    },
                )
            })
            .collect();
        self.seen = seen;
        self.changes = changes;
        self.artifact_changes = artifact_changes;
        self.revision_parents = revision_parents;
        self.learned_teams = state
            .teams
            .iter()
            .map(|t| (t.service.clone(), (t.time_ns, t.team.clone())))
            .collect();
        self.learned_team_sizes.clear();
        for (_, team) in self.learned_teams.values() {
            *self.learned_team_sizes.entry(team.clone()).or_default() += 1;
        }
        self.baselines = baselines;
        self.horizon = state.horizon_ns.unwrap_or(i64::MIN);
        self.series = series;
        self.incidents = incidents;
        self.derived = derived;
        self.verdicts = verdicts;
        self.applied = state.applied;
        self.duplicates = state.duplicates;
        self.ignored = state.ignored;
        self.expired = state.expired;
        self.reopen_regressions();
        Ok(())
    }

    /// Applies events read back from the log, as [`Self::apply`] did when
    /// they came, and brings the derived-incident state along with the
    /// derived events among them.
    pub fn replay(&mut self, events: &[DeliveryEvent]) {
        // A restore replays a whole partition at once: one allocation of
        // the de-duplication table rather than a dozen rehashes.
        self.seen.reserve(events.len());
        self.apply(events);
        for event in events {
            let Some(rest) = event.id.strip_prefix("derived:") else {
                continue;
            };
            match &event.kind {
                DeliveryKind::IncidentOpened {
                    incident,
                    service,
                    environment,
                    ..
                } if rest.ends_with(":opened") => {
                    let state = self
                        .derived
                        .entry((service.clone(), environment.clone()))
                        .or_default();
                    state.open = Some(incident.clone());
                    state.below_since = None;
                }
                DeliveryKind::IncidentResolved { incident } => {
                    for state in self.derived.values_mut() {
                        if state.open.as_deref() == Some(incident) {
                            *state = DerivedState::default();
                        }
                    }
                }
                _ => {}
            }
        }
        self.reopen_regressions();
    }
}

/// A delivery event as a log record.
pub fn event_record(event: &DeliveryEvent) -> proto::EventRecord {
    let kind = match &event.kind {
        DeliveryKind::Deployment(d) => Kind::Deployment(proto::DeploymentEvent {
            service: d.service.clone(),
            environment: d.environment.clone(),
            artifact: d.artifact.clone(),
            rework: d.rework,
            team: d.team.clone(),
            revision: d.revision.clone(),
            source: source_name(d.source),
            outcome: to_outcome(d.outcome),
            changes: d
                .changes
                .iter()
                .map(|c| proto::LinkedChangeEvent {
                    id: c.id.clone(),
                    time_ns: c.time,
                })
                .collect(),
        }),
        DeliveryKind::Change { change, stage } => Kind::Change(proto::ChangeEvent {
            change: change.clone(),
            merged: *stage == ChangeStage::Merged,
        }),
        DeliveryKind::ArtifactLink { artifact, change } => {
            Kind::ArtifactLink(proto::ArtifactLinkEvent {
                artifact: artifact.clone(),
                change: change.clone(),
            })
        }
        DeliveryKind::IncidentOpened {
            incident,
            service,
            environment,
            artifact,
            details,
        } => Kind::IncidentOpened(proto::IncidentOpenedEvent {
            incident: incident.clone(),
            service: service.clone(),
            environment: environment.clone(),
            artifact: artifact.clone(),
            details: details_record(details),
        }),
        DeliveryKind::Revision {
            revision,
            parent,
            changes,
        } => Kind::Revision(proto::RevisionEvent {
            revision: revision.clone(),
            parent: parent.clone(),
            changes: changes
                .iter()
                .map(|c| proto::LinkedChangeEvent {
                    id: c.id.clone(),
                    time_ns: c.time,
                })
                .collect(),
        }),
        DeliveryKind::IncidentResolved { incident } => Kind::IncidentResolved(incident.clone()),
        DeliveryKind::IncidentReopened { incident } => Kind::IncidentReopened(incident.clone()),
        DeliveryKind::ChangeRework { change } => Kind::ChangeRework(change.clone()),
        DeliveryKind::ChangeFromCommits {
            change,
            head,
            commits,
        } => Kind::ChangeFromCommits(proto::ChangeFromCommitsEvent {
            change: change.clone(),
            head: head.clone(),
            commits: *commits,
        }),
        DeliveryKind::PipelineFailed {
            pipeline,
            service,
            environment,
        } => Kind::PipelineFailed(proto::PipelineFailedEvent {
            pipeline: pipeline.clone(),
            service: service.clone(),
            environment: environment.clone(),
        }),
        DeliveryKind::Regression(judged) => Kind::Regression(regression_record(judged)),
        DeliveryKind::Other { event_type } => Kind::Other(event_type.clone()),
    };
    proto::EventRecord {
        id: event.id.clone(),
        time_ns: event.time,
        kind: Some(kind),
    }
}

/// A source's name in a record; the default (`cdevents`) is left empty.
fn source_name(source: Source) -> String {
    match source {
        Source::Cdevents => String::new(),
        other => other.as_str().to_string(),
    }
}

fn from_source_name(name: &str) -> Result<Source, String> {
    if name.is_empty() {
        return Ok(Source::Cdevents);
    }
    Source::parse(name).ok_or_else(|| format!("unknown source `{name}`"))
}

/// An incident's details in a record, none if only the default source is known.
fn details_record(details: &IncidentDetails) -> Option<proto::IncidentDetailsRecord> {
    (details != &IncidentDetails::default()).then(|| proto::IncidentDetailsRecord {
        source: source_name(details.source),
        severity: details.severity.clone(),
        urgency: details.urgency.clone(),
        priority: details.priority.clone(),
        labels: details
            .labels
            .iter()
            .map(|(name, value)| proto::LabelRecord {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        deployed_at_ns: details.deployed_at,
    })
}

fn health_record(h: &Health) -> proto::HealthRecord {
    proto::HealthRecord {
        requests: h.requests,
        errors: h.errors,
        p95_us: h.p95_us,
        p99_us: h.p99_us,
    }
}

fn from_health_record(h: Option<&proto::HealthRecord>) -> Health {
    h.map_or_else(Health::default, |h| Health {
        requests: h.requests,
        errors: h.errors,
        p95_us: h.p95_us,
        p99_us: h.p99_us,
    })
}

/// A verdict as a record (an event's, or the checkpoint's).
fn regression_record(j: &Judged) -> proto::RegressionEvent {
    proto::RegressionEvent {
        service: j.service.clone(),
        environment: j.environment.clone(),
        deployed_at_ns: j.deployed_at,
        verdict: match j.verdict {
            Verdict::NotJudged => proto::Verdict::NotJudged,
            Verdict::Healthy => proto::Verdict::Healthy,
            Verdict::Regression => proto::Verdict::Regression,
        } as i32,
        regressed: u32::from(j.regressed.0),
        superseded: j.superseded,
        before: Some(health_record(&j.before)),
        after: Some(health_record(&j.after)),
        incident: j.incident.clone(),
    }
}

fn from_regression_record(r: proto::RegressionEvent) -> Result<Judged, String> {
    let verdict = match proto::Verdict::try_from(r.verdict) {
        Ok(proto::Verdict::NotJudged) => Verdict::NotJudged,
        Ok(proto::Verdict::Healthy) => Verdict::Healthy,
        Ok(proto::Verdict::Regression) => Verdict::Regression,
        _ => return Err(format!("unknown verdict {}", r.verdict)),
    };
    let regressed = u8::try_from(r.regressed)
        .ok()
        .filter(|bits| bits & !7 == 0)
        .ok_or_else(|| format!("unknown regressed figures {:#x}", r.regressed))?;
    Ok(Judged {
        verdict,
        regressed: Regressed(regressed),
        superseded: r.superseded,
        before: from_health_record(r.before.as_ref()),
        after: from_health_record(r.after.as_ref()),
        service: r.service,
        environment: r.environment,
        deployed_at: r.deployed_at_ns,
        incident: r.incident,
    })
}

fn from_details_record(
    record: Option<&proto::IncidentDetailsRecord>,
) -> Result<IncidentDetails, String> {
    let Some(r) = record else {
        return Ok(IncidentDetails::default());
    };
    Ok(IncidentDetails {
        source: from_source_name(&r.source)?,
        severity: r.severity.clone(),
        urgency: r.urgency.clone(),
        priority: r.priority.clone(),
        labels: r
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect(),
        deployed_at: r.deployed_at_ns,
    })
}

/// A log record back as a delivery event.
pub fn from_event_record(record: proto::EventRecord) -> Result<DeliveryEvent, String> {
    let kind = match record.kind {
        Some(Kind::Deployment(d)) => DeliveryKind::Deployment(Deployment {
            rework: d.rework,
            team: d.team,
            revision: d.revision,
            source: from_source_name(&d.source)?,
            service: d.service,
            environment: d.environment,
            artifact: d.artifact,
            outcome: from_outcome(d.outcome)?,
            changes: d
                .changes
                .into_iter()
                .map(|c| LinkedChange {
                    id: c.id,
                    time: c.time_ns,
                })
                .collect(),
        }),
        Some(Kind::Change(c)) => DeliveryKind::Change {
            change: c.change,
            stage: if c.merged {
                ChangeStage::Merged
            } else {
                ChangeStage::Created
            },
        },
        Some(Kind::ArtifactLink(a)) => DeliveryKind::ArtifactLink {
            artifact: a.artifact,
            change: a.change,
        },
        Some(Kind::IncidentOpened(i)) => DeliveryKind::IncidentOpened {
            incident: i.incident,
            service: i.service,
            environment: i.environment,
            artifact: i.artifact,
            details: from_details_record(i.details.as_ref())?,
        },
        Some(Kind::Revision(r)) => DeliveryKind::Revision {
            revision: r.revision,
            parent: r.parent,
            changes: r
                .changes
                .into_iter()
                .map(|c| LinkedChange {
                    id: c.id,
                    time: c.time_ns,
                })
                .collect(),
        },
        Some(Kind::IncidentResolved(incident)) => DeliveryKind::IncidentResolved { incident },
        Some(Kind::IncidentReopened(incident)) => DeliveryKind::IncidentReopened { incident },
        Some(Kind::ChangeRework(change)) => DeliveryKind::ChangeRework { change },
        Some(Kind::ChangeFromCommits(c)) => DeliveryKind::ChangeFromCommits {
            change: c.change,
            head: c.head,
            commits: c.commits,
        },
        Some(Kind::PipelineFailed(p)) => DeliveryKind::PipelineFailed {
            pipeline: p.pipeline,
            service: p.service,
            environment: p.environment,
        },
        Some(Kind::Regression(r)) => DeliveryKind::Regression(Box::new(from_regression_record(r)?)),
        Some(Kind::Other(event_type)) => DeliveryKind::Other { event_type },
        None => return Err(format!("event {}: no kind", record.id)),
    };
    Ok(DeliveryEvent {
        id: record.id,
        time: record.time_ns,
        kind,
    })
}
