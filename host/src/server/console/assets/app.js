// keyhole web console. Every page is a view of the API under /api/v1 and
// every action is an API call, checked and audited there like any client's.
// Elements are built from text nodes and attributes only (no markup parsing),
// so whatever a flow id, log line or task output holds is shown as text.
'use strict';

const state = { csrf: null, token: null, anywhere: [], perms: new Map(), stream: null, timers: [], gen: 0, comments: new Map() };

// ---- DOM -------------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, kids);
  return el;
}

function append(el, kids) {
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

function svg(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const kid of kids) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

function main() { return document.getElementById('main'); }

function render(...kids) {
  const m = main();
  m.replaceChildren();
  append(m, kids);
}

function toast(text) {
  const t = h('div', {}, text);
  document.getElementById('toast').append(t);
  setTimeout(() => t.remove(), 5000);
}

function badge(status) {
  return h('span', { class: 'badge s-' + String(status).replace(/[^a-z-]/g, '') }, status);
}

function table(headers, rows, empty) {
  if (!rows.length) return h('p', { class: 'hint' }, empty || 'Nothing to show.');
  return h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => (c instanceof Node && c.tagName === 'TD') ? c : h('td', {}, c)))))));
}

function mono(x) { return h('td', { class: 'mono' }, x); }

let fields = 0;
function field(label, input, hint) {
  if (!input.id) input.id = 'f' + (++fields);
  const help = hint ? h('span', { class: 'hint', id: input.id + '-hint' }, hint) : null;
  if (help) input.setAttribute('aria-describedby', help.id);
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, help);
}

function errorBox(e) { return h('p', { class: 'error', role: 'alert' }, String(e && e.message || e)); }

function when(t) {
  if (!t) return '';
  const d = new Date(typeof t === 'number' ? t * 1000 : t);
  return isNaN(d) ? String(t) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function ms(n) {
  if (n === undefined || n === null) return '';
  return n < 1000 ? n + ' ms' : (n / 1000).toFixed(n < 10000 ? 2 : 1) + ' s';
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---- API -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, opts) {
  opts = opts || {};
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  if (opts.bearer) headers.Authorization = 'Bearer ' + opts.bearer;
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin', cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch (_) { /* text */ }
  if (r.status === 401 && !opts.bearer) {
    signedOut('Your session ended: sign in again.');
    throw new ApiError(401, 'signed out');
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || text || r.statusText);
  return data;
}

const enc = encodeURIComponent;
function nsPath(ns) { return ns ? ns : '-'; }
function nsName(ns) { return ns ? ns : '(root)'; }

async function perms(ns) {
  ns = ns || '';
  if (!state.perms.has(ns)) {
    state.perms.set(ns, api('GET', '/api/v1/permissions?namespace=' + enc(ns)).then((p) => new Set(p.permissions)));
  }
  return state.perms.get(ns);
}

async function may(perm, ns) { return (await perms(ns)).has(perm); }

// ---- session ---------------------------------------------------------------

function signedOut(message) {
  state.csrf = null; state.token = null; state.perms.clear();
  localStorage.removeItem('keyhole.signedIn');
  document.getElementById('nav').replaceChildren();
  document.getElementById('who').replaceChildren();
  if (location.hash !== '#/signin') location.hash = '#/signin';
  if (message) toast(message);
}

async function signedIn(s) {
  state.csrf = s.csrf; state.token = s.token;
  localStorage.setItem('keyhole.signedIn', '1');
  const p = await api('GET', '/api/v1/permissions');
  state.anywhere = p.anywhere;
  const links = [['#/flows', 'Flows', 'flow:read'], ['#/executions', 'Executions', 'execution:read'],
    ['#/secrets', 'Secrets', 'secret:list'], ['#/audit', 'Audit trail', 'audit:read'], ['#/tokens', 'Tokens', 'token:manage']];
  document.getElementById('nav').replaceChildren(...links.filter((l) => state.anywhere.includes(l[2])).map((l) => h('a', { href: l[0] }, l[1])));
  const roles = s.token.bindings.map((b) => b.role + ' @ ' + nsName(b.namespace)).join(', ');
  document.getElementById('who').replaceChildren(
    h('span', { title: roles }, s.token.name + ' (' + roles + ')'),
    h('button', { type: 'button', onclick: signOut }, 'Sign out'));
}

async function signOut() {
  try { await api('DELETE', '/api/v1/session'); } catch (_) { /* gone already */ }
  signedOut('Signed out.');
}

function signinPage(view) {
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const msg = h('div', {});
  const form = h('form', { class: 'stack card', onsubmit: async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    try {
      const s = await api('POST', '/api/v1/session', undefined, { bearer: input.value.trim() });
      input.value = '';
      await signedIn(s);
      location.hash = '#/executions';
    } catch (e) {
      msg.append(errorBox(e.status === 401 ? 'That token was not accepted (unknown, revoked or expired).' : e));
    }
  } },
  field('Token', input, 'A token from `host token create` or POST /api/v1/tokens. It becomes a session cookie; the page never stores it.'),
  h('button', { class: 'primary', type: 'submit' }, 'Sign in'), msg);
  view.render(h('h1', {}, 'Sign in'), form);
  input.focus();
}

// ---- flows -----------------------------------------------------------------

function flowHref(ns, id) { return '#/flows/' + enc(nsPath(ns)) + '/' + enc(id); }
function revisionHref(ns, id, rev) { return flowHref(ns, id) + '/revisions/' + rev; }
// What a revision's state means, for a person.
const STATE_TEXT = { active: 'active', pending: 'pending review', rejected: 'rejected', unchecked: 'unchecked', removed: 'removed' };

