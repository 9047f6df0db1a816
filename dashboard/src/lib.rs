//! `autoresearch dashboard`: a read-only web page over one or more research sessions, updated live by polling.
//!
//! The page (HTML, CSS and JS in one file, `page.html`, inside the binary: no CDN, no build step) asks three
//! JSON endpoints: `/api/overview` (totals, noise, best-so-far curves and what runs now, per session), `/api/rows`
//! (results rows past those it has) and `/api/run` (a run's diff and the end of its log). Requests name sessions
//! and runs by number only, so no request can name a path; a run file that is a link leading out of its
//! session is refused. Bound to a loopback address it serves anyone on the machine; bound to any other address
//! every request must carry the token printed at start (`?token=` or `Authorization: Bearer`). Responses are gzipped for browsers that take it.

pub mod data;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use data::SessionFolder;

/// The page, whole.
const PAGE: &str = include_str!("page.html");

struct App {
    sessions: Vec<SessionFolder>,
    token: Option<String>,
}

/// A running dashboard.
pub struct Server {
    pub addr: SocketAddr,
    /// Required on every request where the address is not a loopback one.
    pub token: Option<String>,
    runtime: tokio::runtime::Runtime,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// The page's address, with the token where one is needed.
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/?token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }

    /// Serves until the process ends.
    pub fn wait(self) {
        self.runtime.block_on(std::future::pending::<()>());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts serving `sessions` on `addr` (port 0: any free port), in threads of its own.
pub fn serve(sessions: Vec<SessionFolder>, addr: SocketAddr) -> Result<Server> {
    let token = if addr.ip().is_loopback() { None } else { Some(autoresearch_harness::fsutil::nonce()?) };
    let app = Arc::new(App { sessions, token: token.clone() });
    let router = Router::new()
        .route("/", get(page))
        .route("/api/overview", get(overview))
        .route("/api/rows", get(rows))
        .route("/api/run", get(run))
        .layer(middleware::from_fn_with_state(app.clone(), check_token))
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(app);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Server { addr, token, runtime, shutdown: Some(tx) })
}

async fn check_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(want) = &app.token else { return next.run(request).await };
    let in_query = request.uri().query().unwrap_or_default().split('&').any(|kv| kv == format!("token={want}"));
    let in_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {want}"));
    if in_query || in_header {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, "a token is needed: use the address the dashboard printed at start").into_response()
    }
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

fn failure(status: StatusCode, e: anyhow::Error) -> Response {
    (status, format!("{e:#}")).into_response()
}

/// Reads off the async threads (the reading is file I/O): the value as JSON, `missing` as a 404, an error as
/// `error_status`.
async fn read_json<T: serde::Serialize + Send + 'static>(
    error_status: StatusCode,
    missing: &'static str,
    read: impl FnOnce() -> Result<Option<T>> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(Some(value))) => Json(value).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, missing).into_response(),
        Ok(Err(e)) => failure(error_status, e),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.into()),
    }
}

/// The session a request names by number.
fn session(app: &App, index: usize) -> Option<SessionFolder> {
    app.sessions.get(index).cloned()
}

async fn overview(State(app): State<Arc<App>>) -> Response {
    read_json(StatusCode::INTERNAL_SERVER_ERROR, "", move || data::overview(&app.sessions).map(Some)).await
}

#[derive(Deserialize)]
struct RowsQuery {
    session: usize,
    #[serde(default)]
    from: usize,
}

async fn rows(State(app): State<Arc<App>>, Query(q): Query<RowsQuery>) -> Response {
    let Some(s) = session(&app, q.session) else {
        return (StatusCode::NOT_FOUND, "no such session").into_response();
    };
    read_json(StatusCode::INTERNAL_SERVER_ERROR, "", move || data::rows(&s, q.from).map(Some)).await
}

#[derive(Deserialize)]
struct RunQuery {
    session: usize,
    run: u64,
}

/// A run's files; one that lies outside the session is refused (403).
async fn run(State(app): State<Arc<App>>, Query(q): Query<RunQuery>) -> Response {
    let Some(s) = session(&app, q.session) else {
        return (StatusCode::NOT_FOUND, "no such session").into_response();
    };
    read_json(StatusCode::FORBIDDEN, "no such run", move || data::run_files(&s, q.run)).await
}
