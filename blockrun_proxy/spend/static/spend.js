// The spend page: reads /v1/spend and draws it. No framework, no build step.
// Everything from the JSON goes into the page as text (textContent), never as HTML:
// model names and request ids are the clients' strings.
'use strict';

const TOKEN_KEY = 'blockrun-proxy-token';
const SVG = 'http://www.w3.org/2000/svg';
const REFRESH_MS = 15000;
const $ = (id) => document.getElementById(id);

// Amounts are integers of micro-USDC; shown as dollars with all 6 decimals, like the
// proxy's own cost headers and logs.
function usd(atomic) {
  const sign = atomic < 0 ? '-' : '';
  const a = Math.abs(atomic);
  const whole = Math.floor(a / 1e6);
  const frac = String(a - whole * 1e6).padStart(6, '0');
  return sign + '$' + whole + '.' + frac;
}

function duration(seconds) {
  for (const [unit, size] of [['h', 3600], ['m', 60]]) {
    if (seconds >= size && seconds % size === 0) return (seconds / size) + unit;
  }
  return seconds + 's';
}

function utc(ts, withDate) {
  const iso = new Date(ts * 1000).toISOString();
  return withDate ? iso.slice(5, 10) + ' ' + iso.slice(11, 19) : iso.slice(11, 16);
}

function el(tag, attrs, text) {
  const node = tag.startsWith('svg:')
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

// --- the token ---------------------------------------------------------------------------

// /spend#token=... : taken from the fragment (which no browser sends to a server), kept
// for this tab only, and wiped from the address bar and history.
function tokenFromFragment() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
}

function askForToken(message) {
  $('report').hidden = true;
  $('token-form').hidden = false;
  $('status').textContent = message;
  $('token').focus();
}

// --- loading -----------------------------------------------------------------------------

async function load() {
  const hours = $('hours').value;
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  $('status').textContent = 'loading…';
  let response;
  try {
    response = await fetch('/v1/spend?hours=' + encodeURIComponent(hours) + '&last=50', {
      headers, cache: 'no-store', credentials: 'omit', redirect: 'error',
    });
  } catch (err) {
    $('status').textContent = 'the proxy did not answer';
    return;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken(token ? 'that token was refused' : '');
    return;
  }
  if (!response.ok) {
    let message = 'error ' + response.status;
    try { message += ': ' + (await response.json()).error.message; } catch (err) { /* not JSON */ }
    $('status').textContent = message;
    return;
  }
  const doc = await response.json();
  $('token-form').hidden = true;
  $('report').hidden = false;
  render(doc);
  $('status').textContent = 'updated ' + utc(doc.generated_at, true) + ' UTC';
  document.body.dataset.ready = String(doc.generated_at);
}

// --- drawing -----------------------------------------------------------------------------

function render(doc) {
  const t = doc.totals;
  $('total-signed').textContent = usd(t.signed);
  $('total-settled').textContent = usd(t.settled);
  $('total-calls').textContent = String(t.calls);
  $('total-failed').textContent = String(t.failed_after_payment);
  $('failed-card').classList.toggle('alert', t.failed_after_payment > 0);
  renderWallet(doc.wallet || {});
  renderBudget(doc.budget);
  renderHours(doc.per_hour);
  renderModels(doc.per_model);
  renderCalls(doc.last_calls);
  const ledger = doc.ledger || {};
  $('ledger-line').textContent = 'ledger: ' + ledger.backend +
    (ledger.store ? ' (' + ledger.store + ')' : '') +
    (ledger.dropped ? ' · ' + ledger.dropped + ' records dropped' : '') +
    ' · amounts in USD (USDC), 6 decimals · times in UTC';
}