async function flowsPage(view) {
  const flows = await api('GET', '/api/v1/flows');
  view.render(h('h1', {}, 'Flows'), table(['Namespace', 'Flow', 'Revision', 'State', 'Deployed', 'By'],
    flows.map((f) => [nsName(f.namespace), h('a', { href: flowHref(f.namespace, f.id) }, f.id),
      f.state === 'pending' ? h('a', { href: revisionHref(f.namespace, f.id, f.revision) }, String(f.revision)) : String(f.revision),
      badge(STATE_TEXT[f.state] || f.state), when(f.deployed_at), f.deployed_by]), 'No flows you may read are deployed.'));
}

// Each secret a revision names: where it resolved, who vouched for it, and
// who approved it when a second person had to.
function vouchTable(rev) {
  const v = rev.vouches || (rev.review && rev.review.vouches);
  if (!v) return h('p', { class: 'hint' }, 'Unchecked: deployed before keyhole checked secret:use. It keeps running until it is deployed again or approved.');
  const approved = rev.review && rev.review.decision === 'approved' ? rev.review.by : '';
  return table(['Secret', 'Used by', 'Resolved in', 'Vouched for by', 'Protected', 'Approved by'], v.secrets.map((s) => [
    mono(s.secret), s.uses.join(', '), s.resolved_in === null || s.resolved_in === undefined ? 'nowhere yet (checked in ' + nsName(s.checked_in) + ')' : nsName(s.resolved_in),
    v.by, s.protected ? 'yes' : '', approved && (v.review.includes(s.secret) || !rev.vouches) ? approved : '']), 'It names no secret.');
}

function highlightYaml(source) {
  const code = h('code', { class: 'yaml' });
  for (const line of source.split('\n')) {
    let rest = line;
    const key = /^(\s*(?:-\s+)?)([A-Za-z0-9_.-]+)(:)(?=\s|$)/.exec(rest);
    if (key) {
      code.append(key[1], h('span', { class: 'k' }, key[2]), key[3]);
      rest = rest.slice(key[0].length);
    }
    const re = /(#.*$)|(\{\{.*?\}\})|("(?:[^"\\]|\\.)*"|'[^']*')|(\b\d+(?:\.\d+)?\b|\btrue\b|\bfalse\b)/g;
    let at = 0;
    let m;
    while ((m = re.exec(rest))) {
      if (m[1] && m.index > 0 && !/\s/.test(rest[m.index - 1])) continue;
      code.append(rest.slice(at, m.index));
      const cls = m[1] ? 'c' : m[2] ? 't' : m[3] ? 's' : 'n';
      code.append(h('span', { class: cls }, m[0]));
      at = m.index + m[0].length;
    }
    code.append(rest.slice(at), '\n');
  }
  return h('pre', {}, code);
}

function lineDiff(a, b) {
  a = a.split('\n'); b = b.split('\n');
  if (a.length * b.length > 4e6) return [['~', 'the revisions are too long to compare here']];
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
    lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push([' ', a[i]]); i++; j++; }
    else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push(['+', b[j]]); j++; }
    else { out.push(['-', a[i]]); i++; }
  }
  return out;
}

function inputControl(decl) {
  const id = 'in-' + decl.id;
  const dflt = decl.default;
  if (decl.type === 'boolean') {
    return h('label', { class: 'check' }, h('input', { id, type: 'checkbox', 'data-input': decl.id, 'data-type': 'boolean', checked: dflt === true }),
      decl.id + (decl.description ? ': ' + decl.description : ''));
  }
  const attrs = { id, 'data-input': decl.id, 'data-type': decl.type || 'string', required: decl.required && dflt === undefined };
  let control;
  if (decl.type === 'json') control = h('textarea', attrs, dflt === undefined ? '' : JSON.stringify(dflt, null, 2));
  else control = h('input', Object.assign(attrs, { type: decl.type === 'number' ? 'number' : 'text', step: 'any', value: dflt === undefined || dflt === null ? undefined : String(dflt) }));
  return field(decl.id + (decl.required ? ' (required)' : '') + ' · ' + (decl.type || 'string'), control, decl.description);
}

function readInputs(form) {
  const out = {};
  for (const el of form.querySelectorAll('[data-input]')) {
    const name = el.getAttribute('data-input');
    const type = el.getAttribute('data-type');
    if (type === 'boolean') { out[name] = el.checked; continue; }
    if (el.value === '') continue;
    if (type === 'number') out[name] = Number(el.value);
    else if (type === 'json') {
      try { out[name] = JSON.parse(el.value); } catch (e) { throw new Error('input ' + name + ': not JSON: ' + e.message); }
    } else out[name] = el.value;
  }
  return out;
}

