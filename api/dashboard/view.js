// Small DOM and formatting helpers. Every value from the server is put on
// the page as text (textContent), never as HTML.

/** Makes an element: `h('td', {class: 'x', onclick: f}, child, ...)`;
 *  children are nodes, strings (as text), or null (skipped). */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

/** A worker or request state as a badge: colour and the state's name. */
export function stateBadge(state) {
  return h('span', { class: `state state-${String(state).replace(/[^a-z_]/g, '')}` }, String(state).replace('_', ' '));
}

const UNITS = [
  ['d', 86400],
  ['h', 3600],
  ['min', 60],
  ['s', 1],
];

/** "3 h 12 min" for a number of seconds (two units at most). */
export function span(seconds) {
  let rest = Math.max(0, Math.round(seconds));
  const parts = [];
  for (const [unit, size] of UNITS) {
    if (rest >= size || (unit === 's' && parts.length === 0)) {
      parts.push(`${Math.floor(rest / size)} ${unit}`);
      rest %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(' ');
}

/** A time as an element: relative text ("5 min ago", "in 2 h") with the
 *  exact time in its title and a <time> datetime. */
export function when(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const at = Date.parse(iso);
  const seconds = (at - Date.now()) / 1000;
  const text = Math.abs(seconds) < 1.5 ? 'now' : seconds < 0 ? `${span(-seconds)} ago` : `in ${span(seconds)}`;
  return h('time', { datetime: iso, title: new Date(at).toLocaleString() }, text);
}

/** `key=value` pairs of an object, sorted by key. */
export function pairs(object) {
  return Object.entries(object || {})
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
}

/** A list of short chips, the first `max` shown, the rest counted. */
export function chips(items, max = 4) {
  if (!items.length) return h('span', { class: 'muted' }, '—');
  const shown = items.slice(0, max).map((item) => h('span', { class: 'chip' }, item));
  const more = items.length > max ? h('span', { class: 'more', title: items.slice(max).join('\n') }, `+${items.length - max}`) : null;
  return h('span', { class: 'chips', title: items.join('\n') }, shown, more);
}

/** The start and end of a UUID (simulated workers of one agent share
 *  their start). */
export function shortUuid(uuid) {
  const text = String(uuid);
  return text.length > 16 ? `${text.slice(0, 8)}…${text.slice(-4)}` : text;
}

export function number(n) {
  return Number(n).toLocaleString('en');
}
