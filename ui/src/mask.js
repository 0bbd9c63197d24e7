// Mask painting on a canvas the size of the image: brush, eraser, size, invert, clear and
// undo. The painting is a list of operations replayed on undo; the canvas's alpha is the
// mask. Exported as a black-and-white PNG (white: edit, black: keep).

const INK = "rgb(255, 0, 96)";

export class MaskPainter {
  constructor(canvas, onchange) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onchange = onchange;
    this.ops = [];
    this.stroke = null;
    this.erase = false;
    this.size = 24; // on screen, in CSS pixels
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("pointercancel", (e) => this.up(e));
  }

  /** Start over on an image of this size. */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.ops = [];
    this.stroke = null;
    this.changed();
  }

  get painted() {
    return this.ops.length > 0;
  }

  invert() {
    this.apply({ type: "invert" });
  }

  clear() {
    if (this.ops.length) this.apply({ type: "clear" });
  }

  undo() {
    this.ops.pop();
    this.redraw();
    this.changed();
  }

  apply(op) {
    this.ops.push(op);
    this.draw(op);
    this.changed();
  }

  changed() {
    this.onchange?.(this);
  }

  /** Image pixels per CSS pixel, and the point under a pointer event, in image pixels. */
  scale() {
    const box = this.canvas.getBoundingClientRect();
    const fit = Math.min(box.width / this.canvas.width, box.height / this.canvas.height);
    return { box, fit };
  }

  point(event) {
    const { box, fit } = this.scale();
    // The canvas is letterboxed like the image under it (object-fit: contain).
    const left = box.left + (box.width - this.canvas.width * fit) / 2;
    const top = box.top + (box.height - this.canvas.height * fit) / 2;
    return [(event.clientX - left) / fit, (event.clientY - top) / fit];
  }

  down(event) {
    if (event.button !== 0 || !this.canvas.width) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    const radius = this.size / 2 / this.scale().fit;
    this.stroke = { type: "stroke", erase: this.erase, radius, points: [this.point(event)] };
    this.draw(this.stroke);
  }

  move(event) {
    if (!this.stroke) return;
    const points = this.stroke.points;
    points.push(this.point(event));
    this.draw({ ...this.stroke, points: points.slice(-2) });
  }

  up() {
    if (!this.stroke) return;
    this.ops.push(this.stroke);
    this.stroke = null;
    this.changed();
  }

  redraw() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    for (const op of this.ops) this.draw(op);
  }

  draw(op) {
    const ctx = this.ctx;
    const { width, height } = this.canvas;
    ctx.save();
    if (op.type === "clear") {
      ctx.clearRect(0, 0, width, height);
    } else if (op.type === "invert") {
      ctx.globalCompositeOperation = "xor";
      ctx.fillStyle = INK;
      ctx.fillRect(0, 0, width, height);
    } else {
      ctx.globalCompositeOperation = op.erase ? "destination-out" : "source-over";
      ctx.fillStyle = ctx.strokeStyle = INK;
      ctx.lineWidth = op.radius * 2;
      ctx.lineCap = ctx.lineJoin = "round";
      const [first, ...rest] = op.points;
      ctx.beginPath();
      if (rest.length === 0) {
        ctx.arc(first[0], first[1], op.radius, 0, Math.PI * 2);
        ctx.fill();
      } else {
        ctx.moveTo(first[0], first[1]);
        for (const [x, y] of rest) ctx.lineTo(x, y);
        ctx.stroke();
      }
    }
    ctx.restore();
  }

  /** The mask as a PNG data: URL, pure black and white, and how many pixels are white. */
  export() {
    const { width, height } = this.canvas;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d");
    ctx.drawImage(this.canvas, 0, 0);
    const pixels = ctx.getImageData(0, 0, width, height);
    const data = pixels.data;
    let white = 0;
    for (let i = 0; i < data.length; i += 4) {
      const on = data[i + 3] >= 128;
      const value = on ? 255 : 0;
      white += on;
      data[i] = data[i + 1] = data[i + 2] = value;
      data[i + 3] = 255;
    }
    ctx.putImageData(pixels, 0, 0);
    return { url: out.toDataURL("image/png"), white };
  }
}
