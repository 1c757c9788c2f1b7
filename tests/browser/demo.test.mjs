// The demo page in a real browser: Debian's chromium, headless, driven by
// playwright-core (never a downloaded browser). Starts the real broker
// (`ringcast --demo`) itself and stops it at the end, whatever happens.
//
//   RINGCAST_BIN   the broker binary (default: target/release/ringcast)
//   CHROMIUM       the browser (default: /usr/bin/chromium)
//   OUT            reports; the screenshots go to $OUT/browser (default:
//                  target/test-reports)
//
// What "no missed seq" means here. The broker keeps its history in memory,
// so a *connection* drop must lose nothing (the page resumes with `since`
// and the broker replays what it missed), while a *process* restart starts
// every topic again at seq 1 with a new epoch: the page must notice the new
// epoch, resynchronise from the new instance's history and say so, instead
// of mistaking the new stream for a continuation of the old one. The tests
// check both, separately.
//
// Access control as a browser meets it: the page keeps working under
// `--auth jwt` (anonymous subscribers of `demo.>`), and under
// `--allowed-origins` a page of another origin can neither publish nor
// read an answer, while the broker's own page can.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.RINGCAST_BIN || path.join(ROOT, 'target/release/ringcast');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = path.resolve(ROOT, process.env.OUT || 'target/test-reports', 'browser');
// Long enough that a reconnect never outlives the history, so a gap can
// only come from a bug (the default, 100, is about ten seconds of ticks).
const HISTORY = '2000';
const WAIT_MS = 20_000;

const children = new Set();
let browser = null;

// Whatever happens, no broker outlives the test run.
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});
// And the run ends by itself.
setTimeout(() => {
  console.error('browser tests: overall time limit reached');
  for (const c of children) c.kill('SIGKILL');
  process.exit(1);
}, 240_000).unref();

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts `ringcast --demo` on 127.0.0.1:port, with `extra` flags after the
 * usual ones; resolves once it listens.
 */
function startBroker(port, extra = []) {
  const child = spawn(BIN, ['--demo', '--listen', `127.0.0.1:${port}`, '--shards', '2',
                            '--history-messages', HISTORY, '--log', 'warn', ...extra],
                      { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`broker did not start: ${stderr}`)); }, 10_000);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('ringcast listening on')) { clearTimeout(timer); resolve(child); }
    });
    child.on('exit', (code) => {
      children.delete(child);
      clearTimeout(timer);
      reject(new Error(`broker exited (${code}) at start-up: ${stderr}`));
    });
  });
}

/** SIGTERM, then SIGKILL if it has not exited within 10 s. */
function stopBroker(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => { clearTimeout(kill); children.delete(child); resolve(); });
    child.kill('SIGTERM');
  });
}

/**
 * A TCP relay between the browser and the broker that can cut every
 * connection and refuse new ones: a network outage without restarting the
 * broker, so its history (and the seq space) stays.
 */
async function startRelay(targetPort) {
  const open = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) { client.destroy(); return; }
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = [client, upstream];
    for (const s of pair) open.add(s);
    const done = () => { for (const s of pair) { s.destroy(); open.delete(s); } };
    client.pipe(upstream);
    upstream.pipe(client);
    for (const s of pair) { s.on('error', done); s.on('close', done); }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    outage() { refusing = true; for (const s of open) s.destroy(); open.clear(); },
    restore() { refusing = false; },
    close() { for (const s of open) s.destroy(); server.close(); },
  };
}

/** What the page shows, read from its DOM. */
function readPage(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    const topics = {};
    for (const tr of document.querySelectorAll('#topic-rows tr')) {
      topics[tr.dataset.topic] = {
        seq: Number(tr.dataset.seq),
        from: tr.dataset.from === '' ? null : Number(tr.dataset.from),
        received: Number(tr.dataset.received),
        missed: Number(tr.dataset.missed),
      };
    }
    return {
      state: text('state'),
      transport: text('transport'),
      updates: Number(text('updates')),
      missed: Number(text('missed')),
      duplicates: Number(text('duplicates')),
      reconnects: Number(text('reconnects')),
      resets: Number(text('resets')),
      epoch: text('epoch'),
      topics,
      prices: [...document.querySelectorAll('#ticker-rows tr[data-symbol]')]
        .map((tr) => `${tr.dataset.symbol} ${tr.querySelector('.price').textContent}`),
      seats: [...document.querySelectorAll('#seats-rows tr[data-train]')]
        .map((tr) => `${tr.dataset.train} ${tr.querySelector('.seats').textContent}`),
      log: [...document.querySelectorAll('#log li')].map((li) => li.textContent),
    };
  });
}

