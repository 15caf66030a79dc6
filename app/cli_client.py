"""The CLI's client commands: submit, watch, jobs, report, download, cancel.

Server URL and key come from flags, else `DISTILLERY_URL` / `DISTILLERY_API_KEY`, else the
config file `distillery up` writes (`~/.config/distillery/config.json`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from app.client import Client, DirectoryInUse, DistilleryError, load_spec_file
from app.config import get_settings
from app.schemas import JobPublic
from worker.kd.report.summary import is_transformer, verdict_words
from worker.kd.spec import TRANSFORMER_ARCHS

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
FILE_ROLES = {"teacher": "teacher", "dataset": "dataset"}

out = Console()
err = Console(stderr=True, soft_wrap=True)  # an error stays one line a script can grep

UrlOpt = Annotated[str | None, typer.Option("--url", help="Server URL (or DISTILLERY_URL).")]
KeyOpt = Annotated[
    str | None, typer.Option("--key", help="API key (or DISTILLERY_API_KEY).", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
JobArg = Annotated[str, typer.Argument(help="The job id.")]


def config_path() -> Path:
    return get_settings().client_config.expanduser()


def write_client_config(url: str, key: str) -> Path:
    """Remember the server and key for the CLI (what `distillery up` calls)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps({"url": url, "api_key": key}, indent=2) + "\n")
    return path


def make_client(url: str | None, key: str | None) -> Client:
    settings = get_settings()
    saved: dict[str, Any] = {}
    if config_path().exists():
        saved = json.loads(config_path().read_text())
    resolved_key = key or settings.api_key or saved.get("api_key")
    if not resolved_key:
        err.print(
            "No API key: pass --key, set DISTILLERY_API_KEY, or run `make run` once "
            f"(it writes {config_path()})."
        )
        raise typer.Exit(2)
    return Client(url or settings.url or saved.get("url") or DEFAULT_URL, resolved_key)


def _call(url: str | None, key: str | None, action: Callable[[Client], T]) -> T:
    """Run one client call; an API error becomes a readable line and exit code 1."""
    with make_client(url, key) as client:
        try:
            return action(client)
        except DistilleryError as exc:
            raise _fail(exc) from exc


