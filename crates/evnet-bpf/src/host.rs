//! One host's fast path: load or adopt its programs and maps (pinned under
//! `/sys/fs/bpf/evnet/<host tag>/`), attach them to devices, update the maps.
//!
//! Pin layout:
//!
//! ```text
//! /sys/fs/bpf/evnet/<host tag>/maps/{enis,routes,hops,appliances,eips,eips_in,trust,rules,members,flows,config,stats}
//! /sys/fs/bpf/evnet/<host tag>/prog-<version>/{evnet_eni,evnet_overlay,evnet_external}
//! ```
//!
//! `<version>` is a hash of the compiled object and the load options. A
//! restarted agent finds its version's programs pinned and adopts them: no
//! load, no re-attach, the maps keep their entries, traffic does not notice.
//! A new build loads new programs that reuse the pinned maps (when their
//! layout still matches), pins them under their own version and removes the
//! older versions' pins; the older programs stay alive until their tc
//! filters are replaced by [`Dataplane::attach_eni`] and
//! [`Dataplane::attach_overlay`].

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{
    MapCore, MapFlags, MapHandle, ObjectBuilder, ProgramHandle, TC_INGRESS, TcHookBuilder,
};
use sha2::{Digest, Sha256};

use crate::error::BpfError;
use crate::maps::{self, Appliance, Direction, Eip, EniEntry, Hop, HostConfig, MAP_NAMES, PairCap, PairKey, PairMeter, Reason, Route, Rule, Trust};

/// The compiled programs (`bpf/evnet.bpf.c`).
pub(crate) static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/evnet.bpf.o"));

/// Where bpffs is mounted (the standard place).
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The tc filter's handle and priority on every device evnet attaches to, so
/// that an attach replaces evnet's filter and nothing else's.
const TC_HANDLE: u32 = 0xe7;
const TC_PRIORITY: u32 = 1;

/// How the programs keep the state of admitted flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// An LRU hash of the canonical 5-tuple and VNI, with idle timeouts
    /// (TCP, UDP and ICMP echo). The default: see the crate docs.
    FlowMap,
    /// The kernel's conntrack through its kfuncs, in a zone per VPC
    /// ([`EniEntry::ct_zone`]), for TCP and UDP; ICMP still uses the map.
    KernelConntrack,
}

/// How to load a host's programs.
#[derive(Debug, Clone)]
pub struct Options {
    pub flow_state: FlowState,
    /// Capacity of the flow map (least recently used entries are evicted).
    pub flow_entries: u32,
    /// The network namespace the host's devices live in (`None`: the
    /// caller's). tc filters are attached from a thread inside it.
    pub netns: Option<PathBuf>,
    /// The bpffs directory that holds `evnet/<host tag>/` (default
    /// [`BPFFS`]).
    pub bpffs: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            flow_state: FlowState::FlowMap,
            flow_entries: 65536,
            netns: None,
            bpffs: PathBuf::from(BPFFS),
        }
    }
}

/// What [`Dataplane::load_or_adopt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The programs were already pinned under this version: nothing loaded.
    pub adopted: bool,
    /// The version directory's name part.
    pub version: String,
    /// Maps that were pinned before and kept their entries.
    pub reused_maps: Vec<String>,
    /// Maps created now (absent, or pinned with another layout and replaced).
    pub created_maps: Vec<String>,
}

/// Which of evnet's programs a device's tc ingress runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// The ENI program of this host's current version.
    Eni,
    /// The overlay program of this host's current version.
    Overlay,
    /// The external network program of this host's current version.
    External,
    /// An evnet filter with another program (an older version's, or
    /// another host's).
    Other { prog_id: u32 },
}

/// The VNI under which [`MapContents::eips`] lists an inbound elastic IP
/// entry without its outbound half (no VNI is this large: they are 24 bits).
pub const STRAY_EIP_VNI: u32 = u32::MAX;

/// The pinned maps of one host.
#[derive(Debug)]
struct Maps {
    enis: MapHandle,
    routes: MapHandle,
    hops: MapHandle,
    appliances: MapHandle,
    eips: MapHandle,
    eips_in: MapHandle,
    trust: MapHandle,
    rules: MapHandle,
    members: MapHandle,
    flows: MapHandle,
    config: MapHandle,
    stats: MapHandle,
    pairs: PairMaps,
}

/// A host's pair maps (what its ENIs send to ENIs on other hosts, and the
/// controller's caps on it), opened by their pins: the fast path's, and
/// tools' that watch the pairs without owning the fast path.
#[derive(Debug)]
pub struct PairMaps {
    caps: MapHandle,
    meters: MapHandle,
}

impl PairMaps {
    /// The pair maps pinned under a host's directory ([`host_dir`]).
    pub fn open(dir: &Path) -> Result<PairMaps, BpfError> {
        Ok(PairMaps { caps: open_map(dir, "pair_caps")?, meters: open_map(dir, "pair_meters")? })
    }

    /// Every pair's counters.
    pub fn meters(&self) -> Result<Vec<(PairKey, PairMeter)>, BpfError> {
        Self::entries(&self.meters, "pair_meters", PairMeter::decode)
    }

