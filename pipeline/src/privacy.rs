//! The privacy tier a pipeline is built for, and the check that enforces it.
//!
//! Each stage declares its [`Egress`]: nowhere, or an endpoint URL. A graph
//! built for a [`PrivacyTier`] rejects any stage whose endpoint goes further
//! than the tier allows:
//!
//! - `OnDevice`: no endpoint at all.
//! - `SelfHosted`: every address the host resolves to is loopback, RFC 1918,
//!   link-local, shared address space (100.64.0.0/10), or IPv6 unique-local or
//!   link-local; or the host is on the policy's allow-list. Plain http and ws
//!   are accepted here.
//! - `Cloud`: any host, but a host outside the self-hosted ranges must be
//!   reached over https or wss.
//!
//! Addresses are checked after resolution, so a hostname cannot hide a public
//! address behind a local-looking name.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::id::StageName;

/// How far a pipeline's data may travel. Ordered from most to least private.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyTier {
    /// No data leaves the process: no socket is opened.
    OnDevice,
    /// Data goes only to hosts on the local network or an explicit allow-list.
    SelfHosted,
    /// Data may go to named providers over TLS.
    Cloud,
}

impl fmt::Display for PrivacyTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrivacyTier::OnDevice => "on-device",
            PrivacyTier::SelfHosted => "self-hosted",
            PrivacyTier::Cloud => "cloud",
        })
    }
}

/// The destination of data a stage sends outside the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// Nowhere.
    None,
    /// To this endpoint.
    Endpoint(Url),
    /// To any of these endpoints: a backend with fallbacks. Every one of
    /// them must pass the tier check.
    Endpoints(Vec<Url>),
}

/// Returns `url` without credentials, query or fragment, safe to print.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both setters fail only for URLs that cannot have credentials, which have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// A stage whose endpoint the tier does not allow, or an endpoint that cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    /// An on-device pipeline contains a stage that sends data somewhere.
    #[error("stage {stage} sends data to {endpoint}, but an on-device pipeline opens no connection; use an on-device backend or build the pipeline for a wider tier")]
    NetworkOnDevice {
        /// The offending stage.
        stage: StageName,
        /// Its endpoint, without credentials or query.
        endpoint: String,
    },
    /// A self-hosted pipeline contains a stage that reaches a public address.
    #[error("stage {stage} sends data to {endpoint}, which resolves to the public address {address}; a self-hosted pipeline reaches only local-network hosts, so use a local server, add the host to the allow-list, or build the pipeline for the cloud tier")]
    PublicAddress {
        /// The offending stage.
        stage: StageName,
        /// Its endpoint, without credentials or query.
        endpoint: String,
        /// The first public address the host resolved to.
        address: IpAddr,
    },
    /// A plaintext URL points at a host outside the self-hosted ranges.
    #[error("stage {stage} would send data in plain text to {endpoint}, a host outside the local network; use https or wss")]
    Plaintext {
        /// The offending stage.
        stage: StageName,
        /// Its endpoint, without credentials or query.
        endpoint: String,
    },
    /// The URL scheme is not http, https, ws or wss.
    #[error("stage {stage} has endpoint {endpoint} with unsupported scheme {scheme:?}; use http, https, ws or wss")]
    Scheme {
        /// The offending stage.
        stage: StageName,
        /// Its endpoint, without credentials or query.
        endpoint: String,
        /// The rejected scheme.
        scheme: String,
    },
    /// The URL has no host.
    #[error("stage {stage} has endpoint {endpoint} without a host")]
    NoHost {
        /// The offending stage.
        stage: StageName,
        /// Its endpoint, without credentials or query.
        endpoint: String,
    },
    /// The host could not be resolved, so its addresses cannot be checked.
    #[error("stage {stage} has endpoint {endpoint} whose host could not be resolved ({reason}); a self-hosted pipeline must check every address, so fix the name or use an IP address")]
    Unresolved {
        /// The offending stage.
        stage: StageName,
        /// Its endpoint, without credentials or query.
        endpoint: String,
        /// The resolver's error.
        reason: String,
    },
}

