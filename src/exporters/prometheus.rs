//! Exporter `prometheus`: the scrape endpoint and health checks.
//!
//! doraflow's own counters are kept by the `metrics` recorder as data
//! arrives. The per-service and DORA families are written at scrape time
//! from a snapshot of the processors (`exposition`), so a scrape always
//! shows the window ending now and nothing is computed that nobody reads.

use serde::Deserialize;

use crate::settings::Secret;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::exporters::exposition;
use crate::flow::{PipelineReader, Readiness};
use crate::instruments;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// `exporters.prometheus`: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `host:port` to listen on. Default `127.0.0.1:9464`.
    #[serde(default = "default_prometheus_endpoint")]
    pub endpoint: String,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    /// Default: plaintext.
    #[serde(default)]
    pub tls: Option<crate::tls::ServerTls>,
    /// A bearer token the read API (`/api/...`, `/report`) asks for, from
    /// `${env:NAME}` or `${file:PATH}`. Default: open.
    #[serde(default)]
    pub api_token: Option<Secret>,
}

fn default_prometheus_endpoint() -> String {
    "127.0.0.1:9464".to_string()
}

/// Installs the process-wide metrics recorder once and returns its handle.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The scrape endpoint's state.
#[derive(Clone)]
pub struct PrometheusExporter {
    handle: PrometheusHandle,
    reader: PipelineReader,
    readiness: Readiness,
}

impl PrometheusExporter {
    /// An exporter rendering `handle`'s registry plus `reader`'s snapshots.
    pub fn new(handle: PrometheusHandle, reader: PipelineReader, readiness: Readiness) -> Self {
        PrometheusExporter {
            handle,
            reader,
            readiness,
        }
    }

    /// The routes: `/metrics`, `/healthz`, `/readyz`, `/api/v1/dora`,
    /// `/api/v1/alerts`, `/report`, `/` (the dashboard), `/api/v1/dashboard`.
    /// With `api_token`, the read API (`/api/...` and `/report`) asks for
    /// it as a bearer token; `/metrics`, the health checks and the
    /// dashboard page itself (which holds no data, and passes a token given
    /// in its URL's `#token=` on to the API) stay open.
    pub fn router(self, api_token: Option<crate::settings::Secret>) -> Router {
        let api = Router::new()
            .route("/api/v1/dora", get(api_dora))
            .route("/api/v1/alerts", get(api_alerts))
            .route("/api/v1/dependencies", get(api_dependencies))
            .route("/api/v1/servicegraph", get(api_servicegraph))
            .route("/report", get(report))
            .route("/api/v1/dashboard", get(api_dashboard));
        let api = match api_token {
            Some(token) => {
                let token = std::sync::Arc::new(token);
                api.route_layer(axum::middleware::from_fn(
                    move |request: axum::extract::Request, next: axum::middleware::Next| {
                        let token = token.clone();
                        async move {
                            if crate::transport::authorized(Some(&token), request.headers()) {
                                next.run(request).await
                            } else {
                                (
                                    StatusCode::UNAUTHORIZED,
                                    [(header::WWW_AUTHENTICATE, "Bearer")],
                                    "a valid bearer token is required\n",
                                )
                                    .into_response()
                            }
                        }
                    },
                ))
            }
            None => api,
        };
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/", get(dashboard_page))
            .merge(api)
            .with_state(self)
    }

    /// Serves, over TLS if `tls` is set, until `stop` is cancelled.
    pub async fn serve(
        self,
        listener: TcpListener,
        config: Option<PrometheusConfig>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let (tls, api_token) = config.map_or((None, None), |c| (c.tls, c.api_token));
        crate::transport::serve_http(
            listener,
            self.router(api_token),
            tls.as_ref(),
            crate::transport::HttpLimits::default(),
            stop,
        )
        .await
    }
}

/// A scrape this large (about 500 series) gives the memory its rendering
/// used back to the system.
const LARGE_SCRAPE: usize = 512 * 1024;

