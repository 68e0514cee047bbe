//! Which hosts' desired state each object feeds, kept with the cache.
//!
//! [`FanoutIndex`] lives in the cache's [`Snapshot`](crate::cache::Snapshot)
//! and is updated by every event the cache applies. It serves two ends:
//!
//! - **whom a change wakes.** For each event it records the hosts whose
//!   desired state the object fed before or feeds after the change, and
//!   when the batch is done the cache wakes only those hosts' long polls
//!   and marks them changed at the batch's revision
//!   ([`FanoutIndex::changed_at`]). A heartbeat (which changes nothing a
//!   desired state holds) wakes nobody; an ENI wakes its host and the hosts
//!   of its VPC; a rule wakes the hosts using its group; a NAT gateway (or
//!   its elastic IP) wakes its host and the hosts of its VPC, and counts
//!   as its host's presence in the VPC, as an attached ENI does.
//! - **what one host's state is made of.** [`crate::desired::compute`]
//!   reads one host's instances, ENIs, VPCs and groups through the index
//!   instead of scanning every object of the fleet.
//!
//! So the cost of a change grows with the hosts it touches, not with the
//! fleet. The rules here mirror what `compute` reads; a test checks, over
//! changes of every kind, that every host whose computed state changed was
//! among those the index woke.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use evnet_model::*;
use evnet_store::Revision;

/// An object that feeds desired states, before or after a change.
#[derive(Debug, Clone)]
pub enum Obj {
    Host(Arc<Host>),
    Instance(Arc<Instance>),
    Eni(Arc<Eni>),
    Vpc(Arc<Vpc>),
    Subnet(Arc<Subnet>),
    SecurityGroup(Arc<SecurityGroup>),
    RouteTable(Arc<RouteTable>),
    Peering(Arc<Peering>),
    /// Shown by the host of the ENI it is associated with; fed into the
    /// state of the NAT gateway holding it (its public address).
    ElasticIp(Arc<ElasticIp>),
    /// Decides whether routes to it forward, on its VPC's hosts.
    InternetGateway(Arc<InternetGateway>),
    NatGateway(Arc<NatGateway>),
}

type Ids = BTreeSet<String>;
type Counts = HashMap<String, usize>;

/// Secondary indexes of the snapshot by host, VPC and group, and the hosts
/// touched by the events applied since the last [`FanoutIndex::finish`].
#[derive(Debug, Default)]
pub struct FanoutIndex {
    /// Host → the ENIs attached there.
    pub(crate) enis_by_host: HashMap<String, Ids>,
    /// VPC → its attached ENIs (any host).
    pub(crate) attached_by_vpc: HashMap<String, Ids>,
    /// VPC → host → how many of the VPC's ENIs are attached there.
    vpc_hosts: HashMap<String, Counts>,
    /// Host → VPC → the same counts, the other way round.
    host_vpcs: HashMap<String, Counts>,
    /// Group → every ENI (attached or not) in it: its members.
    pub(crate) enis_by_group: HashMap<String, Ids>,
    /// Group → host → how many attached ENIs there are in the group.
    group_hosts: HashMap<String, Counts>,
    /// Group → the groups whose rules name it as their source.
    referrers: HashMap<String, Ids>,
    pub(crate) instances_by_host: HashMap<String, Ids>,
    pub(crate) subnets_by_vpc: HashMap<String, Ids>,
    pub(crate) route_tables_by_vpc: HashMap<String, Ids>,
    pub(crate) peerings_by_vpc: HashMap<String, Ids>,
    /// ENI → the elastic IPs associated with it.
    pub(crate) eips_by_eni: HashMap<String, Ids>,
    /// ENI → the host it is attached to.
    host_of_eni: HashMap<String, String>,
    /// VPC → the VPCs it has peerings with (any status) → how many: a
    /// VPC's hosts show its peers' ENIs.
    peers_of_vpc: HashMap<String, Counts>,
    /// Host → the NAT gateways placed there.
    pub(crate) nats_by_host: HashMap<String, Ids>,
    /// VPC → its NAT gateways (any host).
    pub(crate) nats_by_vpc: HashMap<String, Ids>,
    /// NAT gateway → (host, VPC): whom its elastic IP's changes touch.
    nat_place: HashMap<String, (String, String)>,
    pending: HashSet<String>,
    changed_at: HashMap<String, Revision>,
    listed_at: Revision,
}

