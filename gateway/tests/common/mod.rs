//! A gateway on 127.0.0.1 with two tenants and the scripted pipelines, for
//! the server, load and client tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mentis_gateway::auth::{Claims, TOKEN_VERSION, TokenSigner, unix_now};
use mentis_gateway::client::{Endpoint, StreamPlan, load_wav_mono_i16, pcm16_frames};
use mentis_gateway::pipelines::scripted::{Fault, LoadTestConfig, LoadTestPipeline};
use mentis_gateway::pipelines::{PipelineBuildError, PipelineFactory, PipelineRegistry, PipelineRequest, SessionPipeline};
use mentis_gateway::protocol::{AudioEncoding, ConsentFlags, InputAudio, OutputAudio, PROTOCOL_VERSION, StartMessage};
use mentis_gateway::server::{Gateway, RunningGateway, ServerSettings, TokenRequest};
use mentis_gateway::tenants::{InMemoryTenants, KeyDigest, Limits, Tenant, UserId};
use mentis_pipeline::{PrivacyTier, Secret};

/// The recording every test streams: 7.1 s of LibriVox speech, 16 kHz mono.
pub const RECORDING: &str = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav";

pub const SIGNING_KEY: &str = "test-signing-key-of-at-least-32-bytes-0123456789";
pub const ACME_KEY: &str = "mgk_acme_0123456789abcdef0123456789abcdef";
pub const GLOBEX_KEY: &str = "mgk_globex_0123456789abcdef0123456789abcdef";
pub const ACME_ORIGIN: &str = "https://app.acme.test";

/// A factory that claims to need the cloud tier, for tier checks.
#[derive(Debug)]
pub struct CloudOnly(pub LoadTestPipeline);

impl PipelineFactory for CloudOnly {
    fn tier(&self) -> PrivacyTier {
        PrivacyTier::Cloud
    }

    fn build(&self, request: &PipelineRequest) -> Result<SessionPipeline, PipelineBuildError> {
        self.0.build(request)
    }
}

/// Fast scripted latencies, so tests wait little.
pub fn fast_config() -> LoadTestConfig {
    LoadTestConfig {
        stt_latency: Duration::from_millis(20),
        first_token_latency: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        tts_latency: Duration::from_millis(10),
        audio_per_token: Duration::from_millis(40),
        end_of_turn_silence: Duration::from_millis(300),
        ..LoadTestConfig::default()
    }
}

pub fn pipelines() -> PipelineRegistry {
    PipelineRegistry::new()
        .with("loadtest", LoadTestPipeline::new(fast_config()))
        .with("llm-drops", LoadTestPipeline::new(LoadTestConfig { fault: Some(Fault::LlmDropsMidTurn { after_tokens: 2 }), ..fast_config() }))
        .with("llm-hangs", LoadTestPipeline::new(LoadTestConfig { fault: Some(Fault::LlmHangs), stage_timeout: Duration::from_millis(300), ..fast_config() }))
        .with("cloud", CloudOnly(LoadTestPipeline::new(fast_config())))
}

pub fn acme_limits() -> Limits {
    Limits { max_concurrent_sessions: 3, max_new_sessions_per_minute: 1_000, max_message_bytes: 8 * 1024, ..Limits::default() }
}

pub fn tenants(acme: Limits, globex: Limits) -> InMemoryTenants {
    let mut table = InMemoryTenants::new();
    let acme = Tenant::new("acme", PrivacyTier::SelfHosted, acme).expect("valid id").with_origins([ACME_ORIGIN.to_owned()]);
    table.add_tenant(acme).expect("new tenant");
    table.add_tenant(Tenant::new("globex", PrivacyTier::Cloud, globex).expect("valid id")).expect("new tenant");
    table.add_key("acme", KeyDigest::of(&Secret::new(ACME_KEY))).expect("new key");
    table.add_key("globex", KeyDigest::of(&Secret::new(GLOBEX_KEY))).expect("new key");
    table
}

pub fn signer() -> TokenSigner {
    TokenSigner::new(Secret::new(SIGNING_KEY)).expect("long key")
}

pub struct TestGateway {
    pub running: RunningGateway,
    pub endpoint: Endpoint,
}

impl TestGateway {
    pub async fn start(settings: ServerSettings, acme: Limits, globex: Limits) -> TestGateway {
        Self::start_with_tls(settings, acme, globex, None, None).await
    }

    pub async fn start_with_tls(
        settings: ServerSettings,
        acme: Limits,
        globex: Limits,
        server_tls: Option<Arc<rustls::ServerConfig>>,
        client_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> TestGateway {
        let gateway = Gateway::builder(Arc::new(tenants(acme, globex)), signer()).pipelines(pipelines()).settings(settings).build();
        let running = gateway.bind("127.0.0.1:0".parse().expect("address"), server_tls).await.expect("bind on loopback");
        let endpoint = Endpoint { address: running.local_addr(), host: "localhost".to_owned(), tls: client_tls };
        TestGateway { running, endpoint }
    }

    pub async fn default() -> TestGateway {
        Self::start(ServerSettings::default(), acme_limits(), Limits::default()).await
    }

    pub async fn token(&self, key: &str, user: &str) -> String {
        let request = TokenRequest { user: UserId::new(user).expect("valid user"), tier: None, ttl_seconds: None };
        self.endpoint.request_token(&Secret::new(key), &request).await.expect("token").token
    }
}

/// A token signed with the test key, with any claims.
pub fn token_with(tenant: &str, tier: PrivacyTier, iat: u64, exp: u64) -> String {
    let claims = Claims { v: TOKEN_VERSION, tenant: tenant.to_owned(), user: UserId::new("user-1").expect("valid user"), tier, iat, exp };
    signer().issue(&claims).expose().to_owned()
}

pub fn now() -> u64 {
    unix_now()
}

pub fn start_message(pipeline: &str, tier: PrivacyTier, encoding: AudioEncoding, sample_rate: u32) -> StartMessage {
    StartMessage {
        version: PROTOCOL_VERSION,
        audio: InputAudio { encoding, sample_rate, channels: 1 },
        output: OutputAudio::default(),
        pipeline: pipeline.to_owned(),
        tier,
        consent: ConsentFlags::default(),
    }
}

/// The recording as 20 ms PCM16 frames at 16 kHz.
pub fn recording_frames() -> Arc<[Bytes]> {
    let (samples, rate) = load_wav_mono_i16(std::path::Path::new(RECORDING)).expect("the LibriVox recording; install pocketsphinx-en-us test data");
    assert_eq!(rate, 16_000);
    pcm16_frames(&samples, 320).into()
}

pub fn plan(start: StartMessage, frames: Arc<[Bytes]>, real_time: bool) -> StreamPlan {
    StreamPlan { start, frames, frame_duration: Duration::from_millis(20), real_time, linger: Duration::from_millis(800) }
}

/// Polls `condition` every 10 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