function renderWallet(wallet) {
  $('wallet-balance').textContent = wallet.balance == null ? 'unknown' : usd(wallet.balance);
  $('wallet-card').classList.toggle('alert', Boolean(wallet.low));
  $('wallet-address').textContent = (wallet.low ? 'below --low-balance-usd: fund it soon · ' : '') +
    (wallet.address
      ? wallet.address + (wallet.balance_at ? ' · read ' + utc(wallet.balance_at, true) : '')
      : 'no wallet loaded');
}

function renderBudget(budget) {
  $('budget-none').hidden = budget !== null;
  $('budget-error').hidden = !(budget && budget.error);
  $('budget-body').hidden = !(budget && !budget.error);
  if (!budget) return;
  if (budget.error) { $('budget-error').textContent = budget.error; return; }
  $('budget-used').textContent = usd(budget.spent);
  $('budget-limit').textContent = usd(budget.limit);
  $('budget-left').textContent = usd(budget.left);
  $('budget-window').textContent = duration(budget.window_seconds);
  $('budget-shared').textContent = budget.shared ? '(shared by every replica)' : '(this process)';
  const share = budget.limit > 0 ? Math.min(1, budget.spent / budget.limit) : 1;
  const gauge = $('budget-gauge');
  gauge.replaceChildren(
    el('svg:rect', { class: 'track', x: 0, y: 4, width: 400, height: 20, rx: 6 }),
    el('svg:rect', {
      class: 'used' + (share >= 1 ? ' full' : share >= 0.8 ? ' high' : ''),
      x: 0, y: 4, width: (400 * share).toFixed(1), height: 20, rx: 6,
      'data-share': share.toFixed(4),
    }),
  );
  gauge.setAttribute('aria-label', 'budget used: ' + Math.floor(share * 100) + '%');
}

