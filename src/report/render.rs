//! The report as a document (headings, paragraphs, tables, lists), rendered
//! to Markdown or to a self-contained HTML page. Numbers are formatted by the
//! helpers here, which the tests use too: a figure in the report is the
//! figure of `/api/v1/dora`, formatted.

use std::fmt::Write as _;

use super::{Report, rfc3339};
use crate::processors::dora::WindowFigures;
use crate::processors::dora::levels::Level;

/// One block of the document.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A heading, level 1 to 3.
    Heading(u8, String),
    /// A paragraph (inline `**bold**` allowed).
    Paragraph(String),
    /// A table: header cells, then rows.
    Table(Vec<String>, Vec<Vec<String>>),
    /// A bulleted list.
    List(Vec<String>),
}

/// A duration in seconds for people: `250 ms`, `45.0 s`, `12.5 min`,
/// `3.20 h`, `2.10 d` (three significant figures), `—` when there is none.
pub fn format_duration(seconds: Option<f64>) -> String {
    let Some(s) = seconds else {
        return "—".to_string();
    };
    let (value, unit) = if s > 0.0 && s < 1.0 {
        (s * 1_000.0, "ms")
    } else if s < 60.0 {
        (s, "s")
    } else if s < 3_600.0 {
        (s / 60.0, "min")
    } else if s < 86_400.0 {
        (s / 3_600.0, "h")
    } else {
        (s / 86_400.0, "d")
    };
    format!("{} {unit}", three_figures(value))
}

/// A ratio as a percentage with one decimal, `—` when there is none.
pub fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => format!("{:.1}%", r * 100.0),
        None => "—".to_string(),
    }
}

/// A level, `—` when there is none.
pub fn format_level(level: Option<Level>) -> String {
    level.map_or_else(|| "—".to_string(), |l| l.as_str().to_string())
}

/// Deployments per day with three significant figures.
pub fn format_frequency(per_day: f64) -> String {
    format!("{}/day", three_figures(per_day))
}

fn three_figures(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let digits = (2 - value.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{value:.digits$}")
}

/// A key's name for people.
fn metric_name(metric: &str) -> &'static str {
    match metric {
        "deployment_frequency" => "Deployment frequency",
        "lead_time" => "Lead time for changes",
        "change_failure_rate" => "Change failure rate",
        "time_to_restore" => "Time to restore",
        _ => "Other",
    }
}

/// A key's value for people.
fn metric_value(metric: &str, value: Option<f64>) -> String {
    match metric {
        "deployment_frequency" => value.map_or_else(|| "—".to_string(), format_frequency),
        "change_failure_rate" => format_ratio(value),
        _ => format_duration(value),
    }
}

/// The four keys of one window, as summary cells: value (level).
fn summary_cells(f: &WindowFigures) -> [String; 4] {
    let l = &f.levels;
    [
        format!(
            "{} ({})",
            format_frequency(f.deployment_frequency_per_day),
            format_level(l.deployment_frequency)
        ),
        format!(
            "{} ({})",
            format_duration(f.lead_time.p50),
            format_level(l.lead_time)
        ),
        format!(
            "{} ({})",
            format_ratio(f.change_failure_ratio),
            format_level(l.change_failure_rate)
        ),
        format!(
            "{} ({})",
            format_duration(f.time_to_restore.p50),
            format_level(l.time_to_restore)
        ),
    ]
}

