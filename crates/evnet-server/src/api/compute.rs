//! Instances, ENIs (create, attach, detach, move, bandwidth) and bandwidth
//! pools — with the scheduler's placement and admission.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use evnet_model::placement::{choose_host, HostLoad};
use evnet_model::validate::{
    check_tags, mac_for_eni, MAX_DEVICE_INDEX, MAX_ENIS_PER_INSTANCE, MAX_SECONDARY_IPS, MAX_SECURITY_GROUPS_PER_ENI,
};
use evnet_model::*;
use evnet_store::Txn;
use serde::Deserialize;

use crate::auth::Caller;
use crate::cache::{HostLedger, Snapshot};
use crate::common::*;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Q};
use crate::keys;
use crate::quota;
use crate::state::AppState;

pub fn host_load(snap: &Snapshot, h: &Host) -> HostLoad {
    HostLoad {
        host_id: h.id.clone(),
        host_name: h.name.clone(),
        ready: h.status == HostStatus::Ready,
        nic_mbps: h.nic_mbps,
        guaranteed_mbps: snap.host_guaranteed(&h.id).0,
        instance_count: snap.instance_count(&h.id),
    }
}

/// Adds a change of `delta_mbps` guaranteed on `host_id` to a transaction:
/// admission is checked against the cache, and the host's ledger key is
/// compared and rewritten so concurrent changes on one host serialize.
fn charge_host(snap: &Snapshot, st: &AppState, host_id: &str, delta_mbps: i64, txn: &mut Txn) -> ApiResult<()> {
    let host = snap.hosts.get(host_id).ok_or_else(|| ApiError::from(ModelError::not_found("host", host_id)))?;
    let (used, ledger_rev) = snap.host_guaranteed(host_id);
    if delta_mbps > 0 {
        host_load(snap, &host.value).admit(delta_mbps as u64, st.settings.headroom_percent)?;
    }
    let new_sum = (used as i64 + delta_mbps).max(0) as u64;
    txn.compares.push(cmp(keys::hostbw(host_id), ledger_rev));
    txn.ops.push(put(keys::hostbw(host_id), &HostLedger { guaranteed_mbps: new_sum }));
    Ok(())
}

// --- Instances --------------------------------------------------------------

