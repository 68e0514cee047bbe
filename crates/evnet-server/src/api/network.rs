//! VPCs, subnets, security groups, route tables and peerings.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use evnet_model::ipam::{check_subnet_cidr, check_vpc_cidr, gateway, parse_cidr};
use evnet_model::validate::{
    check_description, check_dhcp_options, check_name, check_route_list, check_routes, check_sg_rules, check_tags,
};
use evnet_model::*;
use evnet_store::Txn;

use crate::auth::Caller;
use crate::cache::{Entry, Snapshot};
use crate::common::*;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Q};
use crate::keys;
use crate::quota;
use crate::state::AppState;

pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Rewrites a VPC unchanged so its revision moves: creates and deletes of
/// its children do this, so they serialize with each other and with the
/// VPC's delete.
pub(crate) fn touch_vpc(snap: &Snapshot, vpc_id: &str, txn: &mut Txn) -> ApiResult<()> {
    let v = snap.vpcs.get(vpc_id).ok_or_else(|| ApiError::from(ModelError::not_found("VPC", vpc_id)))?;
    txn.compares.push(cmp(keys::resource(Kind::Vpc, vpc_id), v.mod_revision));
    txn.ops.push(put(keys::resource(Kind::Vpc, vpc_id), &*v.value));
    Ok(())
}

// --- VPCs -------------------------------------------------------------------

pub async fn create_vpc(State(st): State<AppState>, caller: Caller, Body(req): Body<CreateVpc>) -> ApiResult<(StatusCode, Json<Vpc>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    let cidr = parse_cidr(&req.cidr_block)?;
    check_vpc_cidr(cidr)?;
    check_tags(&req.tags)?;
    req.dhcp_options.as_ref().map(check_dhcp_options).transpose()?;
    let idem = Idempotency::new(&tenant, Kind::Vpc, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::Vpc);
    let name = name_or(&id, &req.name)?;
    let rtb_id = new_id(Kind::RouteTable);
    let sg_id = new_id(Kind::SecurityGroup);
    let now = now_rfc3339();
    let mut slot = quota::Slot::new(&st, &tenant, "vpcs_per_tenant");
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        let used = snap.used_vnis();
        let vni = (1..=MAX_VNI).find(|v| !used.contains(v)).ok_or_else(|| {
            ApiError::from(ModelError::conflict("vni_exhausted", "every VXLAN network identifier is in use"))
        })?;
        let vpc = Vpc {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            cidr_block: cidr,
            vni,
            main_route_table_id: rtb_id.clone(),
            default_security_group_id: sg_id.clone(),
            dhcp_options: req.dhcp_options.clone(),
        };
        let rtb = RouteTable {
            id: rtb_id.clone(),
            name: format!("{name}-main"),
            tags: Default::default(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            vpc_id: id.clone(),
            main: true,
            routes: vec![Route::new(cidr, "local")],
            subnet_ids: vec![],
        };
        // As in AWS: members of the default group reach each other; nothing
        // else comes in; everything may go out.
        let sg = SecurityGroup {
            id: sg_id.clone(),
            name: "default".into(),
            tags: Default::default(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            vpc_id: id.clone(),
            description: "default group: members reach each other; all egress".into(),
            ingress: vec![SgRule { protocol: Protocol::All, from_port: None, to_port: None, cidr: None, source_group_id: Some(sg_id.clone()) }],
            egress: vec![allow_all()],
            deleting: false,
        };
        let mut txn = Txn {
            compares: vec![cmp(keys::vni(vni), 0)],
            ops: vec![
                put(keys::resource(Kind::Vpc, &id), &vpc),
                put(keys::resource(Kind::RouteTable, &rtb_id), &rtb),
                put(keys::resource(Kind::SecurityGroup, &sg_id), &sg),
                put_raw(keys::vni(vni), &id),
            ],
        };
        slot.claim(snap, snap.tenant_count(&tenant, Kind::Vpc), &id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    Ok(created(read_back(&st.cache.read().vpcs, &id)?))
}

pub fn allow_all() -> SgRule {
    SgRule { protocol: Protocol::All, from_port: None, to_port: None, cidr: Some("0.0.0.0/0".parse().expect("valid")), source_group_id: None }
}

pub async fn list_vpcs(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<Vpc>>> {
    Ok(Json(paginate(&st.cache.read().vpcs, &caller, &q, |_| true)?))
}

pub async fn get_vpc(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Vpc>> {
    Ok(Json(arc_clone(&visible(&st.cache.read().vpcs, Kind::Vpc, &id, &caller)?.value)))
}

pub async fn patch_vpc(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchNameTags>,
) -> ApiResult<Json<Vpc>> {
    check_name_and_tags(req.name.as_deref(), req.tags.as_ref())?;
    commit(&st, |snap| {
        let e = visible(&snap.vpcs, Kind::Vpc, &id, &caller)?;
        check_revision(req.revision, e.mod_revision, &id)?;
        let mut v = arc_clone(&e.value);
        if let Some(n) = &req.name {
            v.name = n.clone();
        }
        if let Some(t) = &req.tags {
            v.tags = t.clone();
        }
        let k = keys::resource(Kind::Vpc, &id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &v)] }, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().vpcs, &id)?))
}

/// `PUT /v1/vpcs/{id}/dhcp-options`: the VPC's DHCP option set becomes
/// `req` (for the ENIs of its subnets without a set of their own).
pub async fn put_vpc_dhcp_options(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<DhcpOptions>,
) -> ApiResult<Json<Vpc>> {
    check_dhcp_options(&req)?;
    set_vpc_dhcp_options(&st, &caller, &id, Some(req)).await
}

/// `DELETE /v1/vpcs/{id}/dhcp-options`: the VPC has no option set.
pub async fn delete_vpc_dhcp_options(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Vpc>> {
    set_vpc_dhcp_options(&st, &caller, &id, None).await
}

async fn set_vpc_dhcp_options(st: &AppState, caller: &Caller, id: &str, options: Option<DhcpOptions>) -> ApiResult<Json<Vpc>> {
    commit(st, |snap| {
        let e = visible(&snap.vpcs, Kind::Vpc, id, caller)?;
        let mut v = arc_clone(&e.value);
        v.dhcp_options = options.clone();
        let k = keys::resource(Kind::Vpc, id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &v)] }, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().vpcs, id)?))
}

