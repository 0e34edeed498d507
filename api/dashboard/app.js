// The corral dashboard: sign-in, the workers table, the queue, the
// signed-in user's requests and, for admins, worker actions and users.
//
// Data: the lists are read from /v1 once after the event stream is open,
// then kept current from /v1/events (events.js); a worker whose state
// changed is shown in its new state at once and read again for the rest.

import { ApiError, call, eachPage, forgetToken, get, storeToken, storedToken } from './api.js';
import { EventStream } from './events.js';
import { chips, clear, h, number, pairs, shortUuid, span, stateBadge, when } from './view.js';

const WORKER_STATES = ['idle', 'running', 'prepare', 'busy', 'maintenance', 'failed'];
const $ = (id) => document.getElementById(id);

const app = {
  me: null,
  stream: null,
  /** uuid -> worker object, as GET /v1/workers answers. */
  workers: new Map(),
  workersComplete: false,
  /** worker uuid -> lease summary (GET /v1/leases). */
  leases: new Map(),
  /** Events that came while the lists were being read. */
  buffered: null,
  generation: 0,
  view: null,
  views: {},
  renderTimer: null,
};

// ---------------------------------------------------------------- helpers

function toast(text, error = false) {
  const node = $('toast');
  node.textContent = text;
  node.classList.toggle('error', error);
  node.classList.add('shown');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => node.classList.remove('shown'), 6000);
}

/** Runs an API call for a user action; reports failure; a refused token
 *  signs out. */
async function act(what, run) {
  try {
    const result = await run();
    return result;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut('Your token was refused (it may have been revoked). Sign in again.');
    } else {
      toast(`${what} failed: ${error.message}`, true);
    }
    return undefined;
  }
}

function scheduleRender() {
  if (app.renderTimer) return;
  app.renderTimer = setTimeout(() => {
    app.renderTimer = null;
    if (app.view) app.view.render();
  }, 30);
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// `&cursor=...` for a page after the first, else nothing.
function cursorParam(cursor) {
  return cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
}

// A view's listing, read page by page: `list.load(append)` reads the first
// page (or, with `append`, the next one) from `url(cursor)`, keeps the items
// and the next cursor in `list`, and renders the view. Request events reload
// it: at once when the view is shown, else it is marked stale for its next
// showing.
function pagedList(view, what, url) {
  const list = { items: [], cursor: null };
  list.load = async (append) => {
    const answer = await act(what, () => get(url(append ? list.cursor : null)));
    if (!answer) return;
    list.items = append ? list.items.concat(answer.items) : answer.items;
    list.cursor = answer.next_cursor;
    view.loaded = true;
    view.stale = false;
    view.render();
  };
  view.refresh = () => list.load(false);
  view.onRequestEvent = debounce(() => {
    if (app.view === view) list.load(false);
    else view.stale = true;
  }, 300);
  return list;
}

// ---------------------------------------------------------------- sign-in

function showSignIn(message) {
  $('nav').hidden = true;
  $('session').hidden = true;
  $('offline').hidden = true;
  clear($('view'));
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  storeToken(token);
  $('token').value = '';
  await start();
}

function signOut(message) {
  if (app.stream) app.stream.stop();
  app.stream = null;
  app.me = null;
  app.generation += 1;
  app.workers = new Map();
  app.leases = new Map();
  app.buffered = null;
  app.loaded = false;
  // Views hold what the last token saw (and an admin's controls).
  app.views = {};
  app.view = null;
  forgetToken();
  showSignIn(message);
}

async function start() {
  if (!storedToken()) {
    showSignIn();
    return;
  }
  try {
    app.me = await get('/v1/me');
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      forgetToken();
      showSignIn(error.status === 401 ? 'This token was refused.' : 'Agent tokens cannot use the dashboard.');
    } else {
      showSignIn(`The server did not answer: ${error.message}`);
    }
    return;
  }
  $('sign-in').hidden = true;
  $('session').hidden = false;
  $('who').textContent = `${app.me.name}${app.me.admin ? ' (admin)' : ''}`;
  buildNav();
  openStream();
  route();
}

// ---------------------------------------------------------------- live updates

function setLive(state, detail) {
  const live = $('live');
  live.dataset.state = state;
  live.textContent = state === 'live' ? 'Live' : state === 'connecting' ? 'Connecting…' : 'Disconnected';
  const offline = $('offline');
  offline.hidden = state !== 'disconnected';
  offline.textContent =
    state === 'disconnected' ? `Live updates are disconnected${detail ? ` (${detail})` : ''}; what you see may be out of date.` : '';
  // Without a stream (e.g. too many of this user's tabs have one), the
  // page still shows the lists once.
  if (state === 'disconnected' && !app.loaded && app.me) loadAll();
}

function openStream() {
  app.stream = new EventStream({
    token: storedToken(),
    onStatus: setLive,
    onRefused: () => signOut('Your token was refused (it may have been revoked). Sign in again.'),
    onOpen: (resumed) => {
      // A fresh stream starts "from now": read everything once it is open,
      // so that no change falls between the read and the stream.
      if (!resumed) loadAll();
    },
    onEvent: (event) => {
      if (app.buffered) app.buffered.push(event);
      else applyEvent(event);
    },
  });
  app.stream.start();
}

