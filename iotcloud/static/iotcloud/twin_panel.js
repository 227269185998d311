/* The twin panel on a device's admin page: shows one shadow of the device (the classic one or a named
 * one, picked in the shadow picker), edits its desired state, creates and deletes named shadows, and
 * follows the device live (a report or another operator's change re-renders it without a reload).
 *
 * The selected shadow is `?shadow=<name>` in the page's URL (kept there as the picker changes, so a
 * reload shows the same shadow) and in the URLs of the panel's endpoints; "" is the classic shadow. */
(function () {
  "use strict";
  var panel = document.getElementById("iot-twin");
  if (!panel) return;
  var device = panel.getAttribute("data-device");
  var tenant = panel.getAttribute("data-tenant");
  var urls = {
    twin: panel.getAttribute("data-twin-url"),
    desired: panel.getAttribute("data-desired-url"),
    create: panel.getAttribute("data-create-url"),
    remove: panel.getAttribute("data-delete-url"),
  };
  var editor = document.getElementById("iot-editor");
  var textarea = document.getElementById("iot-document");
  var expected = document.getElementById("iot-expected-version");
  var statusLine = document.getElementById("iot-editor-status");
  var notice = document.getElementById("iot-editor-notice");
  var picker = document.getElementById("iot-shadow");
  var createForm = document.getElementById("iot-shadow-create");
  var deleteLink = document.getElementById("iot-shadow-delete");
  var deleting = null; // the named shadow this page is deleting (its live "gone" event is ours)
  var shadowStatus = document.getElementById("iot-shadow-status");
  var dirty = false;
  var current = JSON.parse(document.getElementById("iot-twin-data").textContent);
  var shadow = current.name || ""; // the selected shadow
  var selecting = 0; // the latest selection: answers to older ones are dropped

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
  function sayShadow(text, kind) {
    shadowStatus.textContent = text;
    shadowStatus.className = kind ? "iot-" + kind : "";
  }
  function refusal(prefix, body) {
    return prefix + body.detail + (body.code ? " (" + body.code + ")" : "");
  }
  function withShadow(url, name) {
    return name ? url + "?shadow=" + encodeURIComponent(name) : url;
  }
  function csrfToken() {
    var input = panel.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }
  /* fetch, answering {ok, status, body} (the body of an error is the service's {detail, code}). */
  function call(method, url, body) {
    var options = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRFToken"] = csrfToken();
      options.body = JSON.stringify(body || {});
    }
    return fetch(url, options).then(function (response) {
      return response.json().then(
        function (data) {
          return { ok: response.ok, status: response.status, body: data };
        },
        function () {
          return { ok: false, status: response.status, body: { detail: "HTTP " + response.status } };
        }
      );
    });
  }

  /* The page's URL selects the shown shadow, so a reload shows it again. */
  function remember(name, how) {
    var params = new URLSearchParams(location.search);
    if (name) params.set("shadow", name);
    else params.delete("shadow");
    var query = params.toString();
    var url = location.pathname + (query ? "?" + query : "") + location.hash;
    if (how === "push") history.pushState({ shadow: name }, "", url);
    else if (how === "replace") history.replaceState({ shadow: name }, "", url);
  }

  /* Metadata: {"a": {"timestamp": t}, "b": [{"timestamp": t}], "c": {"d": {...}}} -> {"a": t, "b[0]": t, "c.d": t}. */
  function leaves(meta, path, out) {
    if (Array.isArray(meta)) {
      meta.forEach(function (item, i) {
        leaves(item, path + "[" + i + "]", out);
      });
    } else if (meta && typeof meta === "object") {
      var keys = Object.keys(meta);
      if (keys.length === 1 && keys[0] === "timestamp" && typeof meta.timestamp === "number") {
        out[path] = meta.timestamp;
        return out;
      }
      keys.sort().forEach(function (key) {
        leaves(meta[key], path ? path + "." + key : key, out);
      });
    }
    return out;
  }
  function stampCell(row, timestamp) {
    var cell = row.insertCell();
    if (timestamp === undefined) {
      cell.textContent = "\u2014";
      cell.className = "iot-quiet";
      return;
    }
    var date = new Date(timestamp * 1000);
    cell.textContent = date.toLocaleString();
    cell.title = date.toISOString() + " (timestamp " + timestamp + ")";
  }
  function renderFields(metadata) {
    var desired = leaves((metadata || {}).desired, "", {});
    var reported = leaves((metadata || {}).reported, "", {});
    var paths = Object.keys(Object.assign({}, desired, reported)).sort();
    var body = document.querySelector("#iot-fields tbody");
    body.textContent = "";
    if (!paths.length) {
      var empty = body.insertRow().insertCell();
      empty.colSpan = 3;
      empty.className = "iot-quiet";
      empty.textContent = "No fields written yet.";
      return;
    }
    paths.forEach(function (path) {
      var row = body.insertRow();
      row.setAttribute("data-field", path);
      var name = row.insertCell();
      name.textContent = path;
      name.className = "iot-field-path";
      stampCell(row, desired[path]);
      stampCell(row, reported[path]);
    });
  }

  function renderPicker(twin) {
    var names = (twin.shadows || []).slice();
    if (twin.name && names.indexOf(twin.name) < 0) names.push(twin.name);
    names.sort();
    var wanted = [""].concat(names);
    var have = Array.prototype.map.call(picker.options, function (o) {
      return o.value;
    });
    if (have.join("\n") !== wanted.join("\n")) {
      picker.textContent = "";
      wanted.forEach(function (name) {
        picker.add(new Option(name || "Classic (unnamed)", name));
      });
    }
    picker.value = twin.name || "";
    if (deleteLink) {
      deleteLink.hidden = !twin.name;
      deleteLink.href = withShadow(urls.remove, twin.name);
    }
  }

  function render(twin) {
    current = twin;
    var badge = document.getElementById("iot-sync");
    badge.textContent = twin.sync_status;
    badge.className = "iot-badge iot-badge-" + twin.sync_status;
    renderPicker(twin);
    setText("iot-desired-version", twin.desired_version);
    setText("iot-reported-version", twin.reported_version);
    setText("iot-version", twin.version);
    document.getElementById("iot-published").hidden = !!twin.name; // named shadows: no retained message
    setText("iot-published-version", twin.name ? "" : twin.desired_published_version);
    setText("iot-shadow-updated", when(twin.shadow_updated_at));
    setText("iot-reported-updated", when(twin.reported_updated_at));
    setText("iot-last-seen", when(twin.last_seen));
    setText("iot-desired", pretty(twin.desired));
    setText("iot-reported", pretty(twin.reported));
    setText("iot-delta", pretty(twin.delta));
    renderFields(twin.metadata);
    if (!editor) return;
    editor.action = withShadow(urls.desired, twin.name);
    setText("iot-editor-shadow", twin.name ? "of shadow " + twin.name : "of the classic shadow");
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

  /* Show another shadow (how: "push" a history entry, "replace" it, or "none" when going back). */
  function select(name, how) {
    if (dirty && name !== shadow && !window.confirm("Discard your unsaved changes to the desired state?")) {
      picker.value = shadow;
      if (how === "none") remember(shadow, "push");
      return Promise.resolve(false);
    }
    var ticket = ++selecting;
    return call("GET", withShadow(urls.twin, name)).then(
      function (result) {
        if (ticket !== selecting) return false;
        if (!result.ok) {
          picker.value = shadow;
          sayShadow(refusal("Not shown: ", result.body), "error");
          return false;
        }
        shadow = name;
        dirty = false;
        say("", "");
        remember(name, how);
        render(result.body);
        return true;
      },
      function (err) {
        sayShadow("Not shown: " + err.message, "error");
        return false;
      }
    );
  }

  function refresh() {
    var asked = shadow;
    call("GET", withShadow(urls.twin, asked)).then(
      function (result) {
        if (asked !== shadow) return; // another shadow was picked meanwhile
        if (result.ok) {
          render(result.body);
        } else if (result.body.code === "shadow_not_found" && asked === deleting) {
          return; // our own delete, answered below: not news from elsewhere
        } else if (result.body.code === "shadow_not_found" && asked) {
          // Deleted elsewhere: back to the classic shadow.
          dirty = false;
          select("", "replace").then(function () {
            sayShadow("Shadow " + asked + " was deleted.", "error");
          });
        } else {
          console.warn(result.body);
        }
      },
      function (err) {
        console.warn(err);
      }
    );
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

  // The picker shows the chosen shadow at once (its "Show" button is for pages without JavaScript).
  document.getElementById("iot-shadow-show").hidden = true;
  picker.addEventListener("change", function () {
    sayShadow("", "");
    select(picker.value, "push");
  });
  window.addEventListener("popstate", function () {
    var name = new URLSearchParams(location.search).get("shadow") || "";
    if (name !== shadow) select(name, "none");
  });

  if (createForm) {
    createForm.addEventListener("submit", function (e) {
      e.preventDefault();
      var input = document.getElementById("iot-shadow-name");
      var name = input.value.trim();
      if (dirty && !window.confirm("Discard your unsaved changes to the desired state?")) return;
      var button = document.getElementById("iot-shadow-create-submit");
      button.disabled = true;
      sayShadow("Creating\u2026", "");
      call("POST", urls.create, { name: name }).then(
        function (result) {
          button.disabled = false;
          if (!result.ok) {
            sayShadow(refusal("Not created: ", result.body), "error");
            return;
          }
          input.value = "";
          selecting++;
          shadow = result.body.name;
          dirty = false;
          say("", "");
          remember(shadow, "push");
          render(result.body);
          sayShadow("Created named shadow " + shadow + ".", "ok");
        },
        function (err) {
          button.disabled = false;
          sayShadow("Not created: " + err.message, "error");
        }
      );
    });
  }

  if (deleteLink) {
    deleteLink.addEventListener("click", function (e) {
      e.preventDefault();
      var name = shadow;
      if (!name) return;
      var question =
        "Delete the named shadow \u201c" + name + "\u201d? Its desired and reported state are removed. " +
        "Written again, it comes back empty and its version goes on.";
      if (!window.confirm(question)) return;
      sayShadow("Deleting\u2026", "");
      deleting = name;
      call("POST", withShadow(urls.remove, name)).then(
        function (result) {
          if (!result.ok) {
            deleting = null;
            sayShadow(refusal("Not deleted: ", result.body), "error");
            return;
          }
          dirty = false;
          select("", "push").then(function () {
            deleting = null;
            sayShadow("Deleted named shadow " + name + " (at version " + result.body.version + ").", "ok");
          });
        },
        function (err) {
          deleting = null;
          sayShadow("Not deleted: " + err.message, "error");
        }
      );
    });
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
      var saving = shadow;
      button.disabled = true;
      say("Saving\u2026", "");
      call("POST", withShadow(urls.desired, saving), {
        document: document_,
        mode: mode,
        expected_version: parseInt(expected.value, 10),
      }).then(
        function (result) {
          button.disabled = false;
          if (!result.ok) {
            say(refusal("Not saved: ", result.body), "error");
            return;
          }
          if (saving !== shadow) return; // another shadow was picked meanwhile
          dirty = false;
          sayShadow("", "");
          render(result.body);
          say(
            "Saved: desired version " + result.body.desired_version + " (document version " +
              result.body.version + "). The bridge delivers it over MQTT.",
            "ok"
          );
        },
        function (err) {
          button.disabled = false;
          say("Not saved: " + err.message, "error");
        }
      );
    });
  }

  render(current);
  remember(shadow, "replace"); // the page may have fallen back to the classic shadow (a name that is gone)
  var refreshSoon = iotcloudLive.coalesce(refresh, 250);
  iotcloudLive.watch([tenant], function (event) {
    if (event.type === "reconnected" || (event.type === "twin.changed" && event.devices.indexOf(device) >= 0)) {
      refreshSoon();
    }
  });
})();
