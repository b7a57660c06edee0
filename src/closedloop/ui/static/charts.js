/* closedloop dashboard charts: every <div class="chart" data-chart='{...}'> drawn with uPlot.
 *
 * data-chart: {"x": [unix seconds], "series": [{"label": "...", "values": [number|null]}],
 *              "alarms": [{"at": unix seconds, "label": "..."}],
 *              "y": {"min": 0, "max": 1, "format": "pct" | "count" | "score"}}
 * One line per series (nulls are gaps), times in UTC, drift alarms as dashed vertical lines.
 * No eval, no inline handlers: the data is parsed with JSON.parse.
 */
(function () {
  "use strict";
  if (typeof window.uPlot !== "function") return;
  var uPlot = window.uPlot;
  var COLOURS = ["#4f46e5", "#12805c", "#c4320a", "#0e7490", "#b54708", "#7c3aed", "#be185d", "#475467"];
  var ALARM = "#c4320a";
  var HEIGHT = 220;

  function formatter(kind) {
    if (kind === "pct") {
      return function (v) { return v == null ? "—" : (100 * v).toFixed(v === 0 || v === 1 ? 0 : 1) + " %"; };
    }
    if (kind === "score") {
      return function (v) { return v == null ? "—" : v.toFixed(2); };
    }
    return function (v) { return v == null ? "—" : Math.round(v).toLocaleString("en-US"); };
  }

  // Vertical dashed lines at the alarms' times, drawn over the plot area.
  function alarmPlugin(alarms) {
    return {
      hooks: {
        draw: function (u) {
          if (!alarms.length) return;
          var ctx = u.ctx, top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
          var dpr = window.devicePixelRatio || 1;
          ctx.save();
          ctx.strokeStyle = ALARM;
          ctx.fillStyle = ALARM;
          ctx.lineWidth = 1.5 * dpr;
          ctx.setLineDash([5 * dpr, 4 * dpr]);
          alarms.forEach(function (a) {
            var x = Math.round(u.valToPos(a.at, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, bottom);
            ctx.stroke();
            ctx.beginPath();
            ctx.moveTo(x - 5 * dpr, top);
            ctx.lineTo(x + 5 * dpr, top);
            ctx.lineTo(x, top + 7 * dpr);
            ctx.closePath();
            ctx.fill();
          });
          ctx.restore();
        }
      }
    };
  }

  function yRange(y) {
    return function (u, lo, hi) {
      var min = y.min != null ? y.min : (lo == null ? 0 : lo);
      var max = y.max != null ? y.max : (hi == null || hi <= min ? min + 1 : hi * 1.1);
      return [min, max];
    };
  }

  function draw(el) {
    var spec;
    try {
      spec = JSON.parse(el.dataset.chart || "{}");
    } catch (e) {
      return;
    }
    var xs = spec.x || [];
    var series = spec.series || [];
    var y = spec.y || {};
    var alarms = spec.alarms || [];
    if (!xs.length || !series.length) {
      var note = document.createElement("p");
      note.className = "chart-empty muted small";
      note.textContent = "No data in this window.";
      el.appendChild(note);
      return;
    }
    var fmt = formatter(y.format);
    var data = [xs].concat(series.map(function (s) { return s.values; }));
    var opts = {
      width: Math.max(el.clientWidth, 240),
      height: HEIGHT,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: yRange(y) } },
      series: [{ label: "Time (UTC)" }].concat(series.map(function (s, k) {
        return {
          label: s.label,
          stroke: COLOURS[k % COLOURS.length],
          width: 2,
          spanGaps: false,
          points: { size: 5 },
          value: function (u, v) { return fmt(v); }
        };
      })),
      axes: [
        { stroke: "#667085", grid: { stroke: "#eef0f4" }, ticks: { stroke: "#e4e7ec" } },
        {
          stroke: "#667085",
          grid: { stroke: "#eef0f4" },
          ticks: { stroke: "#e4e7ec" },
          size: 56,
          values: function (u, vals) { return vals.map(fmt); }
        }
      ],
      legend: { live: false },
      plugins: [alarmPlugin(alarms)]
    };
    var plot = new uPlot(opts, data, el);
    if (typeof ResizeObserver === "function") {
      var last = el.clientWidth;
      new ResizeObserver(function () {
        var width = el.clientWidth;
        if (width !== last && width > 0) {
          last = width;
          plot.setSize({ width: Math.max(width, 240), height: HEIGHT });
        }
      }).observe(el);
    }
  }

  document.querySelectorAll("div.chart[data-chart]").forEach(draw);
})();
