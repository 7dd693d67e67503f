// The status page: fetch /ui/status.json every refresh_s and draw it. No framework, no CDN.
"use strict";
let token = sessionStorage.getItem("embedshift-ui-token") || "";
let refreshMs = 2000;

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
};
const pct = (x) => (x === null || x === undefined ? "-" : `${(100 * x).toFixed(1)}%`);

// One small chart of one or more series on one scale: [[field, css class], ...].
function spark(points, series) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 160 32");
  const all = series.map(([field]) => points.map((p) => p[field]).filter((v) => v !== null));
  svg.setAttribute("data-points", String(all[0].length));
  const max = Math.max(...all.flat(), 1e-9);
  series.forEach(([field, cls], n) => {
    const values = all[n];
    if (values.length < 2) return;
    const line = document.createElementNS(svg.namespaceURI, "polyline");
    line.setAttribute("class", cls);
    line.setAttribute("points", values.map((v, i) =>
      `${(i * 160 / (values.length - 1)).toFixed(1)},${(30 - 28 * v / max).toFixed(1)}`).join(" "));
    svg.append(line);
  });
  const title = document.createElementNS(svg.namespaceURI, "title");
  title.textContent = series.map(([field], n) =>
    `${field}: last ${all[n].length ? all[n][all[n].length - 1] : "-"}`).join(", ");
  svg.append(title);
  return svg;
}

// The guarded ramp as its steps: taken, current, to come; its state and why it waits.
function rampSteps(ramp) {
  const steps = el("ol", {class: "ramp", "data-field": "ramp"}, ...ramp.steps.map((step, i) =>
    el("li", {class: i < ramp.index ? "done" : i === ramp.index ? "current" : "next"},
      `${step}%`)));
  const taken = Math.max(0, ramp.index + 1);
  return el("div", {}, steps, el("span", {class: "muted"},
    `${ramp.state}, step ${taken} of ${ramp.steps.length}${ramp.note ? ": " + ramp.note : ""}`));
}

function stateOf(r) {
  if (r.candidate) return r.state;
  return r.state === "promoted" ? "promoted" : "stable only (no candidate)";
}

function versionRows(view) {
  const r = view.status.rollout;
  const table = el("table", {class: "versions"},
    el("tr", {}, ...["version", "role", "model", "coverage (docs)", "coverage (popularity)",
      "shadow overlap@10", "answers/s", "p50 / p99 ms", "errors/s"].map((h) => el("th", {}, h))));
  for (const v of r.versions) {
    const role = v.name === r.stable ? "stable" : v.name === r.candidate ? "candidate" :
      v.name === r.previous_stable ? "previous stable" : "";
    const why = view.unavailable[v.name];
    const drift = (view.drifted || {})[v.name];
    const roleCell = why ? el("td", {class: "unavailable", "data-field": "unavailable"},
      `${role}, unavailable: ${why}`) : drift ? el("td", {class: "unavailable",
      "data-field": "drifted"}, `${role}, ${drift}`) : el("td", {}, role);
    const points = view.figures[v.name] || [];
    const last = points.length ? points[points.length - 1] : null;
    const timed = points.filter((p) => p.p50_ms !== null);
    const latency = timed.length ? timed[timed.length - 1] : null;  // the last step with answers
    table.append(el("tr", {"data-version": v.name},
      el("td", {}, v.name), roleCell, el("td", {}, v.model),
      el("td", {"data-field": "coverage"}, pct(view.status.coverage[v.name])),
      el("td", {"data-field": "popularity"}, pct(view.popularity_coverage[v.name])),
      el("td", {"data-field": "overlap"}, pct(view.shadow_overlap[v.name])),
      el("td", {}, last ? last.rps.toFixed(1) : "-", " ", spark(points, [["rps", "p50"]])),
      el("td", {}, latency ? `${latency.p50_ms.toFixed(1)} / ${latency.p99_ms.toFixed(1)} ` : "- ",
        spark(points, [["p50_ms", "p50"], ["p99_ms", "p99"]])),
      el("td", {}, last ? last.errors.toFixed(2) : "-", " ",
        spark(points, [["errors", "err"]]))));
  }
  return table;
}

const num = (x, digits) => (x === null || x === undefined ? "-" : x.toFixed(digits));
const points = (d) => `${d.value >= 0 ? "+" : ""}${(100 * d.value).toFixed(1)}`;

