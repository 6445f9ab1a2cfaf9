//! `exporters.kafka`: forwards what the pipeline applied to Kafka.
//!
//! OTLP requests are split by `service.name` at the protobuf level (each
//! part is a valid export request holding that service's resources, copied
//! byte for byte) and keyed by it; CDEvents are keyed by service too, so a
//! consumer group downstream owns disjoint services. The producer is
//! idempotent (no duplicates from its own retries). Delivery reports are
//! counted: `doraflow_exporter_sent_total{exporter="kafka"}` and
//! `doraflow_exporter_failed_total{exporter="kafka"}`.

use std::time::Duration;

use bytes::Bytes;
use metrics::counter;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use super::config::KafkaExporterConfig;
use crate::flow::Forward;
use crate::instruments;
use crate::otlp::wire;

/// Counts delivery reports.
struct DeliveryCounter;

impl ClientContext for DeliveryCounter {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "Kafka producer: {reason}");
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => counter!(instruments::EXPORTER_SENT, "exporter" => "kafka").increment(1),
            Err((e, _)) => {
                tracing::warn!(error = %e, "Kafka message not delivered");
                counter!(instruments::EXPORTER_FAILED, "exporter" => "kafka", "reason" => "rejected")
                    .increment(1);
            }
        }
    }
}

/// Starts the exporter: returns the queue the pipeline forwards into and the
/// task, which ends once every sender is gone and the producer is flushed.
pub fn start(
    config: KafkaExporterConfig,
) -> anyhow::Result<(mpsc::Sender<Forward>, tokio::task::JoinHandle<()>)> {
    let mut client = ClientConfig::new();
    // Defaults `settings` may change: batches fill for up to 50 ms. With
    // librdkafka's 5 ms its broker thread spent most of a core polling at
    // 100K spans/s (BENCHMARKS.md); 50 ms cuts that by a third for 50 ms
    // more latency on the way to the cluster tier. librdkafka buffers at most 64 MiB
    // (its default is 1 GiB) before `send` waits, which backs up into the
    // bounded queue and from there to the receivers.
    client
        .set("linger.ms", "50")
        .set("queue.buffering.max.kbytes", "65536");
    for (key, value) in &config.settings {
        client.set(key, value);
    }
    let producer: ThreadedProducer<DeliveryCounter> = client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set("enable.idempotence", "true")
        .set("compression.type", config.compression.as_str())
        .set(
            "message.timeout.ms",
            config.delivery_timeout.get().as_millis().to_string(),
        )
        .create_with_context(DeliveryCounter)
        .map_err(|e| anyhow::anyhow!("exporters.kafka: cannot create the producer: {e}"))?;
    let (tx, rx) = mpsc::channel(config.queue_size);
    let task = tokio::spawn(run(producer, config, rx));
    Ok((tx, task))
}

async fn run(
    producer: ThreadedProducer<DeliveryCounter>,
    config: KafkaExporterConfig,
    mut rx: mpsc::Receiver<Forward>,
) {
    while let Some(forward) = rx.recv().await {
        match forward {
            Forward::Otlp { signal, body } => {
                let topic = config.topics.of(signal);
                match wire::split_by_service(&body) {
                    Ok(parts) => {
                        for (service, part) in parts {
                            send(&producer, topic, &service, &part, None).await;
                        }
                    }
                    // Applied already, so it decoded: this cannot happen, but
                    // the data must not be lost over it.
                    Err(e) => {
                        tracing::warn!(error = %e, "forwarding a request unsplit");
                        send(&producer, topic, b"", &body, None).await;
                    }
                }
            }
            Forward::Events(events) => {
                for event in events {
                    send(
                        &producer,
                        &config.topics.cdevents,
                        event.key.as_bytes(),
                        &event.json,
                        Some("application/cloudevents+json"),
                    )
                    .await;
                }
            }
        }
    }
    let timeout = config.delivery_timeout.get();
    let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("Kafka exporter flushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "Kafka exporter: messages left unflushed"),
        Err(e) => tracing::warn!(error = %e, "Kafka exporter flush failed"),
    }
}

/// Queues one message; waits while librdkafka's own queue is full.
async fn send(
    producer: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    key: &[u8],
    payload: &Bytes,
    content_type: Option<&str>,
) {
    let mut record = BaseRecord::to(topic).payload(payload.as_ref());
    if !key.is_empty() {
        record = record.key(key);
    }
    if let Some(content_type) = content_type {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(content_type),
        }));
    }
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => {
                tracing::warn!(topic, error = %e, "cannot queue a Kafka message");
                counter!(instruments::EXPORTER_DROPPED, "exporter" => "kafka", "reason" => "rejected")
                    .increment(1);
                return;
            }
        }
    }
}
