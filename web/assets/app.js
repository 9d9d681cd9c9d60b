// Xencode dashboard: plain JavaScript, no dependencies, nothing loaded from
// another origin. Every text from the node is put into the page with
// textContent, never parsed as HTML, so a file or a member name cannot inject
// markup.
'use strict';

const state = {
  csrf: null,
  peerId: null,
  events: null,
  activity: [],
  // The view currently shown reacts to events through this hook (set with
  // listen()); events that come while a view loads wait in `pending`.
  onEvent: null,
  pending: [],
};

// ---- small helpers -------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(...nodes) {
  const main = document.getElementById('main');
  main.replaceChildren(...nodes.filter(Boolean));
}

function toast(message, kind) {
  const t = document.getElementById('toast');
  t.textContent = message;
  t.className = kind || '';
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : '';
}

function short(id) {
  return id && id.length > 16 ? id.slice(0, 8) + '…' + id.slice(-6) : id;
}

// The role this node's writes are judged by now (`effective_role`; null when
// revoked, expired or not a member), and how to say it.
function effectiveRole(w) {
  return w.effective_role === undefined ? w.role : w.effective_role;
}

function canWriteIn(w) {
  return ['developer', 'admin'].includes(effectiveRole(w));
}

function roleText(w) {
  switch (w.standing) {
    case 'revoked': return `no role (revoked; was ${w.role})`;
    case 'expired': return `no role (membership expired; was ${w.role})`;
    case 'not_member': return 'not a member (yet: waiting for the first sync)';
    default: return w.role;
  }
}

// How a peer is connected (`connection`, `relay`, `rtt_us` in GET /api/v1/peers).
const connectionText = (p) => {
  if (!p.connected) return 'offline';
  const rtt = p.rtt_us == null ? '' : `, ${(p.rtt_us / 1000).toFixed(1)} ms`;
  switch (p.connection) {
    case 'relayed': return `connected (relayed via ${short(p.relay || '?')}${rtt})`;
    case 'hole-punched': return `connected (direct, hole-punched${rtt})`;
    case 'direct': return `connected (direct${rtt})`;
    default: return 'connected';
  }
};

