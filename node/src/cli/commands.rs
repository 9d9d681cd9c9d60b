//! What each command does and prints.

use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;

use anyhow::{Context, Result};
use serde::Serialize;
use xencode_node::config::Config;
use xencode_node::daemon::{self, Ready};
use xencode_node::identity::{self, Identity};
use xencode_node::paths::DataDir;
use xencode_protocol::analysis::{
    AnalysisRecord, AnalyzeRequest, DocumentList, ModelList, ProcessedDocument,
};
use xencode_protocol::api::{
    AuditLog, CreateWorkspace, FileImported, FileInfo, FileList, InviteRequest, InviteResponse,
    JoinRequest, LoginLink, NodeInfo, PeerList, RenameWorkspace, RevokeRequest, Role, Standing,
    WorkspaceDetail, WorkspaceList, WorkspaceRemoved, WorkspaceSummary,
};

use super::client::{Client, Failure, refusal_code, short_id};
use super::{FileCommand, NodeArgs, WorkspaceCommand};

pub(super) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    println!("{text}");
    Ok(())
}

pub fn init(dir: &DataDir, name: Option<&str>, json: bool) -> Result<()> {
    let done = identity::init(dir)?;
    if let Some(name) = name {
        set_node_name(&dir.config(), name)?;
    }
    if json {
        return print_json(&serde_json::json!({
            "peer_id": done.identity.peer_id().to_string(),
            "data_dir": dir.root().display().to_string(),
            "created": done.created,
        }));
    }
    if done.created {
        eprintln!("initialized {}", dir.root().display());
    } else {
        eprintln!("{} is already initialized", dir.root().display());
    }
    println!("{}", done.identity.peer_id());
    Ok(())
}