pub async fn delete_vpc(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.vpcs, Kind::Vpc, &id, &caller)?;
        let v = &e.value;
        let blockers = [
            snap.subnets.values().any(|s| s.value.vpc_id == id).then_some("subnets"),
            snap.security_groups.values().any(|s| s.value.vpc_id == id && s.value.id != v.default_security_group_id).then_some("security groups"),
            snap.route_tables.values().any(|s| s.value.vpc_id == id && !s.value.main).then_some("route tables"),
            snap.peerings.values().any(|p| p.value.vpc_a == id || p.value.vpc_b == id).then_some("peerings"),
            snap.bandwidth_pools.values().any(|p| p.value.vpc_id.as_deref() == Some(&id)).then_some("bandwidth pools"),
            snap.internet_gateways.values().any(|g| g.value.vpc_id == id).then_some("an internet gateway"),
            snap.nat_gateways.values().any(|g| g.value.vpc_id == id).then_some("NAT gateways"),
        ];
        let blockers: Vec<&str> = blockers.into_iter().flatten().collect();
        if !blockers.is_empty() {
            return Err(ModelError::conflict(
                "dependency_violation",
                format!("VPC {id} still has {}; delete them first", blockers.join(", ")),
            )
            .into());
        }
        let mut txn = Txn {
            compares: vec![cmp(keys::resource(Kind::Vpc, &id), e.mod_revision)],
            ops: vec![
                del(keys::resource(Kind::Vpc, &id)),
                del(keys::resource(Kind::RouteTable, &v.main_route_table_id)),
                del(keys::resource(Kind::SecurityGroup, &v.default_security_group_id)),
                del(keys::vni(v.vni)),
            ],
        };
        quota::free(snap, &id, &mut txn);
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- Subnets ----------------------------------------------------------------

pub fn subnet_view(snap: &Snapshot, s: &Subnet) -> Subnet {
    let mut s = s.clone();
    s.available_ip_count = snap.ipam.get(&s.id).map(|p| p.free_count()).unwrap_or(0);
    s
}