async function flowPage(view, ns, id) {
  const base = '/api/v1/flows/' + enc(ns) + '/' + enc(id);
  const [flow, revisions] = await Promise.all([api('GET', base), api('GET', base + '/revisions')]);
  const namespace = flow.namespace;
  const parts = [h('h1', {}, 'Flow ', flow.id), h('dl', { class: 'meta card' },
    h('dt', {}, 'Namespace'), h('dd', {}, nsName(namespace)),
    h('dt', {}, 'Revision'), h('dd', {}, String(flow.revision), ' ', badge(STATE_TEXT[flow.state] || flow.state)),
    h('dt', {}, 'Deployed'), h('dd', {}, when(flow.deployed_at) + ' by ' + flow.deployed_by),
    h('dt', {}, 'File'), h('dd', {}, flow.file)),
  h('p', {}, h('a', { href: '#/executions?namespace=' + enc(namespace) + '&flow=' + enc(flow.id) }, 'Executions of this flow'))];
  for (const rev of flow.pending || []) {
    parts.push(h('p', { class: 'card', role: 'status' }, 'Revision ' + rev + ' is pending review: ',
      h('a', { href: revisionHref(namespace, flow.id, rev) }, 'review revision ' + rev)));
  }
  if (flow.state !== 'pending' && await may('execution:create', namespace)) {
    const msg = h('div', {});
    const form = h('form', { class: 'stack card', 'aria-label': 'Run ' + flow.id, onsubmit: async (ev) => {
      ev.preventDefault();
      msg.replaceChildren();
      try {
        const r = await api('POST', '/api/v1/executions/' + enc(nsPath(namespace)) + '/' + enc(flow.id), readInputs(form));
        location.hash = '#/executions/' + enc(r.id);
      } catch (e) { msg.append(errorBox(e)); }
    } }, (flow.inputs || []).map(inputControl), h('button', { class: 'primary', type: 'submit' }, 'Run'), msg);
    parts.push(h('h2', {}, 'Run'), form);
  }
  parts.push(h('h2', {}, 'Triggers'), table(['Trigger', 'Kind', 'When', 'Next firing'], (flow.triggers || []).map((t) =>
    [t.id, t.kind, t.kind === 'schedule' ? t.cron + ' (' + t.timezone + ')' : t.auth, t.next ? when(t.next) : '']), 'No triggers: it runs when someone runs it.'));
  parts.push(h('h2', {}, 'Tasks and their grants'), table(['Task', 'Part', 'Plugin SHA-256', 'Secrets', 'Rotates', 'Network', 'Approval'],
    (flow.tasks || []).map((t) => [t.id, t.phase, mono(flow.plugins[t.id] || ''), t.secrets.join(', '), t.rotate.join(', '),
      t.network.join(', '), t.approval || ''])));
  parts.push(h('h2', {}, 'Secrets and who vouched for them'), vouchTable(flow));
  parts.push(h('h2', {}, 'Source'), highlightYaml(flow.source));
  const older = h('select', { id: 'diff-from', 'aria-label': 'Compare from revision' }, revisions.map((r) => h('option', { value: r.revision, selected: r.revision === flow.revision - 1 }, 'revision ' + r.revision + (r.removed ? ' (removed)' : ''))));
  const newer = h('select', { id: 'diff-to', 'aria-label': 'Compare to revision' }, revisions.map((r) => h('option', { value: r.revision, selected: r.revision === flow.revision }, 'revision ' + r.revision + (r.removed ? ' (removed)' : ''))));
  const out = h('div', {});
  const show = () => {
    const a = revisions.find((r) => String(r.revision) === older.value);
    const b = revisions.find((r) => String(r.revision) === newer.value);
    out.replaceChildren(diffView(a ? a.source : '', b ? b.source : ''));
  };
  older.addEventListener('change', show);
  newer.addEventListener('change', show);
  parts.push(h('h2', {}, 'Revisions'), table(['Revision', 'State', 'Deployed', 'By', 'Plugins'], revisions.map((r) =>
    [h('a', { href: revisionHref(namespace, flow.id, r.revision) }, String(r.revision)), badge(STATE_TEXT[r.state] || r.state),
      when(r.deployed_at), r.deployed_by,
      mono(Object.entries(r.plugins).map(([t, s]) => t + ' ' + s.slice(0, 12)).join(', '))])),
  h('div', { class: 'row card' }, 'Compare', older, 'with', newer), out);
  view.render(parts);
  show();
}

function diffView(a, b) {
  const code = h('code', { class: 'diff' });
  for (const [op, line] of lineDiff(a, b)) {
    code.append(h('span', { class: op === '+' ? 'add' : op === '-' ? 'del' : '' }, op + ' ' + line), op === ' ' || op === '~' ? '\n' : '');
  }
  return h('pre', {}, code);
}

// One revision: what it names and who vouched; for one pending review, its
// diff against the revision that serves now, and Approve / Reject.
async function revisionPage(view, ns, id, revision) {
  const base = '/api/v1/flows/' + enc(ns) + '/' + enc(id);
  const revisions = await api('GET', base + '/revisions');
  const rev = revisions.find((r) => String(r.revision) === revision);
  if (!rev) { view.render(h('h1', {}, 'No revision ' + revision), h('p', {}, h('a', { href: flowHref(ns === '-' ? '' : ns, id) }, 'Back to the flow'))); return; }
  const namespace = rev.namespace;
  // What serves now: the newest active or unchecked revision (a removal serves nothing).
  let serving = null;
  for (const r of revisions) if (['active', 'unchecked', 'removed'].includes(r.state)) serving = r;
  const base_ = serving && !serving.removed && serving.revision !== rev.revision ? serving : null;
  const parts = [h('h1', {}, 'Flow ', id, ' revision ', String(rev.revision)), h('dl', { class: 'meta card' },
    h('dt', {}, 'Namespace'), h('dd', {}, nsName(namespace)),
    h('dt', {}, 'State'), h('dd', {}, badge(STATE_TEXT[rev.state] || rev.state)),
    h('dt', {}, 'Deployed'), h('dd', {}, when(rev.deployed_at) + ' by ' + rev.deployed_by),
    h('dt', {}, 'Serving now'), h('dd', {}, base_ ? 'revision ' + base_.revision : 'none')),
  h('p', {}, h('a', { href: flowHref(namespace, id) }, 'Back to the flow'))];
  if (rev.review) {
    parts.push(h('p', { class: 'card' }, rev.review.decision + ' by ' + rev.review.by + ' ' + when(rev.review.at) + (rev.review.comment ? ': ' + rev.review.comment : '')));
  }
  if (rev.state === 'pending') {
    const touched = (rev.vouches && rev.vouches.review || []).join(', ');
    parts.push(h('p', { class: 'card', role: 'status' }, 'It touches protected ' + touched + ': it runs once a second person holding secret:use there approves it.'));
  }
  if ((rev.state === 'pending' || rev.state === 'unchecked') && await may('secret:use', namespace)) {
    const comment = h('input', { id: 'review-comment', 'aria-label': 'Review comment', placeholder: 'comment' });
    const msg = h('div', {});
    const act = async (verb) => {
      msg.replaceChildren();
      try {
        await api('POST', base + '/revisions/' + rev.revision + '/' + verb, { comment: comment.value || undefined });
        toast('Revision ' + rev.revision + ' ' + verb + 'd');
        route();
      } catch (e) { msg.append(errorBox(e)); }
    };
    const buttons = [comment, h('button', { type: 'button', class: 'primary', onclick: () => act('approve') }, 'Approve')];
    if (rev.state === 'pending') buttons.push(h('button', { type: 'button', onclick: () => act('reject') }, 'Reject'));
    parts.push(h('h2', {}, 'Review'), h('div', { class: 'row card' }, buttons), msg);
  }
  parts.push(h('h2', {}, 'Secrets and who vouched for them'), vouchTable(rev));
  parts.push(h('h2', {}, base_ ? 'Changes since revision ' + base_.revision + ' (serving now)' : 'Source (nothing serves now)'),
    diffView(base_ ? base_.source : '', rev.source));
  view.render(parts);
}

