//! The test broker (Tansu, started by `scripts/test`, which names it in
//! `DORAFLOW_TEST_KAFKA`): topics made per test, messages produced with
//! librdkafka, the one the `rdkafka` crate builds.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{free_port, say_skipped};

/// The test broker, or a plain note that the test skipped.
pub fn broker(test: &str) -> Option<String> {
    let broker = std::env::var("DORAFLOW_TEST_KAFKA").ok();
    if broker.is_none() {
        say_skipped(
            test,
            "no Kafka broker (DORAFLOW_TEST_KAFKA unset; scripts/test starts one)",
        );
    }
    broker
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), free_port())
}

pub async fn create_topic(broker: &str, name: &str, partitions: i32) {
    create_topic_with(broker, name, partitions, &[]).await
}

/// As `create_topic`, with more librdkafka settings (TLS, say).
pub async fn create_topic_with(
    broker: &str,
    name: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) {
    let mut config = ClientConfig::new();
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let admin: AdminClient<DefaultClientContext> = config
        .set("bootstrap.servers", broker)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
}

/// One message to produce.
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

pub fn keyed(key: &str, payload: Vec<u8>) -> Record {
    Record {
        key: Some(key.to_string()),
        payload,
        headers: Vec::new(),
    }
}

/// Produces `records` to `topic` in order, and waits for every acknowledgement.
pub fn produce(broker: &str, topic: &str, records: &[Record]) {
    produce_with(broker, topic, records, &[])
}

/// As `produce`, with more librdkafka settings (TLS, say).
pub fn produce_with(broker: &str, topic: &str, records: &[Record], settings: &[(&str, &str)]) {
    let mut config = ClientConfig::new();
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let producer: BaseProducer = config
        .set("bootstrap.servers", broker)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &r.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut record = BaseRecord::to(topic)
            .payload(r.payload.as_slice())
            .headers(headers);
        if let Some(key) = &r.key {
            record = record.key(key.as_str());
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}
