/* The device change list: badges and versions of the listed devices follow reports and edits live. */
(function () {
  "use strict";
  var script = document.getElementById("iot-device-list");
  var rows = {}; // "tenant/device" -> pk
  var tenants = {};
  var badges = document.querySelectorAll("[data-badge]");
  for (var i = 0; i < badges.length; i++) {
    rows[badges[i].getAttribute("data-key")] = badges[i].getAttribute("data-pk");
    tenants[badges[i].getAttribute("data-tenant")] = true;
  }
  var pending = {};

  function apply(data) {
    for (var pk in data.devices) {
      var d = data.devices[pk];
      var fields = document.querySelectorAll('[data-pk="' + pk + '"]');
      for (var j = 0; j < fields.length; j++) {
        var el = fields[j];
        if (el.hasAttribute("data-badge")) {
          el.textContent = d.sync_status;
          el.className = "iot-badge iot-badge-" + d.sync_status;
        } else {
          var name = el.getAttribute("data-field");
          var value = d[name];
          el.textContent = name === "last_seen" ? (value ? new Date(value).toLocaleString() : "never") : value;
        }
      }
    }
  }

  var refresh = iotcloudLive.coalesce(function () {
    var pks = Object.keys(pending);
    pending = {};
    if (!pks.length) return;
    iotcloudLive.getJSON(script.getAttribute("data-status-url") + "?ids=" + pks.join(",")).then(apply, console.warn);
  }, 300);

  iotcloudLive.watch(Object.keys(tenants), function (event) {
    if (event.type === "reconnected") {
      for (var key in rows) pending[rows[key]] = true;
    } else if (event.type === "twin.changed") {
      for (var k = 0; k < event.devices.length; k++) {
        var pk = rows[event.tenant + "/" + event.devices[k]];
        if (pk) pending[pk] = true;
      }
    }
    refresh();
  });
})();
