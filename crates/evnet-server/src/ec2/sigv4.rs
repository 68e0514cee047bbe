//! AWS Signature Version 4, verified on the server.
//!
//! The primitives are the RustCrypto crates `hmac` and `sha2`. The canonical
//! request is built here by hand, following AWS's published algorithm, because
//! no well-kept crate verifies SigV4 on the server side: `aws-sigv4` (the AWS
//! SDK's) only signs outgoing requests, and `scratchstack-aws-signature`,
//! which does verify, brings its own service and principal model over an
//! older `http` stack and would still need our key lookup and EC2's error
//! codes around it. The construction is small (method, path, sorted query,
//! signed headers, payload hash) and the tests check it against what the real
//! botocore signs.
//!
//! Both forms are accepted: the `Authorization: AWS4-HMAC-SHA256 …` header
//! (what boto3 and the aws CLI send) and a presigned GET
//! (`X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=…` in the query).
//! As AWS does, a request is refused when its `X-Amz-Date` is more than
//! [`MAX_SKEW_SECS`] away from the server's clock, and a presigned request
//! once its `X-Amz-Expires` has passed; a signature within that window can be
//! replayed (AWS keeps no nonce either), so the window bounds replay.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::error::Ec2Error;

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's date may be from the server's clock.
pub const MAX_SKEW_SECS: i64 = 5 * 60;
/// The longest a presigned request may say it is valid (AWS: 7 days).
pub const MAX_EXPIRES_SECS: i64 = 7 * 24 * 3600;
/// The service name a credential must be scoped to.
pub const SERVICE: &str = "ec2";

/// Characters SigV4 leaves unencoded: A-Z a-z 0-9 - _ . ~
const AWS_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// The same for paths, keeping `/`.
const AWS_ENCODE_PATH: &AsciiSet = &AWS_ENCODE.remove(b'/');

/// What a request says about its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub scope_date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// `X-Amz-Date`, `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// Presigned (in the query) with this many seconds of validity.
    pub presigned_expires: Option<i64>,
}

/// The parts of a request the signature covers.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

fn auth_failure(m: impl Into<String>) -> Ec2Error {
    Ec2Error::new(axum::http::StatusCode::UNAUTHORIZED, "AuthFailure", m)
}

fn mismatch(m: impl Into<String>) -> Ec2Error {
    Ec2Error::new(axum::http::StatusCode::FORBIDDEN, "SignatureDoesNotMatch", m)
}

fn incomplete(m: impl Into<String>) -> Ec2Error {
    Ec2Error::bad("IncompleteSignature", m)
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode_str(k).decode_utf8_lossy().into_owned(), percent_decode_str(v).decode_utf8_lossy().into_owned())
        })
        .collect()
}

fn parse_credential(c: &str) -> Result<(String, String, String, String), Ec2Error> {
    let parts: Vec<&str> = c.split('/').collect();
    match parts.as_slice() {
        [akid, date, region, service, "aws4_request"] if !akid.is_empty() => {
            Ok((akid.to_string(), date.to_string(), region.to_string(), service.to_string()))
        }
        _ => Err(incomplete(format!("Credential '{c}' is malformed; expected ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request"))),
    }
}

