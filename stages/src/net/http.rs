//! One HTTP/1.1 request per connection, with a streamed response.
//!
//! A request opens its own connection through the [`Connector`] (so it is
//! checked against the tier and counted in the egress log), sends the whole
//! body, and returns once the response headers arrive, within the
//! first-byte timeout. The body is then read chunk by chunk, each within the
//! idle timeout. Dropping the [`Response`] closes the socket at once: an
//! interrupted reply is dropped, not drained.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mentis_pipeline::Secret;
use mentis_pipeline::privacy::redact_url;
use url::Url;

use super::connect::Connector;
use super::error::{NetError, status_hint};

/// Maximum error body kept for the error message, in bytes.
const ERROR_BODY_LIMIT: usize = 4096;
/// Maximum error body shown in the message, in characters.
const ERROR_BODY_SHOWN: usize = 300;
/// The `User-Agent` sent with every request.
const USER_AGENT: &str = concat!("mentis/", env!("CARGO_PKG_VERSION"));

/// An HTTP request to send.
#[derive(Debug)]
pub struct Request {
    method: Method,
    url: Url,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    /// Secrets sent in headers, masked in any error text taken from the response.
    secrets: Vec<Secret>,
}

impl Request {
    /// Builds a `POST` of `body` with the given content type.
    pub fn post(url: Url, content_type: &str, body: impl Into<Bytes>) -> Result<Self, NetError> {
        let mut request = Request { method: Method::POST, url, headers: Vec::new(), body: body.into(), secrets: Vec::new() };
        request.header(http::header::CONTENT_TYPE, content_type)?;
        Ok(request)
    }

    /// Builds a `POST` of a JSON body.
    pub fn post_json(url: Url, body: &impl serde::Serialize) -> Result<Self, NetError> {
        let endpoint = redact_url(&url);
        let body = serde_json::to_vec(body)
            .map_err(|error| NetError::BadEndpoint { endpoint, reason: format!("the request body: {error}") })?;
        Request::post(url, "application/json", body)
    }

    /// Adds a header.
    pub fn header(&mut self, name: HeaderName, value: &str) -> Result<&mut Self, NetError> {
        let value = HeaderValue::from_str(value).map_err(|_| NetError::BadEndpoint {
            endpoint: redact_url(&self.url),
            reason: format!("the value of header {name} is not valid header text"),
        })?;
        self.headers.push((name, value));
        Ok(self)
    }

    /// Adds a header holding a secret, such as `Authorization: Bearer KEY`:
    /// `prefix` then the secret. The value is marked sensitive, and no error
    /// shows it.
    pub fn secret_header(&mut self, name: HeaderName, prefix: &str, secret: &Secret) -> Result<&mut Self, NetError> {
        let mut value = HeaderValue::from_str(&format!("{prefix}{}", secret.expose())).map_err(|_| NetError::BadEndpoint {
            endpoint: redact_url(&self.url),
            reason: format!("the secret for header {name} holds characters a header cannot carry"),
        })?;
        value.set_sensitive(true);
        self.headers.push((name, value));
        self.secrets.push(secret.clone());
        Ok(self)
    }

    /// Returns the URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Returns the body length in bytes.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// A response whose headers have arrived and whose body streams.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Incoming,
    endpoint: String,
    idle: Duration,
    first_byte: Duration,
    /// The task that drives the connection. Dropping the response aborts it, which closes the socket.
    driver: AbortOnDrop,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Response {
    /// Returns the status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Returns the headers.
    pub fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }

    /// Returns the time from sending the request to the response headers.
    pub fn first_byte(&self) -> Duration {
        self.first_byte
    }