// ---- executions ------------------------------------------------------------

const STATUSES = ['', 'queued', 'running', 'paused', 'succeeded', 'warning', 'failed', 'cancelled', 'interrupted'];
const ENDED = ['succeeded', 'warning', 'failed', 'cancelled', 'interrupted'];

function isoFromLocal(v) { return v ? new Date(v).toISOString() : ''; }

async function executionsPage(view, q) {
  const params = new URLSearchParams();
  for (const k of ['namespace', 'flow', 'status', 'since', 'until']) if (q.get(k)) params.set(k, q.get(k));
  params.set('limit', q.get('limit') || '100');
  const list = await api('GET', '/api/v1/executions?' + params);
  const f = (name, label, attrs) => field(label, h('input', Object.assign({ name, value: q.get(name) || undefined }, attrs || {})));
  const status = h('select', { name: 'status' }, STATUSES.map((s) => h('option', { value: s, selected: s === (q.get('status') || '') }, s || 'any')));
  const since = h('input', { name: 'since', type: 'datetime-local' });
  const until = h('input', { name: 'until', type: 'datetime-local' });
  const form = h('form', { class: 'filters card', role: 'search', onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const el of form.elements) {
      if (!el.name || !el.value) continue;
      p.set(el.name, el.type === 'datetime-local' ? isoFromLocal(el.value) : el.value);
    }
    location.hash = '#/executions?' + p;
  } }, f('namespace', 'Namespace'), f('flow', 'Flow'), field('State', status), field('Started after', since), field('Started before', until),
  h('button', { type: 'submit' }, 'Filter'));
  const rows = list.map((e) => {
    const dur = e.ended ? ms(new Date(e.ended) - new Date(e.started)) : '';
    return [h('a', { href: '#/executions/' + enc(e.id) }, e.id.slice(0, 13)), e.flow, nsName(e.namespace), badge(e.status),
      when(e.started), dur, e.trigger || '', e.created_by || ''];
  });
  view.render(h('h1', {}, 'Executions'), form, table(['Execution', 'Flow', 'Namespace', 'State', 'Started', 'Took', 'Trigger', 'By'], rows, 'No executions match.'));
  if (list.some((e) => !ENDED.includes(e.status))) view.later(route, 3000);
}

// Lanes: each task goes in the first lane free at its start, so tasks that
// ran side by side are drawn side by side.
function timeline(rec) {
  const t0 = new Date(rec.started).getTime();
  const now = Date.now();
  const spans = rec.tasks.filter((t) => t.started).map((t) => {
    const start = new Date(t.started).getTime() - t0;
    const running = t.status === 'running' || t.status === 'waiting';
    const end = running ? Math.max(start, (rec.ended ? new Date(rec.ended).getTime() : now) - t0) : start + (t.duration_ms || 0);
    return { t, start, end: Math.max(end, start + 1) };
  }).sort((a, b) => a.start - b.start);
  if (!spans.length) return h('p', { class: 'hint' }, 'No task has started yet.');
  const lanes = [];
  for (const s of spans) {
    let lane = lanes.findIndex((end) => end <= s.start);
    if (lane < 0) { lane = lanes.length; lanes.push(0); }
    lanes[lane] = s.end;
    s.lane = lane;
  }
  const total = Math.max(...spans.map((s) => s.end), 1);
  const W = 900, L = 150, R = 20, LH = 26, top = 22;
  const x = (t) => L + (t / total) * (W - L - R);
  const height = top + lanes.length * LH + 8;
  const g = svg('svg', { class: 'timeline', viewBox: '0 0 ' + W + ' ' + height, role: 'img', 'aria-label': 'Timeline of ' + spans.length + ' task(s) in ' + lanes.length + ' lane(s)' });
  for (let i = 0; i <= 4; i++) {
    const t = (total * i) / 4;
    const last = i === 4;
    g.append(svg('line', { x1: x(t), x2: x(t), y1: top - 4, y2: height }),
      svg('text', { x: last ? x(t) - 2 : x(t) + 2, y: 12, class: 'axis', 'text-anchor': last ? 'end' : 'start' }, '+' + ms(Math.round(t))));
  }
  for (let i = 0; i < lanes.length; i++) g.append(svg('text', { x: 4, y: top + i * LH + 16, class: 'axis' }, 'lane ' + (i + 1)));
  for (const s of spans) {
    const y = top + s.lane * LH + 3;
    const tip = svg('title', {}, s.t.id + ': ' + s.t.status + ', ' + ms(s.end - s.start) + (s.t.attempts && s.t.attempts.length > 1 ? ', ' + s.t.attempts.length + ' attempts' : ''));
    const bar = svg('g', { 'data-task': s.t.id }, tip);
    const attempts = (s.t.attempts || []).filter((a) => a.started);
    if (attempts.length > 1) {
      attempts.forEach((a, i) => {
        const as = new Date(a.started).getTime() - t0;
        const last = i === attempts.length - 1;
        bar.append(svg('rect', { x: x(as), y, width: Math.max(2, x(as + Math.max(a.duration_ms, 1)) - x(as)), height: 18, rx: 3,
          class: last ? 'bar-' + s.t.status : 'bar-retry' }));
      });
    } else {
      bar.append(svg('rect', { x: x(s.start), y, width: Math.max(3, x(s.end) - x(s.start)), height: 18, rx: 3, class: 'bar-' + s.t.status }));
    }
    // A label near the right edge goes before its bar.
    const right = x(s.start) > W * 0.7 && x(s.end) - x(s.start) < 120;
    bar.append(svg('text', { x: right ? x(s.start) - 4 : x(s.start) + 4, y: y + 13, 'text-anchor': right ? 'end' : 'start' }, s.t.id));
    g.append(bar);
  }
  return g;
}