/// Writes `[node] name` into config.toml, keeping the rest of the file as
/// it is (comments included): the `name` line of the `[node]` table is
/// replaced, or added under its header, or the table is added.
fn set_node_name(path: &std::path::Path, name: &str) -> Result<()> {
    if !xencode_protocol::policy::valid_member_name(name) {
        anyhow::bail!(
            "the name {name:?} must be 1 to {} characters, not only spaces, with no control characters",
            xencode_protocol::policy::MAX_MEMBER_NAME_CHARS
        );
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let current = Config::parse(&text, path)?;
    if current.node.name.as_deref() == Some(name) {
        return Ok(());
    }
    let line = format!("name = {}", toml::Value::String(name.to_owned()));
    let updated = with_node_name(&text, &line);
    Config::parse(&updated, path)?;
    // Written whole through a temporary file: a crash leaves the old file.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, &updated).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// `text` with `line` (`name = "…"`) as the `[node]` table's name.
fn with_node_name(text: &str, line: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let Some(header) = lines.iter().position(|l| l.trim() == "[node]") else {
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        return format!("{text}{sep}\n[node]\n{line}\n");
    };
    let end = lines[header + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| header + 1 + i);
    let existing = (header + 1..end).find(|&i| {
        lines[i]
            .trim_start()
            .strip_prefix("name")
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    match existing {
        Some(i) => lines[i] = line.to_owned(),
        None => lines.insert(header + 1, line.to_owned()),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

pub fn id(dir: &DataDir, json: bool) -> Result<()> {
    let peer_id = Identity::load(dir)?.peer_id().to_string();
    if json {
        return print_json(&serde_json::json!({ "peer_id": peer_id }));
    }
    println!("{peer_id}");
    Ok(())
}

pub fn config_show(dir: &DataDir, json: bool) -> Result<()> {
    let config = Config::load(&dir.config())?;
    if json {
        print_json(&config)
    } else {
        print!("{}", config.to_toml());
        Ok(())
    }
}

pub async fn node(dir: &DataDir, args: NodeArgs, json: bool) -> Result<()> {
    let mut config = Config::load(&dir.config())?;
    let overrides = args;
    overrides.apply(&mut config);
    config.validate()?;
    let print_ready = move |ready: &Ready| {
        let mut out = std::io::stdout().lock();
        if json {
            // One line, so a supervisor can read it as soon as it comes.
            let line = serde_json::json!({
                "peer_id": ready.peer_id,
                "listen": ready.listen,
                "api_url": ready.api_url,
            });
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            return;
        }
        let _ = writeln!(out, "peer id: {}", ready.peer_id);
        for addr in &ready.listen {
            let _ = writeln!(out, "listen:  {addr}");
        }
        let _ = writeln!(out, "api:     {}", ready.api_url);
        let _ = out.flush();
    };
    // A reload reads what the start read: the file, the environment, then
    // these flags on top.
    let reload = {
        let path = dir.config();
        move || -> std::result::Result<Config, String> {
            let mut config = Config::load(&path).map_err(|e| e.to_string())?;
            overrides.apply(&mut config);
            config.validate().map_err(|e| e.to_string())?;
            Ok(config)
        }
    };
    daemon::run(
        dir.clone(),
        config,
        print_ready,
        daemon::shutdown_signal(),
        reload,
    )
    .await?;
    Ok(())
}

pub async fn status(client: &Client, json: bool) -> Result<()> {
    let info: NodeInfo = client.get_json(&["api", "v1", "node"]).await?;
    if json {
        return print_json(&info);
    }
    println!("peer id:     {}", info.peer_id);
    println!("version:     {} (commit {})", info.version, info.commit);
    println!("protocol:    {}", info.protocol);
    println!("api:         {}", info.api_url);
    println!("data dir:    {}", info.data_dir);
    for addr in &info.listen {
        println!("listen:      {addr}");
    }
    let reach = match info.reachability {
        xencode_protocol::api::Reachability::Public => "public (peers can dial this node)",
        xencode_protocol::api::Reachability::Private => {
            "private (behind a NAT: reached through members' relays)"
        }
        xencode_protocol::api::Reachability::Unknown => "unknown (not probed yet)",
    };
    println!("reachable:   {reach}");
    println!("workspaces:  {}", info.workspaces);
    println!(
        "store:       {} ({} bytes, schema {})",
        info.store.path, info.store.size_bytes, info.store.schema_version
    );
    println!("uptime:      {}", human_duration(info.uptime_secs));
    Ok(())
}

pub async fn workspace(client: &Client, cmd: WorkspaceCommand, json: bool) -> Result<()> {
    match cmd {
        WorkspaceCommand::Create { name, exist_ok } => {
            let made: Result<WorkspaceSummary> = client
                .post_json(
                    &["api", "v1", "workspaces"],
                    &CreateWorkspace { name: name.clone() },
                )
                .await;
            let ws = match made {
                Err(e) if exist_ok && refusal_code(&e) == Some("name_taken") => {
                    let id = client.resolve_workspace(&name).await?.to_string();
                    let list: WorkspaceList = client.get_json(&["api", "v1", "workspaces"]).await?;
                    let ws = list
                        .workspaces
                        .into_iter()
                        .find(|w| w.id.to_string() == id)
                        .context("the workspace disappeared; try again")?;
                    if !json {
                        eprintln!("workspace {:?} exists already; using it", ws.name);
                    }
                    ws
                }
                other => {
                    let ws = other?;
                    if !json {
                        eprintln!("created workspace {:?}", ws.name);
                    }
                    ws
                }
            };
            if json {
                return print_json(&ws);
            }
            println!("{}", ws.id);
        }
        WorkspaceCommand::Rename { ws, name } => {
            let id = client.resolve_workspace(&ws).await?.to_string();
            let s: WorkspaceSummary = client
                .patch_json(&["api", "v1", "workspaces", &id], &RenameWorkspace { name })
                .await?;
            if json {
                return print_json(&s);
            }
            eprintln!("renamed to {:?} (for every member, as they sync)", s.name);
            println!("{}", s.id);
        }
        WorkspaceCommand::Leave { ws, yes } => {
            remove_workspace(client, &ws, false, yes, json).await?;
        }
        WorkspaceCommand::Rm { ws, yes } => {
            remove_workspace(client, &ws, true, yes, json).await?;
        }
        WorkspaceCommand::List => {
            let list: WorkspaceList = client.get_json(&["api", "v1", "workspaces"]).await?;
            if json {
                return print_json(&list);
            }
            for w in &list.workspaces {
                println!(
                    "{}  {}  ({}, {} files)",
                    w.id,
                    w.name,
                    role_text(w),
                    w.files
                );
            }
        }
        WorkspaceCommand::Show { ws } => {
            let id = client.resolve_workspace(&ws).await?.to_string();
            let d: WorkspaceDetail = client.get_json(&["api", "v1", "workspaces", &id]).await?;
            if json {
                return print_json(&d);
            }
            let s = &d.summary;
            println!("id:        {}", s.id);
            println!("name:      {}", s.name);
            println!("owner:     {}", s.owner);
            println!("your role: {}", role_text(s));
            if s.standing != Standing::Member {
                eprintln!(
                    "note: this node can read what it holds of this workspace, but its changes are refused"
                );
            }
            println!("files:     {}", s.files);
            println!("members:");
            let now = xencode_node::now_ms();
            for m in &d.members {
                let state = if m.revoked {
                    " (revoked)"
                } else if m.expires_at.is_some_and(|e| now > e) {
                    " (expired)"
                } else {
                    ""
                };
                let name = m
                    .name
                    .as_deref()
                    .map(|n| format!("  {n}"))
                    .unwrap_or_default();
                println!("  {}  {}{state}{name}", m.peer_id, m.role.as_str());
            }
            println!("heads:");
            for h in &d.heads {
                println!("  {h}");
            }
        }
    }
    Ok(())
}

/// `workspace leave` (a member) and `workspace rm` (its creator): the same
/// deletion on this node, each refusing the other's case with the right
/// command to use.
async fn remove_workspace(
    client: &Client,
    ws: &str,
    as_owner: bool,
    yes: bool,
    json: bool,
) -> Result<()> {
    let id = client.resolve_workspace(ws).await?.to_string();
    let d: WorkspaceDetail = client.get_json(&["api", "v1", "workspaces", &id]).await?;
    let info: NodeInfo = client.get_json(&["api", "v1", "node"]).await?;
    let owner = d.summary.owner == info.peer_id;
    let name = &d.summary.name;
    if owner && !as_owner {
        return Err(Failure::error(
            "is_owner",
            format!(
                "you created {name:?}; to delete it from this node use `xencode workspace rm {id}`"
            ),
        ));
    }
    if !owner && as_owner {
        return Err(Failure::error(
            "not_owner",
            format!(
                "{name:?} was created by {}; to remove your copy use `xencode workspace leave {id}`",
                short_id(&d.summary.owner)
            ),
        ));
    }
    if !yes {
        confirm(
            &format!(
                "Delete {name:?} ({} files) and its whole history from this node? Members keep their copies. Type the workspace's name to confirm: ",
                d.summary.files
            ),
            name,
        )?;
    }
    let removed: WorkspaceRemoved = client
        .delete_json(&["api", "v1", "workspaces", &id])
        .await?;
    if json {
        return print_json(&removed);
    }
    eprintln!(
        "{} {:?}: {} documents deleted, {} folders unlinked (files kept), {} audit entries redacted{}",
        if as_owner { "removed" } else { "left" },
        removed.name,
        removed.documents,
        removed.folders_unlinked,
        removed.audit_entries_redacted,
        if removed.compacted {
            ""
        } else {
            "; the store could not be compacted now, so freed pages may hold old bytes until the next removal or `xencode backup`/`restore`"
        }
    );
    println!("{}", removed.id);
    Ok(())
}

/// Asks on the terminal; refuses without one (scripts pass `--yes`).
fn confirm(prompt: &str, expected: &str) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(Failure::error(
            "confirmation_needed",
            "this deletes data: pass --yes to confirm without a terminal",
        ));
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read the confirmation")?;
    if answer.trim() != expected.trim() {
        return Err(Failure::error(
            "not_confirmed",
            "not confirmed; nothing was deleted",
        ));
    }
    Ok(())
}

pub async fn file(client: &Client, cmd: FileCommand, json: bool) -> Result<()> {
    match cmd {
        FileCommand::Put { ws, path, file } => {
            let id = client.resolve_workspace(&ws).await?.to_string();
            let bytes = match file.as_deref() {
                None => read_stdin()?,
                Some(p) if p.as_os_str() == "-" => read_stdin()?,
                Some(p) => {
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?
                }
            };
            let info: FileInfo = client.put_file(&id, &path, bytes).await?;
            if json {
                return print_json(&info);
            }
            eprintln!(
                "stored {} ({} bytes, {})",
                info.path,
                info.size_bytes,
                if info.chars.is_some() {
                    "text"
                } else {
                    "binary"
                }
            );
        }
        FileCommand::Get { ws, path } => {
            let id = client.resolve_workspace(&ws).await?.to_string();
            let bytes = client.get_file(&id, &path).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .context("cannot write to standard output")?;
            out.flush().context("cannot write to standard output")?;
        }
        FileCommand::Import {
            ws,
            path,
            file,
            field,
        } => {
            let id = client.resolve_workspace(&ws).await?.to_string();
            let bytes = if file.as_os_str() == "-" {
                read_stdin()?
            } else {
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let imported: FileImported = client.import_automerge(&id, &path, bytes, &field).await?;
            if json {
                return print_json(&imported);
            }
            eprintln!(
                "imported {} ({} characters): {} versions from {} changes by {} authors",
                imported.file.path,
                imported.file.chars.unwrap_or(0),
                imported.versions,
                imported.foreign_changes,
                imported.foreign_actors
            );
        }
        FileCommand::Export { ws, path, file } => {
            let id = client.resolve_workspace(&ws).await?.to_string();
            let bytes = client.export_automerge(&id, &path).await?;
            if file.as_os_str() == "-" {
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)
                    .and_then(|()| out.flush())
                    .context("cannot write to standard output")?;
            } else {
                let mut out = xencode_node::paths::create_private_file(&file)
                    .with_context(|| format!("cannot create {}", file.display()))?;
                out.write_all(&bytes)
                    .and_then(|()| out.sync_all())
                    .with_context(|| format!("cannot write {}", file.display()))?;
                if json {
                    return print_json(&serde_json::json!({
                        "path": path,
                        "file": file,
                        "bytes": bytes.len(),
                    }));
                }
                eprintln!(
                    "exported {path} to {} ({} bytes)",
                    file.display(),
                    bytes.len()
                );
            }
        }
        FileCommand::List { ws } => {
            let id = client.resolve_workspace(&ws).await?.to_string();
            let list: FileList = client
                .get_json(&["api", "v1", "workspaces", &id, "files"])
                .await?;
            if json {
                return print_json(&list);
            }
            let mut paths: Vec<_> = list.files.iter().map(|f| f.path.as_str()).collect();
            paths.sort_unstable();
            for p in paths {
                println!("{p}");
            }
        }
        FileCommand::Rm { ws, path } => {
            let id = client.resolve_workspace(&ws).await?.to_string();
            client.delete_file(&id, &path).await?;
            eprintln!("removed {path}");
        }
    }
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read standard input")?;
    Ok(buf)
}

pub async fn peers(client: &Client, json: bool) -> Result<()> {
    let list: PeerList = client.get_json(&["api", "v1", "peers"]).await?;
    if json {
        return print_json(&list);
    }
    for p in &list.peers {
        let state = connection_text(p);
        let ws: Vec<String> = p
            .workspaces
            .iter()
            .map(|w| {
                let lag = lag_text(w);
                format!("{} ({lag})", w.id)
            })
            .collect();
        let name = p
            .name
            .as_deref()
            .map(|n| format!("  name: {n}"))
            .unwrap_or_default();
        println!("{}  {state}  {}{name}", p.peer_id, ws.join(", "));
    }
    Ok(())
}

/// How a peer is connected, in words: "offline", or "connected" and how:
/// "(direct, 0.8 ms)", "(relayed via <relay>, 4.9 ms)" or "(direct,
/// hole-punched, 1.2 ms)", the round trip once pinged.
fn connection_text(p: &xencode_protocol::api::PeerInfo) -> String {
    use xencode_protocol::api::ConnectionKind;
    if !p.connected {
        return "offline".to_owned();
    }
    let rtt = p
        .rtt_us
        .map(|us| format!(", {:.1} ms", us as f64 / 1000.0))
        .unwrap_or_default();
    match p.connection {
        Some(ConnectionKind::Direct) => format!("connected (direct{rtt})"),
        Some(ConnectionKind::HolePunched) => format!("connected (direct, hole-punched{rtt})"),
        Some(ConnectionKind::Relayed) => format!(
            "connected (relayed via {}{rtt})",
            p.relay.as_deref().unwrap_or("an unknown relay")
        ),
        None => "connected".to_owned(),
    }
}

/// This node's role in a workspace, in words: the role its writes are
/// judged by now, and why there is none.
fn role_text(w: &WorkspaceSummary) -> String {
    let was = w.role.as_str();
    match w.standing {
        Standing::Member => w.effective_role.unwrap_or(w.role).as_str().to_owned(),
        Standing::Revoked => format!("none (revoked; was {was})"),
        Standing::Expired => format!("none (membership expired; was {was})"),
        Standing::NotMember => {
            "none yet (not in the member list: waiting for the first sync)".to_owned()
        }
    }
}

/// How far a peer is, in words: what is measured, what is remembered from
/// its last session, and what is not known are never confused.
fn lag_text(w: &xencode_protocol::api::PeerWorkspace) -> String {
    use xencode_protocol::api::Lag;
    let changes = |n: u64| {
        if n == 1 {
            "1 change".to_owned()
        } else {
            format!("{n} changes")
        }
    };
    match (w.lag, w.behind) {
        (Lag::Live, Some(0)) => "up to date".to_owned(),
        (Lag::Live, Some(n)) => format!("{} behind", changes(n)),
        (Lag::PeerAhead, _) => "ahead of this node".to_owned(),
        (Lag::LastKnown, Some(0)) => "not syncing; nothing new since its last session".to_owned(),
        (Lag::LastKnown, Some(n)) => {
            format!("not syncing; {} behind as of its last session", changes(n))
        }
        (Lag::Live | Lag::LastKnown, None) => "lag unknown".to_owned(),
        (Lag::Unknown, _) if w.syncing => "syncing; lag unknown".to_owned(),
        (Lag::Unknown, _) => "not syncing; lag unknown (never synced with this node)".to_owned(),
    }
}

pub async fn invite(
    client: &Client,
    ws: &str,
    peer_id: String,
    role: &str,
    expires: Option<&str>,
    json: bool,
) -> Result<()> {
    let id = client.resolve_workspace(ws).await?.to_string();
    let role = Role::parse(role).context("the role is viewer, developer or admin")?;
    let expires_secs = expires.map(parse_duration).transpose()?;
    let resp: InviteResponse = client
        .post_json(
            &["api", "v1", "workspaces", &id, "invites"],
            &InviteRequest {
                peer_id,
                role,
                expires_secs,
            },
        )
        .await?;
    if json {
        return print_json(&resp);
    }
    eprintln!(
        "invited {} as {} (token id {}); give them this token for `xencode join`:",
        resp.peer_id,
        resp.role.as_str(),
        resp.token_id
    );
    println!("{}", resp.token);
    Ok(())
}

pub async fn join(client: &Client, token: String, json: bool) -> Result<()> {
    let ws: WorkspaceSummary = client
        .post_json(&["api", "v1", "join"], &JoinRequest { token })
        .await?;
    if json {
        return print_json(&ws);
    }
    eprintln!(
        "joined {:?} as {}; syncing starts when the inviter is reachable",
        ws.name,
        ws.role.as_str()
    );
    println!("{}", ws.id);
    Ok(())
}

pub async fn revoke(client: &Client, ws: &str, target: String) -> Result<()> {
    let id = client.resolve_workspace(ws).await?.to_string();
    let _: serde_json::Value = client
        .post_json(
            &["api", "v1", "workspaces", &id, "revoke"],
            &RevokeRequest {
                target: target.clone(),
            },
        )
        .await?;
    eprintln!("revoked {target}; every node refuses it once the revocation reaches it");
    Ok(())
}

pub async fn analyze(
    client: &Client,
    ws: &str,
    path: String,
    ai: bool,
    model: Option<String>,
    json: bool,
) -> Result<()> {
    let id = client.resolve_workspace(ws).await?.to_string();
    let spinner = spinner(if ai {
        "analysing; asking Ollama for a review"
    } else {
        "analysing"
    });
    let r: Result<AnalysisRecord> = client
        .post_json(
            &["api", "v1", "workspaces", &id, "analyze"],
            &AnalyzeRequest { path, ai, model },
        )
        .await;
    spinner.finish_and_clear();
    let r = r?;
    if json {
        return print_json(&r);
    }
    let a = &r.analysis;
    println!(
        "{}: {} ({} outline items, complexity score {:.2})",
        r.path,
        a.language,
        a.outline.len(),
        a.complexity_score
    );
    for e in &a.syntax_errors {
        println!(
            "  {}:{}:{}: syntax {}: {}",
            r.path, e.line, e.column, e.severity, e.message
        );
    }
    for i in &a.security_issues {
        println!(
            "  {}:{}: {} {} [{}]: {}",
            r.path, i.line, i.severity, i.kind, i.cwe_id, i.description
        );
    }
    for h in &a.performance_hints {
        println!(
            "  {}:{}: performance ({}): {}",
            r.path, h.line, h.impact, h.description
        );
    }
    for s in &a.suggestions {
        println!(
            "  {}:{}-{}: suggestion: {}",
            r.path, s.line_start, s.line_end, s.description
        );
    }
    for o in &a.outline {
        println!(
            "  {} {} (lines {}-{}, complexity {})",
            o.kind, o.name, o.line_start, o.line_end, o.complexity
        );
    }
    if ai {
        match &a.ai.text {
            Some(text) => println!(
                "\nAI review ({}):\n{}",
                a.ai.model.as_deref().unwrap_or("?"),
                text.trim()
            ),
            None => eprintln!("no AI review: {}", a.ai.status),
        }
    }
    if !r.stored {
        eprintln!("not stored in the workspace: your role there does not allow writing");
    }
    Ok(())
}

pub async fn backup(
    client: &Client,
    file: Option<std::path::PathBuf>,
    into: Option<std::path::PathBuf>,
    keep: Option<u32>,
    json: bool,
) -> Result<()> {
    use std::io::IsTerminal;
    let file = match (file, &into) {
        (Some(f), _) => f,
        (None, Some(dir)) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join(backup_name(xencode_node::now_ms()))
        }
        (None, None) => anyhow::bail!("give a FILE or --into DIR"),
    };
    let file = file.as_path();
    if file.exists() {
        anyhow::bail!(
            "{} exists; choose a new file name (a backup never overwrites)",
            file.display()
        );
    }
    let mut resp = client.get_stream(&["api", "v1", "backup"]).await?;
    let total = resp.content_length().unwrap_or(0);
    let workspaces = resp
        .headers()
        .get("x-xencode-workspaces")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let partial = file.with_extension("partial");
    let result = async {
        // A backup holds every workspace's content and the node's tokens.
        let mut out = xencode_node::paths::create_private_file(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut written = 0u64;
        while let Some(chunk) = resp.chunk().await.context("the backup stream broke")? {
            out.write_all(&chunk)
                .with_context(|| format!("writing {}", partial.display()))?;
            written += chunk.len() as u64;
            bar.set_position(written);
        }
        if total != 0 && written != total {
            anyhow::bail!("the backup stream ended after {written} of {total} bytes");
        }
        out.sync_all().context("flushing the backup to disk")?;
        std::fs::rename(&partial, file)
            .with_context(|| format!("cannot rename to {}", file.display()))?;
        Ok(written)
    }
    .await;
    bar.finish_and_clear();
    let written = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let removed = match (&into, keep) {
        (Some(dir), Some(n)) => rotate_backups(dir, n as usize)?,
        _ => Vec::new(),
    };
    if json {
        return print_json(&serde_json::json!({
            "file": file.display().to_string(),
            "bytes": written,
            "workspaces": workspaces,
            "removed": removed,
        }));
    }
    eprintln!(
        "backed up {workspaces} workspace(s), {written} bytes; keep identity.key safe as well: the backup does not hold it"
    );
    for old in &removed {
        eprintln!("removed the old backup {old}");
    }
    println!("{}", file.display());
    Ok(())
}

pub fn restore(dir: &DataDir, file: &std::path::Path, json: bool) -> Result<()> {
    let me = Identity::load(dir)?.peer_id().to_string();
    let done =
        xencode_node::store::backup::restore(file, &dir.store(), &me, xencode_node::now_ms())?;
    if json {
        return print_json(&serde_json::json!({
            "workspaces": done.workspaces,
            "epoch": done.epoch,
            "previous": done.previous.as_ref().map(|p| p.display().to_string()),
        }));
    }
    if let Some(prev) = &done.previous {
        eprintln!("the replaced store is kept at {}", prev.display());
    }
    eprintln!(
        "restored {} workspace(s); this node now writes as actor epoch {}. Start it with `xencode node`: peers send what it missed since the backup",
        done.workspaces, done.epoch
    );
    Ok(())
}

pub async fn audit(
    client: &Client,
    ws: Option<&str>,
    limit: usize,
    denied: bool,
    json: bool,
) -> Result<()> {
    let mut query = vec![("limit", limit.to_string())];
    if denied {
        query.push(("decision", "deny".to_owned()));
    }
    if let Some(ws) = ws {
        query.push(("workspace", client.resolve_workspace(ws).await?.to_string()));
    }
    let log: AuditLog = client
        .get_json_query(&["api", "v1", "audit"], &query)
        .await?;
    if json {
        print_json(&log)?;
    } else {
        // Peers by the names they gave themselves, where they did.
        let names: std::collections::HashMap<String, String> = client
            .get_json::<PeerList>(&["api", "v1", "peers"])
            .await
            .map(|l| {
                l.peers
                    .into_iter()
                    .filter_map(|p| Some((p.peer_id, p.name?)))
                    .collect()
            })
            .unwrap_or_default();
        let who_text = |who: &str| match who.strip_prefix("peer:") {
            Some(peer) => match names.get(peer) {
                Some(n) => format!("peer:{} ({n})", short_id(peer)),
                None => format!("peer:{}", short_id(peer)),
            },
            None => who.to_owned(),
        };
        for e in &log.entries {
            let ws = e
                .workspace
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "{:>6}  {}  {:<5}  {}  {}  {}  {}",
                e.seq,
                utc(e.at),
                e.decision,
                who_text(&e.who),
                e.action,
                ws,
                e.reason
            );
        }
    }
    if !json && !log.refusals.is_empty() {
        // On stderr: stdout keeps one line per chain entry for scripts.
        let total: u64 = log.refusals.iter().map(|r| r.count).sum();
        eprintln!(
            "{total} unauthenticated requests refused, in {} per-minute tallies (their own table; `--json` lists them):",
            log.refusals.len()
        );
        for r in log.refusals.iter().rev().take(10) {
            eprintln!(
                "  {}  {}  {}  ×{}",
                utc(r.minute),
                r.source,
                r.reason,
                r.count
            );
        }
    }
    if log.chain.intact {
        eprintln!("audit chain intact ({} entries checked)", log.chain.checked);
        Ok(())
    } else {
        anyhow::bail!(
            "the audit log was tampered with: the hash chain breaks at entry {}; keep a copy of the store for investigation",
            log.chain.broken_at.unwrap_or_default()
        )
    }
}

/// A time-stamped backup file name (`xencode-20261203T021500Z-042.redb`):
/// names sort by time.
fn backup_name(ms: u64) -> String {
    let stamp: String = utc(ms)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("xencode-{stamp}-{:03}.redb", ms % 1000)
}

/// Deletes all but the newest `keep` backups `backup --into` made in `dir`
/// (other files are left alone); returns the deleted paths.
fn rotate_backups(dir: &std::path::Path, keep: usize) -> Result<Vec<String>> {
    let mut ours: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("xencode-") && n.ends_with(".redb"))
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for old in ours.into_iter().take(excess) {
        std::fs::remove_file(&old).with_context(|| format!("cannot remove {}", old.display()))?;
        removed.push(old.display().to_string());
    }
    Ok(removed)
}

/// A duration as people say it: "42 s", "8 min", "3 h 5 min", "2 d 4 h".
fn human_duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (the civil-from-days
/// algorithm; no time-zone database needed).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub async fn dashboard(client: &Client, no_open: bool, json: bool) -> Result<()> {
    let link: LoginLink = client
        .post_json(&["api", "v1", "dashboard", "login"], &serde_json::json!({}))
        .await?;
    if json {
        return print_json(&link);
    }
    if !no_open {
        match open_browser(&link.url) {
            Ok(Opened::Yes) => eprintln!("opened the dashboard in your browser"),
            Ok(Opened::Pending(program)) => eprintln!(
                "asked `{program}` to open the dashboard; if no browser appears, open this URL within {} s:",
                link.expires_in_secs
            ),
            Err(e) => eprintln!(
                "could not open a browser ({e:#}); open this URL yourself within {} s:",
                link.expires_in_secs
            ),
        }
    } else {
        eprintln!(
            "open this URL within {} s; it logs in once:",
            link.expires_in_secs
        );
    }
    println!("{}", link.url);
    Ok(())
}

/// What became of asking the desktop to open a URL.
enum Opened {
    /// The opener said it did.
    Yes,
    /// The opener is still running (some wait for the browser to close).
    Pending(&'static str),
}

/// Asks the desktop's opener (`xdg-open`, `open`) to show `url`, and says
/// whether it did: without a graphical session (over SSH, say) `xdg-open`
/// fails, and that must not be reported as an open browser.
fn open_browser(url: &str) -> Result<Opened> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let program = if cfg!(target_os = "macos") {
        "open"
    } else {
        let display = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        if !display {
            anyhow::bail!("no graphical session: neither DISPLAY nor WAYLAND_DISPLAY is set");
        }
        "xdg-open"
    };
    let mut child = std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("`{program}` is not available"))?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(Opened::Yes),
            Ok(Some(status)) => anyhow::bail!("`{program}` failed: {status}"),
            Ok(None) if started.elapsed() < WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(None) => return Ok(Opened::Pending(program)),
            Err(e) => return Err(e).with_context(|| format!("waiting for `{program}`")),
        }
    }
}