    /// Returns the endpoint, safe to print.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Returns the next piece of the body, or `None` at its end. Fails when
    /// the server is silent for longer than the idle timeout or the
    /// connection breaks.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, NetError> {
        loop {
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => return Err(NetError::IdleTimeout { endpoint: self.endpoint.clone(), after: self.idle }),
                Ok(None) => return Ok(None),
                Ok(Some(Err(error))) => {
                    return Err(NetError::Http { endpoint: self.endpoint.clone(), reason: error.to_string() });
                }
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers carry no body bytes.
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Ok(Some(data));
            }
        }
    }

    /// Reads the whole body, at most `limit` bytes.
    pub async fn bytes(mut self, limit: usize) -> Result<Vec<u8>, NetError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(NetError::Protocol {
                    endpoint: self.endpoint.clone(),
                    detail: format!("the response body is larger than {limit} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        drop(self.driver);
        Ok(body)
    }
}

/// Sends `request` on a new connection and waits for the response headers.
///
/// A status outside 2xx is returned as [`NetError::Status`] with the start
/// of the body and any `Retry-After` delay.
pub async fn send(connector: &Connector, request: Request) -> Result<Response, NetError> {
    let endpoint = redact_url(&request.url);
    let timeouts = connector.timeouts();
    let conn = connector.connect(&request.url).await?;

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|error| NetError::Http { endpoint: endpoint.clone(), reason: error.to_string() })?;
    let driver_endpoint = endpoint.clone();
    let driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(endpoint = driver_endpoint, %error, "HTTP connection ended with an error");
        }
    }));

    let http_request = build(&request, &endpoint)?;
    let secrets = request.secrets;
    let sent_at = Instant::now();
    let response = match tokio::time::timeout(timeouts.first_byte, sender.send_request(http_request)).await {
        Err(_) => return Err(NetError::FirstByteTimeout { endpoint, after: timeouts.first_byte }),
        Ok(Err(error)) => return Err(NetError::Http { endpoint, reason: error.to_string() }),
        Ok(Ok(response)) => response,
    };
    let first_byte = sent_at.elapsed();
    let (parts, body) = response.into_parts();
    let response = Response {
        status: parts.status,
        headers: parts.headers,
        body,
        endpoint,
        idle: timeouts.idle,
        first_byte,
        driver,
    };
    if response.status.is_success() {
        return Ok(response);
    }
    Err(status_error(response, &secrets).await)
}

/// Builds the hyper request: origin-form target, `Host`, then the caller's headers.
fn build(request: &Request, endpoint: &str) -> Result<http::Request<Full<Bytes>>, NetError> {
    let mut target = request.url.path().to_owned();
    if let Some(query) = request.url.query() {
        target.push('?');
        target.push_str(query);
    }
    let host = match (request.url.host_str(), request.url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => {
            return Err(NetError::BadEndpoint { endpoint: endpoint.to_owned(), reason: "the URL has no host".to_owned() });
        }
    };
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(target)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, USER_AGENT);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(request.body.clone()))
        .map_err(|error| NetError::BadEndpoint { endpoint: endpoint.to_owned(), reason: error.to_string() })
}

/// Turns an error response into [`NetError::Status`], reading a little of its body.
async fn status_error(mut response: Response, secrets: &[Secret]) -> NetError {
    let status = response.status.as_u16();
    let retry_after = response
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let text = mask_secrets(&String::from_utf8_lossy(&body), secrets);
    let text: String = text.chars().take(ERROR_BODY_SHOWN).collect();
    NetError::Status { endpoint: response.endpoint.clone(), status, body: text, retry_after, hint: status_hint(status) }
}

/// Replaces every occurrence of a secret in `text`, which came from a
/// server, so that a server echoing a key cannot make it appear in an error.
pub fn mask_secrets(text: &str, secrets: &[Secret]) -> String {
    let mut masked = text.to_owned();
    for secret in secrets {
        if !secret.expose().is_empty() {
            masked = masked.replace(secret.expose(), "[redacted]");
        }
    }
    masked
}

/// Parses a `Retry-After` value given in seconds. The HTTP-date form is not
/// used by the providers here and is ignored.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
    }
}
