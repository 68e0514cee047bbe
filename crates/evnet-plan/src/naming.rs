//! Deterministic names for every kernel object evnet creates.
//!
//! Link names are at most 15 bytes (`IFNAMSIZ - 1`) and start with `ev`, so
//! `ip link` shows what is evnet's; inside instance namespaces (which evnet
//! owns wholly) the instance's devices are `eth<device_index>`. Namespace
//! names carry a tag derived from the host id, because several lab hosts
//! share one machine and each agent must recognise (and clean up) only its own.

/// Every link evnet owns outside instance namespaces starts with this.
pub const LINK_PREFIX: &str = "ev";
/// Prefix of the VPC routing-domain namespaces.
pub const VPC_NETNS_PREFIX: &str = "evv-";
/// Prefix of instance namespaces named by [`instance_netns`].
pub const INSTANCE_NETNS_PREFIX: &str = "evi-";
/// Prefix of NAT gateway namespaces named by [`nat_netns`].
pub const NAT_NETNS_PREFIX: &str = "evn-";
/// Longest interface name the kernel accepts.
pub const MAX_IFNAME_LEN: usize = 15;
/// Name of evnet's nftables tables (one `arp`, one `inet`) per namespace.
pub const NFT_TABLE: &str = "evnet";

/// FNV-1a, 64 bits: a stable hash for ids that are not in the usual
/// `kind-<hex>` shape.
fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `n` (≤ 16) lowercase hex characters identifying `id`: the end of its
/// random part when the id is `kind-<hex>`, else a hash of the whole id.
pub fn id_hex(id: &str, n: usize) -> String {
    let n = n.min(16);
    let suffix = id.rsplit('-').next().unwrap_or(id);
    if suffix.len() >= n && suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
        suffix[suffix.len() - n..].to_ascii_lowercase()
    } else {
        format!("{:016x}", fnv64(id))[..n].to_string()
    }
}

/// The 8-hex-digit tag of a host, used in its namespace names.
pub fn host_tag(host_id: &str) -> String {
    id_hex(host_id, 8)
}

/// The namespace holding a VPC's routing domain on a host.
pub fn vpc_netns(host_id: &str, vni: u32) -> String {
    format!("{VPC_NETNS_PREFIX}{}-{vni:x}", host_tag(host_id))
}

/// The namespace of an instance on a host. The server should name
/// instances' namespaces with this, so the agent can recognise them as its
/// own after a crash and delete them when the instance goes away.
pub fn instance_netns(host_id: &str, instance_id: &str) -> String {
    format!("{INSTANCE_NETNS_PREFIX}{}-{}", host_tag(host_id), id_hex(instance_id, 16))
}

/// The namespace of a NAT gateway on a host (evnet's own, like an
/// instance's: made and removed by the agent).
pub fn nat_netns(host_id: &str, nat_id: &str) -> String {
    format!("{NAT_NETNS_PREFIX}{}-{}", host_tag(host_id), id_hex(nat_id, 16))
}

/// A NAT gateway's outer leg in its namespace (`evo<10 hex>`, 13 bytes): a
/// macvlan on the host's device on the external network.
pub fn nat_outer(nat_id: &str) -> String {
    format!("evo{}", id_hex(nat_id, 10))
}

/// Whether the namespace `name` belongs to host `host_id` by its name.
pub fn owned_netns(name: &str, host_id: &str) -> bool {
    let tag = host_tag(host_id);
    [VPC_NETNS_PREFIX, INSTANCE_NETNS_PREFIX, NAT_NETNS_PREFIX]
        .iter()
        .any(|p| name.strip_prefix(p).and_then(|r| r.strip_prefix(tag.as_str())).is_some_and(|r| r.starts_with('-')))
}

/// Whether a namespace name looks like evnet's (any host's); the kernel
/// layer observes these.
/// Whether a desired namespace is another program's, given by path (a
/// `container` instance's): evnet never makes or deletes it and manages in
/// it only the devices it put there.
pub fn is_foreign_netns(name: &str) -> bool {
    name.starts_with('/')
}

pub fn is_evnet_netns(name: &str) -> bool {
    name.starts_with(LINK_PREFIX)
}

/// The VPC's VXLAN device (`evx<vni hex>`, at most 9 bytes).
/// The host's one collect_md VXLAN device on the tc-BPF data plane.
pub const FAST_PATH_VXLAN: &str = "evx0";

/// The tc-BPF data plane's device in the host namespace holding instance
/// metadata's address (169.254.169.254/32), so what the ENI program hands
/// to the host's stack is delivered locally (an IFB device: it only holds
/// the address).
pub const METADATA_DEVICE: &str = "evmd0";

/// Whether a host-namespace link is evnet's: a VXLAN (`evx…`), an ENI's
/// host-side device (`eve…`, `evt…`) or the metadata device (`evmd0`).
/// Nothing else in the host namespace is touched.
pub fn is_owned_host_link(name: &str) -> bool {
    name.starts_with("evx") || is_eni_host_device(name) || name == METADATA_DEVICE
}

pub fn vxlan_name(vni: u32) -> String {
    format!("evx{vni:x}")
}

/// The prefix of [`eni_veth`] names.
pub const ENI_VETH_PREFIX: &str = "eve";

