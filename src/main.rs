//! The `doraflow` command line: parse arguments, load config, run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use doraflow::config::{Config, DEFAULT_PIPELINE_YAML};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// OTLP telemetry and CDEvents in; DORA metrics, service health and alerts out.
///
/// With no command, runs the embedded default pipeline (pipelines/default.yaml).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "DORAFLOW_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `doraflow=debug`.
    #[arg(long, global = true, default_value = "info", env = "DORAFLOW_LOG")]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline (the embedded default without --config).
    Run {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print every problem found.
    Validate {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the embedded default pipeline's configuration.
    DefaultConfig,
    /// Backfill: run recorded CDEvents (JSON lines) and OTLP/JSON files
    /// through the configured processors, then write the report. Nothing
    /// is received, exported or paged.
    Replay {
        /// The YAML configuration whose processors to run.
        #[arg(long, short)]
        config: PathBuf,
        /// The report's format.
        #[arg(long, value_enum, default_value = "markdown")]
        format: ReportFormat,
        /// Write the report here instead of to standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// No progress on standard error.
        #[arg(long, short)]
        quiet: bool,
        /// JSON-lines files (CDEvents, OTLP/JSON requests) or JSON files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Exit 0 if a running doraflow answers `/healthz` (for container
    /// health checks: the image needs no curl).
    Healthcheck {
        /// The doraflow's Prometheus exporter.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
    },
    /// Fetch the DORA assessment report from a running doraflow.
    Report {
        /// The doraflow's Prometheus exporter, e.g. `http://127.0.0.1:9464`.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        /// Markdown, JSON or HTML.
        #[arg(long, value_enum, default_value = "markdown")]
        format: ReportFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Markdown,
    Json,
    Html,
}

impl ReportFormat {
    fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Markdown => "markdown",
            ReportFormat::Json => "json",
            ReportFormat::Html => "html",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate { config }) => match load(Some(&config)) {
            Ok(_) => {
                println!("{}: valid", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::DefaultConfig) => {
            print!("{DEFAULT_PIPELINE_YAML}");
            ExitCode::SUCCESS
        }
        Some(Command::Healthcheck { url }) => {
            match get(&format!("{}/healthz", url.trim_end_matches('/'))) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("doraflow healthcheck: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Report { url, format }) => match fetch_report(&url, format) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("doraflow report: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Replay {
            config,
            format,
            output,
            quiet,
            inputs,
        }) => replay(&config, format, output.as_ref(), quiet, &inputs),
        Some(Command::Run { config }) => run(&cli.log_format, &cli.log_level, config.as_ref()),
        None => run(&cli.log_format, &cli.log_level, None),
    }
}

fn replay(
    config: &PathBuf,
    format: ReportFormat,
    output: Option<&PathBuf>,
    quiet: bool,
    inputs: &[PathBuf],
) -> ExitCode {
    let result = (|| -> anyhow::Result<(String, doraflow::replay::ReplayStats)> {
        let config = load(Some(config))?;
        let mut replayer = doraflow::pipeline::Replayer::new(&config)?;
        let progress = if quiet {
            doraflow::replay::Progress::Quiet
        } else {
            doraflow::replay::Progress::Auto
        };
        let started = std::time::Instant::now();
        let stats = doraflow::replay::replay(&mut replayer, inputs, progress)?;
        let seconds = started.elapsed().as_secs_f64();
        let inputs = replayer.finish();
        let now = inputs.dora.as_ref().map_or(0, |d| d.at);
        let report = doraflow::report::build(&inputs, now);
        let text = match format {
            ReportFormat::Markdown => doraflow::report::markdown(&report),
            ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
            ReportFormat::Html => doraflow::report::html(&report),
        };
        if !quiet {
            eprintln!(
                "replay: {} files, {} events and {} OTLP items applied in {seconds:.2} s ({:.0} events/s), {} skipped",
                stats.files,
                stats.events,
                stats.otlp_items,
                stats.events as f64 / seconds.max(1e-9),
                stats.malformed
            );
        }
        Ok((text, stats))
    })();
    match result {
        Ok((text, stats)) => {
            for problem in &stats.problems {
                eprintln!("replay: skipped {problem}");
            }
            if stats.malformed as usize > stats.problems.len() {
                eprintln!(
                    "replay: ... and {} more skipped",
                    stats.malformed as usize - stats.problems.len()
                );
            }
            let written = match output {
                Some(path) => std::fs::write(path, &text)
                    .with_context(|| format!("cannot write {}", path.display())),
                None => {
                    print!("{text}");
                    Ok(())
                }
            };
            match written {
                Err(e) => {
                    eprintln!("doraflow replay: {e:#}");
                    ExitCode::FAILURE
                }
                // Some input was skipped: the report stands, the exit status says so.
                Ok(()) if stats.malformed > 0 => ExitCode::from(3),
                Ok(()) => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("doraflow replay: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `GET {url}/report?format=...`.
fn fetch_report(url: &str, format: ReportFormat) -> anyhow::Result<String> {
    get(&format!(
        "{}/report?format={}",
        url.trim_end_matches('/'),
        format.as_str()
    ))
}

/// The body of `GET endpoint`, an error unless it answers 2xx.
fn get(endpoint: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(endpoint)
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("cannot reach {endpoint}"))?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "{endpoint} answered {status}: {body}");
        Ok(body)
    })
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Config::from_yaml(&text).with_context(|| format!("{} is not valid", path.display()))
        }
        None => Config::default_pipeline().context("the embedded default pipeline is not valid"),
    }
}

fn run(format: &LogFormat, level: &str, config: Option<&PathBuf>) -> ExitCode {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let config = match load(config) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    doraflow::memory::tune_allocator();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        doraflow::pipeline::run(config, shutdown).await
    });
    // A component stuck past the shutdown timeout must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            tracing::error!("cannot listen for SIGTERM");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
