//! Turning chunk text into vectors: the [`Embedder`] trait, an offline
//! feature-hashing embedder (the default) and a client for OpenAI-compatible
//! `/v1/embeddings` servers (OpenAI, TEI, Ollama, vLLM).
//!
//! Every failure is either [`EmbedError::Unavailable`] (try again later: the worker
//! requeues the job with a delay) or [`EmbedError::Rejected`] (trying again cannot
//! help: the job fails and is dead-lettered), so the consumer never has to guess.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

/// Turns texts into fixed-length vectors.
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// Recorded with every namespace, e.g. "hash-256" or the remote model name, so
    /// vectors from different models are never mixed in one collection.
    fn model(&self) -> &str;

    /// Length of every vector this embedder returns.
    fn dimension(&self) -> usize;

    /// One vector per text, in the order of `texts`.
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Why texts could not be embedded, split by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Network failure, timeout, 5xx, 408 or 429: the same request may succeed later.
    #[error("embedding service unavailable: {0}")]
    Unavailable(String),
    /// Any other 4xx, a malformed response, a wrong count or dimension, or a bad
    /// configuration: the same request will fail the same way.
    #[error("embedding request rejected: {0}")]
    Rejected(String),
}

impl EmbedError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The hashing embedder's dimension when none is configured.
pub const DEFAULT_HASH_DIMENSION: usize = 256;

/// Largest dimension [`HashEmbedder::new`] accepts; larger requests are clamped.
/// Far beyond what feature hashing benefits from, and keeps a typo in a config file
/// from allocating gigabytes per chunk.
pub const MAX_HASH_DIMENSION: usize = 65_536;

/// Weight of a word bigram relative to a single word: bigrams add a little word
/// order ("index shard" vs "shard index") without outweighing the words themselves.
const BIGRAM_WEIGHT: f32 = 0.5;

/// A deterministic, offline embedder using feature hashing (the "hashing trick").
///
/// Each lowercased Unicode word (UAX #29 `unicode_words`) and each pair of adjacent
/// words is hashed with FNV-1a (64 bit, then a fixed bit mixer) to a vector index and
/// a sign, and the counts are L2-normalised. The output depends only on the text and
/// the dimension: identical on every platform, run and Rust release (std's
/// `DefaultHasher` makes no such promise), so stored vectors stay comparable.
///
/// It is **lexical, not semantic**: texts score as similar when they share words, so
/// "car" and "automobile" are unrelated to it, and a stemming or spelling difference
/// is a different word. It is the default because it needs no model, no network and
/// no GPU, which makes the whole pipeline testable offline; use a real model through
/// [`OpenAiEmbedder`] for semantic search.
///
/// A text without words (empty, punctuation or whitespace only) embeds to the zero
/// vector, which has no direction: its cosine similarity to anything is 0 (or NaN,
/// depending on the store), so it never ranks as a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashEmbedder {
    dimension: usize,
    model: String,
}

impl HashEmbedder {
    /// `dimension` is clamped to `1..=MAX_HASH_DIMENSION`; the model name records the
    /// dimension actually used (`hash-{dimension}`), because vectors of different
    /// dimensions cannot share a collection.
    pub fn new(dimension: usize) -> Self {
        let dimension = dimension.clamp(1, MAX_HASH_DIMENSION);
        Self {
            dimension,
            model: format!("hash-{dimension}"),
        }
    }

    /// The vector of one text; synchronous, for callers without a runtime.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut vector = vec![0.0_f32; self.dimension];
        let mut previous: Option<String> = None;
        for word in text.unicode_words() {
            let word = word.to_lowercase();
            self.add(&mut vector, &[b"w", word.as_bytes()], 1.0);
            if let Some(previous) = &previous {
                // 0xFF never occurs in UTF-8, so ("ab", "c") and ("a", "bc") differ.
                let pair: [&[u8]; 4] = [b"b", previous.as_bytes(), &[0xFF], word.as_bytes()];
                self.add(&mut vector, &pair, BIGRAM_WEIGHT);
            }
            previous = Some(word);
        }
        let norm = vector
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            for x in &mut vector {
                *x = (f64::from(*x) / norm) as f32;
            }
        }
        vector
    }

    /// Adds `weight` to the feature's bucket, with a sign from the same hash so that
    /// collisions cancel out on average instead of piling up.
    fn add(&self, vector: &mut [f32], feature: &[&[u8]], weight: f32) {
        let hash = mix64(fnv1a64(feature));
        // `dimension` fits in u64 and the remainder is below it, so neither cast loses
        // anything.
        let index = (hash % self.dimension as u64) as usize;
        let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
        if let Some(slot) = vector.get_mut(index) {
            *slot += sign * weight;
        }
    }
}

