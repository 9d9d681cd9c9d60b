//! `xencode doctor`: checks what a node needs — its data directory, its
//! configuration, the running node and its API, Ollama, LAN discovery, the
//! listen addresses, the clocks of the members it syncs with — and says
//! what to do about each problem.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use xencode_node::config::Config;
use xencode_node::paths::DataDir;
use xencode_protocol::analysis::ModelList;
use xencode_protocol::api::{NodeInfo, PeerList};

use super::client::{Client, Failure, short_id};
use super::commands::print_json;

/// Clock differences with a member beyond this are worth fixing: tokens
/// expire and changes are judged by their signed time.
const MAX_CLOCK_OFFSET_MS: i64 = 120_000;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    /// What to do, when something is to be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    checks: Vec<Check>,
    /// `ok` if every check is, `warn` if some warn, `fail` if any failed.
    status: Status,
}

/// Runs every check; exits 1 (code `doctor_found_problems`) if one failed.
pub async fn run(dir: &DataDir, json: bool) -> Result<()> {
    let mut checks = data_dir(dir);
    let config = match Config::load(&dir.config()) {
        Ok(c) => {
            let detail = if dir.config().exists() {
                format!("{} is valid", dir.config().display())
            } else {
                "no config.toml: the defaults".to_owned()
            };
            checks.push(Check::ok("config", detail));
            Some(c)
        }
        Err(e) => {
            checks.push(Check::fail(
                "config",
                e.to_string(),
                "fix the key named above (`xencode config show` prints the effective configuration)",
            ));
            None
        }
    };
    let node = running_node(dir, &mut checks).await;
    match &node {
        Some((client, info)) => {
            checks.push(listen_addresses(&info.listen));
            checks.push(ollama(client).await);
            checks.extend(clocks(client).await);
        }
        None => checks.push(Check::warn(
            "ollama",
            "not checked: the node is not running",
            "start the node, then run `xencode doctor` again",
        )),
    }
    // What the running node does (flags included), else what it would.
    match (&node, &config) {
        (Some((_, info)), _) => checks.push(mdns(info.mdns)),
        (None, Some(config)) => checks.push(mdns(config.network.mdns)),
        (None, None) => {}
    }
    let status = if checks.iter().any(|c| c.status == Status::Fail) {
        Status::Fail
    } else if checks.iter().any(|c| c.status == Status::Warn) {
        Status::Warn
    } else {
        Status::Ok
    };
    let failed = status == Status::Fail;
    if json {
        print_json(&Report { checks, status })?;
    } else {
        for c in &checks {
            let word = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("{word}  {:<14} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("      {:<14} → {fix}", "");
            }
        }
    }
    if failed {
        return Err(Failure::error(
            "doctor_found_problems",
            "some checks failed; each says what to do",
        ));
    }
    Ok(())
}

/// The data directory and the secrets in it: present, ours, private.
fn data_dir(dir: &DataDir) -> Vec<Check> {
    let root = dir.root();
    let Ok(meta) = std::fs::metadata(root) else {
        return vec![Check::fail(
            "data dir",
            format!("{} does not exist", root.display()),
            "run `xencode init`",
        )];
    };
    let mut out = Vec::new();
    let me = current_uid();
    let mode = meta.permissions().mode() & 0o777;
    if me.is_some_and(|u| u != meta.uid()) {
        out.push(Check::fail(
            "data dir",
            format!(
                "{} belongs to uid {}, not to you",
                root.display(),
                meta.uid()
            ),
            format!("chown -R \"$USER\" {}", root.display()),
        ));
    } else if mode & 0o077 != 0 {
        out.push(Check::warn(
            "data dir",
            format!("{} is mode {mode:o}: others can list it", root.display()),
            format!("chmod 700 {}", root.display()),
        ));
    } else {
        out.push(Check::ok(
            "data dir",
            format!("{} (mode {mode:o})", root.display()),
        ));
    }
    for (name, path) in [
        ("identity key", dir.identity_key()),
        ("api token", dir.api_token()),
        ("store", dir.store()),
    ] {
        out.push(private_file(name, &path));
    }
    out
}

fn private_file(name: &'static str, path: &Path) -> Check {
    match std::fs::metadata(path) {
        Err(_) if name == "store" => Check::ok(name, "not created yet (the node creates it)"),
        Err(_) => Check::fail(
            name,
            format!("{} is missing", path.display()),
            "run `xencode init`",
        ),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Check::fail(
            name,
            format!(
                "{} is mode {:o}: other users can read it",
                path.display(),
                m.permissions().mode() & 0o777
            ),
            format!("chmod 600 {}", path.display()),
        ),
        Ok(_) => Check::ok(name, format!("{} (0600)", path.display())),
    }
}