/// Resolves host names to addresses for the privacy check.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// Returns every address of `host`.
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        Ok((host, port).to_socket_addrs()?.map(|address| address.ip()).collect())
    }
}

/// A fixed table of host names, for deployments that pin their hosts and for tests.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver {
    hosts: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// Creates an empty table.
    pub fn new() -> Self {
        StaticResolver::default()
    }

    /// Adds a host with its addresses.
    #[must_use]
    pub fn with_host(mut self, host: &str, addresses: &[IpAddr]) -> Self {
        self.hosts.insert(host.to_ascii_lowercase(), addresses.to_vec());
        self
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self, host: &str, _port: u16) -> std::io::Result<Vec<IpAddr>> {
        self.hosts.get(&host.to_ascii_lowercase()).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} is not in the host table"))
        })
    }
}

/// A tier plus the allow-list and resolver used to check endpoints.
#[derive(Debug, Clone)]
pub struct PrivacyPolicy {
    tier: PrivacyTier,
    allowed_hosts: BTreeSet<String>,
    resolver: Arc<dyn Resolver>,
}

impl PrivacyPolicy {
    /// Creates a policy for `tier` with the system resolver and no allow-list.
    pub fn new(tier: PrivacyTier) -> Self {
        PrivacyPolicy { tier, allowed_hosts: BTreeSet::new(), resolver: Arc::new(SystemResolver) }
    }

    /// Allows a host (compared case-insensitively) for the self-hosted tier
    /// whatever it resolves to.
    #[must_use]
    pub fn allow_host(mut self, host: &str) -> Self {
        self.allowed_hosts.insert(host.to_ascii_lowercase());
        self
    }

    /// Uses another resolver.
    #[must_use]
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Returns the tier.
    pub fn tier(&self) -> PrivacyTier {
        self.tier
    }

    /// Checks a stage's egress against the tier.
    pub fn check(&self, stage: &StageName, egress: &Egress) -> Result<(), PrivacyError> {
        match egress {
            Egress::None => Ok(()),
            Egress::Endpoint(url) => self.check_url(stage, url),
            Egress::Endpoints(urls) => urls.iter().try_for_each(|url| self.check_url(stage, url)),
        }
    }

