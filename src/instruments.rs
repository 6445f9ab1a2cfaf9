//! Every metric doraflow exports, declared once: names, units, descriptions.
//!
//! Labels come from a small fixed set (`service`, `environment`, `window`,
//! `quantile`, `receiver`, `transport`, `signal`, `reason`); no label value is
//! taken unbounded from input, and series per service are capped by
//! `processors.red.max_series`.

use metrics::{Unit, describe_counter, describe_gauge};

/// Requests (entry spans) per service.
pub const SERVICE_REQUESTS_TOTAL: &str = "dora_service_requests_total";
/// Requests that were errors, per service.
pub const SERVICE_ERRORS_TOTAL: &str = "dora_service_errors_total";
/// Error log records (severity ERROR and above), per service.
pub const SERVICE_LOG_ERRORS_TOTAL: &str = "dora_service_log_errors_total";
/// Errors / requests over the rolling window.
pub const SERVICE_ERROR_RATIO: &str = "dora_service_error_ratio";
/// Latency quantiles over the rolling window.
pub const SERVICE_LATENCY_SECONDS: &str = "dora_service_latency_seconds";

/// Items accepted by a receiver.
pub const RECEIVER_ACCEPTED: &str = "doraflow_receiver_accepted_items_total";
/// Items refused by a receiver, by reason (`malformed`, `backpressure`, `invalid`, `series_limit`).
pub const RECEIVER_REFUSED: &str = "doraflow_receiver_refused_items_total";
/// Requests handled by a receiver.
pub const RECEIVER_REQUESTS: &str = "doraflow_receiver_requests_total";
/// Batches waiting in a pipeline's queue.
pub const QUEUE_DEPTH: &str = "doraflow_pipeline_queue_depth";
/// Capacity of a pipeline's queue.
pub const QUEUE_CAPACITY: &str = "doraflow_pipeline_queue_capacity";
/// Series the `red` processor holds.
pub const RED_SERIES: &str = "doraflow_red_series";
/// Bytes the `red` processor's windows hold on the heap.
pub const RED_WINDOW_BYTES: &str = "doraflow_red_window_bytes";
/// Alerts firing (1) or resolved (0), per rule and series.
pub const ALERTS_FIRING: &str = "doraflow_alerts_firing";
/// Events an exporter delivered.
pub const EXPORTER_SENT: &str = "doraflow_exporter_sent_total";
/// Failed delivery attempts of an exporter, by reason (`retryable`, `rejected`).
pub const EXPORTER_FAILED: &str = "doraflow_exporter_failed_total";
/// Events an exporter gave up on, by reason (`queue_full`, `retries_exhausted`).
pub const EXPORTER_DROPPED: &str = "doraflow_exporter_dropped_total";
/// Times an exporter's circuit breaker opened.
pub const EXPORTER_CIRCUIT_OPENED: &str = "doraflow_exporter_circuit_opened_total";
/// Kafka messages consumed, per topic.
pub const KAFKA_CONSUMED: &str = "doraflow_kafka_consumed_messages_total";
/// Undecodable Kafka messages, by what became of them (`sent` to the
/// dead-letter topic, `skipped` without one, `failed`).
pub const KAFKA_DEAD_LETTERS: &str = "doraflow_kafka_dead_letter_messages_total";
/// Dead-letter messages the broker did not acknowledge.
pub const KAFKA_DEAD_LETTER_FAILED: &str = "doraflow_kafka_dead_letter_failed_total";
/// Partitions this member owns.
pub const KAFKA_PARTITIONS: &str = "doraflow_kafka_assigned_partitions";
/// Consumer group rebalances seen.
pub const KAFKA_REBALANCES: &str = "doraflow_kafka_rebalances_total";
/// Changelog records written (state pieces, tombstones, offsets).
pub const CHANGELOG_RECORDS: &str = "doraflow_changelog_records_total";
/// Bytes of changelog record values written.
pub const CHANGELOG_BYTES: &str = "doraflow_changelog_bytes_total";
/// Changelog flushes that failed (written again with the next one).
pub const CHANGELOG_FAILURES: &str = "doraflow_changelog_failures_total";
/// Partitions' state restored from the changelog.
pub const CHANGELOG_RESTORES: &str = "doraflow_changelog_restores_total";
/// Times the consumer paused its partitions because the pipeline was full.
pub const KAFKA_PAUSES: &str = "doraflow_kafka_pauses_total";
/// Consumer errors (broker down, fetch failures).
pub const KAFKA_ERRORS: &str = "doraflow_kafka_consumer_errors_total";
/// Resident memory of the process, bytes (with a memory limiter).
/// Components that failed (ended before a stop was asked for), by component.
pub const COMPONENT_FAILURES: &str = "doraflow_component_failures_total";
/// Bytes appended to the delivery-event log.
pub const STORAGE_LOG_BYTES: &str = "doraflow_storage_log_bytes_total";
/// fsyncs of the delivery-event log (each acknowledges everything queued).
pub const STORAGE_LOG_SYNCS: &str = "doraflow_storage_log_syncs_total";
/// Size of the latest checkpoint.
pub const STORAGE_CHECKPOINT_BYTES: &str = "doraflow_storage_checkpoint_bytes";
/// When the latest durable checkpoint was taken (seconds since the epoch).
pub const STORAGE_CHECKPOINT_TIME: &str = "doraflow_storage_checkpoint_timestamp_seconds";
/// How long writing the latest checkpoint took.
pub const STORAGE_CHECKPOINT_SECONDS: &str = "doraflow_storage_checkpoint_duration_seconds";
/// Failed storage writes, by operation (`log`, `checkpoint`).
pub const STORAGE_ERRORS: &str = "doraflow_storage_errors_total";
/// Kafka messages skipped at start because the checkpoint already held them.
pub const KAFKA_SKIPPED: &str = "doraflow_kafka_skipped_messages_total";
/// TLS handshakes that failed or timed out, by reason.
pub const TLS_HANDSHAKE_FAILURES: &str = "doraflow_tls_handshake_failures_total";
/// Resident memory of the process.
pub const MEMORY_RESIDENT: &str = "doraflow_memory_resident_bytes";
/// The memory limiter's hard limit, bytes.
pub const MEMORY_LIMIT: &str = "doraflow_memory_limit_bytes";
/// 1 while the memory limiter refuses new data.
pub const MEMORY_LIMITER_REFUSING: &str = "doraflow_memory_limiter_refusing";
/// Batches refused by the memory limiter.
pub const MEMORY_LIMITER_REFUSED: &str = "doraflow_memory_limiter_refused_total";
/// Scrapes served.
pub const EXPORTER_SCRAPES: &str = "doraflow_exporter_scrapes_total";

