// The dashboard page, whole: markup, style and script in one document, so vsa serves it with nothing fetched from
// elsewhere (no CDN, no files beside the binary). It draws the array as the seed draws it, top to bottom: the front
// end's LUNs, the engines and their director pairs, global memory, the memory services, the drives; it follows the
// event stream (one frame a second) and sends the buttons' control requests with the token from its URL.
enum DashboardPage {
    static let html = #"""
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>vsa dashboard</title>
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <style>
        :root { --bg:#0f1419; --panel:#182029; --line:#2a3642; --text:#d8e0e8; --dim:#8a98a6; --ok:#3fb950; --warn:#d29922; --bad:#f85149; --accent:#58a6ff; }
        * { box-sizing:border-box; }
        body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif; background:var(--bg); color:var(--text); }
        header { display:flex; gap:16px; align-items:center; padding:12px 20px; border-bottom:1px solid var(--line); flex-wrap:wrap; }
        header h1 { font-size:18px; margin:0; }
        .badge { padding:2px 10px; border-radius:10px; font-weight:600; font-size:12px; text-transform:uppercase; }
        .s-optimal,.s-online { background:#12361f; color:var(--ok); } .s-rebuilding,.s-stopping { background:#3a2d0c; color:var(--warn); }
        .s-degraded { background:#3a2d0c; color:var(--warn); } .s-failed,.s-missing,.s-stopped { background:#3d1414; color:var(--bad); }
        main { padding:16px 20px; display:grid; gap:16px; }
        section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
        section h2 { font-size:13px; margin:0 0 10px; color:var(--dim); text-transform:uppercase; letter-spacing:.06em; }
        .row { display:flex; gap:12px; flex-wrap:wrap; }
        .card { border:1px solid var(--line); border-radius:6px; padding:8px 10px; min-width:170px; background:#121a22; }
        .card .title { font-weight:600; display:flex; justify-content:space-between; gap:8px; align-items:center; }
        .kv { color:var(--dim); font-size:12px; } .kv b { color:var(--text); font-weight:500; }
        .engine { border:1px dashed var(--line); border-radius:8px; padding:8px; }
        .engine > .label { color:var(--dim); font-size:12px; margin-bottom:6px; }
        .pair { display:flex; gap:6px; align-items:stretch; } .pair .link { align-self:center; color:var(--dim); }
        button { background:#23303d; color:var(--text); border:1px solid var(--line); border-radius:5px; padding:3px 8px; font-size:12px; cursor:pointer; margin:4px 4px 0 0; }
        button:hover { border-color:var(--accent); } button.danger { border-color:#5c2323; } button.danger:hover { border-color:var(--bad); }
        .bar { height:14px; background:#0b1015; border:1px solid var(--line); border-radius:7px; overflow:hidden; display:flex; margin:6px 0; }
        .bar > div { height:100%; } .bar .used { background:#2f5d8a; } .bar .wp { background:var(--warn); } .bar .mir { background:#8957e5; } .bar .done { background:var(--accent); }
        table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
        th,td { text-align:right; padding:3px 8px; border-bottom:1px solid var(--line); } th:first-child,td:first-child { text-align:left; }
        th { color:var(--dim); font-weight:500; font-size:12px; }
        canvas { width:100%; height:160px; background:#0b1015; border:1px solid var(--line); border-radius:6px; }
        #result { min-height:20px; font-size:13px; } #result.err { color:var(--bad); } #result.ok { color:var(--ok); }
        #conn { font-size:12px; color:var(--dim); } .notes { font-size:12px; color:var(--dim); max-height:140px; overflow:auto; }
        .legend span { margin-right:12px; font-size:12px; } .missing-token { padding:40px; font-size:16px; }
        </style></head>
        <body>
        <header><h1>vsa</h1><span id="array-name"></span><span id="array-state" class="badge"></span><span id="capacity" class="kv"></span>
        <span style="flex:1"></span><span id="conn">connecting…</span></header>
        <main id="main">
        <section><h2>Front end: LUNs</h2>
          <table id="luns"><thead><tr><th>LUN</th><th>size</th><th>reads/s</th><th>writes/s</th><th>fsyncs/s</th><th>read MB/s</th><th>write MB/s</th><th>read p99</th><th>write p99</th><th>errors</th></tr></thead><tbody></tbody></table>
          <div class="legend" style="margin-top:8px"><span style="color:#58a6ff">■ IOPS (all LUNs)</span><span style="color:#d29922">■ read p99</span><span style="color:#f778ba">■ write p99</span></div>
          <canvas id="chart" width="1200" height="160"></canvas>
        </section>
        <section><h2>Engines and director pairs</h2><div id="engines" class="row"></div></section>
        <section><h2>Global memory</h2><div id="memory"></div></section>
        <section><h2>Memory services</h2><div id="services" class="row"></div></section>
        <section><h2>Back end: drives</h2>
          <div id="drives" class="row"></div>
          <div id="rebuild"></div><div id="scrub"></div>
          <div><button data-action="scrub" data-words='["scrub","0","0"]'>scrub</button><button data-action="scrub-repair" data-words='["scrub","1","0"]'>scrub and repair</button><button data-words='["flush"]'>flush</button></div>
        </section>
        <section><h2>Injected faults</h2><table id="faults"><thead><tr><th>id</th><th>target</th><th>kind</th><th>state</th><th>hits</th><th>seed</th><th>detail</th><th></th></tr></thead><tbody></tbody></table>
          <button data-action="clear-faults" data-words='["inject-clear",""]'>clear all</button><div id="powercut"></div></section>
        <section><h2>What happened</h2><div id="result"></div><div id="notes" class="notes"></div></section>
        </main>
        <script>
        "use strict";
        const token = new URLSearchParams(location.search).get("token") || "";
        const history = [];
        let lastFrame = null;
        const $ = (id) => document.getElementById(id);
        const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));
        function size(b) { const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0; while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; } return (i ? b.toFixed(1) : b) + " " + u[i]; }
        function ms(us) { return us ? (us >= 1000 ? (us / 1000).toFixed(us >= 10000 ? 0 : 1) + " ms" : us.toFixed(0) + " µs") : "–"; }
        function num(x) { return x >= 100 ? Math.round(x).toLocaleString() : (x ? x.toFixed(1) : "0"); }
        function badge(state) { return `<span class="badge s-${esc(state)}" data-state="${esc(state)}">${esc(state)}</span>`; }

        async function act(words) {
          const r = $("result");
          r.className = ""; r.textContent = words[0] + "…";
          try {
            const res = await fetch("/api/request", { method: "POST", headers: { "X-VSA-Token": token }, body: words.join("\t") + "\n" });
            const text = await res.text();
            if (res.ok) { const j = JSON.parse(text); r.className = "ok"; r.textContent = words[0] + ": done" + (j.reply ? " — " + j.reply.trim().replace(/\t/g, " ") : ""); }
            else { r.className = "err"; r.textContent = words[0] + ": " + text.trim(); }
          } catch (e) { r.className = "err"; r.textContent = words[0] + ": " + e; }
        }
        // One listener for every button: the page is drawn anew each second, so buttons are found when clicked.
        document.addEventListener("click", (e) => { const b = e.target.closest("button[data-words]"); if (b) act(JSON.parse(b.dataset.words)); });

        function drawEngines(s, f) {
          const engines = {};
          for (const d of s.directors) (engines[d.engine] ||= []).push(d);
          $("engines").innerHTML = Object.keys(engines).map((e) => `<div class="engine"><div class="label">engine ${e}</div><div class="pair">` +
            engines[e].map((d) => { const r = f.directors[d.id] || {}; return `<div class="card" data-director="${esc(d.id)}">
              <div class="title">director ${esc(d.id)} ${badge(d.state)}</div>
              <div class="kv">acting for <b>${esc((d.actingFor || []).join(", ") || "–")}</b> · mirror to <b>${esc(d.mirrorTo)}</b></div>
              <div class="kv">req/s <b data-field="rps">${num(r.requestsPerSecond || 0)}</b> · queue <b>${d.queueDepth}</b> · msgs/s <b>${num(r.messagesPerSecond || 0)}</b></div>
              <div class="kv">write-pending <b>${d.writePendingSlots}</b> · mirrored here <b>${d.mirroredSlots}</b> · takeovers <b>${d.takeovers}</b></div>
              <button class="danger" data-action="fail-director" data-words='["director-fail","${esc(d.id)}"]'>fail</button><button data-action="restore-director" data-words='["director-restore","${esc(d.id)}"]'>restore</button><button data-words='["inject","director","${esc(d.id)}","slow","20000",""]'>slow 20 ms</button><button class="danger" data-words='["inject","director","${esc(d.id)}","hang",""]'>hang</button>
            </div>`; }).join('<span class="link">⇄</span>') + `</div></div>`).join("");
        }

        function drawMemory(s) {
          const c = s.cache, total = Math.max(1, c.slotCount);
          const mirrored = s.directors.reduce((a, d) => a + d.mirroredSlots, 0);
          const pct = (x) => (100 * x / total).toFixed(2) + "%";
          $("memory").innerHTML = `<div class="bar" title="slots"><div class="wp" style="width:${pct(c.writePendingSlots)}"></div><div class="used" style="width:${pct(Math.max(0, c.usedSlots - c.writePendingSlots))}"></div><div class="mir" style="width:${pct(mirrored)}"></div></div>
            <div class="kv">slots <b>${c.usedSlots.toLocaleString()}</b> used of <b>${c.slotCount.toLocaleString()}</b> (${size(c.sizeBytes)}) · <span style="color:var(--warn)">write-pending</span> <b id="write-pending">${c.writePendingSlots}</b> (${size(c.dirtyBytes)}) · <span style="color:#8957e5">mirrored</span> <b>${mirrored}</b> · hit ratio <b>${(100 * c.hitRatio).toFixed(1)}%</b> · destaged stripes <b>${c.destagedStripes.toLocaleString()}</b></div>`;
        }

        function drawServices(s, f) {
          let copies = 0, parity = 0;
          for (const k in f.directors) { copies += f.directors[k].copiesPerSecond; parity += f.directors[k].parityOpsPerSecond; }
          const m = s.memoryServices || {};
          $("services").innerHTML = `<div class="card"><div class="title">copy / DMA</div><div class="kv">copies/s <b>${num(copies)}</b> · total <b>${size(m.copyBytes || 0)}</b></div></div>
            <div class="card"><div class="title">XOR and P+Q parity</div><div class="kv">ops/s <b>${num(parity)}</b> · total <b>${size(m.parityBytes || 0)}</b></div></div>
            <div class="card"><div class="title">CRC</div><div class="kv">ops <b>${(m.crcOps || 0).toLocaleString()}</b> · total <b>${size(m.crcBytes || 0)}</b></div></div>`;
        }

        function drawDrives(s, f) {
          $("drives").innerHTML = s.drives.map((d) => { const r = f.drives[String(d.index)] || {}; const name = d.path.split("/").pop();
            const member = d.role === "member";
            return `<div class="card" data-drive="${d.index}">
              <div class="title">${d.index} · ${esc(name)} ${badge(d.state)}</div>
              <div class="kv">${esc(d.role)} · ${size(d.sizeBytes)} · errors <b>${d.errors}</b></div>` + (member ? `
              <div class="kv">ops/s <b>${num((r.readsPerSecond || 0) + (r.writesPerSecond || 0))}</b> · read p99 <b>${ms(r.readP99Micros)}</b> · write p99 <b>${ms(r.writeP99Micros)}</b></div>
              <button class="danger" data-action="fail-drive" data-words='["drive-fail","${d.index}","0"]'>fail</button><button data-action="replace-drive" data-words='["drive-replace","${d.index}","","0","0"]'>replace (spare)</button>
              <button data-words='["inject","drive","${d.index}","latency","20000","0","0","0",""]'>+20 ms</button><button data-words='["inject","drive","${d.index}","errors","1","1","","","1000",""]'>errors</button><button class="danger" data-words='["inject","drive","${d.index}","hang",""]'>hang</button><button data-words='["inject","drive","${d.index}","rot","16",""]'>rot 16</button>` : "") + `</div>`; }).join("");
          const rb = s.rebuild;
          $("rebuild").innerHTML = rb ? `<div class="kv">rebuild of member <b>${rb.member}</b> onto ${esc(rb.drive)}: <b id="rebuild-state">${esc(rb.state)}</b> <b id="rebuild-percent">${rb.percent.toFixed(1)}%</b> · ${size(rb.bytesPerSecond)}/s${rb.etaSeconds != null ? " · " + rb.etaSeconds.toFixed(0) + " s left" : ""}</div><div class="bar"><div class="done" id="rebuild-bar" style="width:${rb.percent}%"></div></div>` : `<div class="kv">no rebuild</div>`;
          const sc = s.scrub;
          $("scrub").innerHTML = sc ? `<div class="kv">scrub${sc.repair ? " and repair" : ""}: <b id="scrub-state">${esc(sc.state)}</b> <b>${sc.percent.toFixed(1)}%</b> · ${sc.mismatches} mismatches, ${sc.repaired} repaired</div><div class="bar"><div class="done" style="width:${sc.percent}%"></div></div>` : "";
        }

        function drawLUNs(s, f) {
          $("luns").tBodies[0].innerHTML = s.luns.map((l) => { const r = f.luns[l.name] || {};
            return `<tr data-lun="${esc(l.name)}"><td>${esc(l.name)}${l.thin ? " (thin)" : ""}</td><td>${size(l.sizeBytes)}</td><td data-field="reads">${num(r.readsPerSecond || 0)}</td><td data-field="writes">${num(r.writesPerSecond || 0)}</td><td>${num(r.flushesPerSecond || 0)}</td>
              <td>${((r.readBytesPerSecond || 0) / 1e6).toFixed(1)}</td><td>${((r.writtenBytesPerSecond || 0) / 1e6).toFixed(1)}</td><td>${ms(r.readP99Micros)}</td><td>${ms(r.writeP99Micros)}</td><td>${l.hostErrors || 0}</td></tr>`; }).join("");
          let iops = 0, rp = 0, wp = 0;
          for (const k in f.luns) { const r = f.luns[k]; iops += r.readsPerSecond + r.writesPerSecond + r.flushesPerSecond; rp = Math.max(rp, r.readP99Micros); wp = Math.max(wp, r.writeP99Micros); }
          history.push({ iops, rp, wp }); while (history.length > 120) history.shift();
          drawChart();
        }

        function drawChart() {
          const c = $("chart"), g = c.getContext("2d"), w = c.width, h = c.height;
          g.clearRect(0, 0, w, h);
          const line = (key, color, max) => { g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
            history.forEach((p, i) => { const x = w - (history.length - 1 - i) * (w / 119), y = h - 6 - (h - 20) * (p[key] / max); i ? g.lineTo(x, y) : g.moveTo(x, y); }); g.stroke(); };
          const maxI = Math.max(1, ...history.map((p) => p.iops)), maxL = Math.max(1, ...history.map((p) => Math.max(p.rp, p.wp)));
          line("iops", "#58a6ff", maxI); line("rp", "#d29922", maxL); line("wp", "#f778ba", maxL);
          g.fillStyle = "#8a98a6"; g.font = "12px system-ui"; g.fillText(`${num(maxI)} IOPS · ${ms(maxL)} (top)`, 8, 14);
        }

        function drawFaults(s, f) {
          $("faults").tBodies[0].innerHTML = (s.faults || []).map((x) => `<tr data-fault="${x.id}"><td>${x.id}</td><td>${x.member != null ? "member " + x.member : "director " + esc(x.director)}</td><td>${esc(x.kind)}</td><td>${esc(x.state)}</td><td>${x.hits}</td><td>${esc(f.faultSeeds[String(x.id)] || x.seed)}</td><td>${esc(x.detail)}</td><td><button data-words='["inject-clear","${x.id}"]'>clear</button></td></tr>`).join("");
        }

        function drawPowerCut(s) {
          const p = s.powerCut;
          $("powercut").innerHTML = p ? `<div class="kv" style="margin-top:8px">host's volatile write cache (-o powercut): <b id="unsynced">${size(p.unsyncedBytes)}</b> unsynced of ${size(p.capacityBytes)} · power cuts <b>${p.cuts.length}</b></div>
            <button class="danger" data-action="powercut" data-words='["powercut","0",""]'>power cut</button><button class="danger" data-action="powercut-torn" data-words='["powercut","1",""]'>power cut (torn)</button>`
            : `<div class="kv" style="margin-top:8px">power cut: mount with -o powercut to arm it</div>`;
        }

        function draw(f) {
          const s = f.status;
          lastFrame = f;
          $("array-name").textContent = `${s.array.raidLevel} · ${s.array.memberCount} members, ${s.array.spareCount} spares · ${s.daemon ? s.daemon.mountpoint : s.array.directory}`;
          const st = $("array-state"); st.className = "badge s-" + s.array.state; st.textContent = s.array.state; st.dataset.state = s.array.state;
          $("capacity").textContent = `${size(s.array.capacityBytes)} capacity, ${size(s.array.freeBytes)} free`;
          drawLUNs(s, f); drawEngines(s, f); drawMemory(s); drawServices(s, f); drawDrives(s, f); drawFaults(s, f); drawPowerCut(s);
          $("notes").innerHTML = s.messages.slice(-12).reverse().map((m) => `<div>${esc(m)}</div>`).join("");
          $("conn").textContent = "live · " + new Date(f.seconds * 1000).toLocaleTimeString();
        }

        if (!token) {
          $("main").innerHTML = `<div class="missing-token">This dashboard needs its token. <code>vsa dashboard TARGET</code> prints the URL that carries it.</div>`;
          $("conn").textContent = "no token";
        } else {
          fetch("/api/frame?token=" + encodeURIComponent(token)).then(async (res) => {
            if (!res.ok) { $("main").innerHTML = `<div class="missing-token" id="refused">${esc((await res.text()).trim())}</div>`; $("conn").textContent = "refused"; return; }
            draw(await res.json());
            const events = new EventSource("/api/events?token=" + encodeURIComponent(token));
            events.onmessage = (e) => draw(JSON.parse(e.data));
            events.onerror = () => { $("conn").textContent = "reconnecting…"; };
          });
        }
        </script></body></html>
        """#
}
