//! Graph validation as a table of valid and invalid graphs.

mod common;

use std::sync::Arc;

use common::name;
use mentis_pipeline::privacy::StaticResolver;
use mentis_pipeline::{
    AudioFormat, EdgeConfig, Egress, GraphBuilder, GraphError, PortFormat, PrivacyPolicy, PrivacyTier, Stage,
    StageFuture, StageIo, StageSpec,
};

/// A stage that only declares a spec; validation never runs it.
struct Declared(StageSpec);

impl Stage for Declared {
    fn spec(&self) -> StageSpec {
        self.0.clone()
    }

    fn run<'a>(&'a mut self, _io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

fn stage(stage_name: &str, input: PortFormat, output: PortFormat) -> Declared {
    Declared(StageSpec::new(name(stage_name), input, output))
}

fn remote(stage_name: &str, input: PortFormat, output: PortFormat, endpoint: &str) -> Declared {
    let url = url::Url::parse(endpoint).expect("valid url");
    Declared(StageSpec::new(name(stage_name), input, output).with_egress(Egress::Endpoint(url)))
}

const A16: PortFormat = PortFormat::Audio(AudioFormat::mono_i16(16_000));
const A48: PortFormat = PortFormat::Audio(AudioFormat::mono_i16(48_000));
const NONE: PortFormat = PortFormat::None;

fn policy(tier: PrivacyTier) -> PrivacyPolicy {
    let resolver = StaticResolver::new()
        .with_host("whisper.lan", &["192.168.1.10".parse().expect("address")])
        .with_host("api.provider.test", &["93.184.216.34".parse().expect("address")]);
    PrivacyPolicy::new(tier).with_resolver(Arc::new(resolver))
}

/// Builds a graph from stages and edges given as index pairs.
fn build(tier: PrivacyTier, stages: Vec<Declared>, edges: &[(usize, usize)]) -> Result<(), GraphError> {
    let mut graph = GraphBuilder::new(policy(tier));
    let ids: Vec<_> = stages.into_iter().map(|stage| graph.add(stage)).collect();
    for &(from, to) in edges {
        graph.connect(ids[from], ids[to], EdgeConfig::default());
    }
    graph.build().map(|_| ())
}

#[test]
fn graph_validation_table() {
    type Case = (&'static str, PrivacyTier, Vec<Declared>, Vec<(usize, usize)>, Result<(), &'static str>);
    let on = PrivacyTier::OnDevice;
    let cases: Vec<Case> = vec![
        (
            "linear chain",
            on,
            vec![stage("mic", NONE, A16), stage("vad", A16, A16), stage("out", A16, NONE)],
            vec![(0, 1), (1, 2)],
            Ok(()),
        ),
        (
            "fan-out and fan-in",
            on,
            vec![stage("mic", NONE, A16), stage("left", A16, A16), stage("right", A16, A16), stage("mix", A16, NONE)],
            vec![(0, 1), (0, 2), (1, 3), (2, 3)],
            Ok(()),
        ),
        (
            "any-audio input",
            on,
            vec![stage("mic", NONE, A48), stage("writer", PortFormat::AnyAudio, NONE)],
            vec![(0, 1)],
            Ok(()),
        ),
        (
            "sample rate mismatch",
            on,
            vec![stage("mic", NONE, A48), stage("vad", A16, NONE)],
            vec![(0, 1)],
            Err("stage mic emits audio 48000 Hz 1 ch i16 but stage vad accepts audio 16000 Hz 1 ch i16; insert a resampler between them"),
        ),
        (
            "text into audio",
            on,
            vec![stage("llm", NONE, PortFormat::Text), stage("speaker", A16, NONE)],
            vec![(0, 1)],
            Err("stage llm emits text but stage speaker accepts audio 16000 Hz 1 ch i16; insert a text-to-speech stage between them"),
        ),
        (
            "unconnected input",
            on,
            vec![stage("mic", NONE, A16), stage("out", A16, NONE), stage("orphan", A16, NONE)],
            vec![(0, 1)],
            Err("stage orphan accepts audio 16000 Hz 1 ch i16 but nothing is connected to it"),
        ),
        (
            "unconnected output",
            on,
            vec![stage("mic", NONE, A16), stage("vad", A16, A16)],
            vec![(0, 1)],
            Err("stage vad emits audio 16000 Hz 1 ch i16 but it is connected to nothing; connect it or end the chain with a sink"),
        ),
        (
            "edge into a source",
            on,
            vec![stage("mic", NONE, A16), stage("other", NONE, A16), stage("out", A16, NONE)],
            vec![(0, 1), (1, 2)],
            Err("stage other has no input port, so it cannot be connected there"),
        ),
        (
            "cycle",
            on,
            vec![stage("mic", NONE, A16), stage("a", A16, A16), stage("b", A16, A16), stage("out", A16, NONE)],
            vec![(0, 1), (1, 2), (2, 1), (2, 3)],
            Err("the stages [\"a\", \"b\", \"out\"] form a cycle; a pipeline must flow one way"),
        ),
        (
            "duplicate names",
            on,
            vec![stage("mic", NONE, A16), stage("mic", A16, NONE)],
            vec![(0, 1)],
            Err("two stages are named mic; give each stage a unique name"),
        ),
        (
            "duplicate edge",
            on,
            vec![stage("mic", NONE, A16), stage("out", A16, NONE)],
            vec![(0, 1), (0, 1)],
            Err("stages mic and out are connected twice"),
        ),
        ("empty", on, vec![], vec![], Err("the graph has no stages")),
        (
            "network stage on device",
            on,
            vec![stage("mic", NONE, A16), remote("stt", A16, PortFormat::Transcript, "http://whisper.lan:8080/v1/audio/transcriptions"), stage("out", PortFormat::Transcript, NONE)],
            vec![(0, 1), (1, 2)],
            Err("stage stt sends data to http://whisper.lan:8080/v1/audio/transcriptions, but an on-device pipeline opens no connection; use an on-device backend or build the pipeline for a wider tier"),
        ),
        (
            "self-hosted stage on local network",
            PrivacyTier::SelfHosted,
            vec![stage("mic", NONE, A16), remote("stt", A16, PortFormat::Transcript, "http://whisper.lan:8080/v1/audio/transcriptions"), stage("out", PortFormat::Transcript, NONE)],
            vec![(0, 1), (1, 2)],
            Ok(()),
        ),
        (
            "cloud stage in self-hosted pipeline",
            PrivacyTier::SelfHosted,
            vec![stage("mic", NONE, A16), remote("stt", A16, PortFormat::Transcript, "wss://api.provider.test/v1/listen"), stage("out", PortFormat::Transcript, NONE)],
            vec![(0, 1), (1, 2)],
            Err("stage stt sends data to wss://api.provider.test/v1/listen, which resolves to the public address 93.184.216.34; a self-hosted pipeline reaches only local-network hosts, so use a local server, add the host to the allow-list, or build the pipeline for the cloud tier"),
        ),
        (
            "cloud stage over plain http",
            PrivacyTier::Cloud,
            vec![stage("mic", NONE, A16), remote("stt", A16, PortFormat::Transcript, "ws://api.provider.test/v1/listen"), stage("out", PortFormat::Transcript, NONE)],
            vec![(0, 1), (1, 2)],
            Err("stage stt would send data in plain text to ws://api.provider.test/v1/listen, a host outside the local network; use https or wss"),
        ),
    ];

    for (label, tier, stages, edges, expected) in cases {
        let result = build(tier, stages, &edges).map_err(|error| error.to_string());
        assert_eq!(result, expected.map_err(str::to_owned), "case: {label}");
    }
}

#[test]
fn invalid_edge_config_rejected() {
    let mut graph = GraphBuilder::new(policy(PrivacyTier::OnDevice));
    let mic = graph.add(stage("mic", NONE, A16));
    let out = graph.add(stage("out", A16, NONE));
    graph.connect(mic, out, EdgeConfig::lossless(0));
    let error = graph.build().expect_err("zero capacity");
    assert_eq!(error.to_string(), "the edge from mic to out is misconfigured: capacity must be at least 1 frame");
}