pub async fn create_subnet(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateSubnet>,
) -> ApiResult<(StatusCode, Json<Subnet>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    let cidr = parse_cidr(&req.cidr_block)?;
    evnet_model::ipam::check_subnet_prefix(cidr)?;
    check_tags(&req.tags)?;
    req.dhcp_options.as_ref().map(check_dhcp_options).transpose()?;
    let idem = Idempotency::new(&tenant, Kind::Subnet, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::Subnet);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        let vpc = visible(&snap.vpcs, Kind::Vpc, &req.vpc_id, &caller)?;
        let siblings: Vec<_> = snap.subnets.values().filter(|s| s.value.vpc_id == req.vpc_id).map(|s| s.value.cidr_block).collect();
        quota::check(snap, &tenant, "subnets_per_vpc", siblings.len(), &format!("VPC {}", req.vpc_id))?;
        check_subnet_cidr(cidr, vpc.value.cidr_block, &siblings)?;
        let subnet = Subnet {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            vpc_id: req.vpc_id.clone(),
            cidr_block: cidr,
            gateway_ip: gateway(cidr),
            available_ip_count: 0,
            deleting: false,
            dhcp_options: req.dhcp_options.clone(),
        };
        let mut txn = Txn { compares: vec![], ops: vec![put(keys::resource(Kind::Subnet, &id), &subnet)] };
        touch_vpc(snap, &req.vpc_id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    let snap = st.cache.read();
    Ok(created(subnet_view(&snap, &read_back(&snap.subnets, &id)?)))
}

pub async fn list_subnets(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<Subnet>>> {
    let snap = st.cache.read();
    let mut page = paginate(&snap.subnets, &caller, &q, |s| q.vpc_id.as_deref().is_none_or(|v| v == s.vpc_id))?;
    page.items = page.items.iter().map(|s| subnet_view(&snap, s)).collect();
    Ok(Json(page))
}

pub async fn get_subnet(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Subnet>> {
    let snap = st.cache.read();
    let e = visible(&snap.subnets, Kind::Subnet, &id, &caller)?;
    Ok(Json(subnet_view(&snap, &e.value)))
}

pub async fn patch_subnet(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchNameTags>,
) -> ApiResult<Json<Subnet>> {
    check_name_and_tags(req.name.as_deref(), req.tags.as_ref())?;
    commit(&st, |snap| {
        let e = visible(&snap.subnets, Kind::Subnet, &id, &caller)?;
        check_revision(req.revision, e.mod_revision, &id)?;
        let mut v = arc_clone(&e.value);
        if let Some(n) = &req.name {
            v.name = n.clone();
        }
        if let Some(t) = &req.tags {
            v.tags = t.clone();
        }
        let k = keys::resource(Kind::Subnet, &id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &v)] }, ()))
    })
    .await?;
    let snap = st.cache.read();
    Ok(Json(subnet_view(&snap, &read_back(&snap.subnets, &id)?)))
}

/// `PUT /v1/subnets/{id}/dhcp-options`: the subnet's DHCP option set
/// becomes `req`, which its ENIs get instead of the VPC's.
pub async fn put_subnet_dhcp_options(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<DhcpOptions>,
) -> ApiResult<Json<Subnet>> {
    check_dhcp_options(&req)?;
    set_subnet_dhcp_options(&st, &caller, &id, Some(req)).await
}

/// `DELETE /v1/subnets/{id}/dhcp-options`: the subnet has no option set
/// of its own; its ENIs get the VPC's.
pub async fn delete_subnet_dhcp_options(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Subnet>> {
    set_subnet_dhcp_options(&st, &caller, &id, None).await
}

async fn set_subnet_dhcp_options(st: &AppState, caller: &Caller, id: &str, options: Option<DhcpOptions>) -> ApiResult<Json<Subnet>> {
    commit(st, |snap| {
        let e = visible(&snap.subnets, Kind::Subnet, id, caller)?;
        let mut v = arc_clone(&e.value);
        v.dhcp_options = options.clone();
        let k = keys::resource(Kind::Subnet, id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &v)] }, ()))
    })
    .await?;
    let snap = st.cache.read();
    Ok(Json(subnet_view(&snap, &read_back(&snap.subnets, id)?)))
}

