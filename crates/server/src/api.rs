//! The routes, with llama-server's and OpenAI's field names and shapes.
//! Request bodies are read field by field, so an error names the field.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State as Extract};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use futures_util::stream;
use serde_json::{Value, json};
use shardload_runtime::{ChatTemplate, Message, SamplerConfig};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::engine::{Event, Job, TokenLogprob};
use crate::{Loaded, ServeOptions, State};

type Shared = Arc<State>;

/// An error in OpenAI's shape, with its status.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body =
            json!({"error": {"message": self.message, "type": kind, "code": self.status.as_u16()}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

/// Whether `given` is `key`, in time that does not depend on where they differ.
fn same_key(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// Request bodies larger than this are refused (413).
const BODY_LIMIT: usize = 4 << 20;

pub(crate) fn router(state: Shared, addr: std::net::SocketAddr) -> Router {
    let key = state.options.api_key.clone();
    let router = Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/apply-template", post(apply_template))
        .route("/props", get(props))
        .route("/slots", get(slots))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such route".into(),
            }
        })
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let key = key.clone();
            async move {
                let path = request.uri().path();
                let open = path == "/health" || path == "/v1/health";
                let authorized = key.as_ref().is_none_or(|key| {
                    request
                        .headers()
                        .get(header::AUTHORIZATION)
                        .and_then(|h| h.as_bytes().strip_prefix(b"Bearer "))
                        .is_some_and(|given| same_key(given, key.as_bytes()))
                });
                if open || authorized {
                    next.run(request).await
                } else {
                    ApiError {
                        status: StatusCode::UNAUTHORIZED,
                        message: "invalid API key: send Authorization: Bearer KEY".into(),
                    }
                    .into_response()
                }
            }
        }))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT));
    shardload_web::loopback_host_only(router.with_state(state), addr, "shardload serve")
}

fn loaded(state: &State) -> Result<&Loaded, ApiError> {
    state.loaded.get().ok_or(ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "loading model".into(),
    })
}

async fn health(Extract(state): Extract<Shared>) -> Response {
    match state.loaded.get() {
        Some(_) => axum::Json(json!({"status": "ok"})).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "loading model"})),
        )
            .into_response(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(Extract(state): Extract<Shared>) -> ApiResult {
    let loaded = loaded(&state)?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.options.model_name,
            "object": "model",
            "created": now(),
            "owned_by": "shardload",
            "meta": {"n_ctx": state.options.ctx, "n_vocab": loaded.tokenizer.n_tokens()},
        }],
    }))
    .into_response())
}

/// A body that could not be read (too large: 413), as an API error.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// The request body as a JSON object.
fn object(body: Body) -> Result<serde_json::Map<String, Value>, ApiError> {
    let body = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        message: format!(
            "the request body could not be read (at most {} MiB): {}",
            BODY_LIMIT >> 20,
            rejection.body_text()
        ),
    })?;
    match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("the request body is not JSON: {e}"))),
    }
}

/// Typed access to a request's fields; errors name the field.
struct Fields<'a>(&'a serde_json::Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| ApiError::bad(format!("{name}: expected a number, got {v}")))
            })
            .transpose()
    }

    fn count(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    ApiError::bad(format!("{name}: expected a non-negative integer, got {v}"))
                })
            })
            .transpose()
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(ApiError::bad(format!(
                "{name}: expected true or false, got {v}"
            ))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ApiError::bad(format!("{name}: expected a string, got {v}")))
            })
            .transpose()
    }
}

/// What a completion request asks beyond its prompt.
struct Params {
    sampling: SamplerConfig,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    ignore_eos: bool,
    logprobs: Option<usize>,
}