    /// Returns the tier an endpoint needs at least: self-hosted when its host
    /// is on the allow-list or resolves only to local-network addresses,
    /// cloud otherwise. Fallback backends use it to never fall back to a
    /// less private endpoint than the one they replace.
    pub fn endpoint_tier(&self, stage: &StageName, url: &Url) -> Result<PrivacyTier, PrivacyError> {
        let endpoint = redact_url(url);
        let Some(host) = url.host_str() else {
            return Err(PrivacyError::NoHost { stage: stage.clone(), endpoint });
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if self.allowed_hosts.contains(&host.to_ascii_lowercase()) {
            return Ok(PrivacyTier::SelfHosted);
        }
        let port = url.port_or_known_default().unwrap_or(0);
        Ok(match self.first_public_address(stage, &endpoint, host, port)? {
            None => PrivacyTier::SelfHosted,
            Some(_) => PrivacyTier::Cloud,
        })
    }

    fn check_url(&self, stage: &StageName, url: &Url) -> Result<(), PrivacyError> {
        let endpoint = redact_url(url);
        if self.tier == PrivacyTier::OnDevice {
            return Err(PrivacyError::NetworkOnDevice { stage: stage.clone(), endpoint });
        }

        let scheme = url.scheme();
        let plaintext = match scheme {
            "http" | "ws" => true,
            "https" | "wss" => false,
            other => {
                return Err(PrivacyError::Scheme { stage: stage.clone(), endpoint, scheme: other.to_owned() });
            }
        };
        let Some(host) = url.host_str() else {
            return Err(PrivacyError::NoHost { stage: stage.clone(), endpoint });
        };
        // Brackets around IPv6 literals are not part of the address.
        let host = host.trim_start_matches('[').trim_end_matches(']');

        let public = if self.allowed_hosts.contains(&host.to_ascii_lowercase()) {
            None
        } else {
            self.first_public_address(stage, &endpoint, host, url.port_or_known_default().unwrap_or(0))?
        };
        match (public, self.tier, plaintext) {
            (None, _, _) => Ok(()),
            (Some(address), PrivacyTier::SelfHosted, _) => {
                Err(PrivacyError::PublicAddress { stage: stage.clone(), endpoint, address })
            }
            (Some(_), _, true) => Err(PrivacyError::Plaintext { stage: stage.clone(), endpoint }),
            (Some(_), _, false) => Ok(()),
        }
    }

    /// Checks the addresses a connection is about to use, for clients that
    /// resolve again when they connect.
    pub fn check_connect(&self, stage: &StageName, url: &Url, addresses: &[IpAddr]) -> Result<(), PrivacyError> {
        let endpoint = redact_url(url);
        match self.tier {
            PrivacyTier::OnDevice => Err(PrivacyError::NetworkOnDevice { stage: stage.clone(), endpoint }),
            PrivacyTier::SelfHosted => {
                let allowed = url.host_str().is_some_and(|host| self.allowed_hosts.contains(&host.to_ascii_lowercase()));
                match addresses.iter().find(|address| !is_local_address(**address)) {
                    Some(&address) if !allowed => {
                        Err(PrivacyError::PublicAddress { stage: stage.clone(), endpoint, address })
                    }
                    _ => Ok(()),
                }
            }
            PrivacyTier::Cloud => Ok(()),
        }
    }

    fn first_public_address(
        &self,
        stage: &StageName,
        endpoint: &str,
        host: &str,
        port: u16,
    ) -> Result<Option<IpAddr>, PrivacyError> {
        let addresses = match host.parse::<IpAddr>() {
            Ok(address) => vec![address],
            Err(_) => self.resolver.resolve(host, port).map_err(|error| PrivacyError::Unresolved {
                stage: stage.clone(),
                endpoint: endpoint.to_owned(),
                reason: error.to_string(),
            })?,
        };
        if addresses.is_empty() {
            return Err(PrivacyError::Unresolved {
                stage: stage.clone(),
                endpoint: endpoint.to_owned(),
                reason: "no addresses".to_owned(),
            });
        }
        Ok(addresses.into_iter().find(|address| !is_local_address(*address)))
    }
}

/// Returns whether an address is in a range that never leaves the local
/// network: loopback, RFC 1918 private, link-local, shared address space
/// (RFC 6598, 100.64.0.0/10), IPv6 unique-local (fc00::/7) or link-local
/// (fe80::/10). IPv4-mapped IPv6 addresses are judged by their IPv4 address.
pub fn is_local_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_local_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local_v4(v4),
            None => is_local_v6(v6),
        },
    }
}

fn is_local_v4(address: Ipv4Addr) -> bool {
    let [a, b, ..] = address.octets();
    let shared_address_space = a == 100 && (64..128).contains(&b);
    address.is_loopback() || address.is_private() || address.is_link_local() || shared_address_space
}