impl Default for HashEmbedder {
    fn default() -> Self {
        Self::new(DEFAULT_HASH_DIMENSION)
    }
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|text| self.embed_one(text)).collect())
    }
}

/// FNV-1a, 64 bit, over the concatenation of `parts`. Written out here because
/// its output must never change: it decides where every stored feature lives.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

/// MurmurHash3's 64-bit finaliser. FNV-1a's low bits, which pick the index, are
/// weak for short inputs that differ in their last byte; this spreads every input
/// bit over the whole word.
fn mix64(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Texts per request unless configured: the OpenAI API accepts far more, but smaller
/// requests fail and retry more cheaply and stay under servers' body limits.
pub const DEFAULT_BATCH_SIZE: usize = 64;
/// Time allowed for one request, response body included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries after the first attempt of a batch, on retryable failures only.
pub const DEFAULT_MAX_RETRIES: u32 = 4;
/// First backoff delay; each retry doubles it, plus up to as much again of jitter.
pub const DEFAULT_RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest backoff delay, and the longest `Retry-After` that is waited out in process.
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(10);

/// Bytes of an error response kept for the error message: enough for any JSON error,
/// and a misbehaving server cannot make us buffer a large page.
const ERROR_BODY_LIMIT: usize = 4 * 1024;

/// How to reach an OpenAI-compatible embeddings server.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081`; requests go to `{url}/v1/embeddings`.
    /// A URL ending in `/v1` or in `/v1/embeddings` is accepted as well.
    pub url: String,
    /// Sent as `model` and recorded with every namespace.
    pub model: String,
    /// The model's output length; every returned vector is checked against it.
    pub dimension: usize,
    /// Sent as `Authorization: Bearer ...` when set. Never printed: `Debug` redacts it.
    pub api_key: Option<String>,
    /// Texts per request, at least 1.
    pub batch_size: usize,
    /// Time allowed for one request, response body included.
    pub timeout: Duration,
    /// Retries after the first attempt of a batch, on retryable failures only.
    pub max_retries: u32,
    /// First backoff delay (short in tests).
    pub retry_min_delay: Duration,
    /// Longest backoff delay; a `Retry-After` longer than this is not waited out here
    /// but returned as `Unavailable`, for the job queue's own delayed retry, rather
    /// than holding a worker.
    pub retry_max_delay: Duration,
}

impl OpenAiConfig {
    /// A configuration with the default batch size, timeout and retry policy.
    pub fn new(url: impl Into<String>, model: impl Into<String>, dimension: usize) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            dimension,
            api_key: None,
            batch_size: DEFAULT_BATCH_SIZE,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_min_delay: DEFAULT_RETRY_MIN_DELAY,
            retry_max_delay: DEFAULT_RETRY_MAX_DELAY,
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_min_delay", &self.retry_min_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .finish()
    }
}

/// A client for an OpenAI-compatible `POST /v1/embeddings` endpoint.
///
/// Texts are sent in batches of `batch_size`, one batch at a time; each batch is
/// retried with exponential backoff and jitter on retryable failures. Redirects are
/// not followed: a redirected embeddings URL is a configuration mistake, and
/// following it would resend the API key elsewhere.
pub struct OpenAiEmbedder {
    config: OpenAiConfig,
    endpoint: Url,
    client: reqwest::Client,
}

impl fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("endpoint", &self.endpoint.as_str())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct EmbeddingRequest<'a> {
    model: &'a str,
    input: &'a [&'a str],
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    /// Position in the request's `input`. Servers may answer out of order; a server
    /// that sends no index at all is taken to answer in order.
    #[serde(default)]
    index: Option<usize>,
}

/// A failed attempt, with the server's `Retry-After` if it sent one.
struct Failure {
    error: EmbedError,
    retry_after: Option<Duration>,
}