pub async fn create_instance(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateInstance>,
) -> ApiResult<(StatusCode, Json<Instance>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_tags(&req.tags)?;
    let idem = Idempotency::new(&tenant, Kind::Instance, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::Instance);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    if req.eni_ids.len() > MAX_ENIS_PER_INSTANCE {
        return Err(ModelError::invalid("invalid_request", format!("an instance has at most {MAX_ENIS_PER_INSTANCE} ENIs")).into());
    }
    let mut seen = HashSet::new();
    if let Some(dup) = req.eni_ids.iter().find(|e| !seen.insert(*e)) {
        return Err(ModelError::invalid("invalid_request", format!("ENI {dup} is listed twice")).into());
    }
    let netns_given = match (req.kind, &req.netns) {
        (InstanceKind::Netns, None) => None,
        (InstanceKind::Netns, Some(_)) => {
            return Err(ModelError::invalid("invalid_netns", "a `netns` instance's namespace is evnet's to name; give `netns` only with kind `container`").into());
        }
        (InstanceKind::Container, None) => {
            return Err(ModelError::invalid("invalid_netns", "a `container` instance needs `netns`, the path of the namespace its runtime made").into());
        }
        (InstanceKind::Vm, Some(_)) => {
            return Err(ModelError::invalid("invalid_netns", "a `vm` instance's ENIs are taps in its host's namespace; leave `netns` out").into());
        }
        (InstanceKind::Vm, None) => None,
        (InstanceKind::Container, Some(p)) => {
            evnet_model::validate::check_container_netns(p)?;
            if req.host_id.is_none() {
                return Err(ModelError::invalid("invalid_netns", "a `container` instance needs `host_id`, the host whose runtime made its namespace").into());
            }
            Some(p.clone())
        }
    };
    if req.kind != InstanceKind::Vm && (req.tap_uid.is_some() || req.tap_gid.is_some()) {
        return Err(ModelError::invalid("invalid_request", "`tap_uid` and `tap_gid` are for kind `vm` only (they own its taps)").into());
    }
    let mut slot = quota::Slot::new(&st, &tenant, "instances_per_tenant");
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        if let (Some(p), Some(h)) = (&netns_given, &req.host_id) {
            if let Some(other) = snap.instances.values().find(|i| i.value.host_id == *h && i.value.netns == *p) {
                return Err(ModelError::conflict(
                    "netns_in_use",
                    format!("instance {} already holds namespace {p} on host {h}; delete it first or attach more ENIs to it", other.value.id),
                )
                .into());
            }
        }
        let mut enis = vec![];
        for eid in &req.eni_ids {
            let e = visible(&snap.enis, Kind::Eni, eid, &caller)?;
            if let Some(a) = &e.value.attachment {
                return Err(eni_in_use(eid, &a.instance_id));
            }
            enis.push(e);
        }
        let need: u64 = enis.iter().map(|e| e.value.bandwidth.guaranteed_mbps).sum();
        let host_id = match &req.host_id {
            Some(h) => {
                let host = snap.hosts.get(h).ok_or_else(|| ApiError::from(ModelError::not_found("host", h)))?;
                if host.value.status != HostStatus::Ready {
                    return Err(ModelError::conflict("host_not_ready", format!("host {} is {:?}; choose another host or let the scheduler choose", host.value.name, host.value.status)).into());
                }
                host_load(snap, &host.value).admit(need, st.settings.headroom_percent)?;
                h.clone()
            }
            None => {
                let loads: Vec<HostLoad> = snap.hosts.values().map(|h| host_load(snap, &h.value)).collect();
                let i = choose_host(&loads, need, req.placement, st.settings.headroom_percent)?;
                loads[i].host_id.clone()
            }
        };
        let inst = Instance {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            host_id: host_id.clone(),
            state: InstanceState::Pending,
            kind: req.kind,
            // Named after its host too, so the host's agent knows it as its own;
            // a VM has none (its taps are in the host's namespace).
            netns: match req.kind {
                InstanceKind::Vm => String::new(),
                _ => netns_given.clone().unwrap_or_else(|| evnet_plan::naming::instance_netns(&host_id, &id)),
            },
            tap_uid: req.tap_uid,
            tap_gid: req.tap_gid,
            taps: vec![],
        };
        let mut txn = Txn { compares: vec![], ops: vec![put(keys::resource(Kind::Instance, &id), &inst)] };
        for (i, e) in enis.iter().enumerate() {
            let mut eni = arc_clone(&e.value);
            eni.attachment = Some(Attachment { instance_id: id.clone(), host_id: host_id.clone(), device_index: i as u32 });
            eni.status = EniStatus::InUse;
            txn.compares.push(cmp(keys::resource(Kind::Eni, &eni.id), e.mod_revision));
            txn.ops.push(put(keys::resource(Kind::Eni, &eni.id), &eni));
        }
        charge_host(snap, &st, &host_id, need as i64, &mut txn)?;
        slot.claim(snap, snap.tenant_count(&tenant, Kind::Instance), &id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    let snap = st.cache.read();
    Ok(created(with_taps(&snap, read_back(&snap.instances, &id)?)))
}

/// `i` with its taps filled in when it is a `vm`: one per attached ENI, in
/// device order, named as its host's agent names them, in the namespace
/// that agent reports it manages.
pub fn with_taps(snap: &Snapshot, mut i: Instance) -> Instance {
    if i.kind != InstanceKind::Vm {
        return i;
    }
    let netns = snap.hosts.get(&i.host_id).and_then(|h| h.value.netns.clone());
    let mut taps: Vec<VmTap> = snap
        .enis
        .values()
        .filter_map(|e| e.value.attachment.as_ref().filter(|a| a.instance_id == i.id).map(|a| (a.device_index, &e.value)))
        .map(|(idx, e)| {
            let tap = evnet_plan::naming::eni_tap(&e.id);
            VmTap {
                eni_id: e.id.clone(),
                device_index: idx,
                qemu_args: qemu_nic_args(&format!("net{idx}"), &tap, &e.mac),
                tap,
                netns: netns.clone(),
                mac: e.mac.clone(),
            }
        })
        .collect();
    taps.sort_by_key(|t| t.device_index);
    i.taps = taps;
    i
}

pub async fn list_instances(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<Instance>>> {
    let snap = st.cache.read();
    let mut page = paginate(&snap.instances, &caller, &q, |i| q.host_id.as_deref().is_none_or(|h| h == i.host_id))?;
    page.items = page.items.into_iter().map(|i| with_taps(&snap, i)).collect();
    Ok(Json(page))
}

pub async fn get_instance(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Instance>> {
    let snap = st.cache.read();
    Ok(Json(with_taps(&snap, arc_clone(&visible(&snap.instances, Kind::Instance, &id, &caller)?.value))))
}

pub async fn patch_instance(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchNameTags>,
) -> ApiResult<Json<Instance>> {
    check_name_and_tags(req.name.as_deref(), req.tags.as_ref())?;
    commit(&st, |snap| {
        let e = visible(&snap.instances, Kind::Instance, &id, &caller)?;
        check_revision(req.revision, e.mod_revision, &id)?;
        let mut v = arc_clone(&e.value);
        if let Some(n) = &req.name {
            v.name = n.clone();
        }
        if let Some(t) = &req.tags {
            v.tags = t.clone();
        }
        let k = keys::resource(Kind::Instance, &id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &v)] }, ()))
    })
    .await?;
    let snap = st.cache.read();
    Ok(Json(with_taps(&snap, read_back(&snap.instances, &id)?)))
}

