//! HTTP to an OpenAI-compatible endpoint, done carefully: the one client of `audit` (an
//! endpoint under test) and `verify` (a provider's jobs and openings).
//!
//! * Every request has a timeout (connect and whole request).
//! * 429, 5xx, dropped connections, timeouts and bodies that are not whole JSON are retried
//!   with exponential backoff and full jitter, waiting at least what `Retry-After` asks
//!   (seconds or an HTTP date), up to a number of attempts; then the call gives up with the
//!   last reason. Other 4xx are not retried: the request itself is wrong.
//! * The API key (the front end reads it from the environment) is sent as a bearer token, never
//!   written anywhere (errors and transcripts hold the URL and the endpoint's message only).
//! * An answer is read up to a limit ([`MAX_ANSWER_BYTES`], or the caller's), so a hostile
//!   endpoint cannot exhaust memory; a longer one is refused, not retried.
//! * A retried request is the same request: a job that carries a `pot.nonce` is sent again with
//!   the same nonce. The nonce binds a receipt to the router's request, not to one attempt, and
//!   pot serve answers a repeated seeded request with the same steps.

use std::io::Read;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::Value;

use super::ErrorBody;

/// Longest JSON answer read (an echo of a long prompt with 20 alternatives per token is a few
/// megabytes).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How to reach the endpoint. Its `Debug` form hides the API key.
#[derive(Clone)]
pub struct EndpointConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080` or `https://api.example.com/v1`.
    pub url: String,
    /// Model name to send.
    pub model: String,
    /// Use `/chat/completions` (else `/completions`).
    pub chat: bool,
    /// The API key, sent as a bearer token and never written anywhere.
    pub api_key: Option<String>,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Longest single wait between attempts.
    pub max_backoff: Duration,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("chat", &self.chat)
            .field("api_key", &self.api_key.as_ref().map(|_| "(hidden)"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// Errors talking to the endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A request the endpoint refuses (4xx other than 429): retrying would not help.
    #[error("{url}: the endpoint refused the request with HTTP {status}: {message}")]
    Refused {
        /// URL.
        url: String,
        /// Status.
        status: u16,
        /// The endpoint's message.
        message: String,
    },
    /// Every attempt failed.
    #[error("{url}: gave up after {attempts} attempts; last: {last}. Check the endpoint, or raise --retries / --timeout, then --resume")]
    GaveUp {
        /// URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: String,
        /// The HTTP status of the last attempt, when it got an answer (`None`: no answer, a
        /// timeout or a dropped connection).
        status: Option<u16>,
    },
    /// The answer is longer than the limit.
    #[error("{url}: the answer is over {limit} bytes; this is not an OpenAI-compatible answer pot can read")]
    TooLarge {
        /// URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The request could not be written as JSON.
    #[error("the request could not be written as JSON")]
    Encode(#[source] serde_json::Error),
    /// The client could not be built.
    #[error("HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

/// One successful exchange.
#[derive(Clone, Debug)]
pub struct Exchange<T = Value> {
    /// The answer.
    pub body: T,
    /// Attempts it took.
    pub attempts: u32,
}

/// A request body.
#[derive(Clone, Copy)]
enum Body<'a> {
    None,
    Json(&'a Value),
    Bytes(&'a str, &'a [u8]),
}

/// A connection to an endpoint.
pub struct Endpoint {
    cfg: EndpointConfig,
    key: Option<String>,
    http: reqwest::blocking::Client,
}

/// Why one attempt failed, and whether to try again (with the server's requested wait, and
/// the status it answered with, if it did).
enum Attempt {
    Retry(String, Option<Duration>, Option<u16>),
    Fatal(ClientError),
}

impl Endpoint {
    /// A client for `cfg`.
    pub fn new(cfg: EndpointConfig) -> Result<Self, ClientError> {
        let key = cfg.api_key.clone();
        let http = reqwest::blocking::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("pot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Client)?;
        Ok(Self { cfg, key, http })
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// Full URL of a route under the base (`/v1` added when the base lacks it).
    pub fn url(&self, route: &str) -> String {
        let base = self.cfg.url.trim_end_matches('/');
        if base.ends_with("/v1") {
            format!("{base}{route}")
        } else {
            format!("{base}/v1{route}")
        }
    }

    /// POST a JSON body to a route, with retries: the answer as JSON.
    pub fn post(&self, route: &str, body: &impl Serialize) -> Result<Exchange, ClientError> {
        let url = self.url(route);
        let body = serde_json::to_value(body).map_err(ClientError::Encode)?;
        self.json(&url, Body::Json(&body))
    }

    /// GET a route, with retries: the answer as JSON.
    pub fn get(&self, route: &str) -> Result<Exchange, ClientError> {
        self.json(&self.url(route), Body::None)
    }

    /// POST bytes of a media type (`Accept` the same), with retries: the answer's bytes, at
    /// most `limit` of them.
    pub fn post_bytes(
        &self,
        route: &str,
        media: &str,
        body: &[u8],
        limit: usize,
    ) -> Result<Exchange<Vec<u8>>, ClientError> {
        self.call(&self.url(route), Body::Bytes(media, body), limit, |_, b| {
            Ok(b)
        })
    }

    fn json(&self, url: &str, body: Body<'_>) -> Result<Exchange, ClientError> {
        self.call(url, body, MAX_ANSWER_BYTES, |status, b| {
            serde_json::from_slice(&b)
                .map_err(|e| format!("HTTP {status} with a body that is not whole JSON ({e})"))
        })
    }

    fn call<T>(
        &self,
        url: &str,
        body: Body<'_>,
        limit: usize,
        read: impl Fn(u16, Vec<u8>) -> Result<T, String>,
    ) -> Result<Exchange<T>, ClientError> {
        let attempts = self.cfg.retries + 1;
        let (mut last, mut last_status) = (String::new(), None);
        for attempt in 0..attempts {
            let outcome = self
                .once(url, body, limit)
                .and_then(|(status, bytes, after)| {
                    read(status, bytes).map_err(|why| Attempt::Retry(why, after, Some(status)))
                });
            match outcome {
                Ok(body) => {
                    return Ok(Exchange {
                        body,
                        attempts: attempt + 1,
                    })
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why, after, status)) => {
                    tracing::info!("{url}: attempt {} failed: {why}", attempt + 1);
                    (last, last_status) = (why, status);
                    if attempt + 1 < attempts {
                        std::thread::sleep(self.backoff(attempt, after));
                    }
                }
            }
        }
        Err(ClientError::GaveUp {
            url: url.to_string(),
            attempts,
            last,
            status: last_status,
        })
    }

    /// Exponential backoff with full jitter (0.5 s · 2^attempt, capped), but never shorter
    /// than the server's `Retry-After`.
    fn backoff(&self, attempt: u32, after: Option<Duration>) -> Duration {
        let cap = (0.5 * 2f64.powi(attempt.min(16) as i32)).min(self.cfg.max_backoff.as_secs_f64());
        let jitter = Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..=cap.max(1e-3)));
        after
            .map_or(jitter, |a| a.max(jitter))
            .min(self.cfg.max_backoff)
    }

    /// One attempt: a successful status, the answer's bytes and the server's requested wait.
    #[allow(clippy::type_complexity)]
    fn once(
        &self,
        url: &str,
        body: Body<'_>,
        limit: usize,
    ) -> Result<(u16, Vec<u8>, Option<Duration>), Attempt> {
        let mut req = match body {
            Body::None => self.http.get(url),
            Body::Json(b) => self.http.post(url).json(b),
            Body::Bytes(media, b) => self
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, media)
                .header(reqwest::header::ACCEPT, media)
                .body(b.to_vec()),
        };
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .map_err(|e| Attempt::Retry(format!("no response ({})", describe(&e)), None, None))?;
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let too_large = || {
            Attempt::Fatal(ClientError::TooLarge {
                url: url.to_string(),
                limit,
            })
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        resp.take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Attempt::Retry(
                    format!("HTTP {status}, body cut off ({})", crate::with_causes(&e)),
                    after,
                    None,
                )
            })?;
        if bytes.len() > limit {
            return Err(too_large());
        }
        let message = || {
            ErrorBody::message_of(&bytes)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect())
        };
        match status {
            200..=299 => Ok((status, bytes, after)),
            429 | 500..=599 => Err(Attempt::Retry(
                format!("HTTP {status}: {}", message()),
                after,
                Some(status),
            )),
            _ => Err(Attempt::Fatal(ClientError::Refused {
                url: url.to_string(),
                status,
                message: message(),
            })),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        crate::with_causes(e)
    }
}

/// `Retry-After`: delta-seconds, or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    if let Ok(s) = v.parse::<f64>() {
        if s.is_finite() && s >= 0.0 {
            return Some(Duration::from_secs_f64(s));
        }
    }
    let when = httpdate_to_unix(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
fn httpdate_to_unix(v: &str) -> Option<u64> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        // A date in the past means: now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let e = Endpoint::new(EndpointConfig {
            url: "http://127.0.0.1:9".into(),
            model: "m".into(),
            chat: false,
            api_key: None,
            timeout: Duration::from_secs(1),
            retries: 3,
            max_backoff: Duration::from_secs(8),
        })
        .unwrap();
        for attempt in 0..20 {
            let d = e.backoff(attempt, None);
            assert!(d <= Duration::from_secs_f64((0.5 * 2f64.powi(attempt as i32)).min(8.0)));
        }
        assert!(e.backoff(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(
            e.backoff(0, Some(Duration::from_secs(100))),
            Duration::from_secs(8)
        );
        assert_eq!(e.url("/completions"), "http://127.0.0.1:9/v1/completions");
    }
}