fn add(map: &mut HashMap<String, Ids>, key: &str, id: &str) {
    map.entry(key.to_string()).or_default().insert(id.to_string());
}

fn remove(map: &mut HashMap<String, Ids>, key: &str, id: &str) {
    if let Some(s) = map.get_mut(key) {
        s.remove(id);
        if s.is_empty() {
            map.remove(key);
        }
    }
}

fn count(map: &mut HashMap<String, Counts>, a: &str, b: &str, up: bool) {
    if up {
        *map.entry(a.to_string()).or_default().entry(b.to_string()).or_default() += 1;
    } else if let Some(m) = map.get_mut(a) {
        if let Some(n) = m.get_mut(b) {
            *n -= 1;
            if *n == 0 {
                m.remove(b);
            }
        }
        if m.is_empty() {
            map.remove(a);
        }
    }
}

fn rule_sources(sg: &SecurityGroup) -> impl Iterator<Item = &str> {
    sg.ingress.iter().chain(&sg.egress).filter_map(|r| r.source_group_id.as_deref())
}

impl FanoutIndex {
    /// The revision at which `host`'s desired state last may have changed:
    /// the last batch that touched it, or the cache's last full list.
    pub fn changed_at(&self, host: &str) -> Revision {
        self.changed_at.get(host).copied().unwrap_or(self.listed_at).max(self.listed_at)
    }

    /// After a full list at `revision`: every host counts as changed then.
    pub fn listed(&mut self, revision: Revision) {
        self.listed_at = revision;
        self.changed_at.clear();
        self.pending.clear();
    }

    /// Ends a batch of events at `revision`: the hosts it touched, now
    /// marked changed at `revision`.
    pub fn finish(&mut self, revision: Revision) -> Vec<String> {
        let touched: Vec<String> = self.pending.drain().collect();
        for h in &touched {
            self.changed_at.insert(h.clone(), revision);
        }
        touched
    }

    /// The hosts whose desired state shows VPC `vpc`.
    pub fn hosts_of_vpc(&self, vpc: &str) -> impl Iterator<Item = &String> {
        self.vpc_hosts.get(vpc).into_iter().flat_map(|m| m.keys())
    }

    /// The hosts whose desired state shows group `g`: those with a member
    /// attached, and those with a member of a group whose rules name `g`.
    pub fn hosts_of_group(&self, g: &str) -> impl Iterator<Item = &String> {
        let direct = self.group_hosts.get(g).into_iter().flat_map(|m| m.keys());
        let via = self
            .referrers
            .get(g)
            .into_iter()
            .flatten()
            .flat_map(|r| self.group_hosts.get(r).into_iter().flat_map(|m| m.keys()));
        direct.chain(via)
    }

    /// Touches the hosts of `vpc` alone (for what only they show: its
    /// subnets and route tables).
    fn touch_own_vpc(&mut self, vpc: &str) {
        let hosts: Vec<String> = self.hosts_of_vpc(vpc).cloned().collect();
        self.pending.extend(hosts);
    }

    /// Touches the hosts showing `vpc`: its own, and those of the VPCs
    /// peered with it (they show its ENIs and VNI).
    fn touch_vpc(&mut self, vpc: &str) {
        let peers = self.peers_of_vpc.get(vpc).into_iter().flat_map(|m| m.keys());
        let hosts: Vec<String> = std::iter::once(vpc).chain(peers.map(String::as_str)).flat_map(|v| self.hosts_of_vpc(v)).cloned().collect();
        self.pending.extend(hosts);
    }

    /// Touches the host `eni` is attached to, if it is.
    fn touch_host_of_eni(&mut self, eni: &str) {
        if let Some(h) = self.host_of_eni.get(eni) {
            self.pending.insert(h.clone());
        }
    }

    fn touch_group(&mut self, g: &str) {
        let hosts: Vec<String> = self.hosts_of_group(g).cloned().collect();
        self.pending.extend(hosts);
    }