/// Reads the signature's claim from the `Authorization` header or the query.
/// `Ok(None)`: the request carries no SigV4 signature at all.
pub fn claim(req: &Request<'_>) -> Result<Option<Claim>, Ec2Error> {
    if let Some(h) = req.headers.get(axum::http::header::AUTHORIZATION) {
        let h = h.to_str().map_err(|_| incomplete("the Authorization header is not ASCII"))?;
        let Some(rest) = h.strip_prefix(ALGORITHM) else {
            return Err(incomplete(format!("the Authorization header must use {ALGORITHM} (AWS Signature Version 4)")));
        };
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            match part.split_once('=') {
                Some(("Credential", v)) => cred = Some(v),
                Some(("SignedHeaders", v)) => signed = Some(v),
                Some(("Signature", v)) => sig = Some(v),
                _ => {}
            }
        }
        let (Some(cred), Some(signed), Some(sig)) = (cred, signed, sig) else {
            return Err(incomplete("the Authorization header needs Credential=, SignedHeaders= and Signature="));
        };
        let (access_key_id, scope_date, region, service) = parse_credential(cred)?;
        let amz_date = req
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| incomplete("a signed request needs an X-Amz-Date header"))?
            .to_string();
        return Ok(Some(Claim {
            access_key_id,
            scope_date,
            region,
            service,
            signed_headers: signed.split(';').map(str::to_string).collect(),
            signature: sig.to_string(),
            amz_date,
            presigned_expires: None,
        }));
    }
    let q = query_pairs(req.query);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(alg) = get("X-Amz-Algorithm") else { return Ok(None) };
    if alg != ALGORITHM {
        return Err(incomplete(format!("X-Amz-Algorithm must be {ALGORITHM}")));
    }
    let need = |k: &str| get(k).ok_or_else(|| incomplete(format!("a presigned request needs {k}")));
    let (access_key_id, scope_date, region, service) = parse_credential(need("X-Amz-Credential")?)?;
    let expires: i64 = need("X-Amz-Expires")?.parse().map_err(|_| incomplete("X-Amz-Expires must be a number of seconds"))?;
    if !(1..=MAX_EXPIRES_SECS).contains(&expires) {
        return Err(Ec2Error::bad("AuthFailure", format!("X-Amz-Expires must be between 1 and {MAX_EXPIRES_SECS} seconds")));
    }
    Ok(Some(Claim {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers: need("X-Amz-SignedHeaders")?.split(';').map(str::to_string).collect(),
        signature: need("X-Amz-Signature")?.to_string(),
        amz_date: need("X-Amz-Date")?.to_string(),
        presigned_expires: Some(expires),
    }))
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, &fmt).ok().map(|t| t.assume_utc())
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// The signing key for one day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical request, as AWS defines it.
pub fn canonical_request(req: &Request<'_>, signed_headers: &[String], payload_hash: &str, presigned: bool) -> String {
    let path = if req.path.is_empty() { "/" } else { req.path };
    let uri = utf8_percent_encode(path, AWS_ENCODE_PATH).to_string();
    let mut pairs: Vec<(String, String)> = query_pairs(req.query)
        .into_iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| (utf8_percent_encode(&k, AWS_ENCODE).to_string(), utf8_percent_encode(&v, AWS_ENCODE).to_string()))
        .collect();
    pairs.sort();
    let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = req.headers.get_all(name.as_str()).iter().map(|v| collapse(&String::from_utf8_lossy(v.as_bytes()))).collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    format!("{}\n{uri}\n{query}\n{headers}\n{}\n{payload_hash}", req.method, signed_headers.join(";"))
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical_request.as_bytes())))
}

/// The signature of `req` under `secret` for `claim`'s scope.
pub fn signature(req: &Request<'_>, claim: &Claim, secret: &str) -> String {
    let payload = match req.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) {
        Some(h) if claim.presigned_expires.is_none() => h.to_string(),
        _ => hex::encode(Sha256::digest(req.body)),
    };
    signature_with_payload(req, claim, secret, &payload)
}

fn signature_with_payload(req: &Request<'_>, claim: &Claim, secret: &str, payload: &str) -> String {
    let presigned = claim.presigned_expires.is_some();
    let creq = canonical_request(req, &claim.signed_headers, payload, presigned);
    let scope = format!("{}/{}/{}/aws4_request", claim.scope_date, claim.region, claim.service);
    let sts = string_to_sign(&claim.amz_date, &scope, &creq);
    hex::encode(hmac(&signing_key(secret, &claim.scope_date, &claim.region, &claim.service), sts.as_bytes()))
}