/// Deleting an instance detaches its ENIs (they stay, `available`).
pub async fn delete_instance(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.instances, Kind::Instance, &id, &caller)?;
        let k = keys::resource(Kind::Instance, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] };
        let mut freed = 0i64;
        for eni in snap.enis_of_instance(&id) {
            let rev = snap.enis.get(&eni.id).map(|x| x.mod_revision).unwrap_or(0);
            let mut eni = (*eni).clone();
            freed += eni.bandwidth.guaranteed_mbps as i64;
            eni.attachment = None;
            eni.status = EniStatus::Available;
            txn.compares.push(cmp(keys::resource(Kind::Eni, &eni.id), rev));
            txn.ops.push(put(keys::resource(Kind::Eni, &eni.id), &eni));
        }
        if snap.hosts.contains_key(&e.value.host_id) {
            charge_host(snap, &st, &e.value.host_id, -freed, &mut txn)?;
        }
        quota::free(snap, &id, &mut txn);
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- ENIs -------------------------------------------------------------------

fn eni_in_use(eni: &str, instance: &str) -> ApiError {
    ModelError::conflict("eni_in_use", format!("ENI {eni} is attached to instance {instance}; detach it first")).into()
}

/// How many groups an ENI names, checked before anything is looked up.
fn check_group_count(groups: &[String]) -> ApiResult<()> {
    if groups.len() > MAX_SECURITY_GROUPS_PER_ENI {
        return Err(ModelError::invalid("invalid_security_groups", format!("at most {MAX_SECURITY_GROUPS_PER_ENI} groups per ENI")).into());
    }
    Ok(())
}

fn check_groups(snap: &Snapshot, caller: &Caller, vpc_id: &str, groups: &[String]) -> ApiResult<Vec<(String, u64)>> {
    check_group_count(groups)?;
    let mut out = vec![];
    let mut seen = HashSet::new();
    for g in groups {
        let e = visible(&snap.security_groups, Kind::SecurityGroup, g, caller)?;
        if e.value.vpc_id != vpc_id {
            return Err(ModelError::invalid("invalid_security_groups", format!("security group {g} belongs to VPC {}, not {vpc_id}", e.value.vpc_id)).into());
        }
        if e.value.deleting {
            return Err(ModelError::conflict("security_group_deleting", format!("security group {g} is being deleted")).into());
        }
        if seen.insert(g) {
            out.push((g.clone(), e.mod_revision));
        }
    }
    Ok(out)
}

/// Addresses picked for in-flight creates, released when the create ends.
/// `subnet` names the pool: a subnet's id, or an external network's for
/// elastic IPs.
pub(crate) struct Reservation<'a> {
    pub(crate) st: &'a AppState,
    pub(crate) subnet: String,
    pub(crate) ips: Vec<Ipv4Addr>,
}