/// Registers the descriptions and units of every metric with the installed recorder.
pub fn describe() {
    describe_counter!(
        RECEIVER_ACCEPTED,
        "Items (spans, log records, metric points) accepted by a receiver."
    );
    describe_counter!(
        RECEIVER_REFUSED,
        "Items refused by a receiver, by reason (malformed, backpressure, invalid, series_limit)."
    );
    describe_counter!(
        RECEIVER_REQUESTS,
        "Export requests handled by a receiver, by response outcome."
    );
    describe_gauge!(QUEUE_DEPTH, "Batches waiting in the pipeline queue.");
    describe_gauge!(
        QUEUE_CAPACITY,
        "Capacity of the pipeline queue, in batches."
    );
    describe_gauge!(
        RED_SERIES,
        "Series (service, environment) held by the red processor."
    );
    describe_gauge!(
        RED_WINDOW_BYTES,
        Unit::Bytes,
        "Heap bytes held by the red processor's rolling windows."
    );
    describe_counter!(EXPORTER_SCRAPES, "Scrapes of /metrics served.");
    describe_counter!(EXPORTER_SENT, "Events an exporter delivered.");
    describe_counter!(
        EXPORTER_CIRCUIT_OPENED,
        "Attempts an exporter made after waiting out an open circuit breaker."
    );
    describe_counter!(
        EXPORTER_FAILED,
        "Failed delivery attempts, by reason (retryable, rejected)."
    );
    describe_counter!(
        EXPORTER_DROPPED,
        "Events an exporter gave up on, by reason (queue_full, retries_exhausted)."
    );
    describe_counter!(
        COMPONENT_FAILURES,
        "Components that failed (ended before a stop was asked for); doraflow then stops."
    );
    describe_counter!(
        STORAGE_LOG_BYTES,
        Unit::Bytes,
        "Bytes appended to the delivery-event log."
    );
    describe_counter!(
        STORAGE_LOG_SYNCS,
        "fsyncs of the delivery-event log (one acknowledges everything queued)."
    );
    describe_gauge!(
        STORAGE_CHECKPOINT_BYTES,
        Unit::Bytes,
        "Size of the latest checkpoint."
    );
    describe_gauge!(
        STORAGE_CHECKPOINT_TIME,
        Unit::Seconds,
        "When the latest durable checkpoint was taken, seconds since the epoch."
    );
    describe_gauge!(
        STORAGE_CHECKPOINT_SECONDS,
        Unit::Seconds,
        "How long writing the latest checkpoint took."
    );
    describe_counter!(
        STORAGE_ERRORS,
        "Failed storage writes, by operation (log, checkpoint)."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes refused (plaintext, an unknown client certificate) or timed out."
    );
    describe_counter!(
        KAFKA_SKIPPED,
        "Kafka messages delivered again and skipped: already applied, in the restored checkpoint or earlier in this run."
    );
    describe_gauge!(
        MEMORY_RESIDENT,
        Unit::Bytes,
        "Resident memory of the process."
    );
    describe_gauge!(
        MEMORY_LIMIT,
        Unit::Bytes,
        "The memory limiter's hard limit."
    );
    describe_gauge!(
        MEMORY_LIMITER_REFUSING,
        "1 while memory is above the soft limit and new data is refused."
    );
    describe_counter!(
        MEMORY_LIMITER_REFUSED,
        "Batches refused by the memory limiter."
    );
    describe_counter!(KAFKA_CONSUMED, "Kafka messages consumed, per topic.");
    describe_counter!(
        KAFKA_DEAD_LETTERS,
        "Undecodable Kafka messages, by result (sent to the dead-letter topic, skipped without one, failed)."
    );
    describe_counter!(
        KAFKA_DEAD_LETTER_FAILED,
        "Dead-letter messages the broker did not acknowledge."
    );
    describe_gauge!(
        KAFKA_PARTITIONS,
        "Kafka partitions this consumer group member owns."
    );
    describe_counter!(KAFKA_REBALANCES, "Consumer group rebalances seen.");
    describe_counter!(
        CHANGELOG_RECORDS,
        "Changelog records written: state pieces, tombstones and offsets."
    );
    describe_counter!(
        CHANGELOG_BYTES,
        metrics::Unit::Bytes,
        "Bytes of changelog record values written."
    );
    describe_counter!(
        CHANGELOG_FAILURES,
        "Changelog flushes that failed; each is written again with the next."
    );
    describe_counter!(
        CHANGELOG_RESTORES,
        "Input partitions whose state was restored from the changelog."
    );
    describe_counter!(
        KAFKA_PAUSES,
        "Times the Kafka consumer paused its partitions because the pipeline queue was full."
    );
    describe_counter!(
        KAFKA_ERRORS,
        "Kafka consumer errors (broker unreachable, fetch failures)."
    );
    describe_gauge!(
        ALERTS_FIRING,
        "1 while the alert fires, 0 once it resolved, per alertname, service, environment, severity."
    );
}
