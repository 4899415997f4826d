//! WebSocket client connections over the checked, counted transport.

use http::header::{HeaderName, HeaderValue};
use mentis_pipeline::Secret;
use mentis_pipeline::privacy::redact_url;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

use super::connect::{Conn, Connector};
use super::error::NetError;

/// An open WebSocket.
pub type WebSocket = WebSocketStream<Conn>;

/// Largest message accepted from a server, in bytes. Speech services send
/// audio chunks of a few hundred kilobytes at most.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Opens a WebSocket to `url` with extra request headers. A secret header
/// (the API key) is marked sensitive. The handshake must finish within the
/// first-byte timeout.
pub async fn connect(
    connector: &Connector,
    url: &Url,
    headers: &[(HeaderName, &str)],
    secret_header: Option<(HeaderName, &str, &Secret)>,
) -> Result<WebSocket, NetError> {
    let endpoint = redact_url(url);
    let conn = connector.connect(url).await?;

    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|error| NetError::BadEndpoint { endpoint: endpoint.clone(), reason: error.to_string() })?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).map_err(|_| NetError::BadEndpoint {
            endpoint: endpoint.clone(),
            reason: format!("the value of header {name} is not valid header text"),
        })?;
        request.headers_mut().insert(name.clone(), value);
    }
    if let Some((name, prefix, secret)) = &secret_header {
        let mut value = HeaderValue::from_str(&format!("{prefix}{}", secret.expose())).map_err(|_| {
            NetError::BadEndpoint {
                endpoint: endpoint.clone(),
                reason: format!("the secret for header {name} holds characters a header cannot carry"),
            }
        })?;
        value.set_sensitive(true);
        request.headers_mut().insert(name.clone(), value);
    }

    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES));
    let limit = connector.timeouts().first_byte;
    let handshake = tokio_tungstenite::client_async_with_config(request, conn, Some(config));
    match tokio::time::timeout(limit, handshake).await {
        Err(_) => Err(NetError::FirstByteTimeout { endpoint, after: limit }),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body: String = response
                .body()
                .as_ref()
                .map(|body| String::from_utf8_lossy(body).into_owned())
                .unwrap_or_default();
            // A server that echoes the key must not make it appear in the error.
            let secrets: Vec<Secret> = secret_header.iter().map(|(_, _, secret)| (*secret).clone()).collect();
            let body = super::http::mask_secrets(&body, &secrets).chars().take(300).collect();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(super::http::parse_retry_after);
            Err(NetError::Status { endpoint, status, body, retry_after, hint: super::error::status_hint(status) })
        }
        Ok(Err(error)) => Err(NetError::WebSocket { endpoint, reason: error.to_string() }),
        Ok(Ok((socket, _response))) => Ok(socket),
    }
}
