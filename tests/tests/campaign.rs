//! A fault campaign on a LAN inside one machine (Jepsen's lost-write check):
//! three real nodes in network namespaces on a bridge, a seeded script that
//! partitions them (halves: one node cut from the other two; a partial
//! partition: two nodes cut from each other only), drops and duplicates
//! packets (nftables), kills
//! nodes with SIGKILL and restarts them, while a load generator writes
//! through each node's API and logs every write the node acknowledged.
//! After the last heal: every acknowledged write is on every node, and all
//! nodes have identical heads within 30 s.
//!
//! Size: `XENCODE_CAMPAIGN_STEPS` (default 8 steps of about 4 s),
//! `XENCODE_CAMPAIGN_SEED` (default 1), `XENCODE_CAMPAIGN_PAUSE_MS` between
//! writes (default 100; 0 writes as fast as the CLI goes, and then catch-up
//! of the many new documents takes longer than 30 s, see
//! `docs/reliability.md`), `XENCODE_CAMPAIGN_WAIT_SECS` (default 30). The figures go to
//! `target/tmp/campaign/report.txt`. Needs root, `ip` and `nft`; elsewhere
//! it skips with the reason (a failure under `XENCODE_REQUIRE_ALL_TESTS=1`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xencode_tests::netns::{NsNode, ip, is_root, run};
use xencode_tests::{last_line, skip_or_fail};

const CONVERGE: Duration = Duration::from_secs(30);
const P2P_PORT: u16 = 7521;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A bridge namespace and three host namespaces, deleted on drop.
struct Lan {
    bridge: String,
    hosts: Vec<String>,
    subnet: String,
}

impl Lan {
    fn new(n: usize) -> Result<Self, String> {
        let id = std::process::id();
        let lan = Self {
            bridge: format!("xcbr{id}"),
            hosts: (1..=n).map(|i| format!("xc{id}h{i}")).collect(),
            subnet: format!("10.78.{}", id % 200),
        };
        ip(&["netns", "add", &lan.bridge])?;
        ip(&["-n", &lan.bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.bridge, "link", "set", "br0", "up"])?;
        for (i, ns) in lan.hosts.iter().enumerate() {
            let port = format!("p{}", i + 1);
            ip(&["netns", "add", ns])?;
            ip(&[
                "link",
                "add",
                "veth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.bridge,
            ])?;
            ip(&[
                "-n",
                &lan.bridge,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", "veth0", "up"])?;
            ip(&["-n", ns, "addr", "add", &lan.addr(i, true), "dev", "veth0"])?;
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "veth0"])?;
        }
        Ok(lan)
    }

    fn addr(&self, i: usize, with_prefix: bool) -> String {
        let a = format!("{}.{}", self.subnet, i + 1);
        if with_prefix { format!("{a}/24") } else { a }
    }

