//! Kafka: the `kafka` receiver (a consumer group member, at-least-once, with
//! a dead-letter topic) and the `kafka` exporter (an idempotent producer
//! keyed by service), both on librdkafka through the `rdkafka` crate.

pub mod changelog;
pub mod config;
pub mod consumer;
pub mod producer;

pub use config::{KafkaExporterConfig, KafkaReceiverConfig};
