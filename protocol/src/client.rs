//! A small blocking HTTPS client for the protocol (feature `client`).
//!
//! It trusts **only** the CA it is given (the control plane's private CA), optionally checks
//! that CA against a SHA-256 fingerprint the operator copied from `chaos-control init`,
//! refuses plain `http://`, and never follows redirects. TLS is rustls with the ring
//! provider. It does not retry by itself: [`ClientError::is_retryable`] tells the caller
//! whether a retry can help.
//!
//! ```no_run
//! use chaos_protocol::client::{Client, ClientConfig};
//! let ca = std::fs::read("/etc/chaos-agent/ca.pem").unwrap();
//! let client = Client::new(ClientConfig::new("https://control.example:8443", ca)).unwrap();
//! let health = client.health().unwrap();
//! assert_eq!(health.api, "v1");
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::http;
pub use ureq::http::Method;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::admin::Health;
use crate::agent::{AccessToken, RegisterRequest, RegisterResponse, RotateRequest, TasksResponse};
use crate::run::{LogBatch, LogsResponse, RunResult, StatusResponse, StatusUpdate};
use crate::{ApiError, ErrorBody, ErrorCode, API_PREFIX};

/// How to reach and trust the control plane.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:port` (no path).
    pub base_url: String,
    /// The control plane's CA certificate (PEM). Only this CA is trusted.
    pub ca_pem: Vec<u8>,
    /// If set, the CA's SHA-256 fingerprint must match (hex, colons and case ignored).
    pub ca_sha256: Option<String>,
    /// Connect (TCP + TLS) timeout.
    pub connect_timeout: Duration,
    /// Timeout of a whole call, except long polls, which get their `wait` on top.
    pub timeout: Duration,
    /// Use `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` from the environment.
    pub proxy_from_env: bool,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("ca_sha256", &self.ca_sha256)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Defaults: 10 s connect, 30 s per call, no proxy.
    pub fn new(base_url: impl Into<String>, ca_pem: Vec<u8>) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into(),
            ca_pem,
            ca_sha256: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            proxy_from_env: false,
            user_agent: concat!("chaos-protocol/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The configuration is unusable (bad URL, unreadable CA, fingerprint mismatch).
    Config(String),
    /// The call did not complete: DNS, connect, TLS (e.g. the server's certificate is not
    /// signed by our CA), timeout, or a broken connection.
    Transport(String),
    /// The server answered with an error.
    Api {
        /// HTTP status.
        status: u16,
        /// The error body.
        error: ApiError,
    },
    /// The server answered 2xx with a body this client cannot read.
    Decode(String),
}

