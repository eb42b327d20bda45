//! `slipway-scheduler`: parse config, init telemetry, run until SIGTERM/SIGINT.

use clap::Parser;
use slipway_scheduler::{Config, run};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!("slipway-scheduler: {}", err.to_string().lines().next().unwrap_or("invalid configuration"));
            return std::process::ExitCode::from(64);
        }
    };
    if let Err(msg) = config.validate() {
        eprintln!("slipway-scheduler: {msg}");
        return std::process::ExitCode::from(64);
    }
    let format = match slipway_telemetry::logs::Format::from_env() {
        Ok(format) => format,
        Err(msg) => {
            eprintln!("slipway-scheduler: {msg}");
            return std::process::ExitCode::from(64);
        }
    };
    slipway_telemetry::logs::init(format, std::io::stderr);

    if let Some(slipway_scheduler::config::Command::RotateKey { to }) = &config.command {
        return match slipway_scheduler::rotate_key(&config, to.as_deref()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("slipway-scheduler rotate-key: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Traces go out over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when this drops.
    let _traces = match slipway_telemetry::trace::init("slipway-scheduler") {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("slipway-scheduler: setting up OTLP traces: {err:#}");
            return std::process::ExitCode::from(64);
        }
    };
    tracker.spawn(shutdown_on_signal(cancel.clone()));
    let metrics = match config.metrics {
        false => None,
        true => {
            match slipway_telemetry::metrics::install(slipway_telemetry::metrics::Process::Scheduler, cancel.clone()) {
                Ok(handle) => Some(handle),
                Err(err) => {
                    eprintln!("slipway-scheduler: setting up metrics: {err:#}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    };
    let result = run(config, metrics, cancel.clone(), tracker.clone()).await;
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(slipway_scheduler::SHUTDOWN_DEADLINE, tracker.wait()).await.is_err() {
        tracing::warn!("background tasks still running at the shutdown deadline; exiting anyway");
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "scheduler stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        // Shutting down for another reason (a fatal error): nothing left to wait for.
        _ = cancel.cancelled() => return,
    }
    tracing::info!("shutting down");
    cancel.cancel();
}
