// The dashboard's own behaviour: the one-click sign-in link, workflow graphs drawn with
// Cytoscape (dagre layout) and queue charts drawn with uPlot whenever a page or a live part of
// it is rendered.
"use strict";

const STATUS_COLOURS = {
  "not started": "#d0d5dd",
  pending: "#b2ccff",
  queued: "#fec84b",
  assigned: "#fdb022",
  running: "#53b1fd",
  succeeded: "#32d583",
  failed: "#f97066",
  timed_out: "#f97066",
  cancelled: "#98a2b3",
  skipped: "#e4e7ec",
};

function signInFromLink() {
  const form = document.getElementById("sign-in");
  const token = decodeURIComponent(window.location.hash.slice(1));
  if (!form || !token) return;
  // The token came in the link's fragment, which no server saw; keep it out of the history too.
  history.replaceState(null, "", window.location.pathname + window.location.search);
  form.elements.token.value = token;
  form.submit();
}

function drawGraphs(root) {
  if (typeof cytoscape === "undefined") return;
  for (const box of root.querySelectorAll(".dag[data-graph]")) {
    const graph = JSON.parse(box.dataset.graph);
    const elements = [
      ...graph.nodes.map((node) => ({ data: { ...node, label: `${node.id}\n${node.status}` } })),
      ...graph.edges.map((edge) => ({ data: { id: `${edge.source}->${edge.target}`, ...edge } })),
    ];
    const cy = cytoscape({
      container: box,
      elements,
      autoungrabify: true,
      userZoomingEnabled: false,
      maxZoom: 1.2,
      layout: { name: "dagre", rankDir: "LR", nodeSep: 24, rankSep: 60 },
      style: [
        {
          selector: "node",
          style: {
            label: "data(label)",
            "text-wrap": "wrap",
            "text-valign": "center",
            "font-size": 12,
            shape: "round-rectangle",
            width: 130,
            height: 44,
            "border-width": 1,
            "border-color": "#667085",
            "background-color": (node) => STATUS_COLOURS[node.data("status")] || "#ffffff",
          },
        },
        { selector: "node[href]", style: { cursor: "pointer" } },
        {
          selector: "edge",
          style: {
            width: 2,
            "line-color": "#98a2b3",
            "target-arrow-color": "#98a2b3",
            "target-arrow-shape": "triangle",
            "curve-style": "bezier",
          },
        },
      ],
    });
    cy.on("tap", "node", (event) => {
      const href = event.target.data("href");
      if (href) window.location.assign(href);
    });
    box.dataset.drawn = graph.nodes.map((node) => `${node.id}:${node.status}`).join(",");
  }
}

const CHART_LINES = [
  { key: "started", label: "started", stroke: "#2e90fa" },
  { key: "succeeded", label: "succeeded", stroke: "#12b76a" },
  { key: "failed", label: "failed or ended otherwise", stroke: "#f04438" },
];

function drawCharts(root) {
  if (typeof uPlot === "undefined") return;
  for (const box of root.querySelectorAll(".chart[data-chart]")) {
    const chart = JSON.parse(box.dataset.chart);
    box.replaceChildren();
    new uPlot(
      {
        width: Math.max(320, box.clientWidth),
        height: 200,
        scales: { y: { range: (_, min, max) => [0, Math.max(1, max)] } },
        series: [{}, ...CHART_LINES.map(({ label, stroke }) => ({ label, stroke, width: 2 }))],
        axes: [{}, { label: "runs per minute", size: 60 }],
      },
      [chart.at, ...CHART_LINES.map(({ key }) => chart[key])],
      box,
    );
    box.dataset.drawn = CHART_LINES.map(({ key }) => chart[key].reduce((a, b) => a + b, 0)).join(",");
  }
}

function draw(root) {
  drawGraphs(root);
  drawCharts(root);
}

document.addEventListener("DOMContentLoaded", () => {
  signInFromLink();
  draw(document);
});
document.addEventListener("htmx:afterSwap", (event) => draw(event.target));

// A live refresh would untick what the user ticked: the runs table holds still while any run
// is ticked.
document.addEventListener("htmx:beforeRequest", (event) => {
  if (event.detail.elt.id === "runs" && document.querySelector("input[name=run_id]:checked")) {
    event.preventDefault();
  }
});
// Changing every run a filter matches asks first.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
});
document.addEventListener("change", (event) => {
  if (event.target.id !== "tick-all") return;
  for (const box of document.querySelectorAll("input[name=run_id]")) {
    box.checked = event.target.checked;
  }
});