function taskTable(rec, decide) {
  return table(['Task', 'State', 'Started', 'Took', 'Attempts', 'Output or error', ''], rec.tasks.map((t) => [
    t.id, badge(t.status), when(t.started), ms(t.duration_ms),
    t.attempts && t.attempts.length ? t.attempts.map((a) => '#' + a.attempt + ' ' + ms(a.duration_ms) + (a.error ? ' ' + a.error : '')).join('; ') : '',
    h('div', {}, t.output !== undefined && t.output !== null ? h('pre', { class: 'out' }, JSON.stringify(t.output, null, 2)) : null,
      t.error ? h('pre', { class: 'out' }, t.error) : null, t.skipped ? h('span', { class: 'hint' }, 'skipped: ' + t.skipped) : null,
      t.approval ? h('span', { class: 'hint' }, t.approval) : null),
    t.status === 'waiting' && decide ? decide(t) : '',
  ]));
}

async function executionPage(view, id) {
  const base = '/api/v1/executions/' + enc(id);
  let rec = await api('GET', base);
  const ns = rec.namespace;
  const [mayCancel, mayApprove] = await Promise.all([may('execution:cancel', ns), may('execution:approve', ns)]);
  const head = h('div', {});
  const lane = h('div', {});
  const tasks = h('div', {});
  const access = h('div', {});
  const logText = h('code', {});
  const logBox = h('pre', { 'aria-label': 'Execution log', tabindex: '0', 'data-log': '' }, logText);
  const live = h('p', { class: 'hint', 'aria-live': 'polite' });
  // Live updates and reloads redraw the table: a comment being typed survives them.
  const decide = (t) => {
    const key = id + '/' + t.id;
    if (!state.comments.has(key)) state.comments.set(key, h('input', { 'aria-label': 'Comment for ' + t.id, placeholder: 'comment' }));
    const comment = state.comments.get(key);
    const act = async (verb) => {
      try {
        await api('POST', base + '/' + verb, { task: t.id, comment: comment.value || undefined });
        toast(t.id + ': ' + verb + 'd');
      } catch (e) { toast(verb + ' refused: ' + e.message); }
    };
    return h('div', { class: 'row' }, comment, h('button', { type: 'button', class: 'primary', onclick: () => act('approve') }, 'Approve'),
      h('button', { type: 'button', class: 'danger', onclick: () => act('reject') }, 'Reject'));
  };
  const draw = () => {
    const ended = ENDED.includes(rec.status);
    const took = rec.ended ? ms(new Date(rec.ended) - new Date(rec.started)) : '';
    head.replaceChildren(h('h1', {}, 'Execution ', rec.id), h('div', { class: 'row card' }, badge(rec.status),
      h('span', {}, 'flow ', h('a', { href: '#/flows/' + enc(nsPath(ns)) + '/' + enc(rec.flow) }, rec.flow), ' in ', nsName(ns),
        rec.revision ? ' (revision ' + rec.revision + ')' : ''),
      h('span', {}, 'started ' + when(rec.started)), took ? h('span', {}, 'took ' + took) : null,
      h('span', {}, 'by ' + (rec.created_by || '') + ' via ' + (rec.trigger || '')), h('span', { class: 'grow' }),
      !ended && mayCancel ? h('button', { type: 'button', class: 'danger', onclick: async () => {
        try { const r = await api('POST', base + '/cancel'); toast('cancel: ' + r.status); } catch (e) { toast('cancel refused: ' + e.message); }
      } }, 'Cancel') : null));
    lane.replaceChildren(timeline(rec));
    tasks.replaceChildren(taskTable(rec, mayApprove ? decide : null));
  };
  const drawAccess = async () => {
    const a = await api('GET', base + '/access');
    access.replaceChildren(
      h('h2', {}, 'Secrets its tasks read'),
      table(['Time', 'Task', 'Action', 'Secret', 'Version', 'Fingerprint', 'Outcome'], a.secrets.map((s) =>
        [when(s.time), s.task || '', s.action, s.secret || '', s.version === null ? '' : String(s.version),
          mono(s.fingerprint ? s.fingerprint.slice(0, 16) : ''), badge(s.outcome)]), 'No task asked for a secret.'),
      h('h2', {}, 'Destinations it called'),
      table(['Time', 'Task', 'Request', 'Outcome'], a.requests.map((r) =>
        [when(r.time), r.task || '', (r.method || '') + ' ' + (r.destination || '') + (r.path || ''), badge(r.outcome)]), 'No outbound requests.'));
  };
  view.render(head, h('h2', {}, 'Timeline'), lane, h('h2', {}, 'Tasks'), tasks, h('h2', {}, 'Log (masked)'), live, logBox, access);
  draw();
  await drawAccess();
  if (view.stale()) return;
  // Live: the record as it changes, log lines as they are written, the end.
  const es = new EventSource(base + '/follow');
  state.stream = es;
  live.textContent = ENDED.includes(rec.status) ? '' : 'Live: updates as it runs.';
  es.addEventListener('status', (ev) => { rec = JSON.parse(ev.data); draw(); });
  es.addEventListener('log', (ev) => { logText.append(JSON.parse(ev.data).text); logBox.scrollTop = logBox.scrollHeight; });
  es.addEventListener('end', (ev) => {
    rec = JSON.parse(ev.data);
    draw();
    live.textContent = 'Ended: ' + rec.status + '.';
    es.close();
    drawAccess().catch(() => {});
  });
  es.addEventListener('closed', (ev) => { live.textContent = 'Stream closed: ' + ev.data; es.close(); });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) live.textContent = 'Not live: reload to see more.'; };
}