/// The node answers, and the API token is accepted.
async fn running_node(dir: &DataDir, checks: &mut Vec<Check>) -> Option<(Client, NodeInfo)> {
    let client = match Client::connect(dir) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::fail(
                "node",
                format!("{e:#}"),
                "start it: `xencode node`",
            ));
            return None;
        }
    };
    match client.get_json::<NodeInfo>(&["api", "v1", "node"]).await {
        Ok(info) => {
            checks.push(Check::ok(
                "node",
                format!(
                    "running, {} (version {}, {}), up {} s",
                    short_id(&info.peer_id),
                    info.version,
                    info.protocol,
                    info.uptime_secs
                ),
            ));
            checks.push(Check::ok(
                "api",
                format!("{} accepts the token", info.api_url),
            ));
            Some((client, info))
        }
        Err(e) if super::client::refusal_code(&e) == Some("unauthorized") => {
            checks.push(Check::ok("node", "running"));
            checks.push(Check::fail(
                "api",
                "the node refuses this data dir's API token",
                "the token file changed while the node ran: restart the node",
            ));
            None
        }
        Err(e) => {
            checks.push(Check::fail(
                "node",
                format!("{e:#}"),
                "start it: `xencode node` (a stale api-url is left by a node that was killed)",
            ));
            None
        }
    }
}

/// Teammates can only reach addresses that are not loopback.
fn listen_addresses(listen: &[String]) -> Check {
    if listen.is_empty() {
        return Check::fail(
            "listen",
            "the node listens on no address: no teammate can connect",
            "set [network] listen in config.toml (default /ip4/0.0.0.0/tcp/7421)",
        );
    }
    let reachable: Vec<&String> = listen
        .iter()
        .filter(|a| !a.contains("/ip4/127.") && !a.contains("/ip6/::1/"))
        .collect();
    if reachable.is_empty() {
        Check::warn(
            "listen",
            format!("only loopback: {}", listen.join(", ")),
            "teammates on other machines cannot connect; listen on /ip4/0.0.0.0/tcp/7421",
        )
    } else {
        Check::ok("listen", listen.join(", "))
    }
}

async fn ollama(client: &Client) -> Check {
    match client.get_json::<ModelList>(&["api", "v1", "models"]).await {
        Ok(list) if list.status == "ok" && list.models.is_empty() => Check::warn(
            "ollama",
            format!("Ollama at {} has no models", list.host),
            "pull one: `ollama pull llama3.2` (AI reviews need it; static analysis does not)",
        ),
        Ok(list) if list.status == "ok" => Check::ok(
            "ollama",
            format!(
                "{} models at {}; reviews use {}",
                list.models.len(),
                list.host,
                list.default_model.as_deref().unwrap_or("(none fits)")
            ),
        ),
        Ok(list) => Check::warn(
            "ollama",
            format!("{} (at {})", list.status, list.host),
            "optional: start Ollama (`ollama serve`) for AI reviews, or set [analysis] ollama_host",
        ),
        Err(e) => Check::warn("ollama", format!("{e:#}"), "retry once the node answers"),
    }
}

/// mDNS needs a non-loopback interface that is up and does multicast.
fn mdns(enabled: bool) -> Check {
    if !enabled {
        return Check::warn(
            "mdns",
            "off: teammates on the LAN are not discovered",
            "dial them with `--peer` / [network] peers, or set [network] mdns = true",
        );
    }
    let usable: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|dirs| {
            dirs.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let flags = std::fs::read_to_string(e.path().join("flags")).ok()?;
                    let flags =
                        u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
                    // IFF_UP 0x1, IFF_LOOPBACK 0x8, IFF_MULTICAST 0x1000.
                    (flags & 0x1 != 0 && flags & 0x8 == 0 && flags & 0x1000 != 0).then_some(name)
                })
                .collect()
        })
        .unwrap_or_default();
    if usable.is_empty() {
        Check::warn(
            "mdns",
            "on, but no network interface is up with multicast: nobody will be found on the LAN",
            "connect to a network, or dial teammates with `--peer`",
        )
    } else {
        Check::ok("mdns", format!("on, over {}", usable.join(", ")))
    }
}

/// The clocks of the members this node synced with.
async fn clocks(client: &Client) -> Vec<Check> {
    let Ok(list) = client.get_json::<PeerList>(&["api", "v1", "peers"]).await else {
        return Vec::new();
    };
    let measured: Vec<(String, i64)> = list
        .peers
        .iter()
        .filter_map(|p| Some((p.peer_id.clone(), p.clock_offset_ms?)))
        .collect();
    if measured.is_empty() {
        return vec![Check::ok(
            "clocks",
            "no member synced with yet: nothing to compare",
        )];
    }
    let off: Vec<String> = measured
        .iter()
        .filter(|(_, ms)| ms.abs() > MAX_CLOCK_OFFSET_MS)
        .map(|(p, ms)| format!("{} {:+} s", short_id(p), ms / 1000))
        .collect();
    if off.is_empty() {
        let worst = measured.iter().map(|(_, ms)| ms.abs()).max().unwrap_or(0);
        vec![Check::ok(
            "clocks",
            format!(
                "{} members within {} ms of this clock",
                measured.len(),
                worst
            ),
        )]
    } else {
        vec![Check::warn(
            "clocks",
            format!("clocks differ by more than 2 min: {}", off.join(", ")),
            "turn on time sync (systemd-timesyncd, chrony) on the machine whose clock is off: token expiry and change times depend on it",
        )]
    }
}

fn current_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}
