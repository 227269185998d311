/* The twin panel on a device's admin page: renders desired / reported / delta, edits desired state,
 * and follows the device live (a report or another operator's change re-renders it without a reload). */
(function () {
  "use strict";
  var panel = document.getElementById("iot-twin");
  if (!panel) return;
  var device = panel.getAttribute("data-device");
  var tenant = panel.getAttribute("data-tenant");
  var editor = document.getElementById("iot-editor");
  var textarea = document.getElementById("iot-document");
  var expected = document.getElementById("iot-expected-version");
  var statusLine = document.getElementById("iot-editor-status");
  var notice = document.getElementById("iot-editor-notice");
  var dirty = false;
  var current = JSON.parse(document.getElementById("iot-twin-data").textContent);

  function pretty(value) {
    return JSON.stringify(value, sortedKeys(value), 2);
  }
  function sortedKeys(value) {
    // Stable key order, so the same document always looks the same.
    var keys = {};
    (function walk(v) {
      if (v && typeof v === "object") {
        for (var k in v) {
          if (Object.prototype.hasOwnProperty.call(v, k)) {
            keys[k] = true;
            walk(v[k]);
          }
        }
      }
    })(value);
    return Object.keys(keys).sort();
  }
  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "never";
  }
  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) el.textContent = text;
  }
  function say(text, kind) {
    if (!statusLine) return;
    statusLine.textContent = text;
    statusLine.className = kind ? "iot-" + kind : "";
  }

  function render(twin) {
    current = twin;
    var badge = document.getElementById("iot-sync");
    badge.textContent = twin.sync_status;
    badge.className = "iot-badge iot-badge-" + twin.sync_status;
    setText("iot-desired-version", twin.desired_version);
    setText("iot-reported-version", twin.reported_version);
    setText("iot-published-version", twin.desired_published_version);
    setText("iot-shadow-updated", when(twin.shadow_updated_at));
    setText("iot-reported-updated", when(twin.reported_updated_at));
    setText("iot-last-seen", when(twin.last_seen));
    setText("iot-desired", pretty(twin.desired));
    setText("iot-reported", pretty(twin.reported));
    setText("iot-delta", pretty(twin.delta));
    if (!editor) return;
    if (!dirty) {
      textarea.value = pretty(twin.desired);
      expected.value = twin.desired_version;
      notice.hidden = true;
    } else if (String(twin.desired_version) !== expected.value) {
      notice.hidden = false;
      notice.textContent =
        "Desired state changed to version " + twin.desired_version + " while you were editing " +
        "(version " + expected.value + "). Saving now will be refused as stale: " +
        "use \u201cReload current\u201d and apply your change again.";
    }
  }

  function refresh() {
    iotcloudLive.getJSON(panel.getAttribute("data-twin-url")).then(render, function (err) {
      console.warn(err);
    });
  }

  function check() {
    try {
      var value = JSON.parse(textarea.value);
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        say("Desired state must be a JSON object, for example {\"led\": \"on\"}.", "error");
        return null;
      }
      say("", "");
      return value;
    } catch (e) {
      say("Not valid JSON: " + e.message, "error");
      return null;
    }
  }

  if (editor) {
    textarea.addEventListener("input", function () {
      dirty = true;
      check();
    });
    textarea.addEventListener("keydown", function (e) {
      if (e.key === "Tab" && !e.shiftKey) {
        e.preventDefault();
        var start = textarea.selectionStart;
        textarea.setRangeText("  ", start, textarea.selectionEnd, "end");
      }
    });
    document.getElementById("iot-format").addEventListener("click", function () {
      var value = check();
      if (value !== null) textarea.value = pretty(value);
    });
    document.getElementById("iot-reload").addEventListener("click", function () {
      dirty = false;
      say("", "");
      render(current);
    });
    editor.addEventListener("submit", function (e) {
      e.preventDefault();
      var document_ = check();
      if (document_ === null) return;
      var mode = editor.querySelector("input[name=mode]:checked").value;
      var button = document.getElementById("iot-save");
      button.disabled = true;
      say("Saving…", "");
      fetch(panel.getAttribute("data-desired-url"), {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRFToken": editor.querySelector("input[name=csrfmiddlewaretoken]").value,
        },
        body: JSON.stringify({ document: document_, mode: mode, expected_version: parseInt(expected.value, 10) }),
      })
        .then(function (response) {
          return response.json().then(function (body) {
            return { ok: response.ok, body: body };
          });
        })
        .then(function (result) {
          button.disabled = false;
          if (!result.ok) {
            say("Not saved: " + result.body.detail + (result.body.code ? " (" + result.body.code + ")" : ""), "error");
            return;
          }
          dirty = false;
          render(result.body);
          say("Saved: desired version " + result.body.desired_version + ". The bridge delivers it over MQTT.", "ok");
        })
        .catch(function (err) {
          button.disabled = false;
          say("Not saved: " + err.message, "error");
        });
    });
  }

  render(current);
  var refreshSoon = iotcloudLive.coalesce(refresh, 250);
  iotcloudLive.watch([tenant], function (event) {
    if (event.type === "reconnected" || (event.type === "twin.changed" && event.devices.indexOf(device) >= 0)) {
      refreshSoon();
    }
  });
})();