/// Two steps, so an ENI create racing the delete cannot leave an ENI in a
/// deleted subnet: mark the subnet (ENI creates compare its revision and
/// refuse a marked subnet), then with every earlier create visible, delete it
/// if it is empty or unmark it.
pub async fn delete_subnet(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.subnets, Kind::Subnet, &id, &caller)?;
        if e.value.deleting {
            return Ok(Plan::Done(()));
        }
        let mut s = arc_clone(&e.value);
        s.deleting = true;
        let k = keys::resource(Kind::Subnet, &id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &s)] }, ()))
    })
    .await?;
    let result = commit(&st, |snap| {
        let e = visible(&snap.subnets, Kind::Subnet, &id, &caller)?;
        let k = keys::resource(Kind::Subnet, &id);
        // NAT gateways hold an address of their subnet too.
        let in_use = snap.ipam.get(&id).map(|p| p.used_count()).unwrap_or(0);
        if in_use > 0 || snap.enis.values().any(|x| x.value.subnet_id == id) || snap.nat_gateways.values().any(|x| x.value.subnet_id == id) {
            let mut s = arc_clone(&e.value);
            s.deleting = false;
            return Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &s)] }, Some(in_use)));
        }
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] };
        touch_vpc(snap, &e.value.vpc_id, &mut txn)?;
        for r in snap.route_tables.values().filter(|r| r.value.subnet_ids.contains(&id)) {
            let mut r2 = arc_clone(&r.value);
            r2.subnet_ids.retain(|s| *s != id);
            txn.compares.push(cmp(keys::resource(Kind::RouteTable, &r2.id), r.mod_revision));
            txn.ops.push(put(keys::resource(Kind::RouteTable, &r2.id), &r2));
        }
        Ok(Plan::Write(txn, None))
    })
    .await?;
    match result.1 {
        None => Ok(StatusCode::NO_CONTENT),
        Some(n) => Err(ModelError::conflict(
            "dependency_violation",
            format!("subnet {id} still has ENIs or NAT gateways ({n} addresses in use); delete them first"),
        )
        .into()),
    }
}

// --- Security groups --------------------------------------------------------

fn check_group_refs(snap: &Snapshot, vpc_id: &str, rules: &[SgRule], self_id: &str) -> ApiResult<()> {
    for r in rules {
        if let Some(g) = &r.source_group_id {
            if g == self_id {
                continue;
            }
            match snap.security_groups.get(g) {
                Some(e) if e.value.vpc_id == vpc_id => {}
                _ => {
                    return Err(ModelError::invalid(
                        "invalid_rule",
                        format!("rule references security group {g}, which is not a group of VPC {vpc_id}"),
                    )
                    .into())
                }
            }
        }
    }
    Ok(())
}

pub async fn create_sg(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateSecurityGroup>,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_name(&req.name)?;
    check_tags(&req.tags)?;
    check_description(&req.description)?;
    check_sg_rules(&req.ingress)?;
    let egress = req.egress.clone().unwrap_or_else(|| vec![allow_all()]);
    check_sg_rules(&egress)?;
    let idem = Idempotency::new(&tenant, Kind::SecurityGroup, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::SecurityGroup);
    let now = now_rfc3339();
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        visible(&snap.vpcs, Kind::Vpc, &req.vpc_id, &caller)?;
        if snap.security_groups.values().any(|g| g.value.vpc_id == req.vpc_id && g.value.name == req.name) {
            return Err(ModelError::conflict("name_taken", format!("VPC {} has a group named {:?} already", req.vpc_id, req.name)).into());
        }
        check_group_refs(snap, &req.vpc_id, &req.ingress, &id)?;
        check_group_refs(snap, &req.vpc_id, &egress, &id)?;
        let groups = snap.security_groups.values().filter(|g| g.value.vpc_id == req.vpc_id).count();
        quota::check(snap, &tenant, "security_groups_per_vpc", groups, &format!("VPC {}", req.vpc_id))?;
        check_rule_quotas(snap, &tenant, &req.ingress, &egress, "the new group")?;
        let sg = SecurityGroup {
            id: id.clone(),
            name: req.name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            vpc_id: req.vpc_id.clone(),
            description: req.description.clone(),
            ingress: req.ingress.clone(),
            egress: egress.clone(),
            deleting: false,
        };
        let mut txn = Txn { compares: vec![], ops: vec![put(keys::resource(Kind::SecurityGroup, &id), &sg)] };
        touch_vpc(snap, &req.vpc_id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    Ok(created(read_back(&st.cache.read().security_groups, &id)?))
}

fn check_rule_quotas(snap: &Snapshot, tenant: &str, ingress: &[SgRule], egress: &[SgRule], scope: &str) -> ApiResult<()> {
    quota::check_size(snap, tenant, "ingress_rules_per_security_group", ingress.len(), scope)?;
    quota::check_size(snap, tenant, "egress_rules_per_security_group", egress.len(), scope)
}

pub async fn list_sgs(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<SecurityGroup>>> {
    Ok(Json(paginate(&st.cache.read().security_groups, &caller, &q, |s| q.vpc_id.as_deref().is_none_or(|v| v == s.vpc_id))?))
}

pub async fn get_sg(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<SecurityGroup>> {
    Ok(Json(arc_clone(&visible(&st.cache.read().security_groups, Kind::SecurityGroup, &id, &caller)?.value)))
}

pub async fn patch_sg(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchSecurityGroup>,
) -> ApiResult<Json<SecurityGroup>> {
    check_name_and_tags(req.name.as_deref(), req.tags.as_ref())?;
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    if let Some(r) = &req.ingress {
        check_sg_rules(r)?;
    }
    if let Some(r) = &req.egress {
        check_sg_rules(r)?;
    }
    commit(&st, |snap| {
        let e = visible(&snap.security_groups, Kind::SecurityGroup, &id, &caller)?;
        check_revision(req.revision, e.mod_revision, &id)?;
        let mut g = arc_clone(&e.value);
        if let Some(n) = &req.name {
            g.name = n.clone();
        }
        if let Some(d) = &req.description {
            g.description = d.clone();
        }
        if let Some(r) = &req.ingress {
            check_group_refs(snap, &g.vpc_id, r, &id)?;
            g.ingress = r.clone();
        }
        if let Some(r) = &req.egress {
            check_group_refs(snap, &g.vpc_id, r, &id)?;
            g.egress = r.clone();
        }
        if let Some(t) = &req.tags {
            g.tags = t.clone();
        }
        if req.ingress.is_some() || req.egress.is_some() {
            check_rule_quotas(snap, &g.tenant, &g.ingress, &g.egress, &format!("group {id}"))?;
        }
        let k = keys::resource(Kind::SecurityGroup, &id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &g)] }, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().security_groups, &id)?))
}

