/* iotcloud jobs: refresh the progress bars on the page (job list, job page) and the job page's
 * rollout chart without reloading.
 *
 * Bars are elements with data-job-progress="<pk>" and data-job-id="<job id>"; status cells have
 * data-job-status="<pk>"; the chart is in data-job-chart="<pk>". When a jobs.changed event names a
 * visible job (or the socket reconnects), the page refetches progress.json for all visible bars, and
 * the chart (&chart=<pk>), in one request (coalesced: a burst of events is one request). The server
 * renders the bar's and the chart's HTML, so the list, the job page and this script always agree.
 */
(function () {
  "use strict";

  function attrs(selector, name) {
    var found = document.querySelectorAll(selector);
    var values = [];
    for (var i = 0; i < found.length; i++) values.push(found[i].getAttribute(name));
    return values;
  }

  /* Put fresh progress into every matching bar; jobs: {pk: {status, html, ...}}; charts: {pk: html}. */
  function apply(jobs, charts) {
    var bars = document.querySelectorAll("[data-job-progress]");
    for (var i = 0; i < bars.length; i++) {
      var job = jobs[bars[i].getAttribute("data-job-progress")];
      if (job) bars[i].innerHTML = job.html;
    }
    var statuses = document.querySelectorAll("[data-job-status]");
    for (var j = 0; j < statuses.length; j++) {
      var known = jobs[statuses[j].getAttribute("data-job-status")];
      if (known) statuses[j].textContent = known.status;
    }
    var shownCharts = document.querySelectorAll("[data-job-chart]");
    for (var k = 0; k < shownCharts.length; k++) {
      var chart = (charts || {})[shownCharts[k].getAttribute("data-job-chart")];
      if (chart) shownCharts[k].innerHTML = chart;
    }
  }

  function start() {
    var root = document.querySelector("[data-jobs-live]");
    var tenantsNode = document.getElementById("iot-live-tenants");
    if (!root || !tenantsNode || !window.iotcloudLive) return;
    var live = window.iotcloudLive;
    var url = root.getAttribute("data-progress-url");

    var refresh = live.coalesce(function () {
      var ids = attrs("[data-job-progress]", "data-job-progress");
      var chart = attrs("[data-job-chart]", "data-job-chart")[0];
      if (!ids.length && !chart) return;
      var query = "?ids=" + ids.join(",") + (chart ? "&chart=" + encodeURIComponent(chart) : "");
      live.getJSON(url + query).then(function (data) {
        apply(data.jobs || {}, data.charts || {});
      }).catch(function (error) {
        console.warn("iotcloud jobs:", error);
      });
    }, 300);

    live.watch(JSON.parse(tenantsNode.textContent), function (event) {
      if (event.type === "reconnected") {
        refresh();
        return;
      }
      if (event.type !== "jobs.changed") return;
      var shown = attrs("[data-job-progress]", "data-job-id");
      for (var i = 0; i < (event.jobs || []).length; i++) {
        if (shown.indexOf(event.jobs[i]) !== -1) {
          refresh();
          return;
        }
      }
    });
  }

  window.iotcloudJobs = { apply: apply };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