async function loadAll() {
  app.loaded = true;
  const generation = ++app.generation;
  app.buffered = [];
  try {
    await Promise.all([loadWorkers(generation), loadLeases()]);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut('Your token was refused (it may have been revoked). Sign in again.');
      return;
    }
    toast(`Reading the workers failed: ${error.message}`, true);
  }
  if (generation !== app.generation) return;
  const buffered = app.buffered || [];
  app.buffered = null;
  buffered.forEach(applyEvent);
  for (const view of Object.values(app.views)) view.stale = true;
  if (app.view && app.view.refresh) app.view.refresh();
  scheduleRender();
}

async function loadWorkers(generation) {
  const fresh = new Map();
  app.workersComplete = false;
  await eachPage(
    '/v1/workers',
    (items, first) => {
      if (generation !== app.generation) return;
      for (const worker of items) fresh.set(worker.uuid, worker);
      // Show the first page at once, then the rest as it comes.
      if (first) app.workers = fresh;
      scheduleRender();
    },
    { firstLimit: 200, limit: 1000 },
  );
  if (generation === app.generation) {
    app.workers = fresh;
    app.workersComplete = true;
  }
}

async function loadLeases() {
  const leases = await get('/v1/leases');
  app.leases = new Map(leases.map((lease) => [lease.worker, lease]));
  scheduleRender();
}

const refreshLeases = debounce(() => act('Reading the leases', loadLeases), 200);

/** Workers to read again after events about them. */
const pendingWorkers = new Set();
const fetchPendingWorkers = debounce(async () => {
  const uuids = [...pendingWorkers];
  pendingWorkers.clear();
  if (uuids.length > 300) {
    loadAll();
    return;
  }
  const generation = app.generation;
  for (let i = 0; i < uuids.length; i += 8) {
    await Promise.all(
      uuids.slice(i, i + 8).map(async (uuid) => {
        try {
          const worker = await get(`/v1/workers/${uuid}`);
          if (generation === app.generation) app.workers.set(uuid, worker);
        } catch (error) {
          if (error instanceof ApiError && error.status === 404) app.workers.delete(uuid);
        }
      }),
    );
  }
  scheduleRender();
  if (app.views.workers) app.views.workers.refreshDialog();
}, 100);

function applyEvent(event) {
  if (event.type === 'reload') {
    loadAll();
    return;
  }
  if (event.type === 'worker.state') {
    const worker = app.workers.get(event.worker);
    if (event.to === 'deregistered') {
      app.workers.delete(event.worker);
    } else if (worker && Date.parse(event.at) >= Date.parse(worker.state_since)) {
      worker.state = event.to;
      worker.state_since = event.at;
      worker.reason = event.reason || null;
      pendingWorkers.add(event.worker);
    } else if (!worker) {
      pendingWorkers.add(event.worker);
    }
    fetchPendingWorkers();
    scheduleRender();
    if (app.views.workers) app.views.workers.refreshDialog();
    return;
  }
  if (event.type === 'request.state') {
    if (event.to === 'in_progress' || event.from === 'in_progress') refreshLeases();
    for (const view of Object.values(app.views)) if (view.onRequestEvent) view.onRequestEvent(event);
  }
}

// ---------------------------------------------------------------- navigation

const SECTIONS = [
  { id: 'workers', label: 'Workers' },
  { id: 'queue', label: 'Queue' },
  { id: 'requests', label: 'My requests' },
  { id: 'users', label: 'Users', admin: true },
];

function buildNav() {
  const nav = clear($('nav'));
  const list = h('ul');
  for (const section of SECTIONS) {
    if (section.admin && !app.me.admin) continue;
    list.append(h('li', {}, h('a', { href: `#${section.id}`, 'data-section': section.id }, section.label)));
  }
  nav.append(list);
  nav.hidden = false;
}

