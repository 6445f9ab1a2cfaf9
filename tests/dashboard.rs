//! The dashboard in a real browser: headless Chromium (Debian's, installed
//! by scripts/setup) loads `GET /`, runs its script against the live API,
//! and the four tiles must show the production figures of `/api/v1/dora`,
//! formatted as the report formats them. A screenshot is kept at
//! `target/test-artifacts/dashboard.png`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Doraflow, say_skipped};
use doraflow::report::{format_duration, format_frequency, format_ratio};
use serde_json::{Value, json};

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DORAFLOW_TEST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs headless Chromium on `url` with the flags this machine needs.
fn headless(chromium: &PathBuf, url: &str, extra: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!(
        "doraflow-chromium-{}-{}",
        std::process::id(),
        common::free_port()
    ));
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with class `class` inside the tile `key`.
fn tile_part(dom: &str, key: &str, class: &str) -> String {
    let start = dom
        .find(&format!("id=\"tile-{key}\""))
        .unwrap_or_else(|| panic!("no tile {key} in:\n{dom}"));
    let tile = &dom[start..];
    let at = tile
        .find(&format!("class=\"{class}\">"))
        .unwrap_or_else(|| panic!("no {class} in tile {key}"));
    let text = &tile[at + class.len() + 9..];
    text[..text.find('<').unwrap_or(text.len())].to_string()
}

fn tile_level(dom: &str, key: &str) -> String {
    let start = dom.find(&format!("id=\"tile-{key}\"")).expect("tile");
    let tile = &dom[start..];
    let at = tile.find("data-level=\"").expect("data-level") + 12;
    tile[at..at + tile[at..].find('"').expect("quote")].to_string()
}

use common::rfc3339 as ts;

#[tokio::test]
async fn the_dashboard_shows_the_four_keys_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        say_skipped(
            "dashboard in chromium",
            "no chromium (scripts/setup installs Debian's)",
        );
        return;
    };
    let doraflow = Doraflow::start_config(
        "window: 5m, slice: 10s",
        "windows: [7d, 30d]",
        "interval: 1s",
        256,
    );
    // 12 deployments over three services in 30 days, each of a change
    // started 1 to 3 hours before; one incident of 90 minutes after the
    // newest payments deployment.
    let now = common::unix_now();
    let mut events: Vec<Value> = (0..12)
        .map(|i| {
            let at = now - 3_600 - i * 2 * 86_400;
            let service = ["checkout", "payments", "search"][i as usize % 3];
            json!({
                "context": {"specversion": "0.5.1", "id": format!("d{i}"), "source": "/ci", "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": ts(at)},
                "subject": {"id": format!("service/{service}"), "content": {"environment": {"id": "production"}, "artifactId": format!("pkg:oci/{service}@sha256:{i}")}},
                "customData": {"changes": [{"id": format!("c{i}"), "timestamp": ts(at - (i % 3 + 1) * 3_600)}]}
            })
        })
        .collect();
    for (id, kind, at) in [
        ("i1-open", "detected", now - 2 * 86_400 - 1_800),
        ("i1-resolved", "resolved", now - 2 * 86_400 + 3_600),
    ] {
        events.push(json!({
            "context": {"specversion": "0.5.1", "id": id, "source": "/mon", "type": format!("dev.cdevents.incident.{kind}.0.3.0"), "timestamp": ts(at)},
            "subject": {"id": "i1", "content": {"environment": {"id": "production"}, "service": {"id": "payments"}}}
        }));
    }
    let answer = reqwest::Client::new()
        .post(doraflow.webhook_url())
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .expect("webhook");
    assert_eq!(answer.status(), 202);
    common::send_checkout_spans(&doraflow, 90, 10).await;

    let base = format!("http://127.0.0.1:{}", doraflow.prometheus);
    let api: Value = reqwest::get(format!("{base}/api/v1/dora"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let month = &api["dora"]["production"][1];
    assert_eq!(month["window"], "30d");
    assert_eq!(month["deployments"], 12);

    let url = format!("{base}/");
    let dom = tokio::task::spawn_blocking({
        let chromium = chromium.clone();
        let url = url.clone();
        move || headless(&chromium, &url, &["--dump-dom"])
    })
    .await
    .expect("chromium");
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never loaded its data:\n{dom}"
    );
    let expect = [
        (
            "deployment_frequency",
            format_frequency(month["deployment_frequency_per_day"].as_f64().unwrap()),
        ),
        (
            "lead_time",
            format_duration(month["lead_time"]["p50"].as_f64()),
        ),
        (
            "change_failure_rate",
            format_ratio(month["change_failure_ratio"].as_f64()),
        ),
        (
            "time_to_restore",
            format_duration(month["time_to_restore"]["p50"].as_f64()),
        ),
    ];
    for (key, value) in &expect {
        assert_eq!(&tile_part(&dom, key, "value"), value, "tile {key}");
        assert_eq!(
            tile_level(&dom, key),
            month["levels"][*key].as_str().unwrap_or("none"),
            "level of {key}"
        );
    }
    // By hand: 12 in 30 days is 0.4 a day (high); leads of 1, 2, 3 h, four
    // each: median 2 h (elite); one failed change of 12 (8.3%, high);
    // restore 1.5 h (high).
    assert_eq!(expect[0].1, "0.400/day");
    assert_eq!(expect[1].1, "2.00 h");
    assert_eq!(expect[2].1, "8.3%");
    assert_eq!(expect[3].1, "1.50 h");
    // The services table and the trend charts are there too.
    // 100 requests in the 5-minute window: 0.33 a second.
    assert!(
        dom.contains(
            "<td>checkout</td><td>production</td><td>100</td><td>0.33/s</td><td>10.0%</td><td>1.00 ms</td>"
        ),
        "{dom}"
    );
    assert_eq!(dom.matches("<svg").count(), 4);

    screenshot(chromium, url, "dashboard.png").await;
}

