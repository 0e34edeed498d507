// The token and the calls to corral's /v1 API.
//
// The token lives in this tab's sessionStorage only (gone when the tab
// closes, never in a URL, never in localStorage) and travels in the
// Authorization header of each call.

const TOKEN_KEY = 'corral.token';

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer that was not 2xx: its status and corral's error body. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** Calls `method path` with an optional JSON body; the answer's JSON, or
 *  null for an empty answer. Throws ApiError for a non-2xx answer. */
export async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${storedToken() || ''}`, Accept: 'application/json' };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!response.ok) {
    const code = json && json.error ? json.error : 'http';
    const message = json && json.message ? json.message : `${method} ${path} answered ${response.status}`;
    throw new ApiError(response.status, code, message);
  }
  return json;
}

export const get = (path) => call('GET', path);

/** Follows `next_cursor` from `path` (which has a query string or not),
 *  calling `onPage(items)` for each page; `firstLimit` for the first page
 *  (shown sooner), `limit` for the others. */
export async function eachPage(path, onPage, { firstLimit = 1000, limit = 1000, signal } = {}) {
  const join = path.includes('?') ? '&' : '?';
  let cursor = null;
  let first = true;
  for (let pages = 0; pages < 10000; pages++) {
    if (signal && signal.aborted) return;
    const size = first ? firstLimit : limit;
    const url = `${path}${join}limit=${size}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const page = await get(url);
    if (signal && signal.aborted) return;
    onPage(page.items, first);
    first = false;
    cursor = page.next_cursor;
    if (!cursor) return;
  }
}
