// Study form: when the data sets or the image size change, ask the server whether their native
// resolutions or bit depths differ and show its warnings. Without script the warnings of the
// preselected pair are in the page, and the study page repeats them once the study exists.
(function () {
  "use strict";
  const form = document.querySelector('form[action="/admin/studies/new"]');
  const box = document.getElementById("resolution-warnings");
  if (!form || !box) return;
  const fields = ["real_dataset", "synthetic_dataset", "image_size"];

  async function check() {
    const query = new URLSearchParams();
    for (const name of fields) query.set(name, form.elements[name].value);
    const response = await fetch("/admin/studies/new/resolution?" + query, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const { warnings } = await response.json();
    box.replaceChildren(...warnings.map(function (text) {
      const p = document.createElement("p");
      p.textContent = text;
      return p;
    }));
  }

  for (const name of fields) form.elements[name].addEventListener("change", check);
})();
