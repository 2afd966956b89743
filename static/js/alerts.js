/* The alerts page: ticked alerts stay ticked when the live table is refreshed. */
(function () {
  "use strict";
  var rows = document.getElementById("alert-rows");
  if (!rows) { return; }
  var ticked = new Set();
  rows.addEventListener("change", function (event) {
    var box = event.target;
    if (box.name !== "alerts") { return; }
    if (box.checked) { ticked.add(box.value); } else { ticked.delete(box.value); }
  });
  rows.addEventListener("live:swapped", function () {
    rows.querySelectorAll("input[name=alerts]").forEach(function (box) {
      box.checked = ticked.has(box.value);
    });
  });
})();