    fn touch_eni(&mut self, e: &Eni) {
        if let Some(a) = &e.attachment {
            self.pending.insert(a.host_id.clone());
            self.touch_vpc(&e.vpc_id);
        }
        for g in &e.security_group_ids {
            self.touch_group(g);
        }
    }

    fn index_nat(&mut self, n: &NatGateway, up: bool) {
        let set = if up { add } else { remove };
        set(&mut self.nats_by_host, &n.host_id, &n.id);
        set(&mut self.nats_by_vpc, &n.vpc_id, &n.id);
        count(&mut self.vpc_hosts, &n.vpc_id, &n.host_id, up);
        count(&mut self.host_vpcs, &n.host_id, &n.vpc_id, up);
        if up {
            self.nat_place.insert(n.id.clone(), (n.host_id.clone(), n.vpc_id.clone()));
        } else {
            self.nat_place.remove(&n.id);
        }
    }

    fn touch_nat(&mut self, host: &str, vpc: &str) {
        self.pending.insert(host.to_string());
        self.touch_vpc(vpc);
    }

    /// An elastic IP feeds the state of the NAT gateway holding it.
    fn touch_eip(&mut self, e: &ElasticIp) {
        let nat = e.association.as_ref().and_then(|a| a.nat_gateway_id.as_deref());
        if let Some((host, vpc)) = nat.and_then(|n| self.nat_place.get(n)).cloned() {
            self.touch_nat(&host, &vpc);
        }
    }

    fn index_eni(&mut self, e: &Eni, up: bool) {
        let set = if up { add } else { remove };
        for g in &e.security_group_ids {
            set(&mut self.enis_by_group, g, &e.id);
        }
        if let Some(a) = &e.attachment {
            if up {
                self.host_of_eni.insert(e.id.clone(), a.host_id.clone());
            } else {
                self.host_of_eni.remove(&e.id);
            }
            set(&mut self.enis_by_host, &a.host_id, &e.id);
            set(&mut self.attached_by_vpc, &e.vpc_id, &e.id);
            count(&mut self.vpc_hosts, &e.vpc_id, &a.host_id, up);
            count(&mut self.host_vpcs, &a.host_id, &e.vpc_id, up);
            for g in &e.security_group_ids {
                count(&mut self.group_hosts, g, &a.host_id, up);
            }
        }
    }

    fn index_group(&mut self, sg: &SecurityGroup, up: bool) {
        let set = if up { add } else { remove };
        for src in rule_sources(sg).map(str::to_string).collect::<Vec<_>>() {
            set(&mut self.referrers, &src, &sg.id);
        }
    }

    /// Records one object changing from `old` to `new` (either absent for
    /// a create or a delete; both the same kind otherwise).
    pub fn change(&mut self, old: Option<Obj>, new: Option<Obj>) {
        if let (None, Some(Obj::Host(h))) | (Some(Obj::Host(h)), _) = (&old, &new) {
            let new_host = match &new {
                Some(Obj::Host(n)) => Some(n),
                _ => None,
            };
            let old_host = match &old {
                Some(Obj::Host(o)) => Some(o),
                _ => None,
            };
            self.host_changed(&h.id, old_host.map(|o| &**o), new_host.map(|n| &**n));
            return;
        }
        if let Some(o) = &old {
            self.unindex(o);
        }
        if let Some(n) = &new {
            self.reindex(n);
        }
    }

    /// A host's own record: it shows its name, address and NIC speed; the
    /// hosts of its VPCs show its address beside its ENIs. A heartbeat
    /// (liveness, the generation applied) changes nothing any of them shows.
    fn host_changed(&mut self, id: &str, old: Option<&Host>, new: Option<&Host>) {
        let (address, own) = match (old, new) {
            (Some(o), Some(n)) => (o.underlay_ip != n.underlay_ip, o.name != n.name || o.nic_mbps != n.nic_mbps),
            _ => (true, true),
        };
        if address || own {
            self.pending.insert(id.to_string());
        }
        if address {
            let vpcs: Vec<String> = self.host_vpcs.get(id).map(|m| m.keys().cloned().collect()).unwrap_or_default();
            for v in vpcs {
                self.touch_vpc(&v);
            }
        }
    }

