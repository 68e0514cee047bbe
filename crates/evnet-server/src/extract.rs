//! Body and query extractors whose rejections speak the API's error format.
//!
//! [`Body`] reads the request body the way `/openapi.json` describes it:
//! * a missing (empty) body is read as `{}`, so an operation whose body has
//!   no required field takes no body at all (`POST /v1/enis/{id}/detach`);
//!   one whose body has required fields answers 400 `invalid_body` naming the
//!   first missing field;
//! * a non-empty body must be JSON (`Content-Type: application/json` or
//!   `application/…+json`), else 415 `unsupported_media_type`;
//! * an integer may be written as an integral float (`596.0`, `5e2`), as JSON
//!   Schema counts those as integers; `596.5` where an integer is expected is
//!   400 `invalid_body` naming the field.
//!
//! [`Q`] reads query strings with the same rule for integers.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

use crate::error::ApiError;

/// A JSON request body, read as the module docs say.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body is larger than {} bytes", crate::MAX_BODY_BYTES),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body could not be read: {}", rej.body_text()))
            }
        })?;
        let mut value = if bytes.is_empty() {
            Value::Object(Default::default())
        } else {
            if !json_type {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as JSON with `Content-Type: application/json`",
                ));
            }
            serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body is not JSON: {e}"))
            })?
        };
        integral_floats_to_integers(&mut value);
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Ok(Body(v)),
            Err(e) => {
                let at = match e.path().to_string().as_str() {
                    "." => String::new(),
                    p => format!("`{p}`: "),
                };
                let missing = if bytes.is_empty() { "this request needs a JSON body: " } else { "" };
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("{missing}{at}{}; see /openapi.json for the request's shape", e.inner()),
                ))
            }
        }
    }
}

/// `application/json`, or any `application/…+json`, with parameters
/// (`; charset=utf-8`) allowed. Written out rather than parsed with `mime`:
/// these two rules are all axum's own `Json` checks too.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(sub) => sub == "json" || (sub.ends_with("+json") && sub.len() > "+json".len()),
        None => false,
    }
}

/// Rewrites every float with no fractional part that fits a 64-bit integer
/// as that integer (`596.0` → `596`), everywhere in `v`.
pub fn integral_floats_to_integers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_f64().filter(|_| n.is_f64()).and_then(integral) {
                *n = i;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

fn integral(f: f64) -> Option<Number> {
    // 2^64 and -2^63 are exact in f64; the casts below are exact in range.
    if !f.is_finite() || f.fract() != 0.0 {
        None
    } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
        Some(Number::from(f as u64))
    } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
        Some(Number::from(f as i64))
    } else {
        None
    }
}

/// A query string, whose errors answer 400 `invalid_query` naming the
/// parameter. A parameter that does not parse as given is read once more
/// with an integral float (`limit=5.0`) written as its integer, so only
/// the parameters that need it are rewritten (a `name=1.0` filter stays).
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        loop {
            let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
            let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(encoded.as_bytes()));
            let err = match serde_path_to_error::deserialize::<_, T>(de) {
                Ok(v) => return Ok(Q(v)),
                Err(e) => e,
            };
            let field = err.path().to_string();
            let fixed = pairs.iter_mut().find(|(k, _)| *k == field).and_then(|(_, v)| {
                let n = v.parse::<f64>().ok().filter(|_| v.contains(['.', 'e', 'E'])).and_then(integral)?;
                *v = n.to_string();
                Some(())
            });
            if fixed.is_none() {
                let at = if field == "." { String::new() } else { format!("`{field}`: ") };
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("{at}{}; see /openapi.json for this operation's parameters", err.inner()),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut v = serde_json::json!({"a": 596.0, "b": [1e3, -2.0, 596.5], "c": "596.0", "d": 1.8446744073709552e19, "e": 7});
        integral_floats_to_integers(&mut v);
        assert_eq!(v, serde_json::json!({"a": 596, "b": [1000, -2, 596.5], "c": "596.0", "d": 1.8446744073709552e19, "e": 7}));
        assert!(v["a"].is_u64() && v["b"][1].is_i64());
    }
}