// How far a peer is in one workspace (`lag` in GET /api/v1/peers): what is
// measured live, what is remembered from its last session, and what is not
// known are never confused.
function lagText(w) {
  const changes = (n) => (n === 1 ? '1 change' : `${n} changes`);
  switch (w.lag) {
    case 'live': return w.behind === 0 ? 'syncing, up to date' : `syncing, ${changes(w.behind)} behind`;
    case 'peer_ahead': return 'syncing, the peer has changes this node has not seen yet';
    case 'last_known': return w.behind === 0
      ? 'not syncing; nothing new since its last session'
      : `not syncing; ${changes(w.behind)} behind as of its last session`;
    default: return w.syncing ? 'syncing; lag unknown' : 'not syncing; lag unknown (never synced with this node)';
  }
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The error of a refused response: its `{error: {code, message}}`, or the
// HTTP status when the body is not that.
async function failure(r) {
  try {
    const e = await r.json();
    return new ApiError(r.status, e.error.code, e.error.message);
  } catch (_) {
    return new ApiError(r.status, 'http_' + r.status, `${r.status} ${r.statusText}`);
  }
}

// Calls the API with the session cookie, and the CSRF token on writes.
async function api(method, path, body, extra) {
  const headers = Object.assign({}, (extra && extra.headers) || {});
  const opts = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  if (body !== undefined) {
    if (typeof body === 'string') {
      opts.body = body;
    } else {
      headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
  }
  const r = await fetch(path, opts);
  if (!r.ok) throw await failure(r);
  if (r.status === 204) return null;
  const type = r.headers.get('content-type') || '';
  return type.includes('application/json') ? r.json() : r.text();
}

function enc(s) { return encodeURIComponent(s); }
function filePath(path) { return path.split('/').map(enc).join('/'); }

function errorBox(e) {
  return h('p', { class: 'bad', role: 'alert' }, e.message || String(e));
}

// Runs an async action from a button, disabling it meanwhile.
async function busy(button, action) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (e) {
    toast(e.message || String(e));
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- live events -------------------------------------------------------

// Makes `handler` the current view's: it first gets the events that came
// while the view was loading (its first fetch may predate them).
function listen(handler) {
  state.onEvent = handler;
  for (const ev of state.pending.splice(0)) handler(ev);
}

// A duration as people say it: "42 s", "8 min", "3 h 5 min", "2 d 4 h".
function duration(secs) {
  const d = Math.floor(secs / 86400), hr = Math.floor(secs / 3600) % 24, m = Math.floor(secs / 60) % 60;
  if (d) return hr ? `${d} d ${hr} h` : `${d} d`;
  if (hr) return m ? `${hr} h ${m} min` : `${hr} h`;
  return m ? `${m} min` : `${secs} s`;
}

function describe(ev) {
  switch (ev.type) {
    case 'file_changed': return `${ev.origin === 'remote' ? 'peer edited' : 'edited'} ${ev.path}`;
    case 'index_changed': return `workspace index updated (${ev.origin})`;
    case 'access_changed': return `members updated (${ev.origin})`;
    case 'workspace_added': return 'workspace added';
    case 'workspace_removed': return 'workspace removed from this node';
    case 'peer': return `peer ${short(ev.peer)} ${ev.connected ? 'connected' : 'disconnected'}`;
    case 'session': return `sync with ${short(ev.peer)} ${ev.state}${ev.reason ? ': ' + ev.reason : ''}`;
    case 'applied': return `applied ${ev.changes} change(s) from ${short(ev.peer)}`;
    case 'rejected': return `refused ${ev.count} change(s) from ${short(ev.peer)}: ${ev.reason}`;
    case 'analysis': return `${ev.kind} analysis stored for ${ev.target}`;
    case 'lagged': return `missed ${ev.missed} events; refreshed`;
    default: return ev.type;
  }
}

const EVENT_TYPES = ['file_changed', 'index_changed', 'access_changed', 'workspace_added', 'workspace_removed',
  'peer', 'session', 'applied', 'rejected', 'analysis', 'lagged'];

function connectEvents() {
  const live = document.getElementById('live');
  const es = new EventSource('/api/v1/events');
  state.events = es;
  es.onopen = () => { live.textContent = 'live'; live.className = 'pill ok'; };
  es.onerror = () => { live.textContent = 'reconnecting…'; live.className = 'pill warn'; };
  for (const type of EVENT_TYPES) {
    es.addEventListener(type, (msg) => {
      let ev;
      try { ev = JSON.parse(msg.data); } catch (_) { return; }
      state.activity.unshift({ at: Date.now(), ev });
      state.activity.length = Math.min(state.activity.length, 100);
      if (state.onEvent) state.onEvent(ev);
      else if (state.pending.length < 256) state.pending.push(ev);
    });
  }
}

// ---- views ---------------------------------------------------------------

function loginNeeded() {
  document.getElementById('live').textContent = 'logged out';
  show(h('section', { id: 'login-needed' },
    h('h1', { text: 'Log in to this node' }),
    h('p', {}, 'Run ', h('code', { text: 'xencode dashboard' }),
      ' in a terminal on this machine: it opens this page with a one-time login link.'),
  ));
}

async function overview() {
  const peersBox = h('div', {}, h('p', { class: 'muted', text: 'Loading peers…' }));
  const activity = h('ul', { class: 'events', id: 'activity', 'aria-live': 'polite' });
  const drawActivity = () => {
    activity.replaceChildren(...(state.activity.length
      ? state.activity.slice(0, 30).map((a) =>
        h('li', {}, h('span', { class: 'muted' }, new Date(a.at).toLocaleTimeString(), ' '), describe(a.ev)))
      : [h('li', { class: 'muted', text: 'Nothing yet: edits, peers and sync sessions show up here as they happen.' })]));
  };
  const nodeBox = h('div', {}, h('p', { class: 'muted', text: 'Loading…' }));
  const foldersBox = h('div', {}, h('p', { class: 'muted', text: 'Loading folders…' }));
  show(h('h1', { text: 'Overview' }),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-labelledby': 'node-h' }, h('h2', { id: 'node-h', text: 'This node' }), nodeBox),
      h('section', { class: 'card', 'aria-labelledby': 'act-h' }, h('h2', { id: 'act-h', text: 'Sync activity' }), activity)),
    h('section', { 'aria-labelledby': 'peers-h' }, h('h2', { id: 'peers-h', text: 'Peers' }), peersBox),
    h('section', { 'aria-labelledby': 'folders-h' }, h('h2', { id: 'folders-h', text: 'Linked folders' }), foldersBox));
  drawActivity();
  const loadFolders = async () => {
    try {
      const { folders } = await api('GET', '/api/v1/folders');
      if (!folders.length) {
        foldersBox.replaceChildren(h('p', { class: 'muted' }, 'No linked folders. Work in a folder with ',
          h('code', { text: 'xencode folder share DIR' }), ' or ', h('code', { text: 'xencode folder link WS DIR' }), '.'));
        return;
      }
      const ago = (t) => (t ? `${Math.max(0, Math.round((Date.now() - t) / 1000))} s ago` : 'never');
      foldersBox.replaceChildren(h('table', { id: 'folders-table' },
        h('thead', {}, h('tr', {}, h('th', { text: 'Folder' }), h('th', { text: 'Workspace' }), h('th', { text: 'State' }),
          h('th', { text: 'Files' }), h('th', { text: 'Local changes' }), h('th', { text: 'Last sync' }), h('th', { text: 'Problems' }))),
        h('tbody', {}, ...folders.map((f) => h('tr', {},
          h('td', {}, h('code', { text: f.dir })),
          h('td', {}, h('a', { href: `#/ws/${f.workspace}`, text: f.workspace_name || short(f.workspace) })),
          h('td', { class: f.state === 'error' ? 'bad' : 'ok',
            text: f.state === 'scanning' ? `scanning ${f.scanned}/${f.scan_total}` : f.state + (f.receive_only ? ' (receive-only)' : '') }),
          h('td', { text: `${f.files} files${f.whole_files ? `, ${f.whole_files} stored whole` : ''}` }),
          h('td', { text: f.local_changes.length ? `${f.local_changes.length} not shared: ${f.local_changes.slice(0, 5).join(', ')}` : (f.pending ? `${f.pending} pending` : 'none') }),
          h('td', { text: ago(f.last_sync) }),
          h('td', {}, ...(f.errors.length || f.skipped.length ? [...f.errors, ...f.skipped].slice(-5).map((e) => h('div', { class: 'bad', text: e })) : ['none'])))))));
    } catch (e) {
      foldersBox.replaceChildren(errorBox(e));
    }
  };
  loadFolders();
  const folderTimer = setInterval(() => {
    if (!document.body.contains(foldersBox)) { clearInterval(folderTimer); return; }
    loadFolders();
  }, 2000);
  const load = async () => {
    try {
      const [node, peers, wss] = await Promise.all([
        api('GET', '/api/v1/node'), api('GET', '/api/v1/peers'), api('GET', '/api/v1/workspaces')]);
      const names = Object.fromEntries(wss.workspaces.map((w) => [w.id, w.name]));
      nodeBox.replaceChildren(h('dl', {},
        h('dt', { text: 'Peer id' }), h('dd', {}, h('code', { id: 'node-id', text: node.peer_id })),
        h('dt', { text: 'Addresses' }), h('dd', {}, ...(node.listen.length ? node.listen.map((a) => h('div', {}, h('code', { text: a }))) : ['none yet'])),
        h('dt', { text: 'Workspaces' }), h('dd', { text: String(node.workspaces) }),
        h('dt', { text: 'Store' }), h('dd', { text: `${(node.store.size_bytes / 1e6).toFixed(1)} MB, epoch ${node.epoch}` }),
        h('dt', { text: 'Uptime' }), h('dd', { id: 'node-uptime', text: duration(node.uptime_secs) })));
      if (!peers.peers.length) {
        peersBox.replaceChildren(h('p', { class: 'muted' }, 'No peers yet. Invite a teammate from a workspace page; on the same LAN nodes find each other by themselves.'));
        return;
      }
      peersBox.replaceChildren(h('table', { id: 'peers-table' },
        h('thead', {}, h('tr', {}, h('th', { text: 'Peer' }), h('th', { text: 'Connection' }), h('th', { text: 'Workspaces (lag)' }))),
        h('tbody', {}, ...peers.peers.map((p) => h('tr', {},
          h('td', {}, ...(p.name ? [h('span', { class: 'peer-name', text: p.name }), ' '] : []), h('code', { title: p.peer_id, text: short(p.peer_id) })),
          h('td', { class: p.connected ? 'ok' : 'muted', text: connectionText(p) }),
          h('td', {}, ...p.workspaces.map((w) => h('div', {},
            `${names[w.id] || short(w.id)}: `, lagText(w)))))))));
    } catch (e) {
      nodeBox.replaceChildren(errorBox(e));
    }
  };
  await load();
  let timer = null;
  listen((ev) => {
    drawActivity();
    if (['peer', 'session', 'applied', 'workspace_added', 'workspace_removed', 'lagged'].includes(ev.type)) {
      clearTimeout(timer);
      timer = setTimeout(load, 300);
    }
  });
}

async function workspaces() {
  const list = h('div', {}, h('p', { class: 'muted', text: 'Loading workspaces…' }));
  const name = h('input', { id: 'create-ws-name', name: 'name', required: true, maxlength: 128, autocomplete: 'off' });
  const createBtn = h('button', { type: 'submit', id: 'create-ws-btn', text: 'Create' });
  const create = h('form', { class: 'inline', id: 'create-ws-form', onsubmit: (e) => {
    e.preventDefault();
    busy(createBtn, async () => {
      const ws = await api('POST', '/api/v1/workspaces', { name: name.value });
      location.hash = `#/ws/${ws.id}`;
    });
  } }, h('label', {}, 'New workspace name', name), createBtn);
  const token = h('textarea', { id: 'join-token', name: 'token', required: true, spellcheck: 'false' });
  const joinBtn = h('button', { type: 'submit', id: 'join-btn', text: 'Join' });
  const join = h('form', { id: 'join-form', onsubmit: (e) => {
    e.preventDefault();
    busy(joinBtn, async () => {
      const ws = await api('POST', '/api/v1/join', { token: token.value.trim() });
      toast(`Joined ${ws.name}; syncing starts now.`, 'info');
      location.hash = `#/ws/${ws.id}`;
    });
  } }, h('label', {}, 'Invitation token from a teammate', token), joinBtn);
  show(h('h1', { text: 'Workspaces' }), list,
    h('div', { class: 'grid' },
      h('section', { class: 'card' }, h('h2', { text: 'Create' }), create),
      h('section', { class: 'card' }, h('h2', { text: 'Join' }), join)));
  const load = async () => {
    try {
      const r = await api('GET', '/api/v1/workspaces');
      list.replaceChildren(r.workspaces.length
        ? h('ul', { id: 'ws-list' }, ...r.workspaces.map((w) => h('li', {},
          h('a', { href: `#/ws/${w.id}`, text: w.name }), ' ',
          h('span', { class: 'muted', text: `${roleText(w)} · ${w.files} file(s) · ${short(w.id)}` }))))
        : h('p', { class: 'muted', id: 'ws-empty', text: 'No workspaces yet: create one, or join with a token a teammate sent you.' }));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  };
  await load();
  listen((ev) => { if (['workspace_added', 'workspace_removed', 'access_changed', 'index_changed'].includes(ev.type)) load(); });
}

async function workspace(id) {
  const head = h('div', {}, h('p', { class: 'muted', text: 'Loading workspace…' }));
  const members = h('div');
  const files = h('div');
  const docs = h('div');
  const analyses = h('div');
  const admin = h('div');
  show(head, h('div', { class: 'grid' },
    h('section', { class: 'card', 'aria-labelledby': 'files-h' }, h('h2', { id: 'files-h', text: 'Files' }), files),
    h('section', { class: 'card', 'aria-labelledby': 'members-h' }, h('h2', { id: 'members-h', text: 'Members' }), members, admin)),
  h('div', { class: 'grid' },
    h('section', { class: 'card', 'aria-labelledby': 'docs-h' }, h('h2', { id: 'docs-h', text: 'Documents' }), docs),
    h('section', { class: 'card', 'aria-labelledby': 'an-h' }, h('h2', { id: 'an-h', text: 'Analyses' }), analyses)));
  let detail;
  const canWrite = () => detail && canWriteIn(detail);
  const load = async () => {
    try {
      detail = await api('GET', `/api/v1/workspaces/${enc(id)}`);
    } catch (e) { head.replaceChildren(errorBox(e)); return; }
    head.replaceChildren(...[h('h1', { id: 'ws-title', text: detail.name }),
      detail.standing && detail.standing !== 'member'
        ? h('p', { class: 'bad', id: 'standing-banner', role: 'alert', text: detail.standing === 'not_member'
          ? 'This node is not in the member list it holds yet: writes wait for the first sync with a member.'
          : `Your membership was ${detail.standing === 'revoked' ? 'revoked' : 'ended by its expiry'}: you can read what this node holds; your changes are refused everywhere.` })
        : null,
      h('p', { class: 'muted' }, `Your role: ${roleText(detail)} · ${detail.members.filter((m) => !m.revoked).length} member(s) · id `, h('code', { text: id }))].filter(Boolean));
    members.replaceChildren(h('table', { id: 'members' },
      h('thead', {}, h('tr', {}, h('th', { text: 'Peer' }), h('th', { text: 'Role' }), h('th', { text: 'Added' }), h('th', { text: '' }))),
      h('tbody', {}, ...detail.members.map((m) => h('tr', {},
        h('td', {}, ...(m.name ? [h('span', { class: 'peer-name', text: m.name }), ' '] : []), h('code', { title: m.peer_id, text: short(m.peer_id) }), m.peer_id === state.peerId ? ' (you)' : ''),
        h('td', { text: m.revoked ? `${m.role} (revoked)` : m.role }),
        h('td', { text: when(m.added_at) }),
        h('td', {}, effectiveRole(detail) === 'admin' && !m.revoked && m.peer_id !== state.peerId
          ? h('button', { type: 'button', class: 'danger', 'aria-label': `Revoke ${m.peer_id}`, onclick: (e) => {
            if (!confirm(`Revoke ${m.peer_id}? Their sessions close and later writes are refused.`)) return;
            busy(e.currentTarget, async () => { await api('POST', `/api/v1/workspaces/${enc(id)}/revoke`, { target: m.peer_id }); load(); });
          } }, 'Revoke') : null))))));
    // Built once per role: a reload must not wipe a token being copied.
    const eff = String(effectiveRole(detail));
    if (admin.dataset.role !== eff) {
      admin.dataset.role = eff;
      admin.replaceChildren(eff === 'admin' ? inviteForm(id) : h('p', { class: 'muted', text: 'Only admins invite and revoke.' }));
    }
    loadFiles(); loadDocs(); loadAnalyses();
  };
  const loadFiles = async () => {
    try {
      const r = await api('GET', `/api/v1/workspaces/${enc(id)}/files`);
      const path = h('input', { id: 'new-file-path', required: true, placeholder: 'src/main.py', autocomplete: 'off' });
      const add = h('button', { type: 'submit', text: 'Create file' });
      files.replaceChildren(...[
        r.files.length ? h('ul', { id: 'files' }, ...r.files.map((f) => h('li', {},
          h('a', { href: `#/ws/${id}/file/${filePath(f.path)}`, text: f.path }), ' ',
          h('span', { class: 'muted', text: `${f.kind}, ${f.size_bytes} B, ${when(f.updated_at)}` }))))
          : h('p', { class: 'muted', id: 'files-empty', text: 'No files yet.' }),
        canWrite() ? h('form', { class: 'inline', id: 'new-file-form', onsubmit: (e) => {
          e.preventDefault();
          busy(add, async () => {
            await api('PUT', `/api/v1/workspaces/${enc(id)}/files/${filePath(path.value)}`, '', { headers: { 'Content-Type': 'application/octet-stream' } });
            location.hash = `#/ws/${id}/file/${filePath(path.value)}`;
          });
        } }, h('label', {}, 'New file path', path), add) : null].filter(Boolean));
    } catch (e) { files.replaceChildren(errorBox(e)); }
  };
  const loadDocs = async () => {
    try {
      const r = await api('GET', `/api/v1/workspaces/${enc(id)}/documents`);
      docs.replaceChildren(...[
        r.documents.length ? h('ul', { id: 'documents' }, ...r.documents.map((d) => h('li', {},
          h('a', { href: `#/ws/${id}/doc/${enc(d.id)}`, text: d.original_filename }), ' ',
          h('span', { class: 'muted', text: `${d.document_type}, ${d.metadata.pages ? d.metadata.pages + ' pages, ' : ''}confidence ${d.confidence_score.toFixed(2)}` }))))
          : h('p', { class: 'muted', text: 'No documents yet.' }),
        canWrite() ? uploader(id, loadDocs) : null].filter(Boolean));
    } catch (e) { docs.replaceChildren(errorBox(e)); }
  };
  const loadAnalyses = async () => {
    try {
      const r = await api('GET', `/api/v1/workspaces/${enc(id)}/analyses`);
      analyses.replaceChildren(r.analyses.length
        ? h('ul', { id: 'analyses' }, ...r.analyses.map((a) => h('li', {},
          h('a', { href: `#/ws/${id}/file/${filePath(a.path)}`, text: a.path }), ' ',
          h('span', { class: 'muted', text: `${a.syntax_errors.length} syntax, ${a.security_issues.length} security, ${a.performance_hints.length} performance · by ${short(a.by)} ${when(a.at)}` }))))
        : h('p', { class: 'muted', text: 'No analyses yet: open a file and press Analyze.' }));
    } catch (e) { analyses.replaceChildren(errorBox(e)); }
  };
  await load();
  // Bursts of events (a teammate typing) become one refresh.
  let pending = null, everything = false;
  const refresh = (all) => {
    everything = everything || all;
    clearTimeout(pending);
    pending = setTimeout(() => {
      if (everything) load(); else { loadFiles(); loadDocs(); loadAnalyses(); }
      everything = false;
    }, 300);
  };
  listen((ev) => {
    if (ev.type === 'lagged') { refresh(true); return; }
    if (ev.workspace !== id) return;
    if (ev.type === 'access_changed') refresh(true);
    else if (['index_changed', 'file_changed', 'analysis'].includes(ev.type)) refresh(false);
  });
}

function inviteForm(id) {
  const peer = h('input', { id: 'invite-peer', required: true, autocomplete: 'off', spellcheck: 'false' });
  const role = h('select', { id: 'invite-role' }, ...['developer', 'viewer', 'admin'].map((r) => h('option', { value: r, text: r })));
  const days = h('input', { id: 'invite-days', type: 'number', min: 1, max: 3650, value: 7 });
  const out = h('textarea', { id: 'invite-token', readonly: true, 'aria-label': 'Invitation token', hidden: true });
  const copy = h('button', { type: 'button', class: 'secondary', id: 'copy-invite', hidden: true, onclick: async () => {
    try { await navigator.clipboard.writeText(out.value); toast('Token copied.', 'info'); } catch (_) { out.select(); toast('Select-all done: press Ctrl+C to copy.', 'info'); }
  } }, 'Copy token');
  const btn = h('button', { type: 'submit', id: 'invite-btn', text: 'Invite' });
  return h('form', { id: 'invite-form', onsubmit: (e) => {
    e.preventDefault();
    busy(btn, async () => {
      const r = await api('POST', `/api/v1/workspaces/${enc(id)}/invites`, {
        peer_id: peer.value.trim(), role: role.value, expires_secs: Number(days.value) * 86400 });
      out.value = r.token; out.hidden = false; copy.hidden = false;
      out.focus(); out.select();
    });
  } }, h('h2', { text: 'Invite a teammate' }),
  h('div', { class: 'inline' }, h('label', {}, 'Their peer id (xencode id)', peer), h('label', {}, 'Role', role), h('label', {}, 'Expires in days', days), btn),
  out, copy);
}

function uploader(id, done) {
  const input = h('input', { type: 'file', id: 'doc-input', accept: '.pdf,.docx,.html,.htm,.md,.markdown' });
  const ai = h('input', { type: 'checkbox', id: 'doc-ai' });
  const bar = h('progress', { id: 'upload-progress', max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress' });
  const status = h('p', { id: 'upload-status', role: 'status', 'aria-live': 'polite' });
  const send = (file) => {
    const form = new FormData();
    if (ai.checked) form.append('ai', 'true');
    form.append('file', file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api/v1/workspaces/${enc(id)}/documents`);
    xhr.setRequestHeader('X-CSRF-Token', state.csrf || '');
    bar.hidden = false; bar.value = 0;
    status.textContent = `Uploading ${file.name}…`;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = Math.round(100 * e.loaded / e.total); };
    xhr.upload.onload = () => { status.textContent = `Extracting ${file.name}…`; };
    xhr.onload = () => {
      bar.hidden = true;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) {
        status.textContent = `${file.name}: ${body.extracted_text.length} characters extracted.`;
        done();
        location.hash = `#/ws/${id}/doc/${enc(body.id)}`;
      } else {
        status.textContent = '';
        toast(body && body.error ? body.error.message : `upload failed (${xhr.status})`);
      }
    };
    xhr.onerror = () => { bar.hidden = true; status.textContent = ''; toast('The upload failed: is the node running?'); };
    xhr.send(form);
  };
  input.addEventListener('change', () => { if (input.files.length) send(input.files[0]); });
  const zone = h('div', { class: 'drop', id: 'drop-zone' },
    h('p', {}, 'Drop a PDF, DOCX, HTML or Markdown file here, or ', h('label', { class: 'inline-label' }, 'choose one', input)),
    h('label', { class: 'check' }, h('span', {}, ai, ' Also summarise with the local Ollama')), bar, status);
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault(); zone.classList.remove('over');
    if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
  });
  return zone;
}

// ---- the live editor -----------------------------------------------------

// The smallest single splice turning `a` into `b`, in UTF-16 units, never
// splitting a surrogate pair.
function diff(a, b) {
  let start = 0;
  const min = Math.min(a.length, b.length);
  while (start < min && a.charCodeAt(start) === b.charCodeAt(start)) start++;
  if (start > 0 && isHigh(a.charCodeAt(start - 1))) start--;
  let endA = a.length, endB = b.length;
  while (endA > start && endB > start && a.charCodeAt(endA - 1) === b.charCodeAt(endB - 1)) { endA--; endB--; }
  if (endA < a.length && isLow(a.charCodeAt(endA))) { endA++; endB++; }
  return { start, removed: a.slice(start, endA), inserted: b.slice(start, endB) };
}
function isHigh(c) { return c >= 0xd800 && c <= 0xdbff; }
function isLow(c) { return c >= 0xdc00 && c <= 0xdfff; }
// Unicode scalar values in a string (the API counts those).
function scalars(s) { let n = 0; for (const _ of s) n++; return n; }

// The UTF-16 index of the `n`th Unicode scalar value of `s` (its length past the end).
function utf16At(s, n) {
  let i = 0;
  for (const ch of s) { if (n-- <= 0) break; i += ch.length; }
  return i;
}

// `text` with the API's edits applied in order (positions in scalar values,
// each relative to the text the ones before it left).
function applyEdits(text, edits) {
  for (const e of edits) {
    const start = utf16At(text, e.pos);
    const end = start + utf16At(text.slice(start), e.delete || 0);
    text = text.slice(0, start) + (e.insert || '') + text.slice(end);
  }
  return text;
}

// Where a cursor at `pos` goes when `d` is applied before, at or after it.
function moveCursor(pos, d) {
  if (pos <= d.start) return pos;
  if (pos >= d.start + d.removed.length) return pos - d.removed.length + d.inserted.length;
  return d.start + d.inserted.length;
}

async function fileView(id, path) {
  const status = h('span', { id: 'editor-status', class: 'pill', role: 'status', 'aria-live': 'polite', text: 'loading' });
  const box = h('div', {}, h('p', { class: 'muted', text: 'Loading file…' }));
  const results = h('section', { id: 'analysis', 'aria-labelledby': 'res-h' });
  const ai = h('input', { type: 'checkbox', id: 'analyze-ai' });
  const analyzeBtn = h('button', { type: 'button', id: 'analyze-btn', text: 'Analyze' });
  // Analysis is of Python source: no button for anything else.
  const analysable = /\.(py|pyw|pyi)$/i.test(path);
  const analyzeRow = h('div', { class: 'inline', hidden: !analysable }, analyzeBtn,
    h('label', { class: 'check' }, h('span', {}, ai, ' AI review (local Ollama)')));
  show(h('p', {}, h('a', { href: `#/ws/${id}`, text: '← workspace' })),
    h('h1', {}, h('code', { id: 'file-title', text: path }), ' ', status),
    box, analyzeRow, results);
  const url = `/api/v1/workspaces/${enc(id)}/files/${filePath(path)}`;
  let detail;
  try {
    detail = await api('GET', `/api/v1/workspaces/${enc(id)}`);
  } catch (e) { box.replaceChildren(errorBox(e)); return; }
  let text;
  try {
    const r = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
    if (!r.ok) throw await failure(r);
    if (r.headers.get('x-xencode-file-kind') === 'binary') {
      box.replaceChildren(h('p', { class: 'muted', text: `A binary file (${(await r.arrayBuffer()).byteLength} bytes): stored whole, not editable here.` }));
      status.textContent = 'binary';
      analyzeRow.remove();
      return;
    }
    text = await r.text();
  } catch (e) { box.replaceChildren(errorBox(e)); return; }

  const readOnly = !canWriteIn(detail);
  const editor = h('textarea', { id: 'editor', spellcheck: 'false', 'aria-label': `Content of ${path}`, readonly: readOnly });
  editor.value = text;
  box.replaceChildren(editor);
  if (readOnly) {
    box.append(h('p', { class: 'muted', text: effectiveRole(detail) === 'viewer'
      ? 'You are a viewer here: read only.'
      : `Read only: your role here is ${roleText(detail)}.` }));
  }
  status.textContent = readOnly ? 'read only' : 'saved';

  // `shadow` is the text the node holds as far as we know: everything
  // acknowledged plus what is queued. Keystrokes become splices against it,
  // sent one request at a time, in order. A writer's page also knows the
  // version (`base`, the file's heads) its acknowledged text is: edits go
  // with it, so the node places them in that text and merges what arrived
  // since (a position counted in a text without a teammate's latest
  // keystrokes would land in the wrong place), and answers with the edits
  // that bring the page to the merged text.
  let shadow = text;
  let base = null;
  const queue = [];
  let inflight = false;
  let refreshWanted = false;
  const spliceUrl = `/api/v1/workspaces/${enc(id)}/splice`;
  if (!readOnly) {
    // The text and its version at once: the catch-up from the empty text.
    try {
      const r = await api('POST', spliceUrl, { path, edits: [], base: [] });
      if (editor.value === shadow && !queue.length) {
        const fresh = applyEdits('', r.catch_up || []);
        if (fresh !== editor.value) takeText(fresh);
        base = r.heads;
      }
    } catch (_) { /* without a version, edits go as before */ }
  }

  // Puts `fresh` in the editor, keeping the cursor and selection where they
  // were relative to the text around them.
  function takeText(fresh) {
    const d = diff(editor.value, fresh);
    const focused = document.activeElement === editor;
    const [s, e, dir] = [editor.selectionStart, editor.selectionEnd, editor.selectionDirection];
    const top = editor.scrollTop;
    editor.value = fresh;
    shadow = fresh;
    editor.setSelectionRange(moveCursor(s, d), moveCursor(e, d), dir);
    editor.scrollTop = top;
    if (focused) editor.focus();
  }

  const pump = async () => {
    if (inflight || !queue.length) {
      if (!inflight && !queue.length && refreshWanted) refresh();
      return;
    }
    inflight = true;
    const edits = queue.splice(0, queue.length);
    status.textContent = 'saving…';
    try {
      const r = await api('POST', spliceUrl, base ? { path, edits, base } : { path, edits });
      if (base && r.mine) {
        if (!queue.length && editor.value === shadow) {
          // Nothing typed since: take the teammates' edits too.
          const fresh = applyEdits(shadow, r.catch_up || []);
          if (fresh !== editor.value) takeText(fresh);
          base = r.heads;
        } else {
          // Typed since, against the text at `mine`: sent next with it.
          base = r.mine;
          refreshWanted = true;
        }
      }
      status.textContent = 'saved';
      status.className = 'pill';
    } catch (e) {
      status.textContent = 'not saved';
      status.className = 'pill bad';
      toast(`Your edit was not saved: ${e.message}`);
      base = null; // the page's text is no longer its version's
      refreshWanted = true; // resync with what the node holds
    } finally {
      inflight = false;
      pump();
    }
  };

  editor.addEventListener('input', () => {
    const now = editor.value;
    const d = diff(shadow, now);
    if (!d.removed.length && !d.inserted.length) return;
    queue.push({
      pos: scalars(shadow.slice(0, d.start)),
      delete: scalars(d.removed),
      insert: d.inserted,
    });
    shadow = now;
    pump();
  });

  // Takes the node's text when no local edit is on its way: a writer's
  // page asks for the edits since its version, a reader's fetches the text.
  let fetching = false;
  const refresh = async () => {
    refreshWanted = true;
    if (inflight || queue.length || fetching) return;
    refreshWanted = false;
    let fresh;
    let heads = null;
    const from = editor.value;
    fetching = true;
    try {
      if (!readOnly) {
        // From the page's version, or (none known) from the empty text.
        const r = await api('POST', spliceUrl, { path, edits: [], base: base || [] });
        fresh = applyEdits(base ? from : '', r.catch_up || []);
        heads = r.heads;
      } else {
        const r = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
        if (!r.ok) return;
        fresh = await r.text();
      }
    } catch (_) { return; } finally {
      fetching = false;
      // Events that came during the fetch may be newer than what it got.
      if (refreshWanted && !inflight && !queue.length) setTimeout(refresh, 0);
    }
    if (inflight || queue.length || editor.value !== shadow || editor.value !== from) { refreshWanted = true; return; }
    if (heads) base = heads;
    if (fresh === editor.value) return;
    takeText(fresh);
  };

  analyzeBtn.addEventListener('click', () => busy(analyzeBtn, () => analyze(id, path, ai.checked, results, () => editor.value)));
  // The team's stored findings for this file, as they are: marked stale if
  // the file changed since they were made.
  if (analysable) {
    api('GET', `/api/v1/workspaces/${enc(id)}/analyses`).then((list) => {
      const rec = list.analyses.find((a) => a.path === path);
      if (!rec || results.childElementCount) return;
      const provenance = h('p', { id: 'analysis-provenance', class: rec.stale ? 'warn' : 'muted' },
        `Stored analysis by ${short(rec.by)}, ${when(rec.at)}.`,
        rec.stale ? h('span', { id: 'analysis-stale', text: ' The file changed since: findings may no longer be on these lines. Press Analyze to run it again.' }) : null);
      drawAnalysis(results, rec, editor.value, h('div', { id: 'ai-review' }), provenance);
    }).catch(() => { /* findings are a bonus; the editor works without */ });
  }
  listen((ev) => {
    if (ev.type === 'lagged' || (ev.type === 'file_changed' && ev.workspace === id && ev.path === path && ev.origin === 'remote')) refresh();
  });
}

// Runs an analysis; with AI, streams the review as Ollama writes it.
async function analyze(id, path, withAi, results, source) {
  const review = h('div', { id: 'ai-review', 'aria-live': 'polite' });
  results.replaceChildren(h('h2', { id: 'res-h', text: 'Analysis' }), h('p', { class: 'muted', text: 'Analysing…' }));
  const headers = { 'Content-Type': 'application/json', 'X-CSRF-Token': state.csrf || '' };
  if (withAi) headers.Accept = 'text/event-stream';
  const r = await fetch(`/api/v1/workspaces/${enc(id)}/analyze`, {
    method: 'POST', credentials: 'same-origin', headers, body: JSON.stringify({ path, ai: withAi }) });
  if (!r.ok) throw await failure(r);
  if (!withAi) { drawAnalysis(results, await r.json(), source(), review); return; }
  // Server-Sent Events over fetch: `event:` and `data:` lines, blank-line separated.
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      let name = 'message'; const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (!data.length) continue;
      let payload;
      try { payload = JSON.parse(data.join('\n')); } catch (_) { continue; }
      if (name === 'analysis') { review.textContent = ''; drawAnalysis(results, payload, source(), review); }
      else if (name === 'token') review.textContent += payload;
      else if (name === 'done') drawAnalysis(results, payload, source(), review);
      else if (name === 'error') throw new Error(payload.error ? payload.error.message : 'analysis failed');
    }
  }
}