    /// The caps in force, by pair.
    pub fn caps(&self) -> Result<Vec<(PairKey, PairCap)>, BpfError> {
        Self::entries(&self.caps, "pair_caps", PairCap::decode)
    }

    /// Every entry of a map keyed by pair, by key (entries that do not
    /// decode are skipped).
    fn entries<V>(m: &MapHandle, name: &'static str, decode: fn(&[u8]) -> Option<V>) -> Result<Vec<(PairKey, V)>, BpfError> {
        let mut out = vec![];
        for k in m.keys() {
            if let (Some(key), Some(v)) = (PairKey::decode(&k), lookup(m, name, &k)?.and_then(|b| decode(&b))) {
                out.push((key, v));
            }
        }
        out.sort_by_key(|p| p.0);
        Ok(out)
    }
}

/// A host's pair onsets: the program announces on `pair_onsets` (a ring
/// buffer) a pair's first packet after a quiet window (`PAIR_QUIET_NS`,
/// 50 ms), so the agent's pair meter can report it at once instead of at
/// its next read of the counters (every 25 ms). Opened by its pin; one
/// reader per host (the agent's).
pub struct PairOnsets {
    ring: libbpf_rs::RingBuffer<'static>,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _map: MapHandle,
}

impl PairOnsets {
    /// The ring buffer pinned under a host's directory ([`host_dir`]).
    pub fn open(dir: &Path) -> Result<PairOnsets, BpfError> {
        let map = open_map(dir, "pair_onsets")?;
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&map, move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                0
            })
            .map_err(|source| BpfError::Map { map: "pair_onsets", op: "ring buffer", source })?;
        let ring = builder.build().map_err(|source| BpfError::Map { map: "pair_onsets", op: "ring buffer", source })?;
        Ok(PairOnsets { ring, seen, _map: map })
    }

    /// Waits up to `timeout` for onsets: how many were announced (0: none
    /// in time). Blocking.
    pub fn wait(&self, timeout: std::time::Duration) -> Result<usize, BpfError> {
        self.ring.poll(timeout).map_err(|source| BpfError::Map { map: "pair_onsets", op: "poll", source })?;
        Ok(self.seen.swap(0, std::sync::atomic::Ordering::Relaxed))
    }
}

impl std::fmt::Debug for PairOnsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairOnsets").finish_non_exhaustive()
    }
}

/// Everything in a host's maps, read back (for observation and diffing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContents {
    pub config: Option<HostConfig>,
    /// By host-side ifindex.
    pub enis: Vec<(u32, EniEntry)>,
    /// By (VNI, address).
    pub routes: Vec<((u32, Ipv4Addr), Route)>,
    /// By (route table key, network, prefix length).
    pub hops: Vec<((u32, Ipv4Addr, u8), Hop)>,
    /// By (VNI, MAC): the appliance's host-side ifindex.
    pub appliances: Vec<((u32, [u8; 6]), u32)>,
    /// By (VNI, private address): the ENI's elastic IP (both entries
    /// present and agreeing). An inbound entry without its outbound half
    /// is listed under ([`STRAY_EIP_VNI`], its public address), so that a
    /// diff removes it.
    pub eips: Vec<((u32, Ipv4Addr), Eip)>,
    /// By (VNI, remote underlay).
    pub trust: Vec<((u32, Ipv4Addr), Trust)>,
    /// By (ifindex, direction).
    pub rules: Vec<((u32, Direction), Vec<Rule>)>,
    /// (group key, address).
    pub members: Vec<(u32, Ipv4Addr)>,
    /// How many flows are remembered.
    pub flows: usize,
}

/// One host's loaded (or adopted) fast path.
#[derive(Debug)]
pub struct Dataplane {
    dir: PathBuf,
    netns: Option<PathBuf>,
    /// The thread that makes tc requests inside `netns` (started at the
    /// first one).
    tc_thread: std::sync::OnceLock<NetnsThread>,
    eni_prog: ProgramHandle,
    overlay_prog: ProgramHandle,
    external_prog: ProgramHandle,
    maps: Maps,
    report: LoadReport,
}

/// libbpf prints the kernel's extended ack of every failed tc request;
/// three of them are expected answers here (the clsact qdisc exists
/// already; a device has no clsact or no evnet filter when queried or
/// detached) and are not printed. Everything else goes to stderr.
fn quiet_expected_tc_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    fn print(_: libbpf_rs::PrintLevel, msg: String) {
        const EXPECTED: [&str; 3] = [
            "Exclusivity flag on",
            "Parent Qdisc doesn't exists",
            "Cannot find specified filter chain",
        ];
        if !EXPECTED.iter().any(|e| msg.contains(e)) {
            eprint!("{msg}");
        }
    }
    ONCE.call_once(|| {
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, print)));
    });
}

fn check_tag(tag: &str) -> Result<(), BpfError> {
    if tag.is_empty()
        || tag.len() > 64
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(BpfError::BadHostTag(tag.to_string()));
    }
    Ok(())
}

