//! Builds the configured components, wires them, supervises them, and
//! stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics::{counter, gauge};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::exporters::prometheus::{self, PrometheusExporter};
use crate::exporters::{alertmanager, pagerduty};
use crate::instruments;
use crate::receivers::{otlp_grpc, otlp_http, webhook};

use super::engine::{Engine, EngineChangelog, EngineStorage};
use super::restore::{restore_storage, resume_firing, resume_outbox};
use super::task::TaskFactory;
use super::{PipelineReader, Readiness, forwarding_queue, queue};

/// Runs the configured pipeline until `shutdown` is cancelled, then stops in
/// order: receivers, engine (drained), exporters.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_clock(config, shutdown, Arc::new(SystemClock)).await
}

/// As [`run`], with an explicit clock.
pub async fn run_with_clock(
    config: Config,
    shutdown: CancellationToken,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let (name, pipeline) = config.pipeline().context("no pipeline configured")?;
    let handle = prometheus::install_recorder()?;
    instruments::describe();

    let uses = |list: &[String], kind: &str| list.iter().any(|c| c == kind);
    let otlp = config
        .receivers
        .otlp
        .as_ref()
        .filter(|_| uses(&pipeline.receivers, "otlp"));
    let (mut factory, alert_interval) = TaskFactory::new(&config, pipeline);
    let mut local = factory.build();
    let mut dependencies = config
        .processors
        .dependencies
        .as_ref()
        .filter(|_| uses(&pipeline.processors, "dependencies"))
        .map(|c| {
            crate::processors::dependencies::DependencyProcessor::new(
                c,
                factory.default_environment(),
            )
        });
    // State first: a damaged checkpoint stops doraflow before it listens.
    let mut restored = match &config.storage {
        Some(c) => Some(restore_storage(c, &mut local, dependencies.as_mut())?),
        None => None,
    };

    // Bind every listener before serving anything: a taken port fails startup.
    let grpc = match otlp.and_then(|o| o.grpc.as_ref()) {
        Some(c) => Some((bind("receivers.otlp.grpc", &c.endpoint).await?, c.clone())),
        None => None,
    };
    let http = match otlp.and_then(|o| o.http.as_ref()) {
        Some(c) => Some((bind("receivers.otlp.http", &c.endpoint).await?, c.clone())),
        None => None,
    };
    let webhook = match config
        .receivers
        .webhook
        .as_ref()
        .filter(|_| uses(&pipeline.receivers, "webhook"))
    {
        Some(c) => Some((bind("receivers.webhook", &c.endpoint).await?, c.clone())),
        None => None,
    };
    let prometheus_listener = match config
        .exporters
        .prometheus
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "prometheus"))
    {
        Some(c) => Some(bind("exporters.prometheus", &c.endpoint).await?),
        None => None,
    };

    // The Kafka exporter first: the queue forwards into it.
    let kafka_exporter = match config
        .exporters
        .kafka
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "kafka"))
    {
        Some(c) => {
            tracing::info!(
                pipeline = name,
                brokers = c.brokers,
                "Kafka exporter started"
            );
            Some(crate::kafka::producer::start(c.clone())?)
        }
        None => None,
    };
    let forward = kafka_exporter.as_ref().map(|(tx, _)| tx.clone());
    let (mut sink, data) = match &forward {
        Some(tx) => forwarding_queue(pipeline.queue_size, tx.clone()),
        None => queue(pipeline.queue_size),
    };
    if let Some(d) = &dependencies {
        sink.span_keys = Some(d.span_keys().clone());
    }
    let limiter_stop = CancellationToken::new();
    let limiter = config
        .processors
        .memory_limiter
        .as_ref()
        .filter(|_| uses(&pipeline.processors, "memory_limiter"))
        .map(|c| {
            tracing::info!(
                pipeline = name,
                limit_mib = c.limit_mib,
                soft_limit_mib = c.soft_bytes() / 1_048_576,
                "memory limiter started"
            );
            let (gate, task) = crate::memory::start(c.clone(), limiter_stop.clone());
            sink.memory = Some(gate);
            task
        });
    let (query_tx, query_rx) = mpsc::channel(16);
    gauge!(instruments::QUEUE_CAPACITY).set(pipeline.queue_size as f64);
    let exporters_stop = CancellationToken::new();
    let mut alert_sinks = Vec::new();
    let mut change_sink = None;
    let mut exporter_tasks = Vec::new();
    if let Some(c) = config
        .exporters
        .pagerduty
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "pagerduty"))
    {
        tracing::info!(
            pipeline = name,
            change_events = c.change_events,
            "PagerDuty exporter started"
        );
        let (sink, changes, task) = pagerduty::start(c.clone(), exporters_stop.clone());
        alert_sinks.push(sink);
        change_sink = changes;
        exporter_tasks.push(task);
    }
    if let Some(c) = config
        .exporters
        .alertmanager
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "alertmanager"))
    {
        tracing::info!(
            pipeline = name,
            url = c.url,
            "Alertmanager exporter started"
        );
        let (sink, task) = alertmanager::start_alertmanager(c.clone(), exporters_stop.clone());
        alert_sinks.push(sink);
        exporter_tasks.push(task);
    }
    if let Some(c) = config
        .exporters
        .webhook
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "webhook"))
    {
        tracing::info!(pipeline = name, "webhook alert exporter started");
        let (sink, task) = alertmanager::start_webhook(c.clone(), exporters_stop.clone());
        alert_sinks.push(sink);
        exporter_tasks.push(task);
    }
    if change_sink.is_some() {
        factory.keep_production_deployments();
        if let Some(dora) = local.dora.as_mut() {
            dora.keep_production_deployments();
        }
    }
    if let Some(alerts) = &local.alerts {
        let outbox = restored
            .as_mut()
            .map(|r| std::mem::take(&mut r.3))
            .unwrap_or_default();
        resume_outbox(alerts, &outbox, &alert_sinks);
        resume_firing(alerts, &alert_sinks);
    }
    let (checkpoint_requests, requests) = mpsc::channel(4);
    let (storage, kafka_durability) = match (restored, &config.storage) {
        (Some((storage, segment, kafka_next, _)), Some(c)) => {
            // What the restored checkpoint holds is durable already.
            let durable = crate::storage::DurableOffsets::default();
            durable.set(
                &kafka_next
                    .iter()
                    .map(|((topic, partition), next)| crate::proto::KafkaOffset {
                        topic: topic.to_string(),
                        partition: *partition,
                        next_offset: *next,
                    })
                    .collect::<Vec<_>>(),
            );
            let resume = kafka_next
                .iter()
                .map(|((topic, partition), next)| ((topic.to_string(), *partition), *next))
                .collect();
            let writer = crate::storage::Writer::start(storage, segment, durable.clone())?;
            tracing::info!(dir = %c.dir.display(), "storage open");
            (
                Some(EngineStorage {
                    writer,
                    segment,
                    interval: c.checkpoint_interval.get(),
                    kafka_next,
                    requests: Some(requests),
                }),
                Some(crate::storage::KafkaDurability {
                    durable,
                    resume,
                    checkpoint: checkpoint_requests,
                }),
            )
        }
        _ => (None, None),
    };
    // With the changelog, Kafka's offsets are committed as far as the
    // changelog covers them, not the storage checkpoint.
    let kafka = config
        .receivers
        .kafka
        .as_ref()
        .filter(|_| uses(&pipeline.receivers, "kafka"));
    let (changelog, kafka_durability, link) =
        match kafka.and_then(|k| k.changelog_topic().map(|t| (k, t))) {
            Some((k, topic)) => {
                let partitions = {
                    let k = k.clone();
                    tokio::task::spawn_blocking(move || {
                        crate::kafka::changelog::input_partitions(
                            &k,
                            std::time::Duration::from_secs(60),
                        )
                    })
                    .await??
                };
                crate::kafka::changelog::ensure_topic(k, &topic, partitions).await?;
                let durable = crate::storage::DurableOffsets::default();
                let writer = {
                    let (k, topic, durable) = (k.clone(), topic.clone(), durable.clone());
                    tokio::task::spawn_blocking(move || {
                        crate::kafka::changelog::ChangelogWriter::start(&k, &topic, durable)
                    })
                    .await??
                };
                tracing::info!(pipeline = name, topic, partitions, "changelog open");
                let (flush_requests, flushes) = mpsc::channel(4);
                let (ownership, control) = mpsc::channel(4);
                (
                    Some(EngineChangelog {
                        writer: writer.clone(),
                        interval: k.commit_interval.get(),
                        requests: Some(flushes),
                        control: Some(control),
                    }),
                    Some(crate::storage::KafkaDurability {
                        durable,
                        resume: Default::default(),
                        checkpoint: flush_requests,
                    }),
                    Some(crate::kafka::consumer::ChangelogLink {
                        topic,
                        writer,
                        states: std::sync::Arc::new(super::engine::EngineStates {
                            factory: factory.clone(),
                            ownership,
                        }),
                    }),
                )
            }
            None => (None, kafka_durability, None),
        };
    // A component that ends before a stop was asked for fails doraflow:
    // logged, counted, and the process stops (non-zero) rather than run half-dead.
    let failed = CancellationToken::new();
    let stopping = CancellationToken::new();
    let otlp_exporter = config
        .exporters
        .otlp
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "otlp"));
    let (last_figures, last_figures_rx) = match otlp_exporter {
        Some(_) => {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let engine = supervise(
        "engine",
        stopping.clone(),
        failed.clone(),
        Engine {
            local,
            partitions: Default::default(),
            suspended: Default::default(),
            factory,
            alert_interval,
            alert_sinks,
            change_sink,
            clock,
            forward,
            storage,
            changelog,
            last_figures,
            dependencies,
        }
        .run_to_end(data, query_rx),
    );
    let reader = PipelineReader { tx: query_tx };
    if let (Some(c), Some(last)) = (otlp_exporter, last_figures_rx) {
        tracing::info!(
            pipeline = name,
            endpoint = c.endpoint,
            interval = c.interval.as_str(),
            "OTLP metrics exporter started"
        );
        exporter_tasks.push(crate::exporters::otlp::start(
            c.clone(),
            reader.clone(),
            last,
            exporters_stop.clone(),
        )?);
    }
    let readiness = Readiness::default();

    let receivers_stop = CancellationToken::new();
    let mut receivers = Vec::new();
    if let Some((listener, c)) = grpc {
        tracing::info!(pipeline = name, endpoint = %listener.local_addr()?, "OTLP gRPC receiver listening");
        receivers.push(supervise(
            "OTLP gRPC receiver",
            stopping.clone(),
            failed.clone(),
            otlp_grpc::serve(
                listener,
                c,
                otlp.and_then(|o| o.auth.clone()),
                sink.clone(),
                receivers_stop.clone(),
            ),
        ));
    }
    if let Some((listener, c)) = http {
        tracing::info!(pipeline = name, endpoint = %listener.local_addr()?, "OTLP HTTP receiver listening");
        receivers.push(supervise(
            "OTLP HTTP receiver",
            stopping.clone(),
            failed.clone(),
            otlp_http::serve(
                listener,
                c,
                otlp.and_then(|o| o.auth.clone()),
                sink.clone(),
                receivers_stop.clone(),
            ),
        ));
    }
    if let Some((listener, c)) = webhook {
        tracing::info!(pipeline = name, endpoint = %listener.local_addr()?, "CDEvents webhook receiver listening");
        receivers.push(supervise(
            "webhook receiver",
            stopping.clone(),
            failed.clone(),
            webhook::serve(listener, c, sink.clone(), receivers_stop.clone()),
        ));
    }
    if let Some(c) = kafka {
        tracing::info!(
            pipeline = name,
            brokers = c.brokers,
            group = c.group_id,
            "Kafka receiver started"
        );
        let task = crate::kafka::consumer::start(
            c.clone(),
            sink.clone(),
            receivers_stop.clone(),
            kafka_durability,
            link,
        )?;
        receivers.push(supervise(
            "Kafka receiver",
            stopping.clone(),
            failed.clone(),
            async move { task.await.map_err(|e| anyhow::anyhow!("{e}"))? },
        ));
    }
    drop(sink);

    let exporter = prometheus_listener.map(|listener| {
        tracing::info!(pipeline = name, endpoint = ?listener.local_addr().ok(), "Prometheus exporter listening");
        supervise(
            "Prometheus exporter",
            stopping.clone(),
            failed.clone(),
            PrometheusExporter::new(handle, reader.clone(), readiness.clone()).serve(
                listener,
                config.exporters.prometheus.clone(),
                exporters_stop.clone(),
            ),
        )
    });
    readiness.set(true);
    tracing::info!(pipeline = name, "doraflow is ready");

    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = failed.cancelled() => {}
    }
    stopping.cancel();
    let timeout = pipeline.shutdown_timeout.clone();
    let stop = async {
        tracing::info!("shutting down: stopping receivers");
        readiness.set(false);
        receivers_stop.cancel();
        for receiver in receivers {
            if let Ok(Err(e)) = receiver.await {
                tracing::error!(error = %e, "receiver stopped with an error");
            }
        }
        limiter_stop.cancel();
        if let Some(limiter) = limiter {
            let _ = limiter.await;
        }
        tracing::info!("draining the pipeline");
        if let Ok(Err(e)) = engine.await {
            tracing::error!(error = %e, "pipeline engine failed");
        }
        if let Some((tx, task)) = kafka_exporter {
            // Every sender is gone with the receivers and the engine: the
            // exporter sends what is queued, flushes and ends.
            drop(tx);
            tracing::info!("flushing the Kafka exporter");
            let _ = task.await;
        }
        // The engine is gone, so the alert queues only drain now, and the
        // OTLP exporter makes its last push; give them a while.
        let drained = wait_all(exporter_tasks);
        if tokio::time::timeout(std::time::Duration::from_secs(10), drained)
            .await
            .is_err()
        {
            tracing::warn!("exporters still retrying at shutdown; stopping them");
        }
        exporters_stop.cancel();
        if let Some(exporter) = exporter
            && let Ok(Err(e)) = exporter.await
        {
            tracing::error!(error = %e, "exporter stopped with an error");
        }
    };
    if tokio::time::timeout(timeout.get(), stop).await.is_err() {
        anyhow::bail!(
            "the shutdown did not finish within {} (pipelines.{name}.shutdown_timeout); stopping anyway",
            timeout.as_str()
        );
    }
    if failed.is_cancelled() {
        anyhow::bail!("a component failed (see above); doraflow stopped");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Spawns a component, watching it: if it ends (error, panic, or at all)
/// before `stopping`, that is logged, counted, and `failed` is cancelled so
/// doraflow stops instead of running half-dead.
fn supervise<F>(
    component: &'static str,
    stopping: CancellationToken,
    failed: CancellationToken,
    run: F,
) -> tokio::task::JoinHandle<anyhow::Result<()>>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let inner = tokio::spawn(run);
    tokio::spawn(async move {
        let result = match inner.await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("{component} panicked: {e}")),
        };
        if !stopping.is_cancelled() {
            match &result {
                Err(e) => {
                    tracing::error!(component, error = %e, "component failed; stopping doraflow")
                }
                Ok(()) => tracing::error!(
                    component,
                    "component stopped unexpectedly; stopping doraflow"
                ),
            }
            counter!(instruments::COMPONENT_FAILURES, "component" => component).increment(1);
            failed.cancel();
        }
        result
    })
}

