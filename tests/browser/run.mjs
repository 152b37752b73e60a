// The dashboard's user scenario in a real headless Chromium (Debian's `chromium`, driven by
// playwright-core; no browser download). Started by crates/kensa-backend/tests/dashboard.rs
// against a seeded TestServer; exits non-zero with the failing step on any failure.
//
// Environment: DASHBOARD_URL, CHROMIUM, ADMIN_USERNAME, ADMIN_PASSWORD, VIEWER_USERNAME,
// VIEWER_PASSWORD, SCREENSHOT_DIR (PNGs of the main pages are written there).
//
// Scenario: log in → overview; a failing event reported through the API while the events page
// is open appears without a reload; filter; silence it and see it marked silenced; resolve it;
// a round-robin check run by real agents (started by dashboard.rs) shows its last rounds and
// which agent ran each, updated live; log out. A `view` user sees no action buttons and the API
// refuses its direct actions (403), and sees the round-robin health too.
// Throughout: no page errors, no request leaves the dashboard's origin.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const URL_ = env('DASHBOARD_URL').replace(/\/$/, '');
const ADMIN = [env('ADMIN_USERNAME'), env('ADMIN_PASSWORD')];
const VIEWER = [env('VIEWER_USERNAME'), env('VIEWER_PASSWORD')];
const SHOTS = env('SCREENSHOT_DIR');
/// The agents dashboard.rs starts for the round-robin check `synthetic`.
const PROBES = ['probe-a', 'probe-b', 'probe-c'];
mkdirSync(SHOTS, { recursive: true });

const TIMEOUT = 15000;
let currentStep = 'start';
const problems = [];

function step(name) {
  currentStep = name;
  console.log(`- ${name}`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/// Calls the REST API from Node (not from the page), as another client would.
async function api(token, method, path, body) {
  const res = await fetch(`${URL_}/api/core/v2/${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, text: await res.text() };
}

async function token([user, password]) {
  const res = await fetch(`${URL_}/auth`, {
    headers: { Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` },
  });
  check(res.ok, `login of ${user} through the API failed: ${res.status}`);
  return (await res.json()).access_token;
}

/// A page that fails the run on script errors and on requests to another origin.
let activePage = null;

async function watchedPage(context, who) {
  const page = await context.newPage();
  activePage = page;
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (err) => problems.push(`${who}: page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/status of 40[13]/.test(msg.text())) {
      problems.push(`${who}: console error: ${msg.text()}`);
    }
  });
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(URL_) && !url.startsWith('data:')) {
      problems.push(`${who}: request left the dashboard's origin: ${url}`);
    }
  });
  return page;
}

/// Every form control has a label the screen reader reads, every image a text alternative.
async function checkLabels(page, where) {
  const unlabelled = await page.evaluate(() => [
    ...[...document.querySelectorAll('input, select, textarea')]
      .filter((el) => el.type !== 'hidden' && !el.labels?.length && !el.getAttribute('aria-label'))
      .map((el) => `${el.tagName.toLowerCase()}#${el.id || el.name}`),
    ...[...document.querySelectorAll('img')].filter((img) => !img.hasAttribute('alt')).map((img) => `img ${img.src}`),
  ]);
  check(unlabelled.length === 0, `${where}: unlabelled controls: ${unlabelled.join(', ')}`);
}

async function shot(page, name, options = {}) {
  // Screenshots are documentation: no notifications over the content, times settled.
  await page.evaluate(() => document.getElementById('toast')?.replaceChildren());
  await page.waitForTimeout(200);
  await page.screenshot({ path: join(SHOTS, `${name}.png`), ...options });
}

async function login(page, [user, password]) {
  await page.goto(`${URL_}/`);
  await page.getByLabel('Username').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('body[data-rendered="overview"]').waitFor();
}

const row = (page, key) => page.locator(`tbody tr[data-key="${key}"]`);

