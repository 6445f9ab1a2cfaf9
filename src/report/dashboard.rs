//! The dashboard: `GET /` serves one self-contained page (no external
//! assets: it works air-gapped), which reads `GET /api/v1/dashboard` and
//! redraws itself every 15 seconds. The figures arrive formatted by the
//! report's own helpers, so the tiles say exactly what the report says.

use serde::Serialize;

use super::{ReportInputs, build, format_duration, format_frequency, format_ratio, rfc3339};
use crate::processors::alerts::State;
use crate::processors::dora::levels::Level;

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

/// Days of trend the dashboard shows.
pub const TREND_DAYS: usize = 30;

/// What the page draws.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    /// When, RFC 3339.
    pub generated_at: String,
    /// The tiles' window (the longest configured).
    pub window: Option<String>,
    /// The teams there are (`processors.dora.teams`), for the filter.
    pub teams: Vec<String>,
    /// The team shown, if one is chosen (and known).
    pub team: Option<String>,
    /// The four keys and the rework rate for every production service
    /// pooled, or for the chosen team's.
    pub tiles: Vec<Tile>,
    /// Production per day, oldest first.
    pub trend: Vec<TrendDay>,
    /// Every service's health and alerts.
    pub services: Vec<ServiceRow>,
    /// Alerts pending or firing.
    pub alerts: Vec<AlertRow>,
    /// The service graph, with a `dependencies` processor (see [`graph_view`]).
    pub graph: Option<GraphView>,
}

/// The service graph as the page draws it: nodes in columns by depth (a
/// caller left of what it calls), edges labelled with their window's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphView {
    /// Every node, by depth then name.
    pub nodes: Vec<GraphNode>,
    /// Every edge.
    pub edges: Vec<GraphEdge>,
    /// The window the labels are over.
    pub window: String,
}

/// A service or database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphNode {
    /// Its name.
    pub name: String,
    /// Its column: 0 for one nothing calls, else one more than the deepest
    /// caller (cycles cut).
    pub depth: usize,
}

/// A connection between two nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphEdge {
    /// The caller.
    pub client: String,
    /// The called.
    pub server: String,
    /// `""`, `messaging_system` or `database`.
    pub connection_type: &'static str,
    /// One line: requests, failed share and server-side p95 over the window.
    pub label: String,
    /// Whether any request failed in the window.
    pub failing: bool,
}