/// Mounts bpffs at `path` unless it already is bpffs. Returns whether this
/// call mounted it (a caller never unmounts what it did not mount).
pub fn ensure_bpffs(path: &Path) -> Result<bool, BpfError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| {
        BpfError::Mount {
            path: path.into(),
            source: std::io::Error::other(e),
        }
    })?;
    // SAFETY: statfs fills the struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(false);
    }
    std::fs::create_dir_all(path).map_err(|source| BpfError::Mount {
        path: path.into(),
        source,
    })?;
    let fstype = c"bpf";
    // SAFETY: mount with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpfError::Mount {
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(true)
}

/// The directory a host's pins live in.
pub fn host_dir(bpffs: &Path, host_tag: &str) -> PathBuf {
    bpffs.join("evnet").join(host_tag)
}

/// Runs `f` on a thread inside the network namespace at `netns` (or on the
/// calling thread when `None`). setns changes only the calling thread, and
/// netlink sockets belong to the namespace they were opened in.
pub(crate) fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, BpfError> {
    let Some(path) = netns else { return Ok(f()) };
    let file = open_netns(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&file, path)?;
            Ok(f())
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// Opens the namespace file at `path` (for [`enter_netns`]).
fn open_netns(path: &Path) -> Result<std::fs::File, BpfError> {
    std::fs::File::open(path).map_err(|source| BpfError::Namespace {
        path: path.into(),
        source,
    })
}

/// Moves the calling thread into the network namespace `file` (opened
/// from `path`); setns changes only this thread.
fn enter_netns(file: &std::fs::File, path: &Path) -> Result<(), BpfError> {
    // SAFETY: setns on a valid fd; it affects the calling thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(BpfError::Namespace {
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A job for a [`NetnsThread`].
type Job = Box<dyn FnOnce() + Send>;

/// A thread that stays inside one network namespace and runs what it is
/// sent there, one job at a time. The tc requests of a host whose devices
/// are in another namespace than the agent's go through it: a thread per
/// request (setns changes only the calling thread) cost each of a
/// 1,000-ENI host's attachments a thread start and a setns. Ends when it is
/// dropped (the channel closes).
#[derive(Debug)]
struct NetnsThread {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
}

impl NetnsThread {
    fn start(path: &Path) -> Result<NetnsThread, BpfError> {
        let file = open_netns(path)?;
        let owned_path = path.to_path_buf();
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("evnet-bpf-tc".into())
            .spawn(move || {
                let entered = enter_netns(&file, &owned_path);
                drop(file);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in inbox {
                        job();
                    }
                }
            })
            .map_err(|source| BpfError::Namespace {
                path: path.into(),
                source,
            })?;
        match ready.recv() {
            Ok(entered) => entered.map(|()| NetnsThread {
                jobs: std::sync::Mutex::new(jobs),
            }),
            Err(_) => Err(BpfError::Namespace {
                path: path.into(),
                source: std::io::Error::other("the namespace thread ended at its start"),
            }),
        }
    }

    /// Runs `f` on the thread and waits for its result.
    fn run<T: Send + 'static>(&self, path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, BpfError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let gone = || BpfError::Namespace {
            path: path.into(),
            source: std::io::Error::other("the namespace thread is gone"),
        };
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())
    }
}

fn version(opts: &Options) -> String {
    let mut h = Sha256::new();
    h.update(OBJECT);
    h.update(format!("{:?}/{}", opts.flow_state, opts.flow_entries).as_bytes());
    hex::encode(&h.finalize()[..8])
}

fn open_map(dir: &Path, name: &'static str) -> Result<MapHandle, BpfError> {
    let path = dir.join("maps").join(name);
    MapHandle::from_pinned_path(&path).map_err(|e| BpfError::Pin {
        path,
        source: std::io::Error::other(e),
    })
}

fn load_err(what: &str) -> impl FnOnce(libbpf_rs::Error) -> BpfError + '_ {
    move |source| BpfError::Load {
        what: what.to_string(),
        source,
    }
}

