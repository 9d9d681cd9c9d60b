//! `xencode folder ...`: link a directory to a workspace, share one as a new
//! workspace, list, unlink and revert linked folders (`docs/folders.md`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xencode_protocol::api::{
    FolderInfo, FolderList, FolderOutcome, FolderRequest, FolderState, LinkFolder,
};

use super::FolderCommand;
use super::client::Client;
use super::commands::print_json;

pub async fn run(client: &Client, cmd: FolderCommand, json: bool) -> Result<()> {
    match cmd {
        FolderCommand::Link { ws, dir } => {
            let id = client.resolve_workspace(&ws).await?;
            let req = LinkFolder {
                dir: absolute(&dir)?,
                workspace: Some(id),
                name: None,
            };
            link(client, req, json).await
        }
        FolderCommand::Share { dir, name } => {
            let req = LinkFolder {
                dir: absolute(&dir)?,
                workspace: None,
                name,
            };
            link(client, req, json).await
        }
        FolderCommand::List => {
            let list: FolderList = client.get_json(&["api", "v1", "folders"]).await?;
            if json {
                return print_json(&list);
            }
            if list.folders.is_empty() {
                eprintln!(
                    "no linked folders; link one with `xencode folder link WS DIR` or `xencode folder share DIR`"
                );
            }
            for f in &list.folders {
                print_folder(f);
            }
            Ok(())
        }
        FolderCommand::Unlink { dir } => {
            let out: FolderOutcome = client
                .post_json(
                    &["api", "v1", "folders", "unlink"],
                    &FolderRequest {
                        dir: absolute(&dir)?,
                    },
                )
                .await?;
            if json {
                return print_json(&out);
            }
            eprintln!("stopped syncing {}; its files stay", out.dir);
            Ok(())
        }
        FolderCommand::Revert { dir } => {
            let out: FolderOutcome = client
                .post_json(
                    &["api", "v1", "folders", "revert"],
                    &FolderRequest {
                        dir: absolute(&dir)?,
                    },
                )
                .await?;
            if json {
                return print_json(&out);
            }
            eprintln!("restored {} file(s) in {}", out.changed, out.dir);
            for k in &out.kept {
                eprintln!("  kept {k} (not in the workspace)");
            }
            Ok(())
        }
    }
}

/// Links, then follows the first comparison (a progress bar on a terminal)
/// until the folder is in sync.
async fn link(client: &Client, req: LinkFolder, json: bool) -> Result<()> {
    let info: FolderInfo = client.post_json(&["api", "v1", "folders"], &req).await?;
    let bar = if !json && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} files ({eta} left)",
        ) {
            bar.set_style(style);
        }
        bar.set_message("syncing the folder");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut info = info;
    loop {
        let list: FolderList = client.get_json(&["api", "v1", "folders"]).await?;
        let Some(now) = list.folders.into_iter().find(|f| f.dir == info.dir) else {
            bail!("the folder {} is no longer linked", info.dir);
        };
        info = now;
        bar.set_length(info.scan_total as u64);
        bar.set_position(info.scanned as u64);
        if info.state != FolderState::Scanning {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    if json {
        return print_json(&info);
    }
    eprintln!(
        "{} is linked to workspace {:?}: {} files in sync",
        info.dir, info.workspace_name, info.files
    );
    for e in &info.errors {
        eprintln!("  problem: {e}");
    }
    println!("{}", info.workspace);
    Ok(())
}

fn print_folder(f: &FolderInfo) {
    let state = match f.state {
        FolderState::Scanning => "scanning",
        FolderState::Watching => "watching",
        FolderState::Error => "error",
    };
    println!("{}", f.dir);
    println!("  workspace:     {} ({})", f.workspace_name, f.workspace);
    println!(
        "  state:         {state}{}",
        if f.receive_only {
            " (receive-only: your role cannot write; local edits are not sent)"
        } else {
            ""
        }
    );
    println!("  files:         {}", f.files);
    println!("  not yet taken in: {}", f.pending);
    if !f.local_changes.is_empty() {
        println!(
            "  local changes: {} (not shared; `xencode folder revert {}` restores them)",
            f.local_changes.len(),
            f.dir
        );
        for p in &f.local_changes {
            println!("    {p}");
        }
    }
    if f.whole_files > 0 {
        println!(
            "  stored whole:  {} (binary or over store.max_text_bytes: the last write wins)",
            f.whole_files
        );
    }
    match f.last_sync {
        Some(t) => println!("  last sync:     {}", ago(t)),
        None => println!("  last sync:     never"),
    }
    for s in &f.skipped {
        println!("  skipped:       {s}");
    }
    for e in &f.errors {
        println!("  error:         {e}");
    }
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(at_ms: u64) -> String {
    let secs = xencode_node::now_ms().saturating_sub(at_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// DIR made absolute against the current directory (the node may run
/// elsewhere).
fn absolute(dir: &Path) -> Result<String> {
    let abs: PathBuf = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(dir)
    };
    let abs = std::fs::canonicalize(&abs).unwrap_or(abs);
    abs.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not valid UTF-8", abs.display()))
}