/** Polls the page until `ok(state)` holds; fails with the last state after `ms`. */
async function waitFor(page, what, ok, ms = WAIT_MS) {
  const end = Date.now() + ms;
  let s;
  for (;;) {
    s = await readPage(page);
    if (ok(s)) return s;
    if (Date.now() > end) {
      assert.fail(`${what}: not reached within ${ms} ms; page shows ${JSON.stringify(s, null, 1)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Every topic's messages were seen once each, from its first seq on. */
function assertNoMissedSeq(s, label) {
  assert.equal(s.missed, 0, `${label}: missed counter; log: ${s.log.join(' | ')}`);
  assert.equal(s.duplicates, 0, `${label}: duplicates; log: ${s.log.join(' | ')}`);
  // Both demo topics are on the board (an empty table would check nothing).
  assert.deepEqual(Object.keys(s.topics).sort(), ['demo.seats', 'demo.ticker'], label);
  for (const [topic, t] of Object.entries(s.topics)) {
    assert.equal(t.missed, 0, `${label}: ${topic} missed`);
    assert.ok(t.from !== null && t.received > 0, `${label}: ${topic} received nothing`);
    assert.equal(t.received, t.seq - t.from + 1,
                 `${label}: ${topic} received ${t.received} messages for seqs ${t.from}..${t.seq}`);
  }
}

async function openPage(url, init) {
  // A context per page: its own connection pool, like a separate tab
  // profile, so SSE and long-poll pages never wait on each other's sockets.
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const res = await page.goto(url);
  assert.equal(res.status(), 200);
  return { page, errors, close: () => context.close() };
}

/** Live over `transport`, and ticks keep changing the DOM. */
async function assertLiveAndUpdating(page, transport) {
  const first = await waitFor(page, `live over ${transport}`,
                              (s) => s.state === 'live' && s.transport === transport
                                && s.prices.length === 5 && s.seats.length === 4);
  const later = await waitFor(page, `${transport}: prices change in the DOM`,
                              (s) => s.updates >= first.updates + 15
                                && s.prices.join() !== first.prices.join());
  assert.ok(later.topics['demo.ticker'].seq > first.topics['demo.ticker'].seq);
  assertNoMissedSeq(later, transport);
  return later;
}

let broker = null;
let port = 0;

before(async () => {
  mkdirSync(OUT, { recursive: true });
  port = await freePort();
  broker = await startBroker(port);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (broker) await stopBroker(broker);
});

test('the page goes live over WebSocket and ticks update the board', { timeout: 60_000 }, async () => {
  const { page, errors, close } = await openPage(`http://127.0.0.1:${port}/`);
  const s = await assertLiveAndUpdating(page, 'ws');
  assert.match(s.epoch, /^[0-9a-f]{16}$/);
  await page.screenshot({ path: path.join(OUT, 'demo-ws.png') });
  assert.deepEqual(errors, []);
  await close();
});

for (const transport of ['sse', 'poll']) {
  test(`forced ${transport} connects and updates the board`, { timeout: 60_000 }, async () => {
    const { page, errors, close } = await openPage(`http://127.0.0.1:${port}/?transport=${transport}`);
    await assertLiveAndUpdating(page, transport);
    await page.screenshot({ path: path.join(OUT, `demo-${transport}.png`) });
    assert.deepEqual(errors, []);
    await close();
  });
}

test('without WebSocket the page falls back to SSE, without both to long-polling', { timeout: 60_000 }, async () => {
  const noWs = await openPage(`http://127.0.0.1:${port}/`, () => { delete window.WebSocket; });
  await assertLiveAndUpdating(noWs.page, 'sse');
  await noWs.close();
  const neither = await openPage(`http://127.0.0.1:${port}/`, () => {
    delete window.WebSocket;
    delete window.EventSource;
  });
  await assertLiveAndUpdating(neither.page, 'poll');
  await neither.close();
});

test('a network outage loses no seq on any transport (resume with since)', { timeout: 90_000 }, async () => {
  const relay = await startRelay(port);
  try {
    const pages = {};
    for (const t of ['ws', 'sse', 'poll']) {
      pages[t] = await openPage(`http://127.0.0.1:${relay.port}/?transport=${t}`);
      await waitFor(pages[t].page, `${t} live`, (s) => s.state === 'live' && s.updates > 0);
    }
    relay.outage();
    const during = {};
    for (const [t, p] of Object.entries(pages)) {
      during[t] = await waitFor(p.page, `${t} notices the outage`, (s) => s.state === 'reconnecting');
    }
    // While every page is cut off, the broker goes on publishing: wait (on a
    // direct connection) until it is 20 seqs past what any page has seen.
    const seen = Math.max(...Object.values(during).map((s) => s.topics['demo.ticker'].seq));
    let published = 0;
    for (const end = Date.now() + WAIT_MS; published < seen + 20;) {
      assert.ok(Date.now() < end, 'the feeder kept publishing during the outage');
      const res = await fetch(`http://127.0.0.1:${port}/poll/demo.ticker?since=${seen + 19}&timeout_ms=1000`);
      const body = await res.json();
      published = body.length ? body[body.length - 1].seq : published;
    }
    relay.restore();
    for (const [t, p] of Object.entries(pages)) {
      const s = await waitFor(p.page, `${t} back live past seq ${published}`,
                              (s) => s.state === 'live' && s.topics['demo.ticker'].seq >= published);
      assert.ok(s.reconnects >= 1, `${t}: reconnects ${s.reconnects}`);
      assert.equal(s.resets, 0, `${t}: same broker, same epoch`);
      assert.equal(s.epoch, during[t].epoch);
      // Every seq from the first one seen to the last: the outage's
      // messages came back through `since`, none twice, none missing.
      assertNoMissedSeq(s, `${t} after the outage`);
      assert.ok(s.log.some((l) => l.includes('reconnected')), `${t}: log ${s.log}`);
    }
    for (const p of Object.values(pages)) {
      assert.deepEqual(p.errors, []);
      await p.close();
    }
  } finally {
    relay.close();
  }
});

test('a broker restart is survived: the page detects the new epoch and resynchronises', { timeout: 120_000 }, async () => {
  const pages = {};
  for (const t of ['ws', 'sse', 'poll']) {
    pages[t] = await openPage(`http://127.0.0.1:${port}/?transport=${t}`);
    await waitFor(pages[t].page, `${t} live`, (s) => s.state === 'live' && s.updates > 0);
  }
  const before = {};
  for (const [t, p] of Object.entries(pages)) before[t] = await readPage(p.page);
  await stopBroker(broker);
  for (const [t, p] of Object.entries(pages)) {
    await waitFor(p.page, `${t} notices the broker is gone`, (s) => s.state !== 'live');
  }
  broker = await startBroker(port); // the same port: the pages reconnect by themselves
  for (const [t, p] of Object.entries(pages)) {
    const s = await waitFor(p.page, `${t} live on the new instance`,
                            (s) => s.state === 'live' && s.epoch !== before[t].epoch
                              && Object.values(s.topics).every((x) => x.received >= 3));
    assert.equal(s.resets, 1, `${t}: one broker restart reported`);
    assert.ok(s.log.some((l) => l.includes('broker restarted')), `${t}: log ${s.log}`);
    // Resynchronised from the new instance's first message: its seqs
    // started again at 1 and the page has every one of them.
    for (const [topic, x] of Object.entries(s.topics)) {
      assert.equal(x.from, 1, `${t}: ${topic} resynchronised from seq 1`);
    }
    assertNoMissedSeq(s, `${t} after the restart`);
    const later = await waitFor(p.page, `${t} keeps updating`, (x) => x.updates >= s.updates + 10);
    assertNoMissedSeq(later, `${t} after the restart`);
  }
  await pages.ws.page.screenshot({ path: path.join(OUT, 'demo.png') });
  for (const p of Object.values(pages)) {
    assert.deepEqual(p.errors, []);
    await p.close();
  }
});

// ---------------------------------------------------------------------------
// Access control (docs/security.md) as a browser meets it.

/** base64url without padding, as JWTs use. */
const b64url = (b) => Buffer.from(b).toString('base64url');

/** An HS256 JWT over `claims`, signed with `secret`. */
function hs256(claims, secret) {
  const head = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** Sum over the shards of one `/metrics` sample (0 when the series is absent). */
async function metric(port, name, label) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(label)) sum += Number(line.split(' ').pop());
  }
  return sum;
}

