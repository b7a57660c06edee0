/*! closedloop browser snippet: feedback and implicit signals with a public key. No dependencies. */
(function (w, d) {
  "use strict";
  if (w.closedloop && w.closedloop.version) return;
  var PATH = "/v1/browser/events", BEACON_BYTES = 60000, MAX_QUEUE = 1000;
  var cfg = { endpoint: "", key: "", batch: 50, delay: 1000 };
  var queue = [], timer = null, watchers = [], hidden = false, tries = {};

  function uuid7() {
    var b = new Uint8Array(16), c = w.crypto, h = "", i, t = Date.now();
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    for (i = 5; i >= 0; i--) { b[i] = t % 256; t = Math.floor(t / 256); }
    b[6] = (b[6] & 0x0f) | 0x70; b[8] = (b[8] & 0x3f) | 0x80;
    for (i = 0; i < 16; i++) h += (b[i] + 0x100).toString(16).slice(1);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" +
      h.slice(16, 20) + "-" + h.slice(20);
  }

  function clean(fields) {
    var out = {}, k;
    for (k in fields || {}) if (fields[k] !== undefined && fields[k] !== null) out[k] = fields[k];
    return out;
  }

  function enqueue(type, body) {
    var id = uuid7();
    if (queue.length >= MAX_QUEUE) queue.shift(); // keep the newest; never grow unbounded
    queue.push({ id: id, type: type, timestamp: new Date().toISOString(), body: body });
    if (queue.length >= cfg.batch) flush();
    else if (!timer) timer = setTimeout(function () { timer = null; flush(); }, cfg.delay);
    return id;
  }

  function send(events, leaving) {
    var body = JSON.stringify({ key: cfg.key, events: events }), url = cfg.endpoint + PATH;
    var size = new Blob([body]).size;
    if (size > BEACON_BYTES && events.length > 1) { // keep each request under the beacon quota
      var half = Math.ceil(events.length / 2);
      send(events.slice(0, half), leaving); send(events.slice(half), leaving);
      return;
    }
    var small = size <= BEACON_BYTES;
    if (leaving && small && navigator.sendBeacon) {
      try { if (navigator.sendBeacon(url, new Blob([body], { type: "text/plain" }))) return; }
      catch (e) { /* fall back to fetch */ }
    }
    if (!w.fetch) return;
    w.fetch(url, {
      method: "POST", body: body, keepalive: small, credentials: "omit", mode: "cors",
      headers: { "Content-Type": "text/plain" }
    }).then(function (r) {
      if (!leaving && (r.status === 429 || r.status >= 500)) retry(events);
      else events.forEach(function (e) { delete tries[e.id]; });
    }, function () { if (!leaving) retry(events); });
  }

  function retry(events) { // network errors, 429 and 5xx: three more tries, then drop
    var again = events.filter(function (e) {
      tries[e.id] = (tries[e.id] || 0) + 1;
      return tries[e.id] < 4 || !delete tries[e.id];
    });
    if (again.length) {
      setTimeout(function () { queue = again.concat(queue); flush(); }, 2000 * tries[again[0].id]);
    }
  }

  function flush(leaving) {
    if (timer) { clearTimeout(timer); timer = null; }
    if (!cfg.key || !queue.length) return;
    while (queue.length) send(queue.splice(0, cfg.batch), !!leaving);
  }

  function touched(interactionId) {
    for (var i = 0; i < watchers.length; i++) {
      if (watchers[i].id === interactionId) watchers[i].used = true;
    }
  }

  function feedback(interactionId, fields) {
    var body = clean(fields);
    body.interaction_id = interactionId;
    touched(interactionId);
    return enqueue("feedback", body);
  }

  function signal(interactionId, kind, fields) {
    var body = clean(fields);
    body.interaction_id = interactionId; body.kind = kind;
    if (kind !== "dwell" && kind !== "abandon") touched(interactionId);
    return enqueue("signal", body);
  }

  function isField(el) { return el.tagName === "TEXTAREA" || el.tagName === "INPUT"; }

  function textOf(el) { return isField(el) ? el.value : el.innerText || el.textContent || ""; }

  function observe(el, interactionId) {
    var wt = {
      id: interactionId, el: el, used: false, abandoned: false,
      kept: textOf(el), shown: d.visibilityState === "hidden" ? 0 : Date.now()
    };
    wt.edit = function () {
      var now = textOf(el);
      if (now !== wt.kept) { wt.kept = now; signal(interactionId, "edit", { text: now }); }
    };
    wt.hide = function () {
      wt.edit();
      if (wt.shown) {
        signal(interactionId, "dwell", { duration_ms: Date.now() - wt.shown });
        wt.shown = 0;
      }
      if (!wt.used && !wt.abandoned) { wt.abandoned = true; signal(interactionId, "abandon"); }
    };
    wt.show = function () { if (!wt.shown) wt.shown = Date.now(); };
    el.addEventListener("input", function () { wt.used = true; });
    el.addEventListener("focusout", function () { wt.edit(); });
    el.addEventListener("copy", function () {
      var sel = isField(el) ? el.value.slice(el.selectionStart, el.selectionEnd)
        : w.getSelection ? String(w.getSelection()) : "";
      signal(interactionId, "copy", sel ? { text: sel } : {});
    });
    watchers.push(wt);
    return function stop() {
      var at = watchers.indexOf(wt);
      if (at < 0) return;
      watchers.splice(at, 1);
      wt.hide();
      flush();
    };
  }

  function onHide() {
    if (hidden) return;
    hidden = true;
    for (var i = 0; i < watchers.length; i++) watchers[i].hide();
    flush(true);
  }

  function onShow() {
    hidden = false;
    for (var i = 0; i < watchers.length; i++) watchers[i].show();
  }

  function init(options) {
    var k;
    for (k in options || {}) if (options[k] !== undefined) cfg[k] = options[k];
    cfg.endpoint = String(cfg.endpoint || "").replace(/\/+$/, "");
    if (queue.length) flush();
    return api;
  }

  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") onHide(); else onShow();
  });
  w.addEventListener("pagehide", onHide);
  w.addEventListener("pageshow", onShow);

  var api = {
    version: "1", init: init, feedback: feedback, signal: signal, observe: observe,
    flush: function () { flush(false); }, uuid7: uuid7
  };
  w.closedloop = api;

  // <script src="https://HOST/sdk/closedloop.js" data-key="cl_pk_..."> configures itself.
  var me = d.currentScript;
  if (me && me.src) {
    var base = me.src.replace(/\/sdk\/closedloop(\.min)?\.js([?#].*)?$/, "");
    if (base !== me.src) cfg.endpoint = base;
    if (me.getAttribute("data-key")) init({ key: me.getAttribute("data-key") });
  }
})(window, document);
