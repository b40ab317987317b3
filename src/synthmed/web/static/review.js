// The review gallery without page reloads: the approve/reject forms (which work without script too) are
// sent in the background, the sample changes in place and the scroll position stays; a reject needs a
// reason and a second press to confirm; the last decision can be undone; samples can be selected for a
// batch decision; a sample opens at full size with window/level. Keys: J/K (or arrows) move, A approves,
// X rejects, U undoes, Space selects, V opens, Esc closes.
(function () {
  "use strict";
  const figures = Array.from(document.querySelectorAll("figure[data-sample]"));
  const batch = document.getElementById("batch");
  const last = document.getElementById("last-decision");
  const lastText = document.getElementById("last-text");
  const undoForm = document.getElementById("undo-form");
  const dialog = document.getElementById("full-view");
  let focused = -1;
  let undoId = null;

  function figureOf(id) { return document.getElementById("sample-" + id); }

  async function post(form, extra) {
    const body = new URLSearchParams(new FormData(form)); // url-encoded, as the forms send it (not multipart)
    for (const [key, value] of Object.entries(extra || {})) body.set(key, value);
    const response = await fetch(form.action, { method: "POST", body: body, headers: { Accept: "application/json" } });
    return { ok: response.ok, data: await response.json() };
  }

  function show(sample) {
    const figure = figureOf(sample.id);
    if (!figure) return;
    figure.className = "state-" + sample.state;
    figure.querySelector(".decision").textContent =
      sample.state === "pending" ? "" : sample.state + (sample.reason ? ": " + sample.reason : "");
    const box = figure.querySelector('input[name="sample_ids"]');
    box.checked = false;
    disarm(figure.querySelector("form.decide"));
  }

  function setError(form, text) {
    const error = form.querySelector(".field-error");
    const reason = form.querySelector('input[name="reason"]');
    error.textContent = text || "";
    error.hidden = !text;
    if (reason) reason.setAttribute("aria-invalid", text ? "true" : "false");
  }

  function disarm(form) {
    const button = form && form.querySelector('button[value="reject"]');
    if (button && button.dataset.armed) { delete button.dataset.armed; button.textContent = button.dataset.label; }
  }

  function remember(samples, verb) {
    undoId = samples.length === 1 ? samples[0].id : null;
    lastText.textContent = samples.length === 1 ? "Sample " + samples[0].id + " " + verb + "." : samples.length + " samples " + verb + ".";
    undoForm.action = "/admin/review/" + undoId + "/undo";
    undoForm.hidden = undoId === null;
    last.hidden = false;
  }

  async function decide(form, decision) {
    const reason = form.querySelector('input[name="reason"]');
    if (decision === "reject") {
      if (!reason.value.trim()) { setError(form, "Say why the sample is rejected (the generator's users read it)."); reason.focus(); return; }
      const button = form.querySelector('button[value="reject"]');
      if (!button.dataset.armed) { // a reject asks for a second press: it sends the sample back
        button.dataset.label = button.textContent;
        button.dataset.armed = "1";
        button.textContent = form === batch ? "Confirm reject of the selected" : "Confirm reject";
        button.focus();
        return;
      }
    }
    const { ok, data } = await post(form, { decision: decision });
    if (!ok) { setError(form, data.error); return; }
    setError(form, "");
    if (reason) reason.value = "";
    data.samples.forEach(show);
    remember(data.samples, decision === "approve" ? "approved" : "rejected");
    if (form === batch) { disarm(batch); count(); }
  }

  async function undo() {
    if (undoId === null) return;
    const { ok, data } = await post(undoForm);
    if (!ok) { lastText.textContent = data.error; return; }
    data.samples.forEach(show);
    lastText.textContent = "Sample " + undoId + " is " + data.samples[0].state + " again.";
    undoForm.hidden = true;
    undoId = null;
  }

  function count() {
    const n = document.querySelectorAll('input[name="sample_ids"]:checked').length;
    document.getElementById("selected-count").textContent = String(n);
  }

  function focusAt(index) {
    if (!figures.length) return;
    focused = Math.max(0, Math.min(figures.length - 1, index));
    figures[focused].focus();
    figures[focused].scrollIntoView({ block: "nearest" });
  }

  function open(figure) {
    const link = figure.querySelector("a.full-size");
    const canvas = document.getElementById("full-canvas");
    const img = new Image();
    img.onload = function () {
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const viewer = new window.SynthmedViewer(canvas, []);
      viewer.images = [img]; // already loaded: its size set the canvas
      viewer.draw();
      document.getElementById("full-caption").textContent =
        figure.querySelector(".tag").textContent + " · sample " + figure.dataset.sample + " · " + img.naturalWidth + " px";
      dialog.showModal();
    };
    img.src = link.href;
  }

  function replaceCanvas() { // a fresh canvas per opening, so no listener of an earlier viewer stays
    const old = document.getElementById("full-canvas");
    const canvas = old.cloneNode(false);
    old.replaceWith(canvas);
  }

  document.querySelectorAll("form.decide").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      decide(form, event.submitter ? event.submitter.value : "approve");
    });
  });
  if (batch) {
    batch.addEventListener("submit", function (event) {
      event.preventDefault();
      if (!document.querySelector('input[name="sample_ids"]:checked')) {
        setError(batch, "Select the samples first (their check boxes, or Space).");
        return;
      }
      decide(batch, event.submitter ? event.submitter.value : "approve");
    });
    document.addEventListener("change", function (event) { if (event.target.name === "sample_ids") count(); });
  }
  undoForm.addEventListener("submit", function (event) { event.preventDefault(); undo(); });
  figures.forEach(function (figure, i) {
    figure.addEventListener("focusin", function () { focused = i; });
    figure.querySelector("a.full-size").addEventListener("click", function (event) { event.preventDefault(); open(figure); });
  });
  dialog.addEventListener("close", replaceCanvas);
  document.getElementById("full-close").addEventListener("click", function () { dialog.close(); });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || dialog.open) return;
    if (event.key === "Enter" && event.target.name === "reason") { // a reason is written to reject
      event.preventDefault();
      decide(event.target.form, "reject");
      return;
    }
    if (event.target instanceof HTMLInputElement && event.target.type === "text") return;
    if (event.target instanceof HTMLSelectElement) return;
    const figure = figures[focused];
    const form = figure && figure.querySelector("form.decide");
    const actions = {
      j: function () { focusAt(focused + 1); },
      ArrowRight: function () { focusAt(focused + 1); },
      k: function () { focusAt(focused - 1); },
      ArrowLeft: function () { focusAt(focused - 1); },
      u: undo,
      a: function () { if (form) decide(form, "approve"); },
      x: function () { if (form) decide(form, "reject"); },
      v: function () { if (figure) open(figure); },
      " ": function () {
        if (!figure) return;
        const box = figure.querySelector('input[name="sample_ids"]');
        box.checked = !box.checked;
        count();
      },
    };
    const action = actions[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    if (!action) return;
    event.preventDefault();
    action();
  });
})();
