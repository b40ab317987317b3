// Study image viewer: draws the trial's slices on a canvas, scrolls them (slider, mouse wheel, arrow keys)
// and applies a window/level to the 8-bit greyscale pixels. No build step, no inline script (CSP).
(function () {
  "use strict";
  const canvas = document.getElementById("viewer");
  if (!canvas) return;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const count = Number(canvas.dataset.slices) || 1;
  const base = canvas.dataset.src;
  const slider = document.getElementById("slice");
  const number = document.getElementById("slice-number");
  const windowInput = document.getElementById("window");
  const levelInput = document.getElementById("level");
  const images = [];
  let current = slider ? Number(slider.value) - 1 : 0;

  for (let i = 0; i < count; i++) {
    const img = new Image();
    img.onload = function () { if (i === current) draw(); };
    img.src = base + i;
    images.push(img);
  }

  function draw() {
    const img = images[current];
    if (!img.complete || !img.naturalWidth) return;
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const width = Number(windowInput.value);
    const level = Number(levelInput.value);
    if (width !== 255 || level !== 128) {
      const low = level - width / 2;
      const lut = new Uint8ClampedArray(256);
      for (let v = 0; v < 256; v++) lut[v] = Math.round(((v - low) * 255) / width);
      const frame = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const px = frame.data;
      for (let p = 0; p < px.length; p += 4) px[p] = px[p + 1] = px[p + 2] = lut[px[p]];
      ctx.putImageData(frame, 0, 0);
    }
    if (slider) slider.value = String(current + 1);
    if (number) number.textContent = String(current + 1);
  }

  function go(index) {
    current = Math.max(0, Math.min(count - 1, index));
    draw();
  }

  if (slider) slider.addEventListener("input", function () { go(Number(slider.value) - 1); });
  canvas.addEventListener("wheel", function (event) {
    if (count < 2) return;
    event.preventDefault();
    go(current + (event.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  document.addEventListener("keydown", function (event) {
    if (event.target instanceof Element && event.target.closest("form, input, select, button")) return;
    if (event.key === "ArrowUp" || event.key === "PageUp") { go(current - 1); event.preventDefault(); }
    if (event.key === "ArrowDown" || event.key === "PageDown") { go(current + 1); event.preventDefault(); }
  });
  windowInput.addEventListener("input", draw);
  levelInput.addEventListener("input", draw);
  document.getElementById("reset").addEventListener("click", function () {
    windowInput.value = "255";
    levelInput.value = "128";
    draw();
  });
  draw();
})();
