// The reader's trial screen, keyboard first: R/S answer real/synthetic, 1-5 answer the marked question
// (then the mark moves to the next unanswered one), left/right move the mark, Enter goes to the next
// item once every question is answered, up/down scroll slices, +/- zoom, 0 resets the view, F toggles
// full screen. The keys work wherever the focus is, except in the range sliders (their own arrows).
(function () {
  "use strict";
  const canvas = document.getElementById("viewer");
  const form = document.getElementById("answer");
  if (!canvas || !form) return;
  const count = Number(canvas.dataset.slices) || 1;
  const urls = Array.from({ length: count }, function (_, i) { return canvas.dataset.src + i; });
  const viewer = new window.SynthmedViewer(canvas, urls, {
    slice: document.getElementById("slice"),
    sliceNumber: document.getElementById("slice-number"),
    window: document.getElementById("window"),
    level: document.getElementById("level"),
  });
  const questions = Array.from(form.querySelectorAll("fieldset.question"));
  const missing = document.getElementById("missing");
  const next = document.getElementById("next");
  let marked = 0;
  let sent = false;

  // A page shown again by Back must show no answers of another item: start empty, and reload a page
  // restored from the back-forward cache (the server then serves the reader's current item).
  form.reset();
  window.addEventListener("pageshow", function (event) { if (event.persisted) window.location.reload(); });

  function answered(question) { return question.querySelector("input:checked") !== null; }

  function mark(index) {
    marked = Math.max(0, Math.min(questions.length - 1, index));
    questions.forEach(function (q, i) { q.classList.toggle("marked", i === marked); });
  }

  function choose(question, value) {
    const input = question.querySelector('input[value="' + value + '"]');
    if (!input) return;
    input.checked = true;
    missing.hidden = true;
    const after = questions.findIndex(function (q, i) { return i > marked && !answered(q); });
    const first = questions.findIndex(function (q) { return !answered(q); });
    mark(after >= 0 ? after : first >= 0 ? first : marked);
  }

  function submit() {
    const open = questions.findIndex(function (q) { return !answered(q); });
    if (open >= 0) {
      mark(open);
      missing.textContent = "Answer this first: " + questions[open].querySelector("legend").firstChild.textContent.trim();
      missing.hidden = false;
      return;
    }
    if (sent) return;
    sent = true; // one answer per item, however often Enter is pressed
    next.disabled = true;
    form.submit();
  }

  function digit(key) {
    const question = questions[marked];
    if (!question) return;
    if (question.dataset.question === "choice") choose(question, key === "1" ? "real" : key === "2" ? "synthetic" : "");
    else choose(question, key);
  }

  function fullscreen() {
    const room = document.getElementById("room");
    if (document.fullscreenElement) document.exitFullscreen();
    else if (room.requestFullscreen) room.requestFullscreen();
  }

  const choice = questions.find(function (q) { return q.dataset.question === "choice"; });
  const keys = {
    r: function () { if (choice) { marked = questions.indexOf(choice); choose(choice, "real"); } },
    s: function () { if (choice) { marked = questions.indexOf(choice); choose(choice, "synthetic"); } },
    ArrowLeft: function () { mark(marked - 1); },
    ArrowRight: function () { mark(marked + 1); },
    ArrowUp: function () { viewer.slice(viewer.current - 1); },
    ArrowDown: function () { viewer.slice(viewer.current + 1); },
    PageUp: function () { viewer.slice(viewer.current - 1); },
    PageDown: function () { viewer.slice(viewer.current + 1); },
    Enter: submit,
    "+": function () { viewer.zoomBy(window.SynthmedViewer.ZOOM_STEP); },
    "=": function () { viewer.zoomBy(window.SynthmedViewer.ZOOM_STEP); },
    "-": function () { viewer.zoomBy(1 / window.SynthmedViewer.ZOOM_STEP); },
    "0": function () { viewer.reset(); },
    f: fullscreen,
  };

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target instanceof HTMLInputElement && event.target.type === "range") return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const action = /^[1-5]$/.test(key) ? function () { digit(key); } : keys[key];
    if (!action) return;
    event.preventDefault(); // radios must not move their own selection, buttons not click twice
    action();
  });

  form.addEventListener("submit", function (event) { event.preventDefault(); submit(); });
  form.addEventListener("change", function (event) {
    const question = event.target.closest("fieldset.question");
    if (question) { marked = questions.indexOf(question); choose(question, event.target.value); }
  });
  document.querySelectorAll("[data-window]").forEach(function (button) {
    button.addEventListener("click", function () {
      viewer.setWindow(Number(button.dataset.window), Number(button.dataset.level));
    });
  });
  document.getElementById("zoom-in").addEventListener("click", keys["+"]);
  document.getElementById("zoom-out").addEventListener("click", keys["-"]);
  document.getElementById("reset").addEventListener("click", keys["0"]);
  document.getElementById("fullscreen").addEventListener("click", fullscreen);
  const firstOpen = questions.findIndex(function (q) { return !answered(q); });
  mark(firstOpen >= 0 ? firstOpen : 0);
})();
