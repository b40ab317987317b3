// Live view of a running job: Server-Sent Events carry its progress; each new preview (the predicted clean
// image of the current batch) replaces the last one, so the user watches noise turn into anatomy.
"use strict";

const live = document.getElementById("live");
if (live) {
  const job = live.dataset.job;
  const preview = document.getElementById("preview");
  const text = (id, value) => { document.getElementById(id).textContent = value; };
  let shown = -1;
  preview.dataset.loaded = "0";
  preview.addEventListener("load", () => {
    preview.dataset.loaded = String(Number(preview.dataset.loaded) + 1);
  });

  const update = (snap) => {
    const p = snap.progress || {};
    text("state", snap.state);
    document.getElementById("state").className = `state-${snap.state}`;
    text("phase", p.phase || (snap.state === "queued" ? "waiting for a worker" : ""));
    let step = p.steps ? `step ${p.step} of ${p.steps}` : "";
    if (p.batches) step += `, batch ${p.batch} of ${p.batches}`;
    text("step", step);
    text("done", p.total ? `${p.done || 0} of ${p.total} done` : "");
    text("eta", p.eta_s != null ? `about ${Math.round(p.eta_s)} s left` : "");
    text("message", p.message || "");
    // Within a batch the steps move the bar; between batches the images done.
    const bar = document.getElementById("bar");
    bar.max = 1;
    if (p.steps && p.batches) bar.value = (p.batch - 1 + p.step / p.steps) / p.batches;
    else bar.value = p.total ? (p.done || 0) / p.total : 0;
    const latest = (p.previews || 0) - 1;
    if (latest > shown) {
      shown = latest;
      preview.src = `/jobs/${job}/previews/${latest}.png`;
      preview.hidden = false;
    }
  };

  const source = new EventSource(`/jobs/${job}/events`);
  source.addEventListener("progress", (event) => update(JSON.parse(event.data)));
  // The job ended: the page, rendered again, shows the final state and the links to its results.
  source.addEventListener("end", () => {
    source.close();
    window.location.reload();
  });
}
