//! The tracing subscriber: JSON lines (default off a terminal) or pretty text.
//!
//! The sink is a parameter so tests capture output. In JSON, event fields and the fields of
//! every enclosing span are flattened to top-level keys, so `user_id`, `connection_id`,
//! `job_id` and `correlation_id` can be filtered with `jq 'select(.connection_id == "...")'`.
//! Rule that keeps the JSON valid: a field set on a span is not repeated on events inside it.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::settings::{LogFormat, LogSettings};

/// Builds the subscriber; `RUST_LOG` wins over `log.level` when set.
pub fn subscriber<W>(log: &LogSettings, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&log.level));
    let output: Box<dyn Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Json => {
            let mut layer = json_subscriber::JsonLayer::new(writer);
            layer
                .with_timer("timestamp", SystemTime)
                .with_level("level")
                .with_target("target")
                .with_flattened_event()
                .with_top_level_flattened_span_list();
            Box::new(layer)
        }
        LogFormat::Pretty => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_target(false),
        ),
    };
    Box::new(Registry::default().with(output).with(filter))
}

/// Installs the subscriber for the whole process (the binary calls this once).
pub fn init<W>(log: &LogSettings, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // Fails only when a subscriber is already set (tests); keeping that one is right.
    let _ = tracing::subscriber::set_global_default(subscriber(log, writer));
}
