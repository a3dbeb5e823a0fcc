// The API page: reads /openapi.json (with the proxy's token when it has one) and renders it
// with Swagger UI, read only: "Try it out" is off, since a page may not spend the wallet
// (the proxy refuses any POST that carries an Origin). No inline script: the CSP allows none.
'use strict';

const TOKEN_KEY = 'blockrun-proxy-token'; // the spend page's too: one token per tab
const $ = (id) => document.getElementById(id);

// /docs#token=... : taken from the fragment (which no browser sends to a server), kept for
// this tab only, and wiped from the address bar and history.
function tokenFromFragment() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
}

function askForToken(message) {
  $('token-form').hidden = false;
  $('status').textContent = message;
  $('token').focus();
}

async function load() {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  $('status').textContent = 'loading…';
  let response;
  try {
    response = await fetch('/openapi.json', {
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
    $('status').textContent = 'error ' + response.status;
    return;
  }
  const spec = await response.json();
  $('token-form').hidden = true;
  $('status').textContent = 'OpenAPI ' + spec.openapi + ' · version ' + spec.info.version;
  window.SwaggerUIBundle({
    spec,
    dom_id: '#swagger-ui',
    deepLinking: false,
    supportedSubmitMethods: [],
    validatorUrl: null,
    defaultModelsExpandDepth: -1,
    docExpansion: 'list',
  });
  document.body.dataset.ready = '1';
}

document.addEventListener('DOMContentLoaded', () => {
  tokenFromFragment();
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token').value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $('token').value = '';
    load();
  });
  load();
});
