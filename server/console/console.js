"use strict";
// The console's few behaviours: the tasks list polled live, the before/after slider, a task's
// page refreshed while it runs. Everything shown from data goes in as text, never as HTML.
(function () {
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function thumb(id, role, index) {
    const img = el("img", "thumb");
    img.alt = role + " " + (index + 1);
    img.loading = "lazy";
    img.src = "/console/thumbs/" + encodeURIComponent(id) + "/" + role + "/" + index;
    return img;
  }

  function row(t) {
    const tr = el("tr");
    tr.dataset.seq = t.seq;
    tr.dataset.id = t.id;
    const images = el("td");
    for (let i = 0; i < Math.min(t.inputs, 2); i++) images.appendChild(thumb(t.id, "input", i));
    for (let i = 0; i < Math.min(t.results, 2); i++) images.appendChild(thumb(t.id, "result", i));
    tr.appendChild(images);
    const link = el("a", "", t.id.slice(0, 8));
    link.href = "/console/tasks/" + encodeURIComponent(t.id);
    const idCell = el("td");
    idCell.appendChild(link);
    tr.appendChild(idCell);
    tr.appendChild(el("td", "", t.function));
    tr.appendChild(el("td", "", t.vendor));
    tr.appendChild(el("td", "", t.owner));
    const status = el("td");
    status.appendChild(el("span", "status " + t.status, t.status));
    if (t.progress) status.appendChild(el("span", "muted", " " + t.progress));
    tr.appendChild(status);
    tr.appendChild(el("td", "num", t.duration));
    tr.appendChild(el("td", "num", t.cost));
    tr.appendChild(el("td", "muted", t.created));
    return tr;
  }

  const list = document.getElementById("tasks");
  if (list) {
    const body = list.querySelector("tbody");
    const more = document.getElementById("more");
    const query = list.dataset.query;
    let oldest = null;
    async function fetchPage(before) {
      const url = "/console/api/tasks?" + query + (before ? "&before=" + before : "");
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.status === 401) { window.location = "/console/login"; return null; }
      return response.ok ? response.json() : null;
    }
    async function refresh() {
      const page = await fetchPage(null);
      if (!page) return;
      // The newest page is drawn again whole; older pages loaded below it stay.
      const keep = oldest === null ? [] :
        Array.from(body.children).filter((tr) => Number(tr.dataset.seq) < page.last_seq);
      body.replaceChildren(...page.tasks.map(row), ...keep);
      if (oldest === null) oldest = page.last_seq;
      more.hidden = oldest === null || !page.more && keep.length === 0;
      list.dataset.updated = String(Date.now());
    }
    more.addEventListener("click", async () => {
      const page = await fetchPage(oldest);
      if (!page) return;
      page.tasks.forEach((t) => body.appendChild(row(t)));
      oldest = page.last_seq;
      more.hidden = !page.more;
    });
    refresh();
    setInterval(refresh, 2000);
  }

  document.querySelectorAll(".compare").forEach((box) => {
    const after = box.querySelector(".after");
    const inner = after.querySelector("img");
    const base = box.querySelector("img.before");
    const range = box.querySelector("input");
    function size() { inner.style.width = base.clientWidth + "px"; }
    range.addEventListener("input", () => { after.style.width = range.value + "%"; });
    base.addEventListener("load", size);
    window.addEventListener("resize", size);
    size();
  });

  const page = document.getElementById("task");
  if (page && page.dataset.finished !== "true") {
    setInterval(async () => {
      const response = await fetch("/console/api/tasks/" + encodeURIComponent(page.dataset.id),
        { credentials: "same-origin" });
      if (!response.ok) return;
      const task = await response.json();
      if (task.status !== page.dataset.status || task.progress !== page.dataset.progress) {
        window.location.reload();
      }
    }, 1500);
  }
})();
