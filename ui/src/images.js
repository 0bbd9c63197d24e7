// Images as data: URLs (the App CSP allows data: images, not blob: URLs), their types and
// sizes, and the files the user gives the page.

const SIGNATURES = [
  ["iVBORw0KGgo", "image/png"],
  ["/9j/", "image/jpeg"],
  ["UklGR", "image/webp"],
  ["R0lGOD", "image/gif"],
  ["Qk", "image/bmp"],
  ["SUkq", "image/tiff"],
  ["TU0AK", "image/tiff"],
];

/** The image type of base64 bytes, from their first bytes. */
export function sniff(base64) {
  const found = SIGNATURES.find(([start]) => base64.startsWith(start));
  return found ? found[1] : "application/octet-stream";
}

export function dataUrl(base64, mime) {
  return `data:${mime || sniff(base64)};base64,${base64}`;
}

/** A decoded image: its element and natural size; rejects what the browser cannot show. */
export function decode(src) {
  const img = new Image();
  img.src = src;
  return img.decode().then(() => ({ img, width: img.naturalWidth, height: img.naturalHeight }));
}

/** A file's bytes as base64 (FileReader: no blob: URL is made). */
export function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error || new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

/** The bytes of a resources/read answer (a blob, or text as a last resort). */
export function blobOf(answer) {
  const item = answer?.contents?.[0];
  if (!item) throw new Error("the host returned no contents");
  if (typeof item.blob === "string") return item.blob;
  throw new Error("the host returned text, not an image");
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function extension(mime) {
  const kind = (mime || "").split("/")[1] || "bin";
  return kind === "jpeg" ? "jpg" : kind;
}