// ---- secrets ---------------------------------------------------------------

function secretState(s, now) {
  if (s.destroyed_at) return 'destroyed';
  if (s.tampered) return 'tampered';
  if (s.revoked_at) return 'revoked';
  if (s.expires_at && s.expires_at <= now) return 'expired';
  if (s.expires_at && s.expires_at - now < 7 * 86400) return 'expiring';
  if (s.dynamic) return 'dynamic';
  return 'active';
}

async function secretsPage(view, q) {
  const ns = q.get('namespace') || '';
  const soon = q.get('expiring') === '1';
  const data = await api('GET', '/api/v1/secrets' + (ns ? '?namespace=' + enc(ns) : ''));
  const now = Date.now() / 1000;
  let list = data.secrets;
  if (soon) list = list.filter((s) => s.expires_at && s.expires_at - now < 7 * 86400);
  const nsInput = h('input', { name: 'namespace', value: ns || undefined });
  const soonBox = h('input', { type: 'checkbox', name: 'expiring', checked: soon });
  const form = h('form', { class: 'filters card', role: 'search', onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    if (nsInput.value) p.set('namespace', nsInput.value);
    if (soonBox.checked) p.set('expiring', '1');
    location.hash = '#/secrets?' + p;
  } }, field('Namespace', nsInput), h('label', { class: 'check' }, soonBox, 'Expiring within 7 days (or expired)'), h('button', { type: 'submit' }, 'Show'));
  view.render(h('h1', {}, soon ? 'Secrets expiring soon' : 'Secrets'), h('p', { class: 'hint' }, 'Metadata only: no page, response or role shows a value.'), form,
    data.unavailable.map((u) => errorBox('namespace ' + nsName(u.namespace) + ': ' + u.error)),
    table(['Namespace', 'Secret', 'Version', 'State', 'Created', 'Rotated', 'Expires', 'Bound to'], list.map((s) => [
      nsName(s.namespace), h('a', { href: '#/secrets/' + enc(nsPath(s.namespace)) + '/' + enc(s.name) }, s.name),
      s.dynamic ? 'dynamic' : String(s.version), badge(secretState(s, now)), when(s.created_at), when(s.updated_at),
      s.expires_at ? when(s.expires_at) : '', (s.destinations || []).join(', ')]), soon ? 'Nothing expires within 7 days.' : 'No secrets you may list.'));
}