/// A window's detail row.
fn window_row(label: String, f: &WindowFigures) -> Vec<String> {
    vec![
        label,
        format!(
            "{} ({} failed, {} rolled back)",
            f.deployments, f.failed_deployments, f.rollbacks
        ),
        // With the DORA survey's answer: how the report asks it.
        format!(
            "{} ({})",
            format_frequency(f.deployment_frequency_per_day),
            f.deployment_frequency_answer.as_str().replace('_', " ")
        ),
        format!(
            "{} / {}",
            format_duration(f.lead_time.p50),
            format_duration(f.lead_time.p95)
        ),
        format!(
            "{} ({} failed changes)",
            format_ratio(f.change_failure_ratio),
            f.failed_changes
        ),
        format!(
            "{} ({} rework)",
            format_ratio(f.rework_ratio),
            f.rework_deployments
        ),
        format!(
            "{} / {}",
            format_duration(f.time_to_restore.p50),
            format_duration(f.time_to_restore.p95)
        ),
        format_duration(f.failed_deployment_recovery.p50),
    ]
}

const METRICS: [&str; 4] = [
    "deployment frequency",
    "lead time for changes (p50)",
    "change failure rate",
    "time to restore (p50)",
];

/// The report as a document.
pub fn document(report: &Report) -> Vec<Block> {
    let mut doc = vec![
        Block::Heading(1, "DORA metrics assessment".into()),
        Block::Paragraph(format!(
            "Generated {} by doraflow from live data: {} delivery events applied ({} duplicates dropped, {} of other types, {} past the retention).",
            report.generated_at,
            report.events.applied,
            report.events.duplicates,
            report.events.ignored,
            report.events.expired
        )),
    ];
    let window = report.summary_window.clone().unwrap_or_default();
    doc.push(Block::Heading(
        2,
        format!("Executive summary: production, last {window}"),
    ));
    match &report.production {
        None => doc.push(Block::Paragraph(
            "No DORA figures: the pipeline has no `dora` processor.".into(),
        )),
        Some(production) => {
            let mut header = vec!["scope".to_string()];
            header.extend(METRICS.iter().map(|m| m.to_string()));
            let mut rows = Vec::new();
            let mut all = vec!["**all production services**".to_string()];
            all.extend(summary_cells(production));
            rows.push(all);
            for s in &report.summary {
                let mut row = vec![format!("{} ({})", s.service, s.environment)];
                row.extend(summary_cells(&s.figures));
                rows.push(row);
            }
            doc.push(Block::Table(header, rows));
            if let Some(c) = &report.cutoffs {
                doc.push(Block::Paragraph(format!(
                    "Levels: elite / high / medium need a deployment frequency of at least {} / {} / {}, a lead time below {} / {} / {}, a change failure rate of at most {} / {} / {}, a time to restore below {} / {} / {}; anything else is low.",
                    format_frequency(c.deployment_frequency[0]),
                    format_frequency(c.deployment_frequency[1]),
                    format_frequency(c.deployment_frequency[2]),
                    format_duration(Some(c.lead_time[0])),
                    format_duration(Some(c.lead_time[1])),
                    format_duration(Some(c.lead_time[2])),
                    format_ratio(Some(c.change_failure_rate[0])),
                    format_ratio(Some(c.change_failure_rate[1])),
                    format_ratio(Some(c.change_failure_rate[2])),
                    format_duration(Some(c.time_to_restore[0])),
                    format_duration(Some(c.time_to_restore[1])),
                    format_duration(Some(c.time_to_restore[2])),
                )));
            }
        }
    }

    if report.production.is_some() {
        let target = report
            .advice
            .first()
            .map(|a| a.target.as_str())
            .unwrap_or("the targeted level");
        doc.push(Block::Heading(
            2,
            format!("Advice: production, last {window}"),
        ));
        if report.advice.is_empty() {
            doc.push(Block::Paragraph(format!(
                "Every key is at {target} or better: nothing to advise."
            )));
        }
        for a in &report.advice {
            doc.push(Block::Heading(
                3,
                format!(
                    "{}: {} (target {})",
                    metric_name(a.metric),
                    a.level.as_str(),
                    a.target.as_str()
                ),
            ));
            doc.push(Block::Paragraph(a.finding.clone()));
            doc.push(Block::Paragraph(format!(
                "What the assessment recommends, the first where the data points: {}.",
                a.practices.join(", ")
            )));
        }
        if !report.trends.is_empty() {
            doc.push(Block::Heading(
                2,
                format!("Trends: production, last {window} against the {window} before"),
            ));
            let header = ["key", "this window", "the one before", "direction"]
                .map(String::from)
                .to_vec();
            let rows = report
                .trends
                .iter()
                .map(|t| {
                    vec![
                        metric_name(t.metric).to_string(),
                        metric_value(t.metric, t.current),
                        metric_value(t.metric, t.previous),
                        t.direction.to_string(),
                    ]
                })
                .collect();
            doc.push(Block::Table(header, rows));
        }
    }

    if !report.teams.is_empty() {
        doc.push(Block::Heading(2, format!("Teams, last {window}")));
        doc.push(Block::Paragraph(
            "Each team's services together: every deployment, lead time and incident of theirs counted as one, not an average of the services.".into(),
        ));
        let mut header = vec!["team".to_string(), "services".to_string()];
        header.extend(METRICS.iter().map(|m| m.to_string()));
        header.push("rework rate".to_string());
        let rows = report
            .teams
            .iter()
            .map(|t| {
                let mut row = vec![
                    format!("{} ({})", t.team, t.environment),
                    t.services.join(", "),
                ];
                row.extend(summary_cells(&t.figures));
                row.push(format_ratio(t.figures.rework_ratio));
                row
            })
            .collect();
        doc.push(Block::Table(header, rows));
    }

    doc.push(Block::Heading(2, "Below high".into()));
    if report.below_high.is_empty() {
        doc.push(Block::Paragraph(format!(
            "Every production service is at high or better on every metric it has data for, over the last {window}."
        )));
    } else {
        doc.push(Block::List(
            report
                .below_high
                .iter()
                .map(|b| {
                    let drags: Vec<String> = b
                        .drags
                        .iter()
                        .map(|d| match d.metric {
                            "deployment_frequency" => format!(
                                "deployment frequency {} ({}; high needs at least {})",
                                format_frequency(d.value),
                                d.level.as_str(),
                                format_frequency(d.high_needs)
                            ),
                            "lead_time" => format!(
                                "lead time {} ({}; high needs below {})",
                                format_duration(Some(d.value)),
                                d.level.as_str(),
                                format_duration(Some(d.high_needs))
                            ),
                            "change_failure_rate" => format!(
                                "change failure rate {} ({}; high needs at most {})",
                                format_ratio(Some(d.value)),
                                d.level.as_str(),
                                format_ratio(Some(d.high_needs))
                            ),
                            _ => format!(
                                "time to restore {} ({}; high needs below {})",
                                format_duration(Some(d.value)),
                                d.level.as_str(),
                                format_duration(Some(d.high_needs))
                            ),
                        })
                        .collect();
                    format!(
                        "**{} ({})**: {}",
                        b.service,
                        b.environment,
                        drags.join("; ")
                    )
                })
                .collect(),
        ));
    }

    doc.push(Block::Heading(2, "Services".into()));
    for s in &report.services {
        doc.push(Block::Heading(
            3,
            format!("{} ({})", s.service, s.environment),
        ));
        let header = [
            "window",
            "deployments",
            "frequency",
            "lead time p50 / p95",
            "change failure rate",
            "rework rate",
            "time to restore p50 / p95",
            "failed deployment recovery p50",
        ]
        .map(String::from)
        .to_vec();
        let mut rows = Vec::new();
        for w in &s.windows {
            rows.push(window_row(format!("last {}", w.window), w));
            if let Some(previous) = &w.previous {
                rows.push(window_row(format!("{} before", w.window), previous));
            }
        }
        doc.push(Block::Table(header, rows));
        let mut facts = vec![match &s.oldest_open_incident {
            Some(since) => format!(
                "Open incidents: {} (the oldest since {since}).",
                s.open_incidents
            ),
            None => format!("Open incidents: {}.", s.open_incidents),
        }];
        if let Some(h) = &s.health {
            facts.push(format!(
                "Health over the last {}: {} requests, {} errors ({}), p95 latency {}.",
                h.window,
                h.requests,
                h.errors,
                format_ratio(h.error_ratio),
                format_duration(h.p95_seconds)
            ));
        }
        doc.push(Block::Paragraph(facts.join(" ")));
        if !s.recent_failed_changes.is_empty() {
            doc.push(Block::Paragraph("Recent failed changes:".into()));
            doc.push(Block::List(
                s.recent_failed_changes
                    .iter()
                    .map(failed_change_line)
                    .collect(),
            ));
        }
    }

    doc.push(Block::Heading(2, "Alert thresholds".into()));
    if report.alerts.rules.is_empty() {
        doc.push(Block::Paragraph(
            "No alert rules: the pipeline has no `alerts` processor.".into(),
        ));
    } else {
        let header = [
            "alert",
            "threshold",
            "window",
            "for",
            "severity",
            "firing",
            "pending",
        ]
        .map(String::from)
        .to_vec();
        let rows = report
            .alerts
            .rules
            .iter()
            .map(|r| {
                let rule = &r.rule;
                vec![
                    rule.alertname.to_string(),
                    match rule.unit {
                        "ratio" => format!("> {}", format_ratio(Some(rule.threshold))),
                        "seconds" => format!("> {}", format_duration(Some(rule.threshold))),
                        _ => format!("> {}", rule.threshold),
                    },
                    rule.window.clone().unwrap_or_else(|| "—".into()),
                    format_duration(Some(rule.for_seconds)),
                    rule.severity.as_str().to_string(),
                    r.firing.to_string(),
                    r.pending.to_string(),
                ]
            })
            .collect();
        doc.push(Block::Table(header, rows));
        if !report.alerts.active.is_empty() {
            doc.push(Block::List(
                report
                    .alerts
                    .active
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {} since {}: {}",
                            a.alertname,
                            match a.state {
                                crate::processors::alerts::State::Firing => "firing",
                                _ => "pending",
                            },
                            rfc3339(a.since),
                            a.summary
                        )
                    })
                    .collect(),
            ));
        }
    }
    doc
}