fn params(f: &Fields) -> Result<Params, ApiError> {
    let defaults = SamplerConfig::default();
    if let Some(n) = f.count("n")?
        && n != 1
    {
        return Err(ApiError::bad(format!(
            "n: only 1 completion per request is supported, got {n}"
        )));
    }
    for unsupported in ["tools", "response_format"] {
        let asked = match f.get(unsupported) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Object(o)) => {
                !(unsupported == "response_format"
                    && o.get("type").and_then(Value::as_str) == Some("text"))
            }
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if asked {
            return Err(ApiError::bad(format!(
                "{unsupported}: not supported by this server yet"
            )));
        }
    }
    let probability = |name: &str, default: f32| -> Result<f32, ApiError> {
        match f.number(name)? {
            None => Ok(default),
            Some(p) if (0.0..=1.0).contains(&p) => Ok(p as f32),
            Some(p) => Err(ApiError::bad(format!("{name}: {p} is not in [0, 1]"))),
        }
    };
    let temperature = match f.number("temperature")? {
        None => defaults.temperature,
        Some(t) if (0.0..=100.0).contains(&t) => t as f32,
        Some(t) => {
            return Err(ApiError::bad(format!(
                "temperature: {t} is not in [0, 100]"
            )));
        }
    };
    let seed = match f.get("seed") {
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|s| s as u64))
            .ok_or_else(|| ApiError::bad(format!("seed: expected an integer, got {v}")))?,
    };
    let sampling = SamplerConfig {
        temperature,
        top_k: f.count("top_k")?.map_or(defaults.top_k, |k| k as usize),
        top_p: probability("top_p", defaults.top_p)?,
        min_p: probability("min_p", defaults.min_p)?,
        seed,
    };
    let max_tokens = match (f.count("max_completion_tokens")?, f.count("max_tokens")?) {
        (Some(n), _) | (None, Some(n)) => Some(n as usize),
        (None, None) => None,
    };
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= 16 => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad(format!("stop: expected strings, got {s}")))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ApiError::bad(format!(
                "stop: expected a string or up to 16 strings, got {v}"
            )));
        }
    };
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => o.get("include_usage").and_then(Value::as_bool) == Some(true),
        Some(v) => {
            return Err(ApiError::bad(format!(
                "stream_options: expected an object, got {v}"
            )));
        }
    };
    // Chat: `logprobs: true` and `top_logprobs: k`; completions: `logprobs: k`.
    let logprobs = match f.get("logprobs") {
        None | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(f.count("top_logprobs")?.unwrap_or(0)),
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad(format!(
                "logprobs: expected true, false or a count, got {v}"
            ))
        })?),
    };
    if let Some(k) = logprobs
        && k > 20
    {
        return Err(ApiError::bad(format!("top_logprobs: at most 20, got {k}")));
    }
    if logprobs.is_none() && f.count("top_logprobs")?.is_some_and(|k| k > 0) {
        return Err(ApiError::bad("top_logprobs: needs logprobs: true"));
    }
    Ok(Params {
        logprobs: logprobs.map(|k| k as usize),
        sampling,
        max_tokens,
        stop,
        stream: f.flag("stream")?,
        include_usage,
        ignore_eos: f.flag("ignore_eos")?,
    })
}

/// The chat messages of a request, `content` a string or text parts.
fn messages(f: &Fields) -> Result<Vec<Message>, ApiError> {
    let items = match f.get("messages") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(v) => {
            return Err(ApiError::bad(format!(
                "messages: expected a non-empty array, got {v}"
            )));
        }
        None => return Err(ApiError::bad("messages: missing")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad(format!("messages[{i}].role: expected a string")))?;
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(
                        |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                            _ => Err(ApiError::bad(format!(
                                "messages[{i}].content: only text parts are supported, got {p}"
                            ))),
                        },
                    )
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                Some(v) => {
                    return Err(ApiError::bad(format!(
                        "messages[{i}].content: expected a string or text parts, got {v}"
                    )));
                }
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

fn template(loaded: &Loaded) -> Result<&ChatTemplate, ApiError> {
    loaded.template.as_ref().ok_or_else(|| {
        ApiError::bad("the model has no chat template: use /v1/completions with a prompt")
    })
}

fn render(loaded: &Loaded, messages: &[Message]) -> Result<String, ApiError> {
    template(loaded)?
        .render(messages, true)
        .map_err(|e| ApiError::bad(format!("messages: {e:#}")))
}

/// Token ids of a prompt given as text or as ids (checked against the vocabulary).
fn prompt_tokens(loaded: &Loaded, prompt: &Value, field: &str) -> Result<Vec<u32>, ApiError> {
    match prompt {
        Value::String(text) => Ok(loaded.tokenizer.encode(text.as_bytes(), true, true)),
        Value::Array(items) => {
            let n = loaded.tokenizer.n_tokens();
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .filter(|&id| id < u64::from(n))
                        .map(|id| id as u32)
                        .ok_or_else(|| {
                            ApiError::bad(format!(
                                "{field}[{i}]: expected a token id below {n}, got {v}"
                            ))
                        })
                })
                .collect()
        }
        v => Err(ApiError::bad(format!(
            "{field}: expected a string or an array of token ids, got {v}"
        ))),
    }
}

