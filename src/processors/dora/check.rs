//! The regression check, run on the derive tick: each production
//! deployment judged by its service's `red` figures in the stretch after it
//! against the stretch before it ([`super::regression::judge`]), and each
//! regression's incident resolved once the figures are back.
//!
//! Everything the check decides is a delivery event it applies itself and
//! hands back for the log or changelog: a verdict per deployment (with its
//! figures), and for a regression an incident opened at the deployment's
//! time, attributed to it, resolved as of the start of the first stretch as
//! long as `after` whose figures no longer regress against the stretch
//! before the deployment. A restore replays those events and so rebuilds
//! the check's state; nothing else of it needs keeping.

use super::regression::{Judgement, RegressionConfig, judge};
use super::{DerivedState, DoraProcessor, Incident, VerdictRecord, key, series_name};
use crate::model::delivery::{
    DeliveryEvent, DeliveryKind, DeploymentOutcome, Health, IncidentDetails, Judged, Nanos, Source,
    Verdict,
};
use crate::processors::red::RedProcessor;

/// A regression whose incident is still open.
#[derive(Debug, Clone)]
pub(super) struct OpenRegression {
    pub service: String,
    pub environment: String,
    pub incident: String,
    pub deployed_at: Nanos,
    /// The figures before the deployment: what recovery is judged against.
    pub before: Health,
    /// The start of the next stretch to look at (0: from the deployment).
    pub next: Nanos,
}

/// A deployment judged this tick.
struct Pending {
    service: String,
    environment: String,
    deployed_at: Nanos,
    judgement: Judgement,
    superseded: bool,
}

impl DoraProcessor {
    /// Whether the regression check is on.
    pub fn checks_regressions(&self) -> bool {
        self.settings.regression.is_some()
    }

    /// Keeps a verdict (applied from the check, the log or the changelog).
    pub(super) fn add_verdict(&mut self, judged: &Judged) {
        let record = VerdictRecord::of(judged);
        let name = (judged.service.as_str(), judged.environment.as_str());
        let list = match self.verdicts.get_mut(series_name(&name)) {
            Some(list) => list,
            None => self
                .verdicts
                .entry((judged.service.clone(), judged.environment.clone()))
                .or_default(),
        };
        // Most series are judged a few times a day: room for one verdict,
        // not the four a first push would make.
        if list.is_empty() {
            list.reserve_exact(1);
        }
        let at = list.partition_point(|v| v.deployed_at <= record.deployed_at);
        list.insert(at, record);
        if judged.verdict == Verdict::Regression
            && let Some(incident) = &judged.incident
            && self
                .incidents
                .get(&key(incident))
                .and_then(Incident::restored)
                .is_none()
            && !self
                .open_regressions
                .iter()
                .any(|o| &o.incident == incident)
        {
            self.open_regressions.push(OpenRegression {
                service: judged.service.clone(),
                environment: judged.environment.clone(),
                incident: incident.clone(),
                deployed_at: judged.deployed_at,
                before: judged.before,
                next: 0,
            });
        }
    }

    /// Rebuilds which regressions are open (and when each series' last one
    /// was resolved) from the verdicts and incidents: after a restore.
    pub(super) fn reopen_regressions(&mut self) {
        self.open_regressions.clear();
        self.regression_resolved.clear();
        for (name, verdicts) in &self.verdicts {
            for v in verdicts.iter().filter(|v| v.verdict == Verdict::Regression) {
                let Some(incident) = v.incident.as_deref() else {
                    continue;
                };
                // An error-ratio incident the regression took over is the
                // regression's to resolve.
                if let Some(derived) = self.derived.get_mut(name)
                    && derived.open.as_deref() == Some(incident)
                {
                    *derived = DerivedState::default();
                }
                match self
                    .incidents
                    .get(&key(incident))
                    .and_then(Incident::restored)
                {
                    None => self.open_regressions.push(OpenRegression {
                        service: name.0.clone(),
                        environment: name.1.clone(),
                        incident: incident.to_string(),
                        deployed_at: v.deployed_at,
                        before: v.before,
                        next: 0,
                    }),
                    Some(restored) => {
                        let latest = self.regression_resolved.entry(name.clone()).or_default();
                        *latest = (*latest).max(restored);
                    }
                }
            }
        }
    }

    /// Whether the error ratio's derived incidents keep quiet for a series:
    /// a regression incident is open for it, or was resolved less than a
    /// `red` window ago (the window still holds its errors). One outage is
    /// one incident.
    pub(super) fn regression_quiets(&self, service: &str, environment: &str, now: Nanos) -> bool {
        self.open_regressions
            .iter()
            .any(|o| o.service == service && o.environment == environment)
            || self
                .regression_resolved
                .get(series_name(&(service, environment)))
                .is_some_and(|&r| now - r < self.red_window)
    }