// Vertical bars, one per hour, signed amounts; hours with a failure after payment in red.
function renderHours(hours) {
  const svg = $('hour-chart');
  const width = 1000, height = 200, left = 70, bottom = 24, top = 10;
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const max = Math.max(1, ...hours.map((h) => h.signed));
  const step = (width - left) / Math.max(1, hours.length);
  const nodes = [];
  for (const frac of [0, 0.5, 1]) {
    const y = top + (height - top - bottom) * (1 - frac);
    nodes.push(el('svg:line', { x1: left, x2: width, y1: y, y2: y, stroke: '#e3e6ec' }));
    nodes.push(el('svg:text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, usd(Math.round(max * frac))));
  }
  hours.forEach((h, i) => {
    const barHeight = (height - top - bottom) * (h.signed / max);
    const x = left + i * step + step * 0.15;
    const bar = el('svg:rect', {
      class: 'bar',
      x: x.toFixed(1),
      y: (height - bottom - barHeight).toFixed(1),
      width: Math.max(1, step * 0.7).toFixed(1),
      height: barHeight.toFixed(1),
      'data-hour': h.hour, 'data-signed': h.signed,
    });
    bar.appendChild(el('svg:title', {}, utc(h.hour, true) + ' UTC: ' + usd(h.signed) +
      ' signed, ' + h.calls + ' calls, ' + h.failed_after_payment + ' failed after payment'));
    nodes.push(bar);
    if (h.failed_after_payment) {
      // A red mark above the bar: the hour's spend includes a call that failed after paying.
      const mid = x + step * 0.35, top = height - bottom - barHeight - 4;
      nodes.push(el('svg:path', {
        class: 'failed-mark', 'data-hour': h.hour,
        d: `M ${mid - 6} ${top - 9} L ${mid + 6} ${top - 9} L ${mid} ${top} Z`,
      }));
    }
    const every = Math.ceil(hours.length / 12);
    if (i % every === 0) {
      nodes.push(el('svg:text', { x: left + i * step + step / 2, y: height - 6, 'text-anchor': 'middle' }, utc(h.hour, false)));
    }
  });
  svg.replaceChildren(...nodes);
}

// Horizontal bars, one per model, largest first.
function renderModels(models) {
  const svg = $('model-chart');
  const rowHeight = 26, labelWidth = 260, width = 1000;
  const rows = models.slice(0, 12);
  const height = Math.max(rowHeight, rows.length * rowHeight) + 4;
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.style.height = height + 'px';
  const max = Math.max(1, ...rows.map((m) => m.signed));
  const nodes = [];
  rows.forEach((m, i) => {
    const y = i * rowHeight + 4;
    const barWidth = (width - labelWidth - 260) * (m.signed / max);
    nodes.push(el('svg:text', { class: 'label', x: 0, y: y + 15 }, m.model || '-'));
    const bar = el('svg:rect', {
      class: 'bar',
      x: labelWidth, y, width: Math.max(1, barWidth).toFixed(1), height: rowHeight - 8,
      'data-model': m.model, 'data-signed': m.signed,
    });
    bar.appendChild(el('svg:title', {}, m.model + ': ' + usd(m.signed) + ' signed'));
    nodes.push(bar);
    nodes.push(el('svg:text', { x: labelWidth + barWidth + 8, y: y + 15 }, usd(m.signed)));
    if (m.failed_after_payment) {
      nodes.push(el('svg:text', { class: 'failed-count', x: labelWidth + barWidth + 90, y: y + 15 },
        m.failed_after_payment + ' failed after payment'));
    }
  });
  if (!rows.length) nodes.push(el('svg:text', { x: 0, y: 18 }, 'no paid calls in this period'));
  svg.replaceChildren(...nodes);

  const body = $('models').tBodies[0];
  body.replaceChildren(...models.map((m) => {
    const row = el('tr', { 'data-model': m.model });
    row.append(
      el('td', {}, m.model || '-'),
      el('td', { class: 'num' }, m.calls),
      el('td', { class: 'num signed' }, usd(m.signed)),
      el('td', { class: 'num settled' }, usd(m.settled)),
      el('td', { class: 'num failed' }, m.failed_after_payment),
      el('td', { class: 'num' }, m.refused),
    );
    return row;
  }));
}

// Long ids (32 hex digits) keep their ends; the whole id is in the tooltip.
function shortId(id) {
  return id.length > 20 ? id.slice(0, 8) + '…' + id.slice(-8) : id;
}

const OUTCOME_LABELS = { ok: 'ok', refused: 'refused', failed_after_payment: 'failed after payment' };

function renderCalls(calls) {
  const body = $('calls').tBodies[0];
  body.replaceChildren(...calls.map((c) => {
    const row = el('tr', {
      class: c.outcome === 'failed_after_payment' ? 'failed' : c.outcome,
      'data-request-id': c.request_id,
    });
    const outcome = el('td');
    outcome.appendChild(el('span', { class: 'badge' }, OUTCOME_LABELS[c.outcome] || c.outcome));
    if (c.error) outcome.appendChild(document.createTextNode(' ' + c.error));
    row.append(
      el('td', {}, utc(c.ts, true)),
      el('td', {}, c.model || '-'),
      outcome,
      el('td', { class: 'num signed' }, usd(c.signed)),
      el('td', { class: 'num settled' }, c.settled == null ? '–' : usd(c.settled)),
      el('td', { class: 'num' }, c.status),
      el('td', { title: c.request_id }, shortId(c.request_id)),
      el('td', { title: c.settlement || '' }, c.settlement ? c.settlement.slice(0, 10) + '…' : ''),
    );
    return row;
  }));
  if (!calls.length) {
    const row = el('tr');
    row.appendChild(el('td', { colspan: 8, class: 'muted' }, 'no paid calls yet'));
    body.appendChild(row);
  }
}

// --- wiring ------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  tokenFromFragment();
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token').value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $('token').value = '';
    load();
  });
  $('refresh').addEventListener('click', load);
  $('hours').addEventListener('change', load);
  setInterval(() => { if (!document.hidden && !$('report').hidden) load(); }, REFRESH_MS);
  load();
});