pub async fn models(client: &Client, json: bool) -> Result<()> {
    let list: ModelList = client.get_json(&["api", "v1", "models"]).await?;
    if list.status != "ok" {
        // The same exit status with or without --json: no models to list.
        return Err(Failure::error(
            "ollama_unavailable",
            format!("{} (Ollama at {})", list.status, list.host),
        ));
    }
    if json {
        return print_json(&list);
    }
    for m in &list.models {
        let default = if list.default_model.as_ref() == Some(&m.name) {
            "  (default)"
        } else {
            ""
        };
        println!("{}  {:.1} GB{default}", m.name, m.size_bytes as f64 / 1e9);
    }
    Ok(())
}

pub async fn doc_add(
    client: &Client,
    ws: &str,
    file: &std::path::Path,
    ai: bool,
    model: Option<String>,
    json: bool,
) -> Result<()> {
    let id = client.resolve_workspace(ws).await?.to_string();
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let info: NodeInfo = client.get_json(&["api", "v1", "node"]).await?;
    let limit = info.limits.max_document_bytes;
    if limit > 0 && size > limit {
        // Refused before sending: the node would cut the upload off
        // mid-stream, which reads as a broken connection, not a reason.
        anyhow::bail!(
            "{} is {size} bytes, over this node's limit of {limit} bytes \
             (analysis.max_document_bytes in the node's config.toml)",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", file.display()))?;
    let spinner = spinner(&format!("extracting {name} ({} KB)", bytes.len() / 1024));
    let doc: Result<ProcessedDocument> = client
        .post_file(
            &["api", "v1", "workspaces", &id, "documents"],
            &[("ai", ai.to_string()), ("model", model.unwrap_or_default())],
            name,
            bytes,
        )
        .await;
    spinner.finish_and_clear();
    let doc = doc?;
    if json {
        return print_json(&doc);
    }
    for w in &doc.metadata.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: {}{}, {} characters in {} sections, confidence {:.2}, {} ms",
        doc.original_filename,
        doc.document_type,
        doc.metadata
            .pages
            .map_or_else(String::new, |p| format!(", {p} pages")),
        doc.extracted_text.chars().count(),
        doc.structured_content.len(),
        doc.confidence_score,
        doc.processing_time_ms
    );
    if let Some(s) = &doc.summary {
        match &s.text {
            Some(text) => println!(
                "\nSummary ({}):\n{}",
                s.model.as_deref().unwrap_or("?"),
                text.trim()
            ),
            None => eprintln!("no AI summary: {}", s.status),
        }
    }
    Ok(())
}

pub async fn doc_list(client: &Client, ws: &str, json: bool) -> Result<()> {
    let id = client.resolve_workspace(ws).await?.to_string();
    let list: DocumentList = client
        .get_json(&["api", "v1", "workspaces", &id, "documents"])
        .await?;
    if json {
        return print_json(&list);
    }
    for d in &list.documents {
        println!(
            "{}  {}  {} characters  confidence {:.2}",
            d.original_filename,
            d.document_type,
            d.extracted_text.chars().count(),
            d.confidence_score
        );
    }
    Ok(())
}

/// A spinner on stderr for work the node does while the user waits; hidden
/// when stderr is not a terminal (scripts see nothing extra).
fn spinner(message: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner().with_message(message.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// `7d`, `12h`, `30m`, `45s` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 7d, 12h or 30m"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => anyhow::bail!("{s:?} is not a duration like 7d, 12h or 30m"),
    };
    n.checked_mul(mult).context("the duration is too long")
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_795_645_605_386), "2026-11-25T22:26:45Z");
    }

    #[test]
    fn the_node_name_goes_into_its_table_and_nothing_else_moves() {
        let line = "name = \"Ada\"";
        assert_eq!(
            super::with_node_name("", line),
            "\n[node]\nname = \"Ada\"\n"
        );
        assert_eq!(
            super::with_node_name("# top\n[node]\n\n[api]\nlisten = \"x\"\n", line),
            "# top\n[node]\nname = \"Ada\"\n\n[api]\nlisten = \"x\"\n"
        );
        assert_eq!(
            super::with_node_name("[node]\nname = \"Old\"\n[api]\n", line),
            "[node]\nname = \"Ada\"\n[api]\n"
        );
        assert_eq!(
            super::with_node_name("[api]\nname_x = 1", line),
            "[api]\nname_x = 1\n\n[node]\nname = \"Ada\"\n"
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        let cases = [
            (42, "42 s"),
            (515, "8 min"),
            (3600, "1 h"),
            (3 * 3600 + 5 * 60 + 9, "3 h 5 min"),
            (86_400 * 2 + 4 * 3600 + 59, "2 d 4 h"),
            (86_400, "1 d"),
        ];
        for (secs, text) in cases {
            assert_eq!(super::human_duration(secs), text);
        }
    }

    #[test]
    fn backups_are_named_by_time_and_rotation_keeps_the_newest() {
        assert_eq!(
            super::backup_name(1_795_645_605_386),
            "xencode-20261125T222645Z-386.redb"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let times = [
            1_795_645_605_386u64,
            1_795_645_605_999,
            1_795_700_000_000,
            1_700_000_000_000,
        ];
        for t in times {
            std::fs::write(dir.path().join(super::backup_name(t)), b"x").expect("write");
        }
        std::fs::write(dir.path().join("notes.txt"), b"mine").expect("write");
        let removed = super::rotate_backups(dir.path(), 2).expect("rotate");
        assert_eq!(removed.len(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.txt".to_owned(),
                super::backup_name(1_795_645_605_999),
                super::backup_name(1_795_700_000_000)
            ]
        );
    }
}