    /// Touches what `o` fed and takes it out of the indexes.
    fn unindex(&mut self, o: &Obj) {
        match o {
            Obj::Eni(e) => {
                self.touch_eni(e);
                self.index_eni(e, false);
            }
            Obj::Instance(i) => {
                self.pending.insert(i.host_id.clone());
                remove(&mut self.instances_by_host, &i.host_id, &i.id);
            }
            Obj::Host(_) => {}
            Obj::Vpc(v) => self.touch_vpc(&v.id),
            Obj::Subnet(s) => {
                self.touch_own_vpc(&s.vpc_id);
                remove(&mut self.subnets_by_vpc, &s.vpc_id, &s.id);
            }
            Obj::SecurityGroup(g) => {
                self.touch_group(&g.id);
                self.index_group(g, false);
            }
            Obj::RouteTable(r) => {
                self.touch_own_vpc(&r.vpc_id);
                remove(&mut self.route_tables_by_vpc, &r.vpc_id, &r.id);
            }
            Obj::ElasticIp(x) => {
                if let Some(eni) = x.association.as_ref().and_then(|a| a.eni_id.as_deref()) {
                    self.touch_host_of_eni(eni);
                    remove(&mut self.eips_by_eni, eni, &x.id);
                }
                self.touch_eip(x);
            }
            Obj::InternetGateway(g) => self.touch_own_vpc(&g.vpc_id),
            Obj::Peering(p) => {
                self.touch_vpc(&p.vpc_a);
                self.touch_vpc(&p.vpc_b);
                remove(&mut self.peerings_by_vpc, &p.vpc_a, &p.id);
                remove(&mut self.peerings_by_vpc, &p.vpc_b, &p.id);
                count(&mut self.peers_of_vpc, &p.vpc_a, &p.vpc_b, false);
                count(&mut self.peers_of_vpc, &p.vpc_b, &p.vpc_a, false);
            }
            Obj::NatGateway(n) => {
                self.touch_nat(&n.host_id, &n.vpc_id);
                self.index_nat(n, false);
            }
        }
    }

    /// Puts `n` into the indexes and touches what it feeds.
    fn reindex(&mut self, n: &Obj) {
        match n {
            Obj::Eni(e) => {
                self.index_eni(e, true);
                self.touch_eni(e);
            }
            Obj::Instance(i) => {
                add(&mut self.instances_by_host, &i.host_id, &i.id);
                self.pending.insert(i.host_id.clone());
            }
            Obj::Host(_) => {}
            Obj::Vpc(v) => self.touch_vpc(&v.id),
            Obj::Subnet(s) => {
                add(&mut self.subnets_by_vpc, &s.vpc_id, &s.id);
                self.touch_own_vpc(&s.vpc_id);
            }
            Obj::SecurityGroup(g) => {
                self.index_group(g, true);
                self.touch_group(&g.id);
            }
            Obj::RouteTable(r) => {
                add(&mut self.route_tables_by_vpc, &r.vpc_id, &r.id);
                self.touch_own_vpc(&r.vpc_id);
            }
            Obj::ElasticIp(x) => {
                if let Some(eni) = x.association.as_ref().and_then(|a| a.eni_id.as_deref()) {
                    add(&mut self.eips_by_eni, eni, &x.id);
                    self.touch_host_of_eni(eni);
                }
                self.touch_eip(x);
            }
            Obj::InternetGateway(g) => self.touch_own_vpc(&g.vpc_id),
            Obj::Peering(p) => {
                add(&mut self.peerings_by_vpc, &p.vpc_a, &p.id);
                add(&mut self.peerings_by_vpc, &p.vpc_b, &p.id);
                count(&mut self.peers_of_vpc, &p.vpc_a, &p.vpc_b, true);
                count(&mut self.peers_of_vpc, &p.vpc_b, &p.vpc_a, true);
                self.touch_vpc(&p.vpc_a);
                self.touch_vpc(&p.vpc_b);
            }
            Obj::NatGateway(n) => {
                self.index_nat(n, true);
                self.touch_nat(&n.host_id, &n.vpc_id);
            }
        }
    }
}