// `rec` is an AnalysisRecord: the analysis' fields plus provenance.
function drawAnalysis(results, rec, source, review, provenance) {
  const a = rec;
  const notes = new Map();
  const note = (line, text, sev) => { if (!notes.has(line)) notes.set(line, []); notes.get(line).push({ text, sev }); };
  const weight = (s) => (['high', 'critical', 'error'].includes(s) ? 'high' : (s === 'medium' ? 'medium' : 'low'));
  for (const e of a.syntax_errors) note(e.line, `syntax error (col ${e.column}): ${e.message}`, 'high');
  for (const s of a.security_issues) note(s.line, `${s.severity} ${s.cwe_id}: ${s.description}`, weight(s.severity));
  for (const p of a.performance_hints) note(p.line, `performance (${p.impact}): ${p.description}`, p.impact === 'high' ? 'medium' : 'low');
  for (const s of a.suggestions) note(s.line_start, `suggestion: ${s.description}`, 'info');
  const lines = source.split('\n');
  const code = h('ol', { class: 'code', id: 'code-view', 'aria-label': 'Source with findings' }, ...lines.map((l, i) => {
    const n = notes.get(i + 1);
    return h('li', { class: n ? 'flag' : null, 'data-line': i + 1 },
      h('span', { class: 'n', text: String(i + 1) }), h('span', { text: l || ' ' }),
      ...(n ? n.map((t) => h('span', { class: `note sev-${t.sev}`, 'data-severity': t.sev, text: t.text })) : []));
  }));
  const aiLine = a.ai.status === 'ok' ? `AI review by ${a.ai.model}` : (a.ai.status === 'pending' ? 'AI review: writing…' : `AI: ${a.ai.status}`);
  if (a.ai.status === 'ok' && a.ai.text) review.textContent = a.ai.text;
  results.replaceChildren(h('h2', { id: 'res-h', text: 'Analysis' }), ...(provenance ? [provenance] : []),
    h('p', {}, `${a.language}: ${a.syntax_errors.length} syntax error(s), ${a.security_issues.length} security issue(s), ${a.performance_hints.length} performance hint(s); complexity ${a.complexity_score.toFixed(1)}. `,
      h('span', { class: 'muted', text: rec.stored ? 'Stored in the workspace.' : 'Not stored (viewers cannot write).' })),
    h('h3', { text: aiLine }), review,
    h('h3', { text: 'Findings on their lines' }), notes.size ? code : h('p', { class: 'ok', id: 'no-findings', text: 'No findings.' }));
}