impl From<EmbedError> for Failure {
    fn from(error: EmbedError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl OpenAiEmbedder {
    /// Checks the configuration and builds the HTTP client. An invalid URL, an empty
    /// model name, a zero dimension, batch size or timeout is `Rejected`: retrying
    /// cannot fix configuration.
    pub fn new(mut config: OpenAiConfig) -> Result<Self, EmbedError> {
        let endpoint = embeddings_url(&config.url)?;
        if config.model.trim().is_empty() {
            return Err(EmbedError::Rejected(
                "the embedding model name is empty".into(),
            ));
        }
        if config.dimension == 0 {
            return Err(EmbedError::Rejected("the embedding dimension is 0".into()));
        }
        if config.batch_size == 0 {
            return Err(EmbedError::Rejected("the embedding batch size is 0".into()));
        }
        if config.timeout.is_zero() {
            return Err(EmbedError::Rejected("the embedding timeout is 0".into()));
        }
        // An empty key (an unset variable in a config template) means no key, not a
        // malformed `Authorization` header on every request.
        config.api_key = config.api_key.filter(|key| !key.trim().is_empty());
        let client = crate::tls::http_client()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                EmbedError::Rejected(format!("cannot build HTTP client: {}", describe(&e)))
            })?;
        Ok(Self {
            config,
            endpoint,
            client,
        })
    }

    /// The URL requests are sent to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// One batch, retried on retryable failures.
    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let max_delay = self.config.retry_max_delay;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.retry_min_delay)
            .with_max_delay(max_delay)
            .with_max_times(usize::try_from(self.config.max_retries).unwrap_or(usize::MAX))
            .with_jitter();
        (|| self.attempt(texts))
            .retry(backoff)
            .when(|failure: &Failure| failure.error.is_retryable())
            .adjust(move |failure: &Failure, delay: Option<Duration>| {
                // `None` means retries are used up. A server's `Retry-After` wins over
                // our backoff unless it is too long to wait out holding a worker.
                let delay = delay?.min(max_delay);
                match failure.retry_after {
                    Some(wait) if wait > max_delay => None,
                    Some(wait) => Some(wait.max(delay)),
                    None => Some(delay),
                }
            })
            .notify(|failure: &Failure, delay: Duration| {
                tracing::warn!(
                    model = %self.config.model,
                    endpoint = %self.endpoint,
                    batch = texts.len(),
                    ?delay,
                    error = %failure.error,
                    "Embedding request failed; retrying."
                );
            })
            .await
            .map_err(|failure| failure.error)
    }

    /// One request for one batch.
    async fn attempt(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Failure> {
        let body = EmbeddingRequest {
            model: &self.config.model,
            input: texts,
        };
        let mut request = self.client.post(self.endpoint.clone()).json(&body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            // Generous (about 32 bytes per number, plus room for the envelope) but
            // bounded, like the error body.
            let limit = texts
                .len()
                .saturating_mul(self.config.dimension)
                .saturating_mul(32)
                .saturating_add(1 << 20);
            let (body, complete) = read_bounded(&mut response, limit)
                .await
                .map_err(|e| self.transport_error(&e))?;
            if !complete {
                return Err(EmbedError::Rejected(format!(
                    "response from {} is larger than {limit} bytes",
                    self.endpoint
                ))
                .into());
            }
            return parse_embeddings(&body, texts.len(), self.config.dimension).map_err(
                |message| {
                    EmbedError::Rejected(format!(
                        "{message} (model {:?} at {})",
                        self.config.model, self.endpoint
                    ))
                    .into()
                },
            );
        }
        let retry_after = if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after(response.headers())
        } else {
            None
        };
        // The body only adds detail to the message; failing to read it is no reason
        // to lose the status.
        let (body, complete) = read_bounded(&mut response, ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let mut detail = String::from_utf8_lossy(&body).trim().to_owned();
        if !complete {
            detail.push_str("...");
        }
        let message = format!("{status} from {}: {detail}", self.endpoint);
        let error = if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            EmbedError::Unavailable(message)
        } else {
            EmbedError::Rejected(message)
        };
        Err(Failure { error, retry_after })
    }

    /// A failure below HTTP: connect, TLS, timeout, a body cut short. All retryable
    /// except a request that could not even be built (say, a key with a newline).
    fn transport_error(&self, error: &reqwest::Error) -> Failure {
        let error = if error.is_builder() {
            EmbedError::Rejected(format!("cannot build request: {}", describe(error)))
        } else if error.is_timeout() {
            EmbedError::Unavailable(format!(
                "no response from {} within {:?}",
                self.endpoint, self.config.timeout
            ))
        } else {
            EmbedError::Unavailable(describe(error))
        };
        error.into()
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.config.model
    }

    fn dimension(&self) -> usize {
        self.config.dimension
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.config.batch_size.max(1)) {
            vectors.extend(self.embed_batch(batch).await?);
        }
        Ok(vectors)
    }
}

