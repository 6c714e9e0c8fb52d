// Polls the supervisor's /api/loop and redraws the loop as an SVG graph.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const RADIUS = 230;
const POLL_MS = 1000;

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function place(i, n) {
  const a = (2 * Math.PI * i) / n - Math.PI / 2;
  return { x: RADIUS * Math.cos(a), y: RADIUS * Math.sin(a) };
}

function short(value, width) {
  const s = typeof value === "string" ? value : JSON.stringify(value);
  return s === undefined ? "" : s.length <= width ? s : s.slice(0, width - 1) + "…";
}

function draw(model) {
  const nodes = model.nodes;
  const n = nodes.length;
  const r = Math.max(8, Math.min(32, (Math.PI * RADIUS) / Math.max(n, 1) - 4));
  const at = new Map(nodes.map((node, i) => [node.name, place(i, n)]));
  const edges = document.getElementById("edges");
  const group = document.getElementById("nodes");
  edges.replaceChildren();
  group.replaceChildren();
  for (const node of nodes) {
    const from = at.get(node.name);
    for (const edge of node.edges) {
      const to = at.get(edge.to);
      if (!to || edge.to === node.name) continue;
      const dx = to.x - from.x, dy = to.y - from.y;
      const len = Math.hypot(dx, dy) || 1;
      const ok = edge.outcome === "ok";
      edges.appendChild(el("line", {
        class: "edge " + (ok ? "ok" : "failed") + (edge.stale ? " stale" : ""),
        "data-from": node.name, "data-to": edge.to, "data-outcome": edge.outcome,
        x1: from.x + (dx * r) / len, y1: from.y + (dy * r) / len,
        x2: to.x - (dx * (r + 3)) / len, y2: to.y - (dy * (r + 3)) / len,
        "marker-end": "url(#arrow)",
      }));
    }
  }
  for (const node of nodes) {
    const p = at.get(node.name);
    const holding = node.summary && node.summary.holding === true;
    const g = el("g", {
      class: "node " + node.phase + (holding ? " holding" : ""),
      "data-name": node.name, "data-phase": node.phase,
      transform: `translate(${p.x},${p.y})`,
    });
    g.appendChild(el("title", {},
      `${node.name} (${node.address}) ${node.phase}\nloops ${node.loops}, waits ${node.waits}` +
      `\nstate ${short(node.state, 200)}`));
    g.appendChild(el("circle", { r }));
    g.appendChild(el("text", {}, n <= 24 ? node.name : String(node.ordinal)));
    group.appendChild(g);
  }
  const rows = nodes.map((node) => {
    const tr = document.createElement("tr");
    tr.className = "row " + node.phase;
    const cells = [node.name, node.phase, node.loops, node.waits, node.lastWaitReason || "-",
                   node.restarts, short(node.state, 60)];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = String(c);
      if (i === 6) td.className = "state";
      tr.appendChild(td);
    });
    return tr;
  });
  document.querySelector("#table tbody").replaceChildren(...rows);
  document.getElementById("loop-name").textContent =
    `${model.loop} — ${n} × ${model.behavior}/${model.topology}`;
  const looping = nodes.filter((x) => x.phase === "looping").length;
  document.getElementById("status").textContent =
    `${looping}/${n} looping · converged: ${model.converged ? "yes" : "no"} · ${model.seconds}s`;
}

async function poll() {
  try {
    const r = await fetch("/api/loop", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    draw(await r.json());
  } catch (e) {
    document.getElementById("status").textContent = `cannot reach the supervisor: ${e}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
