//! Per-tenant quotas, enforced inside the create's own transaction.
//!
//! Counts within a VPC (subnets, groups, route tables, peerings) are taken
//! from the cache while the create rewrites that VPC with a compare (as
//! every child create does), so two creates in one VPC cannot both pass on
//! the same count. Counts per tenant (VPCs, ENIs, instances) would make
//! every create of a tenant rewrite one key; instead each counted resource
//! holds one of the quota's numbered slots, a key created with "must not
//! exist" (as addresses are), and a create needs a free slot below the
//! quota. Concurrent creates on one server pick different slots from an
//! in-process reservation set, so they do not conflict; servers sharing a
//! store start their search at random points; the store's compare on the
//! slot key is what makes the count exact.

use std::collections::HashSet;

use evnet_model::{quota_exceeded, Quotas};
use evnet_store::Txn;

use crate::cache::Snapshot;
use crate::common::{cmp, del, put_raw};
use crate::error::ApiResult;
use crate::keys;
use crate::state::AppState;

/// The tenant's quotas: what the admin set, defaults elsewhere.
pub fn of(snap: &Snapshot, tenant: &str) -> Quotas {
    snap.quotas.get(tenant).copied().unwrap_or_default()
}

fn value(snap: &Snapshot, tenant: &str, quota: &str) -> u32 {
    of(snap, tenant).get(quota).expect("a quota named in QUOTAS")
}

/// Refuses when `count` (what exists now) has reached the quota; for counts
/// whose parent key the caller's transaction compares.
pub fn check(snap: &Snapshot, tenant: &str, quota: &str, count: usize, scope: &str) -> ApiResult<()> {
    let q = value(snap, tenant, quota);
    if count as u64 >= u64::from(q) {
        return Err(quota_exceeded(quota, q, scope).into());
    }
    Ok(())
}

/// Refuses `n` items (rules of one group) over the quota.
pub fn check_size(snap: &Snapshot, tenant: &str, quota: &str, n: usize, scope: &str) -> ApiResult<()> {
    let q = value(snap, tenant, quota);
    if n as u64 > u64::from(q) {
        return Err(quota_exceeded(quota, q, scope).into());
    }
    Ok(())
}

/// A slot of a per-tenant quota held by one in-flight create; released
/// when dropped (the store keeps the slot key if the create committed).
pub struct Slot<'a> {
    st: &'a AppState,
    tenant: String,
    quota: &'static str,
    held: Option<u32>,
}

impl<'a> Slot<'a> {
    pub fn new(st: &'a AppState, tenant: &str, quota: &'static str) -> Self {
        Self { st, tenant: tenant.to_string(), quota, held: None }
    }

    /// Picks a free slot below the quota for resource `id` and adds its key
    /// to `txn`; `count` is how many the tenant has now (resources made
    /// before slots existed hold none but count all the same).
    pub fn claim(&mut self, snap: &Snapshot, count: usize, id: &str, txn: &mut Txn) -> ApiResult<()> {
        self.release();
        let q = value(snap, &self.tenant, self.quota);
        let scope = format!("tenant {}", self.tenant);
        if count as u64 >= u64::from(q) {
            return Err(quota_exceeded(self.quota, q, &scope).into());
        }
        let key = (self.tenant.clone(), self.quota.to_string());
        let taken = snap.quota_slots.get(&key);
        let mut all = self.st.slot_reservations.lock().unwrap_or_else(|e| e.into_inner());
        let reserved: &mut HashSet<u32> = all.entry(key).or_default();
        // Slots are mostly dense from 0: look above the number taken first
        // (past the few that in-flight creates hold), then below it. The
        // look starts at a random point of the free range (at most 64 in),
        // so that servers sharing one store, whose reservation sets are
        // their own, seldom pick the same slot.
        let used = taken.map_or(0, |t| t.len()).min(q as usize) as u32;
        let is_free = |n: &u32| !reserved.contains(n) && !taken.is_some_and(|t| t.contains_key(n));
        let start = used + rand::random_range(0..(q - used).clamp(1, 64));
        let free = (start..q).find(is_free).or_else(|| (used..start).find(is_free)).or_else(|| (0..used).find(is_free));
        let Some(n) = free else {
            return Err(quota_exceeded(self.quota, q, &scope).into());
        };
        reserved.insert(n);
        self.held = Some(n);
        let k = keys::slot(&self.tenant, self.quota, n);
        txn.compares.push(cmp(k.clone(), 0));
        txn.ops.push(put_raw(k, id));
        Ok(())
    }

    fn release(&mut self) {
        let Some(n) = self.held.take() else { return };
        let mut all = self.st.slot_reservations.lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.tenant.clone(), self.quota.to_string());
        if let Some(set) = all.get_mut(&key) {
            set.remove(&n);
            if set.is_empty() {
                all.remove(&key);
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Frees the slot of resource `id` (if it holds one) in its delete's
/// transaction.
pub fn free(snap: &Snapshot, id: &str, txn: &mut Txn) {
    if let Some(k) = snap.slot_of.get(id) {
        txn.ops.push(del(k.clone()));
    }
}
