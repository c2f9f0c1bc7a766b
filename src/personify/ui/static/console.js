// The console's enhancements; every page reads without them.
// * every htmx request carries the session's CSRF token (the page's <body data-csrf>);
// * a <div class="chart" data-chart="ID"> draws the JSON in <script id="ID"> with uPlot:
//   {"x": [unix seconds], "series": [{"label": "...", "values": [...]}], "unit": "..."};
//   with data-refresh="URL" and data-every="SECONDS" it reloads that JSON and redraws.
(function () {
  "use strict";

  document.addEventListener("htmx:configRequest", function (event) {
    var token = document.body.dataset.csrf;
    if (token) {
      event.detail.headers["X-CSRF-Token"] = token;
    }
  });

  var PALETTE = ["#4f46e5", "#0ea5e9", "#16a34a", "#f59e0b", "#db2777", "#64748b", "#9333ea", "#dc2626"];

  function options(data, width) {
    var series = [{}];
    data.series.forEach(function (one, index) {
      series.push({
        label: one.label,
        stroke: PALETTE[index % PALETTE.length],
        width: 2,
        points: { show: data.x.length < 60 },
      });
    });
    return {
      width: width,
      height: 240,
      series: series,
      scales: { x: { time: data.time !== false } },
      axes: [{}, { label: data.unit || "" }],
      legend: { live: true },
    };
  }

  function columns(data) {
    return [data.x].concat(data.series.map(function (one) { return one.values; }));
  }

  function draw(element, data) {
    if (typeof uPlot === "undefined") {
      return;
    }
    var width = Math.max(element.clientWidth, 280);
    if (element._plot && element._plot.series.length === data.series.length + 1) {
      element._plot.setData(columns(data));
      return;
    }
    if (element._plot) {
      // a series came or went (a new source, say): draw the chart afresh
      element._plot.destroy();
    }
    element.textContent = "";
    element._plot = new uPlot(options(data, width), columns(data), element);
    element.dataset.points = String(data.x.length);
  }

  function refresh(element) {
    var url = element.dataset.refresh;
    if (!url) {
      return;
    }
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (data) {
          element.dataset.points = String(data.x.length);
          draw(element, data);
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }

  function start() {
    document.querySelectorAll("div.chart[data-chart]").forEach(function (element) {
      var source = document.getElementById(element.dataset.chart);
      if (source) {
        draw(element, JSON.parse(source.textContent));
      }
      var every = Number(element.dataset.every || 0);
      if (every > 0 && element.dataset.refresh) {
        setInterval(function () { refresh(element); }, every * 1000);
      }
    });
    window.addEventListener("resize", function () {
      document.querySelectorAll("div.chart[data-chart]").forEach(function (element) {
        if (element._plot) {
          element._plot.setSize({ width: Math.max(element.clientWidth, 280), height: 240 });
        }
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
