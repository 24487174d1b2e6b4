// Talking to the server: every api/ request carries the session token as a Bearer header.
const KEY = 'pupick-view-token';
export const BASE = new URL('../', import.meta.url);

function readToken() {
  const url = new URL(location.href);
  const given = url.searchParams.get('token');
  if (given) {
    sessionStorage.setItem(KEY, given);
    url.searchParams.delete('token');  // keep it out of the address bar and the history
    history.replaceState(null, '', url.pathname + url.search + url.hash);
    return given;
  }
  return sessionStorage.getItem(KEY) || '';
}

const token = readToken();

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function request(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(new URL(path, BASE), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) {
    let message = res.statusText;
    try { message = (await res.json()).error || message; } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, message);
  }
  return res;
}

export const getJSON = async (path) => (await request('GET', path)).json();
export const postJSON = async (path, body) => (await request('POST', path, body || {})).json();
export const putJSON = async (path, body) => (await request('PUT', path, body)).json();
export const deleteJSON = async (path) => (await request('DELETE', path)).json();

// A micrograph picture: a decoded bitmap plus the factor from original pixels (x_picture = x / factor).
export async function getPicture(name, size) {
  const res = await request('GET', `api/image/${encodeURIComponent(name)}?size=${size}`);
  const blob = await res.blob();
  const factor = parseFloat(res.headers.get('X-Pupick-Factor'));
  const shape = (res.headers.get('X-Pupick-Shape') || '').split(',').map(Number);
  return { blob, factor, shape };
}
