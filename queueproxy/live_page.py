"""The live page (`GET /live` on the admin port): one self-contained HTML document, its CSS and
JavaScript inline, nothing fetched from anywhere but this sidecar's `/live/events`
(docs/contract.md#the-live-page). The charts are hand-written SVG.
"""

from __future__ import annotations

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>queueproxy live</title>
<style>
:root { --fg:#1d2330; --mute:#5b6475; --line:#d9dde5; --app:#2f6fde; --queue:#e08a00;
  --conc:#6a3fc1; --prox:#9aa3b5; --rps:#138a5e; --rej:#d23b3b; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  margin: 0; background: #f5f6f9; }
header { display: flex; align-items: center; gap: 16px; padding: 10px 18px; background: #fff;
  border-bottom: 1px solid var(--line); }
header h1 { font-size: 17px; margin: 0; font-weight: 600; }
#state { font-weight: 700; padding: 3px 10px; border-radius: 12px; color: #fff;
  background: var(--mute); }
#state.ready { background: #1f9d55; } #state.not-ready { background: var(--rej); }
#state.draining { background: var(--queue); }
#conn, #drain { color: var(--mute); }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(290px, 1fr)); gap: 14px;
  padding: 14px 18px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
section h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--mute);
  margin: 0 0 8px; }
.wide { grid-column: 1 / -1; }
.bar { display: grid; grid-template-columns: 70px 1fr 90px; align-items: center; gap: 10px;
  margin: 8px 0; }
.track { height: 22px; background: #eef0f4; border-radius: 4px; overflow: hidden; }
.fill { height: 100%; width: 0; transition: width .3s; }
.num { font: 600 18px/1 ui-monospace, Menlo, Consolas, monospace; text-align: right; }
.num small { font-weight: 400; font-size: 13px; color: var(--mute); }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 3px 6px; text-align: right; border-bottom: 1px solid #eef0f4;
  font-variant-numeric: tabular-nums; }
td:first-child, th:first-child { text-align: left; }
svg { width: 100%; height: 190px; display: block; }
.legend span { margin-right: 12px; white-space: nowrap; color: var(--mute); }
.legend i { display: inline-block; width: 14px; height: 3px; vertical-align: middle;
  margin-right: 4px; }
#events { list-style: none; margin: 0; padding: 0; max-height: 190px; overflow: auto;
  font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