/// The team filter: team payments owns checkout and payments, search has
/// none. In 30 days: checkout deploys at -1h (lead 1h) and -4d (lead 3h),
/// payments at -2d (lead 2h), search at -3d (lead 30 min). Opened as
/// `/#team=payments`, the page shows the team's figures: 3 deployments
/// (0.100/day), lead median 2.00 h; every service's would be 4 (0.133/day)
/// and 1.00 h. The services table holds the team's services only. A
/// screenshot is kept at `target/test-artifacts/dashboard-team.png`.
#[tokio::test]
async fn the_team_filter_shows_a_teams_pooled_figures_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        say_skipped(
            "dashboard team filter in chromium",
            "no chromium (scripts/setup installs Debian's)",
        );
        return;
    };
    let doraflow = Doraflow::start_config(
        "window: 5m, slice: 10s",
        "windows: [7d, 30d], teams: { checkout: payments, payments: payments }",
        "interval: 1s",
        256,
    );
    let now = common::unix_now();
    let deployed = |id: &str, service: &str, ago: i64, lead: i64| {
        json!({
            "context": {"specversion": "0.5.1", "id": id, "source": "/ci", "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": ts(now - ago)},
            "subject": {"id": format!("service/{service}"), "content": {"environment": {"id": "production"}}},
            "customData": {"changes": [{"id": format!("{id}-change"), "timestamp": ts(now - ago - lead)}]}
        })
    };
    let events = json!([
        deployed("d0", "checkout", 3_600, 3_600),
        deployed("d1", "payments", 2 * 86_400, 7_200),
        deployed("d2", "search", 3 * 86_400, 1_800),
        deployed("d3", "checkout", 4 * 86_400, 3 * 3_600),
    ]);
    let answer = reqwest::Client::new()
        .post(doraflow.webhook_url())
        .header("content-type", "application/cloudevents-batch+json")
        .body(events.to_string())
        .send()
        .await
        .expect("webhook");
    assert_eq!(answer.status(), 202);
    let base = format!("http://127.0.0.1:{}", doraflow.prometheus);
    let all: Value = reqwest::get(format!("{base}/api/v1/dashboard"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(all["teams"], json!(["payments"]));
    assert_eq!(all["tiles"][0]["value"], "0.133/day");
    assert_eq!(all["tiles"][1]["value"], "1.00 h");

    let url = format!("{base}/#team=payments");
    let dom = tokio::task::spawn_blocking({
        let chromium = chromium.clone();
        let url = url.clone();
        move || headless(&chromium, &url, &["--dump-dom"])
    })
    .await
    .expect("chromium");
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    assert_eq!(
        tile_part(&dom, "deployment_frequency", "value"),
        "0.100/day"
    );
    assert_eq!(tile_part(&dom, "lead_time", "value"), "2.00 h");
    assert_eq!(tile_part(&dom, "rework_rate", "value"), "0.0%");
    assert!(
        dom.contains("<span id=\"scope\">· team payments</span>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td>checkout</td>") && dom.contains("<td>payments</td>"),
        "{dom}"
    );
    assert!(!dom.contains("<td>search</td>"), "{dom}");
    assert!(
        dom.contains("<option value=\"payments\">payments</option>"),
        "{dom}"
    );

    screenshot(chromium, url, "dashboard-team.png").await;
}

/// The service graph of a `dependencies` processor, drawn: checkout calls
/// payments (paired CLIENT and SERVER spans), its database `shop` and a
/// redis cache, and sends shipping a message; checkout in the first column,
/// the rest in the second, each edge labelled with its window's figures.
#[tokio::test]
async fn the_service_graph_is_drawn_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        say_skipped(
            "service graph in chromium",
            "no chromium (scripts/setup installs Debian's)",
        );
        return;
    };
    let doraflow = Doraflow::start_processors(
        "window: 5m, slice: 10s",
        "windows: [7d, 30d]",
        "interval: 1s",
        Some(""),
        256,
        "",
    );
    common::send_dependency_spans(&doraflow).await;
    let base = format!("http://127.0.0.1:{}", doraflow.prometheus);
    let api: Value = reqwest::get(format!("{base}/api/v1/dashboard"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let graph = &api["graph"];
    assert_eq!(
        graph["nodes"],
        json!([
            {"name": "checkout", "depth": 0},
            {"name": "payments", "depth": 1},
            {"name": "redis", "depth": 1},
            {"name": "shipping", "depth": 1},
            {"name": "shop", "depth": 1},
        ])
    );
    let edges: Vec<(&str, &str, &str)> = graph["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["server"].as_str().unwrap_or_default(),
                e["connection_type"].as_str().unwrap_or_default(),
                e["label"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    // Server-side p95 of one request: the payments span's 24 ms, the
    // database's and cache's their client spans' 5 and 1 ms, the message's
    // consumer 10 ms; as HDR reports them, the top of their buckets (24.1
    // for 24 and 5.02 for 5 ms: at most 1% above).
    assert_eq!(
        edges,
        [
            ("payments", "", "1 req · 0.0% failed · p95 24.1 ms"),
            ("redis", "database", "1 req · 0.0% failed · p95 1.00 ms"),
            (
                "shipping",
                "messaging_system",
                "1 req · 0.0% failed · p95 10.0 ms"
            ),
            ("shop", "database", "1 req · 0.0% failed · p95 5.02 ms"),
        ]
    );

    let url = format!("{base}/");
    let dom = tokio::task::spawn_blocking({
        let chromium = chromium.clone();
        let url = url.clone();
        move || headless(&chromium, &url, &["--dump-dom"])
    })
    .await
    .expect("chromium");
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    assert!(
        !dom.contains("<section id=\"graph-section\" hidden"),
        "{dom}"
    );
    for node in ["checkout", "payments", "redis", "shipping", "shop"] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\"")),
            "{node}: {dom}"
        );
    }
    for (server, _, label) in &edges {
        assert!(
            dom.contains(&format!("data-edge=\"checkout -&gt; {server}\"")),
            "{server}: {dom}"
        );
        assert!(dom.contains(label), "{label}: {dom}");
    }

    screenshot(chromium, url, "dashboard-graph.png").await;
}

/// A screenshot of `url` kept at `target/test-artifacts/<name>`, checked to
/// be a PNG.
async fn screenshot(chromium: PathBuf, url: String, name: &str) {
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("test-artifacts"))
        .expect("target dir");
    std::fs::create_dir_all(&shot).expect("artifacts dir");
    let shot = shot.join(name);
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || {
            headless(
                &chromium,
                &url,
                &[&format!("--screenshot={}", shot.display())],
            )
        }
    })
    .await
    .expect("chromium");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("dashboard screenshot: {}", shot.display());
}
