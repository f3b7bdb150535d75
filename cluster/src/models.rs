//! Models: `tenantflow model upload|list|describe|promote|rollback|shadow`, on a cluster's
//! registry through its API (`/api/v1/models...`, served here too) or on a registry directory
//! (`--registry DIR`, e.g. the examples' `jobs/models`). Both paths return the same JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tenantflow_ml::registry::UploadMeta;
use tenantflow_ml::{MlError, Registry};

use crate::client::{Client, Output};
use crate::ApiArgs;

/// Uploads are ONNX files in JSON (base64): allow models up to this size.
const MAX_UPLOAD: usize = 256 << 20;

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Add a version of a model: its ONNX file and metadata (features, class names, training).
    /// The first version of a model becomes live; later ones wait for `promote`.
    Upload {
        name: String,
        /// The ONNX file.
        file: PathBuf,
        /// JSON metadata: {"features": [...], "description", "class_names", "training", "tenant"}.
        #[arg(long)]
        meta: PathBuf,
        #[command(flatten)]
        at: At,
    },
    /// Models with their versions, live version and shadow candidate.
    List {
        #[command(flatten)]
        at: At,
    },
    /// One model version's metadata (the live one unless --version).
    Describe {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        at: At,
    },
    /// Make a version live; running jobs switch at their next checkpoint.
    Promote {
        name: String,
        version: u32,
        #[command(flatten)]
        at: At,
    },
    /// Go back to the version that was live before.
    Rollback {
        name: String,
        #[command(flatten)]
        at: At,
    },
    /// Score a candidate version beside the live one and report how often they disagree
    /// (`--clear` stops).
    Shadow {
        name: String,
        #[arg(required_unless_present = "clear")]
        version: Option<u32>,
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        at: At,
    },
}

