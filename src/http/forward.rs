//! The client half of a routed query: one GET to the owning instance's HTTP (HTTPS when this
//! instance serves HTTPS), bounded in time, its answer handed back as it came.

use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use openssl::ssl::{SslConnector, SslMethod};
use tokio::net::TcpStream;

use crate::config::HttpConfig;

/// A forwarded query that takes longer than this counts as an unreachable owner.
const LIMIT: Duration = Duration::from_secs(3);

/// The owner's answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends queries to other instances.
pub struct Forwarder {
    tls: Option<SslConnector>,
}

impl Forwarder {
    /// Plain HTTP, or HTTPS checked against `http.tls.peer_ca` (else the system's CAs) when this
    /// instance serves HTTPS: instances of one application serve alike.
    pub fn new(http: &HttpConfig) -> Result<Self, String> {
        let Some(tls) = &http.tls else {
            return Ok(Self { tls: None });
        };
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        match &tls.peer_ca {
            Some(ca) => b
                .set_ca_file(ca)
                .map_err(|e| format!("peer_ca `{}`: {e}", ca.display()))?,
            None => b.set_default_verify_paths().map_err(|e| e.to_string())?,
        }
        Ok(Self {
            tls: Some(b.build()),
        })
    }

    /// GETs `path` (with its query) from `server` (`host:port`), passing `headers` on.
    pub async fn get(
        &self,
        server: &str,
        path: &str,
        headers: &[(header::HeaderName, HeaderValue)],
    ) -> Result<Answer, String> {
        tokio::time::timeout(LIMIT, self.exchange(server, path, headers))
            .await
            .map_err(|_| format!("no answer within {} s", LIMIT.as_secs()))?
    }

    async fn exchange(
        &self,
        server: &str,
        path: &str,
        headers: &[(header::HeaderName, HeaderValue)],
    ) -> Result<Answer, String> {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut request = Request::get(path);
        request = request.header(header::HOST, server);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        match &self.tls {
            None => send(TokioIo::new(tcp), request).await,
            Some(connector) => {
                let host = server
                    .rsplit_once(':')
                    .map_or(server, |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let ssl = connector
                    .configure()
                    .and_then(|c| c.into_ssl(host))
                    .map_err(|e| e.to_string())?;
                let mut stream =
                    tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
                Pin::new(&mut stream)
                    .connect()
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                send(TokioIo::new(stream), request).await
            }
        }
    }
}

async fn send<IO>(io: IO, request: Request<Empty<Bytes>>) -> Result<Answer, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
