//! Per-caller request rate limits: a token bucket (governor's GCRA) per
//! tenant and per host credential, refilled at `rps` with room for `burst`.
//! The admin is exempt (the operator's tooling must reach a busy server);
//! bootstrap tokens share one bucket; requests without a valid token are
//! not counted here (they are answered 401 before any work is done).
//!
//! A refused request answers 429 `rate_limited` with `Retry-After` in whole
//! seconds and reaches no handler, so retrying it is always safe.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Caller;
use crate::error::ApiError;

pub struct Limiter {
    buckets: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
    rps: u32,
}

impl Limiter {
    /// `rps` 0 turns limits off; `burst` 0 means one second's worth.
    pub fn new(rps: u32, burst: u32) -> Self {
        let buckets = NonZeroU32::new(rps).map(|r| {
            let burst = NonZeroU32::new(burst).unwrap_or(r);
            RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        Self { buckets, clock: DefaultClock::default(), rps }
    }

    /// Requests a second each caller may send (0: no limit).
    pub fn rps(&self) -> u32 {
        self.rps
    }

    /// Counts one request of `caller`; the wait before the next would pass
    /// when over the limit.
    pub fn check(&self, caller: &Caller) -> Result<(), Duration> {
        let Some(b) = &self.buckets else { return Ok(()) };
        let key = match caller {
            Caller::Admin => return Ok(()),
            Caller::Tenant(t) => format!("tenant:{t}"),
            Caller::Host(h) => format!("host:{h}"),
            Caller::Bootstrap(_) => "bootstrap".to_string(),
        };
        b.check_key(&key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets buckets that are full again (callers that went quiet).
    pub fn shrink(&self) {
        if let Some(b) = &self.buckets {
            b.retain_recent();
            b.shrink_to_fit();
        }
    }

    /// The 429 for a caller that must wait `wait`.
    pub fn refusal(&self, wait: Duration) -> Response {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this token sent more than {} requests a second; retry after {secs} s (Retry-After), or ask the admin to raise --rate-limit-rps",
                self.rps
            ),
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}