/// Hands a job to the engine, or says why not (the prompt does not fit, the queue is full).
fn submit(
    options: &ServeOptions,
    loaded: &Loaded,
    prompt: Vec<u32>,
    params: &Params,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::bad("the prompt is empty"));
    }
    if prompt.len() >= options.ctx {
        return Err(ApiError::bad(format!(
            "the prompt is {} tokens, the context {} (--ctx): it does not fit",
            prompt.len(),
            options.ctx
        )));
    }
    let in_flight = &loaded.counters.in_flight;
    if in_flight.fetch_add(1, Ordering::Relaxed) >= options.parallel + options.queue {
        in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "every slot is busy and the queue is full: retry later".into(),
        });
    }
    let (events, from_engine) = tokio::sync::mpsc::unbounded_channel();
    let max_tokens = params.max_tokens.unwrap_or(options.ctx).min(options.ctx);
    let job = Job {
        prompt,
        sampling: params.sampling,
        max_tokens: max_tokens.max(1),
        stop: params.stop.clone(),
        ignore_eos: params.ignore_eos,
        logprobs: params.logprobs,
        events,
    };
    loaded.jobs.send(job).map_err(|_| {
        in_flight.fetch_sub(1, Ordering::Relaxed);
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the engine has stopped".into(),
        }
    })?;
    Ok(with_deadline(from_engine, options.timeout))
}

/// The engine's events until the request's deadline, then a failure. When the
/// client hangs up or the deadline passes, the engine's receiver is dropped,
/// and the engine frees the slot at its next step.
fn with_deadline(
    mut from_engine: UnboundedReceiver<Event>,
    timeout: Duration,
) -> UnboundedReceiver<Event> {
    let (to_client, receiver) = tokio::sync::mpsc::unbounded_channel();
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = from_engine.recv() => {
                    let Some(event) = event else { break };
                    let last = !matches!(event, Event::Delta(..));
                    if to_client.send(event).is_err() || last {
                        break;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let message = format!(
                        "the request ran past its deadline of {} s (--timeout)",
                        timeout.as_secs()
                    );
                    let _ = to_client.send(Event::Failed(message));
                    break;
                }
                () = to_client.closed() => break,
            }
        }
    });
    receiver
}