impl Dataplane {
    /// Adopts the host's pinned programs and maps when this build's version
    /// is pinned, else loads the programs (reusing pinned maps whose layout
    /// matches) and pins them. Mounts bpffs when it is not mounted.
    pub fn load_or_adopt(host_tag: &str, opts: &Options) -> Result<Dataplane, BpfError> {
        check_tag(host_tag)?;
        quiet_expected_tc_messages();
        ensure_bpffs(&opts.bpffs)?;
        let dir = host_dir(&opts.bpffs, host_tag);
        let version = version(opts);
        let prog_dir = dir.join(format!("prog-{version}"));
        let all_pinned = ["evnet_eni", "evnet_overlay", "evnet_external"]
            .iter()
            .all(|p| prog_dir.join(p).exists())
            && MAP_NAMES.iter().all(|m| dir.join("maps").join(m).exists());
        let report = if all_pinned {
            LoadReport {
                adopted: true,
                version,
                reused_maps: MAP_NAMES.iter().map(|s| s.to_string()).collect(),
                created_maps: vec![],
            }
        } else {
            Self::load(&dir, &prog_dir, version, opts)?
        };
        let prog = |name: &str| {
            let path = prog_dir.join(name);
            ProgramHandle::from_pinned_path(&path).map_err(|e| BpfError::Pin {
                path,
                source: std::io::Error::other(e),
            })
        };
        let maps = Maps {
            enis: open_map(&dir, "enis")?,
            routes: open_map(&dir, "routes")?,
            hops: open_map(&dir, "hops")?,
            appliances: open_map(&dir, "appliances")?,
            eips: open_map(&dir, "eips")?,
            eips_in: open_map(&dir, "eips_in")?,
            trust: open_map(&dir, "trust")?,
            rules: open_map(&dir, "rules")?,
            members: open_map(&dir, "members")?,
            flows: open_map(&dir, "flows")?,
            config: open_map(&dir, "config")?,
            stats: open_map(&dir, "stats")?,
            pairs: PairMaps::open(&dir)?,
        };
        for (m, key, value) in [
            (&maps.enis, 4, EniEntry::SIZE),
            (&maps.routes, Route::KEY_SIZE, Route::SIZE),
            (&maps.hops, Hop::KEY_SIZE, Hop::SIZE),
            (&maps.appliances, Appliance::KEY_SIZE, 4),
            (&maps.eips, 8, Eip::SIZE),
            (&maps.eips_in, 4, Eip::IN_SIZE),
            (&maps.trust, 8, 4),
            (&maps.rules, 8, maps::RULES_SIZE),
            (&maps.members, 8, 1),
            (&maps.config, 4, HostConfig::SIZE),
            (&maps.pairs.caps, PairKey::SIZE, PairCap::SIZE),
            (&maps.pairs.meters, PairKey::SIZE, PairMeter::SIZE),
        ] {
            if m.key_size() as usize != key || m.value_size() as usize != value {
                return Err(BpfError::Layout {
                    map: m.name().to_string_lossy().into_owned(),
                    detail: format!(
                        "pinned key/value {}/{} bytes, this build expects {key}/{value}",
                        m.key_size(),
                        m.value_size()
                    ),
                });
            }
        }
        Ok(Dataplane {
            eni_prog: prog("evnet_eni")?,
            overlay_prog: prog("evnet_overlay")?,
            external_prog: prog("evnet_external")?,
            maps,
            dir,
            netns: opts.netns.clone(),
            tc_thread: std::sync::OnceLock::new(),
            report,
        })
    }