pub async fn delete_sg(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.security_groups, Kind::SecurityGroup, &id, &caller)?;
        if snap.vpcs.get(&e.value.vpc_id).is_some_and(|v| v.value.default_security_group_id == id) {
            return Err(ModelError::conflict("cannot_delete_default", "a VPC's default group goes away with the VPC").into());
        }
        if e.value.deleting {
            return Ok(Plan::Done(()));
        }
        let mut g = arc_clone(&e.value);
        g.deleting = true;
        let k = keys::resource(Kind::SecurityGroup, &id);
        Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &g)] }, ()))
    })
    .await?;
    let (_, blocked) = commit(&st, |snap| {
        let e = visible(&snap.security_groups, Kind::SecurityGroup, &id, &caller)?;
        let k = keys::resource(Kind::SecurityGroup, &id);
        let user = snap.enis.values().find(|x| x.value.security_group_ids.contains(&id)).map(|x| x.value.id.clone()).or_else(|| {
            snap.security_groups
                .values()
                .find(|g| g.value.id != id && g.value.ingress.iter().chain(&g.value.egress).any(|r| r.source_group_id.as_deref() == Some(&id)))
                .map(|g| g.value.id.clone())
        });
        if let Some(user) = user {
            let mut g = arc_clone(&e.value);
            g.deleting = false;
            return Ok(Plan::Write(Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &g)] }, Some(user)));
        }
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] };
        touch_vpc(snap, &e.value.vpc_id, &mut txn)?;
        Ok(Plan::Write(txn, None))
    })
    .await?;
    match blocked {
        None => Ok(StatusCode::NO_CONTENT),
        Some(user) => Err(ModelError::conflict("dependency_violation", format!("security group {id} is still used by {user}")).into()),
    }
}

// --- Route tables -----------------------------------------------------------

