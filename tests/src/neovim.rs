//! A real Neovim (Debian's, headless) with its built-in LSP client running
//! `xencode lsp`, driven over its RPC socket with `nvim --server --remote-expr`.
//!
//! The configuration is the one `docs/editors.md` gives, plus a few helpers
//! for the test to read and edit the buffer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::xencode_bin;

/// The init file: the documented setup and the test's helpers.
const INIT: &str = r#"
vim.o.swapfile = false
vim.o.hidden = true
vim.o.shortmess = vim.o.shortmess .. 'F'
local cmd = { vim.env.XENCODE_BIN, '--data-dir', vim.env.XENCODE_HOME, 'lsp' }
local client_id
vim.api.nvim_create_autocmd({ 'BufReadPost', 'BufNewFile' }, {
  callback = function(args)
    if not client_id then
      client_id = vim.lsp.start_client({
        name = 'xencode',
        cmd = cmd,
        root_dir = vim.fn.getcwd(),
        flags = { debounce_text_changes = 0 },
      })
    end
    vim.lsp.buf_attach_client(args.buf, client_id)
  end,
})
-- The language server brings every change into the buffer; a reload from
-- disk would only race it.
vim.o.autoread = false
_G.xmessages = {}
vim.lsp.handlers['window/showMessage'] = function(_, result)
  table.insert(_G.xmessages, result.message)
end
-- Teammates' cursors (docs/editors.md, "Presence"): a mark where each
-- teammate's cursor is, with its name at the end of the line.
local presence_ns = vim.api.nvim_create_namespace('xencode-presence')
vim.lsp.handlers['xencode/presence'] = function(_, result)
  local buf = vim.uri_to_bufnr(result.uri)
  vim.api.nvim_buf_clear_namespace(buf, presence_ns, 0, -1)
  for _, t in ipairs(result.teammates) do
    local p = t.position
    local line = p and vim.api.nvim_buf_get_lines(buf, p.line, p.line + 1, false)[1]
    if line then
      local ok, col = pcall(vim.str_byteindex, line, p.character, true)
      if not ok then col = #line end
      vim.api.nvim_buf_set_extmark(buf, presence_ns, p.line, col, {
        virt_text = { { ' ' .. t.name .. ' (' .. (t.role or '?') .. ')', 'Comment' } },
        virt_text_pos = 'eol',
      })
    end
  end
end
function _G.xpresence()
  local out = {}
  for _, m in ipairs(vim.api.nvim_buf_get_extmarks(0, presence_ns, 0, -1, { details = true })) do
    table.insert(out, m[2] .. ':' .. m[3] .. ':' .. m[4].virt_text[1][1])
  end
  return vim.fn.json_encode(table.concat(out, '\n'))
end
-- Answers travel through the message area, which shortens long ones:
-- the buffer's text goes through a file instead.
function _G.xdump(path)
  local lines = vim.api.nvim_buf_get_lines(0, 0, -1, true)
  local eol = vim.bo.eol and '\n' or ''
  local f = assert(io.open(path .. '.tmp', 'wb'))
  f:write(table.concat(lines, '\n') .. eol)
  f:close()
  assert(os.rename(path .. '.tmp', path))
  return 1
end
function _G.xattached()
  return #vim.tbl_keys(vim.lsp.buf_get_clients(0))
end
-- Inserts `text` ('|' stands for a newline) at character `pos` of the
-- buffer's text (counted in characters; the text is ASCII here).
function _G.xinsert(pos, text)
  text = text:gsub('|', '\n')
  local lines = vim.api.nvim_buf_get_lines(0, 0, -1, true)
  local row, col = 0, pos
  for i, l in ipairs(lines) do
    if col <= #l then row = i - 1 break end
    col = col - #l - 1
    row = i
  end
  if row >= #lines then row = #lines - 1 col = #lines[#lines] end
  vim.api.nvim_buf_set_text(0, row, col, row, col, vim.split(text, '\n', true))
  return 1
end
function _G.xdiagnostics()
  local out = {}
  for _, d in ipairs(vim.diagnostic.get(0)) do
    table.insert(out, d.lnum .. ':' .. d.message)
  end
  return vim.fn.json_encode(table.concat(out, '\n'))
