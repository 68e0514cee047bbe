//! [`EtcdStore`]: the [`Store`] trait on an etcd cluster (v3 API, through
//! the `etcd-client` crate).
//!
//! Every key lives under a prefix of the store's own (default `/evnet`), so
//! one etcd cluster can hold other data too. etcd keeps the revision, the
//! create/mod revisions and the versions; this backend only translates:
//!
//! - **Revisions.** A fresh etcd cluster is at revision 1, so the store's
//!   revision is etcd's minus one (an empty cluster answers 0, as every
//!   backend does). The mapping is a constant, so every server on one
//!   cluster sees the same revisions, and agents' generations mean the same
//!   thing on each of them. Writes by others to the same cluster (outside
//!   the prefix) advance the revision too: revisions are then increasing but
//!   not consecutive.
//! - **Transactions** are one etcd `Txn`: compares on `mod_revision`
//!   (0 = absent, as in etcd), the ops on success, and on failure a read of
//!   each compared key in the same transaction, from which the index of the
//!   first failing compare is found. etcd refuses a key twice in one
//!   transaction, so ops on one key collapse to the last (the key's
//!   `version` then counts one write, not two). A write is acknowledged only
//!   once etcd has committed it (a quorum has it in its log).
//! - **Watches** are etcd watches from the mapped revision; the events of a
//!   response are grouped by revision into [`crate::WatchBatch`]es. A start
//!   revision etcd has compacted answers [`StoreError::Compacted`]; a
//!   watcher that leaves [`EtcdOptions::watch_capacity`] batches unread is
//!   dropped with [`StoreError::Lagged`]; a broken connection ends the watch
//!   with [`StoreError::Unavailable`]. Readers list again in every case.
//! - **Unavailability.** Every call is bounded by
//!   [`EtcdOptions::request_timeout`]; a call that fails or times out
//!   answers [`StoreError::Unavailable`] (a write that timed out may or may
//!   not have been applied, as the trait says of abandoned transactions).
//! - **Compaction** maps `compact(r)` to etcd's compaction at the revision
//!   after `r`. etcd cannot compact past its current revision, so compacting
//!   at the current revision keeps that one revision's history.
//!
//! [`EtcdStore::lease`] and friends give the server what leadership and
//! registration need: leases with a TTL, keys bound to them, and a
//! create-if-absent on a leased key.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as ECompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    TxnOp as ETxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    Compare, EventKind, KeyValue, RangeResponse, Revision, Store, StoreError, Txn, TxnOp,
    TxnResponse, WatchBatch, WatchEvent, WatchStream,
};

/// The revision of an empty etcd cluster.
const ETCD_ORIGIN: i64 = 1;

/// TLS material for the connection to etcd (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed the etcd members' certificates.
    pub ca_pem: Vec<u8>,
    /// A client certificate and key, when etcd asks for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://host:port` (or `https://` with [`EtcdOptions::tls`]) of the
    /// members; the client spreads calls over them and fails over.
    pub endpoints: Vec<String>,
    /// Every key is stored under this prefix.
    pub prefix: String,
    /// The longest any one call may take before it answers
    /// [`StoreError::Unavailable`]. Default 5 s.
    pub request_timeout: Duration,
    /// Unread batches a watcher may hold before it is dropped with
    /// [`StoreError::Lagged`]. Default 1,024.
    pub watch_capacity: usize,
    pub user: Option<(String, String)>,
    pub tls: Option<EtcdTls>,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: "/evnet".into(),
            request_timeout: Duration::from_secs(5),
            watch_capacity: 1024,
            user: None,
            tls: None,
        }
    }
}

/// A store on an etcd cluster. Cheap to clone (clones share connections).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    options: std::sync::Arc<EtcdOptions>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.options.endpoints)
            .field("prefix", &self.options.prefix)
            .finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd {what} failed: {e}"))
}

fn to_store_rev(etcd: i64) -> Revision {
    (etcd - ETCD_ORIGIN).max(0) as Revision
}

/// A store revision as etcd's; 0 (absent / before anything) stays 0.
fn to_etcd_rev(rev: Revision) -> i64 {
    if rev == 0 { 0 } else { rev as i64 + ETCD_ORIGIN }
}