async function secretPage(view, nsp, name) {
  const base = '/api/v1/secrets/' + enc(nsp) + '/' + enc(name);
  const d = await api('GET', base);
  // The description's times are RFC 3339; the state badge reads epoch seconds.
  const s = { name: d.name, namespace: d.namespace, destroyed_at: d.destroyed, tampered: d.tampered, revoked_at: d.revoked,
    expires_at: d.expires ? Date.parse(d.expires) / 1000 : null, dynamic: d.dynamic, destinations: d.destinations };
  const ns = s.namespace;
  const [mayWrite, mayRevoke] = await Promise.all([may('secret:write', ns), may('secret:revoke', ns)]);
  const now = Date.now() / 1000;
  const lr = d.last_read;
  const parts = [h('h1', {}, 'Secret ', s.name), h('dl', { class: 'meta card' },
    h('dt', {}, 'Namespace'), h('dd', {}, nsName(ns)),
    h('dt', {}, 'Backend'), h('dd', {}, d.backend),
    h('dt', {}, 'State'), h('dd', {}, badge(secretState(s, now))),
    h('dt', {}, 'Kind'), h('dd', {}, d.dynamic ? 'dynamic: minted per execution from ' + d.minted_from : 'static'),
    h('dt', {}, 'Current version'), h('dd', {}, d.current_version === null ? '-' : String(d.current_version)),
    h('dt', {}, 'Created'), h('dd', {}, when(d.created)),
    h('dt', {}, 'Rotated'), h('dd', {}, when(d.rotated)),
    h('dt', {}, 'Expires'), h('dd', {}, d.expires ? when(d.expires) : 'never'),
    h('dt', {}, 'Revoked'), h('dd', {}, d.revoked ? when(d.revoked) : 'no'),
    h('dt', {}, 'Bound to'), h('dd', {}, (s.destinations || []).join(', ') || 'nothing (tasks granted it read the value)'),
    h('dt', {}, 'Last read'), h('dd', {}, lr ? [when(lr.time), ' by ', lr.execution ? h('a', { href: '#/executions/' + enc(lr.execution) }, 'execution ' + lr.execution.slice(0, 13)) : 'an operator',
      lr.task ? ', task ' + lr.task : '', lr.version ? ', version ' + lr.version : ''] : 'never'),
    d.staged ? [h('dt', {}, 'Staged'), h('dd', {}, badge('staged'), ' version ' + d.staged.version + ' (a rotation the service may hold)')] : null),
  h('h2', {}, 'Versions'), table(['Version', 'Created', 'Expires', 'State'], (d.versions || []).map((v) =>
    [String(v.version_id || v.version), when(v.created_at), v.expires_at ? when(v.expires_at) : '', v.destroyed ? 'destroyed' : v.current ? 'current' : '']))];
  const act = (label, cls, fn) => h('button', { type: 'button', class: cls, onclick: async () => {
    try { await fn(); toast(label + ': done'); route(); } catch (e) { toast(label + ' refused: ' + e.message); }
  } }, label);
  if (mayWrite && !s.dynamic) {
    const length = h('input', { type: 'number', name: 'length', min: '1', max: '4096', value: '32', required: true });
    const charset = h('select', { name: 'charset' }, ['alnum', 'hex', 'base64', 'ascii'].map((c) => h('option', { value: c }, c)));
    const expires = h('input', { name: 'expires_in', placeholder: '90d' });
    const msg = h('div', {});
    parts.push(h('h2', {}, 'Rotate'), h('form', { class: 'inline card', 'aria-label': 'Rotate ' + s.name, onsubmit: async (ev) => {
      ev.preventDefault();
      msg.replaceChildren();
      try {
        const r = await api('PUT', base, { generate: { length: Number(length.value), charset: charset.value }, rotate: true, expires_in: expires.value || undefined });
        toast('rotated: version ' + r.version);
        route();
      } catch (e) { msg.append(errorBox(e)); }
    } }, field('Length', length), field('Characters', charset), field('Expires in', expires), h('button', { type: 'submit', class: 'primary' }, 'Rotate with a generated value'),
    h('span', { class: 'hint' }, 'The server generates the value; it is never sent to this page.'), msg));
    const dests = h('textarea', { name: 'destinations', 'aria-label': 'Destinations, one per line' }, (s.destinations || []).join('\n'));
    parts.push(h('h2', {}, 'Bind to destinations'), h('form', { class: 'stack card', onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        await api('PUT', base + '/destinations', { destinations: dests.value.split('\n').map((x) => x.trim()).filter(Boolean) });
        toast('bound'); route();
      } catch (e) { toast('bind refused: ' + e.message); }
    } }, field('Destinations (https://host[:port], one per line; empty unbinds)', dests), h('button', { type: 'submit' }, 'Bind')));
    if (d.staged) parts.push(h('div', { class: 'row card' }, act('Commit staged', 'primary', () => api('POST', base + '/commit')), act('Discard staged', 'danger', () => api('POST', base + '/discard'))));
  }
  if (mayRevoke && !s.revoked_at) {
    parts.push(h('h2', {}, 'Revoke'), h('div', { class: 'row card' }, h('span', {}, 'Reads are refused from then on.'),
      act('Revoke', 'danger', () => { if (!confirm('Revoke ' + s.name + '?')) throw new Error('not confirmed'); return api('POST', base + '/revoke'); })));
  }
  view.render(parts);
}

// ---- audit -----------------------------------------------------------------

const AUDIT_FILTERS = [['actor', 'Actor'], ['action', 'Action'], ['outcome', 'Outcome'], ['namespace', 'Namespace'], ['secret', 'Secret'], ['execution', 'Execution']];

async function auditPage(view, q) {
  const params = new URLSearchParams();
  for (const [k] of AUDIT_FILTERS) if (q.get(k)) params.set(k, q.get(k));
  for (const k of ['since', 'until']) if (q.get(k)) params.set(k, q.get(k));
  params.set('limit', q.get('limit') || '200');
  const records = await api('GET', '/api/v1/audit?' + params);
  const form = h('form', { class: 'filters card', role: 'search', onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const el of form.elements) {
      if (!el.name || !el.value) continue;
      p.set(el.name, el.type === 'datetime-local' ? isoFromLocal(el.value) : el.value);
    }
    location.hash = '#/audit?' + p;
  } }, AUDIT_FILTERS.map(([k, l]) => field(l, h('input', { name: k, value: q.get(k) || undefined }))),
  field('After', h('input', { name: 'since', type: 'datetime-local' })), field('Before', h('input', { name: 'until', type: 'datetime-local' })),
  field('Limit', h('input', { name: 'limit', type: 'number', min: '1', max: '10000', value: q.get('limit') || '200' })),
  h('button', { type: 'submit' }, 'Filter'),
  h('button', { type: 'button', onclick: () => download('keyhole-audit.jsonl', 'application/x-ndjson', records.map((r) => JSON.stringify(r)).join('\n') + '\n') }, 'Export (JSON Lines)'));
  const chain = h('div', { class: 'card', 'aria-live': 'polite' }, 'Chain: ');
  if (await may('audit:read', '')) {
    const check = async () => {
      chain.replaceChildren('Chain: checking…');
      try {
        const v = await api('GET', '/api/v1/audit/verify');
        if (v.Intact) {
          chain.replaceChildren(badge('intact'), ' ' + v.Intact.records + ' records checked; head #' + v.Intact.head_seq + ' ',
            h('code', {}, v.Intact.head_hash.slice(0, 16)), ', key ' + v.Intact.key_id, v.Intact.from_seq > 1 ? ', from the prune checkpoint at #' + v.Intact.from_seq : '', ' ',
            h('button', { type: 'button', onclick: async () => download('keyhole-checkpoint.txt', 'text/plain', await api('GET', '/api/v1/audit/checkpoint')) }, 'Download a signed checkpoint'),
            h('span', { class: 'hint' }, ' keep it; `host audit verify --against FILE` proves later that nothing before it was rewritten.'));
        } else {
          chain.replaceChildren(badge('broken'), ' at record #' + v.Broken.seq + ': ' + v.Broken.problem);
        }
      } catch (e) { chain.replaceChildren(errorBox(e)); }
    };
    chain.append(h('button', { type: 'button', onclick: check }, 'Verify'));
    check();
  } else {
    chain.append(h('span', { class: 'hint' }, 'verifying the whole chain needs audit:read in the root namespace.'));
  }
  view.render(h('h1', {}, 'Audit trail'), chain, form, table(['#', 'Time', 'Actor', 'Action', 'Outcome', 'Namespace', 'Secret', 'Execution / task', 'Reason'],
    records.slice().reverse().map((r) => [String(r.seq), when(r.time), r.actor, r.action, badge(r.outcome), nsName(r.namespace),
      r.secret ? r.secret + (r.version ? ' v' + r.version : '') : '',
      r.execution ? h('a', { href: '#/executions/' + enc(r.execution) }, r.execution.slice(0, 13) + (r.task ? ' / ' + r.task : '')) : '',
      r.reason || '']), 'No records match.'));
}