async fn bind(component: &str, endpoint: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = endpoint
        .parse()
        .with_context(|| format!("{component}: `{endpoint}` is not a socket address"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{component}: cannot listen on {addr}"))
}

/// Waits for every task.
async fn wait_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

#[cfg(test)]
mod supervision_tests {
    use super::*;

    type Component = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

    #[tokio::test]
    async fn a_component_that_fails_panics_or_ends_before_a_stop_stops_doraflow() {
        let failing: [(&str, Component); 3] = [
            (
                "error",
                Box::pin(async { anyhow::bail!("listener closed") }),
            ),
            ("panic", Box::pin(async { panic!("a bug") })),
            ("ended", Box::pin(async { Ok(()) })),
        ];
        for (what, run) in failing {
            let (stopping, failed) = (CancellationToken::new(), CancellationToken::new());
            let result = supervise("test", stopping, failed.clone(), run)
                .await
                .expect("the supervisor itself never panics");
            assert!(failed.is_cancelled(), "{what}: doraflow must stop");
            match what {
                "error" => assert_eq!(result.unwrap_err().to_string(), "listener closed"),
                "panic" => assert!(
                    result.unwrap_err().to_string().starts_with("test panicked"),
                    "{what}"
                ),
                _ => assert!(result.is_ok()),
            }
        }
    }

    #[tokio::test]
    async fn a_component_that_ends_after_the_stop_was_asked_is_no_failure() {
        let (stopping, failed) = (CancellationToken::new(), CancellationToken::new());
        let run = {
            let stopping = stopping.clone();
            async move {
                stopping.cancelled().await;
                Ok(())
            }
        };
        let handle = supervise("test", stopping.clone(), failed.clone(), run);
        stopping.cancel();
        assert!(handle.await.expect("supervisor").is_ok());
        assert!(!failed.is_cancelled());
    }
}