/// Which API a completion answers: its object names and how text sits in a choice.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn id(self) -> String {
        let prefix = match self {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{prefix}-{nanos:x}")
    }

    /// A choice of a response or chunk; `logprobs` `None` when not asked for.
    fn choice(
        self,
        text: &str,
        finish: Option<&str>,
        streamed: bool,
        logprobs: Option<&[TokenLogprob]>,
    ) -> Value {
        let logprobs = logprobs.map_or(Value::Null, |lps| self.logprobs(lps));
        match (self, streamed) {
            (Kind::Chat, false) => {
                json!({"index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": finish, "logprobs": logprobs})
            }
            (Kind::Chat, true) => {
                json!({"index": 0, "delta": if finish.is_some() { json!({}) } else { json!({"content": text}) },
                "finish_reason": finish, "logprobs": logprobs})
            }
            (Kind::Text, _) => {
                json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs})
            }
        }
    }

    /// Log-probabilities in this API's shape: chat's `content` list, or the
    /// completions API's parallel `tokens` / `token_logprobs` / `top_logprobs`.
    fn logprobs(self, lps: &[TokenLogprob]) -> Value {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self {
            Kind::Chat => json!({"content": lps.iter().map(|t| json!({
                "token": text(&t.bytes), "logprob": t.logprob, "bytes": t.bytes,
                "top_logprobs": t.top.iter().map(|(b, lp)| json!({"token": text(b), "logprob": lp, "bytes": b})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()}),
            Kind::Text => json!({
                "tokens": lps.iter().map(|t| text(&t.bytes)).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|t| t.top.iter().map(|(b, lp)| (text(b), json!(lp)))
                    .collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
            }),
        }
    }

    fn object(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached}})
}

async fn respond(
    state: &State,
    kind: Kind,
    params: Params,
    mut events: UnboundedReceiver<Event>,
) -> ApiResult {
    let id = kind.id();
    let created = now();
    let wants_logprobs = params.logprobs.is_some();
    let model = state.options.model_name.clone();
    if !params.stream {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Delta(delta, lps) => {
                    text += &delta;
                    logprobs.extend(lps);
                }
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                } => {
                    let body = json!({
                        "id": id, "object": kind.object(false), "created": created, "model": model,
                        "choices": [kind.choice(&text, Some(finish.as_str()), false,
                            wants_logprobs.then_some(&logprobs[..]))],
                        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
                    });
                    return Ok(axum::Json(body).into_response());
                }
                Event::Failed(message) => {
                    return Err(ApiError {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        message,
                    });
                }
            }
        }
        return Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the engine dropped the request".into(),
        });
    }
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut body = json!({"id": id, "object": kind.object(true), "created": created, "model": model, "choices": choices});
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        Sse::default().data(body.to_string())
    };
    let include_usage = params.include_usage;
    let first = matches!(kind, Kind::Chat).then(|| {
        chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null}]), None)
    });
    let stream = UnboundedReceiverStream::new(events).flat_map(move |event| {
        let events: Vec<Sse> = match event {
            Event::Delta(delta, lps) => vec![chunk(
                json!([kind.choice(&delta, None, true, wants_logprobs.then_some(&lps[..]))]),
                None,
            )],
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                let mut out = vec![chunk(
                    json!([kind.choice("", Some(finish.as_str()), true, None)]),
                    None,
                )];
                if include_usage {
                    out.push(chunk(
                        json!([]),
                        Some(usage(prompt_tokens, completion_tokens, cached_tokens)),
                    ));
                }
                out.push(Sse::default().data("[DONE]"));
                out
            }
            Event::Failed(message) => vec![
                Sse::default().data(
                    json!({"error": {"message": message, "type": "server_error", "code": 500}})
                        .to_string(),
                ),
                Sse::default().data("[DONE]"),
            ],
        };
        stream::iter(events.into_iter().map(Ok::<_, Infallible>))
    });
    let stream = stream::iter(first.into_iter().map(Ok::<_, Infallible>)).chain(stream);
    Ok(axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::default().text("waiting"))
        .into_response())
}

async fn chat_completions(Extract(state): Extract<Shared>, body: Body) -> ApiResult {
    let loaded = loaded(&state)?;
    let body = object(body)?;
    let f = Fields(&body);
    let params = params(&f)?;
    let messages = messages(&f)?;
    let tokens = template(loaded)?
        .prompt_tokens(loaded.tokenizer, &messages)
        .map_err(|e| ApiError::bad(format!("messages: {e:#}")))?;
    let events = submit(&state.options, loaded, tokens, &params)?;
    respond(&state, Kind::Chat, params, events).await
}

async fn completions(Extract(state): Extract<Shared>, body: Body) -> ApiResult {
    let loaded = loaded(&state)?;
    let body = object(body)?;
    let f = Fields(&body);
    let params = params(&f)?;
    let prompt = f
        .get("prompt")
        .ok_or_else(|| ApiError::bad("prompt: missing"))?;
    let tokens = prompt_tokens(loaded, prompt, "prompt")?;
    let events = submit(&state.options, loaded, tokens, &params)?;
    respond(&state, Kind::Text, params, events).await
}

async fn tokenize(Extract(state): Extract<Shared>, body: Body) -> ApiResult {
    let loaded = loaded(&state)?;
    let body = object(body)?;
    let f = Fields(&body);
    let content = f
        .string("content")?
        .ok_or_else(|| ApiError::bad("content: missing"))?;
    let ids = loaded
        .tokenizer
        .encode(content.as_bytes(), f.flag("add_special")?, true);
    if f.flag("with_pieces")? {
        let tokens: Vec<Value> = ids
            .iter()
            .map(|&id| {
                let piece = loaded.tokenizer.piece(id).unwrap_or_default();
                match std::str::from_utf8(piece) {
                    Ok(text) => json!({"id": id, "piece": text}),
                    Err(_) => json!({"id": id, "piece": piece}),
                }
            })
            .collect();
        return Ok(axum::Json(json!({"tokens": tokens})).into_response());
    }
    Ok(axum::Json(json!({"tokens": ids})).into_response())
}

