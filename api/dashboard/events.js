// Live updates: GET /v1/events read with fetch() and a ReadableStream (an
// EventSource cannot send the Authorization header, and the token must not
// go in a URL), parsed here, resumed with Last-Event-ID after a drop.

/** Splits Server-Sent Events text into messages ({id, data}); keeps the
 *  unfinished tail between pushes. Knows the fields corral sends. */
export class SseParser {
  constructor() {
    this.tail = '';
    this.id = null;
    this.data = null;
    this.retry = null;
  }

  push(text) {
    const messages = [];
    const lines = (this.tail + text).split(/\r\n|\r|\n/);
    this.tail = lines.pop();
    for (const line of lines) {
      if (line === '') {
        if (this.data !== null) messages.push({ id: this.id, data: this.data });
        this.data = null;
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') this.id = value;
      else if (field === 'data') this.data = this.data === null ? value : `${this.data}\n${value}`;
      else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
    }
    return messages;
  }
}

/** The stream of one signed-in tab. `onEvent(event)` gets each parsed
 *  event (`reload` included), `onOpen(resumed)` each (re)connection,
 *  `onStatus(state, detail)` the connection's state: 'connecting',
 *  'live', 'disconnected'; `onRefused()` a 401 (the token was revoked). */
export class EventStream {
  constructor({ token, onEvent, onOpen, onStatus, onRefused }) {
    this.token = token;
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.onStatus = onStatus;
    this.onRefused = onRefused;
    this.lastEventId = null;
    this.retryMs = 2000;
    this.controller = null;
    this.stopped = false;
    // With no byte for this long (keep-alives come every 15 s by
    // default), the connection is taken for dead and opened again.
    this.silenceMs = 45000;
  }

  start() {
    this.run();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    let failures = 0;
    while (!this.stopped) {
      this.onStatus(failures === 0 ? 'connecting' : 'disconnected', failures ? 'reconnecting' : '');
      let wait = this.retryMs;
      try {
        await this.once();
        failures = 0;
      } catch (error) {
        if (this.stopped) return;
        if (error && error.refused) {
          this.onRefused();
          return;
        }
        if (error && error.retryAfterMs) wait = error.retryAfterMs;
      }
      if (this.stopped) return;
      failures += 1;
      // Back off up to 30 s while the server stays away.
      wait = Math.min(wait * Math.min(failures, 15), 30000);
      this.onStatus('disconnected', `retrying in ${Math.round(wait / 1000)} s`);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  /** One connection: resolves when the stream ends, throws on failure. */
  async once() {
    this.controller = new AbortController();
    const headers = { Authorization: `Bearer ${this.token}`, Accept: 'text/event-stream' };
    if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => this.controller.abort(), this.silenceMs);
    };
    arm();
    try {
      const response = await fetch('/v1/events', { headers, cache: 'no-store', signal: this.controller.signal });
      if (response.status === 401) throw Object.assign(new Error('token refused'), { refused: true });
      if (!response.ok) {
        const after = Number(response.headers.get('Retry-After'));
        throw Object.assign(new Error(`events answered ${response.status}`), {
          retryAfterMs: after > 0 ? after * 1000 : null,
        });
      }
      const resumed = this.lastEventId !== null;
      this.onStatus('live', '');
      this.onOpen(resumed);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        arm();
        for (const message of parser.push(value)) {
          if (message.id) this.lastEventId = message.id;
          let event;
          try {
            event = JSON.parse(message.data);
          } catch {
            continue;
          }
          this.onEvent(event);
        }
        if (parser.retry) this.retryMs = parser.retry;
      }
    } finally {
      clearTimeout(watchdog);
    }
  }
}
