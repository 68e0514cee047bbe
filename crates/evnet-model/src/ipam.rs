//! CIDR rules and IP address management.
//!
//! As in AWS, a subnet reserves its first four addresses (the network, the
//! gateway at network + 1, and two spares) and its last (broadcast), so a /28
//! holds 11 ENI addresses. [`IpPool`] is the exact bookkeeping of one subnet:
//! it never hands out an address twice and its free count is always exact.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::ModelError;

/// Smallest VPC prefix length (largest VPC).
pub const VPC_MIN_PREFIX: u8 = 16;
/// Largest VPC or subnet prefix length (smallest block).
pub const MAX_PREFIX: u8 = 28;
/// Addresses reserved at the start of every subnet.
pub const RESERVED_HEAD: u32 = 4;
/// Addresses reserved at the end of every subnet.
pub const RESERVED_TAIL: u32 = 1;

/// Parses an IPv4 CIDR block and insists it is written by its network
/// address (`10.0.0.0/16`, not `10.0.0.1/16`).
pub fn parse_cidr(text: &str) -> Result<Ipv4Net, ModelError> {
    let net: Ipv4Net = text.parse().map_err(|_| {
        ModelError::invalid("invalid_cidr", format!("`{text}` is not an IPv4 CIDR block like 10.0.0.0/16"))
    })?;
    if net.network() != net.addr() {
        return Err(ModelError::invalid(
            "invalid_cidr",
            format!("`{text}` has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

/// Checks a VPC's CIDR block: IPv4, /16 to /28.
pub fn check_vpc_cidr(net: Ipv4Net) -> Result<(), ModelError> {
    if !(VPC_MIN_PREFIX..=MAX_PREFIX).contains(&net.prefix_len()) {
        return Err(ModelError::invalid(
            "invalid_cidr",
            format!("a VPC's CIDR block must be between /16 and /28, got /{}", net.prefix_len()),
        ));
    }
    Ok(())
}

/// Checks a subnet's block on its own: /28 or larger.
pub fn check_subnet_prefix(net: Ipv4Net) -> Result<(), ModelError> {
    if net.prefix_len() > MAX_PREFIX {
        return Err(ModelError::invalid(
            "invalid_cidr",
            format!("a subnet's CIDR block must be /{MAX_PREFIX} or larger, got /{}", net.prefix_len()),
        ));
    }
    Ok(())
}

/// Checks a subnet's CIDR block against its VPC and its siblings.
pub fn check_subnet_cidr(net: Ipv4Net, vpc: Ipv4Net, siblings: &[Ipv4Net]) -> Result<(), ModelError> {
    check_subnet_prefix(net)?;
    if !vpc.contains(&net) {
        return Err(ModelError::invalid(
            "subnet_not_in_vpc",
            format!("subnet {net} is not inside the VPC's CIDR block {vpc}"),
        ));
    }
    if let Some(other) = siblings.iter().find(|s| overlaps(**s, net)) {
        return Err(ModelError::conflict(
            "subnet_overlap",
            format!("subnet {net} overlaps subnet {other} of the same VPC; choose a free block"),
        ));
    }
    Ok(())
}

/// True when two blocks share at least one address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The gateway address of a subnet: network + 1.
pub fn gateway(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// The first and last addresses an ENI may hold in `net`.
pub fn usable_range(net: Ipv4Net) -> (u32, u32) {
    let first = u32::from(net.network()) + RESERVED_HEAD;
    let last = u32::from(net.broadcast()) - RESERVED_TAIL;
    (first, last)
}

/// How many ENI addresses `net` holds.
pub fn capacity(net: Ipv4Net) -> u32 {
    let (first, last) = usable_range(net);
    last + 1 - first
}

/// Checks that `ip` may be given to an ENI in `net`.
pub fn check_assignable(net: Ipv4Net, ip: Ipv4Addr) -> Result<(), ModelError> {
    if !net.contains(&ip) {
        return Err(ModelError::invalid("ip_not_in_subnet", format!("{ip} is not inside subnet {net}")));
    }
    let (first, last) = usable_range(net);
    let n = u32::from(ip);
    if n < first || n > last {
        return Err(ModelError::invalid(
            "ip_reserved",
            format!(
                "{ip} is reserved in subnet {net}; ENI addresses run from {} to {}",
                Ipv4Addr::from(first),
                Ipv4Addr::from(last)
            ),
        ));
    }
    Ok(())
}

/// The addresses in use in one subnet (or one external network's
/// allocation pool, [`IpPool::with_range`]), with exact free counts.
#[derive(Debug, Clone)]
pub struct IpPool {
    net: Ipv4Net,
    /// The first and last address the pool hands out.
    first: u32,
    last: u32,
    used: BTreeSet<u32>,
    /// Where the next search for a free address starts, so addresses are not
    /// reused right after they are freed.
    cursor: u32,
}

impl IpPool {
    /// A subnet's pool: its addresses but the reserved ones.
    pub fn new(net: Ipv4Net) -> Self {
        let (first, last) = usable_range(net);
        Self { net, first, last, used: BTreeSet::new(), cursor: first }
    }

    /// A pool of the addresses `first..=last` of `net` (an external
    /// network's allocation pool, which the caller has checked lies in it).
    pub fn with_range(net: Ipv4Net, first: Ipv4Addr, last: Ipv4Addr) -> Self {
        let (first, last) = (u32::from(first), u32::from(last));
        Self { net, first, last, used: BTreeSet::new(), cursor: first }
    }

    /// The first and last address the pool hands out.
    pub fn range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (Ipv4Addr::from(self.first), Ipv4Addr::from(self.last))
    }

    /// Whether the pool hands out `ip`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    pub fn capacity(&self) -> u32 {
        self.last + 1 - self.first
    }

    pub fn used_count(&self) -> u32 {
        self.used.len() as u32
    }

    pub fn free_count(&self) -> u32 {
        self.capacity() - self.used_count()
    }

    pub fn is_used(&self, ip: Ipv4Addr) -> bool {
        self.used.contains(&u32::from(ip))
    }

    /// Takes the next free address after the cursor, wrapping around.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, ModelError> {
        let ip = self.peek_free().ok_or_else(|| self.exhausted())?;
        self.used.insert(u32::from(ip));
        self.cursor = u32::from(ip) + 1;
        Ok(ip)
    }

    /// The address [`IpPool::allocate`] would take, without taking it.
    pub fn peek_free(&self) -> Option<Ipv4Addr> {
        let (first, last) = (self.first, self.last);
        if self.used_count() >= self.capacity() {
            return None;
        }
        let start = if self.cursor > last || self.cursor < first { first } else { self.cursor };
        // Walk the gaps between used addresses from `start`, then from `first`.
        let scan = |from: u32, to: u32| -> Option<u32> {
            let mut candidate = from;
            for &u in self.used.range(from..=to) {
                if u != candidate {
                    return Some(candidate);
                }
                candidate = u + 1;
            }
            (candidate <= to).then_some(candidate)
        };
        scan(start, last).or_else(|| if start > first { scan(first, start - 1) } else { None }).map(Ipv4Addr::from)
    }

    /// Takes a specific address.
    pub fn allocate_specific(&mut self, ip: Ipv4Addr) -> Result<(), ModelError> {
        if !self.contains(ip) {
            check_assignable(self.net, ip)?;
            return Err(ModelError::invalid("ip_reserved", format!("{ip} is not in the pool {}-{}", Ipv4Addr::from(self.first), Ipv4Addr::from(self.last))));
        }
        if !self.used.insert(u32::from(ip)) {
            return Err(ModelError::conflict("ip_in_use", format!("{ip} is already in use in subnet {}", self.net)));
        }
        self.cursor = self.cursor.max(u32::from(ip) + 1);
        Ok(())
    }

    /// Free addresses in the order [`IpPool::allocate`] would hand them out:
    /// from the cursor to the end, then from the start.
    pub fn free_iter(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (first, last) = (self.first, self.last);
        let start = if self.cursor > last || self.cursor < first { first } else { self.cursor };
        (start..=last).chain(first..start).filter(|n| !self.used.contains(n)).map(Ipv4Addr::from)
    }

    /// Gives an address back; true when it was in use.
    pub fn free(&mut self, ip: Ipv4Addr) -> bool {
        self.used.remove(&u32::from(ip))
    }

    fn exhausted(&self) -> ModelError {
        ModelError::conflict(
            "subnet_exhausted",
            format!(
                "subnet {} has no free address left ({} of {} in use); free an address or use another subnet",
                self.net,
                self.used_count(),
                self.capacity()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        parse_cidr(s).unwrap()
    }

    #[test]
    fn slash_28_holds_eleven() {
        let mut pool = IpPool::new(net("10.0.0.0/28"));
        assert_eq!(pool.capacity(), 11);
        let mut got = vec![];
        while let Ok(ip) = pool.allocate() {
            got.push(ip);
        }
        assert_eq!(got.len(), 11);
        assert_eq!(got[0], Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(got[10], Ipv4Addr::new(10, 0, 0, 14));
        assert_eq!(pool.allocate().unwrap_err().code, "subnet_exhausted");
        assert_eq!(gateway(net("10.0.0.0/28")), Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn cidr_rules() {
        assert!(parse_cidr("10.0.0.1/16").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
        assert!(check_vpc_cidr(net("10.0.0.0/15")).is_err());
        assert!(check_vpc_cidr(net("10.0.0.0/16")).is_ok());
        assert!(check_vpc_cidr(net("10.0.0.0/28")).is_ok());
        assert!(check_vpc_cidr(net("10.0.0.0/29")).is_err());
        let vpc = net("10.0.0.0/16");
        assert!(check_subnet_cidr(net("10.0.1.0/24"), vpc, &[net("10.0.0.0/24")]).is_ok());
        assert_eq!(
            check_subnet_cidr(net("10.0.0.0/25"), vpc, &[net("10.0.0.0/24")]).unwrap_err().code,
            "subnet_overlap"
        );
        assert_eq!(check_subnet_cidr(net("10.1.0.0/24"), vpc, &[]).unwrap_err().code, "subnet_not_in_vpc");
        assert!(check_subnet_cidr(net("10.0.0.0/29"), vpc, &[]).is_err());
    }

    #[test]
    fn specific_addresses() {
        let mut pool = IpPool::new(net("10.0.0.0/24"));
        assert_eq!(pool.allocate_specific(Ipv4Addr::new(10, 0, 0, 1)).unwrap_err().code, "ip_reserved");
        assert_eq!(pool.allocate_specific(Ipv4Addr::new(10, 0, 0, 255)).unwrap_err().code, "ip_reserved");
        assert_eq!(pool.allocate_specific(Ipv4Addr::new(10, 0, 1, 5)).unwrap_err().code, "ip_not_in_subnet");
        pool.allocate_specific(Ipv4Addr::new(10, 0, 0, 4)).unwrap();
        assert_eq!(pool.allocate_specific(Ipv4Addr::new(10, 0, 0, 4)).unwrap_err().code, "ip_in_use");
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(10, 0, 0, 5));
    }

    #[test]
    fn a_range_pool_hands_out_its_range_only() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let mut pool = IpPool::with_range(net("203.0.113.0/24"), ip("203.0.113.10"), ip("203.0.113.12"));
        assert_eq!((pool.capacity(), pool.range()), (3, (ip("203.0.113.10"), ip("203.0.113.12"))));
        pool.allocate_specific(ip("203.0.113.11")).unwrap();
        assert_eq!(pool.allocate_specific(ip("203.0.113.13")).unwrap_err().code, "ip_reserved");
        assert_eq!(pool.allocate_specific(ip("198.51.100.1")).unwrap_err().code, "ip_not_in_subnet");
        assert_eq!(pool.free_iter().collect::<Vec<_>>(), [ip("203.0.113.12"), ip("203.0.113.10")]);
        assert_eq!(pool.allocate().unwrap(), ip("203.0.113.12"));
        assert_eq!(pool.allocate().unwrap(), ip("203.0.113.10"));
        assert!(pool.allocate().is_err() && pool.free_count() == 0 && pool.peek_free().is_none());
        assert!(pool.free(ip("203.0.113.11")) && pool.free_count() == 1);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Alloc,
        AllocAt(u8),
        Free(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![Just(Step::Alloc), any::<u8>().prop_map(Step::AllocAt), any::<usize>().prop_map(Step::Free)]
    }

    proptest! {
        /// Never a duplicate address; the free count is exact after any
        /// sequence of allocations and frees.
        #[test]
        fn never_duplicates_and_counts_exactly(prefix in 24u8..=28, steps in prop::collection::vec(step(), 0..300)) {
            let n = Ipv4Net::new(Ipv4Addr::new(10, 9, 0, 0), prefix).unwrap();
            let mut pool = IpPool::new(n);
            let mut held: Vec<Ipv4Addr> = vec![];
            for s in steps {
                match s {
                    Step::Alloc => match pool.allocate() {
                        Ok(ip) => {
                            prop_assert!(!held.contains(&ip), "{ip} handed out twice");
                            prop_assert!(check_assignable(n, ip).is_ok());
                            held.push(ip);
                        }
                        Err(e) => {
                            prop_assert_eq!(e.code, "subnet_exhausted");
                            prop_assert_eq!(held.len() as u32, pool.capacity());
                        }
                    },
                    Step::AllocAt(b) => {
                        let ip = Ipv4Addr::from(u32::from(n.network()) + (b as u32 % (1 << (32 - prefix))));
                        match pool.allocate_specific(ip) {
                            Ok(()) => { prop_assert!(!held.contains(&ip)); held.push(ip); }
                            Err(e) => prop_assert!(held.contains(&ip) || check_assignable(n, ip).is_err(), "{e}"),
                        }
                    }
                    Step::Free(i) => {
                        if !held.is_empty() {
                            let ip = held.swap_remove(i % held.len());
                            prop_assert!(pool.free(ip));
                            prop_assert!(!pool.free(ip));
                        }
                    }
                }
                prop_assert_eq!(pool.used_count() as usize, held.len());
                prop_assert_eq!(pool.free_iter().count() as u32, pool.free_count());
                prop_assert_eq!(pool.free_iter().next(), pool.peek_free());
                prop_assert_eq!(pool.free_count(), pool.capacity() - held.len() as u32);
            }
        }
    }
}
