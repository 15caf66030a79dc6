/* Distillery dashboard: keeps the server-rendered pages live by calling the /v1 API with
 * the sign-in cookie. Everything the API says goes into the page as text (textContent,
 * text nodes, SVG attributes), never as HTML. Formatting matches app/web/render.py. */
"use strict";

(function () {
  const CSRF_HEADER = "X-Distillery-CSRF";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const JOB_POLL_MS = 2000;
  const LIST_POLL_MS = 3000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---- API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** Call the API; resolves to the JSON body, rejects with the API's error.message. */
  async function api(path, options = {}) {
    const headers = Object.assign({ Accept: "application/json", [CSRF_HEADER]: "1" }, options.headers);
    const response = await fetch(path, Object.assign({}, options, { credentials: "same-origin", headers }));
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      if (response.status === 401) {
        // The key was revoked or the cookie is gone: back to the sign-in form.
        window.location.assign("/?next=" + encodeURIComponent(window.location.pathname));
      }
      const message = body && body.error && body.error.message
        ? body.error.message
        : `The server answered ${response.status} ${response.statusText}.`.replace(" .", ".");
      throw new ApiError(response.status, message);
    }
    return body;
  }

  // ---- formatting (same output as the Jinja filters in render.py) ---------------------

  function formatTime(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    return date.toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function formatPercent(value, digits = 2) {
    return value === null || value === undefined ? "—" : (value * 100).toFixed(digits) + "%";
  }

  function formatCount(value) {
    return value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US");
  }

  function formatBytes(value) {
    if (value === null || value === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB"];
    let size = Number(value);
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) {
      size /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
  }

  function formatFixed(value, digits) {
    return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
  }

  function studentLabel(spec) {
    const student = (spec && spec.student) || {};
    const arch = String(student.arch || "?");
    const widths = arch === "cnn" ? student.channels : student.hidden;
    return Array.isArray(widths) && widths.length ? `${arch} (${widths.join(", ")})` : arch;
  }

  // ---- DOM helpers -------------------------------------------------------------------

  /** An element with attributes and children; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    node.append(...children.filter((child) => child !== null && child !== undefined));
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    const node = document.getElementById(id);
    if (node) node.textContent = text;
  }

  function badge(status, large) {
    return el("span", { class: `badge badge-${status}` + (large ? " badge-large" : "") }, status);
  }

  function progressCell(progress) {
    return el(
      "div",
      { class: "progress-cell" },
      el("progress", { max: 1, value: progress }),
      el("span", {}, formatPercent(progress, 0)),
    );
  }

  // ---- jobs page ---------------------------------------------------------------------

  function jobRow(job) {
    const accuracy = job.status === "succeeded" && job.result
      ? formatPercent(job.result.student_accuracy)
      : "—";
    return el(
      "tr",
      { "data-status": job.status },
      el("td", {}, el("a", { class: "mono", href: "/jobs/" + encodeURIComponent(job.id) }, job.id)),
      el("td", {}, badge(job.status)),
      el("td", {}, progressCell(job.progress)),
      el("td", { class: "student" }, studentLabel(job.spec)),
      el("td", { class: "created" }, formatTime(job.created_at)),
      el("td", { class: "num" }, accuracy),
    );
  }

  function initJobs() {
    const table = document.getElementById("jobs");
    if (!table) return;
    const body = table.tBodies[0];
    const unfinished = () => Array.from(body.rows).some((row) => !TERMINAL.has(row.dataset.status));
    async function refresh() {
      const params = new URLSearchParams({ limit: table.dataset.limit || "20" });
      if (table.dataset.after) params.set("after", table.dataset.after);
      try {
        const page = await api("/v1/jobs?" + params.toString());
        body.replaceChildren(...page.data.map(jobRow));
      } catch (_) {
        // A failed refresh keeps the table as it was; the next one may succeed.
      }
      if (unfinished()) window.setTimeout(refresh, LIST_POLL_MS);
    }
    if (unfinished()) window.setTimeout(refresh, LIST_POLL_MS);
  }

  // ---- charts ------------------------------------------------------------------------

  /** Round tick positions covering [lo, hi]: steps of 1, 2 or 5 times a power of ten. */
  function niceTicks(lo, hi, count, integer) {
    const span = hi - lo || Math.abs(hi) || 1;
    const raw = span / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / magnitude;
    let step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
    if (integer) step = Math.max(1, Math.round(step));
    const start = Math.floor(lo / step + 1e-9) * step;
    const end = Math.max(Math.ceil(hi / step - 1e-9) * step, start + step);
    const ticks = [];
    for (let value = start; value <= end + step / 2; value += step) ticks.push(Number(value.toPrecision(12)));
    return { lo: start, hi: end, step, ticks };
  }

  function tickLabel(value, step) {
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    return value.toFixed(decimals);
  }

  /**
   * A line chart in an <svg viewBox="0 0 560 260">.
   * points: [[step, value], ...]; options: {yDomain(values) -> [lo, hi], yFormat(v, step),
   * reference: {value, label} or null, dots: bool, empty: placeholder text}.
   */
  function drawChart(target, points, options) {
    const width = 560;
    const height = 260;
    const margin = { left: 54, right: 16, top: 16, bottom: 38 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    target.replaceChildren();
    if (!points.length) {
      target.append(
        svg("text", { class: "placeholder", x: width / 2, y: height / 2, "text-anchor": "middle" }, options.empty),
      );
      return;
    }
    const values = points.map((p) => p[1]);
    const reference = options.reference && Number.isFinite(options.reference.value) ? options.reference : null;
    if (reference) values.push(reference.value);
    const [yMin, yMax] = options.yDomain(values);
    const yAxis = niceTicks(yMin, yMax, 5, false);
    const xAxis = niceTicks(0, Math.max(...points.map((p) => p[0]), 1), 6, true);
    const x = (step) => margin.left + ((step - xAxis.lo) / (xAxis.hi - xAxis.lo)) * plotW;
    const y = (value) => margin.top + (1 - (value - yAxis.lo) / (yAxis.hi - yAxis.lo)) * plotH;

    for (const tick of yAxis.ticks) {
      target.append(svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(tick), y2: y(tick) }));
      target.append(
        svg("text", { class: "tick", x: margin.left - 8, y: y(tick) + 4, "text-anchor": "end" }, options.yFormat(tick, yAxis.step)),
      );
    }
    for (const tick of xAxis.ticks) {
      target.append(
        svg("text", { class: "tick", x: x(tick), y: height - margin.bottom + 16, "text-anchor": "middle" }, tickLabel(tick, xAxis.step)),
      );
    }
    target.append(svg("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: height - margin.bottom, y2: height - margin.bottom }));
    target.append(svg("line", { class: "axis", x1: margin.left, x2: margin.left, y1: margin.top, y2: height - margin.bottom }));
    target.append(svg("text", { class: "axis-title", x: width - margin.right, y: height - 6, "text-anchor": "end" }, "step"));

    if (reference) {
      const ry = y(reference.value);
      target.append(svg("line", { class: "reference", x1: margin.left, x2: width - margin.right, y1: ry, y2: ry }));
      target.append(
        svg("text", { class: "reference-label", x: width - margin.right - 4, y: ry - 6, "text-anchor": "end" }, reference.label),
      );
    }
    const coords = points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
    target.append(svg("polyline", { class: "series", points: coords.join(" ") }));
    if (options.dots) {
      for (const p of points) target.append(svg("circle", { class: "dot", cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 3 }));
    }
  }

  function lossDomain(values) {
    return [Math.min(0, ...values), Math.max(...values) * 1.05];
  }

  function accuracyDomain(values) {
    const low = Math.min(...values);
    return [Math.max(0, Math.floor((low - 0.02) * 10) / 10), 1];
  }

  function series(metrics, name) {
    return metrics.filter((m) => m.name === name).map((m) => [m.step, m.value]);
  }

  // ---- job page ----------------------------------------------------------------------

  /** What the report's "accuracy" measures: a transformer job names its own measure. */
  function qualityLabel(report) {
    const metric = report.kind === "transformer" && report.quality_metric ? String(report.quality_metric) : "accuracy";
    return metric.charAt(0).toUpperCase() + metric.slice(1);
  }

  /** Whether the teacher's own figure is a measurement (not agreement with itself). */
  function teacherIsMeasured(report) {
    return !(report.kind === "transformer" && report.task === "sentence_embedding");
  }

  function reportRows(report) {
    const t = report.teacher || {};
    const s = report.student || {};
    const teacherQuality = teacherIsMeasured(report) ? formatPercent(t.accuracy) : "— (the reference)";
    const models = [
      [qualityLabel(report), teacherQuality, formatPercent(s.accuracy), "accuracy"],
      ["Parameters", formatCount(t.parameters), formatCount(s.parameters), "parameters"],
      ["Serialized size", formatBytes(t.serialized_bytes), formatBytes(s.serialized_bytes), "bytes"],
      ["Latency, batch 1 (ms)", formatFixed(t.latency_ms_batch1, 3), formatFixed(s.latency_ms_batch1, 3), "latency"],
    ];
    const ppl = report.perplexity;
    const measured = report.kd_gain !== null && report.kd_gain !== undefined;
    let gain = "not measured (no baseline)";
    if (measured && ppl) gain = formatPercent(report.kd_gain) + " lower perplexity than the baseline";
    else if (measured) gain = (report.kd_gain >= 0 ? "+" : "") + (report.kd_gain * 100).toFixed(2) + " points";
    const summary = [
      [ppl ? "Next-token agreement" : "Agreement with teacher", formatPercent(report.agreement), "agreement"],
      ["Quality retained", formatPercent(report.quality_retained), "quality-retained"],
      ["Size reduction", formatPercent(report.size_reduction), "size-reduction"],
      ["Speed-up", report.speedup === null || report.speedup === undefined ? "—" : formatFixed(report.speedup, 2) + "×", "speedup"],
      ["KD gain", gain, "kd-gain"],
    ];
    if (ppl) {
      models.unshift(["Perplexity", formatFixed(ppl.teacher, 3), formatFixed(ppl.student, 3), "perplexity"]);
      if (ppl.baseline !== undefined) summary.push(["Baseline perplexity (no teacher)", formatFixed(ppl.baseline, 3), "baseline-perplexity"]);
      summary.push(["Method", report.method || "logits", "method"]);
      const cache = report.teacher_cache || {};
      if (typeof cache.bytes_per_token === "number") {
        summary.push(["Teacher cache per token", `${formatBytes(cache.bytes_per_token)} (dense ${formatBytes(cache.dense_bytes_per_token)})`, "cache-bytes"]);
      }
      const draft = report.speculative;
      if (draft && typeof draft.acceptance_rate === "number") {
        summary.push(["As the teacher's draft (speculative decoding)",
          `acceptance ${formatPercent(draft.acceptance_rate)}, speed-up ${formatFixed(draft.speedup, 2)}×` +
          (draft.identical ? ", tokens identical" : ", tokens differ"), "speculative"]);
      }
      const speed = report.generation_speed;
      if (speed && speed.teacher && speed.student) {
        const rate = (who) => `${formatFixed(who.batch_1, 0)} / ${formatFixed(who.batch_8, 0)}`;
        summary.push(["Generation tokens/s, batch 1 / 8 (teacher → student)",
          `${rate(speed.teacher)} → ${rate(speed.student)}`, "generation-speed"]);
      }
    }
    return { models, summary };
  }

  /** A causal LM's prompts with the teacher's and the student's completions. */
  function renderSamples(report) {
    const box = document.getElementById("report-samples");
    if (!box) return;
    const samples = Array.isArray(report.samples) ? report.samples : [];
    box.querySelector("tbody").replaceChildren(
      ...samples.map((s) => el("tr", {}, el("td", {}, s.prompt), el("td", {}, s.teacher), el("td", {}, s.student))),
    );
    box.hidden = samples.length === 0;
  }

  const VALIDATION_SOURCES = {
    x_test: "the dataset's x_test",
    x_val: "the dataset's x_val",
    split: "carved from the data",
    carved: "carved from the data",
    eval_file: "the evaluation file",
  };

  const VERDICT_BADGES = {
    kd_better: "Distillation helped",
    no_gain: "No significant gain",
    baseline_better: "Baseline is better",
  };

  /** The verdict in words: a badge, and a sentence with the test's figures. */
  function verdictText(report) {
    const verdict = report.verdict;
    if (!verdict) return null;
    if (!verdict.outcome) {
      return { badge: "No verdict", kind: "no_verdict", words: verdict.reason || "no baseline was measured" };
    }
    const gain = (report.kd_gain >= 0 ? "+" : "") + (report.kd_gain * 100).toFixed(2) + " points";
    const test = `McNemar p = ${formatFixed(verdict.p_value, 4)} on ${formatCount(verdict.samples)} held-out samples ` +
      `(${formatCount(verdict.student_only_correct)} right only with the teacher, ` +
      `${formatCount(verdict.baseline_only_correct)} only without)`;
    let words = `KD gain ${gain}; ${test}.`;
    if (verdict.outcome === "baseline_better") {
      words += verdict.kept === "baseline"
        ? " keep: best, so the student you download is the baseline."
        : ` The distilled student was kept (keep: distilled), giving up ${(verdict.lost * 100).toFixed(2)} points; set keep: best to keep the better one.`;
    }
    return { badge: VERDICT_BADGES[verdict.outcome], kind: verdict.outcome, words };
  }

  function renderVerdict(report) {
    const box = document.getElementById("report-verdict");
    const text = verdictText(report);
    box.hidden = !text;
    if (!text) return;
    const badge = document.getElementById("verdict-badge");
    badge.className = `badge badge-large badge-${text.kind}`;
    badge.textContent = text.badge;
    setText("verdict-words", text.words);
  }

  /** Where and on what the report's figures were measured, saying only what it knows. */
  function reportNote(report) {
    const validation = report.validation || {};
    const source = VALIDATION_SOURCES[validation.source] || validation.source;
    const held = report.evaluation ? "held-out evaluation samples" : "validation samples";
    const parts = [`Measured on ${formatCount(validation.samples)} ${held}`];
    if (source) parts.push(` (${source})`);
    if (report.device) parts.push(` on ${report.device}`);
    const budget = [];
    if (report.epochs !== undefined && report.epochs !== null) budget.push(`${formatCount(report.epochs)} epochs`);
    if (report.steps !== undefined && report.steps !== null) budget.push(`${formatCount(report.steps)} steps`);
    let note = parts.join("");
    if (budget.length) note += ": " + budget.join(", ");
    if (typeof report.train_seconds === "number") note += ` in ${formatFixed(report.train_seconds, 1)} s`;
    return note + ".";
  }

  function renderReport(report, artifacts, jobBase) {
    const { models, summary } = reportRows(report);
    document.querySelector("#report-models tbody").replaceChildren(
      ...models.map(([label, teacher, student, field]) =>
        el(
          "tr",
          {},
          el("th", { scope: "row" }, label),
          el("td", { class: "num", "data-field": `teacher-${field}` }, teacher),
          el("td", { class: "num", "data-field": `student-${field}` }, student),
        ),
      ),
    );
    document.querySelector("#report-summary tbody").replaceChildren(
      ...summary.map(([label, value, field]) =>
        el("tr", {}, el("th", { scope: "row" }, label), el("td", { class: "num", "data-field": field }, value)),
      ),
    );
    setText("report-note", reportNote(report));
    renderVerdict(report);
    renderSamples(report);
    if (Array.isArray(report.loss) && report.loss.length) setText("job-loss", report.loss.join(" + "));
    document.getElementById("artifacts").replaceChildren(
      ...artifacts.map((artifact) =>
        el(
          "li",
          {},
          el(
            "a",
            { href: `${jobBase}/artifacts/${encodeURIComponent(artifact.name)}`, download: artifact.name },
            artifact.name,
            el("span", { class: "size" }, formatBytes(artifact.bytes)),
          ),
        ),
      ),
    );
    document.getElementById("report").hidden = false;
  }

  function renderJobState(job) {
    const root = document.getElementById("job");
    root.dataset.status = job.status;
    document.getElementById("job-status").replaceWith(
      Object.assign(badge(job.status, true), { id: "job-status" }),
    );
    document.getElementById("job-progress").value = job.progress;
    setText("job-progress-text", formatPercent(job.progress, 0));
    setText("job-started", formatTime(job.started_at));
    setText("job-finished", formatTime(job.finished_at));
    const error = document.getElementById("job-error");
    error.hidden = !job.error;
    if (job.error) {
      setText("job-error-code", job.error.code);
      setText("job-error-message", job.error.message);
    }
    const waiting = document.getElementById("job-waiting");
    waiting.hidden = !job.waiting;
    waiting.textContent = job.waiting ? "Queued: " + job.waiting + "." : "";
    const cancel = document.getElementById("cancel");
    cancel.hidden = TERMINAL.has(job.status);
    if (job.status === "cancelling") cancel.disabled = true;
  }

  function eventItem(event) {
    return el(
      "li",
      { "data-kind": event.kind },
      el("time", { datetime: event.ts }, formatTime(event.ts)),
      el("span", { class: "kind" }, event.kind),
      el("span", { class: "message" }, event.message),
    );
  }

  function initJob() {
    const root = document.getElementById("job");
    const jobBase = "/v1/jobs/" + encodeURIComponent(root.dataset.jobId);
    const actionError = document.getElementById("action-error");
    const events = document.getElementById("events");
    let lastEventId = null;
    let teacherAccuracy = null;
    let reportShown = false;
    // A transformer job's teacher figure is known from its report only (for embeddings it
    // is agreement with itself, so no line is drawn).
    const transformer = root.hasAttribute("data-transformer");

    function showActionError(message) {
      actionError.textContent = message;
      actionError.hidden = !message;
    }

    document.getElementById("cancel").addEventListener("click", async (click) => {
      const button = click.currentTarget;
      button.disabled = true;
      showActionError("");
      try {
        renderJobState(await api(jobBase + "/cancel", { method: "POST" }));
      } catch (error) {
        showActionError(error.message);
        button.disabled = false;
      }
    });

    /** What an empty chart says: waiting while the job may still train, else why not. */
    function emptyText(status, waiting) {
      if (status === "failed") return "No data: the job failed before this was measured.";
      if (status === "cancelled") return "No data: the job was cancelled before this was measured.";
      if (status === "succeeded") return "No data was recorded.";
      return waiting;
    }

    function draw(metrics, status) {
      drawChart(document.getElementById("chart-loss"), series(metrics, "train_loss"), {
        yDomain: lossDomain,
        yFormat: tickLabel,
        reference: null,
        dots: false,
        empty: emptyText(status, "Waiting for the first training steps…"),
      });
      const reference = teacherAccuracy === null
        ? null
        : { value: teacherAccuracy, label: "teacher " + formatPercent(teacherAccuracy) };
      drawChart(document.getElementById("chart-accuracy"), series(metrics, "val_accuracy"), {
        yDomain: accuracyDomain,
        yFormat: (value) => (value * 100).toFixed(0) + "%",
        reference,
        dots: true,
        empty: emptyText(status, "Measured at the end of each epoch…"),
      });
      // The legend names the teacher only when its line is drawn.
      const accuracyPoints = series(metrics, "val_accuracy").length;
      document.getElementById("legend-teacher").hidden = !(reference && accuracyPoints);
    }

    async function tick() {
      const job = await api(jobBase);
      renderJobState(job);
      // Read metrics and events after the job: once it has ended, nothing more is written.
      const metrics = await api(jobBase + "/metrics");
      const fresh = await api(jobBase + "/events" + (lastEventId === null ? "" : "?after=" + lastEventId));
      for (const event of fresh.data) {
        events.append(eventItem(event));
        lastEventId = event.id;
        if (!transformer && event.data && typeof event.data.teacher_accuracy === "number") {
          teacherAccuracy = event.data.teacher_accuracy;
        }
      }
      if (fresh.data.length) events.scrollTop = events.scrollHeight;
      if (!transformer && job.result && typeof job.result.teacher_accuracy === "number") {
        teacherAccuracy = job.result.teacher_accuracy;
      }
      if (job.status === "succeeded" && !reportShown) {
        const [report, artifacts] = await Promise.all([api(jobBase + "/report"), api(jobBase + "/artifacts")]);
        teacherAccuracy = teacherIsMeasured(report) ? report.teacher.accuracy : null;
        if (report.kind === "transformer") setText("accuracy-title", "Validation " + qualityLabel(report).toLowerCase());
        renderReport(report, artifacts.data, jobBase);
        reportShown = true;
      }
      draw(metrics.data, job.status);
      return TERMINAL.has(job.status);
    }

    async function poll() {
      let finished = false;
      try {
        finished = await tick();
        showActionError("");
      } catch (error) {
        if (error.status === 404) finished = true;
        showActionError("Could not refresh: " + error.message);
      }
      root.dataset.live = finished ? "done" : "polling";
      if (!finished) window.setTimeout(poll, JOB_POLL_MS);
    }
    poll();
  }

  // ---- new job page ------------------------------------------------------------------

  const LIMITS = {
    temperature: { label: "Temperature", min: 0, minExclusive: true, max: 100 },
    alpha: { label: "Alpha", min: 0, max: 1 },
    epochs: { label: "Epochs", min: 1, max: 10000, integer: true },
    "batch-size": { label: "Batch size", min: 1, max: 65536, integer: true },
    "learning-rate": { label: "Learning rate", min: 0, minExclusive: true, max: 10 },
    seed: { label: "Seed", min: 0, max: 2 ** 31 - 1, integer: true },
    "cnn-hidden": { label: "Dense hidden", min: 1, max: 65536, integer: true },
    "num-layers": { label: "Number of layers", min: 1, max: 1024, integer: true },
    "top-k": { label: "Top k", min: 1, max: 4096, integer: true },
    lmbda: { label: "Lambda", min: 0, max: 1 },
    beta: { label: "Beta", min: 0, max: 1 },
    "max-new-tokens": { label: "Max new tokens", min: 1, max: 4096, integer: true },
    "generation-temperature": { label: "Generation temperature", min: 0, max: 100 },
    "max-length": { label: "Max length", min: 4, max: 8192, integer: true },
  };
  // Students built from a Hugging Face teacher (worker/kd/spec.py TRANSFORMER_ARCHS).
  const TRANSFORMER_ARCHS = new Set(["from_teacher", "hf_file"]);
  // The method a transformer job gets when the form sends none; it has no fields of its own.
  const DEFAULT_METHOD = "logits";

  /** The field's number; with `optional`, undefined when left blank (the server decides). */
  function readNumber(id, problems, optional = false) {
    const input = document.getElementById(id);
    const rule = LIMITS[id];
    const raw = input.value.trim();
    if (optional && raw === "" && !input.validity.badInput) {
      input.setAttribute("aria-invalid", "false");
      return undefined;
    }
    const value = Number(raw);
    let problem = null;
    if (raw === "" || !Number.isFinite(value)) problem = `${rule.label} must be a number.`;
    else if (rule.integer && !Number.isInteger(value)) problem = `${rule.label} must be a whole number.`;
    else if (rule.minExclusive ? value <= rule.min : value < rule.min) {
      problem = `${rule.label} must be ${rule.minExclusive ? "greater than" : "at least"} ${rule.min}.`;
    } else if (value > rule.max) problem = `${rule.label} must be at most ${rule.max}.`;
    input.setAttribute("aria-invalid", problem ? "true" : "false");
    if (problem) problems.push(problem);
    return value;
  }

  function readIntList(id, label, max, problems) {
    const input = document.getElementById(id);
    const parts = input.value.split(/[\s,]+/).filter(Boolean);
    let problem = null;
    if (!parts.length) problem = `${label}: give at least one size, e.g. 8, 16.`;
    else if (!parts.every((part) => /^\d+$/.test(part) && Number(part) >= 1 && Number(part) <= max)) {
      problem = `${label} must be whole numbers from 1 to ${max}, separated by commas.`;
    }
    input.setAttribute("aria-invalid", problem ? "true" : "false");
    if (problem) problems.push(problem);
    return parts.map(Number);
  }

  /** The filled fields of a section, or null when none was filled. */
  function given(fields) {
    const filled = Object.entries(fields).filter(([, value]) => value !== undefined && value !== null);
    return filled.length ? Object.fromEntries(filled) : null;
  }

  function readStudent(arch, problems) {
    if (arch === "mlp") return { arch, hidden: readIntList("mlp-hidden", "Hidden sizes", 65536, problems) };
    if (arch === "from_teacher") return { arch, num_layers: readNumber("num-layers", problems) };
    if (arch === "hf_file") return { arch }; // its file_id comes from the student picker
    return {
      arch,
      channels: readIntList("cnn-channels", "Channels", 4096, problems),
      hidden: readNumber("cnn-hidden", problems),
    };
  }

  /** A transformer job's method and the chosen method's own fields (none for logits). */
  function readMethod(problems) {
    const method = document.getElementById("method").value;
    if (method === DEFAULT_METHOD) return {};
    const fields = { method };
    if (method === "top_k") fields.top_k = readNumber("top-k", problems, true);
    if (method === "on_policy") {
      fields.lmbda = readNumber("lmbda", problems, true);
      fields.beta = readNumber("beta", problems, true);
    }
    if (method === "sequence" || method === "on_policy") {
      fields.generation = given({
        max_new_tokens: readNumber("max-new-tokens", problems, true),
        temperature: readNumber("generation-temperature", problems, true),
      });
    }
    return fields;
  }

  /** The job spec without file ids, and what is wrong with the form. */
  function readSpec() {
    const problems = [];
    const arch = document.getElementById("arch").value;
    const transformer = TRANSFORMER_ARCHS.has(arch);
    const spec = { student: readStudent(arch, problems) };
    const distillation = given({
      temperature: readNumber("temperature", problems, true),
      alpha: readNumber("alpha", problems, true),
      ...(transformer ? readMethod(problems) : {}),
    });
    const training = given({
      epochs: readNumber("epochs", problems, true),
      batch_size: readNumber("batch-size", problems, true),
      learning_rate: readNumber("learning-rate", problems, true),
      seed: readNumber("seed", problems, true),
    });
    // A section the user left blank is not sent, so the server's defaults apply.
    if (distillation) spec.distillation = distillation;
    if (training) spec.training = training;
    const dataset = transformer ? given({ max_length: readNumber("max-length", problems, true) }) : null;
    if (dataset) spec.dataset = dataset;
    if (document.getElementById("baseline").checked) spec.baseline = true;
    return { spec, problems };
  }

  /** Put a file id at a spec field such as "dataset.eval_file_id". */
  function setField(spec, target, value) {
    const [section, field] = target.split(".");
    spec[section] = Object.assign({}, spec[section], { [field]: value });
  }

  function initNew() {
    const form = document.getElementById("new-job");
    const errors = document.getElementById("form-errors");
    const progress = document.getElementById("form-progress");
    const submit = document.getElementById("submit");
    const archSelect = document.getElementById("arch");
    const methodSelect = document.getElementById("method");
    const pickers = Array.from(form.querySelectorAll(".picker")).map((fieldset) => ({
      fieldset,
      purpose: fieldset.dataset.purpose,
      target: fieldset.dataset.target,
      noun: fieldset.dataset.noun,
      optional: fieldset.hasAttribute("data-optional"),
      select: fieldset.querySelector("select"),
      upload: fieldset.querySelector("input[type=file]"),
    }));
    // A hidden picker (another arch's, a tensor job's evaluation file) is neither checked nor sent.
    const shown = (node) => !node.closest("[hidden]");
    const listed = (node, key, value) => node.dataset[key].split(" ").includes(value);

    /** Show the chosen arch's fields, the chosen method's, and the job kind's hints. */
    function showFields() {
      const arch = archSelect.value;
      const kind = TRANSFORMER_ARCHS.has(arch) ? "transformer" : "tensor";
      for (const node of form.querySelectorAll("[data-arch]")) node.hidden = !listed(node, "arch", arch);
      for (const node of form.querySelectorAll("[data-kind]")) node.hidden = node.dataset.kind !== kind;
      for (const node of form.querySelectorAll("[data-method]")) node.hidden = !listed(node, "method", methodSelect.value);
      for (const node of form.querySelectorAll("[data-hint-transformer]")) {
        node.textContent = kind === "transformer" ? node.dataset.hintTransformer : node.dataset.hintTensor;
      }
    }
    archSelect.addEventListener("change", showFields);
    methodSelect.addEventListener("change", showFields);
    showFields();

    // A new upload and an uploaded file are alternatives: choosing one clears the other.
    for (const picker of pickers) {
      picker.upload.addEventListener("change", () => {
        if (picker.upload.files.length) picker.select.value = "";
      });
      picker.select.addEventListener("change", () => {
        if (picker.select.value) picker.upload.value = "";
      });
    }

    function showErrors(messages) {
      errors.replaceChildren();
      if (messages.length === 1) errors.append(messages[0]);
      else if (messages.length) errors.append(el("ul", {}, ...messages.map((m) => el("li", {}, m))));
      errors.hidden = !messages.length;
      if (messages.length) errors.scrollIntoView({ block: "nearest" });
    }

    async function uploadFile(picker) {
      const file = picker.upload.files[0];
      progress.textContent = `Uploading the ${picker.noun} (${formatBytes(file.size)})…`;
      const body = new FormData();
      body.append("purpose", picker.purpose);
      body.append("file", file);
      const uploaded = await api("/v1/files", { method: "POST", body });
      // Keep it chosen, so a retry after a rejected spec does not upload it again.
      const label = `${uploaded.filename} · ${uploaded.format} · ${uploaded.id}`;
      picker.select.prepend(el("option", { value: uploaded.id }, label));
      picker.select.value = uploaded.id;
      picker.upload.value = "";
      return uploaded.id;
    }

    form.addEventListener("submit", async (submitEvent) => {
      submitEvent.preventDefault();
      const { spec, problems } = readSpec();
      const active = pickers.filter((picker) => shown(picker.fieldset));
      for (const picker of active) {
        const chosen = picker.upload.files.length || picker.select.value;
        const missing = !chosen && !picker.optional;
        picker.select.setAttribute("aria-invalid", missing ? "true" : "false");
        if (missing) problems.push(`Choose a ${picker.noun} file: pick an uploaded one or upload a new one.`);
      }
      showErrors(problems);
      if (problems.length) return;
      submit.disabled = true;
      try {
        for (const picker of active) {
          const fileId = picker.upload.files.length ? await uploadFile(picker) : picker.select.value;
          if (fileId) setField(spec, picker.target, fileId);
        }
        progress.textContent = "Submitting the job…";
        const job = await api("/v1/jobs", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(spec),
        });
        progress.textContent = "Submitted.";
        window.location.assign("/jobs/" + encodeURIComponent(job.id));
      } catch (error) {
        progress.textContent = "";
        showErrors([error.message]);
        submit.disabled = false;
      }
    });
  }

  const pages = { jobs: initJobs, job: initJob, new: initNew };
  const init = pages[document.body.dataset.page];
  if (init) init();
})();
