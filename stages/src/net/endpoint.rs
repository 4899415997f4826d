//! Where a network backend connects, with what key, and how it retries.

use std::path::PathBuf;
use std::sync::Arc;

use mentis_pipeline::privacy::redact_url;
use mentis_pipeline::wrap::RetryPolicy;
use mentis_pipeline::{Egress, Secret, StageIo};
use rustls::ClientConfig;
use url::Url;

use super::connect::{Connector, Timeouts, tls_config};
use super::error::NetError;

/// Whether a backend is a cloud provider or a server on the local network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosting {
    /// A provider on the internet: only `https` and `wss` URLs are accepted.
    Cloud,
    /// A server the user runs: plain `http` and `ws` are accepted too, and
    /// the tier check at connect time keeps it on the local network (or the
    /// allow-list) in a self-hosted pipeline.
    SelfHosted,
}

/// The connection settings of one backend.
#[derive(Clone)]
pub struct Endpoint {
    url: Url,
    hosting: Hosting,
    api_key: Option<Secret>,
    tls: Arc<ClientConfig>,
    timeouts: Timeouts,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &redact_url(&self.url))
            .field("hosting", &self.hosting)
            .field("api_key", &self.api_key)
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Creates the settings of `backend` at `url`. A cloud backend refuses a
    /// plaintext URL. TLS trusts the webpki roots.
    pub fn new(backend: &'static str, hosting: Hosting, url: Url) -> Result<Self, NetError> {
        let endpoint = redact_url(&url);
        match (url.scheme(), hosting) {
            ("https" | "wss", _) | ("http" | "ws", Hosting::SelfHosted) => {}
            (scheme @ ("http" | "ws"), Hosting::Cloud) => {
                let secure = if scheme == "http" { "https" } else { "wss" };
                return Err(NetError::Plaintext { backend, endpoint, scheme: scheme.to_owned(), secure });
            }
            (other, _) => {
                return Err(NetError::BadEndpoint {
                    endpoint,
                    reason: format!("the scheme {other:?} is not http, https, ws or wss"),
                });
            }
        }
        if url.host_str().is_none() {
            return Err(NetError::BadEndpoint { endpoint, reason: "the URL has no host".to_owned() });
        }
        Ok(Endpoint {
            url,
            hosting,
            api_key: None,
            tls: tls_config(None)?,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
        })
    }

    /// Sends `key` with every request.
    #[must_use]
    pub fn with_api_key(mut self, key: Secret) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Trusts the CA certificates in `ca_file` (PEM) besides the webpki roots.
    pub fn with_ca_file(mut self, ca_file: &PathBuf) -> Result<Self, NetError> {
        self.tls = tls_config(Some(ca_file))?;
        Ok(self)
    }

    /// Uses other time limits.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Uses another retry policy (attempts and backoff of one request).
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Returns the URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Returns whether the backend is a cloud provider or self-hosted.
    pub fn hosting(&self) -> Hosting {
        self.hosting
    }

    /// Returns the API key, if one is set.
    pub fn api_key(&self) -> Option<&Secret> {
        self.api_key.as_ref()
    }

    /// Returns the retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Returns the time limits.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Returns the egress a stage using this endpoint declares in its spec.
    pub fn egress(&self) -> Egress {
        Egress::Endpoint(self.url.clone())
    }

    /// Returns a connector for the stage running with `io`.
    pub fn connector(&self, io: &StageIo) -> Connector {
        Connector::for_stage(io, Arc::clone(&self.tls), self.timeouts)
    }

    /// Returns `url` with `path` joined to the endpoint's path, for backends
    /// whose configured URL is a base such as `http://127.0.0.1:8080/v1`.
    pub fn join(&self, path: &str) -> Result<Url, NetError> {
        let mut url = self.url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{}", path.trim_start_matches('/')));
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_backends_refuse_plaintext() {
        let url = Url::parse("http://api.example.test/v1").expect("url");
        let error = Endpoint::new("openai", Hosting::Cloud, url.clone()).expect_err("plain http");
        assert!(error.to_string().contains("use https"), "{error}");
        let ws = Url::parse("ws://api.example.test/v1/listen").expect("url");
        assert!(Endpoint::new("deepgram", Hosting::Cloud, ws).expect_err("plain ws").to_string().contains("use wss"));
        assert!(Endpoint::new("ollama", Hosting::SelfHosted, url).is_ok());
        let ftp = Url::parse("ftp://files.example.test/").expect("url");
        assert!(matches!(Endpoint::new("ollama", Hosting::SelfHosted, ftp), Err(NetError::BadEndpoint { .. })));
    }

    #[test]
    fn debug_hides_the_key() {
        let url = Url::parse("https://api.example.test/v1").expect("url");
        let endpoint = Endpoint::new("openai", Hosting::Cloud, url).expect("endpoint").with_api_key(Secret::new("sk-hidden-1234"));
        assert!(!format!("{endpoint:?}").contains("sk-hidden-1234"));
    }

    #[test]
    fn join_appends_to_the_base_path() {
        let url = Url::parse("http://127.0.0.1:8080/v1/").expect("url");
        let endpoint = Endpoint::new("openai", Hosting::SelfHosted, url).expect("endpoint");
        assert_eq!(endpoint.join("/audio/speech").expect("joined").as_str(), "http://127.0.0.1:8080/v1/audio/speech");
    }
}