/// The page's view of `graph`, over the `window` (e.g. `5m`); only edges
/// touching `services` when given (a team's).
pub fn graph_view(
    graph: &crate::processors::dependencies::GraphSnapshot,
    window: &str,
    services: Option<&[String]>,
) -> GraphView {
    let edges: Vec<_> = graph
        .edges
        .iter()
        .filter(|e| services.is_none_or(|s| s.contains(&e.client) || s.contains(&e.server)))
        .collect();
    let mut names: Vec<&str> = edges
        .iter()
        .flat_map(|e| [e.client.as_str(), e.server.as_str()])
        .collect();
    names.sort_unstable();
    names.dedup();
    // Longest path from a node nothing calls, relaxed at most once per node
    // (so that a cycle ends).
    let mut depth: std::collections::BTreeMap<&str, usize> =
        names.iter().map(|n| (*n, 0)).collect();
    for _ in 0..names.len() {
        let mut changed = false;
        for e in &edges {
            let next = depth[e.client.as_str()] + 1;
            if e.client != e.server && next < names.len() && depth[e.server.as_str()] < next {
                depth.insert(e.server.as_str(), next);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut nodes: Vec<GraphNode> = depth
        .into_iter()
        .map(|(name, depth)| GraphNode {
            name: name.to_string(),
            depth,
        })
        .collect();
    nodes.sort_by(|a, b| (a.depth, &a.name).cmp(&(b.depth, &b.name)));
    GraphView {
        nodes,
        edges: edges
            .iter()
            .map(|e| GraphEdge {
                client: e.client.clone(),
                server: e.server.clone(),
                connection_type: e.connection_type.as_str(),
                label: format!(
                    "{} req · {} failed · p95 {}",
                    e.window.requests,
                    format_ratio(e.window.error_ratio()),
                    format_duration(e.window.quantiles_us.map(|q| q[1] as f64 / 1e6))
                ),
                failing: e.window.errors > 0,
            })
            .collect(),
        window: window.to_string(),
    }
}

/// One of the four keys.
#[derive(Debug, Clone, Serialize)]
pub struct Tile {
    /// `deployment_frequency`, `lead_time`, `change_failure_rate`, `time_to_restore`.
    pub key: &'static str,
    /// Its name for people.
    pub title: &'static str,
    /// The value, formatted.
    pub value: String,
    /// Its level, if there is data.
    pub level: Option<Level>,
    /// One line of context.
    pub detail: String,
}

/// One day of the trend, in the charts' units.
#[derive(Debug, Clone, Serialize)]
pub struct TrendDay {
    /// The day (its end), `YYYY-MM-DD`.
    pub day: String,
    /// Successful deployments.
    pub deployments: u64,
    /// Median lead time, hours.
    pub lead_time_hours: Option<f64>,
    /// Change failure rate, percent.
    pub change_failure_percent: Option<f64>,
    /// Median time to restore, hours.
    pub time_to_restore_hours: Option<f64>,
}

/// A service in the table.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// Requests in the `red` window.
    pub requests: Option<u64>,
    /// Requests per second over the `red` window, formatted.
    pub rate: String,
    /// Error ratio, formatted.
    pub errors: String,
    /// p95 latency, formatted.
    pub p95: String,
    /// Deployments over the tiles' window.
    pub deployments: Option<u64>,
    /// Alerts pending or firing for it.
    pub alerts: Vec<String>,
}

/// An alert in the list.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    /// The rule.
    pub alertname: &'static str,
    /// `firing` or `pending`.
    pub state: &'static str,
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// Since when, RFC 3339.
    pub since: String,
    /// One line.
    pub summary: String,
}

/// Requests per second over a window given as written (`5m`).
fn rate(requests: u64, window: &str) -> String {
    let seconds = window
        .parse::<crate::settings::ConfigDuration>()
        .map(|d| d.get().as_secs_f64())
        .unwrap_or(0.0);
    if seconds <= 0.0 {
        return "—".into();
    }
    let per_second = requests as f64 / seconds;
    format!("{per_second:.2}/s")
}

/// Builds what the page draws.
pub fn build_dashboard(inputs: &ReportInputs, now: i64, team: Option<&str>) -> Dashboard {
    let report = build(inputs, now);
    let mut teams: Vec<String> = report.teams.iter().map(|t| t.team.clone()).collect();
    teams.dedup();
    let production = |environment: &str| {
        inputs.dora.as_ref().is_some_and(|d| {
            d.series
                .iter()
                .any(|s| s.environment == environment && s.production)
        })
    };
    // The chosen team's production row (its services pooled), if known.
    let chosen = team.and_then(|team| {
        report
            .teams
            .iter()
            .find(|t| t.team == team && production(&t.environment))
    });
    let figures = match chosen {
        Some(row) => Some(&row.figures),
        None => report.production.as_ref(),
    };
    let tiles = match figures {
        None => Vec::new(),
        Some(p) => vec![
            Tile {
                key: "deployment_frequency",
                title: "Deployment frequency",
                value: format_frequency(p.deployment_frequency_per_day),
                level: p.levels.deployment_frequency,
                detail: format!("{} deployments", p.deployments),
            },
            Tile {
                key: "lead_time",
                title: "Lead time for changes",
                value: format_duration(p.lead_time.p50),
                level: p.levels.lead_time,
                detail: format!(
                    "median of {} changes; p95 {}",
                    p.lead_time.count,
                    format_duration(p.lead_time.p95)
                ),
            },
            Tile {
                key: "change_failure_rate",
                title: "Change failure rate",
                value: format_ratio(p.change_failure_ratio),
                level: p.levels.change_failure_rate,
                detail: format!("{} failed changes", p.failed_changes),
            },
            Tile {
                key: "time_to_restore",
                title: "Time to restore",
                value: format_duration(p.time_to_restore.p50),
                level: p.levels.time_to_restore,
                detail: format!("median of {} incidents", p.time_to_restore.count),
            },
            Tile {
                key: "rework_rate",
                title: "Deployment rework rate",
                value: format_ratio(p.rework_ratio),
                level: None,
                detail: format!("{} rework deployments", p.rework_deployments),
            },
        ],
    };
    let hours = |s: Option<f64>| s.map(|s| s / 3_600.0);
    let trend = inputs
        .trend
        .iter()
        .map(|d| TrendDay {
            day: d.date.clone(),
            deployments: d.deployments,
            lead_time_hours: hours(d.lead_time_p50),
            change_failure_percent: d.change_failure_ratio.map(|r| r * 100.0),
            time_to_restore_hours: hours(d.time_to_restore_p50),
        })
        .collect();
    let state = |s: State| match s {
        State::Firing => "firing",
        _ => "pending",
    };
    let mut services: Vec<ServiceRow> = report
        .services
        .iter()
        .map(|s| ServiceRow {
            service: s.service.clone(),
            environment: s.environment.clone(),
            requests: s.health.as_ref().map(|h| h.requests),
            rate: s
                .health
                .as_ref()
                .map_or_else(|| "—".into(), |h| rate(h.requests, &h.window)),
            errors: s
                .health
                .as_ref()
                .map_or_else(|| "—".into(), |h| format_ratio(h.error_ratio)),
            p95: s
                .health
                .as_ref()
                .map_or_else(|| "—".into(), |h| format_duration(h.p95_seconds)),
            deployments: s
                .windows
                .iter()
                .find(|w| Some(&w.window) == report.summary_window.as_ref())
                .map(|w| w.deployments),
            alerts: Vec::new(),
        })
        .collect();
    // Services with health but no delivery history yet.
    if let Some(red) = &inputs.red {
        for h in &red.series {
            if !services
                .iter()
                .any(|s| s.service == h.service && s.environment == h.environment)
            {
                services.push(ServiceRow {
                    service: h.service.clone(),
                    environment: h.environment.clone(),
                    requests: Some(h.stats.requests),
                    rate: rate(h.stats.requests, &red.window),
                    errors: format_ratio(h.stats.error_ratio()),
                    p95: format_duration(h.stats.quantiles_us.map(|q| q[1] as f64 / 1e6)),
                    deployments: None,
                    alerts: Vec::new(),
                });
            }
        }
    }
    for a in &inputs.active {
        if let Some(row) = services
            .iter_mut()
            .find(|s| s.service == a.service && s.environment == a.environment)
        {
            row.alerts
                .push(format!("{} ({})", a.alertname, state(a.state)));
        }
    }
    services.sort_by(|a, b| (&a.service, &a.environment).cmp(&(&b.service, &b.environment)));
    if let Some(row) = chosen {
        services.retain(|s| row.services.contains(&s.service));
    }
    Dashboard {
        generated_at: report.generated_at.clone(),
        window: report.summary_window.clone(),
        teams,
        team: chosen.map(|row| row.team.clone()),
        tiles,
        trend,
        services,
        alerts: inputs
            .active
            .iter()
            .map(|a| AlertRow {
                alertname: a.alertname,
                state: state(a.state),
                service: a.service.clone(),
                environment: a.environment.clone(),
                since: rfc3339(a.since),
                summary: a.summary.clone(),
            })
            .collect(),
        graph: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::dependencies::{Connection, EdgeFigures, GraphSnapshot};

    fn edge(client: &str, server: &str) -> EdgeFigures {
        EdgeFigures {
            client: client.into(),
            server: server.into(),
            connection_type: Connection::Direct,
            requests: 1,
            failed: 0,
            window: crate::window::WindowStats::default(),
            server_seconds: Default::default(),
            client_seconds: Default::default(),
            messaging_seconds: None,
        }
    }

    #[test]
    fn nodes_stand_one_column_right_of_their_deepest_caller_and_cycles_end() {
        let graph = GraphSnapshot {
            edges: vec![
                edge("web", "api"),
                edge("api", "db"),
                edge("web", "db"),
                // A cycle: db calls back into api.
                edge("db", "api"),
                edge("batch", "db"),
            ],
            ..GraphSnapshot::default()
        };
        let view = graph_view(&graph, "5m", None);
        let depths: Vec<_> = view
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.depth))
            .collect();
        // web → api → db makes db 2; the cycle's db → api makes api 3, and
        // api → db would make db 4: not below the number of nodes, so the
        // relaxation ends there.
        assert_eq!(depths, [("batch", 0), ("web", 0), ("db", 2), ("api", 3)]);
        let team = graph_view(&graph, "5m", Some(&["batch".to_string()]));
        assert_eq!(team.edges.len(), 1);
        assert_eq!(
            team.nodes,
            [
                GraphNode {
                    name: "batch".into(),
                    depth: 0
                },
                GraphNode {
                    name: "db".into(),
                    depth: 1
                }
            ]
        );
        // Nothing in the window: no figures to show.
        assert_eq!(team.edges[0].label, "0 req · — failed · p95 —");
    }
}