/// Every route's target must exist in the VPC, except a route the table
/// holds already: one whose target went away stays, as a blackhole, until
/// it is removed.
fn check_route_targets(snap: &Snapshot, vpc_id: &str, routes: &[Route], kept: &[Route]) -> ApiResult<()> {
    for r in routes.iter().filter(|r| !kept.contains(r)) {
        match Kind::of_id(&r.target) {
            Some(Kind::Eni)
                if snap.enis.get(&r.target).is_none_or(|e| e.value.vpc_id != vpc_id) => {
                    return Err(ModelError::invalid("invalid_route", format!("route target {} is not an ENI of VPC {vpc_id}", r.target)).into());
                }
            Some(Kind::Peering)
                if !snap.peerings.get(&r.target).is_some_and(|p| p.value.vpc_a == vpc_id || p.value.vpc_b == vpc_id) => {
                    return Err(ModelError::invalid("invalid_route", format!("route target {} is not a peering of VPC {vpc_id}", r.target)).into());
                }
            Some(Kind::InternetGateway) if snap.internet_gateways.get(&r.target).is_none_or(|g| g.value.vpc_id != vpc_id) => {
                return Err(ModelError::invalid("invalid_route", format!("route target {} is not the internet gateway of VPC {vpc_id}", r.target)).into());
            }
            Some(Kind::NatGateway) if snap.nat_gateways.get(&r.target).is_none_or(|g| g.value.vpc_id != vpc_id) => {
                return Err(ModelError::invalid("invalid_route", format!("route target {} is not a NAT gateway in VPC {vpc_id}", r.target)).into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// What the data plane does with a route: `blackhole` when its target is
/// gone or cannot forward (a deleted or detached ENI, a deleted peering, or
/// one that is not active between this VPC and another, a deleted internet
/// or NAT gateway), else `active`.
pub(crate) fn route_state(snap: &Snapshot, vpc_id: &str, r: &Route) -> RouteState {
    let forwards = match Kind::of_id(&r.target) {
        Some(Kind::Eni) => snap.enis.get(&r.target).is_some_and(|e| e.value.attachment.is_some()),
        Some(Kind::Peering) => snap.peerings.get(&r.target).is_some_and(|p| crate::desired::active_peer_of(&p.value, vpc_id).is_some()),
        Some(Kind::InternetGateway) => snap.internet_gateways.contains_key(&r.target),
        Some(Kind::NatGateway) => snap.nat_gateways.contains_key(&r.target),
        _ => true,
    };
    if forwards {
        RouteState::Active
    } else {
        RouteState::Blackhole
    }
}

/// A route table as answers show it: each route with its state.
fn rtb_view(snap: &Snapshot, mut t: RouteTable) -> RouteTable {
    let vpc_id = t.vpc_id.clone();
    for r in &mut t.routes {
        r.state = Some(route_state(snap, &vpc_id, r));
    }
    t
}

fn check_associations(snap: &Snapshot, vpc_id: &str, table_id: &str, subnet_ids: &[String]) -> ApiResult<()> {
    for s in subnet_ids {
        if snap.subnets.get(s).is_none_or(|x| x.value.vpc_id != vpc_id) {
            return Err(ModelError::invalid("invalid_association", format!("{s} is not a subnet of VPC {vpc_id}")).into());
        }
        if let Some(other) = snap.route_tables.values().find(|r| r.value.id != table_id && r.value.subnet_ids.contains(s)) {
            return Err(ModelError::conflict(
                "already_associated",
                format!("subnet {s} is associated with route table {} already", other.value.id),
            )
            .into());
        }
    }
    Ok(())
}

pub async fn create_rtb(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateRouteTable>,
) -> ApiResult<(StatusCode, Json<RouteTable>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_tags(&req.tags)?;
    check_route_list(&req.routes)?;
    let idem = Idempotency::new(&tenant, Kind::RouteTable, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::RouteTable);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        let vpc = visible(&snap.vpcs, Kind::Vpc, &req.vpc_id, &caller)?;
        let cidr = vpc.value.cidr_block;
        let mut routes: Vec<Route> = req.routes.iter().map(Route::stored).collect();
        if !routes.iter().any(|r| r.target == "local") {
            routes.insert(0, Route::new(cidr, "local"));
        }
        check_routes(&routes, cidr)?;
        check_route_targets(snap, &req.vpc_id, &routes, &[])?;
        check_associations(snap, &req.vpc_id, &id, &req.subnet_ids)?;
        let tables = snap.route_tables.values().filter(|r| r.value.vpc_id == req.vpc_id).count();
        quota::check(snap, &tenant, "route_tables_per_vpc", tables, &format!("VPC {}", req.vpc_id))?;
        let rtb = RouteTable {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            vpc_id: req.vpc_id.clone(),
            main: false,
            routes,
            subnet_ids: req.subnet_ids.clone(),
        };
        let mut txn = Txn { compares: vec![], ops: vec![put(keys::resource(Kind::RouteTable, &id), &rtb)] };
        touch_vpc(snap, &req.vpc_id, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    let snap = st.cache.read();
    Ok(created(rtb_view(&snap, read_back(&snap.route_tables, &id)?)))
}

pub async fn list_rtbs(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<RouteTable>>> {
    let snap = st.cache.read();
    let mut page = paginate(&snap.route_tables, &caller, &q, |s| q.vpc_id.as_deref().is_none_or(|v| v == s.vpc_id))?;
    page.items = page.items.into_iter().map(|t| rtb_view(&snap, t)).collect();
    Ok(Json(page))
}

pub async fn get_rtb(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<RouteTable>> {
    let snap = st.cache.read();
    Ok(Json(rtb_view(&snap, arc_clone(&visible(&snap.route_tables, Kind::RouteTable, &id, &caller)?.value))))
}

pub async fn patch_rtb(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchRouteTable>,
) -> ApiResult<Json<RouteTable>> {
    check_name_and_tags(req.name.as_deref(), req.tags.as_ref())?;
    if let Some(routes) = &req.routes {
        check_route_list(routes)?;
    }
    commit(&st, |snap| {
        let e = visible(&snap.route_tables, Kind::RouteTable, &id, &caller)?;
        check_revision(req.revision, e.mod_revision, &id)?;
        let mut r = arc_clone(&e.value);
        let cidr = snap.vpcs.get(&r.vpc_id).map(|v| v.value.cidr_block).ok_or_else(ApiError::conflict_retry)?;
        if let Some(routes) = &req.routes {
            let routes: Vec<Route> = routes.iter().map(Route::stored).collect();
            if !routes.iter().any(|x| x.target == "local" && x.destination_cidr == cidr) {
                return Err(ModelError::invalid(
                    "cannot_remove_local_route",
                    format!("every route table keeps the VPC's local route {cidr} → local"),
                )
                .into());
            }
            check_routes(&routes, cidr)?;
            check_route_targets(snap, &r.vpc_id, &routes, &r.routes)?;
            r.routes = routes;
        }
        if let Some(s) = &req.subnet_ids {
            if r.main {
                return Err(ModelError::invalid("invalid_association", "the main table applies to every subnet without its own table; associate subnets with another table").into());
            }
            check_associations(snap, &r.vpc_id, &id, s)?;
            r.subnet_ids = s.clone();
        }
        if let Some(n) = &req.name {
            r.name = n.clone();
        }
        if let Some(t) = &req.tags {
            r.tags = t.clone();
        }
        let k = keys::resource(Kind::RouteTable, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &r)] };
        touch_vpc(snap, &r.vpc_id, &mut txn)?;
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    let snap = st.cache.read();
    Ok(Json(rtb_view(&snap, read_back(&snap.route_tables, &id)?)))
}

pub async fn delete_rtb(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        let e = visible(&snap.route_tables, Kind::RouteTable, &id, &caller)?;
        if e.value.main {
            return Err(ModelError::conflict("cannot_delete_main", "the main route table goes away with its VPC").into());
        }
        let k = keys::resource(Kind::RouteTable, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] };
        touch_vpc(snap, &e.value.vpc_id, &mut txn)?;
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- Peerings ---------------------------------------------------------------

pub async fn create_peering(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreatePeering>,
) -> ApiResult<(StatusCode, Json<Peering>)> {
    let tenant = caller.tenant_for_create()?.to_string();
    check_tags(&req.tags)?;
    if req.vpc_a == req.vpc_b {
        return Err(ModelError::invalid("invalid_peering", "a VPC cannot peer with itself").into());
    }
    let idem = Idempotency::new(&tenant, Kind::Peering, req.client_token.as_deref(), &req)?;
    let id = new_id(Kind::Peering);
    let name = name_or(&id, &req.name)?;
    let now = now_rfc3339();
    let (_, id) = commit(&st, |snap| {
        if let Some(existing) = idem.replay(snap)? {
            return Ok(Plan::Done(existing));
        }
        let a = visible(&snap.vpcs, Kind::Vpc, &req.vpc_a, &caller)?;
        // The accepter's VPC may be another tenant's (its owner accepts).
        let b = snap.vpcs.get(&req.vpc_b).ok_or_else(|| ModelError::not_found(Kind::Vpc.noun(), &req.vpc_b))?;
        if ipam::overlaps(a.value.cidr_block, b.value.cidr_block) {
            return Err(ModelError::invalid(
                "peering_cidr_overlap",
                format!("VPCs {} ({}) and {} ({}) overlap; peered VPCs need disjoint blocks", a.value.id, a.value.cidr_block, b.value.id, b.value.cidr_block),
            )
            .into());
        }
        let pair = |p: &Peering| (p.vpc_a == req.vpc_a && p.vpc_b == req.vpc_b) || (p.vpc_a == req.vpc_b && p.vpc_b == req.vpc_a);
        if let Some(p) = snap.peerings.values().find(|p| pair(&p.value)) {
            return Err(ModelError::conflict("peering_exists", format!("these VPCs are peered already by {}", p.value.id)).into());
        }
        for vpc in [&req.vpc_a, &req.vpc_b] {
            let n = snap.peerings.values().filter(|p| p.value.vpc_a == *vpc || p.value.vpc_b == *vpc).count();
            quota::check(snap, &tenant, "peerings_per_vpc", n, &format!("VPC {vpc}"))?;
        }
        let p = Peering {
            id: id.clone(),
            name: name.clone(),
            tags: req.tags.clone(),
            tenant: tenant.clone(),
            created_at: now.clone(),
            revision: 0,
            vpc_a: req.vpc_a.clone(),
            vpc_b: req.vpc_b.clone(),
            status: PeeringStatus::PendingAcceptance,
        };
        let mut txn = Txn { compares: vec![], ops: vec![put(keys::resource(Kind::Peering, &id), &p)] };
        touch_vpc(snap, &req.vpc_a, &mut txn)?;
        touch_vpc(snap, &req.vpc_b, &mut txn)?;
        idem.add_to(&mut txn, &id);
        Ok(Plan::Write(txn, id.clone()))
    })
    .await?;
    Ok(created(read_back(&st.cache.read().peerings, &id)?))
}

pub async fn list_peerings(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<Peering>>> {
    let snap = st.cache.read();
    Ok(Json(paginate_seen(&snap.peerings, &caller, &q, |p| peering_seen_by(&snap, p, &caller), |p| {
        q.vpc_id.as_deref().is_none_or(|v| v == p.vpc_a || v == p.vpc_b)
    })?))
}

/// The requester's tenant and the accepter's both see a peering, and
/// either may delete it (as in AWS); only the accepter's accepts it.
pub(crate) fn peering_seen_by(snap: &Snapshot, p: &Peering, caller: &Caller) -> bool {
    caller.sees(&p.tenant) || snap.vpcs.get(&p.vpc_b).is_some_and(|v| caller.sees(&v.value.tenant))
}

fn peering_visible<'a>(snap: &'a Snapshot, id: &str, caller: &Caller) -> ApiResult<&'a Entry<Peering>> {
    match snap.peerings.get(id) {
        Some(e) if peering_seen_by(snap, &e.value, caller) => Ok(e),
        _ => Err(ModelError::not_found("peering", id).into()),
    }
}

pub async fn get_peering(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Peering>> {
    let snap = st.cache.read();
    Ok(Json(arc_clone(&peering_visible(&snap, &id, &caller)?.value)))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptPeering {}

/// The owner of the accepter VPC (`vpc_b`) accepts; accepting an active
/// peering again changes nothing.
pub async fn accept_peering(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(_): Body<AcceptPeering>,
) -> ApiResult<Json<Peering>> {
    commit(&st, |snap| {
        let e = peering_visible(snap, &id, &caller)?;
        if e.value.status == PeeringStatus::Active {
            return Ok(Plan::Done(()));
        }
        if !snap.vpcs.get(&e.value.vpc_b).is_some_and(|v| caller.sees(&v.value.tenant)) {
            return Err(ModelError::new(ErrorKind::Forbidden, "forbidden", format!("only the owner of VPC {} accepts peering {id}", e.value.vpc_b)).into());
        }
        let mut p = arc_clone(&e.value);
        p.status = PeeringStatus::Active;
        let k = keys::resource(Kind::Peering, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![put(k, &p)] };
        touch_vpc(snap, &p.vpc_a, &mut txn)?;
        touch_vpc(snap, &p.vpc_b, &mut txn)?;
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().peerings, &id)?))
}

pub async fn delete_peering(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    commit(&st, |snap| {
        // Routes through it stay, as blackholes (as in AWS): the data plane
        // drops what they match until their owners remove them.
        let e = peering_visible(snap, &id, &caller)?;
        let k = keys::resource(Kind::Peering, &id);
        let mut txn = Txn { compares: vec![cmp(k.clone(), e.mod_revision)], ops: vec![del(k)] };
        touch_vpc(snap, &e.value.vpc_a, &mut txn)?;
        touch_vpc(snap, &e.value.vpc_b, &mut txn)?;
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