/// `{url}/v1/embeddings`, accepting a base URL with or without `/v1`, or the full
/// endpoint, with or without a trailing slash.
fn embeddings_url(base: &str) -> Result<Url, EmbedError> {
    let trimmed = base.trim().trim_end_matches('/');
    let full = if trimmed.ends_with("/v1/embeddings") {
        trimmed.to_owned()
    } else if trimmed.ends_with("/v1") {
        format!("{trimmed}/embeddings")
    } else {
        format!("{trimmed}/v1/embeddings")
    };
    let url = Url::parse(&full)
        .map_err(|e| EmbedError::Rejected(format!("invalid embedding URL {base:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(EmbedError::Rejected(format!(
            "embedding URL {base:?} must be http or https"
        )));
    }
    Ok(url)
}

/// Up to `limit` bytes of the body, and whether that was all of it.
pub(crate) async fn read_bounded(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(chunk.get(..room).unwrap_or_default());
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// `Retry-After` in seconds. The HTTP-date form is ignored (the backoff applies):
/// embedding servers send seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// The vectors of a successful response, in request order, after checking that there
/// is exactly one finite vector of `dimension` numbers per input.
fn parse_embeddings(
    body: &[u8],
    expected: usize,
    dimension: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let response: EmbeddingResponse =
        serde_json::from_slice(body).map_err(|e| format!("malformed embeddings response: {e}"))?;
    if response.data.len() != expected {
        return Err(format!(
            "{} embeddings returned for {expected} inputs",
            response.data.len()
        ));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
    let indexed = response
        .data
        .iter()
        .filter(|item| item.index.is_some())
        .count();
    if indexed != 0 && indexed != expected {
        return Err("only some embeddings carry an index".into());
    }
    for (position, item) in response.data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        if item.embedding.len() != dimension {
            return Err(format!(
                "embedding {index} has dimension {}, expected {dimension}; \
                 is the configured dimension right for this model?",
                item.embedding.len()
            ));
        }
        if !item.embedding.iter().all(|x| x.is_finite()) {
            return Err(format!("embedding {index} contains a non-finite number"));
        }
        match slots.get_mut(index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            Some(Some(_)) => return Err(format!("embedding index {index} appears twice")),
            None => return Err(format!("embedding index {index} is out of range")),
        }
    }
    // Every slot is filled: `expected` distinct in-range indexes were placed.
    slots
        .into_iter()
        .map(|slot| slot.ok_or_else(|| "an embedding is missing".to_owned()))
        .collect()
}

/// An error with its sources, which is where reqwest says what actually went wrong
/// ("connection refused", "invalid peer certificate").
fn describe(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The fleet's embedder, as configured.
pub fn from_settings(
    settings: &crate::config::EmbedderSettings,
) -> Result<std::sync::Arc<dyn Embedder>, EmbedError> {
    use crate::config::EmbedderSettings;
    Ok(match settings {
        EmbedderSettings::Hash { dimension } => std::sync::Arc::new(HashEmbedder::new(*dimension)),
        EmbedderSettings::OpenAi {
            url,
            model,
            dimension,
            api_key,
            max_retries,
        } => {
            let mut config = OpenAiConfig::new(url.clone(), model.clone(), *dimension);
            config.api_key = api_key.as_ref().map(|k| k.expose().to_owned());
            config.max_retries = *max_retries;
            std::sync::Arc::new(OpenAiEmbedder::new(config)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::{Value, json};

    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64(&[b"foo", b"bar"]), fnv1a64(&[b"foobar"]));
    }

    /// Pinned outputs: if the tokeniser, the hash, the mixer or the weighting ever
    /// changes, stored vectors would silently stop matching new queries. Computed
    /// once from this implementation; change them only together with a re-index.
    #[test]
    fn hash_embedding_is_pinned() {
        let embedder = HashEmbedder::new(16);
        let vector = embedder.embed_one("Hello, multi-tenant world!");
        let nonzero: Vec<(usize, f32)> = vector
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, x)| x != 0.0)
            .collect();
        assert_eq!(nonzero, PINNED_16);
        let default = HashEmbedder::default().embed_one("Tenant isolation: the heart of it.");
        let nonzero: Vec<(usize, f32)> = default
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, x)| x != 0.0)
            .collect();
        assert_eq!(nonzero, PINNED_256);
    }

    const PINNED_16: &[(usize, f32)] = &[
        (2, -0.377_964_47),
        (9, 0.377_964_47),
        (12, -0.755_928_93),
        (13, -0.377_964_47),
    ];
    /// Six words (±1) and five bigrams (±0.5), no collisions, over √7.25.
    const PINNED_256: &[(usize, f32)] = &[
        (42, 0.185_695_34),
        (47, 0.371_390_67),
        (54, 0.371_390_67),
        (90, -0.185_695_34),
        (116, -0.185_695_34),
        (131, 0.371_390_67),
        (137, -0.185_695_34),
        (148, 0.371_390_67),
        (157, -0.371_390_67),
        (166, 0.185_695_34),
        (193, -0.371_390_67),
    ];

    #[test]
    fn hash_embedding_properties() {
        let embedder = HashEmbedder::default();
        assert_eq!(embedder.model(), "hash-256");
        assert_eq!(embedder.dimension(), DEFAULT_HASH_DIMENSION);
        let a = embedder.embed_one("The worker reads jobs from the queue.");
        assert_eq!(a.len(), 256);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(
            a,
            embedder.embed_one("The worker reads jobs from the queue.")
        );
        // Case and punctuation do not matter; words do.
        assert_eq!(
            a,
            embedder.embed_one("the WORKER reads jobs from the queue")
        );
        for blank in ["", "   ", "?!... --- ;;", "\u{1F600}"] {
            assert!(
                embedder.embed_one(blank).iter().all(|&x| x == 0.0),
                "{blank:?}"
            );
        }
        // Non-Latin words are words too.
        assert!(
            embedder
                .embed_one("日本語のテキスト")
                .iter()
                .any(|&x| x != 0.0)
        );
        assert!(embedder.embed_one("Привет мир").iter().any(|&x| x != 0.0));
    }

    #[test]
    fn shared_words_score_higher_than_unrelated_text() {
        let embedder = HashEmbedder::default();
        let query = embedder.embed_one("tenant quota exceeded");
        let related = embedder.embed_one("The tenant has exceeded its storage quota.");
        let unrelated = embedder.embed_one("Bake the bread at two hundred degrees.");
        let same = cosine(&query, &embedder.embed_one("tenant quota exceeded"));
        let r = cosine(&query, &related);
        let u = cosine(&query, &unrelated);
        assert!((same - 1.0).abs() < 1e-5);
        assert!(r > 0.3, "related {r}");
        assert!(u.abs() < 0.2, "unrelated {u}");
        assert!(r > u + 0.2, "related {r} vs unrelated {u}");
        // Word order counts a little, through bigrams.
        let swapped = cosine(&query, &embedder.embed_one("exceeded quota tenant"));
        assert!(swapped < 0.99 && swapped > 0.5, "{swapped}");
    }

    #[test]
    fn hash_dimension_is_clamped() {
        assert_eq!(HashEmbedder::new(0).dimension(), 1);
        assert_eq!(HashEmbedder::new(0).model(), "hash-1");
        assert_eq!(
            HashEmbedder::new(usize::MAX).dimension(),
            MAX_HASH_DIMENSION
        );
        assert_eq!(HashEmbedder::new(1).embed_one("a b c").len(), 1);
    }

    #[tokio::test]
    async fn hash_embedder_through_the_trait() {
        let embedder: Arc<dyn Embedder> = Arc::new(HashEmbedder::new(32));
        let vectors = embedder.embed(&["one", "two", ""]).await.unwrap();
        assert_eq!(vectors.len(), 3);
        assert!(vectors.iter().all(|v| v.len() == 32));
        assert!(embedder.embed(&[]).await.unwrap().is_empty());
    }

    #[test]
    fn endpoint_accepts_base_urls_with_or_without_v1() {
        for base in [
            "http://127.0.0.1:8081",
            "http://127.0.0.1:8081/",
            "http://127.0.0.1:8081/v1",
            "http://127.0.0.1:8081/v1/",
            "http://127.0.0.1:8081/v1/embeddings",
            " http://127.0.0.1:8081 ",
        ] {
            assert_eq!(
                embeddings_url(base).unwrap().as_str(),
                "http://127.0.0.1:8081/v1/embeddings",
                "{base}"
            );
        }
        assert_eq!(
            embeddings_url("https://api.example/openai/v1")
                .unwrap()
                .as_str(),
            "https://api.example/openai/v1/embeddings"
        );
        for bad in ["", "not a url", "ftp://host/v1", "127.0.0.1:8081"] {
            let err = embeddings_url(bad).unwrap_err();
            assert!(!err.is_retryable(), "{bad}: {err}");
        }
    }

    #[test]
    fn config_is_validated() {
        let good = OpenAiConfig::new("http://127.0.0.1:1", "m", 8);
        assert!(OpenAiEmbedder::new(good.clone()).is_ok());
        let cases = [
            OpenAiConfig {
                model: " ".into(),
                ..good.clone()
            },
            OpenAiConfig {
                dimension: 0,
                ..good.clone()
            },
            OpenAiConfig {
                batch_size: 0,
                ..good.clone()
            },
            OpenAiConfig {
                timeout: Duration::ZERO,
                ..good.clone()
            },
            OpenAiConfig {
                url: "nope".into(),
                ..good.clone()
            },
        ];
        for config in cases {
            let err = OpenAiEmbedder::new(config.clone()).unwrap_err();
            assert!(matches!(err, EmbedError::Rejected(_)), "{config:?}: {err}");
        }
    }

    #[test]
    fn debug_never_shows_the_api_key() {
        let mut config = OpenAiConfig::new("http://127.0.0.1:1", "m", 8);
        config.api_key = Some("sk-very-secret-key".into());
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("sk-very-secret"), "{printed}");
        assert!(printed.contains("<redacted>"));
        let embedder = OpenAiEmbedder::new(config).unwrap();
        let printed = format!("{embedder:?} {embedder:#?}");
        assert!(!printed.contains("sk-very-secret"), "{printed}");
        assert!(printed.contains("http://127.0.0.1:1/v1/embeddings"));
    }

    #[test]
    fn response_parsing_checks_everything() {
        let ok = br#"{"data":[{"embedding":[1,2],"index":1},{"embedding":[3,4],"index":0}],"model":"m"}"#;
        assert_eq!(
            parse_embeddings(ok, 2, 2).unwrap(),
            vec![vec![3.0, 4.0], vec![1.0, 2.0]]
        );
        let unindexed = br#"{"data":[{"embedding":[1,2]},{"embedding":[3,4]}]}"#;
        assert_eq!(
            parse_embeddings(unindexed, 2, 2).unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        let bad: [(&[u8], &str); 7] = [
            (b"not json", "malformed"),
            (br#"{"object":"list"}"#, "malformed"),
            (
                br#"{"data":[{"embedding":[1,2],"index":0}]}"#,
                "1 embeddings returned for 2",
            ),
            (
                br#"{"data":[{"embedding":[1,2],"index":0},{"embedding":[3],"index":1}]}"#,
                "dimension 1, expected 2",
            ),
            (
                br#"{"data":[{"embedding":[1,2],"index":0},{"embedding":[3,4],"index":0}]}"#,
                "twice",
            ),
            (
                br#"{"data":[{"embedding":[1,2],"index":0},{"embedding":[3,4],"index":7}]}"#,
                "out of range",
            ),
            (
                br#"{"data":[{"embedding":[1,2],"index":0},{"embedding":[3,4]}]}"#,
                "only some",
            ),
        ];
        for (body, expected) in bad {
            let err = parse_embeddings(body, 2, 2).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    /// What the test server saw, and how it should answer.
    #[derive(Default)]
    struct Seen {
        requests: AtomicUsize,
        batches: Mutex<Vec<Vec<String>>>,
        auth: Mutex<Vec<Option<String>>>,
    }

    /// Serves `router` on a free loopback port; returns the base URL.
    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    fn config(url: &str, dimension: usize) -> OpenAiConfig {
        OpenAiConfig {
            retry_min_delay: Duration::from_millis(1),
            retry_max_delay: Duration::from_millis(20),
            timeout: Duration::from_secs(10),
            ..OpenAiConfig::new(url, "test-model", dimension)
        }
    }

    /// A well-behaved server, except that it answers in reverse order: each vector is
    /// `[n, dimension as f32, 0, ...]` for the input `"text-{n}"`.
    async fn embeddings(
        State((seen, dimension)): State<(Arc<Seen>, usize)>,
        headers: HeaderMap,
        Json(request): Json<Value>,
    ) -> Json<Value> {
        seen.requests.fetch_add(1, Ordering::SeqCst);
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        seen.auth.lock().unwrap().push(auth);
        assert_eq!(request["model"], "test-model");
        let inputs: Vec<String> = request["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .rev()
            .map(|(index, text)| {
                let n: f32 = text.trim_start_matches("text-").parse().unwrap_or(-1.0);
                let mut embedding = vec![0.0_f32; dimension];
                embedding[0] = n;
                if dimension > 1 {
                    embedding[1] = dimension as f32;
                }
                json!({"object": "embedding", "embedding": embedding, "index": index})
            })
            .collect();
        seen.batches.lock().unwrap().push(inputs);
        Json(json!({"object": "list", "data": data, "model": "test-model"}))
    }

    fn well_behaved(seen: &Arc<Seen>, dimension: usize) -> Router {
        Router::new()
            .route("/v1/embeddings", post(embeddings))
            .with_state((seen.clone(), dimension))
    }

    #[tokio::test]
    async fn batches_keep_input_order() {
        let seen = Arc::new(Seen::default());
        let url = serve(well_behaved(&seen, 4)).await;
        let embedder = OpenAiEmbedder::new(config(&url, 4)).unwrap();
        assert_eq!(embedder.model(), "test-model");
        assert_eq!(embedder.dimension(), 4);
        let texts: Vec<String> = (0..150).map(|i| format!("text-{i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

        let vectors = embedder.embed(&refs).await.unwrap();

        assert_eq!(vectors.len(), 150);
        for (i, vector) in vectors.iter().enumerate() {
            assert_eq!(vector, &vec![i as f32, 4.0, 0.0, 0.0]);
        }
        assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
        let sizes: Vec<usize> = seen.batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [64, 64, 22]);
        assert_eq!(seen.auth.lock().unwrap()[0], None, "no key, no header");
    }

    #[tokio::test]
    async fn no_texts_no_request() {
        let seen = Arc::new(Seen::default());
        let url = serve(well_behaved(&seen, 4)).await;
        let embedder = OpenAiEmbedder::new(config(&url, 4)).unwrap();
        assert!(embedder.embed(&[]).await.unwrap().is_empty());
        assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn bearer_key_is_sent() {
        let seen = Arc::new(Seen::default());
        let url = serve(well_behaved(&seen, 2)).await;
        let mut config = config(&format!("{url}/v1/"), 2);
        config.api_key = Some("sk-test-key".into());
        let embedder = OpenAiEmbedder::new(config).unwrap();
        embedder.embed(&["text-1"]).await.unwrap();
        assert_eq!(
            seen.auth.lock().unwrap().as_slice(),
            [Some("Bearer sk-test-key".to_owned())]
        );
    }

    /// Answers the first `failures` requests with `status` (and `headers`), then
    /// behaves.
    fn flaky(
        seen: &Arc<Seen>,
        failures: usize,
        status: StatusCode,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> Router {
        let seen = seen.clone();
        Router::new().route(
            "/v1/embeddings",
            post(move |request_headers: HeaderMap, request: Json<Value>| {
                let seen = seen.clone();
                async move {
                    let n = seen.requests.load(Ordering::SeqCst);
                    if n < failures {
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        let mut response = (status, body).into_response();
                        for (name, value) in headers {
                            response.headers_mut().insert(*name, value.parse().unwrap());
                        }
                        return response;
                    }
                    embeddings(State((seen, 2)), request_headers, request)
                        .await
                        .into_response()
                }
            }),
        )
    }

    #[tokio::test]
    async fn server_errors_are_retried() {
        let seen = Arc::new(Seen::default());
        let url = serve(flaky(
            &seen,
            2,
            StatusCode::INTERNAL_SERVER_ERROR,
            &[],
            "boom",
        ))
        .await;
        let embedder = OpenAiEmbedder::new(config(&url, 2)).unwrap();
        let vectors = embedder.embed(&["text-7"]).await.unwrap();
        assert_eq!(vectors, [vec![7.0, 2.0]]);
        assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_run_out() {
        let seen = Arc::new(Seen::default());
        let url = serve(flaky(
            &seen,
            100,
            StatusCode::SERVICE_UNAVAILABLE,
            &[],
            "down",
        ))
        .await;
        let mut config = config(&url, 2);
        config.max_retries = 2;
        let embedder = OpenAiEmbedder::new(config).unwrap();
        let err = embedder.embed(&["text-1"]).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.to_string().contains("503") && err.to_string().contains("down"),
            "{err}"
        );
        assert_eq!(
            seen.requests.load(Ordering::SeqCst),
            3,
            "first attempt + 2 retries"
        );
    }

    #[tokio::test]
    async fn client_errors_are_rejected_without_retry() {
        let seen = Arc::new(Seen::default());
        let body = r#"{"error":{"message":"input too long"}}"#;
        let url = serve(flaky(&seen, 100, StatusCode::BAD_REQUEST, &[], body)).await;
        let embedder = OpenAiEmbedder::new(config(&url, 2)).unwrap();
        let err = embedder.embed(&["text-1"]).await.unwrap_err();
        assert!(matches!(err, EmbedError::Rejected(_)), "{err}");
        assert!(err.to_string().contains("400") && err.to_string().contains("input too long"));
        assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn rate_limit_honours_short_retry_after() {
        let seen = Arc::new(Seen::default());
        let url = serve(flaky(
            &seen,
            1,
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", "0")],
            "",
        ))
        .await;
        let embedder = OpenAiEmbedder::new(config(&url, 2)).unwrap();
        assert_eq!(embedder.embed(&["text-3"]).await.unwrap(), [vec![3.0, 2.0]]);
        assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn rate_limit_with_long_retry_after_is_left_to_the_queue() {
        let seen = Arc::new(Seen::default());
        let url = serve(flaky(
            &seen,
            1,
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", "3600")],
            "",
        ))
        .await;
        let embedder = OpenAiEmbedder::new(config(&url, 2)).unwrap();
        let err = embedder.embed(&["text-3"]).await.unwrap_err();
        assert!(
            err.is_retryable() && err.to_string().contains("429"),
            "{err}"
        );
        assert_eq!(
            seen.requests.load(Ordering::SeqCst),
            1,
            "no in-process wait of an hour"
        );
    }

    #[tokio::test]
    async fn error_body_is_bounded() {
        static HUGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "x".repeat(1 << 20));
        let url = serve(Router::new().route(
            "/v1/embeddings",
            post(|| async { (StatusCode::UNPROCESSABLE_ENTITY, HUGE.as_str()) }),
        ))
        .await;
        let embedder = OpenAiEmbedder::new(config(&url, 2)).unwrap();
        let err = embedder.embed(&["a"]).await.unwrap_err();
        assert!(matches!(err, EmbedError::Rejected(_)));
        let message = err.to_string();
        assert!(message.len() < ERROR_BODY_LIMIT + 200, "{}", message.len());
        assert!(message.ends_with("..."));
    }

    #[tokio::test]
    async fn wrong_dimension_is_rejected() {
        let seen = Arc::new(Seen::default());
        let url = serve(well_behaved(&seen, 3)).await;
        let embedder = OpenAiEmbedder::new(config(&url, 4)).unwrap();
        let err = embedder.embed(&["text-1", "text-2"]).await.unwrap_err();
        assert!(matches!(err, EmbedError::Rejected(_)), "{err}");
        let message = err.to_string();
        assert!(message.contains("dimension 3, expected 4"), "{message}");
        assert!(message.contains("test-model"), "{message}");
        assert_eq!(seen.requests.load(Ordering::SeqCst), 1, "not retried");
    }

    #[tokio::test]
    async fn malformed_and_short_responses_are_rejected() {
        let url = serve(
            Router::new()
                .route(
                    "/short/v1/embeddings",
                    post(|| async { Json(json!({"data": []})) }),
                )
                .route(
                    "/html/v1/embeddings",
                    post(|| async { "<html>gateway</html>" }),
                ),
        )
        .await;
        for (path, expected) in [
            ("short", "0 embeddings returned for 1"),
            ("html", "malformed"),
        ] {
            let embedder = OpenAiEmbedder::new(config(&format!("{url}/{path}"), 2)).unwrap();
            let err = embedder.embed(&["a"]).await.unwrap_err();
            assert!(matches!(err, EmbedError::Rejected(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let url = serve(Router::new().route(
            "/v1/embeddings",
            post(|| async {
                let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
                response.headers_mut().insert(
                    "location",
                    "http://127.0.0.1:9/v1/embeddings".parse().unwrap(),
                );
                response
            }),
        ))
        .await;
        let mut config = config(&url, 2);
        config.api_key = Some("sk-do-not-forward".into());
        let embedder = OpenAiEmbedder::new(config).unwrap();
        let err = embedder.embed(&["a"]).await.unwrap_err();
        assert!(
            matches!(err, EmbedError::Rejected(_)) && err.to_string().contains("307"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn timeout_is_unavailable() {
        let seen = Arc::new(Seen::default());
        let hanging = seen.clone();
        let url = serve(Router::new().route(
            "/v1/embeddings",
            post(move || {
                let seen = hanging.clone();
                async move {
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<Response>().await
                }
            }),
        ))
        .await;
        let mut config = config(&url, 2);
        config.timeout = Duration::from_millis(200);
        config.max_retries = 1;
        let embedder = OpenAiEmbedder::new(config).unwrap();
        let err = embedder.embed(&["a"]).await.unwrap_err();
        assert!(matches!(err, EmbedError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("within 200ms"), "{err}");
        assert_eq!(
            seen.requests.load(Ordering::SeqCst),
            2,
            "timeouts are retried"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_unavailable() {
        // Bind, note the port, close: nothing listens there any more.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut config = config(&format!("http://{addr}"), 2);
        config.max_retries = 0;
        let embedder = OpenAiEmbedder::new(config).unwrap();
        let err = embedder.embed(&["a"]).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }
}
