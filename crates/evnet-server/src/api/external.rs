//! Traffic that leaves a VPC: external networks (the admin's), internet
//! gateways, elastic IPs and NAT gateways (DESIGN §10).
//!
//! Elastic addresses are unique the way private ones are: each held
//! address is a key `/eip/{address}` created with "must not exist", one
//! key per address across every external network, so no address is handed
//! out twice even by servers racing on one store. An association rewrites
//! the ENI it names, so it serializes with the ENI's delete, with a change
//! of its addresses and with other associations to it.

use std::net::Ipv4Addr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use evnet_model::external::{DEFAULT_HOST_INTERFACE, check_host_interface, gateway_and_pool};
use evnet_model::ipam::parse_cidr;
use evnet_model::validate::check_tags;
use evnet_model::*;
use evnet_store::Txn;

use crate::api::compute::{Reservation, pick_addresses, reserve_one};
use crate::api::network::touch_vpc;
use crate::auth::Caller;
use crate::cache::{Entry, Snapshot};
use crate::common::*;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Q};
use crate::keys;
use crate::quota;
use crate::state::AppState;

/// The elastic IP associated with address `ip` of ENI `eni_id`, if any.
pub(crate) fn eip_on<'a>(snap: &'a Snapshot, eni_id: &str, ip: Ipv4Addr) -> Option<&'a ElasticIp> {
    snap.elastic_ips
        .values()
        .map(|e| &*e.value)
        .find(|e| e.association.as_ref().is_some_and(|a| a.eni_id.as_deref() == Some(eni_id) && a.private_ip == ip))
}

/// The resources of this module a tenant renames and retags.
trait NameTags: Owned + Clone + serde::Serialize {
    fn set(&mut self, name: Option<&String>, tags: Option<&Tags>);
}

macro_rules! name_tags {
    ($($t:ty),*) => {$(
        impl NameTags for $t {
            fn set(&mut self, name: Option<&String>, tags: Option<&Tags>) {
                if let Some(n) = name {
                    self.name = n.clone();
                }
                if let Some(t) = tags {
                    self.tags = t.clone();
                }
            }
        }
    )*};
}
name_tags!(InternetGateway, ElasticIp, NatGateway);

/// `PATCH` of a name and tags: the change applies at `revision` when given.
async fn patch_name_tags<T: NameTags>(
    st: &AppState,
    caller: &Caller,
    id: &str,
    req: &PatchNameTags,
    map: fn(&Snapshot) -> &std::collections::BTreeMap<String, Entry<T>>,
) -> ApiResult<T> {
    check_name_and_tags(req.name.as_deref(), req.tags.as_ref())?;
    commit(st, |snap| {
        let e = visible(map(snap), T::KIND, id, caller)?;
        check_revision(req.revision, e.mod_revision, id)?;
        let mut v = arc_clone(&e.value);
        v.set(req.name.as_ref(), req.tags.as_ref());
        let k = keys::resource(T::KIND, id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &v)] }, ()))
    })
    .await?;
    read_back(map(&st.cache.read()), id)
}

// --- External networks ------------------------------------------------------

fn external_view(snap: &Snapshot, n: &ExternalNetwork) -> ExternalNetwork {
    let mut n = n.clone();
    n.available_ip_count = snap.eip_pools.get(&n.id).map(|p| p.free_count()).unwrap_or(0);
    n
}

/// An external network every tenant may read, by id.
fn external_network<'a>(snap: &'a Snapshot, id: &str) -> ApiResult<&'a Entry<ExternalNetwork>> {
    snap.external_networks.get(id).ok_or_else(|| ModelError::not_found(Kind::ExternalNetwork.noun(), id).into())
}

/// The external network a create names, or the only one there is.
fn chosen_external_network<'a>(snap: &'a Snapshot, id: Option<&str>) -> ApiResult<&'a Entry<ExternalNetwork>> {
    let e = match id {
        Some(id) => external_network(snap, id)?,
        None => {
            let mut all = snap.external_networks.values();
            match (all.next(), all.next()) {
                (Some(only), None) => only,
                (None, _) => {
                    return Err(ModelError::invalid(
                        "external_network_required",
                        "there is no external network yet; the admin creates one (evnet external-network create --cidr …)",
                    )
                    .into());
                }
                (Some(_), Some(_)) => {
                    return Err(ModelError::invalid(
                        "external_network_required",
                        format!("there are {} external networks; name one with external_network_id", snap.external_networks.len()),
                    )
                    .into());
                }
            }
        }
    };
    if e.value.deleting {
        return Err(ModelError::conflict("external_network_deleting", format!("external network {} is being deleted", e.value.id)).into());
    }
    Ok(e)
}