impl EtcdStore {
    /// Connects to etcd. Fails when no endpoint answers within the request
    /// timeout.
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints given".into()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.request_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &options.tls {
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(tls.ca_pem.clone()));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert.clone(), key.clone()));
            }
            connect = connect.with_tls(t);
        }
        let client = tokio::time::timeout(
            options.request_timeout,
            Client::connect(options.endpoints.clone(), Some(connect)),
        )
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "no etcd endpoint of {:?} answered within {:?}",
                options.endpoints, options.request_timeout
            ))
        })?
        .map_err(|e| unavailable("connect", e))?;
        let store = EtcdStore { client, options: std::sync::Arc::new(options) };
        // Prove the cluster answers (the connection itself is lazy).
        store.current_revision().await?;
        Ok(store)
    }

    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.options.prefix)
    }

    fn strip<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(self.options.prefix.as_str())
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        Some(KeyValue {
            key: self.strip(kv.key())?.to_owned(),
            value: kv.value().to_vec(),
            create_revision: to_store_rev(kv.create_revision()),
            mod_revision: to_store_rev(kv.mod_revision()),
            version: kv.version().max(0) as u64,
        })
    }

    /// Runs the call `make` builds under the request timeout; errors and
    /// timeouts become [`StoreError::Unavailable`]. A call that could not
    /// even connect (a dead member the client has not left yet) never
    /// reached etcd, so it is made again, through the next member, until
    /// the timeout.
    async fn bounded<T, F, Fut>(&self, what: &str, mut make: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        loop {
            match tokio::time::timeout_at(deadline, make()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if never_sent(&e) && tokio::time::Instant::now() + Duration::from_millis(20) < deadline => {
                    tracing::debug!(error = %e, what, "etcd call did not connect; trying again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(e)) => return Err(unavailable(what, e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd {what} did not answer within {:?}",
                        self.options.request_timeout
                    )));
                }
            }
        }
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1); returns its id.
    pub async fn lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self.bounded("lease grant", || { let mut c = self.client.lease_client(); async move { c.grant(secs, None).await } }).await?;
        Ok(resp.id())
    }

    /// Renews a lease once; `Ok(false)` when it has expired already.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        let ttl = self
            .bounded("lease keep-alive", || { let mut c = self.client.lease_client(); async move {
                let (mut keeper, mut stream) = c.keep_alive(lease).await?;
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) => Ok(resp.ttl()),
                    None => Ok(0),
                }
            }})
            .await?;
        Ok(ttl > 0)
    }

    /// Revokes a lease (its keys go at once).
    pub async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.bounded("lease revoke", || { let mut c = self.client.lease_client(); async move { c.revoke(lease).await } }).await.map(|_| ())
    }

    /// Writes `key` bound to `lease` (it disappears when the lease ends).
    pub async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<Revision, StoreError> {
        let k = self.key(key);
        let resp = self
            .bounded("put", || {
                let mut c = self.client.kv_client();
                let (k, value) = (k.clone(), value.clone());
                async move { c.put(k, value, Some(PutOptions::new().with_lease(lease))).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| to_store_rev(h.revision())))
    }

    /// Creates `key` bound to `lease` if it does not exist. Answers whether
    /// it was created and the value it holds now.
    pub async fn create_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(bool, Option<Vec<u8>>), StoreError> {
        let k = self.key(key);
        let txn = etcd_client::Txn::new()
            .when(vec![ECompare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then(vec![ETxnOp::put(k.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))])
            .or_else(vec![ETxnOp::get(k, None)]);
        let resp = self.txn_call(txn).await?;
        if resp.succeeded() {
            return Ok((true, Some(value)));
        }
        let now = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        Ok((false, now))
    }

    /// Deletes `key` if it holds `value` (a leader stepping down).
    pub async fn delete_if(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        let k = self.key(key);
        let txn = etcd_client::Txn::new()
            .when(vec![ECompare::value(k.clone(), CompareOp::Equal, value)])
            .and_then(vec![ETxnOp::delete(k, None)]);
        Ok(self.txn_call(txn).await?.succeeded())
    }

    /// The members' client URLs and which member is the raft leader, as
    /// the cluster reports them.
    pub async fn members(&self) -> Result<Vec<EtcdMemberInfo>, StoreError> {
        let list = self.bounded("member list", || { let mut c = self.client.cluster_client(); async move { c.member_list().await } }).await?;
        let leader = self.bounded("status", || { let mut m = self.client.maintenance_client(); async move { m.status().await } }).await?.leader();
        Ok(list
            .members()
            .iter()
            .map(|mem| EtcdMemberInfo {
                name: mem.name().to_owned(),
                client_urls: mem.client_urls().to_vec(),
                leader: mem.id() == leader,
            })
            .collect())
    }

    /// Whether etcd refuses a read at `rev` (etcd revision) as compacted.
    async fn is_compacted(&self, etcd_rev: i64) -> Result<bool, StoreError> {
        let mut c = self.client.kv_client();
        let opts = GetOptions::new().with_revision(etcd_rev).with_keys_only().with_limit(1);
        match tokio::time::timeout(self.options.request_timeout, c.get(self.key(""), Some(opts))).await {
            Ok(Ok(_)) => Ok(false),
            Ok(Err(e)) if e.to_string().contains("compacted") => Ok(true),
            // A revision past the current one is not compacted.
            Ok(Err(e)) if e.to_string().contains("future revision") => Ok(false),
            Ok(Err(e)) => Err(unavailable("range", e)),
            Err(_) => Err(StoreError::Unavailable("etcd range timed out".into())),
        }
    }
}

/// Whether a failed call never reached etcd (the connection to the member
/// it was sent to could not be made), so making it again cannot apply it
/// twice.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        // tonic reports a refused or failed connect as `Unavailable` with
        // this message; nothing was sent.
        etcd_client::Error::GRpcStatus(status) => {
            let m = status.message();
            m.contains("connect error") || m.contains("Connection refused")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

impl EtcdStore {
    async fn txn_call(&self, txn: etcd_client::Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.bounded("txn", || {
            let mut c = self.client.kv_client();
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }
}

/// One etcd member as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMemberInfo {
    pub name: String,
    pub client_urls: Vec<String>,
    pub leader: bool,
}

/// Ops on one key collapse to the last one (etcd refuses duplicates).
fn collapse(ops: Vec<TxnOp>) -> Vec<TxnOp> {
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let key = match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key.clone(),
        };
        last.insert(key, i);
    }
    let keep: std::collections::BTreeSet<usize> = last.into_values().collect();
    ops.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, op)| op).collect()
}