    /// Runs the regression check at `now` on `red`'s figures: judges the
    /// production deployments whose stretch after them has ended, and
    /// resolves the regressions whose figures are back. Returns the events
    /// applied (verdicts, incidents opened and resolved), in order.
    pub fn check_regressions(&mut self, red: &mut RedProcessor, now: Nanos) -> Vec<DeliveryEvent> {
        let Some(config) = self.settings.regression.clone() else {
            return Vec::new();
        };
        let (slice, window) = red.window_ns();
        let (slice, window) = (slice as Nanos, window as Nanos);
        self.red_window = window;
        let pending = self.due_for_judgement(&config, red, now, slice, window);
        let mut events = Vec::new();
        for p in pending {
            let verdict = if p.superseded {
                Verdict::NotJudged
            } else {
                p.judgement.verdict
            };
            let series = (p.service.clone(), p.environment.clone());
            let incident = (verdict == Verdict::Regression).then(|| {
                // The error ratio's incident, if one opened since the
                // deployment, is this regression's: one outage, one incident.
                let adopted = self
                    .derived
                    .get(&series)
                    .and_then(|d| d.open.clone())
                    .filter(|id| {
                        self.incidents
                            .get(&key(id))
                            .and_then(|i| i.opened)
                            .is_some_and(|o| o >= p.deployed_at)
                    });
                if adopted.is_some()
                    && let Some(derived) = self.derived.get_mut(&series)
                {
                    *derived = DerivedState::default();
                }
                adopted.unwrap_or_else(|| {
                    format!(
                        "regression:{}:{}:{}",
                        p.service, p.environment, p.deployed_at
                    )
                })
            });
            tracing::info!(
                service = p.service,
                environment = p.environment,
                deployed_at = p.deployed_at,
                verdict = verdict.as_str(),
                regressed = ?p.judgement.regressed.names(),
                requests_before = p.judgement.before.requests,
                requests_after = p.judgement.after.requests,
                "deployment judged"
            );
            events.push(DeliveryEvent {
                id: format!("verdict:{}:{}:{}", p.service, p.environment, p.deployed_at),
                time: p.deployed_at,
                kind: DeliveryKind::Regression(Box::new(Judged {
                    service: p.service.clone(),
                    environment: p.environment.clone(),
                    deployed_at: p.deployed_at,
                    verdict,
                    regressed: p.judgement.regressed,
                    superseded: p.superseded,
                    before: p.judgement.before,
                    after: p.judgement.after,
                    incident: incident.clone(),
                })),
            });
            if let Some(incident) = incident {
                events.push(DeliveryEvent {
                    id: format!("{incident}:regression"),
                    time: p.deployed_at,
                    kind: DeliveryKind::IncidentOpened {
                        incident,
                        service: p.service,
                        environment: p.environment,
                        artifact: None,
                        details: IncidentDetails {
                            source: Source::Doraflow,
                            deployed_at: Some(p.deployed_at),
                            ..Default::default()
                        },
                    },
                });
            }
        }
        self.apply(&events);
        let recovered = self.recoveries(&config, red, now, slice);
        self.apply(&recovered);
        events.extend(recovered);
        events
    }

    /// The production deployments due for a verdict at `now`: successful,
    /// not judged yet, their stretch after them ended and both stretches
    /// still in the `red` window.
    fn due_for_judgement(
        &self,
        config: &RegressionConfig,
        red: &mut RedProcessor,
        now: Nanos,
        slice: Nanos,
        window: Nanos,
    ) -> Vec<Pending> {
        let before = config.before.get().as_nanos() as Nanos;
        let after = config.after.get().as_nanos() as Nanos;
        let within = self.settings.deduplicate_within.max(0);
        // The stretch before must still be whole slices of the window.
        let earliest = now - window + slice + before;
        let latest = now - after;
        let mut pending = Vec::new();
        for ((service, environment), history) in &self.series {
            if !self.is_production(environment) {
                continue;
            }
            let first = history.partition_point(|d| d.time < earliest);
            if history.get(first).is_none_or(|d| d.time > latest) {
                continue;
            }
            // From far enough back that a report merged into an earlier
            // one's is seen merged.
            let from = history.partition_point(|d| d.time < earliest - within);
            let merged = self.merge_reports(&history[from..]);
            let verdicts = self.verdicts_of((service, environment));
            for (i, d) in merged.iter().enumerate() {
                if d.time < earliest || d.time > latest || d.outcome != DeploymentOutcome::Success {
                    continue;
                }
                let next = merged.get(i + 1).map(|n| n.time);
                let from = verdicts.partition_point(|v| v.deployed_at < d.time);
                let judged = verdicts.get(from).is_some_and(|v| {
                    next.is_none_or(|n| v.deployed_at < n) && v.deployed_at - d.time <= within
                });
                if judged {
                    continue;
                }
                let health = |red: &mut RedProcessor, from: Nanos, to: Nanos| {
                    red.health_between(
                        service,
                        environment,
                        from.max(0) as u64,
                        to.max(0) as u64,
                        now.max(0) as u64,
                    )
                };
                let (Some(b), Some(a)) = (
                    health(red, d.time - before, d.time),
                    health(red, d.time, d.time + after),
                ) else {
                    continue;
                };
                pending.push(Pending {
                    service: service.clone(),
                    environment: environment.clone(),
                    deployed_at: d.time,
                    judgement: judge(config, b.into(), a.into()),
                    superseded: next.is_some_and(|n| n <= d.time + after),
                });
            }
        }
        pending
    }