def _fail(exc: DistilleryError) -> typer.Exit:
    err.print(f"[red]error[/red] {exc.code}: {escape(exc.message)}")
    return typer.Exit(1)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def resolve_paths(client: Client, spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """Replace `{"path": "./teacher.pt"}` by `{"file_id": ...}`, uploading each file once
    (an earlier upload with the same sha256 is reused)."""
    resolved = dict(spec)
    for role, purpose in FILE_ROLES.items():
        ref = resolved.get(role)
        if isinstance(ref, dict) and "path" in ref:
            local = (base / ref["path"]).expanduser()
            if not local.is_file():
                raise typer.BadParameter(f"{role}.path: no file at {local}")
            uploaded = client.upload(local, purpose, reuse=True)
            err.print(f"{role}: {local} -> {uploaded.id}")
            resolved[role] = {k: v for k, v in ref.items() if k != "path"} | {
                "file_id": uploaded.id
            }
    return resolved


def submit(
    spec_file: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.", exists=True)],
    watch_job: Annotated[bool, typer.Option("--watch", help="Then watch it to the end.")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job; local files named by `path` are uploaded first."""
    with make_client(url, key) as client:
        try:
            spec = resolve_paths(client, load_spec_file(spec_file), spec_file.parent)
            job = client.submit(spec)
        except DistilleryError as exc:
            raise _fail(exc) from exc
        except ValueError as exc:
            err.print(f"[red]error[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        if as_json:
            _print_json(job.model_dump(mode="json"))
        else:
            err.print(f"submitted; follow it with `distillery watch {job.id}`")
            print(job.id)
        if watch_job and _watch(client, job.id, quiet=as_json).status != "succeeded":
            raise typer.Exit(1)


def watch(job_id: JobArg, url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """A live progress bar until the job ends; exits non-zero unless it succeeded."""
    with make_client(url, key) as client:
        job = _watch(client, job_id, quiet=as_json)
    if as_json:
        _print_json(job.model_dump(mode="json"))
    if job.status != "succeeded":
        raise typer.Exit(1)


class _ProgressWithDetail(Progress):
    """The bar on one line (status, bar, percentage, elapsed, ETA: about 65 columns, so the
    bar keeps its width in an 80-column terminal) and the newest epoch, step, loss and
    validation figure on the line below it."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.fields.get("detail"):
                yield Text("  " + str(task.fields["detail"]), overflow="ellipsis", no_wrap=True)


def make_progress(console: Console, *, disable: bool = False) -> Progress:
    return _ProgressWithDetail(
        TextColumn("{task.fields[status]:<10}"),
        BarColumn(bar_width=30),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


def _watch(client: Client, job_id: str, *, quiet: bool) -> JobPublic:
    state: dict[str, Any] = {"after": None, "detail": ""}
    with make_progress(err, disable=quiet) as progress:
        task = progress.add_task(job_id, total=1.0, status="", detail="")

        def update(job: JobPublic) -> None:
            if _is_transformer(job):
                state["detail"] = _transformer_detail(client, job) or state["detail"]
            else:
                state["detail"] = _newest_epoch_detail(client, job, state) or state["detail"]
            progress.update(
                task, completed=job.progress, status=str(job.status), detail=state["detail"]
            )

        try:
            job = client.wait(job_id, on_progress=update)
        except DistilleryError as exc:
            raise _fail(exc) from exc
    if job.status == "failed" and job.error is not None:
        err.print(f"[red]failed[/red] {job.error.code}: {escape(job.error.message)}")
    elif job.status == "succeeded" and job.result:
        r = job.result
        err.print(
            f"[green]succeeded[/green] student accuracy {r['student_accuracy']:.4f} "
            f"(teacher {r['teacher_accuracy']:.4f}); `distillery report {job_id}`"
        )
    else:
        err.print(f"{job.status}")
    return job


def _newest_epoch_detail(client: Client, job: JobPublic, state: dict[str, Any]) -> str | None:
    """The newest `epoch_end` event's figures (events after the last one read)."""
    detail = None
    for event in client.list_events(job.id, after=state["after"]):
        state["after"] = event.id
        if event.kind == "epoch_end":
            data = event.data
            detail = _detail(
                job, data.get("epoch"), data.get("step"), data.get("train_loss_epoch"),
                data.get("val_accuracy"),
            )  # fmt: skip
    return detail


def _transformer_detail(client: Client, job: JobPublic) -> str | None:
    """Transformer jobs write no epoch events: their newest `train_loss` and
    `val_accuracy` points (the task's quality measure) say where they are."""
    losses = client.metrics(job.id, "train_loss")
    if not losses:
        return None
    quality = client.metrics(job.id, "val_accuracy")
    last = losses[-1]
    return _detail(job, last.epoch, last.step, last.value, quality[-1].value if quality else None)


def _detail(job: JobPublic, epoch: Any, step: Any, loss: float | None, val: float | None) -> str:
    epochs = job.spec.get("training", {}).get("epochs")
    parts = [f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}", f"step {step}"]
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    if val is not None:
        parts.append(f"val {'quality' if _is_transformer(job) else 'acc'} {val:.4f}")
    return "  ".join(parts)


def _is_transformer(job: JobPublic) -> bool:
    return job.spec.get("student", {}).get("arch") in TRANSFORMER_ARCHS


def jobs(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your jobs."""
    rows, _ = _call(url, key, lambda client: client.jobs(limit=limit, status=status))
    if as_json:
        _print_json([job.model_dump(mode="json") for job in rows])
        return
    table = Table("id", "status", "progress", "student", "accuracy", "created")
    for job in rows:
        accuracy = f"{job.result['student_accuracy']:.4f}" if job.result else ""
        table.add_row(
            job.id,
            str(job.status),
            f"{job.progress:.0%}",
            str(job.spec.get("student", {}).get("arch", "")),
            accuracy,
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


# (label, field, format) per model, then for the whole report; a field "a.b" is nested.
Rows = tuple[tuple[str, str, str], ...]
REPORT_ROWS: Rows = (
    ("accuracy", "accuracy", "{:.4f}"),
    ("top-5 accuracy", "top5_accuracy", "{:.4f}"),
    ("parameters", "parameters", "{:,}"),
    ("serialized bytes", "serialized_bytes", "{:,}"),
    ("latency ms (batch 1)", "latency_ms_batch1", "{:.3f}"),
    ("latency ms (batch 64)", "latency_ms_batch64", "{:.3f}"),
    ("throughput (samples/s)", "throughput_per_s", "{:,.0f}"),
)
REPORT_HEADLINE: Rows = (
    ("agreement with teacher", "agreement", "{:.4f}"),
    ("quality retained", "quality_retained", "{:.2%}"),
    ("size reduction", "size_reduction", "{:.2%}"),
    ("speed-up", "speedup", "{:.2f}x"),
    ("KD gain over baseline", "kd_gain", "{:+.4f}"),
)
TRANSFORMER_ROWS: Rows = (
    ("quality", "accuracy", "{:.4f}"),
    ("parameters", "parameters", "{:,}"),
    ("layers", "layers", "{}"),
    ("latency ms (batch 1)", "latency_ms_batch1", "{:.3f}"),
    ("latency ms (batch 32)", "latency_ms_batch32", "{:.3f}"),
)
# A causal LM's (kd_gain: the baseline's relative perplexity reduction).
LANGUAGE_MODEL_ROWS: Rows = (("perplexity", "perplexity", "{:.3f}"), *TRANSFORMER_ROWS)
LANGUAGE_MODEL_HEADLINE: Rows = (
    ("method", "method", "{}"),
    ("sequence length", "sequence_length", "{}"),
    ("next-token agreement", "agreement", "{:.4f}"),
    ("size reduction", "size_reduction", "{:.2%}"),
    ("speed-up (batch 1)", "speedup", "{:.2f}x"),
    ("speed-up (batch 32)", "speedup_batch32", "{:.2f}x"),
    ("KD gain (perplexity cut)", "kd_gain", "{:.2%}"),
    ("cache bytes per token", "teacher_cache.bytes_per_token", "{:,.0f}"),
    ("dense bytes per token", "teacher_cache.dense_bytes_per_token", "{:,}"),
    ("draft acceptance rate", "speculative.acceptance_rate", "{:.2%}"),
    ("draft speed-up", "speculative.speedup", "{:.2f}x"),
    ("draft tokens identical", "speculative.identical", "{}"),
    ("teacher tokens/s (b=1, 8)", "generation_speed.teacher", "{}"),
    ("student tokens/s (b=1, 8)", "generation_speed.student", "{}"),
    ("ONNX max abs diff", "onnx_max_abs_diff", "{:.1e}"),
)
TRANSFORMER_HEADLINE: Rows = (
    ("quality is", "quality_metric", "{}"),
    ("sequence length", "sequence_length", "{}"),
    ("agreement with teacher", "agreement", "{:.4f}"),
    ("quality retained", "quality_retained", "{:.2%}"),
    ("size reduction", "size_reduction", "{:.2%}"),
    ("speed-up (batch 1)", "speedup", "{:.2f}x"),
    ("speed-up (batch 32)", "speedup_batch32", "{:.2f}x"),
    ("mean cosine to teacher", "embedding.mean_cosine_student_teacher", "{:.4f}"),
    ("KD gain over baseline", "kd_gain", "{:+.4f}"),
    ("ONNX max abs diff", "onnx_max_abs_diff", "{:.1e}"),
)


def report(
    job_id: JobArg, url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Teacher vs student (vs baseline) for a finished job."""
    data = _call(url, key, lambda client: client.report(job_id))
    if as_json:
        _print_json(data)
        return
    table, lines = render_report(job_id, data)
    out.print(table)
    for line in lines:
        out.print(line)


def render_report(job_id: str, data: dict[str, Any]) -> tuple[Table, list[str]]:
    """The report as a table of the models and lines of headline figures; a transformer
    job's has its own rows (its quality measure, batch 32, sequence length, embeddings)."""
    transformer = is_transformer(data)
    rows, headline = (
        (TRANSFORMER_ROWS, TRANSFORMER_HEADLINE) if transformer else (REPORT_ROWS, REPORT_HEADLINE)
    )
    if data.get("perplexity"):
        rows, headline = LANGUAGE_MODEL_ROWS, LANGUAGE_MODEL_HEADLINE
    models = [name for name in ("teacher", "student", "baseline") if data.get(name)]
    table = Table("", *models, title=f"report for {job_id}")
    for label, field, fmt in rows:
        table.add_row(label, *[_fmt(fmt, _field(data[m], field)) for m in models])
    lines = []
    for label, field, fmt in headline:
        value = _field(data, field)
        if value is None and field.startswith(
            ("embedding.", "teacher_cache.", "speculative.", "generation_speed.")
        ):
            continue
        if field.startswith("generation_speed.") and isinstance(value, dict):
            value = f"{value.get('batch_1', 0):,.0f}, {value.get('batch_8', 0):,.0f}"
        shown = _fmt(fmt, value) if value is not None else "not measured"
        if field == "kd_gain" and value is None and data.get("baseline_skipped"):
            shown = f"not measured: {data['baseline_skipped']}"
        lines.append(f"{label:>24}: {shown}")
    evaluation = data.get("evaluation")
    if evaluation:
        selection = evaluation.get("selection") or {}
        chose = f"; chosen on {selection['split']} ({selection['samples']})" if selection else ""
        shown = f"{evaluation['split']} ({evaluation['samples']} samples, held out{chose})"
        lines.append(f"{'measured on':>24}: {shown}")
    for sample in data.get("samples") or []:
        lines.append(f"{'prompt':>24}: {sample['prompt']!r}")
        lines.append(f"{'teacher':>24}: {sample['teacher']!r}")
        lines.append(f"{'student':>24}: {sample['student']!r}")
    words = verdict_words(data)
    if words:
        lines.append(words)
    return table, lines


def _field(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _fmt(fmt: str, value: Any) -> str:
    return "" if value is None else fmt.format(value)


def download(
    job_id: JobArg,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Where to put the files (default: ./JOB_ID/).", show_default=False
        ),
    ] = None,
    name: Annotated[list[str] | None, typer.Option(help="Only these artifacts.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace another job's files in --dir.")
    ] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Download a job's artifacts (all, or those named) into ./JOB_ID/ or --dir."""
    with make_client(url, key) as client:
        try:
            names = name or [a.name for a in client.artifacts(job_id)]
            if not names:
                err.print(f"job {job_id} has no artifacts (yet)")
                raise typer.Exit(1)
            target = directory if directory is not None else Path(job_id)
            for path in client.download_job(job_id, target, names, overwrite=overwrite):
                print(path)
        except DirectoryInUse as exc:
            err.print(f"[red]error[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        except DistilleryError as exc:
            raise _fail(exc) from exc


def cancel(
    job_id: JobArg, url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a job."""
    job = _call(url, key, lambda client: client.cancel(job_id))
    if as_json:
        _print_json(job.model_dump(mode="json"))
    else:
        err.print(f"{job.id}: {job.status}")


def trials(
    job_id: JobArg, url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """A search's trials: what each tried, how it ended, and which one won."""
    rows = _call(url, key, lambda client: client.trials(job_id))
    if as_json:
        _print_json([trial.model_dump(mode="json") for trial in rows])
        return
    table = Table()
    for name in ("trial", "status", "value", "epochs run"):
        table.add_column(name, no_wrap=True)
    table.add_column("params")
    for trial in rows:
        value = "" if trial.value is None else f"{trial.value:.4f}"
        number = f"{trial.number}{' (best)' if trial.best else ''}"
        style = "bold green" if trial.best else None
        cells = (number, trial.status, value, str(trial.epochs_run), _params(trial.params))
        table.add_row(*cells, style=style)
    out.print(table)
    err.print("Each trial is a job of its own: --json gives their ids.")


def _params(params: dict[str, Any]) -> str:
    """A trial's params in short: `kd T 2.3 alpha 0.42 lr 0.0031 12 epochs augmented`."""
    words = []
    for name, value in params.items():
        if name == "family":
            words.append(str(value))
        elif name == "augment":
            words.append("augmented" if value else "")
        elif name == "epochs":
            words.append(f"{value} epochs")
        else:
            short = {"temperature": "T", "learning_rate": "lr"}.get(name, name)
            words.append(f"{short} {value:.2g}" if isinstance(value, float) else f"{short} {value}")
    return " ".join(word for word in words if word)


def register(cli: typer.Typer) -> None:
    for command in (submit, watch, jobs, report, download, cancel, trials):
        cli.command()(command)
