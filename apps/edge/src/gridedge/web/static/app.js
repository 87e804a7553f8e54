// gridedge's local page: live updates over Server-Sent Events, and the firmware upload.
// Plain JavaScript, no library; every HTML fragment it inserts was escaped by the unit.
(function () {
  "use strict";
  var body = document.body;
  var view = body.getAttribute("data-live");
  var meter = body.getAttribute("data-meter");
  var badge = document.getElementById("live");

  function show(text, kind) {
    if (badge) { badge.textContent = text; badge.className = kind; }
  }

  function setCells(root, cells) {
    for (var key in cells) {
      var el = root.querySelector('[data-c="' + key + '"]');
      if (el && key !== "id") { el.textContent = cells[key]; }
    }
  }

  // A meter the table does not show yet (it joined since the page loaded): added at the end
  // while the page has room for it (the unit says how much: data-add), counted always.
  function addRow(row) {
    var table = document.getElementById("meters");
    if (!table) { return; }
    var room = Number(table.getAttribute("data-add") || "-1");
    if (room < 0) { return; }
    var count = document.getElementById("meter-count");
    if (count) { count.textContent = String(Number(count.textContent) + 1); }
    if (room <= 0) { return; }
    table.setAttribute("data-add", String(room - 1));
    var tr = document.createElement("tr");
    tr.id = "m-" + row.id;
    table.querySelectorAll("thead th[data-c]").forEach(function (th) {
      var key = th.getAttribute("data-c");
      var td = document.createElement("td");
      td.setAttribute("data-c", key);
      if (key === "id") {
        var a = document.createElement("a");
        a.href = "/meters/" + row.id;
        a.textContent = row.cells.id;
        td.appendChild(a);
      } else {
        td.textContent = row.cells[key] || "";
      }
      tr.appendChild(td);
    });
    table.tBodies[0].appendChild(tr);
  }

  function handlers(source) {
    source.addEventListener("dash", function (e) {
      var values = JSON.parse(e.data);
      for (var key in values) {
        var el = document.querySelector('[data-k="' + key + '"]');
        if (el) { el.textContent = values[key]; }
      }
    });
    source.addEventListener("meters", function (e) {
      JSON.parse(e.data).forEach(function (row) {
        var tr = document.getElementById("m-" + row.id);
        if (tr) { setCells(tr, row.cells); } else { addRow(row); }
      });
    });
    source.addEventListener("meter", function (e) {
      var m = JSON.parse(e.data);
      setCells(document.getElementById("facts"), m.cells);
      document.getElementById("chart").innerHTML = m.chart;
      document.getElementById("records").innerHTML = m.records;
      document.getElementById("events").innerHTML = m.events;
    });
  }

  // EventSource retries by itself after a network error; after an HTTP error (a unit that
  // is restarting may answer 502 or 503 through a proxy) it gives up, so start it again.
  function connect() {
    var url = "/events?view=" + encodeURIComponent(view) + (meter ? "&meter=" + meter : "");
    var source = new EventSource(url);
    handlers(source);
    source.onopen = function () { show("live", "ok"); };
    source.onerror = function () {
      show("reconnecting…", "warn");
      if (source.readyState === EventSource.CLOSED) { setTimeout(connect, 2000); }
    };
  }

  if (view && window.EventSource) { connect(); }

  var upload = document.getElementById("upload");
  if (upload) {
    upload.addEventListener("submit", function (e) {
      e.preventDefault();
      var file = upload.querySelector("input[type=file]").files[0];
      var result = document.getElementById("upload-result");
      var bar = upload.querySelector("progress");
      if (!file) { return; }
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/firmware/upload");
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader("X-CSRF-Token", upload.getAttribute("data-csrf"));
      xhr.setRequestHeader("X-Bundle-Name", file.name);
      xhr.upload.onprogress = function (p) {
        if (p.lengthComputable) { bar.hidden = false; bar.max = p.total; bar.value = p.loaded; }
      };
      xhr.onload = function () {
        bar.hidden = true;
        result.textContent = xhr.responseText;
        if (xhr.status === 200) { setTimeout(function () { location.reload(); }, 1500); }
      };
      xhr.onerror = function () { result.textContent = "upload failed: connection lost"; };
      xhr.send(file);
    });
  }
})();