async function docView(id, docId) {
  const box = h('div', {}, h('p', { class: 'muted', text: 'Loading document…' }));
  show(h('p', {}, h('a', { href: `#/ws/${id}`, text: '← workspace' })), box);
  try {
    const r = await api('GET', `/api/v1/workspaces/${enc(id)}/documents`);
    const d = r.documents.find((x) => x.id === docId);
    if (!d) { box.replaceChildren(h('p', { class: 'muted', text: 'This document is not here (yet): it may still be syncing.' })); return; }
    box.replaceChildren(...[h('h1', { id: 'doc-title', text: d.original_filename }),
      h('p', { class: 'muted', text: `${d.document_type} · ${d.metadata.pages ? d.metadata.pages + ' pages · ' : ''}${d.processing_time_ms} ms · confidence ${d.confidence_score.toFixed(2)}` }),
      ...(d.metadata.warnings || []).map((w) => h('p', { class: 'warn', text: w })),
      d.summary ? h('section', {}, h('h2', { text: 'Summary' }), h('p', { text: d.summary.text || d.summary.status })) : null,
      h('h2', { text: 'Text' }), h('pre', { class: 'doc', id: 'doc-text', tabindex: 0, text: d.extracted_text })].filter(Boolean));
  } catch (e) { box.replaceChildren(errorBox(e)); }
}