/** What `/poll/{topic}` has retained (from seq 1, answered at once). */
async function retained(port, topic) {
  const res = await fetch(`http://127.0.0.1:${port}/poll/${topic}?since=0&timeout_ms=0`);
  assert.equal(res.status, 200, `poll ${topic}`);
  return res.json();
}

/**
 * One request with exactly these headers (a browser's fetch may not set
 * Origin; node:http may), on its own connection.
 */
function rawRequest(port, method, target, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: target, headers, agent: false,
                               timeout: 5_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${target}: no answer in 5 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

test('under --auth jwt the page still goes live over ws, sse and poll (anonymous demo.>)', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ringcast-jwt-'));
  // 48 random bytes. The broker strips trailing whitespace from the file
  // (an editor's newline), so draw again until the last byte is not one:
  // the token signed below must use the very secret the broker reads.
  let secret;
  do secret = randomBytes(48); while (/\s/.test(String.fromCharCode(secret[47])));
  const secretFile = path.join(dir, 'jwt.secret');
  writeFileSync(secretFile, secret, { mode: 0o600 });
  const authPort = await freePort();
  const authBroker = await startBroker(authPort, ['--auth', 'jwt', '--jwt-secret-file', secretFile,
                                                  '--anonymous-subscribe', 'demo.>']);
  try {
    const base = `http://127.0.0.1:${authPort}`;
    const publish = (topic, headers = {}) => fetch(`${base}/publish/${topic}`, {
      method: 'POST', body: '1', headers: { 'Content-Type': 'text/plain', ...headers },
    });
    // Access control is really on: no anonymous publish, no anonymous
    // subscription outside demo.>, no forged token ...
    const anon = await publish('demo.ticker');
    assert.equal(anon.status, 401, await anon.text());
    assert.match(anon.headers.get('www-authenticate') ?? '', /^Bearer /);
    const outside = await fetch(`${base}/poll/private.x?timeout_ms=0`);
    assert.ok([401, 403].includes(outside.status), `anonymous poll of private.x: ${outside.status}`);
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: 'browser-test', exp: now + 300, publish: ['jwt.>'] };
    const forged = await publish('jwt.check', { Authorization: `Bearer ${hs256(claims, randomBytes(48))}` });
    assert.equal(forged.status, 401, await forged.text());
    // ... while a token signed with the secret file's bytes is accepted.
    const signed = await publish('jwt.check', { Authorization: `Bearer ${hs256(claims, secret)}` });
    const signedBody = await signed.text();
    assert.equal(signed.status, 200, signedBody);
    assert.deepEqual(JSON.parse(signedBody), { seq: 1 });

    // The demo page carries no token: it subscribes anonymously, which
    // --anonymous-subscribe 'demo.>' allows, on every transport.
    for (const t of ['ws', 'sse', 'poll']) {
      const { page, errors, close } = await openPage(`${base}/?transport=${t}`);
      try {
        await assertLiveAndUpdating(page, t);
        await page.screenshot({ path: path.join(OUT, `demo-jwt-${t}.png`) });
        assert.deepEqual(errors, [], `${t}: page errors`);
      } finally {
        await close();
      }
    }
  } finally {
    await stopBroker(authBroker);
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * A page of another origin that tries to publish to `broker`: a simple
 * request (text/plain: no preflight), a preflighted one (application/json),
 * a no-cors one, and a WebSocket. Its results are `window.results`.
 */
function foreignPage(broker) {
  const wsUrl = broker.replace(/^http:/, 'ws:');
  return `<!doctype html><meta charset="utf-8"><title>another origin</title>
<script>
const target = ${JSON.stringify(`${broker}/publish/x.y`)};
async function attempt(name, init) {
  try {
    const res = await fetch(target, init);
    let body;
    try { body = await res.text(); } catch (e) { body = 'unreadable: ' + e; }
    return { name, outcome: 'resolved', type: res.type, status: res.status, body };
  } catch (e) {
    return { name, outcome: 'rejected', error: e.name, message: e.message };
  }
}
function socket() {
  return new Promise((resolve) => {
    const ws = new WebSocket(${JSON.stringify(`${wsUrl}/ws`)});
    const timer = setTimeout(() => resolve({ name: 'ws', outcome: 'no answer in 5 s' }), 5000);
    ws.onopen = () => { clearTimeout(timer); resolve({ name: 'ws', outcome: 'open' }); ws.close(); };
    ws.onclose = (e) => { clearTimeout(timer); resolve({ name: 'ws', outcome: 'closed', code: e.code }); };
  });
}
window.results = (async () => [
  await attempt('simple', { method: 'POST', body: '1', headers: { 'Content-Type': 'text/plain' } }),
  await attempt('preflighted', { method: 'POST', body: '1', headers: { 'Content-Type': 'application/json' } }),
  await attempt('no-cors', { method: 'POST', mode: 'no-cors', body: '1', headers: { 'Content-Type': 'text/plain' } }),
  await socket(),
])();
</script>`;
}

test('--allowed-origins: a page of another origin cannot publish; the broker\'s own page can', { timeout: 90_000 }, async () => {
  const bport = await freePort();
  const own = `http://127.0.0.1:${bport}`;
  const b = await startBroker(bport, ['--allowed-origins', own]);
  // The other origin: the same loopback host on another port.
  const html = foreignPage(own);
  const server = http.createServer((req, res) => {
    res.writeHead(req.url === '/' ? 200 : 404,
                  { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(req.url === '/' ? html : '');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const other = `http://127.0.0.1:${server.address().port}`;
  const pages = [];
  try {
    const rejectedBefore = await metric(bport, 'ringcast_http_errors_total', 'reason="origin_rejected"');

    // The page of the other origin, with the browser's network log (CDP)
    // to see what the broker answered even where the page may not.
    const context = await browser.newContext();
    pages.push(context);
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const requests = new Map();
    const entry = (id) => requests.get(id) ?? requests.set(id, {}).get(id);
    cdp.on('Network.requestWillBeSent', (e) => Object.assign(entry(e.requestId),
      { url: e.request.url, method: e.request.method, type: e.type }));
    cdp.on('Network.responseReceived', (e) => Object.assign(entry(e.requestId),
      { type: e.type, status: e.response.status }));
    cdp.on('Network.responseReceivedExtraInfo', (e) => Object.assign(entry(e.requestId),
      { rawStatus: e.statusCode }));
    cdp.on('Network.loadingFailed', (e) => Object.assign(entry(e.requestId),
      { failed: e.errorText, cors: e.corsErrorStatus?.corsError }));
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    assert.equal((await page.goto(`${other}/`)).status(), 200);
    const results = Object.fromEntries((await page.evaluate(() => window.results)).map((r) => [r.name, r]));

    // The page could read nothing: a CORS failure is a bare TypeError, a
    // no-cors answer is opaque (status 0, empty body), the socket never opens.
    for (const name of ['simple', 'preflighted']) {
      assert.equal(results[name].outcome, 'rejected', `${name}: ${JSON.stringify(results[name])}`);
      assert.equal(results[name].error, 'TypeError', `${name}: ${JSON.stringify(results[name])}`);
    }
    assert.deepEqual(results['no-cors'], { name: 'no-cors', outcome: 'resolved', type: 'opaque', status: 0, body: '' });
    assert.equal(results.ws.outcome, 'closed', JSON.stringify(results.ws));
    assert.equal(results.ws.code, 1006);
    assert.deepEqual(errors, []);

    // What the browser saw on the wire: the simple POST was answered 403
    // without Access-Control-Allow-Origin; the preflight was answered 403,
    // so the preflighted POST itself was never sent.
    const toBroker = [...requests.values()].filter((r) => r.url === `${own}/publish/x.y`);
    const log = JSON.stringify(toBroker);
    const simple = toBroker.find((r) => r.cors === 'MissingAllowOriginHeader');
    assert.ok(simple, `the simple POST failed its CORS check: ${log}`);
    assert.equal(simple.rawStatus, 403, log);
    const preflight = toBroker.find((r) => r.method === 'OPTIONS');
    assert.ok(preflight, `a preflight was sent: ${log}`);
    assert.equal(preflight.rawStatus ?? preflight.status, 403, log);
    const preflighted = toBroker.find((r) => r.cors === 'PreflightMissingAllowOriginHeader');
    assert.ok(preflighted, `the JSON POST failed on its preflight: ${log}`);
    assert.equal(preflighted.rawStatus, undefined, `the JSON POST was not sent: ${log}`);

    // The broker counted the refusals (simple, preflight, no-cors, socket),
    // and nothing was published.
    const rejectedAfter = await metric(bport, 'ringcast_http_errors_total', 'reason="origin_rejected"');
    assert.ok(rejectedAfter - rejectedBefore >= 4,
              `origin_rejected went from ${rejectedBefore} to ${rejectedAfter}`);
    assert.deepEqual(await retained(bport, 'x.y'), [], 'nothing published to x.y');

    // The same answers seen from here, headers and all.
    const post = await rawRequest(bport, 'POST', '/publish/x.y',
                                  { Origin: other, 'Content-Type': 'text/plain' }, '1');
    assert.equal(post.status, 403, post.body);
    assert.equal(post.headers['access-control-allow-origin'], undefined);
    const pre = await rawRequest(bport, 'OPTIONS', '/publish/x.y',
                                 { Origin: other, 'Access-Control-Request-Method': 'POST',
                                   'Access-Control-Request-Headers': 'content-type' });
    assert.equal(pre.status, 403, pre.body);
    assert.equal(pre.headers['access-control-allow-origin'], undefined);
    const okPre = await rawRequest(bport, 'OPTIONS', '/publish/x.y',
                                   { Origin: own, 'Access-Control-Request-Method': 'POST',
                                     'Access-Control-Request-Headers': 'content-type' });
    assert.equal(okPre.status, 204);
    assert.equal(okPre.headers['access-control-allow-origin'], own);
    assert.deepEqual(await retained(bport, 'x.y'), [], 'still nothing published to x.y');

    // The broker's own page (its origin is the allowed one): live over
    // WebSocket, and its publishes go through.
    const mine = await openPage(`${own}/`);
    pages.push({ close: mine.close });
    await waitFor(mine.page, 'own page live over ws', (s) => s.state === 'live' && s.transport === 'ws');
    const sent = await mine.page.evaluate(async () => {
      const out = [];
      for (const [body, type] of [['1', 'text/plain'], ['{"n":2}', 'application/json']]) {
        const res = await fetch('/publish/x.y', { method: 'POST', body, headers: { 'Content-Type': type } });
        out.push({ status: res.status, body: await res.text(), acao: res.headers.get('access-control-allow-origin') });
      }
      return out;
    });
    assert.deepEqual(sent.map((r) => [r.status, r.body]), [[200, '{"seq":1}'], [200, '{"seq":2}']]);
    // Chromium sends Origin on a same-origin POST; the broker echoes it.
    assert.equal(sent[0].acao, own);
    const msgs = await retained(bport, 'x.y');
    assert.deepEqual(msgs.map((m) => [m.seq, m.data]), [[1, 1], [2, { n: 2 }]], JSON.stringify(msgs));
    assert.deepEqual(mine.errors, []);
  } finally {
    for (const p of pages) await p.close();
    server.close();
    await stopBroker(b);
  }
});
