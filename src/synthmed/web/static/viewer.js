// Image viewer for 8-bit greyscale PNGs on a canvas, as PACS viewers behave: drag for window/level,
// shift-drag (or the middle button) to pan, wheel through the slices of a volume (ctrl-wheel, or the
// wheel on a single image, zooms), double-click to reset. Used by the reader's trial screen and the
// admin's review viewer. No build step, no inline script (CSP): it defines window.SynthmedViewer.
(function () {
  "use strict";
  const FULL = { window: 255, level: 128 };
  const ZOOM = { min: 1, max: 8, step: 1.25 };

  function clamp(value, low, high) { return Math.max(low, Math.min(high, value)); }

  // canvas: the drawing surface; urls: one image URL per slice; controls: optional range inputs
  // {slice, sliceNumber, window, level} kept in step with the view.
  function SynthmedViewer(canvas, urls, controls) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.controls = controls || {};
    this.view = { zoom: 1, x: 0, y: 0, window: FULL.window, level: FULL.level };
    this.load(urls, this.controls.slice ? Number(this.controls.slice.value) - 1 : 0);
    this.bind();
  }

  SynthmedViewer.prototype.load = function (urls, current) {
    const self = this;
    this.current = current || 0;
    this.images = urls.map(function (url, i) {
      const img = new Image();
      img.onload = function () { if (i === self.current) self.draw(); };
      img.src = url;
      return img;
    });
  };

  SynthmedViewer.prototype.draw = function () {
    const img = this.images[this.current];
    const { canvas, ctx, view } = this;
    if (!img || !img.complete || !img.naturalWidth) return;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    // Zoom about the centre, then pan (in canvas pixels).
    const cx = canvas.width / 2, cy = canvas.height / 2;
    ctx.setTransform(view.zoom, 0, 0, view.zoom, cx - view.zoom * cx + view.x, cy - view.zoom * cy + view.y);
    ctx.imageSmoothingEnabled = view.zoom < 2; // large zooms show the pixels as they are
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    if (view.window !== FULL.window || view.level !== FULL.level) this.applyWindow();
    this.sync();
  };

  SynthmedViewer.prototype.applyWindow = function () {
    const { canvas, ctx, view } = this;
    const low = view.level - view.window / 2;
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) lut[v] = Math.round(((v - low) * 255) / view.window);
    const frame = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const px = frame.data;
    for (let p = 0; p < px.length; p += 4) px[p] = px[p + 1] = px[p + 2] = lut[px[p]];
    ctx.putImageData(frame, 0, 0);
  };

  SynthmedViewer.prototype.sync = function () {
    const c = this.controls;
    if (c.slice) c.slice.value = String(this.current + 1);
    if (c.sliceNumber) c.sliceNumber.textContent = String(this.current + 1);
    if (c.window) c.window.value = String(this.view.window);
    if (c.level) c.level.value = String(this.view.level);
  };

  SynthmedViewer.prototype.slice = function (index) {
    this.current = clamp(index, 0, this.images.length - 1);
    this.draw();
  };

  SynthmedViewer.prototype.setWindow = function (width, level) {
    this.view.window = clamp(Math.round(width), 1, 255);
    this.view.level = clamp(Math.round(level), 0, 255);
    this.draw();
  };

  SynthmedViewer.prototype.zoomBy = function (factor) {
    const view = this.view;
    view.zoom = clamp(view.zoom * factor, ZOOM.min, ZOOM.max);
    if (view.zoom === 1) view.x = view.y = 0;
    this.draw();
  };

  SynthmedViewer.prototype.reset = function () {
    Object.assign(this.view, { zoom: 1, x: 0, y: 0 }, FULL);
    this.draw();
  };

  SynthmedViewer.prototype.bind = function () {
    const self = this, canvas = this.canvas, c = this.controls;
    let drag = null;
    canvas.addEventListener("pointerdown", function (event) {
      const pan = event.shiftKey || event.button === 1;
      drag = { pan: pan, x: event.clientX, y: event.clientY };
      canvas.setPointerCapture(event.pointerId);
      event.preventDefault();
    });
    canvas.addEventListener("pointermove", function (event) {
      if (!drag) return;
      const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      drag.x = event.clientX;
      drag.y = event.clientY;
      if (drag.pan) {
        const scale = canvas.width / canvas.clientWidth;
        self.view.x += dx * scale;
        self.view.y += dy * scale;
        self.draw();
      } else { // right: wider window; down: higher level (darker image), as in PACS viewers
        self.setWindow(self.view.window + dx, self.view.level + dy);
      }
    });
    canvas.addEventListener("pointerup", function () { drag = null; });
    canvas.addEventListener("dblclick", function () { self.reset(); });
    canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      if (self.images.length > 1 && !event.ctrlKey) self.slice(self.current + (event.deltaY > 0 ? 1 : -1));
      else self.zoomBy(event.deltaY > 0 ? 1 / ZOOM.step : ZOOM.step);
    }, { passive: false });
    if (c.slice) c.slice.addEventListener("input", function () { self.slice(Number(c.slice.value) - 1); });
    if (c.window) c.window.addEventListener("input", function () { self.setWindow(Number(c.window.value), self.view.level); });
    if (c.level) c.level.addEventListener("input", function () { self.setWindow(self.view.window, Number(c.level.value)); });
  };

  SynthmedViewer.ZOOM_STEP = ZOOM.step;
  window.SynthmedViewer = SynthmedViewer;
})();
