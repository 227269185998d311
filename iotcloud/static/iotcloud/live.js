/* iotcloud live updates: one websocket per admin page, reconnecting with backoff.
 *
 *   iotcloudLive.watch(["acme"], function (event) { ... });
 *
 * Events: {type: "twin.changed", tenant, devices: [...]}, {type: "jobs.changed", tenant, jobs: [...]},
 * and {type: "reconnected"} after the socket came back (a page should refetch everything, since
 * events sent while it was away are gone). The status dot (#iot-live-status) shows the state.
 */
(function () {
  "use strict";

  function setStatus(state) {
    var dots = document.querySelectorAll("[data-live-status]");
    for (var i = 0; i < dots.length; i++) {
      dots[i].setAttribute("data-live-status", state);
      dots[i].title = state === "live" ? "Live: updates appear without reloading" : "Reconnecting…";
    }
  }

  function watch(tenants, onEvent) {
    var delay = 500;
    var opened = false;
    function open() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + location.host + "/ws/live");
      socket.onopen = function () {
        socket.send(JSON.stringify({ subscribe: tenants }));
      };
      socket.onmessage = function (message) {
        var event = JSON.parse(message.data);
        if (event.type === "subscribed") {
          setStatus("live");
          delay = 500;
          if (opened) onEvent({ type: "reconnected" });
          opened = true;
          return;
        }
        if (event.type === "error") {
          console.warn("iotcloud live:", event.detail);
          return;
        }
        onEvent(event);
      };
      socket.onclose = function (close) {
        setStatus("offline");
        if (close.code === 4401 || close.code === 4403) return; // not allowed: retrying will not help
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 15000);
      };
    }
    if (tenants.length) open();
  }

  /* Run fn at most once per `wait` ms, and once more after the last call (events come in bursts). */
  function coalesce(fn, wait) {
    var timer = null;
    var again = false;
    return function () {
      if (timer) {
        again = true;
        return;
      }
      fn();
      timer = setTimeout(function tick() {
        timer = null;
        if (again) {
          again = false;
          fn();
          timer = setTimeout(tick, wait);
        }
      }, wait);
    };
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error(url + ": " + r.status);
      return r.json();
    });
  }

  window.iotcloudLive = { watch: watch, coalesce: coalesce, getJSON: getJSON };
})();