function route() {
  if (!app.me) return;
  let id = location.hash.replace(/^#/, '') || 'workers';
  const section = SECTIONS.find((s) => s.id === id && (!s.admin || app.me.admin));
  if (!section) id = 'workers';
  for (const link of $('nav').querySelectorAll('a')) {
    if (link.dataset.section === id) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (!app.views[id]) app.views[id] = VIEWS[id]();
  const view = app.views[id];
  const root = clear($('view'));
  root.append(view.node);
  app.view = view;
  document.title = `${SECTIONS.find((s) => s.id === id).label} · corral`;
  if (view.refresh && (view.stale || !view.loaded)) view.refresh();
  view.render();
}

// ---------------------------------------------------------------- workers

function holderOf(worker) {
  const lease = app.leases.get(worker.uuid);
  if (lease) return { owner: lease.owner || 'another user', request: lease.request, expires: lease.expires_at };
  // Not (yet) among the leases read: the request only.
  if (worker.request) return { owner: null, request: worker.request, expires: null };
  return null;
}

const SORTS = {
  state: (w) => WORKER_STATES.indexOf(w.state),
  uuid: (w) => w.uuid,
  agent: (w) => w.agent,
  holder: (w) => (holderOf(w) ? holderOf(w).owner || '' : '\uffff'),
  expires: (w) => (holderOf(w) && holderOf(w).expires) || '9999',
  last_seen: (w) => w.last_seen || '',
  state_since: (w) => w.state_since,
};

function workersView() {
  const filter = { state: '', group: '', cap: '', text: '' };
  const sort = { key: 'state', dir: 1 };
  let page = 0;
  let pageSize = 100;
  let dialogUuid = null;

  const stateSelect = h(
    'select',
    { id: 'filter-state' },
    h('option', { value: '' }, 'any state'),
    WORKER_STATES.map((s) => h('option', { value: s }, s)),
    h('option', { value: 'held' }, 'held (quarantine or recovery)'),
  );
  const groupInput = h('input', { id: 'filter-group', type: 'search', list: 'group-names', spellcheck: 'false' });
  const groupList = h('datalist', { id: 'group-names' });
  const capInput = h('input', {
    id: 'filter-cap',
    type: 'search',
    placeholder: 'key or key=value',
    spellcheck: 'false',
  });
  const textInput = h('input', { id: 'filter-text', type: 'search', placeholder: 'uuid, agent or note', spellcheck: 'false' });
  const sizeSelect = h('select', { id: 'page-size' }, [50, 100, 250, 500].map((n) => h('option', { value: n, selected: n === pageSize }, String(n))));
  const onFilter = debounce(() => {
    filter.state = stateSelect.value;
    filter.group = groupInput.value.trim();
    filter.cap = capInput.value.trim();
    filter.text = textInput.value.trim().toLowerCase();
    page = 0;
    scheduleRender();
  }, 120);
  for (const input of [stateSelect, groupInput, capInput, textInput]) input.addEventListener('input', onFilter);
  sizeSelect.addEventListener('change', () => {
    pageSize = Number(sizeSelect.value);
    page = 0;
    scheduleRender();
  });

  const form = h(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter workers', onsubmit: (e) => e.preventDefault() },
    h('div', {}, h('label', { for: 'filter-state' }, 'State'), stateSelect),
    h('div', {}, h('label', { for: 'filter-group' }, 'Group'), groupInput, groupList),
    h('div', {}, h('label', { for: 'filter-cap' }, 'Cap'), capInput),
    h('div', {}, h('label', { for: 'filter-text' }, 'Search'), textInput),
  );

  const columns = [
    { key: 'state', label: 'State' },
    { key: 'uuid', label: 'Worker' },
    { label: 'Caps' },
    { label: 'Groups' },
    { key: 'holder', label: 'Holder' },
    { key: 'expires', label: 'Lease until' },
    { key: 'last_seen', label: 'Last seen' },
    { label: 'Facts' },
    { label: 'Note and holds' },
  ];
  const headCells = columns.map((column) => {
    if (!column.key) return h('th', { scope: 'col' }, column.label);
    const button = h('button', { type: 'button', class: 'sort', 'data-sort': column.key }, column.label, h('span', { class: 'arrow', 'aria-hidden': 'true' }));
    button.addEventListener('click', () => {
      if (sort.key === column.key) sort.dir = -sort.dir;
      else {
        sort.key = column.key;
        sort.dir = 1;
      }
      page = 0;
      scheduleRender();
    });
    return h('th', { scope: 'col', 'data-key': column.key }, button);
  });
  const tbody = h('tbody', { id: 'workers-body' });
  const caption = h('caption', {}, 'Workers');
  const table = h('table', { class: 'grid workers', id: 'workers-table' }, caption, h('thead', {}, h('tr', {}, headCells)), tbody);
  const summary = h('p', { class: 'summary', id: 'workers-summary', 'aria-live': 'polite' });
  const prev = h('button', { type: 'button', id: 'page-prev' }, '← Previous');
  const next = h('button', { type: 'button', id: 'page-next' }, 'Next →');
  prev.addEventListener('click', () => {
    page = Math.max(0, page - 1);
    scheduleRender();
  });
  next.addEventListener('click', () => {
    page += 1;
    scheduleRender();
  });
  const pager = h('div', { class: 'pager' }, prev, next, h('label', { for: 'page-size' }, 'Rows per page'), sizeSelect);

  const dialog = h('dialog', { id: 'worker-dialog', 'aria-labelledby': 'worker-dialog-title' });
  dialog.addEventListener('close', () => {
    // Focus goes back to the row's button (the row may have been drawn
    // again meanwhile).
    const again = dialogUuid && document.querySelector(`#worker-${dialogUuid} button.link`);
    dialogUuid = null;
    if (again) again.focus();
    else if (dialog.opener && dialog.opener.isConnected) dialog.opener.focus();
  });

  const node = h('section', { class: 'view', 'aria-labelledby': 'workers-title' }, h('h2', { id: 'workers-title' }, 'Workers'), form, summary, h('div', { class: 'scroll' }, table), pager, dialog);

  function filtered() {
    const [capKey, capValue] = filter.cap.includes('=') ? [filter.cap.slice(0, filter.cap.indexOf('=')), filter.cap.slice(filter.cap.indexOf('=') + 1)] : [filter.cap, null];
    const list = [];
    for (const w of app.workers.values()) {
      if (filter.state === 'held') {
        if (!w.quarantine && !w.recovery) continue;
      } else if (filter.state && w.state !== filter.state) continue;
      if (filter.group && !w.groups.includes(filter.group)) continue;
      if (capKey && (capValue === null ? !(capKey in w.caps) : w.caps[capKey] !== capValue)) continue;
      if (filter.text && !(w.uuid.includes(filter.text) || w.agent.toLowerCase().includes(filter.text) || (w.note || '').toLowerCase().includes(filter.text))) continue;
      list.push(w);
    }
    // Each key once per worker, then the sort.
    const key = SORTS[sort.key];
    const keyed = list.map((w) => [key(w), w]);
    keyed.sort(([x, a], [y, b]) => {
      if (x < y) return -sort.dir;
      if (x > y) return sort.dir;
      return a.uuid < b.uuid ? -1 : 1;
    });
    return keyed.map(([, w]) => w);
  }

  function row(w) {
    const holder = holderOf(w);
    const open = h('button', { type: 'button', class: 'link mono', title: w.uuid, 'aria-label': `Worker ${w.uuid}: details`, onclick: (e) => openDialog(w.uuid, e.currentTarget) }, shortUuid(w.uuid));
    const holds = [];
    if (w.quarantine) holds.push(h('span', { class: 'hold' }, `quarantine: ${w.quarantine}`));
    if (w.recovery) holds.push(h('span', { class: 'hold recovery' }, `recovery: ${w.recovery}`));
    if (w.note) holds.push(h('span', { class: 'note', title: `${w.note_by || ''} ${w.note_at || ''}` }, w.note));
    return h(
      'tr',
      { id: `worker-${w.uuid}`, 'data-uuid': w.uuid, 'data-state': w.state },
      h('td', { class: 'state-cell' }, stateBadge(w.state), h('small', { class: 'since' }, when(w.state_since)), w.reason ? h('small', { class: 'reason', title: w.reason }, w.reason) : null),
      h('td', {}, open, h('small', { class: 'agent' }, w.agent)),
      h('td', {}, chips(pairs(w.caps), 3)),
      h('td', {}, w.groups.length ? chips(w.groups, 3) : h('span', { class: 'muted' }, 'public')),
      h('td', {}, holder ? (holder.owner ? `${holder.owner} · #${holder.request}` : `#${holder.request}`) : h('span', { class: 'muted' }, '—')),
      h('td', {}, holder && holder.expires ? when(holder.expires) : h('span', { class: 'muted' }, '—')),
      h('td', {}, when(w.last_seen)),
      h('td', {}, chips(pairs(w.facts), 2)),
      h('td', { class: 'holds' }, holds.length ? holds : h('span', { class: 'muted' }, '—')),
    );
  }

  function render() {
    const list = filtered();
    const pages = Math.max(1, Math.ceil(list.length / pageSize));
    page = Math.min(page, pages - 1);
    const start = page * pageSize;
    const shown = list.slice(start, start + pageSize);
    // A live update redraws the rows: keep the keyboard focus on the same
    // worker's button.
    const focused = tbody.contains(document.activeElement) ? document.activeElement.closest('tr') : null;
    const focusedUuid = focused ? focused.dataset.uuid : null;
    tbody.replaceChildren(...shown.map(row));
    if (focusedUuid) {
      const again = tbody.querySelector(`tr[data-uuid="${focusedUuid}"] button.link`);
      if (again) again.focus();
    }
    if (!shown.length) {
      tbody.append(h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, app.workers.size ? 'No worker matches these filters.' : 'No workers to show.')));
    }
    for (const th of table.querySelectorAll('th[data-key]')) {
      const active = th.dataset.key === sort.key;
      if (active) th.setAttribute('aria-sort', sort.dir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
      th.querySelector('.arrow').textContent = active ? (sort.dir > 0 ? ' ▲' : ' ▼') : '';
    }
    // Marks for the benchmark (corral bench dashboard): the first rows on
    // the page, and the table once every worker is read.
    if (shown.length && !performance.getEntriesByName('corral:first-rows').length) performance.mark('corral:first-rows');
    if (app.workersComplete && !performance.getEntriesByName('corral:all-rows').length) performance.mark('corral:all-rows');
    const loading = app.workersComplete ? '' : ' (still reading…)';
    summary.textContent = list.length
      ? `Rows ${number(start + 1)}–${number(start + shown.length)} of ${number(list.length)} matching; ${number(app.workers.size)} workers${loading}.`
      : `${number(app.workers.size)} workers${loading}.`;
    caption.textContent = `Workers, page ${page + 1} of ${pages}`;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    const groups = new Set();
    for (const w of app.workers.values()) for (const g of w.groups) groups.add(g);
    if (groups.size !== groupList.childElementCount) groupList.replaceChildren(...[...groups].sort().map((g) => h('option', { value: g })));
  }

  // ---- the details dialog

  function field(label, ...value) {
    return [h('dt', {}, label), h('dd', {}, ...value)];
  }

  function details(w) {
    const holder = holderOf(w);
    const facts = pairs(w.facts);
    return h(
      'dl',
      { class: 'details' },
      field('UUID', h('span', { class: 'mono' }, w.uuid)),
      field('State', stateBadge(w.state), ' since ', when(w.state_since), w.reason ? ` — ${w.reason}` : ''),
      field('Agent', w.agent),
      field('SSH address', h('span', { class: 'mono' }, w.ssh_addr)),
      field('Caps', chips(pairs(w.caps), 100)),
      field('Groups', w.groups.length ? chips(w.groups, 100) : 'public (no groups)'),
      field('Holder', holder ? `${holder.owner || 'request'} #${holder.request}` : '—'),
      field('Lease until', holder && holder.expires ? when(holder.expires) : '—'),
      field('Last seen', when(w.last_seen)),
      field('Facts', facts.length ? chips(facts, 100) : '—', w.facts_at ? h('small', {}, ' reported ', when(w.facts_at)) : null),
      field('Note', w.note ? `${w.note} (${w.note_by || '?'}, ` : '—', w.note ? when(w.note_at) : null, w.note ? ')' : null),
      field('Quarantine', w.quarantine ? `${w.quarantine} (${w.quarantine_by || '?'}, ` : '—', w.quarantine ? when(w.quarantine_at) : null, w.quarantine ? ')' : null),
      field('Recovery', w.recovery ? `${w.recovery} (since ` : '—', w.recovery ? when(w.recovery_at) : null, w.recovery ? ')' : null),
    );
  }

  function adminActions(w) {
    const status = h('p', { class: 'result', role: 'status', id: 'action-result' });
    const done = (text) => {
      status.textContent = text;
    };
    const reason = h('input', { id: 'maintenance-reason', type: 'text', maxlength: 1024 });
    const drain = h('input', { id: 'maintenance-drain', type: 'checkbox' });
    const maintenance = h(
      'form',
      {
        class: 'action',
        'aria-labelledby': 'maintenance-title',
        onsubmit: async (e) => {
          e.preventDefault();
          const body = { state: 'maintenance', reason: reason.value.trim() || null, drain: drain.checked };
          const answer = await act('Maintenance', () => call('PUT', `/v1/workers/${w.uuid}/state`, body));
          if (answer) done(`Maintenance asked: the worker is ${answer.state}.`);
        },
      },
      h('h3', { id: 'maintenance-title' }, 'Maintenance'),
      h('label', { for: 'maintenance-reason' }, 'Reason'),
      reason,
      h('label', { class: 'check' }, drain, ' Drain: let the running lease finish first'),
      h('button', { type: 'submit', id: 'maintenance-submit' }, 'Put in maintenance'),
    );
    const idle = h(
      'div',
      { class: 'action' },
      h('h3', {}, 'Idle'),
      h('p', {}, 'Prepare the worker and offer it to the matcher.'),
      h(
        'button',
        {
          type: 'button',
          id: 'idle-submit',
          onclick: async () => {
            const answer = await act('Set idle', () => call('PUT', `/v1/workers/${w.uuid}/state`, { state: 'idle' }));
            if (answer) done(`Idle asked: the worker is ${answer.state}.`);
          },
        },
        'Set idle',
      ),
    );
    const groups = h('input', { id: 'groups-input', type: 'text', value: w.groups.join(', '), spellcheck: 'false' });
    const groupForm = h(
      'form',
      {
        class: 'action',
        'aria-labelledby': 'groups-title',
        onsubmit: async (e) => {
          e.preventDefault();
          const list = groups.value.split(',').map((g) => g.trim()).filter(Boolean);
          const answer = await act('Groups', () => call('PUT', `/v1/workers/${w.uuid}/groups`, list));
          if (answer) done(`Groups saved: ${answer.groups.join(', ') || 'public'}.`);
        },
      },
      h('h3', { id: 'groups-title' }, 'Groups'),
      h('label', { for: 'groups-input' }, 'Groups, comma-separated (none: public)'),
      groups,
      h('button', { type: 'submit', id: 'groups-submit' }, 'Save groups'),
    );
    return h('section', { class: 'admin', 'aria-label': 'Admin actions' }, h('h3', { class: 'sr-only' }, 'Admin actions'), h('div', { class: 'actions' }, maintenance, idle, groupForm), status);
  }

  function historyTable(path, pageItems) {
    const body = h('tbody');
    const more = h('button', { type: 'button', hidden: true }, 'Older entries');
    let cursor = null;
    const load = async () => {
      const url = `${path}?limit=50${cursorParam(cursor)}`;
      const answer = await act('Reading the history', () => get(url));
      if (!answer) return;
      const items = pageItems ? answer.items : answer;
      for (const entry of items) {
        body.append(h('tr', {}, h('td', {}, when(entry.at)), h('td', {}, entry.from || '—'), h('td', {}, entry.to), h('td', {}, entry.actor), h('td', {}, entry.reason)));
      }
      cursor = pageItems ? answer.next_cursor : null;
      more.hidden = !cursor;
    };
    more.addEventListener('click', load);
    load();
    return h(
      'section',
      { class: 'history', 'aria-labelledby': 'history-title' },
      h('h3', { id: 'history-title' }, 'History'),
      h('table', { class: 'grid compact' }, h('thead', {}, h('tr', {}, ['At', 'From', 'To', 'By', 'Reason'].map((t) => h('th', { scope: 'col' }, t)))), body),
      more,
    );
  }

  function openDialog(uuid, opener) {
    const w = app.workers.get(uuid);
    if (!w) return;
    dialogUuid = uuid;
    dialog.opener = opener;
    const close = h('button', { type: 'button', class: 'close', onclick: () => dialog.close() }, 'Close');
    dialog.replaceChildren(
      ...[
        h('div', { class: 'dialog-head' }, h('h2', { id: 'worker-dialog-title' }, `Worker ${shortUuid(uuid)}`), close),
        h('div', { id: 'worker-details' }, details(w)),
        app.me.admin ? adminActions(w) : null,
        historyTable(`/v1/workers/${uuid}/history`, true),
      ].filter(Boolean),
    );
    if (!dialog.open) dialog.showModal();
    close.focus();
  }

  function refreshDialog() {
    if (!dialogUuid || !dialog.open) return;
    const w = app.workers.get(dialogUuid);
    const target = dialog.querySelector('#worker-details');
    if (w && target) target.replaceChildren(details(w));
  }

  return { node, render, refreshDialog, loaded: true };
}

// ---------------------------------------------------------------- queue

function explainRow(id, columns) {
  const cell = h('td', { colspan: columns, class: 'explain' }, 'Asking the server…');
  act('Explain', () => get(`/v1/requests/${id}/explain`)).then((answer) => {
    if (!answer) {
      cell.textContent = 'No explanation.';
      return;
    }
    const workers = answer.workers.map((o) => h('li', {}, h('span', { class: 'mono', title: o.uuid }, shortUuid(o.uuid)), ' ', stateBadge(o.state), ` ${o.why}`));
    const total = answer.workers_total > answer.workers.length ? h('p', {}, `${answer.workers.length} of ${answer.workers_total} matching workers listed.`) : null;
    cell.replaceChildren(...[h('p', { class: 'summary-line' }, answer.summary), workers.length ? h('ul', { class: 'obstacles' }, workers) : null, total].filter(Boolean));
  });
  return h('tr', { class: 'explain-row', id: `explain-${id}` }, cell);
}

function queueView() {
  const tbody = h('tbody', { id: 'queue-body' });
  const status = h('p', { class: 'summary', id: 'queue-summary', 'aria-live': 'polite' });
  const more = h('button', { type: 'button', hidden: true }, 'More');
  const refreshButton = h('button', { type: 'button' }, 'Refresh');
  const headers = ['Position', 'Request', 'Owner', 'Priority', 'Caps', 'Waiting for', 'Valid after', 'Deadline', 'Why waiting'];
  const caption = h('caption', {}, app.me.admin ? 'Every waiting request, in the order the matcher takes them (priority, then submission).' : 'Your waiting requests and their place among all waiting requests (priority, then submission).');
  const table = h('table', { class: 'grid queue', id: 'queue-table' }, caption, h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))), tbody);
  const open = new Set();
  const view = {
    node: h('section', { class: 'view', 'aria-labelledby': 'queue-title' }, h('h2', { id: 'queue-title' }, 'Queue'), h('div', { class: 'toolbar' }, refreshButton), status, h('div', { class: 'scroll' }, table), more),
    loaded: false,
    stale: false,
  };
  const list = pagedList(view, 'Reading the queue', (cursor) => `/v1/queue?limit=200${cursorParam(cursor)}`);
  more.addEventListener('click', () => list.load(true));
  refreshButton.addEventListener('click', () => list.load(false));

  view.render = () => {
    const { items, cursor } = list;
    const rows = [];
    for (const r of items) {
      const expanded = open.has(r.id);
      const button = h('button', { type: 'button', 'aria-expanded': String(expanded), 'aria-controls': `explain-${r.id}`, 'data-explain': r.id }, expanded ? 'Hide' : 'Explain');
      button.addEventListener('click', () => {
        if (open.has(r.id)) open.delete(r.id);
        else open.add(r.id);
        view.render();
        const again = tbody.querySelector(`[data-explain="${r.id}"]`);
        if (again) again.focus();
      });
      rows.push(
        h(
          'tr',
          { 'data-request': r.id },
          h('td', { class: 'num' }, number(r.position)),
          h('td', {}, `#${r.id}`),
          h('td', {}, r.owner),
          h('td', { class: 'num' }, String(r.priority)),
          h('td', {}, chips(pairs(r.caps), 3)),
          h('td', {}, span((Date.now() - Date.parse(r.created_at)) / 1000)),
          h('td', {}, when(r.valid_after)),
          h('td', {}, when(r.deadline)),
          h('td', {}, button),
        ),
      );
      if (expanded) rows.push(explainRow(r.id, headers.length));
    }
    tbody.replaceChildren(...rows);
    if (!items.length) tbody.append(h('tr', {}, h('td', { colspan: headers.length, class: 'empty' }, view.loaded ? 'Nothing is waiting.' : 'Reading…')));
    status.textContent = `${number(items.length)} waiting request${items.length === 1 ? '' : 's'} shown${cursor ? '; more below' : ''}.`;
    more.hidden = !cursor;
  };
  return view;
}

