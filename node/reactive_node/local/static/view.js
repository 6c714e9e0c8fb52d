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

// The timeline: loops and waits per second on top, then a lane per node with its
// phase over time, its decisions (from /v1/history) and the faults.
const TL = { left: 110, right: 20, rateHeight: 70, lane: 22, top: 10 };

function drawTimeline(model) {
  const svg = document.getElementById("timeline");
  const tl = model.timeline;
  if (!svg || !tl) return;
  const names = model.nodes.map((n) => n.name);
  const width = 1100;
  const height = TL.top + TL.rateHeight + 14 + names.length * TL.lane + 24;
  svg.setAttribute("height", String(height));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const t1 = tl.now;
  let t0 = t1 - 60;
  for (const r of tl.rates) t0 = Math.min(t0, r[0]);
  t0 = Math.max(t0, t1 - tl.window);
  const span = Math.max(1, t1 - t0);
  const plot = width - TL.left - TL.right;
  const x = (t) => TL.left + ((Math.min(Math.max(t, t0), t1) - t0) / span) * plot;
  const parts = [];
  // rates
  const peak = Math.max(1, ...tl.rates.map((r) => Math.max(r[1], r[2])));
  const ry = (v) => TL.top + TL.rateHeight - (v / peak) * TL.rateHeight;
  parts.push(el("rect", { x: TL.left, y: TL.top, width: plot, height: TL.rateHeight,
                          fill: "#fafafa", stroke: "#eee" }));
  parts.push(el("text", { x: TL.left - 6, y: TL.top + 8, "text-anchor": "end" },
                `${peak.toFixed(1)}/s`));
  parts.push(el("text", { x: TL.left - 6, y: TL.top + TL.rateHeight, "text-anchor": "end" }, "0"));
  for (const [i, kind] of [[1, "loops"], [2, "waits"]]) {
    const points = tl.rates.map((r) => `${x(r[0]).toFixed(1)},${ry(r[i]).toFixed(1)}`).join(" ");
    if (points) parts.push(el("polyline", { class: "rate " + kind, points }));
  }
  const lanesTop = TL.top + TL.rateHeight + 14;
  names.forEach((name, i) => {
    const y = lanesTop + i * TL.lane;
    const lane = el("g", { class: "lane", "data-name": name });
    lane.appendChild(el("text", { class: "lane-name", x: TL.left - 6, y: y + TL.lane / 2 }, name));
    const node = tl.nodes[name] || { phases: [], decisions: [] };
    for (const [start, end, phase] of node.phases) {
      const r = el("rect", { class: "phase " + phase, x: x(start), y: y + 4,
                             width: Math.max(1, x(end) - x(start)), height: TL.lane - 8 });
      r.appendChild(el("title", {}, phase));
      lane.appendChild(r);
    }
    for (const d of node.decisions) {
      const label = d.kind + (d.generation !== undefined ? ` generation ${d.generation}` : "") +
        (d.epoch !== undefined ? ` epoch ${JSON.stringify(d.epoch)}` : "");
      const c = el("circle", { class: "decision " + d.kind, cx: x(d.at), cy: y + TL.lane / 2,
                               r: 3.5 });
      c.appendChild(el("title", {}, label));
      lane.appendChild(c);
    }
    parts.push(lane);
  });
  for (const f of tl.faults) {
    for (const name of f.nodes) {
      const i = names.indexOf(name);
      if (i < 0) continue;
      const y = lanesTop + i * TL.lane;
      if (f.kind === "partition") {
        const end = f.end === null || f.end === undefined ? t1 : f.end;
        const r = el("rect", { class: "fault partition", x: x(f.start), y: y + 1,
                               width: Math.max(2, x(end) - x(f.start)), height: TL.lane - 2 });
        r.appendChild(el("title", {}, "partitioned: " + JSON.stringify(f.links)));
        parts.push(r);
      } else {
        const t = el("text", { class: "fault exit", x: x(f.start), y: y + TL.lane / 2 + 4,
                               "text-anchor": "middle" }, "X");
        t.appendChild(el("title", {}, `process exited (${f.code})`));
        parts.push(t);
      }
    }
  }
  const axisY = lanesTop + names.length * TL.lane + 14;
  for (let k = 0; k <= 6; k++) {
    const t = t0 + (k * span) / 6;
    parts.push(el("text", { x: x(t), y: axisY, "text-anchor": "middle" },
                  `-${Math.round(t1 - t)}s`));
  }
  svg.replaceChildren(...parts);
  document.getElementById("timeline-span").textContent = `(last ${Math.round(span)} s)`;
}

async function poll() {
  try {
    const r = await fetch("/api/loop", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const model = await r.json();
    draw(model);
    drawTimeline(model);
  } catch (e) {
    document.getElementById("status").textContent = `cannot reach the supervisor: ${e}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