async function auditView() {
  const box = h('div', {}, h('p', { class: 'muted', text: 'Loading the audit log…' }));
  const filter = h('select', { id: 'audit-filter', 'aria-label': 'Which decisions' },
    h('option', { value: 'any', text: 'All decisions' }),
    h('option', { value: 'deny', text: 'Refusals only' }));
  show(h('h1', { text: 'Audit log' }),
    h('p', { class: 'muted', text: 'Authorization decisions of this node: peers\' sync sessions and changes, every refusal, and every request that changes something (your own reads are not logged). Workspace entries show for workspaces you administer.' }),
    h('p', {}, h('label', {}, 'Show ', filter)),
    box);
  const load = async () => {
    try {
      const log = await api('GET', `/api/v1/audit?limit=300&decision=${filter.value}`);
      const chain = log.chain.intact
        ? h('p', { class: 'ok', id: 'audit-chain', text: `Hash chain intact (${log.chain.checked} entries checked).` })
        : h('p', { class: 'bad', id: 'audit-chain', role: 'alert', text: `The hash chain breaks at entry ${log.chain.broken_at}: the log was changed outside xencode.` });
      box.replaceChildren(chain, log.entries.length ? h('table', { id: 'audit' },
        h('thead', {}, h('tr', {}, ...['#', 'When', 'Decision', 'Who', 'What', 'Workspace', 'Why'].map((t) => h('th', { text: t })))),
        h('tbody', {}, ...log.entries.slice().reverse().map((e) => h('tr', {},
          h('td', { text: String(e.seq) }), h('td', { text: when(e.at) }),
          h('td', { class: e.decision === 'allow' ? 'ok' : 'bad', text: e.decision }),
          h('td', {}, h('code', { title: e.who, text: short(e.who) })), h('td', {}, h('code', { text: e.action })),
          h('td', { text: e.workspace ? short(e.workspace) : '' }), h('td', { text: e.reason })))))
        : h('p', { class: 'muted', id: 'audit-empty', text: filter.value === 'deny' ? 'No refusals.' : 'No entries yet.' }));
      box.dataset.filter = filter.value;
    } catch (e) { box.replaceChildren(errorBox(e)); }
  };
  filter.addEventListener('change', load);
  await load();
  listen((ev) => { if (['rejected', 'session'].includes(ev.type)) load(); });
}