/// The round-robin check's rounds table: `[state, agent]` of every row, newest first.
async function roundRows(page) {
  return page.locator('section.rounds tbody tr').evaluateAll((rows) => rows.map((r) => [
    r.querySelector('td[data-label="State"]')?.textContent,
    r.querySelector('td[data-label="Agent"]')?.textContent,
  ]));
}

/// Waits until completed rounds name every probe agent.
async function waitForRoundsOfEveryProbe(page) {
  await page.waitForFunction((agents) => {
    const rows = [...document.querySelectorAll('section.rounds tbody tr')];
    const ran = new Set(rows
      .filter((r) => r.querySelector('td[data-label="State"]')?.textContent === 'Completed')
      .map((r) => r.querySelector('td[data-label="Agent"]').textContent));
    return agents.every((a) => ran.has(a));
  }, PROBES, { timeout: 30000 });
}

async function adminScenario(browser) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await watchedPage(context, 'admin');
  const adminToken = await token(ADMIN);

  step('the login page asks for credentials and refuses wrong ones');
  await page.goto(`${URL_}/`);
  await page.getByLabel('Username').waitFor();
  await shot(page, 'login');
  await page.getByLabel('Username').fill(ADMIN[0]);
  await page.getByLabel('Password').fill('wrong password');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('alert').filter({ hasText: 'Wrong username or password' }).waitFor();

  step('log in and see the overview');
  await checkLabels(page, 'login');
  await login(page, ADMIN);
  const banner = page.locator('.banner');
  check(/problems? need/.test(await banner.innerText()), `banner says: ${await banner.innerText()}`);
  await page.locator('.tile.alert.nonzero', { hasText: 'Agents not responding' }).waitFor();
  check(await page.locator('.problems li.keepalive').count() === 1, 'the keepalive failure is listed');
  const firstProblem = await page.locator('.problems li').first().innerText();
  check(/keepalive on db-1/.test(firstProblem), `worst problem first, got: ${firstProblem}`);
  // Namespaces the admin may see.
  const options = await page.locator('#namespace option').allInnerTexts();
  check(options.join() === 'default,prod', `namespaces: ${options}`);
  await shot(page, 'overview', { fullPage: true });

  step('the keepalive tile leads to the agents that stopped reporting');
  await page.getByRole('link', { name: '1 Agents not responding' }).click();
  await page.locator('body[data-rendered="events"]').waitFor();
  await page.getByText('Only agents that stopped sending keepalives.').waitFor();
  const keepalives = await page.locator('tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.key));
  check(keepalives.join() === 'db-1/keepalive', `keepalive failures: ${keepalives}`);
  await page.goto(`${URL_}/#/n/default/overview`);
  await page.locator('body[data-rendered="overview"]').waitFor();

  step('the wall screen shows the same counts in big type');
  await page.getByRole('link', { name: 'Wall screen' }).click();
  await page.locator('body.wall[data-rendered="overview"]').waitFor();
  check(await page.locator('.topbar').isHidden(), 'wall screen hides the navigation');
  await shot(page, 'wall-screen');
  await page.getByRole('link', { name: 'Exit wall screen' }).click();
  await page.locator('body:not(.wall)').waitFor();

  step('open the events page, sorted by severity');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Events' }).click();
  await page.locator('body[data-rendered="events"]').waitFor();
  await page.locator('#live[data-state="live"]').waitFor();
  const order = await page.locator('tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.key));
  check(order[0] === 'db-1/keepalive', `first row ${order[0]}`);
  check(order.indexOf('web-2/http') < order.indexOf('web-1/load'), `critical before warning: ${order}`);
  check(order.indexOf('web-1/load') < order.indexOf('app-1/disk-full'), `warning before ok: ${order}`);

  step('a failing event reported while the page is open appears live, without a reload');
  await page.evaluate(() => { window.kensaNoReload = true; });
  const reported = await api(adminToken, 'PUT', 'namespaces/default/events/web-7/disk-full', {
    entity: { entity_class: 'proxy', subscriptions: ['linux'], metadata: { name: 'web-7', namespace: 'default' } },
    check: {
      metadata: { name: 'disk-full', namespace: 'default' },
      status: 2,
      output: 'DISK CRITICAL - /var is 97% full',
      interval: 60,
      subscriptions: ['linux'],
      executed: Math.floor(Date.now() / 1000),
    },
  });
  check(reported.status === 201, `reporting the event: ${reported.status} ${reported.text}`);
  await row(page, 'web-7/disk-full').waitFor({ timeout: 10000 });
  check(await page.evaluate(() => window.kensaNoReload === true), 'the page reloaded');
  check(/Critical/.test(await row(page, 'web-7/disk-full').innerText()), 'the new event is critical');

  step('filter by check and by free text');
  await page.getByLabel('Check').fill('disk-full');
  await page.waitForFunction(() => [...document.querySelectorAll('tbody tr')].every((r) => r.dataset.key.endsWith('/disk-full')));
  check(await row(page, 'web-7/disk-full').isVisible(), 'the failing disk is listed');
  await page.getByLabel('Check').fill('');
  await page.getByLabel('Search').fill('97%');
  await page.waitForFunction(() => document.querySelectorAll('tbody tr').length === 1);
  check(await row(page, 'web-7/disk-full').isVisible(), 'free text finds the output');
  check(page.url().includes('q=97'), `filters are kept in the URL: ${page.url()}`);
  await page.getByLabel('Search').fill('');
  await page.getByRole('button', { name: 'Problems only' }).click();
  await page.waitForFunction(() => document.querySelectorAll('tbody tr').length === 5);
  await checkLabels(page, 'events');
  await shot(page, 'events', { fullPage: true });

  step('open the event and silence it');
  await row(page, 'web-7/disk-full').getByRole('link', { name: 'disk-full' }).click();
  await page.locator('body[data-rendered="event"]').waitFor();
  await page.getByRole('heading', { name: 'disk-full on web-7' }).waitFor();
  check(/97% full/.test(await page.locator('pre').innerText()), 'the output is shown');
  await page.getByRole('link', { name: 'Silence this' }).click();
  await page.getByLabel('Subscription').waitFor();
  check(await page.getByLabel('Subscription').inputValue() === 'entity:web-7', 'prefilled subscription');
  check(await page.getByLabel('Check').inputValue() === 'disk-full', 'prefilled check');
  await page.getByLabel('Reason').fill('disk replacement scheduled');
  await page.getByRole('button', { name: 'Create silence' }).click();
  await page.locator('body[data-rendered="event"]').waitFor();
  await page.locator('.badge.silenced').first().waitFor();
  await page.getByText('disk replacement scheduled').waitFor();
  check(await page.getByRole('link', { name: 'Silence this' }).count() === 0, 'no second silence offered');
  await shot(page, 'event', { fullPage: true });

  step('the events list marks it silenced');
  await page.goto(`${URL_}/#/n/default/events?status=silenced`);
  await row(page, 'web-7/disk-full').locator('.badge.silenced').waitFor();

  step('resolve it');
  await row(page, 'web-7/disk-full').getByRole('link', { name: 'disk-full' }).click();
  await page.getByRole('button', { name: 'Resolve' }).click();
  await page.locator('pre', { hasText: `Resolved manually by ${ADMIN[0]}` }).waitFor();
  await page.locator('.badge.ok').first().waitFor();
  check(await page.getByRole('button', { name: 'Resolve' }).count() === 0, 'nothing left to resolve');

  step('entities, checks and silences pages');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Entities' }).click();
  await page.locator('body[data-rendered="entities"]').waitFor();
  await row(page, 'web-1').waitFor();
  await shot(page, 'entities', { fullPage: true });
  await row(page, 'web-1').getByRole('link', { name: 'web-1' }).click();
  await page.locator('body[data-rendered="entity"]').waitFor();
  await page.getByText('web-1.example.com').waitFor();
  await shot(page, 'entity', { fullPage: true });
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Checks' }).click();
  await page.locator('body[data-rendered="checks"]').waitFor();
  await shot(page, 'checks', { fullPage: true });
  await page.getByRole('link', { name: 'http', exact: true }).click();
  await page.locator('body[data-rendered="check"]').waitFor();
  await page.getByRole('button', { name: 'Run now' }).click();
  await page.getByRole('status').filter({ hasText: 'run it now' }).waitFor();

  step('a round-robin check run by real agents shows its last rounds and who ran them, live');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Checks' }).click();
  await page.locator('body[data-rendered="checks"]').waitFor();
  await page.getByRole('link', { name: 'synthetic', exact: true }).click();
  await page.locator('body[data-rendered="check"]').waitFor();
  await page.evaluate(() => { window.kensaNoReload = true; });
  const rounds = page.getByRole('table', { name: 'Last rounds of synthetic, newest first' });
  await rounds.waitFor();
  const headers = await rounds.locator('thead th').evaluateAll((ths) => ths.map((th) => th.textContent));
  check(headers.join() === 'Round,Subscription,State,Agent,Deliveries,Result,Notes', `rounds table headers: ${headers}`);
  await waitForRoundsOfEveryProbe(page);
  const shown = await roundRows(page);
  const completed = shown.filter(([state]) => state === 'Completed');
  check(completed.every(([, agent]) => PROBES.includes(agent)), `rounds ran on: ${shown.map((r) => r[1])}`);
  const summary = await page.locator('.rr-summary').innerText();
  check(/^\d+ of the last \d+ rounds? completed/.test(summary), `round summary: ${summary}`);
  for (const agent of PROBES) check(summary.includes(`${agent} `), `the spread names ${agent}: ${summary}`);
  // Rounds keep coming (one a second) and the table follows without reloading the page.
  const newest = await page.locator('section.rounds tbody tr').first().getAttribute('data-key');
  await page.waitForFunction((key) => {
    const first = document.querySelector('section.rounds tbody tr');
    return first && first.dataset.key !== key;
  }, newest, { timeout: 15000 });
  check(await page.evaluate(() => window.kensaNoReload === true), 'the check page reloaded');
  await checkLabels(page, 'check');
  await shot(page, 'check', { fullPage: true });
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Silences' }).click();
  await page.locator('body[data-rendered="silences"]').waitFor();
  await row(page, 'entity:web-7:disk-full').waitFor();
  await checkLabels(page, 'silences');
  await shot(page, 'silences', { fullPage: true });

  step('on a phone');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${URL_}/#/n/default/overview`);
  await page.locator('body[data-rendered="overview"]').waitFor();
  await shot(page, 'phone-overview', { fullPage: true });
  await page.goto(`${URL_}/#/n/default/events?status=problem`);
  await page.locator('body[data-rendered="events"]').waitFor();
  await shot(page, 'phone-events');
  await page.setViewportSize({ width: 1366, height: 900 });

  step('log out');
  const refreshToken = await page.evaluate(() => JSON.parse(sessionStorage.getItem('kensa.session')).refresh_token);
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByLabel('Username').waitFor();
  await page.getByText('You are logged out.').waitFor();
  check(await page.evaluate(() => sessionStorage.getItem('kensa.session')) === null, 'session forgotten');
  await page.goto(`${URL_}/#/n/default/events`);
  await page.getByLabel('Username').waitFor();
  // The refresh token died with the session.
  const refreshed = await fetch(`${URL_}/auth/token`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${adminToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ refresh_token: refreshToken }),
  });
  check(refreshed.status === 401, `refresh after logout answered ${refreshed.status}`);
  await context.close();
}