async fn metrics(State(exporter): State<PrometheusExporter>) -> Response {
    let red = exporter.reader.red_snapshot().await;
    if let Some(red) = &red {
        gauge!(instruments::RED_SERIES).set(red.series.len() as f64);
        gauge!(instruments::RED_WINDOW_BYTES).set(red.window_bytes as f64);
    }
    counter!(instruments::EXPORTER_SCRAPES).increment(1);
    exporter.handle.run_upkeep();
    let mut text = exporter.handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if let Some(red) = &red {
        exposition::render_red(red, &mut text);
    }
    drop(red);
    if let Some(dependencies) = exporter.reader.dependencies_snapshot().await {
        exposition::render_dependencies(&dependencies, &mut text);
    }
    if let Some(dora) = exporter.reader.dora_snapshot().await {
        text.push_str(&exposition::render_dora(&dora));
    }
    if text.len() > LARGE_SCRAPE {
        // Rendering thousands of series allocates tens of MB for a moment;
        // glibc would keep them, and the resident size would ratchet up
        // with every scrape (5,000 series: +30 MB over three scrapes).
        tokio::task::spawn_blocking(crate::memory::release_free_memory);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /api/v1/dependencies`: the `dependencies` processor's figures
/// (404 without one).
async fn api_dependencies(State(exporter): State<PrometheusExporter>) -> Response {
    match exporter.reader.dependencies_snapshot().await {
        Some(snapshot) => axum::Json(snapshot).into_response(),
        None => no_dependencies(),
    }
}

/// `GET /api/v1/servicegraph`: the service graph's nodes and edges (404
/// without a `dependencies` processor, or with its graph disabled).
async fn api_servicegraph(State(exporter): State<PrometheusExporter>) -> Response {
    let Some(graph) = exporter
        .reader
        .dependencies_snapshot()
        .await
        .and_then(|s| s.graph)
    else {
        return no_dependencies();
    };
    let mut nodes: Vec<&str> = graph
        .edges
        .iter()
        .flat_map(|e| [e.client.as_str(), e.server.as_str()])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    axum::Json(serde_json::json!({
        "nodes": nodes,
        "edges": graph.edges,
        "unpaired": graph.unpaired,
        "dropped": graph.dropped,
        "waiting": graph.waiting,
    }))
    .into_response()
}

fn no_dependencies() -> Response {
    (
        StatusCode::NOT_FOUND,
        "the pipeline has no dependencies processor (or its service_graph is disabled)\n",
    )
        .into_response()
}

/// `GET /api/v1/alerts`: the alerts pending or firing now.
async fn api_alerts(State(exporter): State<PrometheusExporter>) -> Response {
    let alerts = exporter.reader.active_alerts().await.unwrap_or_default();
    axum::Json(serde_json::json!({ "alerts": alerts })).into_response()
}

/// Query of `/report` and `/api/v1/dora`.
#[derive(Debug, Default, serde::Deserialize)]
struct Format {
    /// `/report`: `markdown` (default), `json` or `html`.
    format: Option<String>,
    /// `/api/v1/dora`: also the figures of the window before each window.
    trend: Option<bool>,
}

/// `GET /api/v1/dora`: the service-health and DORA figures as JSON;
/// `?trend=true` adds each window's previous one (as the report shows).
async fn api_dora(
    State(exporter): State<PrometheusExporter>,
    Query(query): Query<Format>,
) -> Response {
    if query.trend == Some(true) {
        let inputs = exporter.reader.report_inputs().await.unwrap_or_default();
        return axum::Json(
            serde_json::json!({ "service_health": inputs.red, "dora": inputs.dora }),
        )
        .into_response();
    }
    let red = exporter.reader.red_snapshot().await;
    let dora = exporter.reader.dora_snapshot().await;
    axum::Json(serde_json::json!({ "service_health": red, "dora": dora })).into_response()
}

/// `GET /`: the dashboard, one self-contained page.
async fn dashboard_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'",
            ),
        ],
        crate::report::dashboard::PAGE,
    )
        .into_response()
}

/// Query of `/api/v1/dashboard`.
#[derive(Debug, Default, serde::Deserialize)]
struct DashboardQuery {
    /// Show this team's figures and services.
    team: Option<String>,
}

/// `GET /api/v1/dashboard`: what the dashboard draws (`?team=` for one
/// team's).
async fn api_dashboard(
    State(exporter): State<PrometheusExporter>,
    Query(query): Query<DashboardQuery>,
) -> Response {
    let Some(inputs) = exporter
        .reader
        .report_inputs_with_days(crate::report::dashboard::TREND_DAYS)
        .await
    else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let now = inputs.dora.as_ref().map_or_else(
        || crate::clock::Clock::now_ns(&crate::clock::SystemClock) as i64,
        |d| d.at,
    );
    let team = query.team.as_deref().filter(|t| !t.is_empty());
    let mut dashboard = crate::report::dashboard::build_dashboard(&inputs, now, team);
    if let Some(snapshot) = exporter.reader.dependencies_snapshot().await
        && let Some(graph) = &snapshot.graph
    {
        // A team chosen: its services' edges.
        let services: Option<Vec<String>> = dashboard.team.as_ref().map(|_| {
            dashboard
                .services
                .iter()
                .map(|s| s.service.clone())
                .collect()
        });
        dashboard.graph = Some(crate::report::dashboard::graph_view(
            graph,
            &snapshot.window,
            services.as_deref(),
        ));
    }
    axum::Json(dashboard).into_response()
}

/// `GET /report`: the DORA assessment, Markdown by default, `?format=json`
/// or `?format=html`.
async fn report(
    State(exporter): State<PrometheusExporter>,
    Query(query): Query<Format>,
) -> Response {
    let Some(inputs) = exporter.reader.report_inputs().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let now = crate::clock::Clock::now_ns(&crate::clock::SystemClock) as i64;
    let report = crate::report::build(&inputs, inputs.dora.as_ref().map_or(now, |d| d.at));
    match query.format.as_deref().unwrap_or("markdown") {
        "markdown" | "md" => (
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            crate::report::markdown(&report),
        )
            .into_response(),
        "json" => axum::Json(report).into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::report::html(&report),
        )
            .into_response(),
        other => (
            StatusCode::BAD_REQUEST,
            format!("unknown format `{other}`: use markdown, json or html\n"),
        )
            .into_response(),
    }
}

async fn ready(State(exporter): State<PrometheusExporter>) -> Response {
    if exporter.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}
