//! The process's own log: `SLIPWAY_LOG` filters it (`info` by default), `SLIPWAY_LOG_FORMAT`
//! picks `text` (the default) or `json` (one object per line, for log shippers). Text carries
//! colour codes only when the log goes to a terminal.

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl Format {
    /// Reads `SLIPWAY_LOG_FORMAT`; an unknown value is an error naming the accepted ones.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var("SLIPWAY_LOG_FORMAT").ok().as_deref())
    }

    /// `None` or empty is text.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("text") => Ok(Format::Text),
            Some("json") => Ok(Format::Json),
            Some(other) => Err(format!("SLIPWAY_LOG_FORMAT must be text or json, not {other:?}")),
        }
    }
}

/// Installs the global subscriber writing to `writer` (which goes to standard error).
pub fn init<W>(format: Format, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        Format::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        Format::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_text_unless_json_is_asked_for_and_anything_else_is_refused() {
        assert_eq!(Format::parse(None), Ok(Format::Text));
        assert_eq!(Format::parse(Some("")), Ok(Format::Text));
        assert_eq!(Format::parse(Some("json")), Ok(Format::Json));
        let err = Format::parse(Some("logfmt")).expect_err("unknown format");
        assert!(err.contains("text or json"), "{err}");
    }
}
