// Kensa dashboard: a single page served by kensa-backend, talking only to its own origin
// (/auth*, /api/core/v2/…, /dashboard/api/…) with the user's bearer token. Hand-written, no
// build step, no dependencies. Everything the user sees goes through the API's auth and RBAC.
//
// Map: helpers (DOM, time) → session and API → live updates → layout and router → pages.
// DOM is built with h(), never from HTML strings, so data from events can never become markup.
'use strict';

(() => {
  // ------------------------------------------------------------------------------------------
  // DOM and formatting helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith('on') && typeof value === 'function') {
        el.addEventListener(key.slice(2), value);
      } else if (key === 'dataset') {
        Object.assign(el.dataset, value);
      } else if (key === 'value') {
        el.value = value;
      } else if (key === 'checked') {
        el.checked = !!value;
      } else {
        el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    append(el, children);
    return el;
  }

  /// Replaces `el`'s children; null, undefined and false are skipped (the DOM's own
  /// replaceChildren would print them).
  function fill(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const enc = encodeURIComponent;
  const SEVERITIES = { 0: 'ok', 1: 'warning', 2: 'critical' };
  const LABELS = {
    critical: 'Critical', warning: 'Warning', unknown: 'Unknown', ok: 'OK',
    silenced: 'Silenced', flapping: 'Flapping',
  };
  const severityOf = (status) => SEVERITIES[status] || 'unknown';

  function badge(kind, text) {
    return h('span', { class: `badge ${kind}` }, text || LABELS[kind] || kind);
  }

  function nowSeconds() { return Math.floor(Date.now() / 1000); }

  function span(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return `${seconds} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
    return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
  }

  const FORMATS = {
    ago: (ts) => (ts > 0 ? (nowSeconds() - ts < 5 ? 'just now' : `${span(nowSeconds() - ts)} ago`) : 'never'),
    for: (ts) => (ts > 0 ? `for ${span(nowSeconds() - ts)}` : ''),
    in: (ts) => (ts > 0 ? (ts > nowSeconds() ? `in ${span(ts - nowSeconds())}` : 'now') : 'never'),
  };

  /// A time that keeps itself current (see the ticker below); the exact time is in the title.
  function when(ts, format = 'ago') {
    const el = h('time', {
      dataset: { ts: String(ts || 0), fmt: format },
      datetime: ts > 0 ? new Date(ts * 1000).toISOString() : null,
      title: ts > 0 ? new Date(ts * 1000).toLocaleString() : null,
    }, FORMATS[format](ts));
    return el;
  }

  setInterval(() => {
    for (const el of document.querySelectorAll('time[data-ts]')) {
      const text = FORMATS[el.dataset.fmt](Number(el.dataset.ts));
      if (el.textContent !== text) el.textContent = text;
    }
  }, 10000);

  function firstLine(text, max = 160) {
    const line = String(text || '').split('\n').find((l) => l.trim()) || '';
    return line.length > max ? `${line.slice(0, max)}…` : line;
  }

  function historyStrip(statuses, large) {
    const list = h('ol', { class: `history${large ? ' large' : ''}`, 'aria-label': `Last ${statuses.length} results, oldest first` });
    for (const status of statuses) {
      const kind = severityOf(status);
      const cls = status === 0 ? '' : `s${Math.min(status, 3)}`;
      list.append(h('li', { class: cls || null, title: `${LABELS[kind]} (${status})` },
        h('span', { class: 'visually-hidden' }, `${LABELS[kind]};`)));
    }
    return list;
  }

  function tags(items) {
    if (!items || !items.length) return h('span', { class: 'muted' }, 'none');
    return h('ul', { class: 'tags' }, items.map((item) => h('li', {}, item)));
  }

  function facts(pairs) {
    const dl = h('dl', { class: 'facts' });
    for (const [name, value] of pairs) {
      if (value === null || value === undefined || value === '') continue;
      dl.append(h('dt', {}, name), h('dd', {}, value));
    }
    return dl;
  }

  function toast(message, bad) {
    const box = document.getElementById('toast');
    const item = h('div', { class: bad ? 'bad' : null }, message);
    box.append(item);
    setTimeout(() => item.remove(), 6000);
  }

  /// Updates `parent`'s children (table rows, list items, tiles) to `items` in place:
  /// unchanged ones are kept, changed ones replaced, order fixed — live updates never rebuild
  /// a list, and keyboard focus inside a replaced item moves to its replacement.
  function syncRows(parent, items, keyOf, render) {
    const existing = new Map();
    for (const child of parent.children) existing.set(child.dataset.key, child);
    const active = parent.contains(document.activeElement) ? document.activeElement : null;
    const activeItem = active && [...parent.children].find((child) => child.contains(active));
    const rows = items.map((item) => {
      const key = keyOf(item);
      const signature = JSON.stringify(item);
      let row = existing.get(key);
      if (!row || row.dataset.sig !== signature) {
        row = render(item);
        row.dataset.key = key;
        row.dataset.sig = signature;
      }
      return row;
    });
    rows.forEach((row, i) => {
      const at = parent.children[i] || null;
      if (at === row) return;
      // moveBefore keeps focus and state of a moved element (Chromium 133+).
      if (row.isConnected && parent.moveBefore) parent.moveBefore(row, at);
      else parent.insertBefore(row, at);
    });
    while (parent.children.length > rows.length) parent.lastElementChild.remove();
    if (activeItem && !activeItem.isConnected) {
      const replacement = rows.find((row) => row.dataset.key === activeItem.dataset.key);
      const same = replacement && [...replacement.querySelectorAll('a, button, input, select')]
        .find((el) => el.tagName === active.tagName && (el.getAttribute('href') || el.textContent) === (active.getAttribute('href') || active.textContent));
      if (same) same.focus({ preventScroll: true });
    }
  }

  /// Replaces `el`'s content only when `signature` differs from what it shows (keeps focus
  /// and spares screen readers re-announcing the same thing).
  function fillIfChanged(el, signature, ...children) {
    if (el.dataset.sig === signature) return false;
    el.dataset.sig = signature;
    fill(el, ...children);
    return true;
  }

  function table(caption, columns, tbody) {
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'cards' },
        h('caption', { class: 'visually-hidden' }, caption),
        h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
        tbody));
  }

  function cell(label, ...content) {
    return h('td', { dataset: { label } }, ...content);
  }

  // ------------------------------------------------------------------------------------------
  // Session and API

  const SESSION_KEY = 'kensa.session';
  let auth = loadSession();
  let refreshTimer = null;
  let refreshing = null;

  function loadSession() {
    try {
      return JSON.parse(sessionStorage.getItem(SESSION_KEY));
    } catch {
      return null;
    }
  }

  function usernameOf(token) {
    try {
      const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes)).sub || '';
    } catch {
      return '';
    }
  }

  function storeSession(tokens) {
    auth = {
      access_token: tokens.access_token,
      refresh_token: tokens.refresh_token,
      expires_at: tokens.expires_at,
      username: usernameOf(tokens.access_token),
    };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(auth));
    scheduleRefresh();
  }

  function forgetSession() {
    auth = null;
    sessionStorage.removeItem(SESSION_KEY);
    clearTimeout(refreshTimer);
    permissionsCache.clear();
    namespaces = null;
    live.stop();
  }

  /// Refreshes a minute before the access token expires (or halfway for short tokens).
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    if (!auth) return;
    const left = auth.expires_at * 1000 - Date.now();
    const delay = Math.max(5000, Math.min(left - 60000, left / 2));
    refreshTimer = setTimeout(() => refreshTokens(), delay);
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function refreshTokens() {
    if (!auth) return Promise.resolve(false);
    if (!refreshing) {
      refreshing = (async () => {
        try {
          const res = await fetch('/auth/token', {
            method: 'POST',
            headers: { Authorization: `Bearer ${auth.access_token}`, 'Content-Type': 'application/json' },
            body: JSON.stringify({ refresh_token: auth.refresh_token }),
            cache: 'no-store',
          });
          if (!res.ok) return false;
          storeSession(await res.json());
          return true;
        } catch {
          return false;
        } finally {
          refreshing = null;
        }
      })();
    }
    return refreshing;
  }

  function sessionEnded() {
    forgetSession();
    loginMessage = 'Your session has ended. Please log in again.';
    go('#/login');
  }

  async function api(method, path, options = {}) {
    const query = options.query
      ? `?${new URLSearchParams(Object.entries(options.query).filter(([, v]) => v !== undefined && v !== null && v !== ''))}`
      : '';
    for (let attempt = 0; ; attempt++) {
      const headers = {};
      if (auth) headers.Authorization = `Bearer ${auth.access_token}`;
      if (options.body !== undefined) headers['Content-Type'] = 'application/json';
      const res = await fetch(path + query, {
        method,
        headers,
        body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
        cache: 'no-store',
      });
      if (res.status === 401 && auth && attempt === 0) {
        if (await refreshTokens()) continue;
        sessionEnded();
        throw new ApiError(401, 'Your session has ended.');
      }
      const text = await res.text();
      let data = null;
      try {
        data = text ? JSON.parse(text) : null;
      } catch {
        data = null;
      }
      if (!res.ok) {
        throw new ApiError(res.status, (data && data.message) || text || res.statusText);
      }
      return { status: res.status, data, headers: res.headers };
    }
  }

  const core = (ns, ...segments) =>
    `/api/core/v2/namespaces/${enc(ns)}${segments.map((s) => `/${enc(s)}`).join('')}`;

  async function login(username, password) {
    const bytes = new TextEncoder().encode(`${username}:${password}`);
    const basic = btoa(String.fromCharCode(...bytes));
    const res = await fetch('/auth', { headers: { Authorization: `Basic ${basic}` }, cache: 'no-store' });
    if (res.status === 401) throw new ApiError(401, 'Wrong username or password.');
    if (!res.ok) throw new ApiError(res.status, `Login failed (${res.status}).`);
    storeSession(await res.json());
  }

  async function logout() {
    const ending = auth;
    forgetSession();
    if (ending) {
      try {
        await fetch('/auth/logout', {
          method: 'POST',
          headers: { Authorization: `Bearer ${ending.access_token}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ refresh_token: ending.refresh_token }),
        });
      } catch {
        // The session is forgotten locally either way.
      }
    }
    loginMessage = 'You are logged out.';
    go('#/login');
  }

  const permissionsCache = new Map();
  const NO_PERMISSIONS = {};

  /// What the user may do in `ns`; buttons that would fail are not shown. The API decides
  /// anyway.
  async function permissions(ns) {
    if (!permissionsCache.has(ns)) {
      permissionsCache.set(ns, api('GET', '/dashboard/api/permissions', { query: { namespace: ns } })
        .then((r) => r.data.can)
        .catch(() => NO_PERMISSIONS));
    }
    return permissionsCache.get(ns);
  }

  // ------------------------------------------------------------------------------------------
  // Live updates: a Server-Sent Events stream read with fetch(), so the token stays in a header.

  const live = (() => {
    let controller = null;
    let namespace = null;
    let listener = null;
    let retry = 1000;
    let timer = null;

    let shown = ['offline', 'Offline'];

    /// Shows the connection state in the top bar (also repainted after each route's layout).
    function indicator(state, text) {
      if (state) shown = [state, text];
      const el = document.getElementById('live');
      if (el) {
        el.dataset.state = shown[0];
        el.textContent = shown[1];
      }
    }

    function stop() {
      namespace = null;
      clearTimeout(timer);
      if (controller) controller.abort();
      controller = null;
      indicator('offline', 'Offline');
    }

    function start(ns, onChange) {
      listener = onChange;
      if (ns === namespace && controller) return;
      stop();
      namespace = ns;
      connect();
    }

    function later() {
      clearTimeout(timer);
      indicator('connecting', 'Reconnecting…');
      timer = setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    }

    async function connect() {
      if (!auth || !namespace) return;
      const ns = namespace;
      const mine = new AbortController();
      const opened = Date.now();
      controller = mine;
      indicator('connecting', 'Connecting…');
      try {
        const res = await fetch(`/dashboard/api/stream?namespace=${enc(ns)}`, {
          headers: { Authorization: `Bearer ${auth.access_token}`, Accept: 'text/event-stream' },
          signal: mine.signal,
          cache: 'no-store',
        });
        if (res.status === 401) {
          if (await refreshTokens()) {
            if (controller === mine) connect();
          } else if (controller === mine) {
            sessionEnded();
          }
          return;
        }
        if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        let first = true;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const name = (block.match(/^event: ?(.*)$/m) || [])[1];
            if (name === 'ready') {
              retry = 1000;
              indicator('live', 'Live');
              // Catch up with what happened while disconnected.
              if (!first && listener) listener();
              first = false;
            } else if (name === 'change' && listener) {
              listener();
            }
          }
        }
        // The server ended the stream (token expiry): reconnect with the current token, at
        // once unless streams keep ending right away.
        if (controller === mine) {
          if (Date.now() - opened > 5000) {
            retry = 1000;
            connect();
          } else {
            later();
          }
        }
      } catch (err) {
        if (controller === mine && !mine.signal.aborted) later();
      }
    }

    return { start, stop, paint: () => indicator() };
  })();

  // ------------------------------------------------------------------------------------------
  // Layout and routing. Routes: #/login, #/n/<ns>/<page>[/<id>…][?query]

  let namespaces = null;
  let current = null;
  let loginMessage = '';
  /// Where the user was going when sent to the login page.
  let afterLogin = '';
  const app = document.getElementById('app');

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  function link(ns, segments, query) {
    const path = segments.map((s) => `/${enc(s)}`).join('');
    const qs = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v !== undefined && v !== null)).toString() : '';
    return `#/n/${enc(ns)}${path}${qs ? `?${qs}` : ''}`;
  }

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const mark = raw.indexOf('?');
    const path = mark >= 0 ? raw.slice(0, mark) : raw;
    const query = new URLSearchParams(mark >= 0 ? raw.slice(mark + 1) : '');
    const parts = path.split('/').filter(Boolean).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
    return { parts, query };
  }

  /// Rewrites the query of the current route without navigating (filters, pages).
  function replaceQuery(query) {
    const { parts } = parseHash();
    const qs = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v !== undefined && v !== null)).toString();
    const hash = `#/${parts.map(enc).join('/')}${qs ? `?${qs}` : ''}`;
    history.replaceState(null, '', hash);
  }

  const PAGES = {
    overview: { title: 'Overview', nav: 'Overview', make: overviewPage },
    events: { title: 'Events', nav: 'Events', make: eventsPage, detail: eventPage },
    entities: { title: 'Entities', nav: 'Entities', make: entitiesPage, detail: entityPage },
    checks: { title: 'Checks', nav: 'Checks', make: checksPage, detail: checkPage },
    silences: { title: 'Silences', nav: 'Silences', make: silencesPage },
  };

  function layout(ns, pageName) {
    const select = h('select', {
      id: 'namespace',
      onchange: (e) => go(link(e.target.value, [pageName])),
    }, namespaces.map((n) => h('option', { value: n, selected: n === ns }, n)));
    const main = h('main', { id: 'main', tabindex: '-1' });
    const header = h('header', { class: 'topbar' },
      h('button', { class: 'skip', onclick: () => main.focus() }, 'Skip to content'),
      h('a', { class: 'brand', href: link(ns, ['overview']) }, h('img', { src: document.querySelector('link[rel=icon]').href, alt: '' }), 'Kensa'),
      h('nav', { 'aria-label': 'Main' }, h('ul', {}, Object.entries(PAGES).map(([name, page]) =>
        h('li', {}, h('a', { href: link(ns, [name]), 'aria-current': name === pageName ? 'page' : null }, page.nav))))),
      h('label', {}, 'Namespace', select),
      h('span', { id: 'live', class: 'live', role: 'status', dataset: { state: 'connecting' } }, 'Connecting…'),
      h('span', { class: 'user' }, auth.username),
      h('button', { type: 'button', onclick: logout }, 'Log out'));
    fill(app, header, main);
    live.paint();
    return main;
  }

  async function loadNamespaces() {
    const { data } = await api('GET', '/api/core/v2/namespaces');
    namespaces = (data || []).map((n) => n.name).sort();
  }

  let routeSerial = 0;

  async function route() {
    const serial = ++routeSerial;
    if (current && current.destroy) current.destroy();
    current = null;
    document.body.classList.remove('wall');
    const { parts, query } = parseHash();
    if (!auth || parts[0] === 'login') {
      if (auth && parts[0] === 'login') {
        go('#/');
        return;
      }
      if (parts[0] !== 'login') {
        afterLogin = location.hash;
        go('#/login');
        return;
      }
      live.stop();
      renderLogin();
      return;
    }
    try {
      if (!namespaces) await loadNamespaces();
    } catch (err) {
      if (serial !== routeSerial) return;
      fill(app, h('main', { class: 'login' }, h('p', { class: 'error', role: 'alert' }, `Could not load namespaces: ${err.message}`)));
      return;
    }
    if (serial !== routeSerial) return;
    if (!namespaces.length) {
      fill(app, h('main', { id: 'main' },
        h('h1', {}, 'No namespaces'),
        h('p', {}, 'Your user cannot see any namespace. Ask an administrator for a role binding.'),
        h('button', { onclick: logout }, 'Log out')));
      return;
    }
    if (parts[0] !== 'n' || !parts[1]) {
      const preferred = localStorage.getItem('kensa.namespace');
      go(link(namespaces.includes(preferred) ? preferred : namespaces.includes('default') ? 'default' : namespaces[0], ['overview']));
      return;
    }
    const ns = parts[1];
    const pageName = PAGES[parts[2]] ? parts[2] : 'overview';
    if (!namespaces.includes(ns)) {
      // Maybe created since we listed: look again once.
      await loadNamespaces().catch(() => {});
      if (serial !== routeSerial) return;
      if (!namespaces.includes(ns)) {
        toast(`You cannot see namespace "${ns}".`, true);
        go(link(namespaces[0], [pageName]));
        return;
      }
    }
    localStorage.setItem('kensa.namespace', ns);
    const spec = PAGES[pageName];
    const rest = parts.slice(3);
    const make = rest.length && spec.detail ? spec.detail : spec.make;
    const main = layout(ns, pageName);
    const page = make(ns, rest, query);
    current = page;
    document.title = `${page.title || spec.title} · ${ns} · Kensa`;
    if (page.wall) document.body.classList.add('wall');
    try {
      await page.mount(main);
      if (serial !== routeSerial) return;
      // What the benchmark reads: the first page of this load drawn with its data.
      if (!performance.getEntriesByName('kensa:first-render').length) performance.mark('kensa:first-render');
      const heading = main.querySelector('h1');
      if (heading && document.activeElement === document.body) {
        heading.setAttribute('tabindex', '-1');
        heading.focus({ preventScroll: true });
      }
    } catch (err) {
      if (serial !== routeSerial || err.status === 401) return;
      fill(main, h('h1', {}, spec.title), h('p', { class: 'error', role: 'alert' }, err.message));
    }
    live.start(ns, () => schedule(page));
  }

  /// Re-reads the current page after a live change: one refresh at a time, the last change
  /// never lost.
  function schedule(page) {
    if (page !== current || !page.refresh) return;
    if (page.busy) {
      page.pending = true;
      return;
    }
    page.busy = true;
    page.refresh()
      .catch((err) => {
        if (err.status !== 401) console.warn('refresh failed', err);
      })
      .finally(() => {
        page.busy = false;
        if (page.pending) {
          page.pending = false;
          schedule(page);
        }
      });
  }

  // ------------------------------------------------------------------------------------------
  // Login

  function renderLogin() {
    document.title = 'Log in · Kensa';
    const error = h('p', { class: 'error', role: 'alert' });
    const message = loginMessage ? h('p', { class: 'notice', role: 'status' }, loginMessage) : null;
    loginMessage = '';
    const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
    const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
    const button = h('button', { type: 'submit' }, 'Log in');
    const form = h('form', {
      onsubmit: async (e) => {
        e.preventDefault();
        button.disabled = true;
        error.textContent = '';
        try {
          await login(user.value.trim(), pass.value);
          const target = afterLogin;
          afterLogin = '';
          go(target && target !== '#/login' ? target : '#/');
        } catch (err) {
          error.textContent = err.message;
          pass.select();
        } finally {
          button.disabled = false;
        }
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'username' }, 'Username'), user),
    h('div', { class: 'field' }, h('label', { for: 'password' }, 'Password'), pass),
    error, button);
    fill(app, h('main', { class: 'login', id: 'main' },
      h('h1', {}, h('img', { src: document.querySelector('link[rel=icon]').href, alt: '' }), 'Kensa'),
      message, form));
    user.focus();
  }

  // ------------------------------------------------------------------------------------------
  // Shared event rendering

  function stateBadges(e) {
    return [
      badge(e.severity || severityOf(e.status)),
      e.silenced ? badge('silenced') : null,
      e.state === 'flapping' ? badge('flapping') : null,
      e.problem === 'keepalive' && e.status !== 0 ? badge('keepalive', 'Agent not responding') : null,
      e.problem === 'missed_round' && e.status !== 0 ? badge('missed_round', 'Round missed') : null,
    ];
  }

  function eventLink(ns, e, text) {
    return h('a', { href: link(ns, ['events', e.entity, e.check]) }, text);
  }

  /// One row of an events table. `columns` picks optional columns.
  function eventRow(ns, e, columns = {}) {
    const tr = h('tr', { class: `row-${e.bucket}` },
      cell('Status', stateBadges(e)),
      columns.entity === false ? null : cell('Entity', h('a', { href: link(ns, ['entities', e.entity]) }, e.entity)),
      cell('Check', eventLink(ns, e, e.check)),
      h('td', { class: 'output', dataset: { label: 'Output' }, title: e.output }, firstLine(e.output)),
      cell('History', historyStrip(e.history || [])),
      cell('Since', e.status === 0 ? ['OK ', when(e.since, 'for')] : when(e.since, 'for')),
      cell('Last result', when(e.executed || e.timestamp)),
      columns.agent ? cell('Ran on', e.processed_by || e.entity) : null);
    return tr;
  }

  const EVENT_COLUMNS = ['Status', 'Entity', 'Check', 'Output', 'History', 'Since', 'Last result'];

  function eventsTable(caption, columns = {}) {
    const tbody = h('tbody');
    const headings = EVENT_COLUMNS.filter((c) => !(c === 'Entity' && columns.entity === false));
    if (columns.agent) headings.push('Ran on');
    return { tbody, element: table(caption, headings, tbody) };
  }

  const eventKey = (e) => `${e.entity}/${e.check}`;

  // ------------------------------------------------------------------------------------------
  // Overview

  const TILES = [
    ['critical', 'Critical'], ['warning', 'Warning'], ['unknown', 'Unknown'],
    ['silenced', 'Silenced'], ['flapping', 'Flapping'], ['ok', 'OK'],
  ];

  function overviewPage(ns, rest, query) {
    const wall = query.get('wall') === '1';
    const heading = h('h1', {}, wall ? `Kensa · ${ns}` : 'Overview');
    const banner = h('div', { class: 'banner ok', 'aria-live': 'polite' });
    const tiles = h('ul', { class: 'tiles', 'aria-label': 'Events by state' });
    const problems = h('ol', { class: 'problems', 'aria-label': 'Worst problems first' });
    const others = h('tbody');
    const entities = h('div');
    const updated = h('p', { class: 'updated' });
    let clock = null;
    let fallback = null;

    function tile(kind, label, count, href) {
      return h('li', {}, h('a', {
        class: `tile ${kind} ${count ? 'nonzero' : 'zero'}`,
        href,
        'aria-label': `${count} ${label}`,
      }, h('span', { class: 'count' }, count.toLocaleString()), h('span', { class: 'label' }, label)));
    }

    function draw(data) {
      const c = data.counts;
      const open = c.critical + c.warning + c.unknown;
      banner.className = `banner ${c.critical ? 'critical' : open ? 'warning' : 'ok'}`;
      const headline = open
        ? `${open.toLocaleString()} ${open === 1 ? 'problem needs' : 'problems need'} attention`
        : 'All clear: nothing needs attention';
      const sub = `${c.total.toLocaleString()} events in ${ns}` +
        (c.silenced ? `, ${c.silenced.toLocaleString()} silenced` : '');
      fillIfChanged(banner, headline + sub, headline, h('span', { class: 'sub' }, sub));
      const items = TILES.map(([kind, label]) => ({ kind, label, count: c[kind], href: link(ns, ['events'], { status: kind }) }));
      items.push({ kind: 'alert', label: 'Agents not responding', count: c.keepalive_failures,
        href: link(ns, ['events'], { status: 'problem', problem: 'keepalive' }) });
      items.push({ kind: 'alert', label: 'Missed rounds', count: c.missed_rounds,
        href: link(ns, ['events'], { status: 'problem', problem: 'missed_round' }) });
      syncRows(tiles, items, (t) => t.label, (t) => tile(t.kind, t.label, t.count, t.href));
      const shown = wall ? data.problems.items.slice(0, 12) : data.problems.items;
      syncRows(problems, shown, eventKey, (e) => h('li', { class: e.problem },
        h('span', {}, stateBadges(e)),
        h('span', { class: 'what' }, eventLink(ns, e, `${e.check} on ${e.entity}`)),
        h('span', {}, when(e.since, 'for')),
        h('span', { class: 'output' }, firstLine(e.output, 200))));
      if (!shown.length) fill(problems, h('li', { class: 'empty' }, 'No open problems.'));
      else problems.querySelectorAll('li.empty').forEach((li) => li.remove());
      syncRows(others, data.other_namespaces, (n) => n.name, (n) => h('tr', {},
        cell('Namespace', h('a', { href: link(n.name, ['overview'], wall ? { wall: 1 } : null) }, n.name)),
        cell('Critical', String(n.counts.critical)),
        cell('Warning', String(n.counts.warning)),
        cell('Unknown', String(n.counts.unknown)),
        cell('Silenced', String(n.counts.silenced))));
      fillIfChanged(entities, JSON.stringify(data.entities), data.entities
        ? facts([
          ['Entities', h('a', { href: link(ns, ['entities']) }, data.entities.total.toLocaleString())],
          ['Agents', data.entities.agents.toLocaleString()],
          ['Proxies', data.entities.proxies.toLocaleString()],
        ])
        : h('p', { class: 'muted' }, 'You may not list entities here.'));
      fillIfChanged(updated, String(data.generated_at), 'Updated ', when(data.generated_at));
      document.body.dataset.rendered = 'overview';
    }

    async function refresh() {
      const { data } = await api('GET', '/dashboard/api/overview', { query: { namespace: ns } });
      draw(data);
    }

    return {
      title: wall ? 'Wall screen' : 'Overview',
      wall,
      async mount(main) {
        const toggle = wall
          ? h('a', { class: 'button secondary wall-exit', href: link(ns, ['overview']) }, 'Exit wall screen')
          : h('a', { class: 'button secondary wall-toggle', href: link(ns, ['overview'], { wall: 1 }) }, 'Wall screen');
        const clockEl = h('span', { class: 'muted' });
        if (wall) {
          const tick = () => { clockEl.textContent = new Date().toLocaleTimeString(); };
          tick();
          clock = setInterval(tick, 1000);
          // Live updates drive the screen; this only covers a stream that silently stalls.
          fallback = setInterval(() => schedule(this), 30000);
        }
        fill(main, toggle, heading, wall ? clockEl : null, banner, tiles,
          h('div', { class: 'columns' },
            h('section', { class: 'panel', 'aria-labelledby': 'problems-h' },
              h('h2', { id: 'problems-h' }, 'Worst problems first'), problems,
              wall ? null : h('p', {}, h('a', { href: link(ns, ['events'], { status: 'problem' }) }, 'All problems →'))),
            h('section', { class: 'panel side', 'aria-labelledby': 'side-h' },
              h('h2', { id: 'side-h' }, 'Entities'), entities,
              h('h2', {}, 'Other namespaces'),
              table('Problems in other namespaces', ['Namespace', 'Critical', 'Warning', 'Unknown', 'Silenced'], others))),
          updated);
        await refresh();
      },
      refresh,
      destroy() {
        clearInterval(clock);
        clearInterval(fallback);
      },
    };
  }

  // ------------------------------------------------------------------------------------------
  // Events list

  const STATES = ['critical', 'warning', 'unknown', 'silenced', 'flapping', 'ok'];
  const PAGE_SIZE = 50;

  function pager(onPage) {
    const summary = h('span', { 'aria-live': 'polite' });
    const prev = h('button', { type: 'button', class: 'secondary', onclick: () => onPage(-1) }, '← Previous');
    const next = h('button', { type: 'button', class: 'secondary', onclick: () => onPage(1) }, 'Next →');
    return {
      element: h('div', { class: 'pager' }, prev, summary, next),
      update(offset, count, total, noun) {
        const text = total
          ? `${(offset + 1).toLocaleString()}–${(offset + count).toLocaleString()} of ${total.toLocaleString()} ${noun}`
          : `No ${noun} match.`;
        if (summary.textContent !== text) summary.textContent = text;
        prev.disabled = offset === 0;
        next.disabled = offset + count >= total;
      },
    };
  }

  function eventsPage(ns, rest, query) {
    const filters = {
      status: (query.get('status') || '').split(',').filter(Boolean),
      entity: query.get('entity') || '',
      check: query.get('check') || '',
      subscription: query.get('subscription') || '',
      label: query.get('label') || '',
      q: query.get('q') || '',
      problem: query.get('problem') || '',
    };
    if (filters.status.includes('problem')) {
      filters.status = filters.status.filter((s) => s !== 'problem').concat(['critical', 'warning', 'unknown']);
    }
    let page = Math.max(1, Number(query.get('page')) || 1);
    const { tbody, element } = eventsTable('Events, worst first');
    const error = h('p', { class: 'error', role: 'alert' });
    const pages = pager((delta) => {
      page = Math.max(1, page + delta);
      sync();
      load();
    });

    function sync() {
      replaceQuery({ ...filters, status: filters.status.join(','), page: page > 1 ? page : '' });
    }

    let latest = 0;

    async function load() {
      const params = { namespace: ns, ...filters, status: filters.status.join(','), offset: (page - 1) * PAGE_SIZE, limit: PAGE_SIZE };
      // Answers can overtake each other (typing, live updates): only the newest request draws.
      const serial = ++latest;
      try {
        const { data } = await api('GET', '/dashboard/api/events', { query: params });
        if (serial !== latest) return;
        error.textContent = '';
        syncRows(tbody, data.items, eventKey, (e) => eventRow(ns, e));
        pages.update(data.offset, data.items.length, data.total, 'events');
        document.body.dataset.rendered = 'events';
      } catch (err) {
        if (serial !== latest) return;
        if (err.status === 400) {
          error.textContent = err.message;
        } else {
          throw err;
        }
      }
    }

    function text(name, label, placeholder, hint) {
      const input = h('input', {
        id: `f-${name}`, name, value: filters[name], placeholder, type: name === 'q' ? 'search' : 'text',
        autocomplete: 'off', 'aria-describedby': hint ? `f-${name}-hint` : null,
      });
      let debounce = null;
      input.addEventListener('input', () => {
        clearTimeout(debounce);
        debounce = setTimeout(() => {
          filters[name] = input.value.trim();
          page = 1;
          sync();
          load().catch(() => {});
        }, 300);
      });
      return h('div', { class: 'field' }, h('label', { for: `f-${name}` }, label), input,
        hint ? h('span', { class: 'hint', id: `f-${name}-hint` }, hint) : null);
    }

    const boxes = STATES.map((state) => {
      const box = h('input', {
        type: 'checkbox', name: 'status', value: state, checked: filters.status.includes(state),
        onchange: () => {
          filters.status = boxes.filter((b) => b.checked).map((b) => b.value);
          page = 1;
          sync();
          load().catch(() => {});
        },
      });
      return box;
    });

    function preset(states) {
      for (const box of boxes) box.checked = states.includes(box.value);
      filters.status = states;
      page = 1;
      sync();
      load().catch(() => {});
    }

    const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter events', onsubmit: (e) => e.preventDefault() },
      h('fieldset', { class: 'states' }, h('legend', {}, 'State'),
        boxes.map((box, i) => h('label', {}, box, badge(STATES[i]))),
        h('button', { type: 'button', class: 'secondary', onclick: () => preset(['critical', 'warning', 'unknown']) }, 'Problems only'),
        h('button', { type: 'button', class: 'secondary', onclick: () => preset([]) }, 'All states')),
      text('q', 'Search', 'entity, check or output'),
      // On a phone the other filters fold away (unless in use), so the events come first.
      h('details', {
        class: 'more',
        open: !window.matchMedia('(max-width: 48rem)').matches || !!(filters.entity || filters.check || filters.subscription || filters.label),
      },
      h('summary', {}, 'More filters'),
      h('div', { class: 'more-fields' },
        text('entity', 'Entity', 'exact name'),
        text('check', 'Check', 'exact name'),
        text('subscription', 'Subscription', 'e.g. linux'),
        text('label', 'Label', 'region=eu', 'key=value or a label selector'))));

    const PROBLEMS = { keepalive: 'Only agents that stopped sending keepalives.', missed_round: 'Only missed round-robin rounds.' };
    const only = filters.problem ? h('p', { class: 'notice' }, PROBLEMS[filters.problem] || `Only ${filters.problem}.`, ' ',
      h('button', {
        type: 'button',
        class: 'link',
        onclick: (e) => {
          filters.problem = '';
          e.currentTarget.parentElement.remove();
          sync();
          load().catch(() => {});
        },
      }, 'Show all')) : null;

    return {
      title: 'Events',
      async mount(main) {
        fill(main, h('h1', {}, 'Events'), form, only, error, pages.element, element);
        await load();
      },
      refresh: load,
    };
  }

  // ------------------------------------------------------------------------------------------
  // Event detail

  function eventPage(ns, rest) {
    const [entity, check] = rest;
    const body = h('div');
    let can = NO_PERMISSIONS;

    async function resolve(event) {
      const resolved = JSON.parse(JSON.stringify(event));
      const now = nowSeconds();
      // A new result, not a re-send of the stored one (event processing drops known ids).
      delete resolved.id;
      resolved.check.status = 0;
      resolved.check.output = `Resolved manually by ${auth.username}`;
      resolved.check.executed = now;
      resolved.timestamp = now;
      await api('PUT', core(ns, 'events', entity, check), { body: resolved });
      toast(`Resolved ${check} on ${entity}.`);
      await refresh();
    }

    async function expire(name) {
      if (!confirm(`Delete silence ${name}?`)) return;
      await api('DELETE', core(ns, 'silenced', name));
      toast(`Deleted silence ${name}.`);
      await refresh();
    }

    async function execute() {
      await api('POST', core(ns, 'checks', check, 'execute'), { body: { check, subscriptions: [`entity:${entity}`] } });
      toast(`Asked ${entity} to run ${check} now.`);
    }

    function act(fn) {
      return async (e) => {
        const button = e.currentTarget;
        button.disabled = true;
        try {
          await fn();
        } catch (err) {
          toast(err.message, true);
        } finally {
          button.disabled = false;
        }
      };
    }

    function draw(data) {
      const ev = data.event;
      const c = ev.check || {};
      const en = ev.entity || {};
      const summary = { ...data, status: c.status, state: c.state, entity, check };
      const actions = h('div', { class: 'actions' },
        can.create_silences && !data.silenced
          ? h('a', { class: 'button', href: link(ns, ['silences'], { subscription: `entity:${entity}`, check, back: `events/${entity}/${check}` }) }, 'Silence this')
          : null,
        can.resolve_events && c.status !== 0 ? h('button', { type: 'button', onclick: act(() => resolve(ev)) }, 'Resolve') : null,
        can.execute_checks && check !== 'keepalive' ? h('button', { type: 'button', class: 'secondary', onclick: act(execute) }, 'Run check now') : null);
      const metrics = (ev.metrics && ev.metrics.points) || [];
      fillIfChanged(body, JSON.stringify([data, can]), 
        h('p', { class: 'crumbs' }, h('a', { href: link(ns, ['events']) }, 'Events'), '›', h('a', { href: link(ns, ['entities', entity]) }, entity)),
        h('h1', {}, `${check} on ${entity}`),
        h('p', {}, stateBadges(summary), ' ', c.status === 0 ? ['OK ', when(data.since, 'for')] : when(data.since, 'for')),
        actions,
        h('h2', {}, 'Output'),
        h('pre', {}, c.output || '(no output)'),
        h('h2', {}, 'History'),
        h('p', {}, historyStrip((c.history || []).map((x) => x.status), true)),
        h('div', { class: 'detail-grid' },
          h('section', { class: 'panel' }, h('h2', {}, 'Result'), facts([
            ['Status', `${c.status} (${LABELS[severityOf(c.status)]})`],
            ['State', c.state],
            ['Occurrences', `${c.occurrences || 0} (highest since it went bad: ${c.occurrences_watermark || 0})`],
            ['Executed', when(c.executed)],
            ['Last OK', when(c.last_ok)],
            ['Duration', c.duration ? `${c.duration.toFixed(3)} s` : null],
            ['State change', c.total_state_change !== undefined ? `${c.total_state_change} %` : null],
            ['Ran on', c.processed_by || null],
          ])),
          h('section', { class: 'panel' }, h('h2', {}, 'Check'), facts([
            ['Command', c.command ? h('code', {}, c.command) : null],
            ['Schedule', c.cron ? `cron ${c.cron}` : c.interval ? `every ${c.interval} s` : null],
            ['Subscriptions', tags(c.subscriptions)],
            ['Handlers', tags(c.handlers)],
            ['Definition', check === 'keepalive' ? 'agent keepalive' : h('a', { href: link(ns, ['checks', check]) }, check)],
          ])),
          h('section', { class: 'panel' }, h('h2', {}, 'Silences that match'),
            data.silences.length
              ? h('ul', {}, data.silences.map((s) => h('li', {},
                h('strong', {}, s.metadata.name), s.reason ? ` — ${s.reason}` : '',
                h('span', { class: 'muted' }, ` (by ${s.creator || 'unknown'}, expires `, s.expire_at ? when(s.expire_at, 'in') : 'never', s.expire_on_resolve ? ', or when resolved' : '', ')'),
                can.delete_silences ? [' ', h('button', { type: 'button', class: 'link', onclick: act(() => expire(s.metadata.name)) }, 'Remove')] : null)))
              : h('p', { class: 'muted' }, 'None.')),
          h('section', { class: 'panel' }, h('h2', {}, 'Last handler outcomes'),
            data.handler_outcomes && data.handler_outcomes.length
              ? h('ul', {}, data.handler_outcomes.map((o) => h('li', {},
                h('strong', {}, o.handler), ` (${o.pipeline}): `,
                h('span', { class: o.outcome === 'failed' ? 'error' : null }, o.outcome),
                o.detail ? ` ${o.detail}` : '', ' ', h('span', { class: 'muted' }, when(o.at)))))
              : h('p', { class: 'muted' }, (c.handlers && c.handlers.length) || (ev.pipelines && ev.pipelines.length)
                ? 'No outcome recorded since this backend started.'
                : 'No handlers or pipelines.')),
          h('section', { class: 'panel' }, h('h2', {}, 'Metrics'),
            metrics.length
              ? table('Metric points', ['Name', 'Value', 'Time', 'Tags'], h('tbody', {}, metrics.map((p) => h('tr', {},
                cell('Name', p.name), cell('Value', String(p.value)), cell('Time', when(p.timestamp > 1e12 ? Math.floor(p.timestamp / 1e9) : p.timestamp)),
                cell('Tags', tags((p.tags || []).map((t) => `${t.name}=${t.value}`)))))))
              : h('p', { class: 'muted' }, 'No metric points.')),
          h('section', { class: 'panel' }, h('h2', {}, 'Entity'), facts([
            ['Name', h('a', { href: link(ns, ['entities', entity]) }, entity)],
            ['Class', en.entity_class],
            ['Subscriptions', tags(en.subscriptions)],
          ]))));
      document.body.dataset.rendered = 'event';
    }

    async function refresh() {
      const { data } = await api('GET', '/dashboard/api/event', { query: { namespace: ns, entity, check } });
      draw(data);
    }

    return {
      title: `${check} on ${entity}`,
      async mount(main) {
        fill(main, body);
        can = await permissions(ns);
        try {
          await refresh();
        } catch (err) {
          if (err.status === 404) {
            fill(body, h('h1', {}, `${check} on ${entity}`), h('p', {}, 'This event no longer exists (the entity or the event was deleted).'),
              h('a', { href: link(ns, ['events']) }, 'Back to events'));
            return;
          }
          throw err;
        }
      },
      async refresh() {
        try {
          await refresh();
        } catch (err) {
          if (err.status !== 404) throw err;
        }
      },
    };
  }

  // ------------------------------------------------------------------------------------------
  // Entities

  function entitiesPage(ns, rest, query) {
    const filters = { q: query.get('q') || '', class: query.get('class') || '', subscription: query.get('subscription') || '' };
    let page = Math.max(1, Number(query.get('page')) || 1);
    const tbody = h('tbody');
    const pages = pager((delta) => {
      page = Math.max(1, page + delta);
      sync();
      load();
    });

    function sync() {
      replaceQuery({ ...filters, page: page > 1 ? page : '' });
    }

    let latest = 0;

    async function load() {
      const serial = ++latest;
      const { data } = await api('GET', '/dashboard/api/entities', {
        query: { namespace: ns, ...filters, offset: (page - 1) * PAGE_SIZE, limit: PAGE_SIZE },
      });
      if (serial !== latest) return;
      syncRows(tbody, data.items, (e) => e.name, (e) => h('tr', { class: e.worst && e.worst !== 'ok' ? `row-${e.worst}` : null },
        cell('Name', h('a', { href: link(ns, ['entities', e.name]) }, e.name)),
        cell('Class', e.entity_class),
        cell('Status', e.worst ? badge(e.worst) : h('span', { class: 'muted' }, e.events === undefined ? '—' : 'no events')),
        h('td', { class: 'num', dataset: { label: 'Events' } }, e.events === undefined ? '—' : String(e.events)),
        cell('Subscriptions', tags(e.subscriptions.filter((s) => !s.startsWith('entity:')).slice(0, 5))),
        cell('Platform', [e.platform, e.os].filter(Boolean).join(' / ') || '—'),
        cell('Last seen', e.entity_class === 'agent' ? when(e.last_seen) : '—')));
      pages.update(data.offset, data.items.length, data.total, 'entities');
      document.body.dataset.rendered = 'entities';
    }

    function field(name, label, input) {
      let debounce = null;
      input.addEventListener(input.tagName === 'SELECT' ? 'change' : 'input', () => {
        clearTimeout(debounce);
        debounce = setTimeout(() => {
          filters[name] = input.value.trim();
          page = 1;
          sync();
          load().catch(() => {});
        }, input.tagName === 'SELECT' ? 0 : 300);
      });
      return h('div', { class: 'field' }, h('label', { for: input.id }, label), input);
    }

    const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter entities', onsubmit: (e) => e.preventDefault() },
      field('q', 'Search', h('input', { id: 'e-q', type: 'search', value: filters.q, placeholder: 'name, hostname, platform', autocomplete: 'off' })),
      field('class', 'Class', h('select', { id: 'e-class' },
        ['', 'agent', 'proxy', 'backend'].map((c) => h('option', { value: c, selected: c === filters.class }, c || 'any')))),
      field('subscription', 'Subscription', h('input', { id: 'e-sub', value: filters.subscription, placeholder: 'e.g. linux', autocomplete: 'off' })));

    return {
      title: 'Entities',
      async mount(main) {
        fill(main, h('h1', {}, 'Entities'), form, pages.element,
          table('Entities', ['Name', 'Class', 'Status', 'Events', 'Subscriptions', 'Platform', 'Last seen'], tbody));
        await load();
      },
      refresh: load,
    };
  }

  function entityPage(ns, rest) {
    const [name] = rest;
    const head = h('div');
    const { tbody, element } = eventsTable(`Events of ${name}`, { entity: false });
    let can = NO_PERMISSIONS;

    async function refresh() {
      const [{ data: entity }, { data: events }] = await Promise.all([
        api('GET', core(ns, 'entities', name)),
        api('GET', '/dashboard/api/events', { query: { namespace: ns, entity: name, limit: 200 } }),
      ]);
      const sys = entity.system || {};
      const meta = entity.metadata || {};
      const pairs = (obj) => Object.entries(obj || {}).map(([k, v]) => `${k}=${v}`);
      const interfaces = ((sys.network || {}).interfaces || [])
        .filter((i) => (i.addresses || []).length)
        .map((i) => `${i.name}: ${(i.addresses || []).join(', ')}`);
      fillIfChanged(head, JSON.stringify([entity, events.total, can]), 
        h('p', { class: 'crumbs' }, h('a', { href: link(ns, ['entities']) }, 'Entities')),
        h('h1', {}, name),
        h('div', { class: 'actions' },
          can.create_silences ? h('a', { class: 'button secondary', href: link(ns, ['silences'], { subscription: `entity:${name}`, back: `entities/${name}` }) }, 'Silence this entity') : null),
        h('div', { class: 'detail-grid' },
          h('section', { class: 'panel' }, h('h2', {}, 'Entity'), facts([
            ['Class', entity.entity_class],
            ['Last seen', entity.entity_class === 'agent' ? when(entity.last_seen) : null],
            ['Agent version', entity.sensu_agent_version],
            ['User', entity.user],
            ['Deregister', entity.deregister ? 'yes, when it stops' : 'no'],
            ['Subscriptions', tags(entity.subscriptions)],
            ['Labels', tags(pairs(meta.labels))],
            ['Annotations', tags(pairs(meta.annotations))],
          ])),
          h('section', { class: 'panel' }, h('h2', {}, 'System'), facts([
            ['Hostname', sys.hostname],
            ['OS', sys.os],
            ['Platform', [sys.platform, sys.platform_version].filter(Boolean).join(' ')],
            ['Family', sys.platform_family],
            ['Architecture', sys.arch],
            ['libc', sys.libc_type],
            ['Virtualization', [sys.vm_system, sys.vm_role].filter(Boolean).join(' ')],
            ['Cloud', sys.cloud_provider],
            ['Network', interfaces.length ? tags(interfaces) : null],
          ]))),
        h('h2', {}, `Events (${events.total})`));
      syncRows(tbody, events.items, eventKey, (e) => eventRow(ns, e, { entity: false }));
      document.body.dataset.rendered = 'entity';
    }

    return {
      title: name,
      async mount(main) {
        can = await permissions(ns);
        fill(main, head, element);
        await refresh();
      },
      refresh,
    };
  }

  // ------------------------------------------------------------------------------------------
  // Checks

  function scheduleText(c) {
    if (c.cron) return `cron ${c.cron}`;
    if (c.interval) return `every ${span(c.interval)}`;
    return 'not scheduled';
  }

  function checksPage(ns) {
    const tbody = h('tbody');
    const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load more');
    let next = '';
    let loaded = [];
    let can = NO_PERMISSIONS;

    function row(c) {
      const name = c.metadata.name;
      return h('tr', {},
        cell('Name', h('a', { href: link(ns, ['checks', name]) }, name)),
        cell('Command', h('code', {}, firstLine(c.command, 80))),
        cell('Schedule', scheduleText(c), c.publish ? '' : ' (unpublished)'),
        cell('Subscriptions', tags(c.subscriptions)),
        cell('Round robin', c.round_robin ? 'yes' : 'no'),
        cell('Actions', can.execute_checks ? h('button', {
          type: 'button', class: 'secondary', 'aria-label': `Run ${name} now`,
          onclick: async (e) => {
            const button = e.currentTarget;
            button.disabled = true;
            try {
              await api('POST', core(ns, 'checks', name, 'execute'), { body: { check: name } });
              toast(`Asked the subscribers of ${name} to run it now.`);
            } catch (err) {
              toast(err.message, true);
            } finally {
              button.disabled = false;
            }
          },
        }, 'Run now') : '—'));
    }

    async function fetchPage(token) {
      const res = await api('GET', core(ns, 'checks'), { query: { limit: 100, continue: token } });
      next = res.headers.get('Sensu-Continue') || '';
      more.hidden = !next;
      return res.data || [];
    }

    async function refresh() {
      // Re-read as many checks as are shown.
      const items = await fetchPage('');
      loaded = items;
      syncRows(tbody, loaded, (c) => c.metadata.name, row);
      document.body.dataset.rendered = 'checks';
    }

    more.addEventListener('click', async () => {
      loaded = loaded.concat(await fetchPage(next));
      syncRows(tbody, loaded, (c) => c.metadata.name, row);
    });

    return {
      title: 'Checks',
      async mount(main) {
        can = await permissions(ns);
        fill(main, h('h1', {}, 'Checks'),
          table('Checks', ['Name', 'Command', 'Schedule', 'Subscriptions', 'Round robin', 'Actions'], tbody), more);
        await refresh();
        if (!loaded.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No checks in this namespace.')));
      },
      // Check definitions are configuration: they do not change with events.
      refresh: null,
    };
  }

  const ROUND_STATES = {
    completed: 'Completed', duplicated: 'Ran twice', missed: 'Missed', in_flight: 'In flight',
  };
  const ROUND_ROWS = { missed: 'row-critical', duplicated: 'row-warning' };
  /// How often an open round-robin check page re-reads its rounds without a live change
  /// (rounds come due and pass their deadline without any event changing).
  const ROUNDS_REFRESH_MS = 5000;

  /// A round's time: its scheduled tick (or, ad hoc, when it was recorded), exact to the second.
  function roundTime(r) {
    const at = new Date(r.time);
    return h('time', { datetime: at.toISOString(), title: `${at.toLocaleString()} · round ${r.round}` },
      at.toLocaleTimeString());
  }

  function roundRow(ns, r) {
    const notes = [];
    if (r.adhoc) notes.push('ad hoc run');
    if (r.late) notes.push('completed after it was reported missed');
    if (r.duplicates) {
      const others = r.duplicate_entities.length ? r.duplicate_entities.join(', ') : 'another agent';
      notes.push(`also ran on ${others}${r.duplicates > r.duplicate_entities.length ? ` (${r.duplicates} times)` : ''}`);
    }
    if (r.state === 'in_flight' && r.deadline) {
      notes.push(h('span', {}, 'missed unless a result arrives ', when(Math.floor(r.deadline / 1000), 'in')));
    }
    const known = r.status !== null && r.status !== undefined;
    return h('tr', { class: ROUND_ROWS[r.state] || null },
      cell('Round', roundTime(r)),
      cell('Subscription', r.subscription, r.proxy_entity ? h('span', { class: 'muted' }, ` for ${r.proxy_entity}`) : null),
      cell('State', h('span', { class: `badge round ${r.state}` }, ROUND_STATES[r.state] || r.state)),
      cell('Agent', r.entity ? h('a', { href: link(ns, ['entities', r.entity]) }, r.entity) : h('span', { class: 'muted' }, '—')),
      cell('Deliveries', r.deliveries ? String(r.deliveries) : h('span', { class: 'muted', title: 'not recorded' }, '—')),
      cell('Result', known ? badge(severityOf(r.status)) : h('span', { class: 'muted' }, '—')),
      cell('Notes', notes.length ? notes.flatMap((n, i) => (i ? ['; ', n] : [n])) : ''));
  }

  function checkPage(ns, rest) {
    const [name] = rest;
    const head = h('div');
    const { tbody, element } = eventsTable(`Latest results of ${name}`, { agent: true });
    // Round-robin health: kept across re-renders of `head`, updated in place.
    const rrPanel = h('section', { class: 'panel', 'aria-labelledby': 'rr-h' }, h('h2', { id: 'rr-h' }, 'Round robin'));
    const rrBody = h('div');
    rrPanel.append(rrBody);
    const roundsBody = h('tbody');
    const roundsSection = h('section', { class: 'rounds', 'aria-labelledby': 'rounds-h', hidden: true },
      h('h2', { id: 'rounds-h' }, 'Last rounds'),
      table(`Last rounds of ${name}, newest first`, ['Round', 'Subscription', 'State', 'Agent', 'Deliveries', 'Result', 'Notes'], roundsBody));
    let can = NO_PERMISSIONS;
    let timer = null;
    let roundRobin = false;

    function drawRounds(c, rounds, failure) {
      if (!c.round_robin) {
        fillIfChanged(rrBody, 'not', h('p', { class: 'muted' }, 'Not round robin: every subscribed agent runs it.'));
        roundsSection.hidden = true;
        return;
      }
      if (!rounds) {
        fillIfChanged(rrBody, `error ${failure}`, h('p', { class: 'error' }, `Could not read the rounds: ${failure}`));
        return;
      }
      const s = rounds.summary;
      const spread = s.agents.map((a) => `${a.entity}: ${a.rounds}`);
      fillIfChanged(rrBody, JSON.stringify(s),
        h('p', {}, 'Each round runs on one agent of each subscription.'),
        h('p', { class: 'rr-summary' }, s.text),
        facts([
          ['Completed', `${s.completed} of ${s.finished}`],
          ['Missed', String(s.missed)],
          ['In flight', String(s.in_flight)],
          ['Ran twice', String(s.duplicated)],
          ['Redelivered', String(s.redelivered)],
          ['Spread', spread.length ? tags(spread) : null],
        ]));
      roundsSection.hidden = false;
      syncRows(roundsBody, rounds.rounds, (r) => r.round, (r) => roundRow(ns, r));
      if (!rounds.rounds.length) {
        fill(roundsBody, h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No rounds yet: the first one is recorded when it completes or is missed.')));
      }
    }

    async function refresh() {
      const [{ data: c }, { data: results }, rounds] = await Promise.all([
        api('GET', core(ns, 'checks', name)),
        api('GET', '/dashboard/api/events', { query: { namespace: ns, check: name, limit: 100 } }),
        api('GET', '/dashboard/api/rounds', { query: { namespace: ns, check: name } })
          .then((r) => ({ data: r.data }), (err) => ({ error: err })),
      ]);
      if (rounds.error && rounds.error.status === 401) throw rounds.error;
      // Built only when it changed: building it moves rrPanel and roundsSection into it.
      const signature = JSON.stringify([c, results.total, can]);
      if (head.dataset.sig !== signature) fillIfChanged(head, signature,
        h('p', { class: 'crumbs' }, h('a', { href: link(ns, ['checks']) }, 'Checks')),
        h('h1', {}, name),
        h('div', { class: 'actions' },
          can.execute_checks ? h('button', {
            type: 'button',
            onclick: async (e) => {
              const button = e.currentTarget;
              button.disabled = true;
              try {
                await api('POST', core(ns, 'checks', name, 'execute'), { body: { check: name } });
                toast(`Asked the subscribers of ${name} to run it now.`);
              } catch (err) {
                toast(err.message, true);
              } finally {
                button.disabled = false;
              }
            },
          }, 'Run now') : null,
          can.create_silences ? h('a', { class: 'button secondary', href: link(ns, ['silences'], { check: name, back: `checks/${name}` }) }, 'Silence this check') : null),
        h('div', { class: 'detail-grid' },
          h('section', { class: 'panel' }, h('h2', {}, 'Definition'), facts([
            ['Command', h('code', {}, c.command)],
            ['Schedule', scheduleText(c)],
            ['Published', c.publish ? 'yes' : 'no (runs only when asked)'],
            ['Subscriptions', tags(c.subscriptions)],
            ['Timeout', c.timeout ? `${c.timeout} s` : 'none'],
            ['TTL', c.ttl ? `${c.ttl} s` : null],
            ['Handlers', tags(c.handlers)],
            ['Proxy entity', c.proxy_entity_name || null],
          ])),
          rrPanel),
        roundsSection,
        h('h2', {}, `Latest results (${results.total})`));
      roundRobin = !!c.round_robin;
      drawRounds(c, rounds.data, rounds.error && rounds.error.message);
      syncRows(tbody, results.items, eventKey, (e) => eventRow(ns, e, { agent: true }));
      document.body.dataset.rendered = 'check';
    }

    return {
      title: name,
      async mount(main) {
        can = await permissions(ns);
        fill(main, head, element);
        await refresh();
        timer = setInterval(() => { if (roundRobin) schedule(this); }, ROUNDS_REFRESH_MS);
      },
      refresh,
      destroy() {
        clearInterval(timer);
      },
    };
  }

  // ------------------------------------------------------------------------------------------
  // Silences

  const EXPIRES = [
    ['-1', 'Never'], ['900', '15 minutes'], ['3600', '1 hour'], ['14400', '4 hours'],
    ['86400', '1 day'], ['604800', '1 week'],
  ];

  function silencesPage(ns, rest, query) {
    const tbody = h('tbody');
    const status = h('p', { class: 'error', role: 'alert' });
    const back = query.get('back');
    let can = NO_PERMISSIONS;

    async function refresh() {
      const { data } = await api('GET', core(ns, 'silenced'));
      const items = (data || []).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
      syncRows(tbody, items, (s) => s.metadata.name, (s) => h('tr', {},
        cell('Name', h('strong', {}, s.metadata.name)),
        cell('Subscription', s.subscription || 'any'),
        cell('Check', s.check || 'any'),
        cell('Reason', s.reason || h('span', { class: 'muted' }, '—')),
        cell('Created by', s.creator || '—'),
        cell('Starts', s.begin > nowSeconds() ? when(s.begin, 'in') : 'started'),
        cell('Expires', s.expire_at ? when(s.expire_at, 'in') : 'never', s.expire_on_resolve ? ' or when resolved' : ''),
        can.delete_silences ? cell('Actions', h('button', {
          type: 'button', class: 'danger', 'aria-label': `Delete silence ${s.metadata.name}`,
          onclick: async () => {
            if (!confirm(`Delete silence ${s.metadata.name}?`)) return;
            try {
              await api('DELETE', core(ns, 'silenced', s.metadata.name));
              toast(`Deleted silence ${s.metadata.name}.`);
              await refresh();
            } catch (err) {
              toast(err.message, true);
            }
          },
        }, 'Delete')) : null));
      if (!items.length) fill(tbody, h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No silences.')));
      document.body.dataset.rendered = 'silences';
    }

    function createForm() {
      const field = (id, label, input, hint) => h('div', { class: 'field' },
        h('label', { for: id }, label), input, hint ? h('span', { class: 'hint', id: `${id}-hint` }, hint) : null);
      const subscription = h('input', { id: 's-sub', value: query.get('subscription') || '', autocomplete: 'off', 'aria-describedby': 's-sub-hint' });
      const check = h('input', { id: 's-check', value: query.get('check') || '', autocomplete: 'off', 'aria-describedby': 's-check-hint' });
      const expire = h('select', { id: 's-expire' }, EXPIRES.map(([v, l]) => h('option', { value: v }, l)));
      const begin = h('input', { id: 's-begin', type: 'datetime-local', 'aria-describedby': 's-begin-hint' });
      const onResolve = h('input', { id: 's-resolve', type: 'checkbox' });
      const reason = h('input', { id: 's-reason', autocomplete: 'off' });
      const button = h('button', { type: 'submit' }, 'Create silence');
      return h('form', {
        class: 'form',
        'aria-labelledby': 'new-silence',
        onsubmit: async (e) => {
          e.preventDefault();
          status.textContent = '';
          if (!subscription.value.trim() && !check.value.trim()) {
            status.textContent = 'Give a subscription, a check, or both.';
            subscription.focus();
            return;
          }
          const body = {
            metadata: { namespace: ns },
            subscription: subscription.value.trim(),
            check: check.value.trim(),
            expire: Number(expire.value),
            expire_on_resolve: onResolve.checked,
            reason: reason.value.trim(),
          };
          if (begin.value) body.begin = Math.floor(new Date(begin.value).getTime() / 1000);
          button.disabled = true;
          try {
            await api('POST', core(ns, 'silenced'), { body });
            toast(`Silenced ${body.subscription || '*'}:${body.check || '*'}.`);
            if (back) {
              go(`#/n/${enc(ns)}/${back.split('/').map(enc).join('/')}`);
              return;
            }
            subscription.value = '';
            check.value = '';
            reason.value = '';
            await refresh();
          } catch (err) {
            status.textContent = err.message;
          } finally {
            button.disabled = false;
          }
        },
      },
      h('h2', { id: 'new-silence' }, 'New silence'),
      field('s-sub', 'Subscription', subscription, 'e.g. linux, or entity:web-1 for one entity; empty for any'),
      field('s-check', 'Check', check, 'a check name; empty for every check'),
      field('s-expire', 'Expires after', expire),
      h('div', { class: 'check' }, onResolve, h('label', { for: 's-resolve' }, 'Also expire when the event resolves')),
      field('s-begin', 'Start (optional)', begin, 'empty: now'),
      field('s-reason', 'Reason', reason),
      status, button);
    }

    return {
      title: 'Silences',
      async mount(main) {
        can = await permissions(ns);
        fill(main, h('h1', {}, 'Silences'),
          can.create_silences ? createForm() : null,
          h('h2', {}, 'Active and scheduled'),
          table('Silences', ['Name', 'Subscription', 'Check', 'Reason', 'Created by', 'Starts', 'Expires'].concat(can.delete_silences ? ['Actions'] : []), tbody));
        await refresh();
        if (can.create_silences && (query.get('subscription') || query.get('check'))) {
          document.getElementById('s-reason').focus();
        }
      },
      refresh,
    };
  }

  // ------------------------------------------------------------------------------------------
  // Boot

  window.addEventListener('hashchange', route);
  if (auth) scheduleRefresh();
  route();
})();