fn is_local_v6(address: Ipv6Addr) -> bool {
    let first = address.segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00;
    let link_local = first & 0xffc0 == 0xfe80;
    address.is_loopback() || unique_local || link_local
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage() -> StageName {
        StageName::new("stt").expect("valid name")
    }

    fn url(text: &str) -> Egress {
        Egress::Endpoint(Url::parse(text).expect("valid url"))
    }

    #[test]
    fn local_ranges() {
        let local = [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.1.1",
            "100.64.0.1", "100.127.255.255", "::1", "fd12::1", "fc00::1", "fe80::1", "::ffff:192.168.0.1",
        ];
        for text in local {
            let address: IpAddr = text.parse().expect("valid address");
            assert!(is_local_address(address), "{text} should be local");
        }
        let public = ["8.8.8.8", "172.32.0.1", "100.128.0.1", "100.63.255.255", "2001:db8::1", "::ffff:8.8.8.8", "0.0.0.0", "fec0::1"];
        for text in public {
            let address: IpAddr = text.parse().expect("valid address");
            assert!(!is_local_address(address), "{text} should be public");
        }
    }

    #[test]
    fn tier_matrix() {
        let resolver = StaticResolver::new()
            .with_host("gpu-box.lan", &["192.168.1.20".parse().expect("address")])
            .with_host("sneaky.lan", &["192.168.1.21".parse().expect("address"), "93.184.216.34".parse().expect("address")])
            .with_host("api.provider.test", &["93.184.216.34".parse().expect("address")]);
        let resolver: Arc<dyn Resolver> = Arc::new(resolver);
        let cases: &[(PrivacyTier, &str, bool)] = &[
            (PrivacyTier::OnDevice, "http://127.0.0.1:8080/v1", false),
            (PrivacyTier::SelfHosted, "http://127.0.0.1:8080/v1", true),
            (PrivacyTier::SelfHosted, "ws://gpu-box.lan:9000/stream", true),
            (PrivacyTier::SelfHosted, "http://sneaky.lan/", false),
            (PrivacyTier::SelfHosted, "https://api.provider.test/v1", false),
            (PrivacyTier::SelfHosted, "http://[::1]:11434/api/chat", true),
            (PrivacyTier::Cloud, "https://api.provider.test/v1", true),
            (PrivacyTier::Cloud, "wss://api.provider.test/listen", true),
            (PrivacyTier::Cloud, "http://api.provider.test/v1", false),
            (PrivacyTier::Cloud, "ws://api.provider.test/listen", false),
            (PrivacyTier::Cloud, "http://gpu-box.lan:8000/", true),
            (PrivacyTier::Cloud, "ftp://api.provider.test/", false),
            (PrivacyTier::SelfHosted, "http://unknown.lan/", false),
        ];
        for &(tier, endpoint, allowed) in cases {
            let policy = PrivacyPolicy::new(tier).with_resolver(Arc::clone(&resolver));
            let result = policy.check(&stage(), &url(endpoint));
            assert_eq!(result.is_ok(), allowed, "{tier} {endpoint}: {result:?}");
        }
    }

    #[test]
    fn allow_list_admits_public_host() {
        let resolver = StaticResolver::new().with_host("models.example.test", &["93.184.216.34".parse().expect("address")]);
        let policy = PrivacyPolicy::new(PrivacyTier::SelfHosted)
            .with_resolver(Arc::new(resolver))
            .allow_host("Models.Example.Test");
        assert_eq!(policy.check(&stage(), &url("https://models.example.test/v1")), Ok(()));
    }

    #[test]
    fn error_names_stage_and_endpoint_without_credentials() {
        let policy = PrivacyPolicy::new(PrivacyTier::OnDevice);
        let error = policy
            .check(&stage(), &url("https://user:hunter2@api.provider.test/v1?key=abc"))
            .expect_err("on-device rejects any endpoint");
        let message = error.to_string();
        assert!(message.contains("stage stt"), "{message}");
        assert!(message.contains("https://api.provider.test/v1"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(!message.contains("key=abc"), "{message}");
    }

    #[test]
    fn public_address_error_names_address() {
        let resolver = StaticResolver::new().with_host("printer.lan", &["8.8.4.4".parse().expect("address")]);
        let policy = PrivacyPolicy::new(PrivacyTier::SelfHosted).with_resolver(Arc::new(resolver));
        let error = policy.check(&stage(), &url("http://printer.lan/")).expect_err("public address");
        assert_eq!(
            error,
            PrivacyError::PublicAddress {
                stage: stage(),
                endpoint: "http://printer.lan/".to_owned(),
                address: "8.8.4.4".parse().expect("address"),
            }
        );
    }

    #[test]
    fn check_connect_rejects_rebound_address() {
        let policy = PrivacyPolicy::new(PrivacyTier::SelfHosted);
        let target = Url::parse("http://gpu-box.lan/").expect("valid url");
        let local: IpAddr = "10.0.0.5".parse().expect("address");
        let public: IpAddr = "1.1.1.1".parse().expect("address");
        assert_eq!(policy.check_connect(&stage(), &target, &[local]), Ok(()));
        assert!(policy.check_connect(&stage(), &target, &[local, public]).is_err());
    }
}