async fn detokenize(Extract(state): Extract<Shared>, body: Body) -> ApiResult {
    let loaded = loaded(&state)?;
    let body = object(body)?;
    let f = Fields(&body);
    let tokens = f
        .get("tokens")
        .ok_or_else(|| ApiError::bad("tokens: missing"))?;
    let ids = match tokens {
        Value::Array(_) => prompt_tokens(loaded, tokens, "tokens")?,
        v => {
            return Err(ApiError::bad(format!(
                "tokens: expected an array of token ids, got {v}"
            )));
        }
    };
    let bytes = loaded
        .tokenizer
        .decode(&ids)
        .map_err(|e| ApiError::bad(format!("tokens: {e}")))?;
    Ok(axum::Json(json!({"content": String::from_utf8_lossy(&bytes)})).into_response())
}

async fn apply_template(Extract(state): Extract<Shared>, body: Body) -> ApiResult {
    let loaded = loaded(&state)?;
    let body = object(body)?;
    let messages = messages(&Fields(&body))?;
    Ok(axum::Json(json!({"prompt": render(loaded, &messages)?})).into_response())
}

async fn props(Extract(state): Extract<Shared>) -> ApiResult {
    let loaded = loaded(&state)?;
    let d = SamplerConfig::default();
    Ok(axum::Json(json!({
        "model_alias": state.options.model_name,
        "total_slots": state.options.parallel,
        "kv_cache_bytes_per_slot": loaded.kv_cache_bytes_per_slot,
        "chat_template": loaded.template.as_ref().map(ChatTemplate::source),
        "default_generation_settings": {
            "n_ctx": state.options.ctx,
            "params": {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p, "min_p": d.min_p},
        },
    }))
    .into_response())
}

async fn slots(Extract(state): Extract<Shared>) -> ApiResult {
    let loaded = loaded(&state)?;
    let slots: Vec<Value> = loaded
        .counters
        .slots
        .iter()
        .enumerate()
        .map(|(id, g)| {
            json!({"id": id, "n_ctx": state.options.ctx, "is_processing": g.processing.load(Ordering::Relaxed),
                "n_cached_tokens": g.cached_tokens.load(Ordering::Relaxed)})
        })
        .collect();
    Ok(axum::Json(Value::Array(slots)).into_response())
}

/// Prometheus' text format: requests, tokens, tok/s, queue depth and each slot's KV use.
async fn metrics(Extract(state): Extract<Shared>) -> ApiResult {
    let loaded = loaded(&state)?;
    let c = &loaded.counters;
    let get = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
    let processing = c
        .slots
        .iter()
        .filter(|g| g.processing.load(Ordering::Relaxed))
        .count();
    let busy = c.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let generated = get(&c.generated_tokens);
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        text += &format!(
            "# HELP shardload_{name} {help}\n# TYPE shardload_{name} {kind}\nshardload_{name} {value}\n"
        );
    };
    metric(
        "requests_finished_total",
        "counter",
        "Completions finished.",
        get(&c.finished).to_string(),
    );
    metric(
        "prompt_tokens_total",
        "counter",
        "Prompt tokens evaluated (cached prefixes not counted).",
        get(&c.prompt_tokens).to_string(),
    );
    metric(
        "tokens_generated_total",
        "counter",
        "Tokens generated.",
        generated.to_string(),
    );
    metric(
        "busy_seconds_total",
        "counter",
        "Time spent running batches.",
        format!("{busy:.6}"),
    );
    metric(
        "tokens_per_second",
        "gauge",
        "Tokens generated per second of batch time.",
        format!(
            "{:.3}",
            if busy > 0.0 {
                generated as f64 / busy
            } else {
                0.0
            }
        ),
    );
    metric(
        "requests_processing",
        "gauge",
        "Slots running a completion.",
        processing.to_string(),
    );
    metric(
        "requests_waiting",
        "gauge",
        "Requests waiting for a slot.",
        get(&c.in_flight).saturating_sub(processing).to_string(),
    );
    text += "# HELP shardload_kv_cache_tokens Tokens in each slot's KV cache.\n# TYPE shardload_kv_cache_tokens gauge\n";
    for (i, g) in c.slots.iter().enumerate() {
        text += &format!(
            "shardload_kv_cache_tokens{{slot=\"{i}\"}} {}\n",
            g.cached_tokens.load(Ordering::Relaxed)
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