// ---------------------------------------------------------------- my requests

function requestsView() {
  const tbody = h('tbody', { id: 'requests-body' });
  const status = h('p', { class: 'summary', 'aria-live': 'polite' });
  const which = h('select', { id: 'requests-which' }, h('option', { value: 'waiting,in_progress' }, 'live (waiting, in progress)'), h('option', { value: '' }, 'all'));
  const more = h('button', { type: 'button', hidden: true }, 'Older');
  const headers = ['Request', 'State', 'Priority', 'Caps', 'Worker', 'Lease until', 'Created', 'Actions'];
  const table = h('table', { class: 'grid requests', id: 'requests-table' }, h('caption', {}, 'Your requests, newest first'), h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))), tbody);
  const dialog = h('dialog', { id: 'request-dialog', 'aria-labelledby': 'request-dialog-title' });
  dialog.addEventListener('close', () => {
    if (dialog.opener) dialog.opener.focus();
  });
  const view = {
    node: h(
      'section',
      { class: 'view', 'aria-labelledby': 'requests-title' },
      h('h2', { id: 'requests-title' }, 'My requests'),
      h('div', { class: 'filters' }, h('div', {}, h('label', { for: 'requests-which' }, 'Show'), which)),
      status,
      h('div', { class: 'scroll' }, table),
      more,
      dialog,
    ),
    loaded: false,
    stale: false,
  };

  const list = pagedList(view, 'Reading your requests', (cursor) => {
    const states = which.value ? `&state=${which.value}` : '';
    return `/v1/requests?owner=${encodeURIComponent(app.me.name)}&limit=100${states}${cursorParam(cursor)}`;
  });
  const load = list.load;
  which.addEventListener('change', () => load(false));
  more.addEventListener('click', () => load(true));

  function showHistory(r, opener) {
    dialog.opener = opener;
    const body = h('tbody');
    const close = h('button', { type: 'button', class: 'close', onclick: () => dialog.close() }, 'Close');
    dialog.replaceChildren(
      h('div', { class: 'dialog-head' }, h('h2', { id: 'request-dialog-title' }, `Request #${r.id}`), close),
      h('dl', { class: 'details' }, h('dt', {}, 'State'), h('dd', {}, stateBadge(r.state), r.reason ? ` — ${r.reason}` : ''), h('dt', {}, 'Caps'), h('dd', {}, chips(pairs(r.caps), 100))),
      h('h3', {}, 'History'),
      h('table', { class: 'grid compact' }, h('thead', {}, h('tr', {}, ['At', 'From', 'To', 'By', 'Reason'].map((t) => h('th', { scope: 'col' }, t)))), body),
    );
    dialog.showModal();
    close.focus();
    act('Reading the history', () => get(`/v1/requests/${r.id}/history`)).then((entries) => {
      for (const e of entries || []) body.append(h('tr', {}, h('td', {}, when(e.at)), h('td', {}, e.from || '—'), h('td', {}, e.to), h('td', {}, e.actor), h('td', {}, e.reason)));
    });
  }

  view.render = () => {
    const { items, cursor } = list;
    const rows = items.map((r) => {
      const actions = [];
      if (r.state === 'waiting' || r.state === 'in_progress') {
        actions.push(
          h('button', {
            type: 'button',
            'data-close': r.id,
            onclick: async () => {
              const answer = await act('Close', () => call('POST', `/v1/requests/${r.id}/close`));
              if (answer) {
                toast(`Request #${r.id} is ${answer.state.replace('_', ' ')}.`);
                load(false);
              }
            },
          }, 'Close'),
        );
      }
      if (r.state === 'in_progress') {
        actions.push(
          h('button', {
            type: 'button',
            'data-prolong': r.id,
            onclick: async () => {
              const answer = await act('Prolong', () => call('POST', `/v1/requests/${r.id}/prolong`));
              if (answer) {
                toast(`Request #${r.id}: lease until ${new Date(answer.lease_expires_at).toLocaleString()}.`);
                load(false);
              }
            },
          }, 'Prolong'),
        );
      }
      actions.push(h('button', { type: 'button', onclick: (e) => showHistory(r, e.currentTarget) }, 'History'));
      return h(
        'tr',
        { 'data-request': r.id },
        h('td', {}, `#${r.id}`),
        h('td', {}, stateBadge(r.state), r.reason ? h('small', { class: 'reason', title: r.reason }, r.reason) : null),
        h('td', { class: 'num' }, String(r.priority)),
        h('td', {}, chips(pairs(r.caps), 3)),
        h('td', {}, r.worker ? h('span', { class: 'mono', title: r.worker }, shortUuid(r.worker)) : h('span', { class: 'muted' }, '—')),
        h('td', {}, when(r.lease_expires_at)),
        h('td', {}, when(r.created_at)),
        h('td', { class: 'row-actions' }, actions),
      );
    });
    tbody.replaceChildren(...rows);
    if (!items.length) tbody.append(h('tr', {}, h('td', { colspan: headers.length, class: 'empty' }, view.loaded ? 'No requests.' : 'Reading…')));
    status.textContent = `${number(items.length)} request${items.length === 1 ? '' : 's'} shown.`;
    more.hidden = !cursor;
  };
  return view;
}