// The seeds' dashboard: per version the golden set (offline) and users (online), with the
// candidate's deltas and their 95% intervals, and the interleaving score.
function qualityTable(view) {
  const q = view.quality;
  if (!q) return "";
  const heads = ["version", "role", "nDCG@10", "P@5", "answers", "click-through", "MRR",
    "thumbs up", "re-query", "no hit", "low top score", "p50 ms", "cache hits"];
  const table = el("table", {class: "quality", "data-field": "quality"},
    el("tr", {}, ...heads.map((h) => el("th", {}, h))));
  for (const row of q.rows) {
    table.append(el("tr", {"data-version": row.version},
      el("td", {}, row.version), el("td", {}, row.role),
      el("td", {"data-field": "ndcg"}, num(row.ndcg_at_10, 3)),
      el("td", {"data-field": "p5"}, num(row.precision_at_5, 3)),
      el("td", {"data-field": "answers"}, String(row.answers)),
      el("td", {"data-field": "click_through"}, pct(row.click_through)),
      el("td", {"data-field": "mrr"}, num(row.mrr, 3)),
      el("td", {}, pct(row.thumbs_up)), el("td", {"data-field": "requery"}, pct(row.requery)),
      el("td", {}, pct(row.zero_hits)), el("td", {"data-field": "low_top"}, pct(row.low_top)),
      el("td", {}, num(row.p50_ms, 1)),
      el("td", {}, pct(row.cache_hit))));
  }
  const notes = q.deltas.map((d) => el("li", {"data-field": `delta-${d.figure}`},
    `${{click_through: "click-through", requery: "re-query"}[d.figure] || d.figure}: candidate ${points(d)} points against stable ` +
    `(95% interval ${points({value: d.low})} to ${points({value: d.high})})`));
  const il = q.interleaving;
  if (il) notes.push(el("li", {"data-field": "interleaving"},
    `interleaved: ${il.answers} answers, candidate preferred in ${il.wins}, stable in ` +
    `${il.losses}, ${il.ties} ties` + (il.win_share === null ? "" :
    `; win share ${il.win_share.toFixed(2)} (95% interval ${il.low.toFixed(2)} to ` +
    `${il.high.toFixed(2)})`) + `: ${q.finding}`));
  if (q.missing) notes.push(el("li", {class: "problem"}, `promotion waits: ${q.missing}`));
  return el("div", {}, el("div", {class: "muted"}, "quality: golden set and users"), table,
    el("ul", {class: "deltas"}, ...notes));
}

function aliasSection(view) {
  const s = view.status, r = s.rollout;
  const verdict = s.guard ? `${s.guard.outcome}: ${s.guard.reason}` : "no verdict yet";
  const facts = el("dl", {class: "facts"},
    el("dt", {}, "state"), el("dd", {"data-field": "state", class: `state-${r.state}`}, stateOf(r)),
    el("dt", {}, "candidate share"), el("dd", {},
      el("span", {"data-field": "percent"}, `${r.percent}%`), " set, ",
      el("span", {"data-field": "effective"}, `${s.effective_percent}%`), " effective",
      el("span", {class: "muted"}, ` (${r.coverage_gate.basis === "documents" ? "coverage" :
        r.coverage_gate.basis} allows at most ${s.coverage_cap_percent}%)`)),
    el("dt", {}, "revision"), el("dd", {"data-field": "revision"}, String(r.revision)),
    el("dt", {}, "guard"), el("dd", {"data-field": "guard",
      class: s.guard ? `verdict-${s.guard.outcome}` : ""}, verdict));
  if (s.ramp) facts.append(el("dt", {}, "guarded ramp"), el("dd", {}, rampSteps(s.ramp)));
  const audit = el("ol", {class: "audit"}, ...view.audit.map((e) =>
    el("li", {}, `${e.at} revision ${e.revision} by ${e.actor}: ${e.reason}`)));
  const problem = view.problem ? el("p", {class: "problem", "data-field": "problem"}, view.problem) : "";
  return el("section", {class: "alias", "data-alias": r.alias},
    el("h2", {}, r.alias), problem, facts, versionRows(view), qualityTable(view),
    el("div", {class: "muted"}, "last changes"),
    audit);
}

async function refresh() {
  const headers = token ? {Authorization: `Bearer ${token}`} : {};
  try {
    const response = await fetch("/ui/status.json", {headers, cache: "no-store"});
    if (response.status === 401 || response.status === 403) {
      document.getElementById("login").hidden = false;
      return;
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    refreshMs = 1000 * body.refresh_s;
    document.getElementById("problem").hidden = true;
    document.getElementById("aliases").replaceChildren(...body.aliases.map(aliasSection));
    document.getElementById("updated").textContent =
      `updated ${new Date().toLocaleTimeString()}, every ${body.refresh_s} s; charts: one point per ${body.step_s} s on this proxy`;
  } catch (error) {
    const problem = document.getElementById("problem");
    problem.textContent = `could not refresh: ${error.message}`;
    problem.hidden = false;
  } finally {
    setTimeout(refresh, refreshMs);
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("embedshift-ui-token", token);
  document.getElementById("login").hidden = true;
});
refresh();
