// Renders the analytics page's charts with the vendored ECharts (SVG renderer), from the JSON the
// server embedded in #chart-data.  Each container gets data-rendered="1" once drawn.
(function () {
  "use strict";
  var node = document.getElementById("chart-data");
  if (!node || !window.echarts) { return; }
  var data = JSON.parse(node.textContent);
  var palette = ["#2f6fde", "#2e9d5b", "#e69a1c", "#d9363e", "#8c5bd6"];
  document.querySelectorAll("[data-chart]").forEach(function (el) {
    var spec = data[el.getAttribute("data-chart")];
    if (!spec) { return; }
    var chart = echarts.init(el, null, { renderer: "svg" });
    var crowded = !spec.horizontal && spec.categories.length > 5;
    var category = { type: "category", data: spec.categories,
                     axisLabel: { interval: spec.categories.length > 12 ? "auto" : 0, fontSize: 11, rotate: crowded ? 25 : 0 } };
    var value = { type: "value", axisLabel: { formatter: spec.unit ? "{value}" + spec.unit : "{value}" } };
    chart.setOption({
      color: palette,
      animation: false,
      tooltip: { trigger: "axis" },
      legend: spec.series.length > 1 ? { top: 0 } : undefined,
      grid: { left: spec.horizontal ? 130 : 48, right: 16, top: spec.series.length > 1 ? 30 : 14,
              bottom: crowded ? 64 : 28, containLabel: false },
      xAxis: spec.horizontal ? value : category,
      yAxis: spec.horizontal ? category : value,
      series: spec.series.map(function (s) { return { name: s.name, type: "bar", data: s.data, barMaxWidth: 28 }; })
    });
    el.setAttribute("data-rendered", "1");
    window.addEventListener("resize", function () { chart.resize(); });
  });
})();
