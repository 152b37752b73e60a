// bench/dashboard-driver.mjs — the dashboard benchmark's measuring half (bench/dashboard.sh
// starts and stops the backend). Seeds EVENTS events through the REST API, each for its own
// proxy entity (so as many entities), with a realistic mix of states and a few silences; then
// measures, against the dashboard listener:
//   - server time (the `Server-Timing: app;dur=` header) and wall time of the overview and of
//     filtered event pages, over REPEAT requests each;
//   - in headless Chromium with an empty cache: time from navigation to the first page drawn
//     with its data (the page's `kensa:first-render` mark), and the bytes downloaded for that
//     first view (Resource Timing transfer sizes; the open live-update stream excluded).
// Prints one JSON document (and writes it to OUT when set). Progress goes to stderr.
//
// Environment: DASHBOARD_URL, ADMIN_USERNAME, ADMIN_PASSWORD, CHROMIUM, EVENTS (40000),
// SEED_CONCURRENCY (16), REPEAT (30), BROWSER_RUNS (5), SKIP_SEED=1, LABEL, OUT, BACKEND_PID
// (its RSS is reported).

import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
// playwright-core is installed (pinned) for the browser tests; the benchmark borrows it.
const require = createRequire(join(here, '../tests/browser/package.json'));
const { chromium } = require('playwright-core');

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const URL_ = env('DASHBOARD_URL').replace(/\/$/, '');
const USER = env('ADMIN_USERNAME');
const PASSWORD = env('ADMIN_PASSWORD');
const EVENTS = Number(env('EVENTS', '40000'));
const CONCURRENCY = Number(env('SEED_CONCURRENCY', '16'));
const REPEAT = Number(env('REPEAT', '30'));
const BROWSER_RUNS = Number(env('BROWSER_RUNS', '5'));
const NS = 'default';

const log = (message) => process.stderr.write(`dashboard-driver: ${message}\n`);

async function login() {
  const res = await fetch(`${URL_}/auth`, {
    headers: { Authorization: `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}` },
  });
  if (!res.ok) throw new Error(`login failed: ${res.status}`);
  return res.json();
}

let tokens = await login();
const auth = () => ({ Authorization: `Bearer ${tokens.access_token}` });