    fn load(
        dir: &Path,
        prog_dir: &Path,
        version: String,
        opts: &Options,
    ) -> Result<LoadReport, BpfError> {
        let maps_dir = dir.join("maps");
        std::fs::create_dir_all(&maps_dir).map_err(|source| BpfError::Pin {
            path: maps_dir.clone(),
            source,
        })?;
        // libbpf parses the ELF in place: give it an owned, heap-aligned copy.
        let bytes = OBJECT.to_vec();
        let mut open = ObjectBuilder::default()
            .open_memory(&bytes)
            .map_err(load_err("the object"))?;
        let (mut reused, mut created) = (vec![], vec![]);
        for mut m in open.maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            if name.ends_with(".rodata") {
                let v = m.initial_value_mut().ok_or_else(|| BpfError::Layout {
                    map: name.clone(),
                    detail: "no initial value".into(),
                })?;
                if v.len() != 4 {
                    return Err(BpfError::Layout {
                        map: name,
                        detail: format!("{} bytes, expected use_kernel_ct only", v.len()),
                    });
                }
                v.copy_from_slice(
                    &u32::from(opts.flow_state == FlowState::KernelConntrack).to_ne_bytes(),
                );
                continue;
            }
            if name == "flows" {
                m.set_max_entries(opts.flow_entries)
                    .map_err(load_err("flows"))?;
            }
            let pin = maps_dir.join(&name);
            if pin.exists() {
                if m.reuse_pinned_map(&pin).is_ok() {
                    reused.push(name);
                    continue;
                }
                // Another layout: replace it. Programs still attached keep
                // the old map until their filters are replaced.
                std::fs::remove_file(&pin).map_err(|source| BpfError::Pin {
                    path: pin.clone(),
                    source,
                })?;
            }
            created.push(name);
        }
        let mut obj = open.load().map_err(load_err("the programs"))?;
        for mut m in obj.maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            if created.contains(&name) {
                let pin = maps_dir.join(&name);
                m.pin(&pin).map_err(|e| BpfError::Pin {
                    path: pin,
                    source: std::io::Error::other(e),
                })?;
            }
        }
        std::fs::create_dir_all(prog_dir).map_err(|source| BpfError::Pin {
            path: prog_dir.into(),
            source,
        })?;
        for mut p in obj.progs_mut() {
            let pin = prog_dir.join(p.name());
            if pin.exists() {
                let _ = std::fs::remove_file(&pin);
            }
            p.pin(&pin).map_err(|e| BpfError::Pin {
                path: pin,
                source: std::io::Error::other(e),
            })?;
        }
        // Older versions' pins go; their programs live on while attached.
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("prog-") && p != prog_dir {
                    let _ = remove_pins(&p);
                }
            }
        }
        Ok(LoadReport {
            adopted: false,
            version,
            reused_maps: reused,
            created_maps: created,
        })
    }

    /// What loading did (adopted or loaded, which maps were kept).
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The namespace the host's devices are in (`None`: the caller's).
    pub fn netns_path(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// The host's pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kernel ids of the ENI and overlay programs (what `bpftool prog`
    /// shows).
    pub fn program_ids(&self) -> (u32, u32) {
        (self.eni_prog.id(), self.overlay_prog.id())
    }

    /// Runs `f` inside the host's namespace: on the calling thread when
    /// that is the caller's, else on the host's [`NetnsThread`].
    fn in_host_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, BpfError> {
        let Some(path) = self.netns.as_deref() else { return Ok(f()) };
        let thread = match self.tc_thread.get() {
            Some(t) => t,
            None => {
                let t = NetnsThread::start(path)?;
                // A racing caller may have set one first: either will do.
                let _ = self.tc_thread.set(t);
                self.tc_thread.get().expect("set above")
            }
        };
        thread.run(path, f)
    }

    /// The program's fd, duplicated for a job on another thread.
    fn owned_fd(prog: &ProgramHandle, ifindex: u32) -> Result<std::os::fd::OwnedFd, BpfError> {
        prog.as_fd().try_clone_to_owned().map_err(|e| BpfError::Tc {
            ifindex,
            op: "dup the program fd",
            source: libbpf_rs::Error::from(e),
        })
    }

    fn attach(&self, ifindex: u32, prog: &ProgramHandle) -> Result<(), BpfError> {
        let fd = Self::owned_fd(prog, ifindex)?;
        self.in_host_netns(move || {
            let mut hook = TcHookBuilder::new(fd.as_fd())
                .ifindex(ifindex as i32)
                .replace(true)
                .handle(TC_HANDLE)
                .priority(TC_PRIORITY)
                .hook(TC_INGRESS);
            // EEXIST: the clsact qdisc is there already.
            if let Err(e) = hook.create()
                && e.kind() != libbpf_rs::ErrorKind::AlreadyExists
            {
                return Err(BpfError::Tc {
                    ifindex,
                    op: "create clsact",
                    source: e,
                });
            }
            hook.attach().map(|_| ()).map_err(|source| BpfError::Tc {
                ifindex,
                op: "attach",
                source,
            })
        })?
    }

    /// Attaches the ENI program to tc ingress of an ENI's host-side device
    /// (creating its clsact qdisc), replacing evnet's earlier filter there.
    pub fn attach_eni(&self, ifindex: u32) -> Result<(), BpfError> {
        self.attach(ifindex, &self.eni_prog)
    }

    /// Attaches the overlay program to tc ingress of the host's collect_md
    /// VXLAN device. Never add a queueing qdisc to that device: tunnel
    /// metadata is not kept per packet in a queue.
    pub fn attach_overlay(&self, ifindex: u32) -> Result<(), BpfError> {
        self.attach(ifindex, &self.overlay_prog)
    }

    /// Attaches the external program to tc ingress of the host's device on
    /// an external network: it answers ARP for the local elastic IPs and
    /// takes the packets addressed to them; everything else goes on to the
    /// host's stack as before.
    pub fn attach_external(&self, ifindex: u32) -> Result<(), BpfError> {
        self.attach(ifindex, &self.external_prog)
    }

    /// Removes evnet's filter from a device's tc ingress (the clsact qdisc
    /// stays: others may use it). A device without it is not an error.
    pub fn detach(&self, ifindex: u32) -> Result<(), BpfError> {
        let fd = Self::owned_fd(&self.eni_prog, ifindex)?;
        self.in_host_netns(move || {
            let mut hook = TcHookBuilder::new(fd.as_fd())
                .ifindex(ifindex as i32)
                .handle(TC_HANDLE)
                .priority(TC_PRIORITY)
                .hook(TC_INGRESS);
            match hook.detach() {
                Ok(()) => Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::InvalidInput
                    ) =>
                {
                    Ok(())
                }
                Err(source) => Err(BpfError::Tc {
                    ifindex,
                    op: "detach",
                    source,
                }),
            }
        })?
    }

    /// Which evnet program a device's tc ingress runs, if any.
    pub fn attached(&self, ifindex: u32) -> Result<Option<Attached>, BpfError> {
        Ok(self.attached_many(&[ifindex])?.pop().and_then(|(_, a)| a))
    }

    /// [`Dataplane::attached`] for several devices, in their order, all
    /// queried from one thread inside the namespace (a thread per device
    /// cost a host with 1,000 ENIs a thousand thread starts per pass).
    pub fn attached_many(&self, ifindexes: &[u32]) -> Result<Vec<(u32, Option<Attached>)>, BpfError> {
        let fd = Self::owned_fd(&self.eni_prog, 0)?;
        let ifindexes = ifindexes.to_vec();
        let ids = self.in_host_netns(move || {
            ifindexes
                .iter()
                .map(|&ifindex| {
                    let mut hook = TcHookBuilder::new(fd.as_fd())
                        .ifindex(ifindex as i32)
                        .handle(TC_HANDLE)
                        .priority(TC_PRIORITY)
                        .hook(TC_INGRESS);
                    match hook.query() {
                        Ok(id) => Ok((ifindex, Some(id))),
                        Err(e)
                            if matches!(
                                e.kind(),
                                libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::InvalidInput
                            ) =>
                        {
                            Ok((ifindex, None))
                        }
                        Err(source) => Err(BpfError::Tc {
                            ifindex,
                            op: "query",
                            source,
                        }),
                    }
                })
                .collect::<Result<Vec<_>, BpfError>>()
        })??;
        let (eni, overlay, external) = (self.eni_prog.id(), self.overlay_prog.id(), self.external_prog.id());
        Ok(ids
            .into_iter()
            .map(|(ifindex, id)| {
                let a = id.map(|id| {
                    if id == eni {
                        Attached::Eni
                    } else if id == overlay {
                        Attached::Overlay
                    } else if id == external {
                        Attached::External
                    } else {
                        Attached::Other { prog_id: id }
                    }
                });
                (ifindex, a)
            })
            .collect())
    }

    /// Sets the host's settings.
    pub fn set_config(&self, c: &HostConfig) -> Result<(), BpfError> {
        update(
            &self.maps.config,
            "config",
            &0u32.to_ne_bytes(),
            &c.encode(),
        )
    }

    /// Adds or changes a local ENI.
    pub fn set_eni(&self, ifindex: u32, e: &EniEntry) -> Result<(), BpfError> {
        update(&self.maps.enis, "enis", &ifindex.to_ne_bytes(), &e.encode())
    }

    pub fn remove_eni(&self, ifindex: u32) -> Result<(), BpfError> {
        delete(&self.maps.enis, "enis", &ifindex.to_ne_bytes())
    }

    /// Adds or changes where `ip` of VPC `vni` is.
    pub fn set_route(&self, vni: u32, ip: Ipv4Addr, r: &Route) -> Result<(), BpfError> {
        update(
            &self.maps.routes,
            "routes",
            &Route::key(vni, ip),
            &r.encode(),
        )
    }

    pub fn remove_route(&self, vni: u32, ip: Ipv4Addr) -> Result<(), BpfError> {
        delete(&self.maps.routes, "routes", &Route::key(vni, ip))
    }

    /// Adds or changes where route table `table` sends `net/prefix`.
    pub fn set_hop(&self, table: u32, net: Ipv4Addr, prefix: u8, h: &Hop) -> Result<(), BpfError> {
        update(&self.maps.hops, "hops", &Hop::key(table, net, prefix), &h.encode())
    }

    pub fn remove_hop(&self, table: u32, net: Ipv4Addr, prefix: u8) -> Result<(), BpfError> {
        delete(&self.maps.hops, "hops", &Hop::key(table, net, prefix))
    }

    /// Delivers packets of `vni` addressed (inner destination MAC) to `mac`
    /// onto the appliance ENI behind `ifindex`.
    pub fn set_appliance(&self, vni: u32, mac: [u8; 6], ifindex: u32) -> Result<(), BpfError> {
        update(&self.maps.appliances, "appliances", &Appliance::key(vni, mac), &ifindex.to_ne_bytes())
    }

    pub fn remove_appliance(&self, vni: u32, mac: [u8; 6]) -> Result<(), BpfError> {
        delete(&self.maps.appliances, "appliances", &Appliance::key(vni, mac))
    }

    /// Gives the local ENI `(vni, private)` the elastic IP `e`: its
    /// inbound entry first, so a reply to the first packet out finds it.
    pub fn set_eip(&self, vni: u32, private: Ipv4Addr, e: &Eip) -> Result<(), BpfError> {
        update(&self.maps.eips_in, "eips_in", &e.public_ip.octets(), &e.encode_in(vni, private))?;
        update(&self.maps.eips, "eips", &Route::key(vni, private), &e.encode())
    }

    /// Announces that `ip` is now at `mac` on the device `ifindex`: one
    /// gratuitous ARP request (sender and target `ip`, broadcast), which
    /// makes the network's neighbours update an entry that still names
    /// the host the address was on before. Sent on a packet socket inside
    /// the host's namespace; no program sees it (tc ingress only).
    pub fn announce(&self, ifindex: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), BpfError> {
        let frame = gratuitous_arp(ip, mac);
        self.in_host_netns(move || send_frame(ifindex, &frame))?
            .map_err(|source| BpfError::Announce { ifindex, ip, source })
    }

    /// Takes the elastic IP `public` from `(vni, private)`.
    pub fn remove_eip(&self, vni: u32, private: Ipv4Addr, public: Ipv4Addr) -> Result<(), BpfError> {
        delete(&self.maps.eips, "eips", &Route::key(vni, private))?;
        delete(&self.maps.eips_in, "eips_in", &public.octets())
    }

    /// Trusts `underlay` as a host holding `vni`.
    pub fn set_trust(&self, vni: u32, underlay: Ipv4Addr, t: &Trust) -> Result<(), BpfError> {
        update(
            &self.maps.trust,
            "trust",
            &Trust::key(vni, underlay),
            &t.encode(),
        )
    }

    pub fn remove_trust(&self, vni: u32, underlay: Ipv4Addr) -> Result<(), BpfError> {
        delete(&self.maps.trust, "trust", &Trust::key(vni, underlay))
    }

    /// Replaces an ENI's rules in one direction (one entry, swapped
    /// atomically). No entry means deny everything new in that direction.
    pub fn set_rules(&self, ifindex: u32, dir: Direction, rules: &[Rule]) -> Result<(), BpfError> {
        if rules.len() > maps::MAX_RULES {
            return Err(BpfError::TooManyRules {
                ifindex,
                count: rules.len(),
                max: maps::MAX_RULES,
            });
        }
        update(
            &self.maps.rules,
            "rules",
            &dir.key(ifindex),
            &maps::encode_rules(rules),
        )
    }

    pub fn remove_rules(&self, ifindex: u32, dir: Direction) -> Result<(), BpfError> {
        delete(&self.maps.rules, "rules", &dir.key(ifindex))
    }

    /// Makes `ip` a member of the group with key `group`.
    pub fn add_member(&self, group: u32, ip: Ipv4Addr) -> Result<(), BpfError> {
        update(
            &self.maps.members,
            "members",
            &maps::member_key(group, ip),
            &[1],
        )
    }

    pub fn remove_member(&self, group: u32, ip: Ipv4Addr) -> Result<(), BpfError> {
        delete(&self.maps.members, "members", &maps::member_key(group, ip))
    }

    /// Forgets every admitted flow (the next packet of each is checked
    /// against the rules again): after a rule was removed, so flows it
    /// admitted do not live on.
    pub fn flush_flows(&self) -> Result<usize, BpfError> {
        let keys: Vec<Vec<u8>> = self.maps.flows.keys().collect();
        for k in &keys {
            delete(&self.maps.flows, "flows", k)?;
        }
        Ok(keys.len())
    }

    /// Every pair's counters (what local ENIs send to remote ones).
    pub fn pair_meters(&self) -> Result<Vec<(PairKey, PairMeter)>, BpfError> {
        self.maps.pairs.meters()
    }

    /// Forgets a pair's counters (an idle pair; the program starts it again
    /// from zero at its next packet).
    pub fn forget_pair(&self, key: &PairKey) -> Result<(), BpfError> {
        delete(&self.maps.pairs.meters, "pair_meters", &key.encode())
    }

    /// The caps in force, by pair.
    pub fn pair_caps(&self) -> Result<Vec<(PairKey, PairCap)>, BpfError> {
        self.maps.pairs.caps()
    }

    /// Caps what `key`'s sender sends to its receiver.
    pub fn set_pair_cap(&self, key: &PairKey, cap: &PairCap) -> Result<(), BpfError> {
        update(&self.maps.pairs.caps, "pair_caps", &key.encode(), &cap.encode())
    }

    /// Lifts a pair's cap.
    pub fn remove_pair_cap(&self, key: &PairKey) -> Result<(), BpfError> {
        delete(&self.maps.pairs.caps, "pair_caps", &key.encode())
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(Reason, u64)>, BpfError> {
        let mut out = vec![];
        for r in Reason::ALL {
            let per_cpu = self
                .maps
                .stats
                .lookup_percpu(&r.index().to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| BpfError::Map {
                    map: "stats",
                    op: "lookup",
                    source,
                })?
                .unwrap_or_default();
            let sum = per_cpu
                .iter()
                .map(|b| u64::from_ne_bytes(b[..8].try_into().expect("8 bytes")))
                .sum();
            out.push((r, sum));
        }
        Ok(out)
    }

    /// One counter, summed over CPUs.
    pub fn stat(&self, reason: Reason) -> Result<u64, BpfError> {
        Ok(self
            .stats()?
            .into_iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .unwrap_or(0))
    }

    /// Everything the maps hold now.
    pub fn contents(&self) -> Result<MapContents, BpfError> {
        let mut c = MapContents {
            config: lookup(&self.maps.config, "config", &0u32.to_ne_bytes())?
                .and_then(|b| HostConfig::decode(&b))
                .filter(|c| c.vxlan_ifindex != 0),
            ..Default::default()
        };
        for k in self.maps.enis.keys() {
            if let Some(v) = lookup(&self.maps.enis, "enis", &k)?.and_then(|b| EniEntry::decode(&b))
            {
                c.enis
                    .push((u32::from_ne_bytes(k[..4].try_into().expect("4 bytes")), v));
            }
        }
        for k in self.maps.routes.keys() {
            if let (Some(key), Some(v)) = (
                Route::decode_key(&k),
                lookup(&self.maps.routes, "routes", &k)?.and_then(|b| Route::decode(&b)),
            ) {
                c.routes.push((key, v));
            }
        }
        for k in self.maps.hops.keys() {
            if let (Some(key), Some(v)) = (
                Hop::decode_key(&k),
                lookup(&self.maps.hops, "hops", &k)?.and_then(|b| Hop::decode(&b)),
            ) {
                c.hops.push((key, v));
            }
        }
        for k in self.maps.appliances.keys() {
            if let (Some(key), Some(v)) = (
                Appliance::decode_key(&k),
                lookup(&self.maps.appliances, "appliances", &k)?.filter(|b| b.len() == 4),
            ) {
                c.appliances.push((key, u32::from_ne_bytes(v[..4].try_into().expect("4 bytes"))));
            }
        }
        for k in self.maps.eips.keys() {
            let Some(out) = lookup(&self.maps.eips, "eips", &k)? else { continue };
            if out.len() != Eip::SIZE {
                continue;
            }
            let inb = lookup(&self.maps.eips_in, "eips_in", &out[..4])?.unwrap_or_default();
            if let (Some(key), Some((vni, private, e))) = (Route::decode_key(&k), Eip::decode(&out, &inb)) {
                if (vni, private) == key {
                    c.eips.push((key, e));
                }
            }
        }
        for k in self.maps.eips_in.keys() {
            let public = Ipv4Addr::new(k[0], k[1], k[2], k[3]);
            if k.len() == 4 && !c.eips.iter().any(|(_, e)| e.public_ip == public) {
                let stray = Eip { public_ip: public, ext_ifindex: 0, ext_mac: [0; 6], gateway: Ipv4Addr::UNSPECIFIED };
                c.eips.push(((STRAY_EIP_VNI, public), stray));
            }
        }
        for k in self.maps.trust.keys() {
            if let (Some(key), Some(v)) = (
                Route::decode_key(&k),
                lookup(&self.maps.trust, "trust", &k)?.and_then(|b| Trust::decode(&b)),
            ) {
                c.trust.push((key, v));
            }
        }
        for k in self.maps.rules.keys() {
            let ifindex = u32::from_ne_bytes(k[..4].try_into().expect("4 bytes"));
            let dir = if u32::from_ne_bytes(k[4..8].try_into().expect("4 bytes")) == 0 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            if let Some(v) =
                lookup(&self.maps.rules, "rules", &k)?.and_then(|b| maps::decode_rules(&b))
            {
                c.rules.push(((ifindex, dir), v));
            }
        }
        for k in self.maps.members.keys() {
            if let Some(key) = Route::decode_key(&k) {
                c.members.push(key);
            }
        }
        c.flows = self.maps.flows.keys().count();
        c.enis.sort_by_key(|e| e.0);
        c.routes.sort_by_key(|r| r.0);
        c.hops.sort_by_key(|h| h.0);
        c.appliances.sort_by_key(|a| a.0);
        c.eips.sort_by_key(|e| e.0);
        c.trust.sort_by_key(|t| t.0);
        c.rules.sort_by_key(|r| r.0);
        c.members.sort();
        Ok(c)
    }

    /// The programs' file descriptors (for [`crate::testrun`]).
    pub(crate) fn programs(&self) -> (&ProgramHandle, &ProgramHandle) {
        (&self.eni_prog, &self.overlay_prog)
    }

    /// Detaches evnet's filter from `devices` and removes every pin of the
    /// host. Programs and maps are freed once nothing holds them.
    pub fn remove(self, devices: &[u32]) -> Result<(), BpfError> {
        for &d in devices {
            self.detach(d)?;
        }
        remove_host(&self.dir)
    }
}