pub async fn create_external_network(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateExternalNetwork>,
) -> ApiResult<(StatusCode, Json<ExternalNetwork>)> {
    caller.require_admin("create external networks: they are the admin's")?;
    let cidr = parse_cidr(&req.cidr)?;
    let (gateway_ip, allocation_pool) = gateway_and_pool(cidr, req.gateway_ip, req.allocation_pool)?;
    let host_interface = req.host_interface.clone().unwrap_or_else(|| DEFAULT_HOST_INTERFACE.to_string());
    check_host_interface(&host_interface)?;
    check_tags(&req.tags)?;
    let idem = Idempotency::new(SYSTEM_TENANT, Kind::ExternalNetwork, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::ExternalNetwork);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        // Addresses stay unique even across overlapping networks (one
        // `/eip/` key per address); refusing overlaps keeps each address
        // in one network, so the data plane knows where it leads.
        if let Some(o) = snap.external_networks.values().find(|o| ipam::overlaps(o.value.cidr, cidr)) {
            return Err(ModelError::conflict(
                "external_network_overlap",
                format!("{cidr} overlaps external network {} ({}); choose a disjoint block", o.value.id, o.value.cidr),
            )
            .into());
        }
        let n = ExternalNetwork {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: SYSTEM_TENANT.to_string(),
            created_at: now.clone(),
            revision: 0,
            cidr,
            gateway_ip,
            allocation_pool,
            host_interface: host_interface.clone(),
            available_ip_count: 0,
            deleting: false,
        };
        let mut txn = Txn { compares: vec![], ops: vec![put(keys::resource(Kind::ExternalNetwork, &id), &n)] };
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    let snap = st.cache.read();
    Ok(created(external_view(&snap, &read_back(&snap.external_networks, &id)?)))
}

/// External networks are shared: the admin and every tenant read them all.
pub async fn list_external_networks(
    State(st): State<AppState>,
    caller: Caller,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Page<ExternalNetwork>>> {
    caller.require_person("list external networks")?;
    let snap = st.cache.read();
    let mut page = paginate(&snap.external_networks, &Caller::Admin, &q, |_| true)?;
    page.items = page.items.iter().map(|n| external_view(&snap, n)).collect();
    Ok(Json(page))
}

pub async fn get_external_network(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<ExternalNetwork>> {
    caller.require_person("read external networks")?;
    let snap = st.cache.read();
    Ok(Json(external_view(&snap, &external_network(&snap, &id)?.value)))
}

/// Two steps, as a subnet's delete: mark the network (allocations and
/// gateway creates compare its revision and refuse a marked network), then
/// with every earlier write visible, delete it if nothing uses it or unmark
/// it.
pub async fn delete_external_network(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin("delete external networks: they are the admin's")?;
    commit(&st, |snap| {
        let e = external_network(snap, &id)?;
        if e.value.deleting {
            return Ok(Plan::Done(()));
        }
        let mut n = arc_clone(&e.value);
        n.deleting = true;
        let k = keys::resource(Kind::ExternalNetwork, &id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &n)] }, ()))
    })
    .await?;
    let (_, blocked) = commit(&st, |snap| {
        let e = external_network(snap, &id)?;
        let k = keys::resource(Kind::ExternalNetwork, &id);
        let eips = snap.elastic_ips.values().filter(|x| x.value.external_network_id == id).count();
        let igws = snap.internet_gateways.values().filter(|x| x.value.external_network_id == id).count();
        if eips + igws > 0 {
            let mut n = arc_clone(&e.value);
            n.deleting = false;
            return Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &n)] }, Some((eips, igws))));
        }
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] }, None))
    })
    .await?;
    match blocked {
        None => Ok(StatusCode::NO_CONTENT),
        Some((eips, igws)) => Err(ModelError::conflict(
            "dependency_violation",
            format!(
                "external network {id} still has {eips} elastic IPs and {igws} internet gateways; they must be released and deleted first"
            ),
        )
        .into()),
    }
}

