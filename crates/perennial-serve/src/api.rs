//! The HTTP API (`/v1`), the web page, health, metrics and the OpenAPI document.
//! Handlers check the token, read and decode the images off the async runtime, and
//! hand the work to the learner task through its bounded queue (503 when full).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use perennial_data::folder::{decode_image, ImageLimits, ImageRejected};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, Verified};
use crate::error::ApiError;
use crate::state::Shared;
use crate::store::Role;
use crate::worker::Request;

/// Bounds on what a request may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request body, in bytes.
    pub body: usize,
    /// The most images in one request.
    pub images: usize,
    /// Bounds on each image (decompression bombs).
    pub image: ImageLimits,
}

impl Default for Limits {
    /// 16 MiB bodies, 64 images a request, 4096 pixels a side.
    fn default() -> Self {
        Limits {
            body: 16 << 20,
            images: 64,
            image: ImageLimits {
                max_side: 4096,
                max_alloc: 128 << 20,
            },
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The learner task's queue.
    pub tx: mpsc::Sender<Request>,
    /// Its published state.
    pub shared: Arc<Shared>,
    /// The store's folder (for tokens).
    pub dir: PathBuf,
    /// Predictions (and reads) without a token.
    pub public_read: bool,
    /// The image side the learner takes.
    pub side: usize,
    /// Request bounds.
    pub limits: Limits,
    /// Tokens verified so far.
    pub verified: Verified,
    /// When the server started.
    pub started: Instant,
    /// Permits to read and decode a request's images ([`UPLOADS`] at once).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Permits to verify a token with argon2 (two at once).
    pub verifying: tokio::sync::Semaphore,
}

/// Requests whose images are read and decoded at once, at most: each may hold a body
/// of up to [`Limits::body`] bytes.
pub const UPLOADS: usize = 32;

type AppState = State<Arc<App>>;

/// The largest JSON body (feedback, labels, rollback).
const JSON_BODY: usize = 64 << 10;

/// `ok` while the learner serves; 503 once it has stopped.
async fn healthz(State(app): AppState) -> Response {
    if app.tx.is_closed() {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the learner has stopped").into_response()
    } else {
        "ok".into_response()
    }
}

/// The router of the whole service.
pub fn router(app: Arc<App>) -> Router {
    let body = app.limits.body;
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route("/v1/classes", get(classes))
        .route("/v1/classes/{label}", delete(forget))
        .route("/v1/classes/{label}/examples", post(teach))
        .route("/v1/predict", post(predict))
        .route(
            "/v1/feedback",
            post(feedback).layer(DefaultBodyLimit::max(JSON_BODY)),
        )
        .route("/v1/unknown", get(unknown))
        .route(
            "/v1/unknown/{id}/label",
            post(label_unknown).layer(DefaultBodyLimit::max(JSON_BODY)),
        )
        .route("/v1/status", get(status))
        .route("/v1/consolidate", post(consolidate))
        .route(
            "/v1/rollback",
            post(rollback).layer(DefaultBodyLimit::max(JSON_BODY)),
        )
        .fallback(|| async { ApiError::not_found("no such route (see /v1/openapi.json)") })
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(DefaultBodyLimit::max(body))
        .with_state(app)
}

/// Counts and times every request, refuses a body whose declared length is over the
/// limit, and turns the framework's own plain-text errors (405, 413, ...) into JSON
/// ones.
async fn observe(State(app): AppState, req: HttpRequest, next: Next) -> Response {
    let clock = Instant::now();
    // Known methods by name, any other as one (the counters stay bounded).
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "DELETE" | "PUT" | "PATCH" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let mut resp = match declared {
        // Refused on its declared length, before a byte of it is read.
        Some(n) if n > app.limits.body => ApiError::too_large(format!(
            "the body is {n} bytes: at most {} are taken",
            app.limits.body
        ))
        .into_response(),
        _ => next.run(req).await,
    };
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !json {
        let body = axum::body::to_bytes(std::mem::take(resp.body_mut()), 64 << 10)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text
        };
        resp = ApiError::new(status, message).into_response();
    }
    app.shared.metrics.observe(
        &method,
        &route,
        status.as_u16(),
        clock.elapsed().as_secs_f64(),
    );
    resp
}

impl App {
    /// Checks the request's token for `need`.
    async fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<(), ApiError> {
        if need == Role::Reader && self.public_read {
            return Ok(());
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "a token is needed: send `Authorization: Bearer <token>` (make one with \
                 `perennial serve token`)",
            ));
        };
        // The scheme is case-insensitive (RFC 7235).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let (id, secret) = auth::parse_token(token)
            .ok_or_else(|| ApiError::unauthorized("not a Perennial token"))?;
        let role = match self.verified.role(id, secret) {
            Some(role) => role,
            None => {
                // argon2 costs tens of ms and 19 MiB: two at a time at most.
                let _permit = self.verifying.acquire().await.map_err(ApiError::internal)?;
                let (dir, i, s) = (self.dir.clone(), id.to_string(), secret.to_string());
                let found = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Role>> {
                    Ok(auth::lookup(&dir, &i)?
                        .filter(|(_, hash)| auth::verify(&s, hash))
                        .map(|(role, _)| role))
                })
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
                if let Some(role) = found {
                    self.verified.remember(id, secret, role);
                }
                found
            }
        };
        match role {
            None => Err(ApiError::unauthorized("unknown token")),
            Some(r) if r < need => Err(ApiError::forbidden(format!(
                "this token is a {}'s: this needs a {}'s",
                r.name(),
                need.name()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Sends a request to the learner task and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Request,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(make(tx)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared
                    .metrics
                    .rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(ApiError::busy());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is shutting down",
                ))
            }
        }
        rx.await
            .map_err(|_| ApiError::internal("the learner stopped before answering"))?
    }

    /// The images of a multipart form (parts named `image`), decoded and converted.
    async fn images(
        &self,
        form: Result<Multipart, MultipartRejection>,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        // Bodies read and decoded at once are bounded: past that, 503 before reading.
        let _permit = self.uploads.clone().try_acquire_owned().map_err(|_| {
            self.shared
                .metrics
                .rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ApiError::busy()
        })?;
        let mut form = form.map_err(|e| {
            ApiError::new(
                e.status(),
                format!(
                    "{} (send multipart/form-data with parts named `image`)",
                    e.body_text()
                ),
            )
        })?;
        let mut files: Vec<Bytes> = Vec::new();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?
        {
            if field.name() != Some("image") {
                return Err(ApiError::bad_request(format!(
                    "unexpected form part {:?}: send images as parts named `image`",
                    field.name().unwrap_or("")
                )));
            }
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
            if bytes.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "image {} is empty",
                    files.len() + 1
                )));
            }
            files.push(bytes);
            if files.len() > self.limits.images {
                return Err(ApiError::too_large(format!(
                    "at most {} images a request",
                    self.limits.images
                )));
            }
        }
        if files.is_empty() {
            return Err(ApiError::bad_request(
                "no image: send one or more files as multipart/form-data parts named `image`",
            ));
        }
        let (side, limits) = (self.side, self.limits.image);
        tokio::task::spawn_blocking(move || {
            files
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    decode_image(b, side, &limits).map_err(|e| match e {
                        ImageRejected::TooLarge(s) => {
                            ApiError::too_large(format!("image {}: too large: {s}", i + 1))
                        }
                        ImageRejected::Invalid(s) => {
                            ApiError::bad_request(format!("image {}: {s}", i + 1))
                        }
                    })
                })
                .collect()
        })
        .await
        .map_err(ApiError::internal)?
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        Html(include_str!("page.html")),
    )
}

