//! OpenTelemetry trace export: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the
//! `tracing` spans of this process also go to an OTLP collector over
//! HTTP/protobuf (`…/v1/traces`, the endpoint's usual port 4318), next to the
//! usual stderr logs (JSON with `TRAINYARD_LOG_FORMAT=json`).
//!
//! The standard `OTEL_*` variables apply (`OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, …); the service name
//! defaults to `trainyard`. Spans are batched; the few still queued when the
//! process exits are lost (the provider is not flushed at exit).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the stderr logger plus the OTLP layer when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set; returns false (nothing installed)
/// when it is not, so the caller installs the plain logger.
pub fn try_init() -> bool {
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .is_none_or(|v| v.trim().is_empty())
    {
        return false;
    }
    // The exporter reads the endpoint (and headers, timeout) from the env itself.
    let exporter = match SpanExporter::builder().with_http().build() {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("trainyard: OTLP trace export is off: {err}");
            return false;
        }
    };
    let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name("trainyard").build()
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("trainyard");
    opentelemetry::global::set_tracer_provider(provider);

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let json = std::env::var("TRAINYARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init (tests) fails harmlessly.
    let _ = if json {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
    true
}
