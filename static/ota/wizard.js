// The rollout wizard: one step at a time (all steps stay in one form, so the server validates
// everything on submit), and the review panel re-rendered by the server as the form changes.
(function () {
  "use strict";
  const form = document.getElementById("rollout-wizard");
  if (!form) return;
  const steps = Array.from(form.querySelectorAll("fieldset.step"));
  const markers = Array.from(document.querySelectorAll("#wizard-steps li"));
  const preview = document.getElementById("preview");

  function show(step) {
    steps.forEach((fieldset) => { fieldset.hidden = fieldset.dataset.step !== String(step); });
    markers.forEach((li) => li.classList.toggle("active", li.dataset.step === String(step)));
    form.dataset.step = String(step);
  }

  // Open on the first step holding an error, else the first.
  const withError = steps.find((fieldset) => fieldset.querySelector(".errorlist"));
  show(withError ? withError.dataset.step : 1);
  form.classList.add("stepped");
  form.addEventListener("click", (event) => {
    const go = event.target.closest("[data-go]");
    if (go) { event.preventDefault(); show(go.dataset.go); refresh(); }
  });
  markers.forEach((li) => li.addEventListener("click", () => show(li.dataset.step)));

  let timer = null;
  let inFlight = null;
  function refresh() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (inFlight) inFlight.abort();
      inFlight = new AbortController();
      try {
        const response = await fetch(form.dataset.previewUrl, {
          method: "POST", body: new FormData(form), signal: inFlight.signal,
          headers: { "X-Requested-With": "fetch" }, credentials: "same-origin",
        });
        if (response.ok) {
          preview.innerHTML = await response.text();
          preview.dispatchEvent(new CustomEvent("preview:updated", { bubbles: true }));
        }
      } catch (error) {
        if (error.name !== "AbortError") console.warn("preview failed", error);
      }
    }, 250);
  }
  form.addEventListener("change", refresh);
  form.addEventListener("input", (event) => { if (event.target.type !== "checkbox") refresh(); });
  refresh();
})();
