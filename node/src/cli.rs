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
mod folders;
mod lsp;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use xencode_node::paths::DataDir;

/// Local-first, server-less collaboration node for software teams.
#[derive(Debug, Parser)]
#[command(name = "xencode", version, propagate_version = true)]
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
    Init,
    /// Run the node in the foreground; print its peer id, addresses and API URL.
    Node(NodeArgs),
    /// Print this node's peer id.
    Id,
    /// Show the running node's status.
    Status,
    /// Show peers: connected or not, and per workspace how far behind each is.
    Peers,
    /// Invite a peer to a workspace; print the invitation token for `xencode join`.
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
    Join { token: String },
    /// Revoke a member (by peer id) or a token (by token id).
    Revoke { ws: String, target: String },
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
    Models,
    /// Write a consistent backup of the running node's store to FILE (a new
    /// file). identity.key is not in it: keep a copy of that secret apart.
    Backup { file: std::path::PathBuf },
    /// Replace the store with a backup made by `xencode backup` (stop the
    /// node first). The replaced store is kept beside it; the node starts a
    /// new actor epoch, and peers send back what it missed.
    Restore { file: std::path::PathBuf },
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
    Dashboard {
        /// Print the login URL only; do not start a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// Create, list and show workspaces.
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
    Lsp,
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum FolderCommand {
    /// Bind DIR to workspace WS and keep them in sync. An empty or missing DIR
    /// gets the workspace's files; files in DIR are added to the workspace;
    /// a file on both sides with different content becomes a local edit on
    /// top of the workspace's version (which stays in its history).
    Link {
        /// Workspace id or unique name.
        ws: String,
        dir: PathBuf,
    },
    /// Create a workspace from DIR (a git checkout, say) and link it; print
    /// the workspace id.
    Share {
        dir: PathBuf,
        /// The workspace's name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Linked folders: workspace, state, files, local changes, last sync,
    /// errors.
    List,
    /// Stop syncing DIR; its files stay.
    Unlink { dir: PathBuf },
    /// In a receive-only folder (viewer role), put the workspace's version
    /// back over local edits.
    Revert { dir: PathBuf },
}

#[derive(Debug, Args)]
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
}

#[derive(Debug, Subcommand)]
enum WorkspaceCommand {
    /// Create a workspace; print its id. Names are unique on a node
    /// (without regard to case).
    ///
    /// Example: WS=$(xencode workspace create "Team Docs" --exist-ok)
    Create {
        name: String,
        /// If this node already has a workspace of that name, print its id
        /// instead of refusing (a script run twice).
        #[arg(long)]
        exist_ok: bool,
    },
    /// List workspaces (id, name, role, files).
    List,
    /// Show a workspace: members, files, heads. WS is an id or a unique name.
    Show { ws: String },
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
    Put {
        ws: String,
        path: String,
        file: Option<PathBuf>,
    },
    /// Print a file's exact bytes.
    Get { ws: String, path: String },
    /// Print the workspace's file paths, one per line, sorted.
    List { ws: String },
    /// Remove a file.
    Rm { ws: String, path: String },
}

#[derive(Debug, Subcommand)]
enum DocCommand {
    /// Extract a local file's text (in an isolated process, within the
    /// analysis limits) and store the file and its text in the workspace.
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
    List {
        /// Workspace id or unique name.
        ws: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (config.toml plus XENCODE_* overrides).
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

/// The `--json` form of an error: `{"error": {"code", "message"}}`, the
/// shape of the node's own error answers.
pub fn error_json(e: &anyhow::Error) -> String {
    let body = serde_json::json!({
        "error": { "code": client::error_code(e), "message": format!("{e:#}") }
    });
    serde_json::to_string_pretty(&body).unwrap_or_else(|_| "{}".to_owned())
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<()> {
    let dir = cli.data_dir()?;
    let json = cli.json;
    match cli.command {
        Command::Init => commands::init(&dir, json),
        Command::Node(args) => commands::node(&dir, args, json).await,
        Command::Id => commands::id(&dir, json),
        Command::Config(ConfigCommand::Show) => commands::config_show(&dir, json),
        Command::Restore { file } => commands::restore(&dir, &file, json),
        Command::Lsp => lsp::run(&dir).await,
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
                Command::Backup { file } => commands::backup(&client, &file, json).await,
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
                Command::Init
                | Command::Node(_)
                | Command::Id
                | Command::Config(_)
                | Command::Restore { .. }
                | Command::Lsp
                | Command::ExtractWorker { .. } => Ok(()),
            }
        }
    }
}
