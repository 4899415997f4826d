//! A synthetic tone through pass-through stages into a counting sink, then the
//! session's metrics report as JSON and as Prometheus text.
//!
//! Run with `cargo run --release --example tone_pipeline`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mentis::pipeline::basic::{CountingSink, PassThrough, ToneSource};
use mentis::pipeline::{AudioFormat, EdgeConfig, GraphBuilder, PortFormat, PrivacyPolicy, PrivacyTier, SessionId, StageName};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();

    let format = AudioFormat::mono_i16(16_000);
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));

    // One second of 20 ms frames, released as fast as the graph takes them.
    let source = graph.add(ToneSource::new(StageName::new("tone")?, format, Duration::from_millis(20), 50));
    let mut previous = source;
    for index in 0..3 {
        let stage = graph.add(PassThrough::new(StageName::new(format!("pass{index}"))?, PortFormat::Audio(format)));
        graph.connect(previous, stage, EdgeConfig::lossless(8));
        previous = stage;
    }
    let (sink, count) = CountingSink::new(StageName::new("sink")?);
    let sink = graph.add(sink);
    graph.connect(previous, sink, EdgeConfig::lossless(8));

    let report = graph.build()?.start(SessionId(1)).wait().await?;
    println!("sink received {} frames", count.load(Ordering::Relaxed));
    println!("{}", report.to_json());
    println!("{}", report.to_prometheus());
    Ok(())
}
