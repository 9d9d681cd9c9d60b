//! Command-line interface. `init` and `node` act locally; every other command
//! is a thin client of the running node's API, found through
//! `<data-dir>/api-url` with the token from `<data-dir>/api-token`.
//!
//! Output rules scripts rely on (ARCHITECTURE section 7): ids alone on the
//! last stdout line, `file list` one sorted path per line, `file get` the
//! exact bytes, `--json` the bare JSON object, any error a non-zero exit with
//! a message on stderr (and under `--json` also `{"error": {code, message}}`
//! on stdout).

mod client;
mod commands;
mod doctor;
mod folders;
mod lsp;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use xencode_node::paths::DataDir;

/// Local-first, server-less collaboration node for software teams.
#[derive(Debug, Parser)]
#[command(
    name = "xencode",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILT_FROM_COMMIT"), ")"),
    long_version = long_version(),
    propagate_version = true
)]
pub struct Cli {
    /// Data directory (identity, API token, config, store).
    /// Default: the per-user data directory, e.g. ~/.local/share/xencode.
    #[arg(long, global = true, env = "XENCODE_HOME", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Print the bare JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the identity, API token and config; print the peer id.
    ///
    /// Keeps what already exists, so it is safe to run again.
    ///
    /// Example: xencode init --name "Ada (laptop)"
    Init {
        /// The name teammates see for this node (`[node] name` in
        /// config.toml; up to 64 characters).
        #[arg(long)]
        name: Option<String>,
    },
    /// Run the node in the foreground; print its peer id, addresses and API URL.
    ///
    /// Example: xencode node --api 127.0.0.1:0 --listen /ip4/0.0.0.0/tcp/4001
    Node(NodeArgs),
    /// Print this node's peer id.
    ///
    /// Example: B=$(xencode id)
    Id,
    /// Show the running node's status.
    ///
    /// Example: xencode status --json
    Status,
    /// Show peers: connected or not, and per workspace how far behind each is.
    ///
    /// Example: xencode peers
    Peers,
    /// Invite a peer to a workspace; print the invitation token for `xencode join`.
    ///
    /// Example: xencode invite "Team Docs" 12D3KooW... --role developer --expires 7d
    Invite {
        /// Workspace id or unique name.
        ws: String,
        /// The invitee's peer id (they get it with `xencode id`).
        peer_id: String,
        /// viewer (read), developer (read, write) or admin (also invite, revoke).
        #[arg(long, value_parser = ["viewer", "developer", "admin"])]
        role: String,
        /// How long the token is valid, e.g. 7d, 12h, 30m (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Accept an invitation: add the workspace and start syncing; print its id.
    ///
    /// Example: xencode join "$INVITE"
    Join {
        /// The invitation token printed by `xencode invite`.
        token: String,
    },
    /// Revoke a member (by peer id) or a token (by token id).
    ///
    /// Example: xencode revoke "Team Docs" 12D3KooW...
    Revoke {
        /// Workspace id or unique name.
        ws: String,
        /// A member's peer id, or a token id (`token_id` from `invite --json`).
        target: String,
    },
    /// Add documents (PDF, HTML, DOCX, Markdown) to a workspace.
    #[command(subcommand)]
    Doc(DocCommand),
    /// Internal: extract a document read from stdin (run by the node).
    #[command(name = "extract-worker", hide = true)]
    ExtractWorker {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        max_memory_mib: u64,
    },
    /// Analyse a Python file of the workspace (syntax errors, outline,
    /// complexity, security issues, performance hints, suggestions) and store
    /// the result in the workspace for the team.
    ///
    /// Example: xencode analyze "Team Docs" src/main.py --ai
    Analyze {
        /// Workspace id or unique name.
        ws: String,
        /// The file's path inside the workspace.
        path: String,
        /// Also ask the local Ollama (OLLAMA_HOST) for a review; without
        /// Ollama the static results still come, with `ai.status` saying why.
        #[arg(long)]
        ai: bool,
        /// The Ollama model (default: the first of analysis.ollama_models
        /// Ollama has, else the largest that fits this machine).
        #[arg(long, requires = "ai")]
        model: Option<String>,
    },
    /// List the local Ollama's models and the one reviews use by default.
    ///
    /// Exits 1 (code `ollama_unavailable` under --json) when Ollama does not answer.
    ///
    /// Example: xencode models
    Models,
    /// Write a consistent backup of the running node's store to FILE (a new
    /// file). identity.key is not in it: keep a copy of that secret apart.
    ///
    /// With --into DIR, the file is DIR/xencode-<UTC time>.redb (DIR is
    /// created, 0700) and --keep N then deletes all but the newest N backups
    /// there: what the shipped systemd timer runs.
    ///
    /// Example: xencode backup --into ~/backups/xencode --keep 14
    Backup {
        /// The backup file to create (never overwritten).
        #[arg(required_unless_present = "into", conflicts_with = "into")]
        file: Option<std::path::PathBuf>,
        /// Write a new time-stamped backup into this directory instead.
        #[arg(long, value_name = "DIR")]
        into: Option<std::path::PathBuf>,
        /// After a backup --into DIR, keep only the newest N there.
        #[arg(long, value_name = "N", requires = "into", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
    },
    /// Replace the store with a backup made by `xencode backup` (stop the
    /// node first). The replaced store is kept beside it; the node starts a
    /// new actor epoch, and peers send back what it missed.
    ///
    /// Example: xencode restore ~/backups/xencode-2026-12-01.redb
    Restore {
        /// A backup made by `xencode backup` of this node.
        file: std::path::PathBuf,
    },
    /// Show the audit log: authorization decisions (peers' sessions and
    /// changes, every refusal, every API request that changes state; not
    /// your own reads), node-wide and for the workspaces this node
    /// administers, and whether its hash chain is intact (exit 1 if not).
    ///
    /// Example: xencode audit --denied --limit 20
    Audit {
        /// Only this workspace's entries (needs the admin role there).
        ws: Option<String>,
        /// How many of the newest entries to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only refusals.
        #[arg(long)]
        denied: bool,
    },
    /// Open the dashboard in the browser, logged in by a one-time URL
    /// (valid for 2 minutes, usable once). The URL is printed on stdout.
    ///
    /// Example: xencode dashboard --no-open
    Dashboard {
        /// Print the login URL only; do not start a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// Create, list, show, rename, leave and remove workspaces.
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Put, get, list and remove files of a workspace.
    #[command(subcommand)]
    File(FileCommand),
    /// Work in a folder: link a directory to a workspace, kept in sync both
    /// ways (edits merge character by character), with any editor or tool.
    #[command(subcommand)]
    Folder(FolderCommand),
    /// A language server over stdio for editors, started by the editor for
    /// files in a linked folder: live co-editing with teammates and the
    /// team's findings as diagnostics (docs/editors.md).
    ///
    /// Example: xencode lsp   (in Neovim: cmd = { "xencode", "lsp" })
    Lsp,
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check this node's setup — the data directory's permissions, the
    /// config, the running node and its API, Ollama, LAN discovery, the
    /// listen addresses, the members' clocks — and say what to do about
    /// each problem (exit 1 if a check fails).
    ///
    /// Example: xencode doctor
    Doctor,
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell), generated from these very definitions.
    ///
    /// Example: xencode completions bash > ~/.local/share/bash-completion/completions/xencode
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from these very definitions;
    /// with --dir, write one page per command there (xencode.1,
    /// xencode-workspace-create.1, ...).
    ///
    /// Example: xencode man --dir ~/.local/share/man/man1 && man xencode-folder-link
    Man {
        /// Write every command's page into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum FolderCommand {
    /// Bind DIR to workspace WS and keep them in sync. An empty or missing DIR
    /// gets the workspace's files; files in DIR are added to the workspace;
    /// a file on both sides with different content becomes a local edit on
    /// top of the workspace's version (which stays in its history).
    ///
    /// Example: xencode folder link "Team Docs" ~/work/team-docs
    Link {
        /// Workspace id or unique name.
        ws: String,
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// Create a workspace from DIR (a git checkout, say) and link it; print
    /// the workspace id.
    ///
    /// Example: xencode folder share ~/project --name project
    Share {
        /// The directory whose files become the workspace's.
        dir: PathBuf,
        /// The workspace's name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Linked folders: workspace, state, files, local changes, last sync,
    /// errors.
    ///
    /// Example: xencode folder list
    List,
    /// Stop syncing DIR; its files stay.
    ///
    /// Example: xencode folder unlink ~/work/team-docs
    Unlink {
        /// A linked directory.
        dir: PathBuf,
    },
    /// In a receive-only folder (viewer role), put the workspace's version
    /// back over local edits.
    ///
    /// Example: xencode folder revert ~/work/team-docs
    Revert {
        /// A linked, receive-only directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
struct NodeArgs {
    /// libp2p address to listen on (repeatable); replaces network.listen.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Loopback address of the local API (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// Peer to dial at start (repeatable); added to network.peers.
    #[arg(long, value_name = "MULTIADDR")]
    peer: Vec<String>,
    /// Do not discover peers on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Relay for members of this node's workspaces (libp2p circuit relay
    /// v2), so teammates behind NATs reach each other through this node;
    /// sets network.relay. Strangers are refused.
    #[arg(long)]
    relay: bool,
    /// A member's relay to be reachable through (repeatable; a multiaddr
    /// ending in /p2p/<peer id>); added to network.relays.
    #[arg(long, value_name = "MULTIADDR")]
    relay_via: Vec<String>,
}

impl NodeArgs {
    /// The flags over the file and the environment (at start and at every
    /// reload).
    fn apply(&self, config: &mut xencode_node::config::Config) {
        if let Some(api) = self.api {
            config.api.listen = api;
        }
        if !self.listen.is_empty() {
            config.network.listen.clone_from(&self.listen);
        }
        for p in &self.peer {
            if !config.network.peers.contains(p) {
                config.network.peers.push(p.clone());
            }
        }
        if self.no_mdns {
            config.network.mdns = false;
        }
        if self.relay {
            config.network.relay = true;
        }
        for r in &self.relay_via {
            if !config.network.relays.contains(r) {
                config.network.relays.push(r.clone());
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum WorkspaceCommand {
    /// Create a workspace; print its id. Names are unique on a node
    /// (without regard to case).
    ///
    /// Example: WS=$(xencode workspace create "Team Docs" --exist-ok)
    Create {
        /// The workspace's name, as people will pick it.
        name: String,
        /// If this node already has a workspace of that name, print its id
        /// instead of refusing (a script run twice).
        #[arg(long)]
        exist_ok: bool,
    },
    /// List workspaces (id, name, role, files).
    ///
    /// Example: xencode workspace list
    List,
    /// Show a workspace: members, files, heads.
    ///
    /// Example: xencode workspace show "team docs"
    Show {
        /// Workspace id or unique name (any case).
        ws: String,
    },
    /// Rename a workspace for every member (admins).
    ///
    /// Example: xencode workspace rename "Team Docs" "Team Handbook"
    Rename {
        /// Workspace id or unique name.
        ws: String,
        /// The new name (unique on this node).
        name: String,
    },
    /// Leave a workspace you were invited to: this node forgets it and
    /// deletes its copy (its linked folders are unlinked; their files
    /// stay). Join again with a new invitation.
    ///
    /// Example: xencode workspace leave "Team Docs" --yes
    Leave {
        /// Workspace id or unique name.
        ws: String,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Remove a workspace you created: this node deletes it and its whole
    /// history from its store (linked folders are unlinked; their files
    /// stay). Members keep their own copies.
    ///
    /// Example: xencode workspace rm "Team Docs" --yes
    Rm {
        /// Workspace id or unique name.
        ws: String,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FileCommand {
    /// Store a file: FILE's bytes, or standard input if FILE is `-` or absent.
    ///
    /// Example: echo 'print("hi")' | xencode file put "Team Docs" src/main.py
    Put {
        /// Workspace id or unique name.
        ws: String,
        /// The path inside the workspace (e.g. src/main.py).
        path: String,
        /// A local file to read (default: standard input).
        file: Option<PathBuf>,
    },
    /// Print a file's exact bytes.
    ///
    /// Example: xencode file get "Team Docs" src/main.py > main.py
    Get {
        /// Workspace id or unique name.
        ws: String,
        /// The path inside the workspace.
        path: String,
    },
    /// Import a document made by another Automerge application (automerge
    /// npm or PyPI packages, automerge-repo) as a new text file, with its
    /// history: each of its versions becomes a change of this node's,
    /// keeping its time and naming its original author. The text is read from
    /// the document's root key `text`, or `--field`. A text over
    /// store.max_text_bytes is refused (such files are stored whole and take
    /// no character edits, so the history could not be kept).
    ///
    /// Example: xencode file import "Team Docs" notes.md notes.automerge
    Import {
        /// Workspace id or unique name.
        ws: String,
        /// The new file's path inside the workspace (it must not exist).
        path: String,
        /// The saved Automerge document (`-` for standard input).
        file: PathBuf,
        /// The root key holding the text.
        #[arg(long, default_value = "text")]
        field: String,
    },
    /// Save a file's Automerge document, history included, for other
    /// Automerge applications: they find the text at the root key `text`
    /// (a binary file's bytes at `data`). The output file is created 0600.
    ///
    /// Example: xencode file export "Team Docs" notes.md notes.automerge
    Export {
        /// Workspace id or unique name.
        ws: String,
        /// The path inside the workspace.
        path: String,
        /// Where to write the document (`-` for standard output).
        file: PathBuf,
    },
    /// Print the workspace's file paths, one per line, sorted.
    ///
    /// Example: xencode file list "Team Docs"
    List {
        /// Workspace id or unique name.
        ws: String,
    },
    /// Remove a file.
    ///
    /// Example: xencode file rm "Team Docs" old/notes.md
    Rm {
        /// Workspace id or unique name.
        ws: String,
        /// The path inside the workspace.
        path: String,
    },
}

#[derive(Debug, Subcommand)]
enum DocCommand {
    /// Extract a local file's text (in an isolated process, within the
    /// analysis limits) and store the file and its text in the workspace.
    ///
    /// Example: xencode doc add "Team Docs" ./design.pdf --ai
    Add {
        /// Workspace id or unique name.
        ws: String,
        /// A local PDF, HTML, DOCX or Markdown file.
        file: std::path::PathBuf,
        /// Also ask the local Ollama for a summary (without Ollama the text
        /// still comes, with `summary.status` saying why).
        #[arg(long)]
        ai: bool,
        /// The Ollama model (default: chosen by the node).
        #[arg(long, requires = "ai")]
        model: Option<String>,
    },
    /// List the workspace's processed documents.
    ///
    /// Example: xencode doc list "Team Docs"
    List {
        /// Workspace id or unique name.
        ws: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (config.toml plus XENCODE_* overrides).
    ///
    /// Example: xencode config show
    Show,
}

impl Cli {
    /// The worker's arguments, if this invocation is the extraction worker.
    pub fn extract_worker(&self) -> Option<(&str, u64)> {
        match &self.command {
            Command::ExtractWorker {
                kind,
                max_memory_mib,
            } => Some((kind.as_str(), *max_memory_mib)),
            _ => None,
        }
    }

    /// Whether `--json` was given (errors are then JSON on stdout too).
    pub fn json(&self) -> bool {
        self.json
    }

    /// Whether this invocation runs the node (for the default log level).
    pub fn runs_node(&self) -> bool {
        matches!(self.command, Command::Node(_))
    }

    fn data_dir(&self) -> Result<DataDir> {
        match &self.data_dir {
            Some(d) => Ok(DataDir::new(d)),
            None => DataDir::default_root().map(DataDir::new).context(
                "cannot find a per-user data directory; pass --data-dir DIR or set XENCODE_HOME",
            ),
        }
    }
}

/// `xencode --version`: the release, the commit it was built from, and the
/// versions that decide compatibility — the wire protocol peers must share
/// and the store schema this build reads and writes.
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{} (commit {})\nprotocol: {}\nstore schema: {}",
            env!("CARGO_PKG_VERSION"),
            env!("BUILT_FROM_COMMIT"),
            xencode_protocol::wire::SYNC_PROTOCOL,
            xencode_node::store::tables::SCHEMA_VERSION
        )
    })
}

/// The `--json` form of an error: `{"error": {"code", "message"}}`, the
/// shape of the node's own error answers.
pub fn error_json(e: &anyhow::Error) -> String {
    let body = serde_json::json!({
        "error": { "code": client::error_code(e), "message": format!("{e:#}") }
    });
    serde_json::to_string_pretty(&body).unwrap_or_else(|_| "{}".to_owned())
}

/// Writes generated text to stdout; a reader that stopped early (`| head`)
/// is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<()> {
    let dir = cli.data_dir()?;
    let json = cli.json;
    match cli.command {
        Command::Init { name } => commands::init(&dir, name.as_deref(), json),
        Command::Node(args) => commands::node(&dir, args, json).await,
        Command::Id => commands::id(&dir, json),
        Command::Config(ConfigCommand::Show) => commands::config_show(&dir, json),
        Command::Restore { file } => commands::restore(&dir, &file, json),
        Command::Lsp => lsp::run(&dir).await,
        Command::Doctor => doctor::run(&dir, json).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into memory first: the generator panics on a failed write
            // (a closed pipe).
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "xencode", &mut out);
            write_stdout(&out)
        }
        Command::Man { dir: Some(out) } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::generate_to(cmd, &out)
                .with_context(|| format!("cannot write the manual pages into {}", out.display()))?;
            eprintln!("wrote the manual pages into {}", out.display());
            Ok(())
        }
        Command::Man { dir: None } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("cannot render the manual page")?;
            write_stdout(&out)
        }
        command => {
            let client = client::Client::connect(&dir)?;
            match command {
                Command::Status => commands::status(&client, json).await,
                Command::Peers => commands::peers(&client, json).await,
                Command::Invite {
                    ws,
                    peer_id,
                    role,
                    expires,
                } => commands::invite(&client, &ws, peer_id, &role, expires.as_deref(), json).await,
                Command::Join { token } => commands::join(&client, token, json).await,
                Command::Revoke { ws, target } => commands::revoke(&client, &ws, target).await,
                Command::Analyze {
                    ws,
                    path,
                    ai,
                    model,
                } => commands::analyze(&client, &ws, path, ai, model, json).await,
                Command::Models => commands::models(&client, json).await,
                Command::Backup { file, into, keep } => {
                    commands::backup(&client, file, into, keep, json).await
                }
                Command::Audit { ws, limit, denied } => {
                    commands::audit(&client, ws.as_deref(), limit, denied, json).await
                }
                Command::Dashboard { no_open } => commands::dashboard(&client, no_open, json).await,
                Command::Doc(DocCommand::Add {
                    ws,
                    file,
                    ai,
                    model,
                }) => commands::doc_add(&client, &ws, &file, ai, model, json).await,
                Command::Doc(DocCommand::List { ws }) => {
                    commands::doc_list(&client, &ws, json).await
                }
                Command::Workspace(cmd) => commands::workspace(&client, cmd, json).await,
                Command::File(cmd) => commands::file(&client, cmd, json).await,
                Command::Folder(cmd) => folders::run(&client, cmd, json).await,
                Command::Init { .. }
                | Command::Node(_)
                | Command::Id
                | Command::Config(_)
                | Command::Restore { .. }
                | Command::Lsp
                | Command::Completions { .. }
                | Command::Doctor
                | Command::Man { .. }
                | Command::ExtractWorker { .. } => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command a user can run says what it does and shows an
    /// example; every argument says what it is (the man page and
    /// completions are generated from this).
    #[test]
    fn every_command_has_help_and_an_example_and_every_argument_help() {
        fn walk(cmd: &clap::Command, path: &str, problems: &mut Vec<String>) {
            let name = format!("{path} {}", cmd.get_name()).trim().to_owned();
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if cmd.is_hide_set() {
                    break;
                }
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() {
                    problems.push(format!("{name}: argument {id} has no help"));
                }
            }
            let leaf = cmd.get_subcommands().next().is_none();
            if leaf && !cmd.is_hide_set() && name != "xencode" {
                let long = cmd
                    .get_long_about()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                if cmd.get_about().is_none() {
                    problems.push(format!("{name}: no description"));
                }
                if !long.contains("Example: ") || !long.contains("xencode ") {
                    problems.push(format!("{name}: no example"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &name, problems);
                }
            }
        }
        let mut problems = Vec::new();
        walk(&super::Cli::command(), "", &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