/// The report as Markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    for block in document(report) {
        match block {
            Block::Heading(level, text) => {
                let _ = writeln!(out, "{} {text}\n", "#".repeat(level as usize));
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "{text}\n");
            }
            Block::Table(header, rows) => {
                let _ = writeln!(out, "| {} |", header.join(" | "));
                let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
                for row in rows {
                    let _ = writeln!(out, "| {} |", row.join(" | "));
                }
                out.push('\n');
            }
            Block::List(items) => {
                for item in items {
                    let _ = writeln!(out, "- {item}");
                }
                out.push('\n');
            }
        }
    }
    out
}

/// Escapes text for HTML, then turns `**bold**` and `` `code` `` into tags.
fn inline_html(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    let mut out = String::with_capacity(escaped.len());
    let mut bold = false;
    let mut code = false;
    let mut rest = escaped.as_str();
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("**") {
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
            rest = &rest[2..];
        } else if c == '`' {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
            rest = &rest[1..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The report as one self-contained HTML page (no external assets).
pub fn html(report: &Report) -> String {
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>DORA metrics assessment</title>\n<style>body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1d2330}table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #d5d9e0;padding:.3rem .6rem;text-align:left}th{background:#f2f4f7}code{background:#f2f4f7;padding:0 .2rem}</style>\n</head><body>\n",
    );
    for block in document(report) {
        match block {
            Block::Heading(level, text) => {
                let _ = writeln!(out, "<h{level}>{}</h{level}>", inline_html(&text));
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "<p>{}</p>", inline_html(&text));
            }
            Block::Table(header, rows) => {
                out.push_str("<table><thead><tr>");
                for h in header {
                    let _ = write!(out, "<th>{}</th>", inline_html(&h));
                }
                out.push_str("</tr></thead><tbody>\n");
                for row in rows {
                    out.push_str("<tr>");
                    for cell in row {
                        let _ = write!(out, "<td>{}</td>", inline_html(&cell));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody></table>\n");
            }
            Block::List(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    let _ = writeln!(out, "<li>{}</li>", inline_html(&item));
                }
                out.push_str("</ul>\n");
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// One failed change with why it counts and what that rests on, e.g.
/// `2024-05-01T12:00:00Z: incident_window (deployment success, from
/// github, argocd): incident pagerduty:Q1 (pagerduty) opened 2024-...`.
fn failed_change_line(c: &crate::processors::dora::FailedChange) -> String {
    let mut evidence = Vec::new();
    if let Some(r) = &c.evidence.rollback {
        evidence.push(format!(
            "rolled back at {} ({})",
            rfc3339(r.at),
            r.sources.join(", ")
        ));
    }
    for i in &c.evidence.incidents {
        evidence.push(format!(
            "incident {} ({}) opened {}{}",
            i.id,
            i.source,
            rfc3339(i.opened),
            if i.named_the_artifact {
                ", naming the artifact"
            } else {
                ""
            }
        ));
    }
    if let Some(r) = &c.evidence.regression {
        let ratio = |h: &crate::model::delivery::Health| {
            h.error_ratio()
                .map_or_else(|| "-".to_string(), |r| format!("{:.2}%", r * 100.0))
        };
        let p95 = |h: &crate::model::delivery::Health| {
            h.p95_seconds()
                .map_or_else(|| "-".to_string(), |s| format!("{:.0} ms", s * 1e3))
        };
        evidence.push(format!(
            "{} regressed: errors {} to {}, p95 {} to {} ({} requests before, {} after)",
            r.regressed.join(", "),
            ratio(&r.before),
            ratio(&r.after),
            p95(&r.before),
            p95(&r.after),
            r.before.requests,
            r.after.requests
        ));
    }
    let mut line = format!(
        "{}: {} (deployment {}, from {})",
        rfc3339(c.at),
        c.reason.as_str(),
        c.outcome,
        c.sources.join(", ")
    );
    if !evidence.is_empty() {
        line.push_str(": ");
        line.push_str(&evidence.join("; "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::Health;
    use crate::processors::dora::{
        Evidence, FailedChange, FailureReason, IncidentEvidence, RegressionCheck,
    };

    #[test]
    fn a_regression_s_line_gives_its_figures_and_its_incident() {
        let at = 1_764_000_000_000_000_000;
        let health = |requests, errors, p95_us| Health {
            requests,
            errors,
            p95_us: Some(p95_us),
            p99_us: Some(p95_us),
        };
        let change = FailedChange {
            at,
            outcome: "success",
            cause: "regression",
            reason: FailureReason::Regression,
            sources: vec!["cdevents", "argocd"],
            evidence: Evidence {
                rollback: None,
                incidents: vec![IncidentEvidence {
                    id: "regression:shop:production:1".into(),
                    source: "doraflow",
                    opened: at,
                    named_the_artifact: false,
                }],
                regression: Some(RegressionCheck {
                    verdict: crate::model::delivery::Verdict::Regression,
                    regressed: vec!["error_ratio"],
                    superseded: false,
                    before: health(2_500, 5, 20_095),
                    after: health(2_500, 125, 20_095),
                }),
            },
        };
        assert_eq!(
            failed_change_line(&change),
            "2025-11-24T16:00:00Z: regression (deployment success, from cdevents, argocd): \
             incident regression:shop:production:1 (doraflow) opened 2025-11-24T16:00:00Z; \
             error_ratio regressed: errors 0.20% to 5.00%, p95 20 ms to 20 ms \
             (2500 requests before, 2500 after)"
        );
    }
}
