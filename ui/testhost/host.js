// A minimal MCP Apps host for the tests, on the reference host side (AppBridge of
// @modelcontextprotocol/ext-apps) and the TypeScript SDK's client: it connects to a
// retouch-mcp over streamable HTTP, runs a tool, and renders its App in a sandboxed iframe
// under the spec's default CSP (or the plain result, for a host without Apps). The tests
// drive it through window.host.

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import {
  AppBridge,
  PostMessageTransport,
  getToolUiResourceUri,
} from "@modelcontextprotocol/ext-apps/app-bridge";

const EXTENSION = "io.modelcontextprotocol/ui";
const MIME = "text/html;profile=mcp-app";
/** The spec's restrictive default (no ui.csp in the resource's metadata). */
const CSP = [
  "default-src 'none'",
  "script-src 'self' 'unsafe-inline'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "media-src 'self' data:",
  "connect-src 'none'",
  "frame-src 'none'",
  "object-src 'none'",
  "base-uri 'self'",
].join("; ");

const chat = document.getElementById("chat");
const events = {
  appCalls: [],
  refused: [],
  modelContext: [],
  messages: [],
  downloads: [],
  links: [],
  resultSentAt: null,
};
let client = null;
let tools = [];
let apps = true;
let theme = "light";

function visibility(tool) {
  return tool?._meta?.ui?.visibility || ["model", "app"];
}

async function connect(options = {}) {
  apps = options.apps !== false;
  theme = options.theme || "light";
  if (options.column) chat.style.setProperty("--column", `${options.column}px`);
  const capabilities = apps ? { extensions: { [EXTENSION]: { mimeTypes: [MIME] } } } : {};
  client = new Client({ name: "retouch-test-host", version: "1.0.0" }, { capabilities });
  await client.connect(new StreamableHTTPClientTransport(new URL("/mcp", location.origin)));
  tools = (await client.listTools()).tools;
  return { tools: tools.map((t) => ({ name: t.name, _meta: t._meta ?? null })) };
}

/** The tools the model is offered: a host honouring visibility leaves out app-only ones. */
function modelTools() {
  return tools.filter((t) => visibility(t).includes("model")).map((t) => t.name);
}

function withCsp(html) {
  const meta = `<meta http-equiv="Content-Security-Policy" content="${CSP}">`;
  return html.replace(/<head>/i, `<head>${meta}`);
}

function renderPlain(turn, result) {
  for (const item of result.content || []) {
    if (item.type === "text") {
      const pre = document.createElement("pre");
      pre.textContent = item.text;
      turn.append(pre);
    } else if (item.type === "image") {
      const img = document.createElement("img");
      img.src = `data:${item.mimeType};base64,${item.data}`;
      img.alt = "preview";
      turn.append(img);
    } else if (item.type === "resource_link") {
      const p = document.createElement("p");
      p.textContent = `link: ${item.uri}`;
      turn.append(p);
    }
  }
}

/** Run a tool as the model would; render its App (or the plain result). */
async function run(name, args) {
  const tool = tools.find((t) => t.name === name);
  const uri = apps && tool ? getToolUiResourceUri(tool) : undefined;
  const turn = document.createElement("section");
  chat.append(turn);
  if (!uri) {
    const result = await client.callTool({ name, arguments: args });
    renderPlain(turn, result);
    return { app: false, result };
  }
  const resource = (await client.readResource({ uri })).contents[0];
  if (resource.mimeType !== MIME) throw new Error(`${uri} is ${resource.mimeType}`);
  const iframe = document.createElement("iframe");
  iframe.title = `${name} app`;
  iframe.sandbox = "allow-scripts";
  iframe.srcdoc = withCsp(resource.text);
  turn.append(iframe);
  const bridge = new AppBridge(
    client,
    { name: "retouch-test-host", version: "1.0.0" },
    {
      serverTools: {},
      serverResources: {},
      updateModelContext: { text: {} },
      message: { text: {} },
      downloadFile: {},
      openLinks: {},
      logging: {},
    },
    {
      hostContext: {
        theme,
        platform: "web",
        displayMode: "inline",
        availableDisplayModes: ["inline"],
        toolInfo: { tool },
      },
    },
  );
  bridge.onsizechange = ({ height }) => {
    if (height) iframe.style.height = `${height}px`;
  };
  const initialized = new Promise((resolve) => (bridge.oninitialized = resolve));
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  // After connect (which installs forwarding to the server): the host's own checks.
  bridge.oncalltool = async (params) => {
    const target = tools.find((t) => t.name === params.name);
    if (!target || !visibility(target).includes("app")) {
      events.refused.push(params.name);
      throw new Error(`${params.name} is not callable by apps`);
    }
    events.appCalls.push({ name: params.name, arguments: params.arguments });
    return client.callTool(params);
  };
  bridge.onupdatemodelcontext = async (params) => (events.modelContext.push(params), {});
  bridge.onmessage = async (params) => (events.messages.push(params), {});
  bridge.ondownloadfile = async (params) => (events.downloads.push(params), {});
  bridge.onopenlink = async (params) => (events.links.push(params), {});
  const pending = client.callTool({ name, arguments: args });
  await initialized;
  await bridge.sendToolInput({ arguments: args });
  const result = await pending;
  events.resultSentAt = Date.now();
  await bridge.sendToolResult(result);
  return { app: true, result };
}

window.host = { connect, run, modelTools, events };
window.hostReady = true;
