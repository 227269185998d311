/* iotcloud dashboard: refetch dashboard.json on twin.changed / jobs.changed (coalesced, ~1 s) and re-render
 * the counts, the jobs in progress and the recent reports in place. Device and job ids are user data:
 * they go into the page as text, never as HTML (only the server-rendered progress bars are HTML).
 */
(function () {
  "use strict";

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function link(href, text) {
    var a = el("a", text);
    a.href = href;
    return a;
  }

  function row(cells) {
    var tr = document.createElement("tr");
    for (var i = 0; i < cells.length; i++) {
      var td = document.createElement("td");
      if (typeof cells[i] === "string" || typeof cells[i] === "number") td.textContent = String(cells[i]);
      else td.appendChild(cells[i]);
      tr.appendChild(td);
    }
    return tr;
  }

  function replaceRows(body, rows, emptyText, columns) {
    while (body.firstChild) body.removeChild(body.firstChild);
    if (!rows.length) {
      var empty = row([emptyText]);
      empty.firstChild.colSpan = columns;
      body.appendChild(empty);
      return;
    }
    for (var i = 0; i < rows.length; i++) body.appendChild(rows[i]);
  }

  function render(root, data) {
    var showTenant = data.tenant === null;
    var counts = root.querySelectorAll("[data-count]");
    for (var i = 0; i < counts.length; i++) {
      var value = data.counts[counts[i].getAttribute("data-count")];
      if (value !== undefined) counts[i].textContent = value;
    }
    var jobs = (data.jobs || []).map(function (job) {
      var bar = el("div", null, "iot-job-progress");
      bar.innerHTML = job.html; // rendered by the server (jobs.admin.progress_inner_html), escaped there
      var cells = [link(job.url, job.job_id)];
      if (showTenant) cells.push(job.tenant);
      return row(cells.concat([job.document_type, bar]));
    });
    replaceRows(root.querySelector("[data-dash-jobs]"), jobs, "No job in progress.", 4);
    var recent = (data.recent || []).map(function (device) {
      var cells = [link(device.url, device.device_id)];
      if (showTenant) cells.push(device.tenant);
      var badge = el("span", device.sync_status, "iot-badge iot-badge-" + device.sync_status);
      return row(cells.concat([badge, device.reported_version, new Date(device.reported_updated_at).toLocaleString()]));
    });
    replaceRows(root.querySelector("[data-dash-recent]"), recent, "No device has reported yet.", 5);
  }

  function start() {
    var root = document.getElementById("iot-dashboard");
    var tenantsNode = document.getElementById("iot-live-tenants");
    var picker = document.getElementById("iot-tenant");
    if (picker) {
      picker.addEventListener("change", function () {
        picker.form.submit();
      });
    }
    if (!root || !tenantsNode || !window.iotcloudLive) return;
    var live = window.iotcloudLive;
    var url = root.getAttribute("data-json-url");
    var refresh = live.coalesce(function () {
      live.getJSON(url).then(function (data) {
        render(root, data);
      }).catch(function (error) {
        console.warn("iotcloud dashboard:", error);
      });
    }, 1000);
    refresh(); // render once from JSON: times in the browser's locale, like later updates
    live.watch(JSON.parse(tenantsNode.textContent), function (event) {
      if (event.type === "twin.changed" || event.type === "jobs.changed" || event.type === "reconnected") refresh();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
