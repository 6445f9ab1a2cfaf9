//! The documents, checked: the configuration reference
//! (`docs/configuration.md`) against the config structs (every key the
//! parser accepts must be documented with its full path; the keys are read
//! from the parser's own "unknown field ..., expected one of ..." answer, so
//! a new field without documentation fails here), the README's size, and
//! every relative link of the README and `docs/` (the file, and the heading
//! an anchor names).

use doraflow::config::Config;

/// The keys the parser accepts at the section that `yaml` puts `__probe__` in.
fn accepted_keys(yaml: &str) -> Vec<String> {
    let err = Config::from_yaml_with_env(yaml, |_| None)
        .expect_err("the probe key must be refused")
        .to_string();
    let list = err
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in: {err}"));
    let list = list.lines().next().unwrap_or("");
    list.split(',')
        .map(|k| k.trim().trim_matches('`').to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

const PIPELINE: &str = "pipelines:\n  main: { receivers: [otlp], exporters: [prometheus] }\n";

#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let sections: [(&str, String, &[&str]); 33] = [
        (
            "receivers.otlp.grpc.tls",
            format!(
                "receivers:\n  otlp:\n    grpc: {{ tls: {{ cert_file: c, key_file: k, __probe__: 1 }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "exporters.pagerduty.tls",
            format!(
                "exporters:\n  pagerduty: {{ tls: {{ __probe__: 1 }}, routing_key: r }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.otlp.auth",
            format!(
                "receivers:\n  otlp:\n    auth: {{ __probe__: 1, bearer_token: t }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.webhook.auth",
            format!(
                "receivers:\n  webhook: {{ auth: {{ __probe__: 1, bearer_token: t }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.webhook.signature",
            format!(
                "receivers:\n  webhook: {{ signature: {{ __probe__: 1, secret: s }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "exporters.alertmanager",
            format!("exporters:\n  alertmanager: {{ url: x, __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "exporters.webhook",
            format!("exporters:\n  webhook: {{ url: x, __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "exporters.pagerduty",
            format!("exporters:\n  pagerduty: {{ __probe__: 1, routing_key: x }}\n{PIPELINE}"),
            &[],
        ),
        (
            "processors.alerts",
            format!("processors:\n  alerts: {{ __probe__: 1 }}\n{PIPELINE}"),
            &["rules"],
        ),
        (
            "processors.alerts.rules.<alertname>",
            format!(
                "processors:\n  alerts: {{ rules: {{ HighErrorRate: {{ __probe__: 1 }} }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "processors.dora.derived_incidents",
            format!("processors:\n  dora: {{ derived_incidents: {{ __probe__: 1 }} }}\n{PIPELINE}"),
            &[],
        ),
        (
            "processors.memory_limiter",
            format!("processors:\n  memory_limiter: {{ limit_mib: 1, __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "receivers.kafka",
            format!("receivers:\n  kafka: {{ brokers: k, topics: [], __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "receivers.kafka.changelog",
            format!(
                "receivers:\n  kafka: {{ brokers: k, topics: [], changelog: {{ __probe__: 1 }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.kafka.topics[]",
            format!(
                "receivers:\n  kafka: {{ brokers: k, topics: [{{ __probe__: 1 }}] }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "exporters.kafka.topics",
            format!(
                "exporters:\n  kafka: {{ brokers: k, topics: {{ __probe__: 1 }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "exporters.kafka",
            format!("exporters:\n  kafka: {{ brokers: k, __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "receivers.webhook",
            format!("receivers:\n  webhook: {{ __probe__: 1 }}\n{PIPELINE}"),
            &[
                "auth",
                "signature",
                "github",
                "gitlab",
                "argocd",
                "flux",
                "pagerduty",
                "alertmanager",
            ],
        ),
        (
            "receivers.webhook.github",
            format!(
                "receivers:\n  webhook: {{ github: {{ __probe__: 1, secret: s }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.webhook.gitlab",
            format!(
                "receivers:\n  webhook: {{ gitlab: {{ __probe__: 1, token: s }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.webhook.pagerduty",
            format!(
                "receivers:\n  webhook: {{ pagerduty: {{ __probe__: 1, secret: s }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.webhook.alertmanager",
            format!(
                "receivers:\n  webhook: {{ alertmanager: {{ __probe__: 1, bearer_token: s }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.webhook.argocd",
            format!(
                "receivers:\n  webhook: {{ argocd: {{ __probe__: 1, bearer_token: s }} }}\n{PIPELINE}"
            ),
            &[],
        ),
        (
            "receivers.webhook.flux",
            format!("receivers:\n  webhook: {{ flux: {{ __probe__: 1, secret: s }} }}\n{PIPELINE}"),
            &[],
        ),
        (
            "processors.dora",
            format!("processors:\n  dora: {{ __probe__: 1 }}\n{PIPELINE}"),
            &["levels", "deploy_pipelines", "derived_incidents"],
        ),
        (
            "processors.dora.levels",
            format!("processors:\n  dora: {{ levels: {{ __probe__: 1 }} }}\n{PIPELINE}"),
            &[],
        ),
        (
            "receivers.otlp",
            format!("receivers:\n  otlp:\n    __probe__: 1\n{PIPELINE}"),
            &["grpc", "http", "auth"],
        ),
        (
            "receivers.otlp.grpc",
            format!("receivers:\n  otlp:\n    grpc: {{ __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "receivers.otlp.http",
            format!("receivers:\n  otlp:\n    http: {{ __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "processors.red",
            format!("processors:\n  red: {{ __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "exporters.prometheus",
            format!("exporters:\n  prometheus: {{ __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "storage",
            format!("storage: {{ dir: /tmp/x, __probe__: 1 }}\n{PIPELINE}"),
            &[],
        ),
        (
            "pipelines.<name>",
            "pipelines:\n  main: { receivers: [otlp], exporters: [prometheus], __probe__: 1 }\n"
                .to_string(),
            &[],
        ),
    ];
    let mut missing = Vec::new();
    for (path, yaml, subsections) in &sections {
        let keys = accepted_keys(yaml);
        assert!(!keys.is_empty(), "{path}: no keys found");
        for key in keys.iter().filter(|k| !subsections.contains(&k.as_str())) {
            let documented = format!("`{path}.{key}`");
            if !readme.contains(&documented) {
                missing.push(documented);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks {missing:?}"
    );
}

/// The `dependencies` processor's keys are documented in its own page: each
/// appears in the example configuration there, under its section.
#[test]
fn every_dependencies_key_is_in_its_page() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/dependencies.md"))
            .unwrap();
    let mut missing = Vec::new();
    for (section, probe) in [
        ("", "__probe__: 1"),
        ("cache.", "cache: { __probe__: 1 }"),
        ("messaging.", "messaging: { __probe__: 1 }"),
        ("service_graph.", "service_graph: { __probe__: 1 }"),
    ] {
        let yaml = format!("processors:\n  dependencies: {{ {probe} }}\n{PIPELINE}");
        let keys = accepted_keys(&yaml);
        assert!(!keys.is_empty(), "{section}: no keys found");
        for key in keys {
            if !page.contains(&format!(
                "\n    {}{key}:",
                if section.is_empty() { "" } else { "  " }
            )) {
                missing.push(format!("processors.dependencies.{section}{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/dependencies.md lacks {missing:?}");
}

/// The README is a front door, read in one sitting.
#[test]
fn the_readme_is_under_15_kb() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.len() < 15 * 1024,
        "README.md is {} bytes",
        readme.len()
    );
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.starts_with("```") {
                fenced = !fenced;
            }
            !fenced
        })
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// Every relative link in the README, the top-level documents and `docs/`
/// resolves: the file exists and, with an anchor, has that heading.
#[test]
fn every_link_in_the_documents_resolves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<std::path::PathBuf> = [
        "README.md",
        "BENCHMARKS.md",
        "SECURITY.md",
        "RELIABILITY.md",
        "deploy/README.md",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let link = |text: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
            }
        }
        out
    };
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        for target in link(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a folder").join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let target_text = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&target_text).iter().any(|a| a == anchor) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} links found");
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