async function call(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(`${URL_}${path}`, {
      method,
      headers: { ...auth(), 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (res.status === 401 && attempt === 0) {
      tokens = await login();
      continue;
    }
    return res;
  }
}

// ---------------------------------------------------------------------------------------------
// Seeding

/// The state mix: 2 % critical, 5 % warning, 1 % unknown, the rest OK.
function statusOf(i) {
  if (i % 50 === 0) return 2;
  if (i % 20 === 1) return 1;
  if (i % 100 === 7) return 3;
  return 0;
}

const OUTPUTS = {
  0: 'OK - everything is fine; response time 0.012 s, 0 errors in the last 5 minutes',
  1: 'WARNING - disk usage at 84% on /var (threshold 80%), 12.4 GiB free',
  2: 'CRITICAL - service did not answer on port 443 within 10 s (connection refused)',
  3: 'UNKNOWN - plugin could not read /proc/loadavg: permission denied',
};

function event(i) {
  const status = statusOf(i);
  const executed = Math.floor(Date.now() / 1000) - (i % 600);
  return {
    entity: {
      entity_class: 'proxy',
      subscriptions: ['linux', `rack-${i % 40}`],
      metadata: { name: `bench-${i}`, namespace: NS, labels: { region: ['eu', 'us', 'ap'][i % 3] } },
    },
    check: {
      metadata: { name: `check-${i % 20}`, namespace: NS },
      status,
      output: OUTPUTS[status],
      interval: 60,
      subscriptions: ['linux', `rack-${i % 40}`],
      executed,
    },
    timestamp: executed,
  };
}

async function seed() {
  const started = Date.now();
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < EVENTS) {
      const i = next++;
      const e = event(i);
      const res = await call('PUT', `/api/core/v2/namespaces/${NS}/events/${e.entity.metadata.name}/${e.check.metadata.name}`, e);
      if (res.status !== 201) throw new Error(`seeding event ${i}: ${res.status} ${await res.text()}`);
      await res.arrayBuffer();
      done++;
      if (done % 5000 === 0) log(`seeded ${done}/${EVENTS} events`);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  // Two racks silenced: their problems count as silenced.
  for (const rack of ['rack-1', 'rack-2']) {
    const res = await call('POST', `/api/core/v2/namespaces/${NS}/silenced`, { subscription: rack, reason: 'maintenance' });
    if (res.status !== 201 && res.status !== 409) throw new Error(`silence ${rack}: ${res.status}`);
  }
  const seconds = (Date.now() - started) / 1000;
  return { events: EVENTS, entities: EVENTS, wall_s: round(seconds), events_per_s: round(EVENTS / seconds) };
}

// ---------------------------------------------------------------------------------------------
// Measuring

function round(x, digits = 1) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function stats(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return {
    count: sorted.length,
    p50_ms: round(at(0.5), 2),
    p90_ms: round(at(0.9), 2),
    max_ms: round(sorted[sorted.length - 1], 2),
  };
}

async function timeRequest(path) {
  const server = [];
  const wall = [];
  let bytes = 0;
  let sample = null;
  for (let i = 0; i < REPEAT; i++) {
    const started = performance.now();
    const res = await call('GET', path);
    const body = await res.text();
    wall.push(performance.now() - started);
    if (res.status !== 200) throw new Error(`${path}: ${res.status} ${body}`);
    const timing = /app;dur=([\d.]+)/.exec(res.headers.get('server-timing') || '');
    if (!timing) throw new Error(`${path}: no Server-Timing header`);
    server.push(Number(timing[1]));
    bytes = body.length;
    sample = JSON.parse(body);
  }
  return { path, server: stats(server), wall: stats(wall), response_bytes: bytes, sample };
}

/// Waits until the dashboard index holds every seeded event (it follows the store's change feed).
async function waitForIndex() {
  const deadline = Date.now() + 300000;
  for (;;) {
    const res = await call('GET', `/dashboard/api/overview?namespace=${NS}`);
    const data = await res.json();
    if (data.counts && data.counts.total >= EVENTS) return data.counts;
    if (Date.now() > deadline) throw new Error(`the dashboard index holds ${data.counts?.total} events after 300 s`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

const FILTERED = [
  ['problems, first page', `/dashboard/api/events?namespace=${NS}&status=problem&limit=50`],
  ['critical in one region', `/dashboard/api/events?namespace=${NS}&status=critical&label=region%3Deu&limit=50`],
  ['free text', `/dashboard/api/events?namespace=${NS}&q=bench-1234&limit=50`],
  ['one check, warnings', `/dashboard/api/events?namespace=${NS}&check=check-1&status=warning&limit=50`],
  ['all events, deep page', `/dashboard/api/events?namespace=${NS}&offset=20000&limit=50`],
  ['entities, free text', `/dashboard/api/entities?namespace=${NS}&q=bench-99&limit=50`],
];

async function browserFirstView(browser, hash, rendered) {
  const runs = [];
  for (let i = 0; i < BROWSER_RUNS; i++) {
    const session = await login();
    // A fresh context: empty cache, the session already in sessionStorage as after a login.
    const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
    await context.addInitScript(([key, value]) => {
      if (!sessionStorage.getItem(key)) sessionStorage.setItem(key, value);
    }, ['kensa.session', JSON.stringify({ ...session, username: USER })]);
    const page = await context.newPage();
    const started = Date.now();
    await page.goto(`${URL_}/${hash}`);
    await page.locator(`body[data-rendered="${rendered}"]`).waitFor({ timeout: 60000 });
    const wall = Date.now() - started;
    const measured = await page.evaluate(() => {
      const mark = performance.getEntriesByName('kensa:first-render')[0];
      const nav = performance.getEntriesByType('navigation')[0];
      const resources = performance.getEntriesByType('resource');
      const requests = [nav, ...resources].map((e) => ({
        name: e.name.replace(location.origin, ''),
        transfer_bytes: e.transferSize,
        body_bytes: e.decodedBodySize,
      }));
      return { first_render_ms: mark ? mark.startTime : null, requests };
    });
    runs.push({ wall_ms: wall, ...measured });
    await context.close();
  }
  const first = runs.map((r) => r.first_render_ms);
  const bytes = runs[0].requests.reduce((sum, r) => sum + r.transfer_bytes, 0);
  const decoded = runs[0].requests.reduce((sum, r) => sum + r.body_bytes, 0);
  return {
    page: hash,
    first_render: stats(first),
    wall: stats(runs.map((r) => r.wall_ms)),
    // On the wire (headers included, static assets gzipped), and the bodies once decoded.
    first_view_transfer_bytes: bytes,
    first_view_decoded_bytes: decoded,
    first_view_requests: runs[0].requests,
  };
}

const report = {
  benchmark: 'dashboard',
  label: process.env.LABEL || 'sqlite',
  url: URL_,
  started_at_unix: Math.floor(Date.now() / 1000),
  machine: { cpus: os.cpus().length, mem_total_kib: Math.round(os.totalmem() / 1024) },
  parameters: { namespace: NS, events: EVENTS, entities: EVENTS, seed_concurrency: CONCURRENCY, repeat: REPEAT, browser_runs: BROWSER_RUNS },
};

if (!process.env.SKIP_SEED) {
  log(`seeding ${EVENTS} events (as many proxy entities) with concurrency ${CONCURRENCY}`);
  report.seed = await seed();
}
log('waiting for the dashboard index to hold every event');
report.counts = await waitForIndex();

log('timing the overview and filtered pages');
const overview = await timeRequest(`/dashboard/api/overview?namespace=${NS}`);
delete overview.sample;
report.overview = overview;
report.filtered = [];
for (const [name, path] of FILTERED) {
  const timed = await timeRequest(path);
  const total = timed.sample.total;
  delete timed.sample;
  report.filtered.push({ name, matching: total, ...timed });
}

log('first view in headless Chromium (empty cache)');
const browser = await chromium.launch({ executablePath: env('CHROMIUM', '/usr/bin/chromium'), headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
try {
  report.browser = {
    overview: await browserFirstView(browser, `#/n/${NS}/overview`, 'overview'),
    filtered_events: await browserFirstView(browser, `#/n/${NS}/events?status=critical&label=region%3Deu`, 'events'),
  };
} finally {
  await browser.close();
}
if (process.env.BACKEND_PID) {
  // The backend's memory with everything seeded and indexed (the dashboard index included).
  const status = readFileSync(`/proc/${process.env.BACKEND_PID}/status`, 'utf8');
  report.backend_rss_kib = Number((/VmRSS:\s+(\d+)/.exec(status) || [])[1]);
}
report.duration_s = round(Date.now() / 1000 - report.started_at_unix);

const text = `${JSON.stringify(report, null, 2)}\n`;
if (process.env.OUT) writeFileSync(process.env.OUT, text);
process.stdout.write(text);
