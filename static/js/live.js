/* IoTFleet live updates: one websocket per page to /ws/fleet/, reconnecting by itself.
 *
 * Page scripts:   IoTFleetLive.on("devices.status", payload => { ... });
 *                 IoTFleetLive.on("*", (payload, event) => { ... });  // every event
 * Declarative:    <section data-live-url="/partials/x/" data-live-events="alerts.changed"
 *                          data-live-min-ms="1000" data-live-keys="dev-1 dev-2">
 *   is re-fetched (a server-rendered partial) and its content swapped when one of its events
 *   arrives, at most once per data-live-min-ms (default 1000). With data-live-keys, only events
 *   naming one of those device keys count (or events naming no device, or truncated ones).
 *   After a swap the element gets a "live:swapped" DOM event.
 *
 * The server sends frames {"events": [{"event", "payload"}, ...]}, already coalesced; this file
 * coalesces once more per element, so a flood costs a few fetches a second. Whenever the socket
 * is ready (the first time too: the page was rendered before it joined) every declarative
 * element is refreshed once, so an event sent in between is not missed.
 * docs/dashboards.md describes the contract.
 */
(function () {
  "use strict";

  var handlers = {};
  var stats = { frames: 0, events: 0, fetches: 0, swaps: 0, connects: 0 };
  var socket = null;
  var backoff = 1000;
  var stopped = false;

  function on(event, handler) {
    (handlers[event] = handlers[event] || []).push(handler);
    return function off() {
      handlers[event] = (handlers[event] || []).filter(function (h) { return h !== handler; });
    };
  }

  function setState(state, title) {
    document.documentElement.dataset.live = state;
    var badge = document.getElementById("live-state");
    if (badge) {
      badge.dataset.state = state;
      badge.title = title || ("Live updates: " + state);
    }
  }

  function dispatch(event, payload) {
    stats.events += 1;
    (handlers[event] || []).concat(handlers["*"] || []).forEach(function (handler) {
      try { handler(payload, event); } catch (error) { console.error("live handler", event, error); }
    });
    liveElements().forEach(function (element) {
      if (wants(element, event, payload)) { schedule(element); }
    });
  }

  // --- declarative partial refresh ----------------------------------------------------------

  function liveElements() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-live-url]"));
  }

  function words(value) {
    return (value || "").split(/\s+/).filter(Boolean);
  }

  // The device keys an event names: strings in its lists, and the key/device of its objects.
  function keysOf(payload) {
    var keys = [];
    if (!payload || typeof payload !== "object") { return keys; }
    if (typeof payload.key === "string") { keys.push(payload.key); }
    if (typeof payload.device === "string") { keys.push(payload.device); }
    Object.keys(payload).forEach(function (name) {
      var value = payload[name];
      if (!Array.isArray(value)) { return; }
      value.forEach(function (item) {
        if (typeof item === "string") { keys.push(item); }
        else if (item && typeof item === "object") {
          if (typeof item.key === "string") { keys.push(item.key); }
          if (typeof item.device === "string") { keys.push(item.device); }
        }
      });
    });
    return keys;
  }

  function wants(element, event, payload) {
    if (words(element.dataset.liveEvents).indexOf(event) < 0) { return false; }
    var only = words(element.dataset.liveKeys);
    if (!only.length || (payload && payload.truncated)) { return true; }
    var named = keysOf(payload);
    if (!named.length) { return true; }
    return named.some(function (key) { return only.indexOf(key) >= 0; });
  }

  function schedule(element) {
    var state = element._live || (element._live = { last: 0, timer: null, busy: false, again: false });
    if (state.busy) { state.again = true; return; }
    if (state.timer) { return; }
    var minMs = parseInt(element.dataset.liveMinMs || "1000", 10);
    var wait = Math.max(0, state.last + minMs - Date.now());
    state.timer = setTimeout(function () { state.timer = null; refresh(element); }, wait);
  }

  function refresh(element) {
    var state = element._live || (element._live = { last: 0, timer: null, busy: false, again: false });
    if (state.busy) { state.again = true; return Promise.resolve(); }
    state.busy = true;
    state.last = Date.now();
    stats.fetches += 1;
    return fetch(element.dataset.liveUrl, {
      credentials: "same-origin",
      headers: { "X-Requested-With": "IoTFleetLive", "Accept": "text/html" },
      redirect: "manual",
    }).then(function (response) {
      if (response.type === "opaqueredirect" || response.status === 401 || response.status === 403) {
        stop("Your session ended: reload the page to log in again.");
        return;
      }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text().then(function (html) {
        element.innerHTML = html;
        stats.swaps += 1;
        element.dispatchEvent(new CustomEvent("live:swapped", { bubbles: true }));
      });
    }).catch(function (error) {
      console.warn("live refresh of", element.dataset.liveUrl, "failed:", error);
    }).then(function () {
      state.busy = false;
      if (state.again) { state.again = false; schedule(element); }
    });
  }

  // --- the socket ---------------------------------------------------------------------------

  function stop(reason) {
    stopped = true;
    setState("stopped", reason);
    if (socket) { socket.close(); }
  }

  function connect() {
    if (stopped) { return; }
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + "/ws/fleet/");
    setState("connecting");
    socket.onmessage = function (message) {
      var frame;
      try { frame = JSON.parse(message.data); } catch (error) { return; }
      stats.frames += 1;
      (frame.events || []).forEach(function (item) {
        if (item.event === "live.ready") {
          backoff = 1000;
          stats.connects += 1;
          setState("connected", "Live updates: connected");
          // Events sent before this socket joined (between the page's render and now, or
          // during a gap) were missed: every declarative element catches up once.
          liveElements().forEach(schedule);
        }
        dispatch(item.event, item.payload || {});
      });
    };
    socket.onclose = function (event) {
      socket = null;
      if (stopped) { return; }
      if (event.code === 4401) { stop("Not logged in: reload the page to log in."); return; }
      setState("reconnecting", "Live updates: reconnecting");
      var delay = backoff * (0.5 + Math.random());
      backoff = Math.min(backoff * 2, 30000);
      setTimeout(connect, delay);
    };
  }

  // A ping now and then keeps proxies from closing a quiet socket.
  setInterval(function () {
    if (socket && socket.readyState === WebSocket.OPEN) { socket.send("{\"ping\":1}"); }
  }, 30000);

  window.IoTFleetLive = {
    on: on,
    refresh: refresh,
    stats: stats,
    get connected() { return document.documentElement.dataset.live === "connected"; },
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", connect);
  } else {
    connect();
  }
})();