// --- Internet gateways ------------------------------------------------------

/// The internet gateway of a VPC, if it has one.
fn gateway_of<'a>(snap: &'a Snapshot, vpc_id: &str) -> Option<&'a Entry<InternetGateway>> {
    snap.internet_gateways.values().find(|g| g.value.vpc_id == vpc_id)
}

/// The VPC's internet gateway, which must lead to `external_network_id`
/// (the network of the elastic IP about to be used in the VPC).
fn gateway_for<'a>(snap: &'a Snapshot, vpc_id: &str, eip: &ElasticIp) -> ApiResult<&'a Entry<InternetGateway>> {
    let g = gateway_of(snap, vpc_id).ok_or_else(|| {
        ApiError::from(ModelError::conflict(
            "no_internet_gateway",
            format!("VPC {vpc_id} has no internet gateway; create one first (evnet igw create --vpc {vpc_id})"),
        ))
    })?;
    if g.value.external_network_id != eip.external_network_id {
        return Err(ModelError::conflict(
            "external_network_mismatch",
            format!(
                "elastic IP {} is from external network {}, but VPC {vpc_id}'s internet gateway {} leads to {}; use an elastic IP of that network",
                eip.id, eip.external_network_id, g.value.id, g.value.external_network_id
            ),
        )
        .into());
    }
    Ok(g)
}