async fn metrics(State(app): AppState) -> Response {
    let queue = app.tx.max_capacity() - app.tx.capacity();
    let text = app
        .shared
        .metrics
        .render(&app.shared.status.read().expect("status"), queue);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        Body::from(text),
    )
        .into_response()
}

async fn classes(State(app): AppState, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers, Role::Reader).await?;
    let s = app.shared.status.read().expect("status");
    Ok(Json(json!({ "classes": s.classes })))
}

async fn teach(
    State(app): AppState,
    headers: HeaderMap,
    label: Result<Path<String>, axum::extract::rejection::PathRejection>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    app.authorize(&headers, Role::Writer).await?;
    let Path(label) = label.map_err(|e| ApiError::bad_request(e.body_text()))?;
    perennial::lifelong::learner::check_label(&label)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let images = app.images(form).await?;
    let taught = app
        .ask(|reply| Request::Learn {
            label,
            images,
            reply,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!(taught))))
}

async fn predict(
    State(app): AppState,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers, Role::Reader).await?;
    let images = app.images(form).await?;
    let answers = app.ask(|reply| Request::Predict { images, reply }).await?;
    Ok(Json(json!({ "predictions": answers })))
}

async fn forget(
    State(app): AppState,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers, Role::Writer).await?;
    let n = app
        .ask(|reply| Request::Forget {
            label: label.clone(),
            reply,
        })
        .await?;
    Ok(Json(json!({ "class": label, "forgotten": n })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    id: String,
    label: String,
}

async fn feedback(
    State(app): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    app.authorize(&headers, Role::Writer).await?;
    let FeedbackBody { id, label } = json_body(&body)?;
    let taught = app
        .ask(|reply| Request::Feedback { id, label, reply })
        .await?;
    Ok((StatusCode::CREATED, Json(json!(taught))))
}

#[derive(serde::Deserialize)]
struct UnknownQuery {
    limit: Option<usize>,
}

async fn unknown(
    State(app): AppState,
    headers: HeaderMap,
    query: Result<Query<UnknownQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers, Role::Reader).await?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let items = app.ask(|reply| Request::Unknown { limit, reply }).await?;
    Ok(Json(json!({ "unknown": items })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelBody {
    label: String,
}

async fn label_unknown(
    State(app): AppState,
    headers: HeaderMap,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    app.authorize(&headers, Role::Writer).await?;
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let LabelBody { label } = json_body(&body)?;
    let taught = app
        .ask(|reply| Request::LabelUnknown { id, label, reply })
        .await?;
    Ok((StatusCode::CREATED, Json(json!(taught))))
}

async fn status(State(app): AppState, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers, Role::Reader).await?;
    let queue = app.tx.max_capacity() - app.tx.capacity();
    let s = app.shared.status.read().expect("status");
    Ok(Json(json!({
        "version": s.version,
        "classes": s.classes.len(),
        "examples": s.examples,
        "queue": queue,
        "queue_capacity": app.tx.max_capacity(),
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "consolidation": {
            "running": s.running.is_some(),
            "to_version": s.running,
            "since": s.consolidation_since,
            "last": s.last,
        },
        "recent": { "unknown_rate": s.rates.0, "confusion_rate": s.rates.1 },
        "example_index": s.example_index,
        "versions": s.versions,
    })))
}

async fn consolidate(
    State(app): AppState,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    app.authorize(&headers, Role::Writer).await?;
    let version = app.ask(|reply| Request::Consolidate { reply }).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "started": true, "version": version })),
    ))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: Option<u64>,
}

async fn rollback(
    State(app): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers, Role::Writer).await?;
    let RollbackBody { version } = if body.is_empty() {
        RollbackBody::default()
    } else {
        json_body(&body)?
    };
    let version = app
        .ask(|reply| Request::Rollback { version, reply })
        .await?;
    Ok(Json(json!({ "version": version })))
}
