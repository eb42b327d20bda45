//! The web dashboard: three static files (`scheduler/dashboard/`, plain HTML, CSS and
//! JavaScript without a build step) embedded in the binary and served at `/`, gzip-compressed
//! once at start-up; the pages read the same API as the CLI. Sign-in puts the API token in an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the scheduler is reached over HTTPS),
//! which [`crate::auth::authenticate`] accepts like a bearer token; a change made with the cookie
//! must carry the `x-slipway-csrf` header, which no other site can send without a CORS preflight
//! Slipway never grants. Every dashboard response carries a strict Content Security Policy.

use std::io::Write;
use std::sync::LazyLock;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use slipway_proto::api;

use crate::Shared;
use crate::api::ApiError;

/// The session cookie's name.
pub const COOKIE: &str = "slipway_session";

/// The header a change made with the session cookie must carry.
pub const CSRF_HEADER: &str = "x-slipway-csrf";

/// Scripts, styles, images and connections only from the scheduler itself; no inline script or
/// style, no plugin, no framing, no base or form target elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its type, bytes, gzip-compressed bytes and entity tag.
pub struct Asset {
    pub content_type: &'static str,
    pub raw: &'static [u8],
    pub gzip: Vec<u8>,
    pub etag: String,
}

impl Asset {
    fn new(content_type: &'static str, raw: &'static [u8]) -> Self {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail.
        let gzip = encoder.write_all(raw).and_then(|()| encoder.finish()).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, raw);
        let etag = format!("\"{}\"", hex::encode(&digest.as_ref()[..12]));
        Self { content_type, raw, gzip, etag }
    }
}

/// The dashboard's files, by path.
pub static ASSETS: LazyLock<[(&str, Asset); 3]> = LazyLock::new(|| {
    [
        ("/", Asset::new("text/html; charset=utf-8", include_bytes!("../dashboard/index.html"))),
        ("/assets/app.js", Asset::new("text/javascript; charset=utf-8", include_bytes!("../dashboard/app.js"))),
        ("/assets/app.css", Asset::new("text/css; charset=utf-8", include_bytes!("../dashboard/app.css"))),
    ]
});

/// The headers every dashboard response carries.
fn protect(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// Serves the embedded file at `path`: gzip when the browser takes it, 304 when it has it.
pub fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some((_, asset)) = ASSETS.iter().find(|(p, _)| *p == path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cached = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(asset.etag.as_str());
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().split(';').next() == Some("gzip")));
    let mut response = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip && !asset.gzip.is_empty() {
        ([(header::CONTENT_ENCODING, "gzip")], asset.gzip.clone()).into_response()
    } else {
        asset.raw.into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, etag);
    }
    protect(&mut response);
    response
}

/// `GET /`, `/assets/app.js`, `/assets/app.css`.
pub async fn asset(uri: axum::http::Uri, headers: HeaderMap) -> Response {
    serve(uri.path(), &headers)
}

/// `POST /api/v1/session` `{"token": "slw_..."}`: checks the token and sets the session cookie;
/// answers who it is. A wrong token is a 401 and sets nothing.
pub async fn sign_in(
    State(shared): State<Shared>,
    body: Result<Json<api::SessionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let token = request.token.trim();
    if token.is_empty() || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::Unauthorized("invalid token".into()));
    }
    let caller = crate::auth::lookup(&shared.pool, token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))?;
    tracing::info!(token = %caller.name, "signed in to the dashboard");
    let secure = if shared.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let whoami = api::Whoami { name: caller.name, role: caller.role, app: caller.app, expires_at: caller.expires_at };
    let mut response = Json(whoami).into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|_| ApiError::Unauthorized("invalid token".into()))?;
    response.headers_mut().insert(header::SET_COOKIE, value);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /api/v1/session`: forgets the session cookie.
pub async fn sign_out(State(shared): State<Shared>) -> Response {
    let secure = if shared.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut response = Json(serde_json::json!({"status": "signed out"})).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// How long wake-ups are gathered into one `change` event.
const GATHER: std::time::Duration = std::time::Duration::from_millis(150);

/// `GET /api/v1/events` (viewer): Server-Sent Events that say "something changed" (a deployment
/// was queued, changed state or logged) within [`GATHER`], so open pages refresh at once instead
/// of polling. The events carry nothing else: a page reads what it shows through the API, with
/// the caller's scope.
pub async fn changes(
    State(shared): State<Shared>,
    _caller: crate::auth::Caller,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let mut wake = shared.live.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let shutdown = shared.shutdown.clone();
    shared.tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                woken = wake.recv() => match woken {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
            }
            tokio::time::sleep(GATHER).await;
            while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) = wake.try_recv() {}
            if tx.send(Ok(Event::default().event("change").data("{}"))).await.is_err() {
                return;
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// The session cookie's token, if the request has one.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_compressed_tagged_and_protected() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br, gzip;q=0.9"));
        let response = serve("/assets/app.js", &headers);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(response.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let etag = response.headers()[header::ETAG].clone();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("/assets/app.js", &headers).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("/assets/other.js", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
        let plain = serve("/", &HeaderMap::new());
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        for (_, asset) in ASSETS.iter() {
            assert!(asset.gzip.len() < asset.raw.len(), "{} compresses", asset.content_type);
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; slipway_session=slw_abc; b=2"));
        assert_eq!(cookie_token(&headers), Some("slw_abc"));
        let mut empty = HeaderMap::new();
        empty.append(header::COOKIE, HeaderValue::from_static("slipway_session=; x=y"));
        assert_eq!(cookie_token(&empty), None);
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }
}