/// A cluster (through its API) or a registry directory.
#[derive(clap::Args)]
pub struct At {
    /// Work on this registry directory instead of a cluster's.
    #[arg(long, value_name = "DIR")]
    registry: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

fn now() -> String {
    tenantflow_core::time::format_rfc3339(tenantflow_core::time::now_micros())
}

fn to_json<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A model's summary with every version's metadata.
fn model_view(reg: &Registry, name: &str) -> Result<Value, MlError> {
    tenantflow_ml::registry::check_name(name)?;
    let versions = reg.versions(name)?;
    if versions.is_empty() {
        return Err(MlError::NotFound(format!("no model `{name}`")));
    }
    let state = reg.state(name)?;
    let metas = versions.iter().map(|v| reg.describe(name, *v)).collect::<Result<Vec<_>, _>>()?;
    Ok(json!({"name": name, "live": state.live, "shadow": state.shadow, "history": state.history, "versions": metas}))
}

fn upload_request(name: &str, file: &Path, meta: &Path) -> anyhow::Result<(Vec<u8>, UploadMeta)> {
    tenantflow_ml::registry::check_name(name)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = std::fs::read_to_string(meta).with_context(|| format!("cannot read {}", meta.display()))?;
    let meta: UploadMeta = serde_json::from_str(&text).with_context(|| format!("{}: not valid model metadata", meta.display()))?;
    Ok((bytes, meta))
}

pub fn execute(cmd: ModelCommand) -> anyhow::Result<()> {
    let (at, result) = match cmd {
        ModelCommand::Upload { name, file, meta, at } => {
            let (bytes, meta) = upload_request(&name, &file, &meta)?;
            let r = match &at.registry {
                Some(dir) => Registry::open(dir).upload(&name, &bytes, meta, now()).map(to_json).map_err(anyhow::Error::from),
                None => {
                    let body = json!({"meta": meta, "onnx_base64": base64::engine::general_purpose::STANDARD.encode(&bytes)});
                    client(&at).call("POST", &format!("/api/v1/models/{name}/versions"), &[], Some(("application/json", body.to_string())))
                }
            };
            (at, r.map(|v| (v, View::Version)))
        }
        ModelCommand::List { at } => {
            let r = match &at.registry {
                Some(dir) => Registry::open(dir).list().map(to_json).map_err(anyhow::Error::from),
                None => client(&at).call("GET", "/api/v1/models", &[], None),
            };
            (at, r.map(|v| (v, View::List)))
        }
        ModelCommand::Describe { name, version, at } => {
            let r = match (&at.registry, version) {
                (Some(dir), Some(v)) => Registry::open(dir).describe(&name, v).map(to_json).map_err(anyhow::Error::from),
                (Some(dir), None) => Registry::open(dir).resolve(&name, None).map(to_json).map_err(anyhow::Error::from),
                (None, Some(v)) => client(&at).call("GET", &format!("/api/v1/models/{name}/versions/{v}"), &[], None),
                (None, None) => client(&at).call("GET", &format!("/api/v1/models/{name}/live"), &[], None),
            };
            (at, r.map(|v| (v, View::Version)))
        }
        ModelCommand::Promote { name, version, at } => {
            let r = match &at.registry {
                Some(dir) => Registry::open(dir).promote(&name, version).map(to_json).map_err(anyhow::Error::from),
                None => client(&at).call(
                    "POST",
                    &format!("/api/v1/models/{name}/promote"),
                    &[],
                    Some(("application/json", json!({"version": version}).to_string())),
                ),
            };
            (at, r.map(|v| (v, View::State(name))))
        }
        ModelCommand::Rollback { name, at } => {
            let r = match &at.registry {
                Some(dir) => Registry::open(dir).rollback(&name).map(to_json).map_err(anyhow::Error::from),
                None => client(&at).call("POST", &format!("/api/v1/models/{name}/rollback"), &[], None),
            };
            (at, r.map(|v| (v, View::State(name))))
        }
        ModelCommand::Shadow { name, version, clear, at } => {
            let version = if clear { None } else { version };
            let r = match &at.registry {
                Some(dir) => Registry::open(dir).shadow(&name, version).map(to_json).map_err(anyhow::Error::from),
                None => client(&at).call(
                    "POST",
                    &format!("/api/v1/models/{name}/shadow"),
                    &[],
                    Some(("application/json", json!({"version": version}).to_string())),
                ),
            };
            (at, r.map(|v| (v, View::State(name))))
        }
    };
    let (value, view) = result?;
    match at.api.output {
        Output::Json => println!("{value}"),
        Output::Table => print_table(&value, &view),
    }
    Ok(())
}

fn client(at: &At) -> Client {
    Client::new(&at.api.api)
}

enum View {
    List,
    Version,
    State(String),
}

fn print_table(v: &Value, view: &View) {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match view {
        View::List => {
            println!("{:<24} {:>6} {:>7} {:<12} {:<10} DESCRIPTION", "NAME", "LIVE", "SHADOW", "VERSIONS", "TENANT");
            for m in v.as_array().into_iter().flatten() {
                let versions: Vec<String> = m["versions"].as_array().into_iter().flatten().map(&s).collect();
                println!(
                    "{:<24} {:>6} {:>7} {:<12} {:<10} {}",
                    s(&m["name"]),
                    s(&m["live"]),
                    s(&m["shadow"]),
                    versions.join(","),
                    s(&m["tenant"]),
                    s(&m["description"])
                );
            }
        }
        View::Version => {
            println!("{} version {} ({})", s(&v["name"]), s(&v["version"]), s(&v["task"]));
            println!("  description: {}", s(&v["description"]));
            let features: Vec<String> = v["features"].as_array().into_iter().flatten().map(&s).collect();
            println!("  features:    {}", features.join(", "));
            println!("  sha256:      {}  ({} bytes, created {})", s(&v["sha256"]), s(&v["size_bytes"]), s(&v["created"]));
            println!("  tenant:      {}", s(&v["tenant"]));
            println!("  metrics:     {}", v["training"]["metrics"]);
        }
        View::State(name) => {
            println!("{name}: live {}, shadow {}, earlier live versions {}", s(&v["live"]), s(&v["shadow"]), v["history"]);
        }
    }
}

// ----- API -----

pub type Models = Arc<Registry>;

pub fn router(registry: Models) -> Router {
    Router::new()
        .route("/api/v1/models", get(list))
        .route("/api/v1/models/{name}", get(describe_model))
        .route("/api/v1/models/{name}/live", get(describe_live))
        .route("/api/v1/models/{name}/versions", post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD)))
        .route("/api/v1/models/{name}/versions/{version}", get(describe_version))
        .route("/api/v1/models/{name}/promote", post(promote))
        .route("/api/v1/models/{name}/rollback", post(rollback))
        .route("/api/v1/models/{name}/shadow", post(shadow))
        .with_state(registry)
}

