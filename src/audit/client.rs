//! HTTP to an OpenAI-compatible endpoint, done carefully.
//!
//! * Every request has a timeout (connect and whole request).
//! * 429, 5xx, dropped connections, timeouts and bodies that are not whole JSON are retried
//!   with exponential backoff and full jitter, waiting at least what `Retry-After` asks
//!   (seconds or an HTTP date), up to a number of attempts; then the call gives up with the
//!   last reason. Other 4xx are not retried: the request itself is wrong.
//! * The API key (the front end reads it from the environment) is sent as a bearer token, never
//!   written anywhere (errors and transcripts hold the URL and the endpoint's message only).

use std::time::Duration;

use rand::Rng;
use serde_json::Value;

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
    },
    /// The client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// One successful exchange.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The parsed response.
    pub body: Value,
    /// Attempts it took.
    pub attempts: u32,
}

/// A connection to an endpoint.
pub struct Endpoint {
    cfg: EndpointConfig,
    key: Option<String>,
    http: reqwest::blocking::Client,
}

/// Why one attempt failed, and whether to try again (with the server's requested wait).
enum Attempt {
    Retry(String, Option<Duration>),
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
            .map_err(|e| ClientError::Client(e.to_string()))?;
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

    /// POST a JSON body to a route, with retries.
    pub fn post(&self, route: &str, body: &Value) -> Result<Exchange, ClientError> {
        self.call(route, Some(body))
    }

    /// GET a route, with retries.
    pub fn get(&self, route: &str) -> Result<Exchange, ClientError> {
        self.call(route, None)
    }

    fn call(&self, route: &str, body: Option<&Value>) -> Result<Exchange, ClientError> {
        let url = self.url(route);
        let attempts = self.cfg.retries + 1;
        let mut last = String::new();
        for attempt in 0..attempts {
            match self.once(&url, body) {
                Ok(body) => {
                    return Ok(Exchange {
                        body,
                        attempts: attempt + 1,
                    })
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why, after)) => {
                    tracing::info!("{url}: attempt {} failed: {why}", attempt + 1);
                    last = why;
                    if attempt + 1 < attempts {
                        std::thread::sleep(self.backoff(attempt, after));
                    }
                }
            }
        }
        Err(ClientError::GaveUp {
            url,
            attempts,
            last,
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

    fn once(&self, url: &str, body: Option<&Value>) -> Result<Value, Attempt> {
        let mut req = match body {
            Some(b) => self.http.post(url).json(b),
            None => self.http.get(url),
        };
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .map_err(|e| Attempt::Retry(format!("no response ({})", describe(&e)), None))?;
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp.text().map_err(|e| {
            Attempt::Retry(
                format!("HTTP {status}, body cut off ({})", describe(&e)),
                after,
            )
        })?;
        let parsed: Result<Value, _> = serde_json::from_str(&text);
        let message = || {
            parsed
                .as_ref()
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| text.chars().take(200).collect())
        };
        match status {
            200..=299 => parsed.map_err(|e| {
                Attempt::Retry(
                    format!("HTTP {status} with a body that is not whole JSON ({e})"),
                    after,
                )
            }),
            429 | 500..=599 => Err(Attempt::Retry(
                format!("HTTP {status}: {}", message()),
                after,
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