#events li { padding: 2px 0; border-bottom: 1px solid #f0f1f4; }
#kpa-line { font-size: 16px; margin: 6px 0; }
#kpa-why { color: var(--mute); font-size: 12px; }
input { width: 80px; font: inherit; padding: 2px 4px; }
.yes { color: var(--rej); font-weight: 700; } .no { color: #1f9d55; font-weight: 700; }
</style>
</head>
<body>
<header>
  <h1>queueproxy live</h1>
  <span id="state">connecting</span>
  <span id="drain"></span>
  <span id="conn"></span>
</header>
<main>
  <section>
    <h2>Now</h2>
    <div class="bar"><span>at app</span><div class="track"><div class="fill" id="at-app-bar"
      style="background:var(--app)"></div></div><span class="num" id="at-app">-</span></div>
    <div class="bar"><span>queued</span><div class="track"><div class="fill" id="queued-bar"
      style="background:var(--queue)"></div></div><span class="num" id="queued">-</span></div>
    <table>
      <tr><th>the autoscaler scrapes (last second)</th><th></th></tr>
      <tr><td>time-weighted concurrency</td><td id="s-conc">-</td></tr>
      <tr><td>proxied concurrency (activator)</td><td id="s-prox">-</td></tr>
      <tr><td>requests per second</td><td id="s-rps">-</td></tr>
    </table>
  </section>
  <section>
    <h2>Latency (last <span id="l-window">60</span> s, <span id="l-count">0</span> requests)</h2>
    <table>
      <tr><th></th><th>p50</th><th>p99</th></tr>
      <tr><td>waited for a slot</td><td id="w50">-</td><td id="w99">-</td></tr>
      <tr><td>at the app</td><td id="a50">-</td><td id="a99">-</td></tr>
    </table>
    <h2 style="margin-top:12px">Answered by the sidecar (since start)</h2>
    <table id="rejected"></table>
  </section>
  <section>
    <h2>What Knative's autoscaler would do (this pod alone)</h2>
    <div>target annotation <input id="target" type="number" min="0.01" step="any"
      placeholder="CC"> <span id="kpa-target"></span></div>
    <div id="kpa-line">-</div>
    <div id="kpa-why"></div>
  </section>
  <section>
    <h2>Recent events</h2>
    <ul id="events"></ul>
  </section>
  <section class="wide">
    <h2>Concurrency, last <span class="span-min">5</span> minutes</h2>
    <svg id="chart-conc" viewBox="0 0 1000 190" preserveAspectRatio="none"></svg>
    <div class="legend">
      <span><i style="background:var(--conc)"></i>time-weighted concurrency</span>
      <span><i style="background:var(--prox)"></i>proxied</span>
      <span><i style="background:var(--app)"></i>at app</span>
      <span><i style="background:var(--queue)"></i>queued</span>
    </div>
  </section>
  <section class="wide">
    <h2>Requests per second and rejections per second</h2>
    <svg id="chart-rate" viewBox="0 0 1000 190" preserveAspectRatio="none"></svg>
    <div class="legend">
      <span><i style="background:var(--rps)"></i>requests/s</span>
      <span><i style="background:var(--rej)"></i>rejected/s</span>
    </div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const KEEP = 300;
let rows = [], source = null, cc = 0, capacity = 0;

function fmt(v, digits) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
}
function ms(v) {
  if (v === null || v === undefined) return "-";
  return v < 1 ? (v * 1000).toFixed(1) + " ms" : v.toFixed(3) + " s";
}
function bar(id, value, of) {
  const max = of > 0 ? of : Math.max(1, value);
  $(id + "-bar").style.width = Math.min(100, 100 * value / max) + "%";
  $(id).innerHTML = value + " <small>/ " + (of > 0 ? of : "\\u221e") + "</small>";
}
function line(points, max, color, width) {
  if (!points.length) return "";
  const d = points.map(([x, y], i) => (i ? "L" : "M") + x.toFixed(1) + " " +
    (180 - 170 * y / max).toFixed(1)).join("");
  return '<path d="' + d + '" fill="none" stroke="' + color + '" stroke-width="' + width +
    '" vector-effect="non-scaling-stroke"/>';
}
function chart(id, series) {
  const now = rows.length ? rows[rows.length - 1][0] : 0;
  const x = (t) => 1000 - (now - t) * (1000 / KEEP);
  let max = 1;
  for (const s of series) for (const row of rows) max = Math.max(max, row[s.col]);
  max = Math.ceil(max * 1.1);
  let svg = "";
  for (let i = 0; i <= 4; i++) {
    const y = 180 - 170 * i / 4;
    svg += '<line x1="0" x2="1000" y1="' + y + '" y2="' + y + '" stroke="#eef0f4"/>' +
      '<text x="4" y="' + (y - 2) + '" font-size="11" fill="#8a93a5">' +
      (max * i / 4).toFixed(max < 8 ? 1 : 0) + "</text>";
  }
  for (const s of series) {
    svg += line(rows.map((row) => [x(row[0]), row[s.col]]), max, s.color, s.width);
  }
  $(id).innerHTML = svg;
}
function render(data) {
  if (data.state === "starting") return;
  if (data.history) rows = data.history.slice(-KEEP);
  else if (data.point) { rows.push(data.point); rows = rows.slice(-KEEP); }
  cc = data.cc; capacity = data.queue_capacity;
  const state = $("state");
  state.textContent = data.state;
  state.className = data.state.replace(" ", "-");
  $("drain").textContent = data.drain ? "quiet period: " + data.drain.left.toFixed(1) +
    " s of " + data.drain.quiet_period + " s left" : "";
  bar("at-app", data.at_app, cc);
  bar("queued", data.queued, capacity);
  $("s-conc").textContent = fmt(data.stat.concurrency, 3);
  $("s-prox").textContent = fmt(data.stat.proxied_concurrency, 3);
  $("s-rps").textContent = fmt(data.stat.rps, 1);
  const lat = data.latency;
  $("l-window").textContent = lat.window; $("l-count").textContent = lat.requests;
  $("w50").textContent = ms(lat.wait.p50); $("w99").textContent = ms(lat.wait.p99);
  $("a50").textContent = ms(lat.app.p50); $("a99").textContent = ms(lat.app.p99);
  $("rejected").innerHTML = Object.entries(data.rejected).map(([reason, n]) =>
    '<tr><td>' + reason + '</td><td id="r-' + reason + '">' + n + "</td></tr>").join("");
  chart("chart-conc", [
    {col: 1, color: "var(--conc)", width: 2.5}, {col: 2, color: "var(--prox)", width: 1.5},
    {col: 4, color: "var(--app)", width: 2}, {col: 5, color: "var(--queue)", width: 2}]);
  chart("chart-rate", [{col: 3, color: "var(--rps)", width: 2},
    {col: 6, color: "var(--rej)", width: 2}]);
  const events = $("events");
  events.innerHTML = data.events.slice().reverse().map((e) => "<li>" +
    new Date(e.time * 1000).toLocaleTimeString() + "  " + e.text.replace(/</g, "&lt;") +
    "</li>").join("");
  const k = data.kpa;
  $("kpa-target").textContent = "\\u2192 " + fmt(k.total, 2) + " per pod \\u00d7 70% = target " +
    fmt(k.target, 2);
  if (!k.valid) { $("kpa-line").textContent = k.why; $("kpa-why").textContent = ""; return; }
  $("kpa-line").innerHTML = "stable " + fmt(k.stable, 2) + ", panic " + fmt(k.panic, 2) +
    " \\u2192 desired <b id=\\"kpa-desired\\">" + k.desired + "</b> pods, panic: " +
    (k.panicking ? '<span class="yes">yes</span>' : '<span class="no">no</span>');
  $("kpa-why").textContent = k.why;
}
function connect() {
  if (source) source.close();
  const target = $("target").value;
  source = new EventSource("/live/events" + (target ? "?target=" +
    encodeURIComponent(target) : ""));
  source.onopen = () => { $("conn").textContent = ""; };
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = () => { $("conn").textContent = "disconnected, retrying\\u2026"; };
}
const initial = new URLSearchParams(location.search).get("target");
if (initial) $("target").value = initial;
$("target").addEventListener("change", () => {
  const url = new URL(location.href);
  if ($("target").value) url.searchParams.set("target", $("target").value);
  else url.searchParams.delete("target");
  window.history.replaceState(null, "", url);
  connect();
});
connect();
</script>
</body>
</html>
"""
