// slurm-yolo portal: the runs table (filter, sort, select), the compare view, copy buttons.
// Hand-written, no dependencies, no network: it runs from file://, a local server or a bucket.
// Every value comes from a user's run, so text goes into the page through textContent and
// attributes through setAttribute — never innerHTML.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var RUN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
  var PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"];
  var MAX_ROWS = 1000; // a 10,000-run index: show the first 1000 matches, say how many more

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(4);
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function hashParams() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf("=");
      if (i > 0) out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
    });
    return out;
  }

  // ------------------------------------------------------------------ copy buttons
  function initCopy() {
    Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (b) {
      b.addEventListener("click", function () {
        var target = document.getElementById(b.getAttribute("data-copy"));
        if (!target) return;
        var text = target.textContent;
        var done = function () { b.textContent = "copied"; setTimeout(function () { b.textContent = "copy"; }, 1500); };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { select(target); });
        } else { select(target); } // plain http from a bucket: let the user press Ctrl-C
      });
    });
  }
  function select(node) {
    var r = document.createRange();
    r.selectNodeContents(node);
    var s = window.getSelection();
    s.removeAllRanges();
    s.addRange(r);
  }

  // ------------------------------------------------------------------ runs table
  var BASE_COLUMNS = [["", "select"], ["run_id", "run"], ["project", "project"], ["task", "task"],
    ["model_name", "model"], ["end_state", "end state"], ["user", "user"], ["submitted_at", "submitted"],
    ["attempts", "attempts"], ["sweep_id", "sweep"], ["epochs_done", "epochs done"],
    ["fitness_metric", "task metric"], ["fitness", "value"]];
  // With no task picked: the box set, as before tasks were followed (old queries, old habits).
  var BOX_COLUMNS = [["map50_95", "mAP50-95"], ["map50", "mAP50"], ["precision", "P"], ["recall", "R"]];
  var FILTERS = ["task", "end_state", "project", "user", "sweep_id"];

  function initRuns() {
    var runs = window.PORTAL_RUNS || [];
    var fieldsByTask = window.PORTAL_METRIC_FIELDS || {};
    var hkeys = {};
    runs.forEach(function (r) { Object.keys(r.hparams || {}).forEach(function (k) { hkeys[k] = true; }); });
    var hcolumns = Object.keys(hkeys).sort().map(function (k) { return ["hparams." + k, k]; });
    var columns = [];
    var columnsFor = null;
    var sort = {key: "submitted_at", desc: true};
    var selected = {};
    var head = document.getElementById("runs-head");
    var body = document.getElementById("runs-body");

    function value(r, key) {
      if (key.indexOf("hparams.") === 0) return (r.hparams || {})[key.slice(8)];
      if (key.indexOf("metrics.") === 0) return (r.metrics || {})[key.slice(8)];
      return r[key];
    }
    FILTERS.forEach(function (key) {
      var sel = document.getElementById("f-" + key);
      var seen = {};
      runs.forEach(function (r) { if (r[key] !== null && r[key] !== undefined) seen[r[key]] = true; });
      Object.keys(seen).sort().forEach(function (v) { sel.appendChild(el("option", {value: v}, v)); });
    });
    var initial = hashParams();
    Object.keys(initial).forEach(function (k) {
      var input = document.getElementById("f-" + k);
      if (input) input.value = initial[k];
    });

    // The metric columns follow the task picked: its own fields (top1, map50_95_mask, delta1...).
    function setColumns() {
      var task = document.getElementById("f-task").value;
      if (columnsFor === task && columns.length) return;
      columnsFor = task;
      var metricColumns = task ? (fieldsByTask[task] || []).map(function (f) { return ["metrics." + f, f]; })
        : BOX_COLUMNS;
      columns = BASE_COLUMNS.concat(metricColumns, hcolumns);
      head.textContent = "";
      columns.forEach(function (c) {
        var th = el("th", {"data-key": c[0]}, c[1]);
        if (c[0]) {
          // Training arguments (args.yaml) in italics: "model" there is the .yaml, not the model name.
          th.className = c[0].indexOf("hparams.") === 0 ? "sort hparam" : "sort";
          if (c[0].indexOf("hparams.") === 0) th.setAttribute("title", "training argument " + c[1]);
          if (c[0] === "fitness") th.setAttribute("title", "the run's value of its task metric (best epoch)");
          th.addEventListener("click", function () {
            sort = {key: c[0], desc: sort.key === c[0] ? !sort.desc : true};
            render();
          });
        }
        head.appendChild(th);
      });
    }

    function matches(r) {
      var text = document.getElementById("f-text").value.trim().toLowerCase();
      var ok = FILTERS.every(function (key) {
        var want = document.getElementById("f-" + key).value;
        return !want || String(r[key]) === want;
      });
      if (!ok) return false;
      var minMetric = parseFloat(document.getElementById("f-min-map").value);
      if (!isNaN(minMetric) && !(typeof r.fitness === "number" && r.fitness >= minMetric)) return false;
      if (!text) return true;
      var hay = columns.map(function (c) { return c[0] ? fmt(value(r, c[0])) : ""; }).join(" ").toLowerCase();
      return text.split(/\s+/).every(function (w) { return hay.indexOf(w) >= 0; });
    }
    function compare(a, b) {
      var x = value(a, sort.key), y = value(b, sort.key);
      var xm = x === null || x === undefined, ym = y === null || y === undefined;
      if (xm || ym) return xm === ym ? 0 : (xm ? 1 : -1); // missing values last, both directions
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return sort.desc ? -c : c;
    }
    function render() {
      setColumns();
      var shown = runs.filter(matches).sort(compare);
      body.textContent = "";
      shown.slice(0, MAX_ROWS).forEach(function (r) {
        var tr = el("tr", {"data-run": r.run_id});
        columns.forEach(function (c) {
          var td = el("td");
          if (!c[0]) {
            var box = el("input", {type: "checkbox", "aria-label": "select " + r.run_id});
            box.checked = !!selected[r.run_id];
            box.disabled = !r.link;
            box.addEventListener("change", function () {
              if (box.checked) selected[r.run_id] = true; else delete selected[r.run_id];
              updateCompare();
            });
            td.appendChild(box);
          } else if (c[0] === "run_id" && r.link && RUN_ID.test(r.run_id)) {
            td.appendChild(el("a", {href: "run/" + encodeURIComponent(r.run_id) + ".html"}, r.run_id));
          } else if (c[0] === "end_state") {
            td.appendChild(el("span", {"class": "state state-" + String(r.end_state).replace(/[^A-Za-z0-9_-]/g, "_")},
              fmt(r.end_state)));
          } else {
            td.textContent = fmt(value(r, c[0]));
          }
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
      Array.prototype.forEach.call(head.children, function (th) {
        th.removeAttribute("aria-sort");
        if (th.getAttribute("data-key") === sort.key) th.setAttribute("aria-sort", sort.desc ? "descending" : "ascending");
      });
      document.getElementById("count").textContent = shown.length + " of " + runs.length + " runs";
      document.getElementById("more").textContent = shown.length > MAX_ROWS ?
        "showing the first " + MAX_ROWS + "; narrow the filters to see the rest" : "";
    }
    function updateCompare() {
      var ids = Object.keys(selected);
      var button = document.getElementById("compare-selected");
      button.disabled = ids.length < 2;
      button.textContent = "Compare selected (" + ids.length + ")";
    }
    document.getElementById("compare-selected").addEventListener("click", function () {
      location.href = "compare.html?runs=" + Object.keys(selected).map(encodeURIComponent).join(",");
    });
    // Typing re-filters after a short pause, not on every key: 10,000 rows take a moment.
    var timer = null;
    var soon = function () { clearTimeout(timer); timer = setTimeout(render, 120); };
    Array.prototype.forEach.call(document.querySelectorAll("#filters input, #filters select"), function (input) {
      input.addEventListener("input", input.tagName === "INPUT" ? soon : render);
      input.addEventListener("change", function () { clearTimeout(timer); render(); });
    });
    render();
    updateCompare();
  }

  // ------------------------------------------------------------------ compare view
  function initCompare() {
    var raw = new URLSearchParams(location.search).get("runs") || "";
    var ids = raw.split(",").filter(function (x) { return RUN_ID.test(x); }).slice(0, 12);
    if (!ids.length) return;
    var loaded = {};
    var pending = ids.length;
    window.portalRunData = function (data) { if (data && RUN_ID.test(data.run_id)) loaded[data.run_id] = data; };
    ids.forEach(function (id) {
      // data.js files are written by the build (script-safe JSON); only safe run IDs are loaded.
      var s = el("script", {src: "run/" + encodeURIComponent(id) + "/data.js"});
      s.onload = s.onerror = function () { if (--pending === 0) renderCompare(ids, loaded); };
      document.body.appendChild(s);
    });
  }

  function renderCompare(ids, loaded) {
    var runs = ids.map(function (id) { return loaded[id] || {run_id: id, missing: true, args: {}, metrics: [], curves: {}}; });
    // A run whose details a later build copies has no curves or parameters yet: say so, so that
    // a missing curve does not read as "this run logged none".
    var waiting = runs.filter(function (r) { return r.pending; }).map(function (r) { return r.run_id; });
    document.getElementById("compare-help").textContent = runs.length + " runs" +
      (runs.some(function (r) { return r.missing; }) ? " (some have no page: not in the portal)" : "") +
      (waiting.length ? "; not copied into the portal yet (a later build brings them): the curves and " +
        "parameters of " + waiting.join(", ") : "");
    var head = document.getElementById("compare-head");
    head.appendChild(el("th", {}, ""));
    runs.forEach(function (r) {
      var th = el("th");
      th.appendChild(el("a", {href: "run/" + encodeURIComponent(r.run_id) + ".html"}, r.run_id));
      head.appendChild(th);
    });
    var bodyEl = document.getElementById("compare-body");
    function row(label, values, cls) {
      var tr = el("tr", {"class": cls || ""});
      tr.appendChild(el("th", {}, label));
      values.forEach(function (v) { tr.appendChild(el("td", {}, fmt(v))); });
      bodyEl.appendChild(tr);
    }
    row("end state", runs.map(function (r) { return r.end_state; }));
    row("task", runs.map(function (r) { return r.task; }));
    row("task metric", runs.map(function (r) { return r.fitness_metric; }));
    row("value", runs.map(function (r) { return r.fitness; }), "metric fitness");
    // Every run's metric fields, in the first run's order (results.csv's), then the others'.
    var fields = [], values = runs.map(function () { return {}; });
    runs.forEach(function (r, i) {
      (Array.isArray(r.metrics) ? r.metrics : []).forEach(function (fv) {
        if (fields.indexOf(fv[0]) < 0) fields.push(fv[0]);
        values[i][fv[0]] = fv[1];
      });
    });
    fields.forEach(function (f) { row(f, values.map(function (v) { return v[f]; }), "metric"); });
    row("epochs_done", runs.map(function (r) { return r.epochs_done; }), "metric");
    var keys = {};
    runs.forEach(function (r) { Object.keys(r.args || {}).forEach(function (k) { keys[k] = true; }); });
    Object.keys(keys).sort().forEach(function (k) {
      var values = runs.map(function (r) { return (r.args || {})[k]; });
      var distinct = {};
      values.forEach(function (v) { distinct[JSON.stringify(v === undefined ? null : v)] = true; });
      if (Object.keys(distinct).length > 1) row(k, values, "param");
    });
    // The runs' task metrics first (what they are ranked by), then every other metric column.
    var metrics = [];
    runs.forEach(function (r) { if (r.fitness_column && (r.curves || {})[r.fitness_column] && metrics.indexOf(r.fitness_column) < 0) metrics.push(r.fitness_column); });
    var others = {};
    runs.forEach(function (r) { Object.keys(r.curves || {}).forEach(function (k) { if (metrics.indexOf(k) < 0) others[k] = true; }); });
    metrics = metrics.concat(Object.keys(others).sort());
    var charts = document.getElementById("compare-charts");
    metrics.forEach(function (m) {
      var series = runs.filter(function (r) { return (r.curves || {})[m]; })
        .map(function (r) { return {name: r.run_id, points: r.curves[m]}; });
      charts.appendChild(lineChart(m, series));
    });
  }

  function lineChart(title, series) {
    // The legend gets a band of its own above the plot, so it never hides a curve.
    var W = 640, L = 52, R = 12, T = 26 + 14 * series.length, B = 34, H = 260 + 14 * series.length;
    var xs = [], ys = [0];
    series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) y1 = y0 + 1;
    var sx = function (x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
    var sy = function (y) { return T + (H - T - B) - (y - y0) / (y1 - y0) * (H - T - B); };
    var root = svg("svg", {"class": "chart", viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img"});
    root.appendChild(svg("text", {"class": "chart-title", x: L, y: 16}, title));
    var integerX = xs.every(function (x) { return Number.isInteger(x); });
    for (var t = Math.ceil(x0); integerX && t <= x1; t += Math.max(1, Math.ceil((x1 - x0) / 8))) {
      root.appendChild(svg("text", {"class": "tick", x: sx(t), y: H - B + 14, "text-anchor": "middle"}, t));
    }
    for (var i = 0; i <= 4; i++) {
      var v = y0 + (y1 - y0) * i / 4;
      root.appendChild(svg("line", {"class": "grid", x1: L, x2: W - R, y1: sy(v), y2: sy(v)}));
      root.appendChild(svg("text", {"class": "tick", x: L - 4, y: sy(v) + 4, "text-anchor": "end"}, v.toPrecision(3)));
    }
    root.appendChild(svg("text", {"class": "axis-label", x: L + (W - L - R) / 2, y: H - 4, "text-anchor": "middle"}, "epoch"));
    series.forEach(function (s, k) {
      var colour = PALETTE[k % PALETTE.length];
      var d = s.points.map(function (p, j) { return (j ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" ");
      root.appendChild(svg("path", {"class": "curve", d: d, fill: "none", stroke: colour, "stroke-width": 2, "data-series": s.name}));
      s.points.forEach(function (p) {
        var c = svg("circle", {"class": "point", cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.5, fill: colour});
        c.appendChild(svg("title", {}, s.name + " epoch " + p[0] + ": " + p[1]));
        root.appendChild(c);
      });
      root.appendChild(svg("text", {"class": "legend", x: L + 8, y: T - 14 * (series.length - k) + 4, fill: colour}, s.name));
    });
    var box = el("div", {"class": "chart-box"});
    box.appendChild(root);
    return box;
  }

  var page = document.body.getAttribute("data-page");
  initCopy();
  if (page === "runs") initRuns();
  if (page === "compare") initCompare();
})();