    /// The resolutions of the open regressions whose figures are back: for
    /// each, the first stretch as long as `after`, from a slice boundary
    /// after the deployment, judged healthy against the stretch before it
    /// resolves the incident as of the stretch's start.
    fn recoveries(
        &mut self,
        config: &RegressionConfig,
        red: &mut RedProcessor,
        now: Nanos,
        slice: Nanos,
    ) -> Vec<DeliveryEvent> {
        let after = config.after.get().as_nanos() as Nanos;
        let slices = red.window_ns().1 as Nanos / slice;
        // The earliest stretch start still in the window.
        let oldest = (now / slice - slices + 1) * slice;
        let mut events = Vec::new();
        let mut done = Vec::new();
        for (n, open) in self.open_regressions.iter_mut().enumerate() {
            if self
                .incidents
                .get(&key(&open.incident))
                .and_then(Incident::restored)
                .is_some()
            {
                // Resolved some other way (by hand, say).
                done.push((n, None));
                continue;
            }
            let mut start = open
                .next
                .max(open.deployed_at.div_euclid(slice) * slice + slice)
                .max(oldest);
            while start + after <= now {
                let health = red.health_between(
                    &open.service,
                    &open.environment,
                    start.max(0) as u64,
                    (start + after).max(0) as u64,
                    now.max(0) as u64,
                );
                if let Some(h) = health
                    && judge(config, open.before, h.into()).verdict == Verdict::Healthy
                {
                    let start = recovered_within(config, red, open, start, now, slice);
                    tracing::info!(
                        service = open.service,
                        environment = open.environment,
                        incident = open.incident,
                        restored_at = start,
                        "regression recovered"
                    );
                    events.push(DeliveryEvent {
                        id: format!("{}:recovered", open.incident),
                        time: start,
                        kind: DeliveryKind::IncidentResolved {
                            incident: open.incident.clone(),
                        },
                    });
                    done.push((n, Some(start)));
                    break;
                }
                start += slice;
            }
            open.next = start;
        }
        for (n, restored) in done.into_iter().rev() {
            let open = self.open_regressions.swap_remove(n);
            if let Some(restored) = restored {
                let latest = self
                    .regression_resolved
                    .entry((open.service, open.environment))
                    .or_default();
                *latest = (*latest).max(restored);
            }
        }
        events
    }

    /// Forgets the verdicts of deployments older than `cutoff`.
    pub(super) fn prune_verdicts(&mut self, cutoff: Nanos) {
        for verdicts in self.verdicts.values_mut() {
            let keep_from = verdicts.partition_point(|v| v.deployed_at < cutoff);
            verdicts.drain(..keep_from);
        }
        self.verdicts.retain(|_, v| !v.is_empty());
    }
}

/// Where in the first healthy stretch, `[start, start + after)`, service
/// came back: the end of its last slice still past the thresholds on its
/// own, else its start. The stretch as a whole dilutes the regression's
/// tail (a 6% slice among healthy ones passes), so judging stretches alone
/// would put the recovery up to a stretch too early; a slice counts with a
/// slice's share of `min_requests`, so a lone error in a quiet slice does
/// not.
fn recovered_within(
    config: &RegressionConfig,
    red: &mut RedProcessor,
    open: &OpenRegression,
    start: Nanos,
    now: Nanos,
    slice: Nanos,
) -> Nanos {
    let after = config.after.get().as_nanos() as Nanos;
    let share = RegressionConfig {
        min_requests: (config.min_requests as u128 * slice as u128)
            .div_ceil(after.max(1) as u128)
            .max(1) as u64,
        ..config.clone()
    };
    let mut back = start;
    let mut at = start;
    while at + slice <= start + after {
        if let Some(h) = red.health_between(
            &open.service,
            &open.environment,
            at.max(0) as u64,
            (at + slice).max(0) as u64,
            now.max(0) as u64,
        ) && judge(&share, open.before, h.into()).verdict == Verdict::Regression
        {
            back = at + slice;
        }
        at += slice;
    }
    back
}