async function viewerScenario(browser) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await watchedPage(context, 'viewer');

  step('a view user logs in with the keyboard only and sees only its namespace');
  await page.goto(`${URL_}/`);
  await page.getByLabel('Username').waitFor();
  check(await page.evaluate(() => document.activeElement.id) === 'username', 'the username field has focus');
  await page.keyboard.type(VIEWER[0]);
  await page.keyboard.press('Tab');
  await page.keyboard.type(VIEWER[1]);
  await page.keyboard.press('Enter');
  await page.locator('body[data-rendered="overview"]').waitFor();
  const options = await page.locator('#namespace option').allInnerTexts();
  check(options.join() === 'default', `viewer namespaces: ${options}`);

  step('no action buttons for a view user');
  await page.goto(`${URL_}/#/n/default/events/web-2/http`);
  await page.locator('body[data-rendered="event"]').waitFor();
  for (const name of ['Resolve', 'Run check now']) {
    check(await page.getByRole('button', { name }).count() === 0, `viewer sees ${name}`);
  }
  check(await page.getByRole('link', { name: 'Silence this' }).count() === 0, 'viewer sees Silence this');
  await page.goto(`${URL_}/#/n/default/silences`);
  await page.locator('body[data-rendered="silences"]').waitFor();
  check(await page.getByRole('button', { name: 'Create silence' }).count() === 0, 'viewer sees the silence form');
  check(await page.getByRole('button', { name: /Delete/ }).count() === 0, 'viewer sees Delete');
  await page.goto(`${URL_}/#/n/default/checks`);
  await page.locator('body[data-rendered="checks"]').waitFor();
  check(await page.getByRole('button', { name: /Run/ }).count() === 0, 'viewer sees Run now');

  step('a view user sees the round-robin health of a check it may read');
  await page.goto(`${URL_}/#/n/default/checks/synthetic`);
  await page.locator('body[data-rendered="check"]').waitFor();
  await waitForRoundsOfEveryProbe(page);
  check(await page.getByRole('button', { name: /Run/ }).count() === 0, 'viewer sees Run now on the check');

  step('the API refuses a view user\'s actions');
  const viewerToken = await page.evaluate(() => JSON.parse(sessionStorage.getItem('kensa.session')).access_token);
  const resolve = await api(viewerToken, 'PUT', 'namespaces/default/events/web-2/http', {
    entity: { metadata: { name: 'web-2' } }, check: { metadata: { name: 'http' }, status: 0 },
  });
  check(resolve.status === 403, `viewer resolve answered ${resolve.status}`);
  const silence = await api(viewerToken, 'POST', 'namespaces/default/silenced', { subscription: 'entity:web-2' });
  check(silence.status === 403, `viewer silence answered ${silence.status}`);
  const execute = await api(viewerToken, 'POST', 'namespaces/default/checks/http/execute', {});
  check(execute.status === 403, `viewer execute answered ${execute.status}`);
  const other = await fetch(`${URL_}/dashboard/api/overview?namespace=prod`, { headers: { Authorization: `Bearer ${viewerToken}` } });
  check(other.status === 403, `viewer overview of prod answered ${other.status}`);
  await context.close();
}

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
let failed = null;
try {
  await adminScenario(browser);
  await viewerScenario(browser);
} catch (err) {
  failed = err;
  if (activePage && !activePage.isClosed()) {
    const dir = join(import.meta.dirname, 'artifacts');
    mkdirSync(dir, { recursive: true });
    await activePage.screenshot({ path: join(dir, 'failure.png'), fullPage: true }).catch(() => {});
    console.error(`failure screenshot: ${join(dir, 'failure.png')} (page ${activePage.url()})`);
  }
}
await browser.close();
if (failed) {
  console.error(`FAILED at step "${currentStep}": ${failed.stack || failed}`);
}
if (problems.length) {
  console.error(`problems seen during the run:\n  ${problems.join('\n  ')}`);
}
if (failed || problems.length) process.exit(1);
console.log('scenario passed');