/// Checks the claim's date, scope and signature against `secret` at `now`.
pub fn verify(req: &Request<'_>, claim: &Claim, secret: &str, now: OffsetDateTime) -> Result<(), Ec2Error> {
    let t = parse_amz_date(&claim.amz_date)
        .ok_or_else(|| incomplete(format!("X-Amz-Date '{}' is not in the form YYYYMMDDTHHMMSSZ", claim.amz_date)))?;
    let age = (now - t).whole_seconds();
    let expired = match claim.presigned_expires {
        None => age.abs() > MAX_SKEW_SECS,
        Some(exp) => age > exp || -age > MAX_SKEW_SECS,
    };
    if expired {
        return Err(Ec2Error::bad(
            "RequestExpired",
            format!(
                "Request has expired: it is dated {} and the server's time is {}; requests must be within {} minutes of the server's clock",
                claim.amz_date,
                now.format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z")).unwrap_or_default(),
                MAX_SKEW_SECS / 60
            ),
        ));
    }
    if claim.scope_date != claim.amz_date[..8] {
        return Err(mismatch(format!(
            "Date in Credential scope does not match YYYYMMDD from X-Amz-Date: {} vs {}",
            claim.scope_date,
            &claim.amz_date[..8]
        )));
    }
    if claim.service != SERVICE {
        return Err(mismatch(format!("Credential should be scoped to correct service: '{SERVICE}', not '{}'", claim.service)));
    }
    if !claim.signed_headers.iter().any(|h| h == "host") {
        return Err(mismatch("the signed headers must include host"));
    }
    if claim.presigned_expires.is_none()
        && let Some(h) = req.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok())
        && h != hex::encode(Sha256::digest(req.body)) {
            return Err(mismatch("X-Amz-Content-SHA256 does not match the body"));
        }
    let want = signature(req, claim, secret);
    // A presigned request (whose body is empty) may sign the empty payload's
    // hash, as botocore's SigV4QueryAuth does, or `UNSIGNED-PAYLOAD`, as
    // S3-style presigners do.
    let matches = constant_time_eq(want.as_bytes(), claim.signature.as_bytes())
        || (claim.presigned_expires.is_some()
            && constant_time_eq(signature_with_payload(req, claim, secret, "UNSIGNED-PAYLOAD").as_bytes(), claim.signature.as_bytes()));
    if !matches {
        return Err(mismatch(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a request that names no signature.
pub fn missing() -> Ec2Error {
    auth_failure("AWS was not able to validate the provided access credentials: the request is not signed with Signature Version 4")
}

/// Refuses an access key id the server does not know.
pub fn unknown_key(akid: &str) -> Ec2Error {
    auth_failure(format!("AWS was not able to validate the provided access credentials: access key {akid} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// AWS's own worked example (IAM ListUsers, 2015-08-30) from the SigV4
    /// documentation, with its published signature.
    #[test]
    fn matches_awss_published_example() {
        let h = headers(&[
            ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("host", "iam.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ]);
        let req = Request { method: "GET", path: "/", query: "Action=ListUsers&Version=2010-05-08", headers: &h, body: b"" };
        let claim = Claim {
            access_key_id: "AKIDEXAMPLE".into(),
            scope_date: "20150830".into(),
            region: "us-east-1".into(),
            service: "iam".into(),
            signed_headers: vec!["content-type".into(), "host".into(), "x-amz-date".into()],
            signature: String::new(),
            amz_date: "20150830T123600Z".into(),
            presigned_expires: None,
        };
        assert_eq!(
            signature(&req, &claim, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    fn signed(body: &[u8], secret: &str, date: &str) -> (HeaderMap, Claim) {
        let mut h = headers(&[("host", "127.0.0.1:7300"), ("x-amz-date", date)]);
        let mut claim = Claim {
            access_key_id: "AKIAEXAMPLE".into(),
            scope_date: date[..8].into(),
            region: "us-east-1".into(),
            service: "ec2".into(),
            signed_headers: vec!["host".into(), "x-amz-date".into()],
            signature: String::new(),
            amz_date: date.into(),
            presigned_expires: None,
        };
        let req = Request { method: "POST", path: "/ec2/", query: "", headers: &h, body };
        claim.signature = signature(&req, &claim, secret);
        h.insert("authorization", HeaderValue::from_static("x"));
        (h, claim)
    }

    #[test]
    fn verifies_its_own_signature_and_refuses_changes() {
        let now = OffsetDateTime::from_unix_timestamp(1_764_590_400).unwrap(); // 2025-12-01T12:00:00Z
        let date = "20251201T120100Z";
        let body = b"Action=DescribeVpcs&Version=2016-11-15";
        let (h, claim) = signed(body, "s3cret", date);
        let req = Request { method: "POST", path: "/ec2/", query: "", headers: &h, body };
        verify(&req, &claim, "s3cret", now).unwrap();
        assert_eq!(verify(&req, &claim, "other", now).unwrap_err().code, "SignatureDoesNotMatch");
        let tampered = Request { body: b"Action=DeleteVpc&Version=2016-11-15", ..req };
        assert_eq!(verify(&tampered, &claim, "s3cret", now).unwrap_err().code, "SignatureDoesNotMatch");
        let later = now + time::Duration::minutes(7);
        let req = Request { method: "POST", path: "/ec2/", query: "", headers: &h, body };
        assert_eq!(verify(&req, &claim, "s3cret", later).unwrap_err().code, "RequestExpired");
        let earlier = now - time::Duration::minutes(6);
        assert_eq!(verify(&req, &claim, "s3cret", earlier).unwrap_err().code, "RequestExpired");
    }

    #[test]
    fn parses_the_authorization_header() {
        let h = headers(&[
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAX/20251201/eu-west-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc"),
            ("x-amz-date", "20251201T120000Z"),
        ]);
        let req = Request { method: "POST", path: "/", query: "", headers: &h, body: b"" };
        let c = claim(&req).unwrap().unwrap();
        assert_eq!((c.access_key_id.as_str(), c.region.as_str(), c.signature.as_str()), ("AKIAX", "eu-west-1", "abc"));
        let none = HeaderMap::new();
        assert!(claim(&Request { method: "GET", path: "/", query: "Action=X", headers: &none, body: b"" }).unwrap().is_none());
        let bearer = headers(&[("authorization", "Bearer t")]);
        assert_eq!(claim(&Request { method: "GET", path: "/", query: "", headers: &bearer, body: b"" }).unwrap_err().code, "IncompleteSignature");
    }
}