end
-- Asks for the code actions on 0-based `line` and applies the first, as
-- choosing it in the menu does; its title lands in `xfixed`.
_G.xfixed = ''
function _G.xfix(line)
  local params = {
    textDocument = vim.lsp.util.make_text_document_params(),
    range = { start = { line = line, character = 0 }, ['end'] = { line = line, character = 0 } },
    context = { diagnostics = {} },
  }
  vim.lsp.buf_request(0, 'textDocument/codeAction', params, function(_, actions)
    local a = actions and actions[1]
    if a then
      vim.lsp.util.apply_workspace_edit(a.edit, 'utf-16')
      _G.xfixed = a.title
    end
  end)
  return 1
end
-- The keystroke benchmark: `xtype` inserts `n` characters at the end of
-- the first line, one every `every` ms, and writes when each went in
-- (vim.loop.hrtime, CLOCK_MONOTONIC, ns) to `path`; `xwatch` notes when
-- the first line reached each length, written to `path` by `xwatched`.
function _G.xtype(n, every, path)
  local times, i = {}, 0
  local timer = vim.loop.new_timer()
  timer:start(every, every, vim.schedule_wrap(function()
    i = i + 1
    local line = vim.api.nvim_buf_get_lines(0, 0, 1, true)[1]
    table.insert(times, vim.loop.hrtime())
    vim.api.nvim_buf_set_text(0, 0, #line, 0, #line, { 'k' })
    if i >= n then
      timer:stop()
      local f = assert(io.open(path, 'w'))
      f:write(table.concat(times, '\n'))
      f:close()
    end
  end))
  return 1
end
_G.xseen = {}
function _G.xwatch()
  local buf = vim.api.nvim_get_current_buf()
  vim.api.nvim_buf_attach(buf, false, {
    on_lines = function()
      local now = vim.loop.hrtime()
      local len = #vim.api.nvim_buf_get_lines(buf, 0, 1, true)[1]
      if not _G.xseen[len] then _G.xseen[len] = now end
    end,
  })
  return 1
end
function _G.xwatched(path)
  local f = assert(io.open(path, 'w'))
  for len, t in pairs(_G.xseen) do f:write(len .. ' ' .. t .. '\n') end
  f:close()
  return 1
end
function _G.xlog()
  return vim.fn.json_encode(table.concat(_G.xmessages, '\n'))
end
"#;

/// One headless Neovim editing one file.
pub struct Neovim {
    child: Child,
    socket: PathBuf,
    dump: PathBuf,
    scratch: PathBuf,
}

impl Drop for Neovim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why Neovim cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    match Command::new("nvim").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`nvim` is not installed (apt install neovim)".into()),
    }
}

