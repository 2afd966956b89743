// The rule form: under the condition, name the metrics of the device type picked.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const data = document.getElementById("rule-type-metrics");
  const select = document.getElementById("id_device_type");
  const hint = document.querySelector(".rule-metrics");
  if (!data || !select || !hint) return;
  const types = JSON.parse(data.textContent);
  const show = () => {
    const type = types[select.value];
    if (!type) {
      hint.textContent = "Choose a device type to see its metrics.";
      return;
    }
    hint.replaceChildren();
    const name = document.createElement("strong");
    name.textContent = `${type.name} offers:`;
    hint.append(name, ` ${type.metrics.join(", ") || "no metrics yet"}`);
  };
  select.addEventListener("change", show);
});
