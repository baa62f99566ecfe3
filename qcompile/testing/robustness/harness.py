"""Run one corpus case as a subprocess of the real CLI and classify what happened.

    outcome = run_case(case, parent_folder)

The CLI runs as `[sys.executable, "-m", "qcompile.cli", *argv]` in a fresh work folder, with fresh HOME,
TMPDIR and QCOMPILE_CACHE folders and PYTHONDONTWRITEBYTECODE unset (the product itself must not write
bytecode next to a plugin). The whole case folder (model folder, outside folder, plugins, work, HOME,
TMPDIR, cache) is listed before and after; OUT is judged separately.

Outcome kinds, first match wins:

- `hang`: a process outlived its timeout (it is killed);
- `traceback`: "Traceback" in stdout or stderr;
- `escape`: a file outside OUT is new, changed or removed (a new folder that is an ancestor of OUT is
  `partial-output` instead), or the planted secret (its bytes or hex) is in an output file or in
  stdout/stderr;
- `partial-output`: for a refused run, OUT (or a parent folder it created) differs from before: staging
  folder, lock, artifact; for a successful run, report.json or its artifact is missing, the artifact does
  not load in ONNX Runtime, or OUT holds anything but the artifact, its companions (*.data, model.so,
  model.tvm.json), report.json, report.html and the files the case keeps;
- `wrong-exit`: an exit code other than expected, or stderr that is not exactly one line with the
  expected prefix (for bad input: `qcompile: error: `, exit 2);
- `vague-error`: a clean one-line error that does not name what the case says it must (file, node, op,
  tensor, option) or that reveals what it must not (e.g. a file's size);
- `clean-error`: exit as expected with one clean line; `success`: exit 0 with a loadable artifact;
- `skipped`: the case cannot be run faithfully here (reason in the detail);
- `harness-error` (from parallel.run_cases): building or running the case raised — a corpus bug.

A case passes when its kind is `clean-error` (expect "error") or `success` (expect "ok").
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from qcompile.testing.robustness import privileges
from qcompile.testing.robustness.case import Case, CaseDirs, Secret, chmod_tree
from qcompile.testing.robustness.snapshot import Listing, diff, list_tree

__all__ = [
    "KINDS",
    "Observation",
    "DriverResult",
    "Outcome",
    "CaseRunner",
    "run_case",
    "STAGING_GLOB",
    "LOCK_NAME",
]

KINDS = (
    "clean-error",
    "success",
    "traceback",
    "escape",
    "partial-output",
    "wrong-exit",
    "hang",
    "vague-error",
    "skipped",
    "harness-error",
)
STAGING_GLOB = ".qcompile-staging-*"
LOCK_NAME = ".qcompile.lock"
COMPANION_NAMES = ("model.so", "model.tvm.json")
_SCAN_LIMIT = 256 * 1024 * 1024


@dataclasses.dataclass
class Observation:
    """What one process did."""

    argv: list[str]
    returncode: int | None
    stdout: bytes
    stderr: bytes
    seconds: float
    timed_out: bool = False

    @property
    def out_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


@dataclasses.dataclass
class DriverResult:
    """A driver's report: the process judged against the case's expectation, every other process it ran,
    problems it saw itself as (kind, detail), and how OUT is judged ("unchanged" or "artifact"; None: by
    the case's expectation)."""

    judged: Observation
    others: list[Observation] = dataclasses.field(default_factory=list)
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    out_check: str | None = None
    report_check: Callable[[dict], str | None] | None = None


@dataclasses.dataclass
class Outcome:
    case: str
    category: str
    expect: str
    kind: str
    passed: bool | None
    detail: str
    returncode: int | None
    stderr: str
    stdout: str
    seconds: float
    argv: list[str]

    def summary(self) -> str:
        line = self.stderr.strip().splitlines()[0] if self.stderr.strip() else ""
        return f"{self.case}: {self.kind} (exit {self.returncode}) {self.detail} | stderr: {line[:300]}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class CaseRunner:
    """The environment of one case run: folders, environment variables, privileges; starts CLI processes."""

    def __init__(self, case: Case, dirs: CaseDirs, logs: Path, how: str = "self") -> None:
        self.case, self.dirs, self.logs, self.how = case, dirs, logs, how
        self._count = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The product must keep its own dependencies in check (e.g. ONNX Runtime's telemetry writes a
        # device id under HOME unless ORT_DISABLE_TELEMETRY=1): the run gets no such help from here.
        for name in (
            "PYTHONDONTWRITEBYTECODE",
            "QCOMPILE_DEBUG",
            "PYTHONSTARTUP",
            "PYTHONINSPECT",
            "ORT_DISABLE_TELEMETRY",
            "XDG_CACHE_HOME",
            "XDG_CONFIG_HOME",
            "XDG_DATA_HOME",
            "XDG_RUNTIME_DIR",
        ):
            env.pop(name, None)
        tmp = str(self.dirs.tmp)
        env.update(HOME=str(self.dirs.home), TMPDIR=tmp, TEMP=tmp, TMP=tmp, QCOMPILE_CACHE=str(self.dirs.cache))
        return env

    def argv(self, argv: tuple[str, ...] | list[str] | None = None) -> list[str]:
        if argv is None:
            return self.case.format_argv(self.dirs)
        values = self.dirs.placeholders()
        return [a.format(**values) if "{" in a else a for a in argv]

    def start(self, argv: tuple[str, ...] | list[str] | None = None) -> subprocess.Popen:
        cli_argv = self.argv(argv)
        command, extra = privileges.popen_options(self.how, [sys.executable, "-m", "qcompile.cli", *cli_argv])
        self._count += 1
        out = open(self.logs / f"{self._count}.stdout", "w+b")
        err = open(self.logs / f"{self._count}.stderr", "w+b")
        proc = subprocess.Popen(
            command,
            cwd=self.dirs.work,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            **extra,
        )
        proc._robustness = (cli_argv, out, err, time.monotonic())  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float | None = None) -> Observation:
        cli_argv, out, err, started = proc._robustness  # type: ignore[attr-defined]
        timed_out = False
        try:
            proc.wait(timeout=self.case.timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill(proc)
        seconds = time.monotonic() - started
        out.seek(0), err.seek(0)
        observation = Observation(
            cli_argv, None if timed_out else proc.returncode, out.read(), err.read(), seconds, timed_out
        )
        out.close(), err.close()
        return observation

    def run(self, argv: tuple[str, ...] | list[str] | None = None, timeout: float | None = None) -> Observation:
        return self.finish(self.start(argv), timeout)

    def out_markers(self) -> list[str]:
        """Staging folders and the lock currently in OUT."""
        found = glob.glob(os.path.join(glob.escape(str(self.dirs.out)), STAGING_GLOB))
        if os.path.lexists(self.dirs.out / LOCK_NAME):
            found.append(str(self.dirs.out / LOCK_NAME))
        return found

    def wait_for(self, condition: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> bool:
        """Poll `condition` every 10 ms until it holds (True) or `proc` ends or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if proc.poll() is not None:
                return condition()
            time.sleep(0.01)
        return False


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this harness started for `proc`, and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


# --- classification ---------------------------------------------------------------------------------


def _is_ancestor(path: str, of: str) -> bool:
    return of.startswith(path.rstrip("/") + "/")


def _scan_files(paths: list[Path], secret: Secret) -> list[str]:
    hits = []
    for path in paths:
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_size > _SCAN_LIMIT:
                continue
            if secret.found_in(path.read_bytes()):
                hits.append(str(path))
        except OSError:
            continue
    return hits


def _files_under(folder: Path) -> list[Path]:
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [Path(d) / f for d, _, files in os.walk(folder) for f in files]


def _collapse(paths: list[str], label: str) -> list[str]:
    """`label path` for each top-most path, with the count of entries under it."""
    tops = [p for p in paths if not any(_is_ancestor(q, p) for q in paths if q != p)]
    out = []
    for top in tops:
        inside = sum(1 for p in paths if _is_ancestor(top, p))
        out.append(f"{label} {top}" + (f" (+{inside} inside)" if inside else ""))
    return out


def _first(lines: list[str]) -> str:
    return lines[0][:200] if lines else "(no stderr)"


def _stderr_lines(text: str) -> list[str]:
    return text.splitlines()


def _check_artifact(out: Path, case: Case, out_before: Listing, report_check) -> str | None:
    """None if OUT holds a complete, loadable result and nothing it should not; else what is wrong."""
    report_path = out / "report.json"
    if not report_path.is_file():
        return f"no report.json in OUT (OUT holds {sorted(os.listdir(out)) if out.is_dir() else 'nothing'})"
    try:
        report = json.loads(report_path.read_text())
        artifact_name = report["artifact"]
    except (ValueError, KeyError, TypeError) as error:
        return f"report.json unreadable or without 'artifact': {type(error).__name__}: {error}"
    artifact = out / str(artifact_name)
    if not artifact.is_file():
        return f"report names artifact {artifact_name!r}, which is not in OUT"
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - any failure to load is the finding
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return f"artifact {artifact_name} does not load in ONNX Runtime: {type(error).__name__}: {first}"
    left = [n for n in case.out_gone if os.path.lexists(out / n)]
    if left:
        return f"stale files of an earlier run were kept: {left}"
    allowed = {"report.json", "report.html", str(artifact_name), *COMPANION_NAMES, *case.out_keep}
    extra = sorted(n for n in os.listdir(out) if n not in allowed and not n.endswith(".data"))
    if extra:
        return f"OUT holds more than the result: {extra}"
    for name in case.out_keep:
        key = name
        if key not in out_before:
            continue
        now = list_tree(out).get(key)
        if now != out_before[key]:
            return f"the user's file {name} in OUT was changed or removed"
    if report_check is not None:
        problem = report_check(report)
        if problem:
            return problem
    return None


def classify(
    case: Case,
    dirs: CaseDirs,
    result: DriverResult,
    before: Listing,
    after: Listing,
    out_before: Listing,
    out_after: Listing,
) -> tuple[str, str]:
    obs = result.judged
    everyone = [obs, *result.others]
    hung = [o for o in everyone if o.timed_out]
    if hung:
        return "hang", f"no exit within {hung[0].seconds:.0f} s (killed): {' '.join(hung[0].argv[:1])}"
    for o in everyone:
        if b"Traceback" in o.stdout or b"Traceback" in o.stderr:
            where = "stderr" if b"Traceback" in o.stderr else "stdout"
            return (
                "traceback",
                f"Traceback on {where}; last line: {(o.err_text.strip().splitlines() or [''])[-1][:200]}",
            )

    out_rel = os.path.relpath(dirs.out, dirs.root)
    new, changed, removed = diff(before, after)
    ancestors = [p for p in new if _is_ancestor(p, out_rel)]
    outside = [p for p in new if p not in ancestors] + changed + removed
    if dirs.secret is not None:
        for o in everyone:
            if dirs.secret.found_in(o.stdout) or dirs.secret.found_in(o.stderr):
                return "escape", "the planted secret appears in stdout/stderr"
        scanned = _files_under(dirs.out) + [dirs.root / p for p in new + changed]
        hits = _scan_files([p for p in scanned if p != dirs.secret.path], dirs.secret)
        if hits:
            return "escape", f"the planted secret was copied into {[os.path.relpath(h, dirs.root) for h in hits]}"
    if outside:
        labels = (
            _collapse([p for p in new if p not in ancestors], "new")
            + [f"changed {p}" for p in changed]
            + [f"removed {p}" for p in removed]
        )
        text = "outside OUT: " + ", ".join(labels[:6]) + (" ..." if len(labels) > 6 else "")
        before_escape = {p: v for p, v in after.items() if p not in outside}
        before_escape.update({p: before[p] for p in removed})
        kind, detail = classify(case, dirs, result, before, before_escape, out_before, out_after)
        return "escape", f"{text} [otherwise: {kind}{': ' + detail if detail else ''}]"

    problems = list(result.problems)
    out_check = result.out_check or ("artifact" if case.expect == "ok" else "unchanged")
    if out_check == "artifact" and obs.returncode != 0 and case.expect == "ok":
        out_check = "unchanged"  # a failed run must leave OUT as it found it
    out_exists = os.path.lexists(dirs.out)
    if out_check == "unchanged":
        if ancestors:
            return "partial-output", f"created parent folder(s) of OUT left behind: {ancestors}"
        if out_after != out_before:
            if not out_before:
                return (
                    "partial-output",
                    f"OUT was created and left behind, holding {sorted(k for k in out_after if k != '.')}",
                )
            o_new, o_changed, o_removed = diff(out_before, out_after)
            return "partial-output", f"OUT changed: new {o_new}, changed {o_changed}, removed {o_removed}"
    else:
        leftovers = sorted(k for k in out_after if k.split("/")[0].startswith(".qcompile"))
        if leftovers:
            return "partial-output", f"hidden leftovers in OUT: {leftovers[:6]}"
        problem = (
            _check_artifact(dirs.out, case, out_before, result.report_check) if out_exists else "OUT does not exist"
        )
        if problem and obs.returncode == 0:
            return "partial-output", problem
        if problem:
            problems.append(("partial-output", problem))

    for kind, detail in problems:
        return kind, detail

    err = obs.err_text
    lines = _stderr_lines(err)
    if case.expect == "ok":
        if obs.returncode == 0:
            return "success", ""
        if obs.returncode == 2 and len(lines) == 1 and lines[0].startswith("qcompile: error: "):
            return "clean-error", "valid input refused"
        return "wrong-exit", f"exit {obs.returncode}, {len(lines)} stderr line(s): {_first(lines)}"
    if obs.returncode == 0:
        return "success", "exit 0: the input was accepted"
    expected = " or ".join(map(str, case.exit_codes))
    if obs.returncode not in case.exit_codes:
        return "wrong-exit", f"exit {obs.returncode}, expected {expected}: {_first(lines)}"
    if len(lines) != 1 or not lines[0].startswith(case.stderr_prefix):
        return (
            "wrong-exit",
            f"exit {obs.returncode} but stderr has {len(lines)} line(s), expected one starting {case.stderr_prefix!r}",
        )
    problems = case.mention_problems(lines[0])
    if problems:
        return "vague-error", "; ".join(problems)
    return "clean-error", ""


# --- running ----------------------------------------------------------------------------------------


def _plain(runner: CaseRunner) -> DriverResult:
    return DriverResult(runner.run())


def run_case(case: Case, parent: Path | None = None, keep: bool = False) -> Outcome:
    """Build `case` in a fresh folder under `parent` (default: a temporary folder), run it, classify it."""
    how = "self"
    if case.restricted and os.geteuid() == 0:
        how, reason = privileges.mode()
        if how == "skip":
            return Outcome(case.name, case.category, case.expect, "skipped", None, reason, None, "", "", 0.0, [])
    base_made = None
    if parent is None or how == "nobody":
        base_made = Path(tempfile.mkdtemp(prefix="qcompile-robustness-"))
        os.chmod(base_made, 0o755)  # nobody must traverse it
        parent = base_made
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in case.name)
    root = Path(parent) / safe
    logs = Path(parent) / f"{safe}.logs"
    for folder in (root, logs):
        if folder.exists():
            chmod_tree(folder)
            shutil.rmtree(folder)
    logs.mkdir(parents=True)
    dirs = case.dirs(root)
    dirs.create()
    if case.secret:
        dirs.secret = Secret.plant(dirs.outside / "secret.bin")
    case.build(dirs)
    if how == "nobody":
        privileges.chown_tree(root)
    runner = CaseRunner(case, dirs, logs, how)
    before = list_tree(root, exclude=dirs.out)
    out_before = list_tree(dirs.out)
    started = time.monotonic()
    try:
        result = (case.driver or _plain)(runner)
        after = list_tree(root, exclude=dirs.out)
        out_after = list_tree(dirs.out)
        kind, detail = classify(case, dirs, result, before, after, out_before, out_after)
        if how != "self":
            detail = f"{detail} [run as {how}: {privileges.DESCRIPTIONS[how]}]".strip()
        obs = result.judged
        expected_kind = "success" if case.expect == "ok" else "clean-error"
        return Outcome(
            case.name,
            case.category,
            case.expect,
            kind,
            kind == expected_kind,
            detail,
            obs.returncode,
            obs.err_text[-4000:],
            obs.out_text[-2000:],
            time.monotonic() - started,
            obs.argv,
        )
    finally:
        if not keep:
            chmod_tree(root)
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)
            if base_made is not None:
                shutil.rmtree(base_made, ignore_errors=True)
