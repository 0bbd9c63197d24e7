// The image stage: before/after with a split (a range input, so arrow keys move it), zoom
// that makes the stage scroll, and the mask canvas over the image being painted.

const ZOOMS = [1, 1.5, 2, 3, 4, 6, 8];

export class View {
  constructor(el) {
    this.el = el;
    this.zoom = 1;
    this.mode = "compare";
    el.split.addEventListener("input", () => this.setSplit(Number(el.split.value)));
    el.zoomIn.addEventListener("click", () => this.step(1));
    el.zoomOut.addEventListener("click", () => this.step(-1));
    el.zoomFit.addEventListener("click", () => this.setZoom(1));
    this.setSplit(Number(el.split.value));
  }

  /** Show ``before`` (and ``after``, when there is one); images are {src, width, height}. */
  show(before, after) {
    const { el } = this;
    this.before = before;
    this.after = after;
    setSrc(el.before, before?.src);
    setSrc(el.after, after?.src);
    el.placeholder.hidden = Boolean(before || after);
    const shape = before || after;
    if (shape?.width && shape?.height) {
      el.frame.style.aspectRatio = `${shape.width} / ${shape.height}`;
      el.frame.style.setProperty("--aspect", String(shape.width / shape.height));
    }
    this.layout();
  }

  setMode(mode) {
    this.mode = mode;
    this.layout();
  }

  layout() {
    const { el, mode } = this;
    const comparing = mode === "compare" && Boolean(this.after);
    el.after.hidden = mode !== "compare" || !this.after;
    el.divider.hidden = !comparing || !this.before;
    el.mask.hidden = mode !== "paint";
    el.split.disabled = !comparing || !this.before;
    el.compareControls.hidden = mode !== "compare";
    el.paintControls.hidden = mode !== "paint";
    el.modeCompare.setAttribute("aria-pressed", String(mode === "compare"));
    el.modePaint.setAttribute("aria-pressed", String(mode === "paint"));
  }

  setSplit(percent) {
    this.el.frame.style.setProperty("--split", `${percent}%`);
    this.el.split.setAttribute("aria-valuetext", `${percent}% before, ${100 - percent}% after`);
  }

  step(direction) {
    const i = ZOOMS.indexOf(this.zoom);
    const next = ZOOMS[Math.min(ZOOMS.length - 1, Math.max(0, i + direction))];
    this.setZoom(next);
  }

  setZoom(zoom) {
    const { el } = this;
    const stage = el.stage;
    const cx = (stage.scrollLeft + stage.clientWidth / 2) / stage.scrollWidth;
    const cy = (stage.scrollTop + stage.clientHeight / 2) / stage.scrollHeight;
    this.zoom = zoom;
    el.frame.style.setProperty("--zoom", String(zoom));
    el.zoomLevel.textContent = `${zoom}×`;
    el.zoomOut.disabled = zoom === ZOOMS[0];
    el.zoomIn.disabled = zoom === ZOOMS[ZOOMS.length - 1];
    stage.scrollLeft = cx * stage.scrollWidth - stage.clientWidth / 2;
    stage.scrollTop = cy * stage.scrollHeight - stage.clientHeight / 2;
  }
}

function setSrc(img, src) {
  if (src) {
    if (img.getAttribute("src") !== src) img.src = src;
  } else {
    img.removeAttribute("src");
  }
}
