// bosun console: keeps pages current and streams logs over server-sent events, and reads
// an uploaded kubeconfig into the sign-in form. Everything else is plain HTML forms.
(function () {
  "use strict";

  function banner(text) {
    var p = document.getElementById("live-problem");
    if (!p) {
      p = document.createElement("p");
      p.id = "live-problem";
      p.className = "error";
      document.body.insertBefore(p, document.getElementById("main"));
    }
    p.textContent = text;
  }

  function follow(pre) {
    var es = new EventSource(pre.dataset.logs);
    es.onmessage = function (e) {
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.appendChild(document.createTextNode(e.data + "\n"));
      while (pre.childNodes.length > 2000) pre.removeChild(pre.firstChild);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    };
    es.addEventListener("problem", function (e) {
      pre.appendChild(document.createTextNode("[" + e.data + "]\n"));
    });
    es.addEventListener("end", function () { es.close(); });
  }

  var main = document.getElementById("main");
  if (main) main.querySelectorAll("pre[data-logs]").forEach(follow);

  if (main && main.dataset.live && window.EventSource) {
    var es = new EventSource(main.dataset.live);
    es.addEventListener("main", function (e) {
      var a = document.activeElement;
      if (a && main.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT")) return;
      var panes = {};
      main.querySelectorAll("pre[data-logs]").forEach(function (p) { panes[p.dataset.logs] = p; });
      main.innerHTML = e.data;
      main.querySelectorAll("pre[data-logs]").forEach(function (p) {
        if (panes[p.dataset.logs]) p.replaceWith(panes[p.dataset.logs]); else follow(p);
      });
      var old = document.getElementById("live-problem");
      if (old) old.remove();
      main.dataset.updated = String(Date.now());
    });
    es.addEventListener("problem", function (e) { banner(e.data); });
    es.addEventListener("signin", function () {
      es.close();
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    });
  }

  var file = document.getElementById("kubeconfig-file");
  if (file) {
    file.addEventListener("change", function () {
      var f = file.files[0];
      if (!f) return;
      var r = new FileReader();
      r.onload = function () { document.getElementById("kubeconfig").value = r.result; };
      r.readAsText(f);
    });
  }
})();