impl Neovim {
    /// Opens `file` with the LSP client talking to the node of `data_dir`.
    pub fn open(scratch: &Path, data_dir: &Path, file: &Path) -> Result<Self> {
        std::fs::create_dir_all(scratch)?;
        let init = scratch.join("init.lua");
        std::fs::write(&init, INIT)?;
        let socket = scratch.join("nvim.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("nvim")
            .arg("--headless")
            .arg("-n")
            .arg("-u")
            .arg(&init)
            .arg("--listen")
            .arg(&socket)
            .arg(file)
            .current_dir(file.parent().unwrap_or(scratch))
            .env("XENCODE_BIN", xencode_bin())
            .env("XENCODE_HOME", data_dir)
            .env("XDG_STATE_HOME", scratch)
            .env("XDG_DATA_HOME", scratch)
            .env("XDG_CACHE_HOME", scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nvim")?;
        let dump = scratch.join("buffer.txt");
        let nvim = Self {
            child,
            socket,
            dump,
            scratch: scratch.to_path_buf(),
        };
        let started = Instant::now();
        while nvim.expr("luaeval('xattached()')").ok().as_deref() != Some("1") {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("Neovim did not attach the language server");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nvim)
    }

    /// Evaluates a Vim expression in Neovim (Neovim 0.7 prints the result
    /// on stderr, with line ends translated: helpers answer in JSON).
    pub fn expr(&self, e: &str) -> Result<String> {
        let out = Command::new("nvim")
            .arg("--headless")
            .arg("--server")
            .arg(&self.socket)
            .arg("--remote-expr")
            .arg(e)
            .stdin(Stdio::null())
            .output()
            .context("nvim --remote-expr")?;
        if !out.status.success() {
            bail!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }

    /// Evaluates a helper that answers a JSON string.
    fn json(&self, e: &str) -> Option<String> {
        self.expr(e)
            .ok()
            .and_then(|s| serde_json::from_str::<String>(&s).ok())
    }

    /// The buffer's text ("" if Neovim did not answer).
    pub fn text(&self) -> String {
        self.try_text().unwrap_or_default()
    }

    /// The buffer's text, if Neovim answered.
    pub fn try_text(&self) -> Option<String> {
        let path = self.dump.to_str()?.replace('\'', "''");
        self.expr(&format!("luaeval('xdump(_A)', '{path}')")).ok()?;
        std::fs::read_to_string(&self.dump).ok()
    }

    /// Inserts ASCII `text` ('|' for a newline) at character `pos`.
    pub fn insert(&self, pos: usize, text: &str) -> Result<()> {
        let quoted = text.replace('\'', "''");
        self.expr(&format!(
            "luaeval('xinsert(_A[1], _A[2])', [{pos}, '{quoted}'])"
        ))
        .map(|_| ())
    }

    /// The diagnostics shown: `line:message` per line (0-based lines).
    pub fn diagnostics(&self) -> String {
        self.json("luaeval('xdiagnostics()')").unwrap_or_default()
    }

    /// Teammates' cursors drawn in the buffer: `line:column: name (role)`
    /// per teammate (0-based, columns in bytes).
    pub fn presence(&self) -> String {
        self.json("luaeval('xpresence()')").unwrap_or_default()
    }

    /// Closes the buffer (the language server hears `didClose`).
    pub fn close_buffer(&self) -> Result<()> {
        self.expr("execute('bdelete!')").map(|_| ())
    }

    /// Applies the first code action offered on 0-based `line`; its title
    /// once applied (poll: the answer comes asynchronously).
    pub fn fix(&self, line: u32) -> Result<()> {
        self.expr(&format!("luaeval('xfix({line})')")).map(|_| ())
    }

    /// The title of the code action last applied ("" if none yet).
    pub fn fixed(&self) -> String {
        self.json("luaeval('vim.fn.json_encode(xfixed)')")
            .unwrap_or_default()
    }

    /// Starts typing `n` characters at the end of the first line, one every
    /// `every_ms`; when done, `path` holds each one's time (ns, monotonic).
    pub fn type_timed(&self, n: usize, every_ms: u64, path: &Path) -> Result<()> {
        let p = path.to_str().context("utf-8 path")?.replace('\'', "''");
        self.expr(&format!(
            "luaeval('xtype(_A[1], _A[2], _A[3])', [{n}, {every_ms}, '{p}'])"
        ))
        .map(|_| ())
    }

    /// Starts noting when the first line reaches each length.
    pub fn watch_first_line(&self) -> Result<()> {
        self.expr("luaeval('xwatch()')").map(|_| ())
    }

    /// When the first line first reached each length (length → ns,
    /// monotonic), as noted since `watch_first_line`.
    pub fn first_line_times(&self, scratch: &Path) -> Result<Vec<(usize, u64)>> {
        let path = scratch.join("watched.txt");
        let p = path.to_str().context("utf-8 path")?.replace('\'', "''");
        self.expr(&format!("luaeval('xwatched(_A)', '{p}')"))?;
        let text = std::fs::read_to_string(&path)?;
        let mut out: Vec<(usize, u64)> = text
            .lines()
            .filter_map(|l| {
                let (a, b) = l.split_once(' ')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The server's messages shown to the user.
    pub fn messages(&self) -> String {
        self.json("luaeval('xlog()')").unwrap_or_default()
    }

    /// The end of Neovim's LSP log (the language server's stderr lands
    /// there), for a failure message.
    pub fn lsp_log(&self) -> String {
        let text = ["nvim/lsp.log", "lsp.log"]
            .iter()
            .find_map(|p| std::fs::read_to_string(self.scratch.join(p)).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Whether Neovim still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}