// ---- routing -------------------------------------------------------------

async function route() {
  state.onEvent = null;
  state.pending = [];
  const hash = location.hash.replace(/^#/, '') || '/';
  const parts = hash.split('/').filter(Boolean);
  document.getElementById('nav-overview').toggleAttribute('aria-current', parts.length === 0);
  document.getElementById('nav-workspaces').toggleAttribute('aria-current', parts[0] === 'workspaces' || parts[0] === 'ws');
  document.getElementById('nav-audit').toggleAttribute('aria-current', parts[0] === 'audit');
  for (const a of document.querySelectorAll('nav a[aria-current]')) a.setAttribute('aria-current', 'page');
  try {
    if (parts.length === 0) await overview();
    else if (parts[0] === 'workspaces') await workspaces();
    else if (parts[0] === 'audit') await auditView();
    else if (parts[0] === 'ws' && parts.length === 2) await workspace(decodeURIComponent(parts[1]));
    else if (parts[0] === 'ws' && parts[2] === 'file') await fileView(decodeURIComponent(parts[1]), parts.slice(3).map(decodeURIComponent).join('/'));
    else if (parts[0] === 'ws' && parts[2] === 'doc') await docView(decodeURIComponent(parts[1]), decodeURIComponent(parts[3]));
    else show(h('h1', { text: 'Not found' }), h('p', {}, h('a', { href: '#/', text: 'Back to the overview' })));
  } catch (e) {
    show(errorBox(e));
  }
  document.getElementById('main').focus({ preventScroll: true });
}

async function start() {
  try {
    const s = await api('GET', '/api/v1/session');
    state.csrf = s.csrf_token || null;
    state.peerId = s.peer_id;
  } catch (e) {
    if (e.status === 401) { loginNeeded(); return; }
    show(errorBox(e));
    return;
  }
  const out = document.getElementById('logout');
  out.hidden = false;
  out.addEventListener('click', async () => {
    try { await api('DELETE', '/api/v1/session'); } catch (_) { /* logged out anyway */ }
    if (state.events) state.events.close();
    loginNeeded();
    out.hidden = true;
  });
  connectEvents();
  window.addEventListener('hashchange', route);
  await route();
}

document.addEventListener('DOMContentLoaded', start);
