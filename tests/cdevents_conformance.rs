//! The CDEvents conformance vectors (every event type, v0.4.1 and v0.5.1) in
//! `../shared/cdevents/`: every one is accepted by the decoder and by the
//! webhook of a real doraflow process. The vectors are read where they are,
//! not copied in; where `../shared` does not exist the test says it skipped.

mod common;

use std::path::PathBuf;

use common::Doraflow;
use doraflow::model::delivery::{DeliveryKind, DeploymentOutcome};

fn vectors() -> Option<Vec<PathBuf>> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/cdevents"));
    if !root.is_dir() {
        return None;
    }
    let mut files = Vec::new();
    for version in ["v0.4.1", "v0.5.1"] {
        let dir = root.join(version).join("conformance");
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    Some(files)
}

#[tokio::test]
async fn every_conformance_vector_is_accepted() {
    let Some(files) = vectors() else {
        common::say_skipped(
            "every_conformance_vector_is_accepted",
            "../shared/cdevents is not beside this checkout",
        );
        return;
    };
    assert_eq!(files.len(), 90, "45 event types in each of two versions");
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let client = reqwest::Client::new();
    let mut deployments = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let event = doraflow::cdevents::decode_event(&value)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_stem().unwrap().to_string_lossy();
        let expected_kind = match &event.kind {
            DeliveryKind::Deployment(d) => {
                deployments += 1;
                let rollback = d.outcome == DeploymentOutcome::Rollback;
                assert_eq!(rollback, name == "service_rolledback", "{name}");
                "deployment"
            }
            DeliveryKind::Change { .. } => "change",
            DeliveryKind::ArtifactLink { .. } => "artifact",
            DeliveryKind::IncidentOpened { .. } | DeliveryKind::IncidentResolved { .. } => {
                "incident"
            }
            DeliveryKind::PipelineFailed { .. } => "pipelinerun",
            DeliveryKind::Other { .. } => "other",
            // doraflow's extensions (customData.revision, customData.reopened):
            // never in a standard vector.
            DeliveryKind::Revision { .. }
            | DeliveryKind::IncidentReopened { .. }
            | DeliveryKind::ChangeFromCommits { .. }
            | DeliveryKind::ChangeRework { .. } => "extension",
            // doraflow's own verdicts: never decoded from a CDEvent.
            DeliveryKind::Regression(_) => "doraflow",
        };
        let want = match name.as_ref() {
            "service_deployed" | "service_upgraded" | "service_rolledback" => "deployment",
            "change_created" | "change_merged" => "change",
            "artifact_packaged" => "artifact",
            "incident_detected" | "incident_reported" | "incident_resolved" => "incident",
            "pipelinerun_finished" => "pipelinerun",
            _ => "other",
        };
        assert_eq!(expected_kind, want, "{}", path.display());

        let response = client
            .post(doraflow.webhook_url())
            .header("content-type", "application/json")
            .body(text)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", path.display());
    }
    assert_eq!(deployments, 6);
}
