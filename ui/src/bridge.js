// The View side of MCP Apps (SEP-1865, protocol 2026-01-26): JSON-RPC 2.0 over postMessage
// with the host window. Only the part this page uses: the handshake, tool calls and resource
// reads through the host, the host's notifications, and the few ui/* requests.

export const PROTOCOL_VERSION = "2026-01-26";
const INIT_TIMEOUT_MS = 10_000;
const CALL_TIMEOUT_MS = 120_000;

export class RpcError extends Error {
  constructor(error) {
    super(error?.message || "the host refused the request");
    this.code = error?.code;
  }
}

export class Bridge {
  constructor(host = window.parent) {
    this.host = host;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = new Map();
    this.hostCapabilities = {};
    this.hostContext = {};
    this.onteardown = null;
    window.addEventListener("message", (event) => this.receive(event));
  }

  /** Handshake: ui/initialize, then ui/notifications/initialized. */
  async connect(appInfo, appCapabilities = {}) {
    const result = await this.request(
      "ui/initialize",
      { appInfo, appCapabilities, protocolVersion: PROTOCOL_VERSION },
      INIT_TIMEOUT_MS,
    );
    this.hostCapabilities = result.hostCapabilities || {};
    this.hostContext = result.hostContext || {};
    this.hostInfo = result.hostInfo;
    this.notify("ui/notifications/initialized", {});
    this.reportSize();
    return result;
  }

  on(method, listener) {
    this.listeners.set(method, listener);
  }

  callTool(name, args) {
    return this.request("tools/call", { name, arguments: args });
  }

  readResource(uri) {
    return this.request("resources/read", { uri });
  }

  request(method, params, timeoutMs = CALL_TIMEOUT_MS) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RpcError({ message: `the host did not answer ${method}` }));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (value) => (clearTimeout(timer), resolve(value)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      });
      this.host.postMessage({ jsonrpc: "2.0", id, method, params }, "*");
    });
  }

  notify(method, params) {
    this.host.postMessage({ jsonrpc: "2.0", method, params }, "*");
  }

  receive(event) {
    if (event.source !== this.host) return;
    const message = event.data;
    if (!message || message.jsonrpc !== "2.0") return;
    if (message.method === undefined) {
      const waiting = this.pending.get(message.id);
      if (!waiting) return;
      this.pending.delete(message.id);
      if (message.error) waiting.reject(new RpcError(message.error));
      else waiting.resolve(message.result ?? {});
    } else if (message.id !== undefined) {
      this.answer(message);
    } else {
      this.listeners.get(message.method)?.(message.params ?? {});
    }
  }

  async answer({ id, method, params }) {
    const reply = (body) => this.host.postMessage({ jsonrpc: "2.0", id, ...body }, "*");
    if (method === "ping") return reply({ result: {} });
    if (method === "ui/resource-teardown") {
      await this.onteardown?.(params);
      return reply({ result: {} });
    }
    reply({ error: { code: -32601, message: `Method not found: ${method}` } });
  }

  /** ui/notifications/size-changed whenever the page's size changes. */
  reportSize() {
    let queued = false;
    let last = "";
    const send = () => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        const root = document.documentElement;
        const saved = root.style.height;
        root.style.height = "max-content";
        const height = Math.ceil(root.getBoundingClientRect().height);
        root.style.height = saved;
        const width = Math.ceil(window.innerWidth);
        if (`${width}x${height}` === last) return;
        last = `${width}x${height}`;
        this.notify("ui/notifications/size-changed", { width, height });
      });
    };
    const observer = new ResizeObserver(send);
    observer.observe(document.documentElement);
    observer.observe(document.body);
    send();
  }
}

/** The host's theme and style variables on this document. */
export function applyHostContext(context) {
  const root = document.documentElement;
  if (context.theme === "light" || context.theme === "dark") root.dataset.theme = context.theme;
  for (const [name, value] of Object.entries(context.styles?.variables || {})) {
    if (name.startsWith("--") && typeof value === "string") root.style.setProperty(name, value);
  }
  const box = context.containerDimensions;
  if (box && "maxHeight" in box && box.maxHeight) root.style.maxHeight = `${box.maxHeight}px`;
  if (box && "maxWidth" in box && box.maxWidth) root.style.maxWidth = `${box.maxWidth}px`;
}
