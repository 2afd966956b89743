/* The device page: the status badge in the heading follows the device's live status at once
 * (the page's sections refresh themselves through data-live-url). */
(function () {
  "use strict";
  var holder = document.getElementById("device-status");
  if (!holder || !window.IoTFleetLive) { return; }
  var key = holder.dataset.key;
  IoTFleetLive.on("devices.status", function (payload) {
    (payload.devices || []).forEach(function (device) {
      if (device.key !== key) { return; }
      var badge = document.createElement("span");
      badge.className = "badge " + device.status;
      badge.textContent = device.status;
      holder.dataset.status = device.status;
      holder.replaceChildren(badge);
    });
  });
})();