// ---- tokens ----------------------------------------------------------------

async function tokensPage(view) {
  const [tokens, roles] = await Promise.all([api('GET', '/api/v1/tokens'), api('GET', '/api/v1/roles')]);
  const out = h('div', {});
  const name = h('input', { name: 'name', required: true });
  const role = h('select', { name: 'role' }, roles.map((r) => h('option', { value: r.name }, r.name)));
  const ns = h('input', { name: 'namespace', placeholder: '(root)' });
  const ttl = h('input', { name: 'ttl', placeholder: '30d' });
  const form = h('form', { class: 'inline card', 'aria-label': 'Issue a token', onsubmit: async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    try {
      const r = await api('POST', '/api/v1/tokens', { name: name.value, role: role.value, namespace: ns.value, ttl: ttl.value || undefined });
      out.append(h('div', { class: 'token-once' }, h('strong', {}, 'Token for ' + r.info.name + ', shown once: '), h('code', {}, r.token)));
    } catch (e) { out.append(errorBox(e)); }
  } }, field('Name', name), field('Role', role), field('Namespace', ns), field('Lifetime', ttl), h('button', { type: 'submit', class: 'primary' }, 'Issue'));
  view.render(h('h1', {}, 'Tokens'), form, out, table(['Name', 'Id', 'Roles', 'State', 'Created', 'Expires', 'Last used', ''], tokens.map((t) => [
    t.name, mono(t.id), t.bindings.map((b) => b.role + ' @ ' + nsName(b.namespace)).join(', '), badge(t.state), when(t.created),
    t.expires ? when(t.expires) : 'never', when(t.last_used),
    t.state === 'active' ? h('button', { type: 'button', class: 'danger', onclick: async () => {
      if (!confirm('Revoke token ' + t.name + '?')) return;
      try { await api('DELETE', '/api/v1/tokens/' + enc(t.id)); toast('revoked ' + t.name); route(); } catch (e) { toast('revoke refused: ' + e.message); }
    } }, 'Revoke') : '']), 'No tokens in your scope.'),
  h('h2', {}, 'Roles'), table(['Role', 'Allows', 'Denies'], roles.map((r) => [r.name, r.allow.join(', '), (r.deny || []).join(', ')])));
}

// ---- routing ---------------------------------------------------------------

const ROUTES = [
  [/^#\/signin$/, signinPage],
  [/^#\/flows$/, flowsPage],
  [/^#\/flows\/([^/]+)\/([^/]+)$/, flowPage],
  [/^#\/flows\/([^/]+)\/([^/]+)\/revisions\/(\d+)$/, revisionPage],
  [/^#\/executions$/, executionsPage],
  [/^#\/executions\/([^/]+)$/, executionPage],
  [/^#\/secrets$/, secretsPage],
  [/^#\/secrets\/([^/]+)\/([^/]+)$/, secretPage],
  [/^#\/audit$/, auditPage],
  [/^#\/tokens$/, tokensPage],
];

// Each navigation is a view: a page still loading when the next one starts
// neither draws nor schedules anything.
function newView() {
  const gen = ++state.gen;
  const stale = () => gen !== state.gen;
  return {
    stale,
    render(...kids) { if (!stale()) render(...kids); },
    later(fn, delay) { state.timers.push(setTimeout(() => { if (!stale()) fn(); }, delay)); },
  };
}

async function route() {
  if (state.stream) { state.stream.close(); state.stream = null; }
  state.timers.forEach(clearTimeout);
  state.timers = [];
  const view = newView();
  const [path, query] = (location.hash || '#/executions').split('?');
  if (!state.token && path !== '#/signin') { location.hash = '#/signin'; return; }
  for (const a of document.querySelectorAll('#nav a')) {
    if (path.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  for (const [re, page] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    const args = m.slice(1).map(decodeURIComponent);
    try {
      await page(view, ...(args.length ? args : [new URLSearchParams(query || '')]));
    } catch (e) {
      if (e.status !== 401) view.render(h('h1', {}, 'Could not show this page'), errorBox(e));
    }
    return;
  }
  view.render(h('h1', {}, 'Not found'), h('p', {}, 'No page at ', h('code', {}, path), '.'));
}

async function boot() {
  window.addEventListener('hashchange', route);
  if (localStorage.getItem('keyhole.signedIn')) {
    try { await signedIn(await api('GET', '/api/v1/session')); } catch (_) { /* signed out */ }
  }
  if (!location.hash || location.hash === '#/') location.hash = state.token ? '#/executions' : '#/signin';
  route();
}

boot();