    /// Replaces host `i`'s fault rules: drop traffic from and to `blocked`
    /// hosts, and `loss` percent of the rest from the LAN (with some of what
    /// leaves duplicated).
    fn faults(&self, i: usize, blocked: &[usize], loss: u32) -> Result<(), String> {
        let ns = &self.hosts[i];
        let _ = run(
            "ip",
            &[
                "netns", "exec", ns, "nft", "delete", "table", "ip", "xfault",
            ],
        );
        if blocked.is_empty() && loss == 0 {
            return Ok(());
        }
        let mut rules = String::from("table ip xfault {\n");
        rules.push_str(" chain in { type filter hook input priority 0; policy accept;\n");
        for &b in blocked {
            rules.push_str(&format!("  ip saddr {} drop\n", self.addr(b, false)));
        }
        if loss > 0 {
            rules.push_str(&format!(
                "  ip saddr {}.0/24 numgen random mod 100 < {loss} drop\n",
                self.subnet
            ));
        }
        rules.push_str(" }\n chain out { type filter hook output priority 0; policy accept;\n");
        for &b in blocked {
            rules.push_str(&format!("  ip daddr {} drop\n", self.addr(b, false)));
        }
        if loss > 0 {
            // Flaky Wi-Fi also duplicates: a twentieth of what leaves is sent twice.
            rules.push_str(&format!(
                "  ip daddr {}.0/24 numgen random mod 100 < 5 dup to ip daddr device \"veth0\"\n",
                self.subnet
            ));
        }
        rules.push_str(" }\n}\n");
        let file = std::env::temp_dir().join(format!("{ns}.nft"));
        std::fs::write(&file, rules).map_err(|e| e.to_string())?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "nft",
                "-f",
                &file.display().to_string(),
            ],
        )
    }

    fn heal(&self) {
        for i in 0..self.hosts.len() {
            let _ = self.faults(i, &[], 0);
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.bridge]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A tiny seeded generator (xorshift), so a run replays from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Host {
    node: Mutex<Option<NsNode>>,
    ns: String,
    dir: std::path::PathBuf,
}

impl Host {
    fn start(&self) {
        let listen = format!("/ip4/0.0.0.0/tcp/{P2P_PORT}");
        *self.node.lock().expect("lock") = Some(NsNode::start_with(&self.ns, &self.dir, &listen));
    }

    fn kill9(&self) {
        if let Some(mut n) = self.node.lock().expect("lock").take() {
            n.kill9();
        }
    }

    /// Runs the CLI against this host's node (None if it is down).
    fn cli(&self, args: &[&str], stdin: &[u8]) -> Option<std::process::Output> {
        let guard = self.node.lock().expect("lock");
        let node = guard.as_ref()?;
        Some(node.cli_with_stdin(args, stdin))
    }

    fn files(&self, ws: &str) -> BTreeSet<String> {
        self.cli(&["file", "list", ws], &[])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn heads(&self, ws: &str) -> Vec<String> {
        let Some(out) = self.cli(&["--json", "workspace", "show", ws], &[]) else {
            return Vec::new();
        };
        xencode_tests::heads_of(&serde_json::from_slice(&out.stdout).unwrap_or_default())
    }
}

#[test]
fn acknowledged_writes_survive_partitions_loss_and_kill_9() {
    if !is_root() {
        return skip_or_fail("the fault campaign", "network namespaces need root");
    }
    if run("nft", &["--version"]).is_err() {
        return skip_or_fail(
            "the fault campaign",
            "`nft` is missing (apt install nftables)",
        );
    }
    let lan = match Lan::new(3) {
        Ok(l) => l,
        Err(e) => return skip_or_fail("the fault campaign", &e),
    };
    let steps = env_u64("XENCODE_CAMPAIGN_STEPS", 8);
    let seed = env_u64("XENCODE_CAMPAIGN_SEED", 1);
    let report_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("campaign");
    std::fs::create_dir_all(&report_dir).expect("report dir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts: Arc<Vec<Host>> = Arc::new(
        lan.hosts
            .iter()
            .enumerate()
            .map(|(i, ns)| Host {
                node: Mutex::new(None),
                ns: ns.clone(),
                dir: tmp.path().join(format!("n{}", i + 1)),
            })
            .collect(),
    );
    for h in hosts.iter() {
        h.start();
    }
    // One workspace; the others join as developers.
    let ws = last_line(
        &hosts[0]
            .cli(&["workspace", "create", "campaign"], &[])
            .expect("up"),
    );
    for h in &hosts[1..] {
        let id = last_line(&h.cli(&["id"], &[]).expect("up"));
        let invite = last_line(
            &hosts[0]
                .cli(&["invite", &ws, &id, "--role", "developer"], &[])
                .expect("up"),
        );
        let joined = h.cli(&["join", &invite], &[]).expect("up");
        assert_eq!(
            last_line(&joined),
            ws,
            "{}",
            String::from_utf8_lossy(&joined.stderr)
        );
    }

    // The load generator: round-robin over the nodes, a new file per write;
    // a write counts once the node acknowledged it (exit status 0).
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let log_path = report_dir.join("acknowledged.log");
    let writer = {
        let (hosts, stop, acked, attempts, ws) = (
            hosts.clone(),
            stop.clone(),
            acked.clone(),
            attempts.clone(),
            ws.clone(),
        );
        let mut log = std::fs::File::create(&log_path).expect("log");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut n = 0u64;
            let pause = Duration::from_millis(env_u64("XENCODE_CAMPAIGN_PAUSE_MS", 100));
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(pause);
                let i = (n % 3) as usize;
                n += 1;
                attempts.fetch_add(1, Ordering::Relaxed);
                let path = format!("w/n{}-{n:05}.txt", i + 1);
                let body = format!("write {n} through node {}\n", i + 1);
                if let Some(out) = hosts[i].cli(&["file", "put", &ws, &path], body.as_bytes())
                    && out.status.success()
                {
                    let _ = writeln!(log, "{path}");
                    acked.lock().expect("lock").push(path);
                }
            }
        })
    };

    // The seeded fault script.
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut script = Vec::new();
    let (mut kills, mut partitions, mut lossy) = (0, 0, 0);
    // The first five steps are each kind of fault once, in a seeded order;
    // the rest are drawn at random.
    let mut first = [0, 1, 2, 3, 4];
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for step in 0..steps {
        let kind = first
            .get(step as usize)
            .copied()
            .unwrap_or_else(|| rng.below(5));
        let action = match kind {
            0 => {
                let one = rng.below(3) as usize;
                let rest: Vec<usize> = (0..3).filter(|&j| j != one).collect();
                lan.faults(one, &rest, 0).expect("isolate");
                for &j in &rest {
                    lan.faults(j, &[one], 0).expect("isolate");
                }
                partitions += 1;
                format!("halves: node {} | the other two", one + 1)
            }
            1 => {
                // A partial partition: a and b cannot reach each other, and
                // both still reach the third (which must relay).
                let a = rng.below(3) as usize;
                let b = (a + 1) % 3;
                lan.faults(a, &[b], 0).expect("split");
                lan.faults(b, &[a], 0).expect("split");
                partitions += 1;
                format!("partial partition: nodes {} and {} cut apart", a + 1, b + 1)
            }
            2 => {
                let pct = 10 + rng.below(21) as u32;
                for j in 0..3 {
                    lan.faults(j, &[], pct).expect("loss");
                }
                lossy += 1;
                format!("{pct}% packet loss and 5% duplication everywhere")
            }
            3 => {
                let victim = rng.below(3) as usize;
                hosts[victim].kill9();
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                hosts[victim].start();
                kills += 1;
                format!("kill -9 node {} and restart it", victim + 1)
            }
            _ => {
                lan.heal();
                "heal".to_owned()
            }
        };
        eprintln!("step {step}: {action}");
        script.push(action);
        std::thread::sleep(Duration::from_millis(2500 + rng.below(2000)));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    lan.heal();
    let healed = Instant::now();

    // Every acknowledged write on every node, identical heads.
    let acked = acked.lock().expect("lock").clone();
    let want: BTreeSet<String> = acked.iter().cloned().collect();
    let mut converged_after = None;
    let mut missing = Vec::new();
    let window = Duration::from_secs(env_u64("XENCODE_CAMPAIGN_WAIT_SECS", CONVERGE.as_secs()));
    let mut last_print = Instant::now();
    while healed.elapsed() < window {
        missing = hosts
            .iter()
            .map(|h| want.difference(&h.files(&ws)).count())
            .collect();
        let heads: Vec<Vec<String>> = hosts.iter().map(|h| h.heads(&ws)).collect();
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!("{:?} after heal: missing {missing:?}", healed.elapsed());
            last_print = Instant::now();
        }
        if missing.iter().all(|&m| m == 0) && heads.windows(2).all(|w| w[0] == w[1]) {
            converged_after = Some(healed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = format!(
        "seed {seed}, {steps} steps: {}\n\
         writes attempted {}, acknowledged {}, lost {:?} (per node, after heal)\n\
         partitions {partitions}, lossy periods {lossy}, kill -9 restarts {kills}\n\
         converged {:?} after the last heal\n",
        script.join("; "),
        attempts.load(Ordering::Relaxed),
        acked.len(),
        missing,
        converged_after,
    );
    eprintln!("{report}");
    std::fs::write(report_dir.join("report.txt"), &report).expect("report");
    let logs: String = hosts
        .iter()
        .filter_map(|h| h.node.lock().ok().and_then(|n| n.as_ref().map(NsNode::log)))
        .map(|l| l.lines().rev().take(30).collect::<Vec<_>>().join("\n"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(
        !acked.is_empty(),
        "the load generator got no write acknowledged"
    );
    assert!(
        converged_after.is_some(),
        "not converged within {CONVERGE:?} of the last heal: {report}\n{logs}"
    );
    // Every acknowledged write has its content, on every node.
    for h in hosts.iter() {
        for path in acked.iter().step_by(7) {
            let out = h.cli(&["file", "get", &ws, path], &[]).expect("up");
            assert!(
                String::from_utf8_lossy(&out.stdout).starts_with("write "),
                "{path} on {}",
                h.ns
            );
        }
    }
    for h in hosts.iter() {
        h.kill9();
    }
    drop(lan);
}