/// Removes a host's pin directory (all versions, all maps).
pub fn remove_host(dir: &Path) -> Result<(), BpfError> {
    if !dir.exists() {
        return Ok(());
    }
    remove_pins(dir)
}

fn remove_pins(dir: &Path) -> Result<(), BpfError> {
    // bpffs directories hold only pins and directories: a recursive removal
    // unpins each.
    std::fs::remove_dir_all(dir).map_err(|source| BpfError::Pin {
        path: dir.into(),
        source,
    })
}

fn update(m: &MapHandle, map: &'static str, k: &[u8], v: &[u8]) -> Result<(), BpfError> {
    m.update(k, v, MapFlags::ANY)
        .map_err(|source| BpfError::Map {
            map,
            op: "update",
            source,
        })
}

/// A gratuitous ARP request for `ip` at `mac`.
fn gratuitous_arp(ip: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac);
    f.extend(0x0806u16.to_be_bytes());
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, lengths, request
    f.extend(mac);
    f.extend(ip.octets());
    f.extend([0; 6]);
    f.extend(ip.octets());
    f
}

/// Sends one Ethernet frame out of `ifindex` in the calling thread's
/// namespace, on a packet socket of its own (no crate wraps AF_PACKET
/// sends more simply than these three calls).
fn send_frame(ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are plain data.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    use std::os::fd::AsRawFd;
    // SAFETY: the buffer and address outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn delete(m: &MapHandle, map: &'static str, k: &[u8]) -> Result<(), BpfError> {
    match m.delete(k) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::Map {
            map,
            op: "delete",
            source,
        }),
    }
}

fn lookup(m: &MapHandle, map: &'static str, k: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
    m.lookup(k, MapFlags::ANY).map_err(|source| BpfError::Map {
        map,
        op: "lookup",
        source,
    })
}
