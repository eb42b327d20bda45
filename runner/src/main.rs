//! `slipway-runner`: parse config, init telemetry, run until SIGTERM/SIGINT, then drain.

use clap::Parser;
use slipway_runner::{Config, run};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!("slipway-runner: {}", err.to_string().lines().next().unwrap_or("invalid configuration"));
            return std::process::ExitCode::from(64);
        }
    };
    if let Err(msg) = config.validate() {
        eprintln!("slipway-runner: {msg}");
        return std::process::ExitCode::from(64);
    }
    // The runner's own secrets stay masked in its log for as long as it runs.
    let _own = slipway_runner::mask::register(config.own_secrets());
    let format = match slipway_telemetry::logs::Format::from_env() {
        Ok(format) => format,
        Err(msg) => {
            eprintln!("slipway-runner: {msg}");
            return std::process::ExitCode::from(64);
        }
    };
    slipway_telemetry::logs::init(format, slipway_runner::mask::MaskedStderr::default);
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    // Traces go out over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when this drops.
    let _traces = match slipway_telemetry::trace::init("slipway-runner") {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("slipway-runner: setting up OTLP traces: {err:#}");
            return std::process::ExitCode::from(64);
        }
    };
    let metrics = match config.metrics() {
        Ok(Some(_)) => {
            match slipway_telemetry::metrics::install(slipway_telemetry::metrics::Process::Runner, shutdown.clone()) {
                Ok(handle) => Some(handle),
                Err(err) => {
                    eprintln!("slipway-runner: setting up metrics: {err:#}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    match run(config, metrics, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "runner stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}