/// Keys per page of a range read.
const RANGE_PAGE: i64 = 500;

/// The largest answer the client accepts from etcd (a page of large values).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The first key after every key starting with `prefix` (etcd's range end
/// for a prefix): its last byte below 0xff incremented, the rest dropped.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(b) = end.pop() {
        if b < 0xff {
            end.push(b + 1);
            return end;
        }
    }
    // Only 0xff bytes (or nothing): every key from the prefix on.
    vec![0]
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let k = self.key(key);
        let resp = self.bounded("get", || { let mut c = self.client.kv_client(); let k = k.clone(); async move { c.get(k, None).await } }).await?;
        Ok(resp.kvs().first().and_then(|kv| self.kv(kv)))
    }

    /// Read in pages of [`RANGE_PAGE`] keys, every page at the first one's
    /// revision (one consistent snapshot): a whole store in one answer
    /// outgrows a gRPC message (4 MiB by default) at a few thousand ENIs.
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let start = self.key(prefix).into_bytes();
        let end = prefix_end(&start);
        let mut from = start;
        let mut revision: Option<i64> = None;
        let mut kvs: Vec<KeyValue> = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(RANGE_PAGE);
            if let Some(r) = revision {
                opts = opts.with_revision(r);
            }
            let resp = self
                .bounded("range", || {
                    let mut c = self.client.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
                    let (k, o) = (from.clone(), opts.clone());
                    async move { c.get(k, Some(o)).await }
                })
                .await?;
            let rev = *revision.get_or_insert(resp.header().map_or(0, |h| h.revision()));
            kvs.extend(resp.kvs().iter().filter_map(|kv| self.kv(kv)));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    kvs.sort_by(|a, b| a.key.cmp(&b.key));
                    return Ok(RangeResponse { kvs, revision: to_store_rev(rev) });
                }
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let compares: Vec<ECompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => {
                    ECompare::mod_revision(self.key(key), CompareOp::Equal, to_etcd_rev(*revision))
                }
            })
            .collect();
        let ops: Vec<ETxnOp> = collapse(txn.ops)
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => ETxnOp::put(self.key(&key), value, None),
                TxnOp::Delete { key } => ETxnOp::delete(self.key(&key), None),
            })
            .collect();
        let reads: Vec<ETxnOp> = txn
            .compares
            .iter()
            .map(|Compare::ModRevision { key, .. }| ETxnOp::get(self.key(key), Some(GetOptions::new().with_keys_only())))
            .collect();
        let etxn = etcd_client::Txn::new().when(compares).and_then(ops).or_else(reads);
        let resp = self.txn_call(etxn).await?;
        let revision = resp.header().map_or(0, |h| to_store_rev(h.revision()));
        if resp.succeeded() {
            return Ok(TxnResponse { succeeded: true, revision, failed_compare: None });
        }
        let answers = resp.op_responses();
        let failed = txn.compares.iter().zip(answers.iter()).position(|(Compare::ModRevision { revision: want, .. }, got)| {
            let have = match got {
                TxnOpResponse::Get(g) => g.kvs().first().map_or(0, |kv| kv.mod_revision()),
                _ => -1,
            };
            have != to_etcd_rev(*want)
        });
        Ok(TxnResponse { succeeded: false, revision, failed_compare: failed.or(Some(0)) })
    }

    async fn watch(&self, prefix: &str, start_revision: Revision) -> Result<WatchStream, StoreError> {
        let start = to_etcd_rev(start_revision.max(1));
        let opts = WatchOptions::new().with_prefix().with_start_revision(start);
        let k = self.key(prefix);
        let (mut stream, created) = self
            .bounded("watch", || {
                let mut wc = self.client.watch_client();
                let (k, opts) = (k.clone(), opts.clone());
                async move {
                    let mut stream = wc.watch(k, Some(opts)).await?;
                    // The first answer confirms the watch was created.
                    let created = stream.message().await?;
                    Ok((stream, created))
                }
            })
            .await?;
        let created = created.ok_or_else(|| StoreError::Unavailable("etcd ended the watch at once".into()))?;
        if created.canceled() {
            return Err(self.watch_end(&created, start_revision));
        }
        let at = created.header().map_or(i64::MAX, |h| h.revision());
        if start <= at && self.is_compacted(start).await? {
            // etcd tells a watcher how far it compacted shortly after the
            // watch is created; wait for that answer.
            let deadline = tokio::time::Instant::now() + self.options.request_timeout;
            loop {
                let msg = tokio::time::timeout_at(deadline, stream.message())
                    .await
                    .map_err(|_| StoreError::Unavailable("etcd did not report the compaction".into()))?
                    .map_err(|e| unavailable("watch", e))?;
                match msg {
                    Some(m) if m.compact_revision() > 0 => return Err(self.watch_end(&m, start_revision)),
                    Some(m) if m.canceled() => return Err(self.watch_end(&m, start_revision)),
                    Some(_) => continue,
                    None => return Err(StoreError::Unavailable("etcd ended the watch".into())),
                }
            }
        }
        let cap = self.options.watch_capacity.max(1);
        let (tx, rx) = mpsc::channel(cap + 1);
        let me = self.clone();
        tokio::spawn(async move {
            // Dropping the stream (on return) ends the etcd watch.
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        let _ = tx.try_send(Err(StoreError::Unavailable("etcd ended the watch".into())));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.try_send(Err(unavailable("watch", e)));
                        return;
                    }
                };
                if msg.canceled() || msg.compact_revision() > 0 {
                    let _ = tx.try_send(Err(me.watch_end(&msg, start_revision)));
                    return;
                }
                for batch in me.batches(&msg) {
                    // One slot stays free for the error that ends the watch.
                    if tx.capacity() <= 1 {
                        let _ = tx.try_send(Err(StoreError::Lagged));
                        return;
                    }
                    if tx.try_send(Ok(batch)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let k = self.key("");
        let resp = self
            .bounded("range", || {
                let mut c = self.client.kv_client();
                let k = k.clone();
                async move { c.get(k, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| to_store_rev(h.revision())))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = to_etcd_rev(self.current_revision().await?);
        let target = (revision as i64 + ETCD_ORIGIN + 1).min(current.max(ETCD_ORIGIN));
        let mut c = self.client.kv_client();
        match tokio::time::timeout(self.options.request_timeout, c.compact(target, None)).await {
            Ok(Ok(_)) => Ok(()),
            // Compacting to where etcd already compacted is harmless.
            Ok(Err(e)) if e.to_string().contains("compacted") => Ok(()),
            Ok(Err(e)) => Err(unavailable("compact", e)),
            Err(_) => Err(StoreError::Unavailable("etcd compact timed out".into())),
        }
    }
}

impl EtcdStore {
    /// The error that ends a watch etcd canceled.
    fn watch_end(&self, msg: &etcd_client::WatchResponse, requested: Revision) -> StoreError {
        if msg.compact_revision() > 0 {
            // etcd keeps history from `compact_revision` on: the newest
            // revision gone is the one before it.
            StoreError::Compacted {
                requested,
                compacted: to_store_rev(msg.compact_revision() - 1),
            }
        } else {
            StoreError::Unavailable(format!("etcd canceled the watch: {}", msg.cancel_reason()))
        }
    }

    /// A response's events, one batch per revision.
    fn batches(&self, msg: &etcd_client::WatchResponse) -> Vec<WatchBatch> {
        let mut out: Vec<WatchBatch> = Vec::new();
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(key) = self.strip(kv.key()) else { continue };
            let revision = to_store_rev(kv.mod_revision());
            let event = match ev.event_type() {
                EventType::Put => WatchEvent {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.to_owned(),
                        value: kv.value().to_vec(),
                        create_revision: to_store_rev(kv.create_revision()),
                        mod_revision: revision,
                        version: kv.version().max(0) as u64,
                    },
                },
                EventType::Delete => WatchEvent {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.to_owned(),
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: revision,
                        version: 0,
                    },
                },
            };
            match out.last_mut() {
                Some(b) if b.revision == revision => b.events.push(event),
                _ => out.push(WatchBatch { revision, events: vec![event] }),
            }
        }
        out
    }
}