impl ClientError {
    /// Whether retrying the same call later can help: transport failures, 5xx.
    /// 4xx errors will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Api { status, .. } => *status >= 500,
            ClientError::Config(_) | ClientError::Decode(_) => false,
        }
    }

    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Config(m) => write!(f, "client configuration: {m}"),
            ClientError::Transport(m) => write!(f, "cannot reach the control plane: {m}"),
            ClientError::Api { status, error } => write!(f, "HTTP {status}: {error}"),
            ClientError::Decode(m) => write!(f, "unreadable answer from the control plane: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The SHA-256 fingerprint of a DER certificate: uppercase hex pairs joined by `:`.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn normalize_fp(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// A blocking client. Cheap to clone; connections are pooled.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

/// A body to send: JSON, or raw bytes (for tests of malformed input).
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// No body.
    None,
    /// Raw bytes sent as `application/json`.
    Raw(&'a [u8]),
}

impl Client {
    /// Build a client. Fails if the URL is not `https://`, the CA cannot be read, or its
    /// fingerprint does not match.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let base = cfg.base_url.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            return Err(ClientError::Config(format!(
                "{base:?}: the control plane URL must start with https://"
            )));
        }
        let cas = ca_certificates(&cfg.ca_pem)?;
        if let Some(want) = &cfg.ca_sha256 {
            let have: Vec<String> = cas.iter().map(|c| fingerprint(c.der())).collect();
            if !have.iter().any(|h| normalize_fp(want) == normalize_fp(h)) {
                return Err(ClientError::Config(format!(
                    "the CA certificate's SHA-256 fingerprint is {}, not the expected {want}",
                    have.join(" / ")
                )));
            }
        }
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(cas)))
            .build();
        let proxy = if cfg.proxy_from_env {
            ureq::Proxy::try_from_env()
        } else {
            None
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(proxy)
            .user_agent(cfg.user_agent.as_str())
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_global(Some(cfg.timeout))
            .build()
            .into();
        Ok(Client {
            agent,
            base,
            timeout: cfg.timeout,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Send a request to `API_PREFIX + path` and return the status and body as they are.
    /// `extra` is added to the call's timeout (for long polls).
    pub fn call_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body<'_>,
        extra: Duration,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let url = format!("{}{API_PREFIX}{path}", self.base);
        let mut b = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Accept", "application/json");
        if let Some(t) = token {
            b = b.header("Authorization", format!("Bearer {t}"));
        }
        let bytes: Vec<u8> = match body {
            Body::None => Vec::new(),
            Body::Raw(r) => {
                b = b.header("Content-Type", "application/json");
                r.to_vec()
            }
        };
        let req = b
            .body(bytes)
            .map_err(|e| ClientError::Config(format!("{url}: {e}")))?;
        let req = self
            .agent
            .configure_request(req)
            .timeout_global(Some(self.timeout + extra))
            .build();
        let mut resp = self
            .agent
            .run(req)
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok((status, body))
    }

    /// Send a request and decode the JSON answer, or the error body.
    pub fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        self.call_with_extra(method, path, token, body, Duration::ZERO)
    }

    fn call_with_extra<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
        extra: Duration,
    ) -> Result<R, ClientError> {
        let bytes = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ClientError::Config(e.to_string()))?),
            None => None,
        };
        let body = bytes.as_deref().map(Body::Raw).unwrap_or(Body::None);
        let (status, bytes) = self.call_raw(method, path, token, body, extra)?;
        decode(status, &bytes)
    }

    /// `GET /health`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.call::<(), _>(Method::GET, "/health", None, None)
    }

    /// `POST /agents/register`.
    pub fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.call(Method::POST, "/agents/register", None, Some(req))
    }

    /// `POST /agents/{id}/token`: rotate; the answer is the next token.
    pub fn rotate(&self, agent_id: &str, token: &str) -> Result<AccessToken, ClientError> {
        self.call(
            Method::POST,
            &format!("/agents/{agent_id}/token"),
            Some(token),
            Some(&RotateRequest {}),
        )
    }

    /// `GET /agents/{id}/tasks?wait=S`: the long poll; also the heartbeat.
    pub fn tasks(
        &self,
        agent_id: &str,
        token: &str,
        wait: Duration,
    ) -> Result<TasksResponse, ClientError> {
        self.call_with_extra::<(), _>(
            Method::GET,
            &format!("/agents/{agent_id}/tasks?wait={}", wait.as_secs()),
            Some(token),
            None,
            wait,
        )
    }

    /// `POST /runs/{run}/status`.
    pub fn status(
        &self,
        run_id: &str,
        token: &str,
        update: &StatusUpdate,
    ) -> Result<StatusResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/runs/{run_id}/status"),
            Some(token),
            Some(update),
        )
    }

    /// `POST /runs/{run}/logs`. Safe to retry with the same lines.
    pub fn logs(
        &self,
        run_id: &str,
        token: &str,
        batch: &LogBatch,
    ) -> Result<LogsResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/runs/{run_id}/logs"),
            Some(token),
            Some(batch),
        )
    }

    /// `POST /runs/{run}/result`. Safe to retry with the same result.
    pub fn result(
        &self,
        run_id: &str,
        token: &str,
        result: &RunResult,
    ) -> Result<StatusResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/runs/{run_id}/result"),
            Some(token),
            Some(result),
        )
    }
}

/// Decode a 2xx body as `R`, anything else as an [`ErrorBody`].
pub fn decode<R: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<R, ClientError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()));
    }
    let error = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => b.error,
        Err(_) => ApiError {
            code: ErrorCode::Unknown,
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            problems: Vec::new(),
        },
    };
    Err(ClientError::Api { status, error })
}

/// Every certificate of a CA file. A file may hold more than one CA while the control
/// plane's CA is rotated (`chaos-control ca rotate`): each is trusted, and a pinned
/// fingerprint (`ca_sha256`) must be one of theirs.
fn ca_certificates(pem: &[u8]) -> Result<Vec<Certificate<'static>>, ClientError> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => out.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(ClientError::Config(format!(
                    "cannot read the CA certificate: {e}"
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(ClientError::Config(
            "cannot read the CA certificate: the file holds no PEM certificate".into(),
        ));
    }
    Ok(out)
}

/// Parse the first certificate of a PEM file and return its DER bytes.
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, ClientError> {
    Certificate::from_pem(pem)
        .map(|c| c.der().to_vec())
        .map_err(|e| ClientError::Config(format!("cannot read the certificate: {e}")))
}