pub async fn create_igw(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateInternetGateway>,
) -> ApiResult<(StatusCode, Json<InternetGateway>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_tags(&req.tags)?;
    let idem = Idempotency::new(&tenant, Kind::InternetGateway, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::InternetGateway);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let mut slot = quota::Slot::new(&st, &tenant, "internet_gateways_per_tenant");
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        visible(&snap.vpcs, Kind::Vpc, &req.vpc_id, &caller)?;
        // One per VPC: checked under the VPC's compare below.
        if let Some(g) = gateway_of(snap, &req.vpc_id) {
            return Err(ModelError::conflict(
                "internet_gateway_exists",
                format!("VPC {} has internet gateway {} already", req.vpc_id, g.value.id),
            )
            .into());
        }
        let net = chosen_external_network(snap, req.external_network_id.as_deref())?;
        let g = InternetGateway {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            vpc_id: req.vpc_id.clone(),
            external_network_id: net.value.id.clone(),
        };
        let mut txn = Txn {
            compares: vec![cmp(keys::resource(Kind::ExternalNetwork, &net.value.id), net.mod_revision)],
            ops: vec![put(keys::resource(Kind::InternetGateway, &id), &g)],
        };
        touch_vpc(snap, &req.vpc_id, &mut txn)?;
        slot.claim(snap, snap.tenant_count(&tenant, Kind::InternetGateway), &id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    Ok(created(read_back(&st.cache.read().internet_gateways, &id)?))
}

pub async fn list_igws(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<InternetGateway>>> {
    Ok(Json(paginate(&st.cache.read().internet_gateways, &caller, &q, |g| q.vpc_id.as_deref().is_none_or(|v| v == g.vpc_id))?))
}

pub async fn get_igw(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<InternetGateway>> {
    Ok(Json(arc_clone(&visible(&st.cache.read().internet_gateways, Kind::InternetGateway, &id, &caller)?.value)))
}

pub async fn patch_igw(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchNameTags>,
) -> ApiResult<Json<InternetGateway>> {
    Ok(Json(patch_name_tags(&st, &caller, &id, &req, |s| &s.internet_gateways).await?))
}

/// Routes to the gateway stay, as blackholes, until removed (as routes to
/// a deleted peering do). The VPC's elastic IPs and NAT gateways stay
/// associated and reach the outside again once the VPC has a gateway.
pub async fn delete_igw(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.internet_gateways, Kind::InternetGateway, &id, &caller)?;
        let k = keys::resource(Kind::InternetGateway, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] };
        touch_vpc(snap, &e.value.vpc_id, &mut txn)?;
        quota::free(snap, &id, &mut txn);
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- Elastic IPs ------------------------------------------------------------

pub async fn allocate_eip(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<AllocateElasticIp>,
) -> ApiResult<(StatusCode, Json<ElasticIp>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_tags(&req.tags)?;
    let idem = Idempotency::new(&tenant, Kind::ElasticIp, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::ElasticIp);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let mut resv = Reservation { st: &st, subnet: String::new(), ips: vec![] };
    let mut slot = quota::Slot::new(&st, &tenant, "elastic_ips_per_tenant");
    let (_, id) = commit(&st, |snap| {
        resv.release();
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        let net = chosen_external_network(snap, req.external_network_id.as_deref())?;
        let net_id = net.value.id.clone();
        let pool = snap.eip_pools.get(&net_id).ok_or_else(ApiError::conflict_retry)?;
        let Some(address) = reserve_one(&st, &net_id, pool) else {
            let (start, end) = pool.range();
            return Err(ModelError::conflict(
                "external_network_exhausted",
                format!(
                    "external network {net_id} has no free address left ({} of {} in {start}-{end} allocated); release an elastic IP or ask the admin for another network",
                    pool.used_count(),
                    pool.capacity()
                ),
            )
            .into());
        };
        resv.subnet = net_id.clone();
        resv.ips = vec![address];
        let eip = ElasticIp {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            external_network_id: net_id.clone(),
            address,
            association: None,
        };
        let mut txn = Txn {
            compares: vec![cmp(keys::resource(Kind::ExternalNetwork, &net_id), net.mod_revision), cmp(keys::eip(address), 0)],
            ops: vec![put(keys::resource(Kind::ElasticIp, &id), &eip), put_raw(keys::eip(address), &id)],
        };
        slot.claim(snap, snap.tenant_count(&tenant, Kind::ElasticIp), &id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    drop(resv);
    Ok(created(read_back(&st.cache.read().elastic_ips, &id)?))
}

pub async fn list_eips(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<ElasticIp>>> {
    Ok(Json(paginate(&st.cache.read().elastic_ips, &caller, &q, |_| true)?))
}

pub async fn get_eip(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<ElasticIp>> {
    Ok(Json(arc_clone(&visible(&st.cache.read().elastic_ips, Kind::ElasticIp, &id, &caller)?.value)))
}

pub async fn patch_eip(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchNameTags>,
) -> ApiResult<Json<ElasticIp>> {
    Ok(Json(patch_name_tags(&st, &caller, &id, &req, |s| &s.elastic_ips).await?))
}

/// Rewrites an ENI unchanged with a compare, so its revision moves.
fn touch_eni(e: &Entry<Eni>, txn: &mut Txn) {
    let k = keys::resource(Kind::Eni, &e.value.id);
    txn.compares.push(cmp(k.clone(), e.mod_revision));
    txn.ops.push(put(k, &*e.value));
}

fn eip_in_use(eip: &ElasticIp, a: &EipAssociation) -> ApiError {
    let what = match (&a.eni_id, &a.nat_gateway_id) {
        (_, Some(nat)) => format!("NAT gateway {nat}, which keeps it until deleted"),
        (Some(eni), _) => format!("{} of ENI {eni}; disassociate it first, or pass allow_reassociation to move it", a.private_ip),
        _ => a.private_ip.to_string(),
    };
    ModelError::conflict("eip_associated", format!("elastic IP {} ({}) is associated with {what}", eip.id, eip.address)).into()
}

pub async fn associate_eip_op(st: &AppState, caller: &Caller, id: &str, req: &AssociateElasticIp) -> ApiResult<ElasticIp> {
    commit(st, |snap| {
        let e = visible(&snap.elastic_ips, Kind::ElasticIp, id, caller)?;
        let eni = visible(&snap.enis, Kind::Eni, &req.eni_id, caller)?;
        let private_ip = req.private_ip.unwrap_or(eni.value.private_ip);
        if !eni.value.all_ips().any(|ip| ip == private_ip) {
            return Err(ModelError::invalid(
                "ip_not_on_eni",
                format!("{private_ip} is not an address of ENI {}; it has {}", req.eni_id, list_ips(&eni.value)),
            )
            .into());
        }
        if let Some(a) = &e.value.association {
            if a.eni_id.as_deref() == Some(req.eni_id.as_str()) && a.private_ip == private_ip {
                return Ok(Plan::Done(()));
            }
            if a.nat_gateway_id.is_some() || !req.allow_reassociation {
                return Err(eip_in_use(&e.value, a));
            }
        }
        if let Some(other) = eip_on(snap, &req.eni_id, private_ip) {
            return Err(ModelError::conflict(
                "private_ip_has_elastic_ip",
                format!("{private_ip} of ENI {} has elastic IP {} already; disassociate that one first", req.eni_id, other.id),
            )
            .into());
        }
        let igw = gateway_for(snap, &eni.value.vpc_id, &e.value)?;
        let mut eip = arc_clone(&e.value);
        eip.association = Some(EipAssociation { eni_id: Some(req.eni_id.clone()), nat_gateway_id: None, private_ip });
        let k = keys::resource(Kind::ElasticIp, id);
        let mut txn = Txn {
            compares: vec![cmp(k.clone(), e.mod_revision), cmp(keys::resource(Kind::InternetGateway, &igw.value.id), igw.mod_revision)],
            ops: vec![put(k, &eip)],
        };
        touch_eni(eni, &mut txn);
        // Moving from another ENI rewrites that one too, so it sees the
        // change as this one does.
        if let Some(prev) =
            e.value.association.as_ref().and_then(|a| a.eni_id.as_ref()).filter(|p| **p != req.eni_id).and_then(|p| snap.enis.get(p))
        {
            touch_eni(prev, &mut txn);
        }
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    read_back(&st.cache.read().elastic_ips, id)
}

fn list_ips(eni: &Eni) -> String {
    eni.all_ips().map(|ip| ip.to_string()).collect::<Vec<_>>().join(", ")
}

pub async fn associate_eip(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<AssociateElasticIp>,
) -> ApiResult<Json<ElasticIp>> {
    Ok(Json(associate_eip_op(&st, &caller, &id, &req).await?))
}

/// Disassociating an elastic IP that is not associated changes nothing;
/// one a NAT gateway holds stays with it.
pub async fn disassociate_eip_op(st: &AppState, caller: &Caller, id: &str) -> ApiResult<ElasticIp> {
    commit(st, |snap| {
        let e = visible(&snap.elastic_ips, Kind::ElasticIp, id, caller)?;
        let Some(a) = &e.value.association else { return Ok(Plan::Done(())) };
        if let Some(nat) = &a.nat_gateway_id {
            return Err(ModelError::conflict(
                "dependency_violation",
                format!("elastic IP {id} is the address of NAT gateway {nat}; it is freed when the gateway is deleted"),
            )
            .into());
        }
        let mut eip = arc_clone(&e.value);
        eip.association = None;
        let k = keys::resource(Kind::ElasticIp, id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &eip)] };
        if let Some(eni) = a.eni_id.as_ref().and_then(|x| snap.enis.get(x)) {
            touch_eni(eni, &mut txn);
        }
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    read_back(&st.cache.read().elastic_ips, id)
}

pub async fn disassociate_eip(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(_): Body<DisassociateElasticIp>,
) -> ApiResult<Json<ElasticIp>> {
    Ok(Json(disassociate_eip_op(&st, &caller, &id).await?))
}

/// Releases the address back to its network's pool; refused while
/// associated.
pub async fn release_eip(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.elastic_ips, Kind::ElasticIp, &id, &caller)?;
        if let Some(a) = &e.value.association {
            return Err(eip_in_use(&e.value, a));
        }
        let k = keys::resource(Kind::ElasticIp, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k), del(keys::eip(e.value.address))] };
        quota::free(snap, &id, &mut txn);
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- NAT gateways -----------------------------------------------------------

/// Where a new NAT gateway runs: the ready host with the fewest NAT
/// gateways, then the fewest instances (ties by id, so the choice is
/// deterministic).
fn nat_host(snap: &Snapshot) -> Option<&Entry<Host>> {
    snap.hosts.values().filter(|h| h.value.status == HostStatus::Ready).min_by_key(|h| {
        let nats = snap.nat_gateways.values().filter(|n| n.value.host_id == h.value.id).count();
        (nats, snap.instance_count(&h.value.id), h.value.id.clone())
    })
}

pub async fn create_natgw(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateNatGateway>,
) -> ApiResult<(StatusCode, Json<NatGateway>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_tags(&req.tags)?;
    let idem = Idempotency::new(&tenant, Kind::NatGateway, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::NatGateway);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let mut resv = Reservation { st: &st, subnet: req.subnet_id.clone(), ips: vec![] };
    let mut slot = quota::Slot::new(&st, &tenant, "nat_gateways_per_tenant");
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
        let e = visible(&snap.elastic_ips, Kind::ElasticIp, &req.elastic_ip_id, &caller)?;
        if let Some(a) = &e.value.association {
            return Err(eip_in_use(&e.value, a));
        }
        let igw = gateway_for(snap, &vpc_id, &e.value)?;
        let host = nat_host(snap).ok_or_else(|| {
            ApiError::from(ModelError::conflict("no_host_available", "no host is ready to run the NAT gateway; bring a host up and retry"))
        })?;
        let pool = snap.ipam.get(&req.subnet_id).ok_or_else(ApiError::conflict_retry)?;
        let private_ip = pick_addresses(&st, &req.subnet_id, pool, &[], 1)?[0];
        resv.ips = vec![private_ip];
        let nat = NatGateway {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            vpc_id: vpc_id.clone(),
            subnet_id: req.subnet_id.clone(),
            private_ip,
            elastic_ip_id: req.elastic_ip_id.clone(),
            state: NatGatewayState::Available,
            host_id: host.value.id.clone(),
        };
        let mut eip = arc_clone(&e.value);
        eip.association = Some(EipAssociation { eni_id: None, nat_gateway_id: Some(id.clone()), private_ip });
        let ek = keys::resource(Kind::ElasticIp, &req.elastic_ip_id);
        let mut txn = Txn {
            compares: vec![
                cmp(keys::resource(Kind::Subnet, &req.subnet_id), subnet.mod_revision),
                cmp(ek.clone(), e.mod_revision),
                cmp(keys::resource(Kind::InternetGateway, &igw.value.id), igw.mod_revision),
                cmp(keys::ipam(&req.subnet_id, private_ip), 0),
                // A racing delete of the host fails, or sees the gateway.
                cmp(keys::resource(Kind::Host, &host.value.id), host.mod_revision),
            ],
            ops: vec![
                put(keys::resource(Kind::NatGateway, &id), &nat),
                put(ek, &eip),
                put_raw(keys::ipam(&req.subnet_id, private_ip), &id),
            ],
        };
        touch_vpc(snap, &vpc_id, &mut txn)?;
        slot.claim(snap, snap.tenant_count(&tenant, Kind::NatGateway), &id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    drop(resv);
    Ok(created(read_back(&st.cache.read().nat_gateways, &id)?))
}

pub async fn list_natgws(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<NatGateway>>> {
    Ok(Json(paginate(&st.cache.read().nat_gateways, &caller, &q, |n| {
        q.vpc_id.as_deref().is_none_or(|v| v == n.vpc_id) && q.subnet_id.as_deref().is_none_or(|s| s == n.subnet_id)
    })?))
}

pub async fn get_natgw(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<NatGateway>> {
    Ok(Json(arc_clone(&visible(&st.cache.read().nat_gateways, Kind::NatGateway, &id, &caller)?.value)))
}

pub async fn patch_natgw(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchNameTags>,
) -> ApiResult<Json<NatGateway>> {
    Ok(Json(patch_name_tags(&st, &caller, &id, &req, |s| &s.nat_gateways).await?))
}

/// Frees the gateway's address in its subnet and its elastic IP's
/// association (the tenant keeps the elastic IP). Routes to it stay, as
/// blackholes, until removed.
pub async fn delete_natgw(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.nat_gateways, Kind::NatGateway, &id, &caller)?;
        let n = &e.value;
        let k = keys::resource(Kind::NatGateway, &id);
        let mut txn =
            Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k), del(keys::ipam(&n.subnet_id, n.private_ip))] };
        if let Some(eip) = snap
            .elastic_ips
            .get(&n.elastic_ip_id)
            .filter(|x| x.value.association.as_ref().is_some_and(|a| a.nat_gateway_id.as_deref() == Some(id.as_str())))
        {
            let mut v = arc_clone(&eip.value);
            v.association = None;
            let ek = keys::resource(Kind::ElasticIp, &v.id);
            txn.compares.push(cmp(ek.clone(), eip.mod_revision));
            txn.ops.push(put(ek, &v));
        }
        touch_vpc(snap, &n.vpc_id, &mut txn)?;
        quota::free(snap, &id, &mut txn);
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
