//! Request bodies (read within limits, parsed with the path of every problem) and error answers.

use super::*;

/// An error answer: status + `{"error": ...}`.
#[derive(Debug)]
pub struct ApiErr(pub ApiError);

impl ApiErr {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiErr {
        ApiErr(ApiError {
            code,
            message: message.into(),
            problems: Vec::new(),
        })
    }

    pub(crate) fn invalid(message: impl Into<String>, problems: Vec<Problem>) -> ApiErr {
        ApiErr(ApiError {
            code: ErrorCode::Invalid,
            message: message.into(),
            problems,
        })
    }

    pub(crate) fn from_invalid(what: &str, inv: Invalid) -> ApiErr {
        ApiErr::invalid(format!("the {what} has invalid fields"), inv.0)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(ErrorBody { error: self.0 })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The rest of a too-large body is not read (only drained, see `linger`): this
        // connection cannot carry another request.
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// A JSON body read with the server's limit; errors become 400/413/422 JSON answers.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// How much of a refused body is still read and thrown away (see [`linger`]), and for how
/// long at most.
pub(super) const LINGER_BYTES: usize = 16 * 1024 * 1024;
pub(super) const LINGER_TIME: Duration = Duration::from_secs(5);

pub(super) fn too_large(max: usize) -> ApiErr {
    ApiErr::new(
        ErrorCode::PayloadTooLarge,
        format!("the body is larger than the {max} bytes this server accepts"),
    )
}

/// The next frame of a body: its data, or `None` for a trailers frame.
pub(super) async fn next_frame(body: &mut Body) -> Option<Result<Option<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
        .await
        .map(|r| r.map(|f| f.into_data().ok()))
}

/// The lingering close of a refused body. The 413 goes out (with `Connection: close`) before
/// the body has been read; if the connection were then closed with the rest of the body
/// unread, the kernel would answer the client's next bytes with a reset, and a client that
/// writes its whole body before reading the answer (ureq, most clients) would get EPIPE or
/// ECONNRESET instead of the 413. So what the client still sends is read and thrown away, up
/// to `LINGER_BYTES` and for up to `LINGER_TIME` (or until shutdown); hyper closes the
/// connection when the body has ended or this task drops it.
pub(super) fn linger(app: &Arc<App>, mut body: Body) {
    let app = app.clone();
    tokio::spawn(async move {
        let drain = async {
            let mut n = 0;
            while let Some(Ok(data)) = next_frame(&mut body).await {
                n += data.map_or(0, |d| d.len());
                if n > LINGER_BYTES {
                    break;
                }
            }
        };
        tokio::select! {
            _ = drain => {}
            _ = tokio::time::sleep(LINGER_TIME) => {}
            _ = app.shutdown.wait() => {}
        }
    });
}

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiErr> {
        let max = app.settings.max_body;
        let headers = req.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A client waiting for `100 Continue` sends no body: nothing to linger for (and
        // reading would make hyper send the 100).
        let sends_body = !headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut body = req.into_body();
        // Refused on its Content-Length, before any of it is read.
        if declared.is_some_and(|n| n > max as u64) {
            if sends_body {
                linger(app, body);
            }
            return Err(too_large(max));
        }
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let deadline = tokio::time::Instant::now() + app.settings.body_timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, next_frame(&mut body)).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    return Err(ApiErr::new(
                        ErrorCode::BadRequest,
                        format!(
                            "the body did not arrive within {} s (read {} bytes)",
                            app.settings.body_timeout.as_secs(),
                            bytes.len()
                        ),
                    ))
                }
            };
            let frame = frame.map_err(|e| {
                ApiErr::new(ErrorCode::BadRequest, format!("cannot read the body: {e}"))
            })?;
            let Some(data) = frame else {
                continue;
            };
            // A chunked body has no Content-Length: refused when it passes the limit.
            if bytes.len() + data.len() > max {
                linger(app, body);
                return Err(too_large(max));
            }
            bytes.extend_from_slice(&data);
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Ok(JsonBody(v)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_data() {
                    let path = if path == "." { String::new() } else { path };
                    Err(ApiErr::invalid(
                        "the body does not have the fields this call expects",
                        vec![Problem {
                            path,
                            message: inner.to_string(),
                        }],
                    ))
                } else {
                    Err(ApiErr::new(
                        ErrorCode::MalformedJson,
                        format!("the body is not valid JSON: {inner}"),
                    ))
                }
            }
        }
    }
}
