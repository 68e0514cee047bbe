//! The audit log: one JSON line per change someone asked for (creates,
//! updates, deletes and actions on tenants, tokens, quotas, hosts and every
//! resource) with when, who (`admin`, `tenant:ID`, `host:ID`), from which
//! address, what (method, route template, resource id) and how it ended
//! (status). Refused requests are written too. Tokens never are: callers
//! are named by their tenant or host id, bodies are not written.
//!
//! The file (`DATA_DIR/audit.log`, mode 0600) is only appended to, one
//! `write` per line, flushed before the response leaves. Each server
//! replica writes its own. Heartbeats, bandwidth reports and traces are
//! not changes and are not written.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use evnet_model::{AuditPage, AuditRecord};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Routes whose POSTs report rather than change.
const NOT_CHANGES: &[&str] = &["/v1/hosts/{id}/heartbeat", "/v1/hosts/{id}/bandwidth", "/v1/trace"];

/// Whether a request is one the log records.
pub fn records(method: &axum::http::Method, route: Option<&str>) -> bool {
    use axum::http::Method;
    let change = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method);
    matches!(route, Some(r) if change && !NOT_CHANGES.contains(&r))
}

/// The `{id}` segment of `path` under route template `route`.
pub fn path_id(route: &str, path: &str) -> Option<String> {
    let i = route.split('/').position(|s| s == "{id}")?;
    path.split('/').nth(i).map(str::to_string)
}

pub struct AuditLog {
    path: PathBuf,
    /// The open file and the last sequence number written.
    file: Mutex<(File, u64)>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish()
    }
}

/// A record before it is numbered.
pub struct Entry {
    pub caller: String,
    pub source: String,
    pub method: String,
    pub route: String,
    pub resource_id: Option<String>,
    pub status: u16,
}

pub fn now() -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::now_utc().format(&fmt).unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

impl AuditLog {
    /// Opens (or creates) the log for appending, mode 0600 also if it
    /// existed with a wider one; numbering continues after its last line.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let last = BufReader::new(File::open(path)?)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<AuditRecord>(&l).ok())
            .map(|r| r.seq)
            .max()
            .unwrap_or(0);
        Ok(AuditLog { path: path.to_path_buf(), file: Mutex::new((file, last)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record.
    pub fn write(&self, e: Entry) {
        let mut g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let rec = AuditRecord {
            seq: g.1 + 1,
            time: now(),
            caller: e.caller,
            source: e.source,
            method: e.method,
            route: e.route,
            resource_id: e.resource_id,
            status: e.status,
        };
        let mut line = serde_json::to_vec(&rec).expect("records serialize");
        line.push(b'\n');
        match g.0.write_all(&line).and_then(|()| g.0.flush()) {
            Ok(()) => g.1 = rec.seq,
            Err(err) => tracing::error!(error = %err, path = %self.path.display(), "cannot write the audit log"),
        }
    }

    /// Records at or after `since` (RFC 3339) and after sequence number
    /// `after`, oldest first, at most `limit`.
    pub fn read(&self, since: Option<OffsetDateTime>, after: u64, limit: usize) -> std::io::Result<AuditPage> {
        // Hold the lock so no half-written line is read.
        let _g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut items = vec![];
        let mut more = false;
        for line in BufReader::new(File::open(&self.path)?).lines() {
            let Ok(r) = serde_json::from_str::<AuditRecord>(&line?) else { continue };
            if r.seq <= after {
                continue;
            }
            if let Some(s) = since
                && OffsetDateTime::parse(&r.time, &Rfc3339).is_ok_and(|t| t < s)
            {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(r);
        }
        let next_page_token = if more { items.last().map(|r| r.seq.to_string()) } else { None };
        Ok(AuditPage { items, next_page_token })
    }
}