impl Reservation<'_> {
    pub(crate) fn release(&mut self) {
        if self.ips.is_empty() {
            return;
        }
        let mut all = self.st.ip_reservations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = all.get_mut(&self.subnet) {
            for ip in self.ips.drain(..) {
                set.remove(&ip);
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Picks addresses in a subnet under the reservation lock: `explicit` ones
/// (each must be free), then `auto` more from the pool; all of them are
/// reserved for the caller's transaction. The store's compare on each
/// address key is what makes them unique.
pub(crate) fn pick_addresses(st: &AppState, subnet_id: &str, pool: &ipam::IpPool, explicit: &[Ipv4Addr], auto: usize) -> ApiResult<Vec<Ipv4Addr>> {
    let mut chosen = vec![];
    let mut all = st.ip_reservations.lock().unwrap_or_else(|e| e.into_inner());
    let reserved = all.entry(subnet_id.to_string()).or_default();
    for ip in explicit {
        ipam::check_assignable(pool.net(), *ip)?;
        if pool.is_used(*ip) || reserved.contains(ip) {
            return Err(ModelError::conflict("ip_in_use", format!("{ip} is already in use in subnet {}", pool.net())).into());
        }
        chosen.push(*ip);
    }
    if take_free(pool, reserved, &mut chosen, auto) < auto {
        return Err(ModelError::conflict(
            "subnet_exhausted",
            format!(
                "subnet {subnet_id} ({}) has no free address left for this ENI ({} of {} in use); free addresses or use another subnet",
                pool.net(),
                pool.used_count(),
                pool.capacity()
            ),
        )
        .into());
    }
    for ip in &chosen {
        reserved.insert(*ip);
    }
    Ok(chosen)
}

/// Adds up to `n` free addresses of `pool` that are neither reserved nor
/// chosen already to `chosen`, in the pool's order; how many it added.
fn take_free(pool: &ipam::IpPool, reserved: &HashSet<Ipv4Addr>, chosen: &mut Vec<Ipv4Addr>, n: usize) -> usize {
    let mut picked = 0;
    for ip in pool.free_iter() {
        if picked == n {
            break;
        }
        if !reserved.contains(&ip) && !chosen.contains(&ip) {
            chosen.push(ip);
            picked += 1;
        }
    }
    picked
}

/// Reserves one free address of `pool` (an external network's, keyed by
/// its id) for the caller's transaction, as [`pick_addresses`] does for a
/// subnet; `None` when every address is held or reserved.
pub(crate) fn reserve_one(st: &AppState, pool_key: &str, pool: &ipam::IpPool) -> Option<Ipv4Addr> {
    let mut all = st.ip_reservations.lock().unwrap_or_else(|e| e.into_inner());
    let reserved = all.entry(pool_key.to_string()).or_default();
    let mut chosen = vec![];
    take_free(pool, reserved, &mut chosen, 1);
    let ip = chosen.pop()?;
    reserved.insert(ip);
    Some(ip)
}

pub async fn create_eni(State(st): State<AppState>, caller: Caller, Body(req): Body<CreateEni>) -> ApiResult<(StatusCode, Json<Eni>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_tags(&req.tags)?;
    check_group_count(&req.security_group_ids)?;
    let bandwidth = req.bandwidth.unwrap_or_default();
    bandwidth.validate()?;
    let extra = req.secondary_ips.len() + req.secondary_ip_count as usize;
    if extra > MAX_SECONDARY_IPS {
        return Err(ModelError::invalid("invalid_secondary_ips", format!("at most {MAX_SECONDARY_IPS} secondary addresses per ENI")).into());
    }
    let mut seen = HashSet::new();
    for ip in req.private_ip.iter().chain(&req.secondary_ips) {
        if !seen.insert(*ip) {
            return Err(ModelError::invalid("invalid_secondary_ips", format!("{ip} is requested twice")).into());
        }
    }
    let idem = Idempotency::new(&tenant, Kind::Eni, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::Eni);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let mut resv = Reservation { st: &st, subnet: req.subnet_id.clone(), ips: vec![] };
    let mut slot = quota::Slot::new(&st, &tenant, "enis_per_tenant");
    let (_, id) = commit(&st, |snap| {
        resv.release();
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        let subnet = visible(&snap.subnets, Kind::Subnet, &req.subnet_id, &caller)?;
        if subnet.value.deleting {
            return Err(ModelError::conflict("subnet_deleting", format!("subnet {} is being deleted", req.subnet_id)).into());
        }
        let vpc_id = subnet.value.vpc_id.clone();
        let groups = if req.security_group_ids.is_empty() {
            let vpc = snap.vpcs.get(&vpc_id).ok_or_else(ApiError::conflict_retry)?;
            vec![vpc.value.default_security_group_id.clone()]
        } else {
            req.security_group_ids.clone()
        };
        let group_revs = check_groups(snap, &caller, &vpc_id, &groups)?;
        let pool = snap.ipam.get(&req.subnet_id).ok_or_else(ApiError::conflict_retry)?;
        let explicit: Vec<Ipv4Addr> = req.private_ip.iter().chain(&req.secondary_ips).copied().collect();
        let auto = usize::from(req.private_ip.is_none()) + req.secondary_ip_count as usize;
        let chosen = pick_addresses(&st, &req.subnet_id, pool, &explicit, auto)?;
        resv.ips = chosen.clone();
        // The requested primary, or else the first address picked for it.
        let explicit = usize::from(req.private_ip.is_some()) + req.secondary_ips.len();
        let primary = req.private_ip.unwrap_or_else(|| chosen[explicit]);
        let secondaries: Vec<Ipv4Addr> = chosen.iter().copied().filter(|x| *x != primary).collect();
        let eni = Eni {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            subnet_id: req.subnet_id.clone(),
            vpc_id: vpc_id.clone(),
            mac: mac_for_eni(&id),
            private_ip: primary,
            secondary_ips: secondaries,
            security_group_ids: groups.clone(),
            source_dest_check: req.source_dest_check.unwrap_or(true),
            bandwidth,
            attachment: None,
            status: EniStatus::Available,
        };
        let mut txn = Txn {
            compares: vec![cmp(keys::resource(Kind::Subnet, &req.subnet_id), subnet.mod_revision)],
            ops: vec![put(keys::resource(Kind::Eni, &id), &eni)],
        };
        for (g, rev) in group_revs {
            txn.compares.push(cmp(keys::resource(Kind::SecurityGroup, &g), rev));
        }
        for ip in &chosen {
            txn.compares.push(cmp(keys::ipam(&req.subnet_id, *ip), 0));
            txn.ops.push(put_raw(keys::ipam(&req.subnet_id, *ip), &id));
        }
        slot.claim(snap, snap.tenant_count(&tenant, Kind::Eni), &id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    drop(resv);
    Ok(created(read_back(&st.cache.read().enis, &id)?))
}

pub async fn list_enis(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<Eni>>> {
    Ok(Json(paginate(&st.cache.read().enis, &caller, &q, |e| {
        q.subnet_id.as_deref().is_none_or(|s| s == e.subnet_id)
            && q.vpc_id.as_deref().is_none_or(|s| s == e.vpc_id)
            && q.instance_id.as_deref().is_none_or(|s| e.attachment.as_ref().is_some_and(|a| a.instance_id == s))
            && q.host_id.as_deref().is_none_or(|s| e.attachment.as_ref().is_some_and(|a| a.host_id == s))
            && q.status.as_deref().is_none_or(|s| match e.status {
                EniStatus::Available => s == "available",
                EniStatus::InUse => s == "in-use",
            })
    })?))
}

pub async fn get_eni(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Eni>> {
    Ok(Json(arc_clone(&visible(&st.cache.read().enis, Kind::Eni, &id, &caller)?.value)))
}

pub async fn patch_eni(State(st): State<AppState>, caller: Caller, Path(id): Path<String>, Body(req): Body<PatchEni>) -> ApiResult<Json<Eni>> {
    check_name_and_tags(req.name.as_deref(), req.tags.as_ref())?;
    if let Some(b) = &req.bandwidth {
        b.validate()?;
    }
    if let Some(groups) = &req.security_group_ids {
        if groups.is_empty() {
            return Err(ModelError::invalid("invalid_security_groups", "an ENI needs at least one security group").into());
        }
        check_group_count(groups)?;
    }
    commit(&st, |snap| {
        let e = visible(&snap.enis, Kind::Eni, &id, &caller)?;
        check_revision(req.revision, e.mod_revision, &id)?;
        let mut eni = arc_clone(&e.value);
        let k = keys::resource(Kind::Eni, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![] };
        if let Some(n) = &req.name {
            eni.name = n.clone();
        }
        if let Some(t) = &req.tags {
            eni.tags = t.clone();
        }
        if let Some(s) = req.source_dest_check {
            eni.source_dest_check = s;
        }
        if let Some(groups) = &req.security_group_ids {
            for (g, rev) in check_groups(snap, &caller, &eni.vpc_id, groups)? {
                txn.compares.push(cmp(keys::resource(Kind::SecurityGroup, &g), rev));
            }
            eni.security_group_ids = groups.clone();
        }
        if let Some(b) = req.bandwidth {
            if let Some(a) = &eni.attachment {
                let host = snap.hosts.get(&a.host_id).map(|h| h.value.nic_mbps).unwrap_or(0);
                if let Some(limit) = b.limit_mbps
                    && host > 0 && limit > host {
                        return Err(ModelError::invalid("invalid_bandwidth", format!("limit_mbps {limit} exceeds the {host} Mbit/s NIC of the ENI's host")).into());
                    }
                let delta = b.guaranteed_mbps as i64 - eni.bandwidth.guaranteed_mbps as i64;
                charge_host(snap, &st, &a.host_id.clone(), delta, &mut txn)?;
            }
            eni.bandwidth = b;
        }
        txn.ops.push(put(k, &eni));
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().enis, &id)?))
}


fn check_distinct(ips: &[Ipv4Addr]) -> ApiResult<()> {
    let mut seen = HashSet::new();
    for ip in ips {
        if !seen.insert(*ip) {
            return Err(ModelError::invalid("invalid_secondary_ips", format!("{ip} is requested twice")).into());
        }
    }
    Ok(())
}

/// Gives an ENI more secondary addresses: `ips` by name, or `count` from its
/// subnet. Answers the ENI and the addresses it got.
pub async fn assign_ips_op(st: &AppState, caller: &Caller, id: &str, req: &SecondaryIps) -> ApiResult<(Eni, Vec<Ipv4Addr>)> {
    check_distinct(&req.ips)?;
    if req.ips.is_empty() && req.count == 0 {
        return Err(ModelError::invalid("invalid_secondary_ips", "name addresses in `ips` or give a `count`").into());
    }
    let mut resv = Reservation { st, subnet: String::new(), ips: vec![] };
    let (_, chosen) = commit(st, |snap| {
        resv.release();
        let e = visible(&snap.enis, Kind::Eni, id, caller)?;
        let mut eni = arc_clone(&e.value);
        if eni.secondary_ips.len() + req.ips.len() + req.count as usize > MAX_SECONDARY_IPS {
            return Err(ModelError::invalid(
                "invalid_secondary_ips",
                format!("at most {MAX_SECONDARY_IPS} secondary addresses per ENI; {id} has {}", eni.secondary_ips.len()),
            )
            .into());
        }
        let subnet = snap.subnets.get(&eni.subnet_id).ok_or_else(ApiError::conflict_retry)?;
        if subnet.value.deleting {
            return Err(ModelError::conflict("subnet_deleting", format!("subnet {} is being deleted", eni.subnet_id)).into());
        }
        let pool = snap.ipam.get(&eni.subnet_id).ok_or_else(ApiError::conflict_retry)?;
        resv.subnet = eni.subnet_id.clone();
        let chosen = pick_addresses(st, &eni.subnet_id, pool, &req.ips, req.count as usize)?;
        resv.ips = chosen.clone();
        eni.secondary_ips.extend(chosen.iter().copied());
        let k = keys::resource(Kind::Eni, id);
        let mut txn = Txn {
            compares: vec![cmp(k.clone(), e.mod_revision), cmp(keys::resource(Kind::Subnet, &eni.subnet_id), subnet.mod_revision)],
            ops: vec![put(k, &eni)],
        };
        for ip in &chosen {
            txn.compares.push(cmp(keys::ipam(&eni.subnet_id, *ip), 0));
            txn.ops.push(put_raw(keys::ipam(&eni.subnet_id, *ip), id));
        }
        Ok(Plan::Write(txn, chosen))
    })
    .await?;
    drop(resv);
    Ok((read_back(&st.cache.read().enis, id)?, chosen))
}

/// Takes secondary addresses off an ENI and frees them.
pub async fn unassign_ips_op(st: &AppState, caller: &Caller, id: &str, ips: &[Ipv4Addr]) -> ApiResult<Eni> {
    check_distinct(ips)?;
    commit(st, |snap| {
        let e = visible(&snap.enis, Kind::Eni, id, caller)?;
        let mut eni = arc_clone(&e.value);
        for ip in ips {
            if *ip == eni.private_ip {
                return Err(ModelError::invalid("invalid_secondary_ips", format!("{ip} is {id}'s primary address, which stays with it")).into());
            }
            if !eni.secondary_ips.contains(ip) {
                return Err(ModelError::invalid("invalid_secondary_ips", format!("{ip} is not a secondary address of {id}")).into());
            }
            // An association rewrites the ENI, so this compare sees it.
            if let Some(eip) = crate::api::external::eip_on(snap, id, *ip) {
                return Err(ModelError::conflict(
                    "dependency_violation",
                    format!("elastic IP {} is associated with {ip} of ENI {id}; disassociate it first", eip.id),
                )
                .into());
            }
        }
        eni.secondary_ips.retain(|x| !ips.contains(x));
        let k = keys::resource(Kind::Eni, id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &eni)] };
        for ip in ips {
            txn.ops.push(del(keys::ipam(&eni.subnet_id, *ip)));
        }
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    read_back(&st.cache.read().enis, id)
}

pub async fn assign_ips(State(st): State<AppState>, caller: Caller, Path(id): Path<String>, Body(req): Body<SecondaryIps>) -> ApiResult<Json<Eni>> {
    Ok(Json(assign_ips_op(&st, &caller, &id, &req).await?.0))
}

pub async fn unassign_ips(State(st): State<AppState>, caller: Caller, Path(id): Path<String>, Body(req): Body<SecondaryIps>) -> ApiResult<Json<Eni>> {
    if req.count != 0 {
        return Err(ModelError::invalid("invalid_secondary_ips", "unassign names its addresses in `ips`; `count` applies to assign").into());
    }
    Ok(Json(unassign_ips_op(&st, &caller, &id, &req.ips).await?))
}

pub async fn delete_eni(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.enis, Kind::Eni, &id, &caller)?;
        if let Some(a) = &e.value.attachment {
            return Err(eni_in_use(&id, &a.instance_id));
        }
        if let Some(r) = snap.route_tables.values().find(|r| r.value.routes.iter().any(|x| x.target == id)) {
            return Err(ModelError::conflict("dependency_violation", format!("route table {} routes to ENI {id}; remove the route first", r.value.id)).into());
        }
        let k = keys::resource(Kind::Eni, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] };
        for ip in e.value.all_ips() {
            txn.ops.push(del(keys::ipam(&e.value.subnet_id, ip)));
        }
        // As in AWS, the ENI's elastic IPs stay with the tenant,
        // disassociated. An association rewrites the ENI, so the compare
        // above sees every one made before this.
        for eip in snap.elastic_ips.values().filter(|x| x.value.association.as_ref().is_some_and(|a| a.eni_id.as_deref() == Some(id.as_str()))) {
            let mut v = arc_clone(&eip.value);
            v.association = None;
            txn.compares.push(cmp(keys::resource(Kind::ElasticIp, &v.id), eip.mod_revision));
            txn.ops.push(put(keys::resource(Kind::ElasticIp, &v.id), &v));
        }
        for p in snap.bandwidth_pools.values().filter(|p| p.value.members.contains(&id)) {
            let mut pool = arc_clone(&p.value);
            pool.members.retain(|m| *m != id);
            txn.compares.push(cmp(keys::resource(Kind::BandwidthPool, &pool.id), p.mod_revision));
            txn.ops.push(put(keys::resource(Kind::BandwidthPool, &pool.id), &pool));
        }
        quota::free(snap, &id, &mut txn);
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn attach_eni(State(st): State<AppState>, caller: Caller, Path(id): Path<String>, Body(req): Body<AttachEni>) -> ApiResult<Json<Eni>> {
    if let Some(d) = req.device_index
        && d > MAX_DEVICE_INDEX {
            return Err(ModelError::invalid("invalid_device_index", format!("device_index must be between 0 and {MAX_DEVICE_INDEX}")).into());
        }
    commit(&st, |snap| {
        let e = visible(&snap.enis, Kind::Eni, &id, &caller)?;
        let inst = visible(&snap.instances, Kind::Instance, &req.instance_id, &caller)?;
        if let Some(a) = &e.value.attachment {
            if a.instance_id == req.instance_id && req.device_index.is_none_or(|d| d == a.device_index) {
                return Ok(Plan::Done(()));
            }
            return Err(eni_in_use(&id, &a.instance_id));
        }
        let used: HashSet<u32> = snap.enis_of_instance(&req.instance_id).iter().filter_map(|x| x.attachment.as_ref().map(|a| a.device_index)).collect();
        let device_index = match req.device_index {
            Some(d) if used.contains(&d) => {
                return Err(ModelError::conflict("device_index_in_use", format!("instance {} already has an ENI at device index {d}", req.instance_id)).into())
            }
            Some(d) => d,
            None => (0..=MAX_DEVICE_INDEX).find(|d| !used.contains(d)).ok_or_else(|| {
                ApiError::from(ModelError::conflict("too_many_enis", format!("the instance has {MAX_ENIS_PER_INSTANCE} ENIs already")))
            })?,
        };
        let host_id = inst.value.host_id.clone();
        let mut eni = arc_clone(&e.value);
        eni.attachment = Some(Attachment { instance_id: req.instance_id.clone(), host_id: host_id.clone(), device_index });
        eni.status = EniStatus::InUse;
        let ik = keys::resource(Kind::Instance, &req.instance_id);
        let ek = keys::resource(Kind::Eni, &id);
        let mut txn = Txn {
            compares: vec![cmp(ek.clone(), e.mod_revision), cmp(ik.clone(), inst.mod_revision)],
            ops: vec![put(ek, &eni), put(ik, &*inst.value)],
        };
        charge_host(snap, &st, &host_id, eni.bandwidth.guaranteed_mbps as i64, &mut txn)?;
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().enis, &id)?))
}

/// `POST /v1/enis/{id}/detach` takes no fields; the body may be left out.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetachEni {}

pub async fn detach_eni(State(st): State<AppState>, caller: Caller, Path(id): Path<String>, Body(_): Body<DetachEni>) -> ApiResult<Json<Eni>> {
    commit(&st, |snap| {
        let e = visible(&snap.enis, Kind::Eni, &id, &caller)?;
        let Some(a) = e.value.attachment.clone() else {
            return Err(ModelError::conflict("eni_not_attached", format!("ENI {id} is not attached")).into());
        };
        let mut eni = arc_clone(&e.value);
        eni.attachment = None;
        eni.status = EniStatus::Available;
        let ek = keys::resource(Kind::Eni, &id);
        let mut txn = Txn { compares: vec![cmp(ek.clone(), e.mod_revision)], ops: vec![put(ek, &eni)] };
        if snap.hosts.contains_key(&a.host_id) {
            charge_host(snap, &st, &a.host_id, -(eni.bandwidth.guaranteed_mbps as i64), &mut txn)?;
        }
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().enis, &id)?))
}

// --- Bandwidth pools --------------------------------------------------------

/// No member twice, checked before anything is looked up.
fn check_member_list(members: &[String]) -> ApiResult<()> {
    let mut seen = HashSet::new();
    match members.iter().find(|m| !seen.insert(*m)) {
        Some(m) => Err(ModelError::invalid("invalid_members", format!("ENI {m} is listed twice")).into()),
        None => Ok(()),
    }
}

fn check_pool_members(snap: &Snapshot, caller: &Caller, scope: PoolScope, vpc_id: Option<&str>, pool_id: &str, members: &[String], txn: &mut Txn) -> ApiResult<()> {
    check_member_list(members)?;
    for m in members {
        let e = visible(&snap.enis, Kind::Eni, m, caller)?;
        if scope == PoolScope::Vpc && Some(e.value.vpc_id.as_str()) != vpc_id {
            return Err(ModelError::invalid("invalid_members", format!("ENI {m} is not in the pool's VPC")).into());
        }
        if let Some(other) = snap.bandwidth_pools.values().find(|p| p.value.id != pool_id && p.value.members.contains(m)) {
            return Err(ModelError::conflict("eni_in_pool", format!("ENI {m} is a member of bandwidth pool {} already", other.value.id)).into());
        }
        // Rewriting the member serializes concurrent pool changes over it.
        txn.compares.push(cmp(keys::resource(Kind::Eni, m), e.mod_revision));
        txn.ops.push(put(keys::resource(Kind::Eni, m), &*e.value));
    }
    Ok(())
}

fn check_pool_limit(limit: u64) -> ApiResult<()> {
    if limit == 0 || limit > bandwidth::MAX_MBPS {
        return Err(ModelError::invalid("invalid_bandwidth", format!("limit_mbps must be between 1 and {}", bandwidth::MAX_MBPS)).into());
    }
    Ok(())
}

pub async fn create_pool(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateBandwidthPool>,
) -> ApiResult<(StatusCode, Json<BandwidthPool>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_tags(&req.tags)?;
    check_pool_limit(req.limit_mbps)?;
    check_member_list(&req.members)?;
    match (req.scope, &req.vpc_id) {
        (PoolScope::Vpc, None) => return Err(ModelError::invalid("invalid_scope", "a vpc-scoped pool needs vpc_id").into()),
        (PoolScope::Tenant, Some(_)) => return Err(ModelError::invalid("invalid_scope", "a tenant-scoped pool takes no vpc_id").into()),
        _ => {}
    }
    let idem = Idempotency::new(&tenant, Kind::BandwidthPool, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::BandwidthPool);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        if let Some(v) = &req.vpc_id {
            visible(&snap.vpcs, Kind::Vpc, v, &caller)?;
        }
        let pool = BandwidthPool {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            scope: req.scope,
            vpc_id: req.vpc_id.clone(),
            limit_mbps: req.limit_mbps,
            members: req.members.clone(),
        };
        let mut txn = Txn { compares: vec![], ops: vec![put(keys::resource(Kind::BandwidthPool, &id), &pool)] };
        check_pool_members(snap, &caller, req.scope, req.vpc_id.as_deref(), &id, &req.members, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    Ok(created(read_back(&st.cache.read().bandwidth_pools, &id)?))
}

pub async fn list_pools(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<BandwidthPool>>> {
    Ok(Json(paginate(&st.cache.read().bandwidth_pools, &caller, &q, |p| q.vpc_id.as_deref().is_none_or(|v| p.vpc_id.as_deref() == Some(v)))?))
}

pub async fn get_pool(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<BandwidthPool>> {
    Ok(Json(arc_clone(&visible(&st.cache.read().bandwidth_pools, Kind::BandwidthPool, &id, &caller)?.value)))
}

pub async fn patch_pool(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchBandwidthPool>,
) -> ApiResult<Json<BandwidthPool>> {
    if let Some(l) = req.limit_mbps {
        check_pool_limit(l)?;
    }
    if let Some(m) = &req.members {
        check_member_list(m)?;
    }
    check_name_and_tags(req.name.as_deref(), req.tags.as_ref())?;
    commit(&st, |snap| {
        let e = visible(&snap.bandwidth_pools, Kind::BandwidthPool, &id, &caller)?;
        check_revision(req.revision, e.mod_revision, &id)?;
        let mut p = arc_clone(&e.value);
        let k = keys::resource(Kind::BandwidthPool, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![] };
        if let Some(m) = &req.members {
            check_pool_members(snap, &caller, p.scope, p.vpc_id.as_deref(), &id, m, &mut txn)?;
            p.members = m.clone();
        }
        if let Some(l) = req.limit_mbps {
            p.limit_mbps = l;
        }
        if let Some(n) = &req.name {
            p.name = n.clone();
        }
        if let Some(t) = &req.tags {
            p.tags = t.clone();
        }
        txn.ops.push(put(k, &p));
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().bandwidth_pools, &id)?))
}

pub async fn delete_pool(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.bandwidth_pools, Kind::BandwidthPool, &id, &caller)?;
        let k = keys::resource(Kind::BandwidthPool, &id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] }, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