/// The VPC-side end of an ENI's veth pair (`eve<10 hex>`, 13 bytes).
pub fn eni_veth(eni_id: &str) -> String {
    format!("{ENI_VETH_PREFIX}{}", id_hex(eni_id, 10))
}

/// Whether `name` is the VPC-side end of an ENI's veth pair.
pub fn is_eni_veth(name: &str) -> bool {
    name.len() == ENI_VETH_PREFIX.len() + 10 && name.starts_with(ENI_VETH_PREFIX)
}

/// The prefix of [`eni_tap`] names.
pub const ENI_TAP_PREFIX: &str = "evt";

/// A `vm` instance's ENI: a tap device in the host namespace that the VM
/// monitor opens (`evt<10 hex>`, 13 bytes).
pub fn eni_tap(eni_id: &str) -> String {
    format!("{ENI_TAP_PREFIX}{}", id_hex(eni_id, 10))
}

/// Whether `name` is a `vm` instance's ENI tap.
pub fn is_eni_tap(name: &str) -> bool {
    name.len() == ENI_TAP_PREFIX.len() + 10 && name.starts_with(ENI_TAP_PREFIX)
}

/// Whether `name` is an ENI's device in the host namespace on the tc-BPF
/// data plane: a veth's host end (`eve…`) or a VM's tap (`evt…`). The
/// fast path's ENI program, DHCP and metadata serve exactly these.
pub fn is_eni_host_device(name: &str) -> bool {
    is_eni_veth(name) || is_eni_tap(name)
}

/// The IFB device shaping what the ENI sends (`evq<10 hex>`, 13 bytes), in
/// the VPC namespace next to [`eni_veth`].
pub fn eni_ifb(eni_id: &str) -> String {
    format!("evq{}", id_hex(eni_id, 10))
}

/// The instance-side device of the ENI at `device_index`.
pub fn instance_ifname(device_index: u32) -> String {
    format!("eth{device_index}")
}

/// The nftables set holding a security group's member addresses.
pub fn sg_set(group_id: &str) -> String {
    format!("g_{}", id_hex(group_id, 16))
}

/// A host's VTEP MAC (the same in every VNI): locally administered,
/// unicast, derived from the host id so every other host can compute it.
pub fn vtep_mac(host_id: &str) -> String {
    let h = fnv64(host_id).to_be_bytes();
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3], h[4])
}

/// Whether the kernel would accept `name` as an interface name.
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// A MAC address in canonical form (lowercase, colon-separated), or `None`
/// when `mac` is not six hex octets.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit())) {
        return None;
    }
    Some(mac.to_ascii_lowercase())
}

/// Parses a MAC into its six bytes.
pub fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let mac = normalize_mac(mac)?;
    let mut out = [0u8; 6];
    for (i, p) in mac.split(':').enumerate() {
        out[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_derived_from_ids() {
        assert_eq!(eni_veth("eni-0123456789abcdef"), "eve6789abcdef");
        assert_eq!(vxlan_name(0xffffff), "evxffffff");
        assert!(is_valid_ifname(&eni_veth("eni-not-hex-at-all-xyz")));
        assert_eq!(eni_veth("weird").len(), 13);
        assert!(is_eni_veth(&eni_veth("eni-0123456789abcdef")));
        assert!(!is_eni_veth(&eni_ifb("eni-0123456789abcdef")));
        assert!(!is_eni_veth("eve0") && !is_eni_veth("eth0") && !is_eni_veth(&vxlan_name(7)));
        assert_eq!(vpc_netns("host-a1b2c3d4e5f60718", 0x1234), "evv-e5f60718-1234");
        assert_eq!(instance_netns("host-a1b2c3d4e5f60718", "i-00112233445566ff"), "evi-e5f60718-00112233445566ff");
        assert!(!is_valid_ifname("sixteen-bytes-xx"));
        assert!(!is_valid_ifname("a/b"));
    }

    #[test]
    fn ownership_is_per_host() {
        let h1 = "host-a1b2c3d4e5f60718";
        let h2 = "host-ffffffff00000000";
        assert!(owned_netns(&vpc_netns(h1, 7), h1));
        assert!(owned_netns(&instance_netns(h1, "i-1234567890abcdef"), h1));
        assert!(owned_netns(&nat_netns(h1, "nat-1234567890abcdef"), h1) && !owned_netns(&nat_netns(h2, "nat-1234567890abcdef"), h1));
        assert!(!owned_netns(&vpc_netns(h2, 7), h1));
        assert!(!owned_netns("evv-e5f60718", h1));
        assert!(!owned_netns("other", h1));
    }

    #[test]
    fn vtep_macs_are_unicast_local_and_stable() {
        let m = vtep_mac("host-a1b2c3d4e5f60718");
        assert_eq!(m, vtep_mac("host-a1b2c3d4e5f60718"));
        assert_ne!(m, vtep_mac("host-a1b2c3d4e5f60719"));
        let b = mac_bytes(&m).unwrap();
        assert_eq!(b[0] & 0x03, 0x02);
        assert_eq!(normalize_mac("0A:BB:cc:dd:ee:ff").as_deref(), Some("0a:bb:cc:dd:ee:ff"));
        assert_eq!(normalize_mac("0a:bb:cc:dd:ee"), None);
    }
}