fn ml_error(e: MlError) -> Response {
    let (status, code) = match &e {
        MlError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        MlError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        MlError::Runtime(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        MlError::BadModel(_) | MlError::Unsupported(_) | MlError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_model"),
    };
    (status, Json(json!({"error": {"code": code, "message": e.to_string()}}))).into_response()
}

fn reply<T: serde::Serialize>(r: Result<T, MlError>, ok: StatusCode) -> Response {
    match r {
        Ok(v) => (ok, Json(to_json(v))).into_response(),
        Err(e) => ml_error(e),
    }
}

/// The registry's file operations block: keep them off the async runtime's thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, MlError> + Send + 'static) -> Result<T, MlError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(MlError::Runtime(format!("registry task: {e}"))))
}

async fn list(State(reg): State<Models>) -> Response {
    reply(blocking(move || reg.list()).await, StatusCode::OK)
}

async fn describe_model(State(reg): State<Models>, UrlPath(name): UrlPath<String>) -> Response {
    reply(blocking(move || model_view(&reg, &name)).await, StatusCode::OK)
}

async fn describe_live(State(reg): State<Models>, UrlPath(name): UrlPath<String>) -> Response {
    reply(blocking(move || reg.resolve(&name, None)).await, StatusCode::OK)
}

async fn describe_version(State(reg): State<Models>, UrlPath((name, version)): UrlPath<(String, String)>) -> Response {
    let Ok(version) = version.parse::<u32>() else {
        return ml_error(MlError::Invalid(format!("`{version}` is not a version number")));
    };
    reply(blocking(move || reg.describe(&name, version)).await, StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadBody {
    meta: UploadMeta,
    onnx_base64: String,
}

async fn upload(State(reg): State<Models>, UrlPath(name): UrlPath<String>, body: axum::body::Bytes) -> Response {
    let parsed: UploadBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return ml_error(MlError::Invalid(format!("expected {{\"meta\": {{...}}, \"onnx_base64\": \"...\"}}: {e}"))),
    };
    let bytes = match base64::engine::general_purpose::STANDARD.decode(parsed.onnx_base64.as_bytes()) {
        Ok(b) => b,
        Err(e) => return ml_error(MlError::Invalid(format!("onnx_base64 is not base64: {e}"))),
    };
    let result = blocking(move || reg.upload(&name, &bytes, parsed.meta, now())).await;
    if let Ok(m) = &result {
        tracing::info!(model = %m.name, version = m.version, "model uploaded");
    }
    reply(result, StatusCode::CREATED)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionBody {
    version: Option<u32>,
}

fn version_body(body: &[u8]) -> Result<Option<u32>, MlError> {
    serde_json::from_slice::<VersionBody>(body)
        .map(|b| b.version)
        .map_err(|e| MlError::Invalid(format!("expected {{\"version\": N}}: {e}")))
}

async fn promote(State(reg): State<Models>, UrlPath(name): UrlPath<String>, body: axum::body::Bytes) -> Response {
    let version = match version_body(&body) {
        Ok(Some(v)) => v,
        Ok(None) => return ml_error(MlError::Invalid("expected {\"version\": N}".into())),
        Err(e) => return ml_error(e),
    };
    let result = blocking(move || reg.promote(&name, version)).await;
    if result.is_ok() {
        tracing::info!(version, "model promoted");
    }
    reply(result, StatusCode::OK)
}

async fn rollback(State(reg): State<Models>, UrlPath(name): UrlPath<String>) -> Response {
    reply(blocking(move || reg.rollback(&name)).await, StatusCode::OK)
}

async fn shadow(State(reg): State<Models>, UrlPath(name): UrlPath<String>, body: axum::body::Bytes) -> Response {
    match version_body(&body) {
        Ok(version) => reply(blocking(move || reg.shadow(&name, version)).await, StatusCode::OK),
        Err(e) => ml_error(e),
    }
}