// ---------------------------------------------------------------- users (admins)

function usersView() {
  const tbody = h('tbody', { id: 'users-body' });
  const name = h('input', { id: 'user-name', type: 'text', required: true, maxlength: 64, spellcheck: 'false' });
  const groups = h('input', { id: 'user-groups', type: 'text', spellcheck: 'false' });
  const admin = h('input', { id: 'user-admin', type: 'checkbox' });
  const created = h('div', { class: 'created', role: 'status', 'aria-live': 'polite' });
  let users = [];
  const view = { loaded: false, stale: false };
  const form = h(
    'form',
    {
      class: 'filters',
      'aria-labelledby': 'new-user-title',
      onsubmit: async (e) => {
        e.preventDefault();
        const body = { name: name.value.trim(), groups: groups.value.split(',').map((g) => g.trim()).filter(Boolean), admin: admin.checked };
        const answer = await act('Creating the user', () => call('POST', '/v1/users', body));
        if (!answer) return;
        created.replaceChildren(h('p', {}, `User ${answer.name} created. Its token, shown this once:`), h('code', { class: 'token' }, answer.token));
        name.value = '';
        groups.value = '';
        admin.checked = false;
        load();
      },
    },
    h('h3', { id: 'new-user-title', class: 'full' }, 'New user'),
    h('div', {}, h('label', { for: 'user-name' }, 'Name'), name),
    h('div', {}, h('label', { for: 'user-groups' }, 'Groups, comma-separated'), groups),
    h('div', {}, h('label', { class: 'check' }, admin, ' Admin')),
    h('div', {}, h('button', { type: 'submit' }, 'Create user')),
  );
  view.node = h(
    'section',
    { class: 'view', 'aria-labelledby': 'users-title' },
    h('h2', { id: 'users-title' }, 'Users'),
    form,
    created,
    h('div', { class: 'scroll' }, h('table', { class: 'grid', id: 'users-table' }, h('caption', {}, 'Users and agent identities'), h('thead', {}, h('tr', {}, ['Name', 'Role', 'Groups', 'Created', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))), tbody)),
  );

  async function load() {
    const answer = await act('Reading the users', () => get('/v1/users'));
    if (!answer) return;
    users = answer;
    view.loaded = true;
    view.stale = false;
    view.render();
  }
  view.refresh = load;
  view.render = () => {
    tbody.replaceChildren(
      ...users.map((u) =>
        h(
          'tr',
          {},
          h('td', {}, u.name),
          h('td', {}, u.role),
          h('td', {}, u.groups.length ? chips(u.groups, 6) : h('span', { class: 'muted' }, '—')),
          h('td', {}, when(u.created_at)),
          h(
            'td',
            {},
            u.name === app.me.name
              ? h('span', { class: 'muted' }, 'you')
              : h('button', {
                  type: 'button',
                  class: 'danger',
                  onclick: async () => {
                    if (!window.confirm(`Delete user ${u.name}? Their waiting requests are cancelled and their leases end.`)) return;
                    const done = await act('Deleting the user', () => call('DELETE', `/v1/users/${encodeURIComponent(u.name)}`));
                    if (done !== undefined) {
                      toast(`User ${u.name} deleted.`);
                      load();
                    }
                  },
                }, 'Delete'),
          ),
        ),
      ),
    );
  };
  return view;
}

const VIEWS = { workers: workersView, queue: queueView, requests: requestsView, users: usersView };

// ---------------------------------------------------------------- start

$('sign-in-form').addEventListener('submit', signIn);
$('sign-out').addEventListener('click', () => signOut('Signed out.'));
window.addEventListener('hashchange', route);
// Relative times ("5 min ago") move on.
setInterval(() => {
  if (app.view && !document.hidden) app.view.render();
}, 30000);
start();
