"""Scale benchmark (issue 12): ImageNet-LT- and iNaturalist-2018-shaped expert bundles.

Makes the shapes synthetically in a temp dir and measures, side by side with the code
as it was before issue 12 (a ``git worktree`` of ``--old-commit``), each step in its own
subprocess with one torch thread (wall time, and the peak RSS of that process: its
``VmHWM``):

The new code reads the bundle in format 2 (``.npy``, memory-mapped), the old code the
same arrays rewritten in format 1 (Parquet), which is all it reads.

- ``import``: ``seltune data import --kind argse`` of the bundle rewritten in the AR-GSE
  repository's layout (per expert and split ``[N, C]`` float32 ``.npy``), old and new
  CLI (``/usr/bin/time -v``: wall and peak RSS);
- ``load``: ``core.bundles.load_bundle`` (and a pass over every logit, so lazily
  mapped pages count);
- ``train``: one default selective training (``train_selective`` with the default
  ``SelectiveConfig``, no report callback, CPU), the load excluded from its wall time;
- ``baselines``: ``fit_baselines`` + ``baseline_metrics`` on ``val`` and ``test`` at
  coverage 0.7, the load excluded;
- ``cli``: ``seltune train argse-selective`` end to end (``/usr/bin/time -v``: wall and
  peak RSS; load, training with a report per cycle, val/test metrics, the baselines,
  the files), new code only;
- ``evaluate`` (with ``--cli``): ``seltune evaluate`` of that checkpoint on ``test``, new
  code only (the old code has no checkpoint of this run to read);
- ``sweep`` (``--sweep``): ``seltune sweep --num-samples 4 --max-concurrent 2`` with a
  private ``RAY_TMPDIR`` / ``SELTUNE_STORAGE`` / ``SELTUNE_CACHE`` in the temp dir, new
  code only: wall, the driver's peak RSS, each trial worker's peak RSS and the
  machine's peak used memory (sampled from ``/proc`` every 0.5 s), each trial's time
  (Tune's ``time_total_s``), and whether the machine swapped (``/proc/vmstat``
  ``pswpout`` before/after) or a process was OOM-killed (non-zero exit);
- ``rules``: the rule evaluation alone: the plug-in margins of the 41 ``mu`` grid
  candidates on ``tunev`` (one ``_batched_margins`` call, the inner loop of every
  power / EG step), old O(N·M·C) vs new O(N·M·K); the one-off O(N·C) grouping of the
  new code is timed separately.

The old code's plug-in fit takes ~15 minutes at ImageNet-LT shape, so by default its
``baselines`` step fits Plug-in[Balanced] (one inner fit) and *estimates*
Plug-in[Worst] as ``eg_steps = 10`` such fits (marked "est."); ``--full-old`` runs it.

Shapes (E = 3 experts, K = 2 groups: tail = classes with at most 20 training samples):

- ``imagenet-lt``: C = 1000, training counts ``1280 * 256^(-c/(C-1))`` (IF 256),
  ``tunev``/``val``/``test`` 20k/10k/50k, float32 on disk (0.96 GB of logits);
- ``inat2018``: C = 8142, counts ``1000 * 500^(-c/(C-1))`` (IF 500), splits
  20k/10k/24k, float16 on disk (2.6 GB; 5.3 GB as float32).

The logits: per expert ``N(0, 1)`` noise plus a boost of the true class (uniform in
[1, 6]), expert 0 (``ce``) biased towards head classes by ``0.5 log prior``, expert 2
(``balsoftmax``) mildly towards the tail; labels of the evaluation splits are uniform
over classes (ImageNet-LT and iNaturalist-2018 have balanced val/test).

Usage::

    python benchmarks/scale.py                      # imagenet-lt, old and new (~10 min)
    python benchmarks/scale.py --shape both         # + inat2018 (new code; old: load, rules)
    python benchmarks/scale.py --skip-old           # new code only
    python benchmarks/scale.py --shape inat2018 --skip-old --cli --sweep
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "cd942e5"
SHAPES = {
    "imagenet-lt": {"classes": 1000, "imbalance": 256.0, "n_max": 1280,
                    "rows": {"tunev": 20_000, "val": 10_000, "test": 50_000},
                    "dtype": "float32"},
    "inat2018": {"classes": 8142, "imbalance": 500.0, "n_max": 1000,
                 "rows": {"tunev": 20_000, "val": 10_000, "test": 24_000},
                 "dtype": "float16"},
}
EXPERTS = ("ce", "logitadjust", "balsoftmax")
COVERAGE = 0.7


# --------------------------------------------------------------------------- data


def make_bundle(shape: str, out: Path, seed: int = 0, rows_scale: float = 1.0) -> Path:
    """Write the synthetic bundle of ``shape`` to ``out`` (see the module docstring)."""
    import numpy as np

    from core.bundles import ExpertBundle, ExpertSplit, class_to_group_from_counts, save_bundle

    spec = SHAPES[shape]
    c = int(spec["classes"])
    counts = np.maximum(np.floor(spec["n_max"] * spec["imbalance"] ** (
        -np.arange(c) / (c - 1)) + 1e-9), 1).astype(np.int64)
    c2g = class_to_group_from_counts(counts)
    log_prior = np.log(counts / counts.sum()).astype(np.float32)
    dtype = np.dtype(spec["dtype"])
    rng = np.random.default_rng(seed)
    splits = {}
    for name, n in spec["rows"].items():
        n = max(int(n * rows_scale), 10)
        y = rng.integers(0, c, n)
        logits = np.empty((n, len(EXPERTS), c), dtype=dtype)
        step = 2000
        for i in range(0, n, step):  # in chunks: float32 scratch stays small
            m = min(step, n - i)
            x = rng.standard_normal((m, len(EXPERTS), c), dtype=np.float32)
            x[np.arange(m), :, y[i:i + m]] += rng.uniform(1.0, 6.0, (m, len(EXPERTS))
                                                          ).astype(np.float32)
            x[:, 0, :] += 0.5 * log_prior
            x[:, 2, :] -= 0.1 * log_prior
            logits[i:i + m] = x
        splits[name] = ExpertSplit(logits=logits, labels=y)
        del logits
    bundle = ExpertBundle(EXPERTS, counts, c2g, splits)
    return save_bundle(bundle, out)


def write_layout(bundle_dir: Path, out: Path) -> Path:
    """The bundle of ``bundle_dir`` in the AR-GSE repository's layout, what ``seltune
    data import --kind argse`` reads: ``OUT/<expert>/<split>_logits.npy`` ``[N, C]``
    float32, ``OUT/<split>_labels.npy``, ``OUT/class_counts.json``; written through
    memory maps, a chunk at a time."""
    import numpy as np

    from core.bundles import load_bundle

    bundle = load_bundle(bundle_dir)
    out.mkdir(parents=True)
    (out / "class_counts.json").write_text(json.dumps(
        [int(c) for c in bundle.class_counts]))
    for e, name in enumerate(bundle.expert_names):
        (out / name).mkdir()
        for split, data in bundle.splits.items():
            n, c = data.logits.shape[0], data.logits.shape[2]
            dst = np.lib.format.open_memmap(out / name / f"{split}_logits.npy", mode="w+",
                                            dtype=np.float32, shape=(n, c))
            for i in range(0, n, 4096):
                dst[i:i + 4096] = data.logits[i:i + 4096, e, :]
            dst.flush()
            del dst
    for split, data in bundle.splits.items():
        np.save(out / f"{split}_labels.npy", np.asarray(data.labels))
    return out


# --------------------------------------------------------------------------- steps


def _touch(bundle) -> float:
    """Read every logit once (a sum), so that mapped or lazily decoded pages count."""
    total = 0.0
    for split in bundle.splits.values():
        lg = split.logits
        for i in range(0, lg.shape[0], 4096):
            total += float(lg[i:i + 4096, 0, 0].astype("float64").sum())
    return total


def _step(name: str, bundle_dir: str, full_old: bool) -> dict:
    """Run one step in this process (``sys.path`` already points at the code)."""
    import torch

    torch.set_num_threads(1)
    from core.bundles import load_bundle

    out: dict = {}
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    _touch(bundle)
    out["load_s"] = time.perf_counter() - t0
    if name == "load":
        out["wall_s"] = out["load_s"]
    elif name == "train":
        from core.argse.config import SelectiveConfig
        from core.argse.selective import train_selective

        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            res = train_selective(SelectiveConfig(), bundle, None, device="cpu", workdir=work)
            out["wall_s"] = time.perf_counter() - t0
        out["val_worst_group_error"] = float(res.metrics["worst_group_error"])
        out["val_balanced_error"] = float(res.metrics["balanced_error"])
        out["val_coverage"] = float(res.metrics["coverage"])
    elif name == "baselines":
        from core.argse import baselines as B

        t0 = time.perf_counter()
        fitted = B.fit_baselines(bundle)
        out["fit_s"] = time.perf_counter() - t0
        new = hasattr(fitted, "grouped_fit")
        if new or full_old:
            val = B.baseline_metrics(bundle, "val", COVERAGE, fitted)
            test = B.baseline_metrics(bundle, "test", COVERAGE, fitted)
            out["wall_s"] = time.perf_counter() - t0
            out["estimated"] = False
        else:
            # old code: one inner fit (Plug-in[Balanced]) measured; Plug-in[Worst] is
            # eg_steps = 10 inner fits of the same cost
            t1 = time.perf_counter()
            fitted.plugin[("balanced", COVERAGE)] = B.fit_plugin(
                fitted.fit_eta, fitted.fit_labels, fitted.class_to_group, fitted.num_groups,
                COVERAGE, "balanced")
            inner = time.perf_counter() - t1
            fitted.plugin[("worst", COVERAGE)] = fitted.plugin[("balanced", COVERAGE)]
            t1 = time.perf_counter()
            val = B.baseline_metrics(bundle, "val", COVERAGE, fitted)
            test = B.baseline_metrics(bundle, "test", COVERAGE, fitted)
            rest = time.perf_counter() - t1
            out["inner_fit_s"] = inner
            out["wall_s"] = out["fit_s"] + 11 * inner + rest
            out["estimated"] = True
        out["val_plugin_worst"] = val["plugin_worst"]["worst_group_error"]
        out["test_plugin_worst"] = test["plugin_worst"]["worst_group_error"]
    elif name == "rules":
        out.update(_rules(bundle))
    else:
        raise ValueError(f"unknown step {name!r}")
    out["peak_rss_mb"] = _peak_rss_self_mb()
    return out


def _peak_rss_self_mb() -> float:
    """This process's peak RSS since its exec (``VmHWM``). Not ``ru_maxrss``: Linux
    keeps that across ``fork``/``exec``, so a step started by a parent holding a loaded
    bundle would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rules(bundle) -> dict:
    """Margins of the 41 ``mu`` grid candidates on ``tunev`` (one plug-in inner step)."""
    import torch

    from core.argse import baselines as B
    from core.argse import margins as Mg
    from core.argse.data import class_to_group_tensor, split_tensors

    logits, _ = split_tensors(bundle, "tunev")
    eta = torch.softmax(logits, -1).mean(1).double()
    del logits
    c2g = class_to_group_tensor(bundle)
    k = bundle.num_groups
    lam = torch.linspace(-2, 2, 41, dtype=torch.float64)
    mus = torch.stack([lam / 2, -lam / 2], 1) if k == 2 else torch.zeros(41, k,
                                                                         dtype=torch.float64)
    alphas = torch.ones_like(mus) + 0.1 * torch.linspace(-1, 1, k, dtype=torch.float64)
    out: dict = {}
    if hasattr(Mg, "GroupedPosterior"):
        t0 = time.perf_counter()
        gp = Mg.GroupedPosterior.from_posterior(eta, c2g, k)
        out["group_once_s"] = time.perf_counter() - t0
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            B._batched_margins(gp, alphas, mus)
        out["eval_s"] = (time.perf_counter() - t0) / reps
    else:
        t0 = time.perf_counter()
        B._batched_margins(eta, alphas, mus, c2g)
        out["eval_s"] = time.perf_counter() - t0
    out["wall_s"] = out["eval_s"]
    out["candidates"] = 41
    return out


class _TreeMemory:
    """Samples, every ``period`` s, the RSS of every process under ``root_pid`` (the
    sweep's driver, its raylet and the Ray workers it starts) and the machine's used
    memory (``MemTotal - MemAvailable``), keeping each one's peak: ``getrusage`` of
    the driver cannot see the workers, and a sampled peak can only under-read."""

    def __init__(self, root_pid: int, period: float = 0.5):
        import threading

        self.root_pid, self.period = root_pid, period
        self.peak_mb: dict[int, float] = {}
        self.trial_pids: set[int] = set()
        self.machine_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for pid, cmdline in _descendants(self.root_pid).items():
                rss = _rss_mb(pid)
                if rss is None:  # it ended between the listing and the read
                    continue
                self.peak_mb[pid] = max(self.peak_mb.get(pid, 0.0), rss)
                if "ImplicitFunc" in cmdline:  # a Ray worker that ran a trial
                    self.trial_pids.add(pid)
            mem = _meminfo_mb()
            self.machine_peak_mb = max(self.machine_peak_mb,
                                       mem.get("MemTotal", 0) - mem.get("MemAvailable", 0))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _descendants(root: int) -> dict[int, str]:
    """``{pid: cmdline}`` of ``root`` and every process under it, from ``/proc``
    (psutil is not a dependency)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out[pid] = cmd
        todo += children.get(pid, [])
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _meminfo_mb() -> dict[str, float]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0]) / 1024.0
    return out


def _time_v(cmd: list[str], env: dict, timeout: float, sample_tree: bool = False,
            cwd: Path = REPO) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall, peak RSS (of the largest process
    of the tree that time waited for: the command itself), exit status; with
    ``sample_tree``, also the sampled peak RSS of each process in its tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(cwd),
                            start_new_session=True)  # a timeout stops the whole tree
    sampler = _TreeMemory(proc.pid) if sample_tree else None
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own session: the command and its Ray
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        if sampler is not None:
            sampler.stop()
    out: dict = {"wall_s": time.perf_counter() - t0, "exit": proc.returncode}
    if sampler is not None:
        out["worker_peak_rss_mb"] = sorted((sampler.peak_mb[p] for p in sampler.trial_pids),
                                           reverse=True)
        out["machine_used_peak_mb"] = sampler.machine_peak_mb
    for line in stderr.splitlines():
        if "Maximum resident set size" in line:
            out["peak_rss_mb"] = int(line.split(":")[-1]) / 1024.0
        elif "User time" in line:
            out["user_s"] = float(line.split(":")[-1])
        elif "System time" in line:
            out["sys_s"] = float(line.split(":")[-1])
    if proc.returncode != 0:
        out["error"] = f"exit {proc.returncode}: " + " | ".join(
            [x for x in stderr.splitlines() if "seltune" in x][-2:])
    return out


def _pswpout() -> int:
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("pswpout "):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def run_cli(bundle_dir: Path, tmp: Path, timeout: float) -> dict:
    """``seltune train argse-selective --data BUNDLE`` end to end (new code), with one
    torch thread as the issue's target states (a trial gets one)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return _time_v([sys.executable, "-m", "tuning.cli", "train", "argse-selective", "--data",
                    str(bundle_dir), "--out", str(tmp / "cli-train"), "--overwrite",
                    "--json"], env, timeout)


def run_import(code: Path, layout: Path, out: Path, timeout: float) -> dict:
    """``seltune data import --kind argse --from LAYOUT --out OUT`` with ``code``'s CLI."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return _time_v([sys.executable, "-m", "tuning.cli", "data", "import", "--kind", "argse",
                    "--from", str(layout), "--out", str(out), "--json"], env, timeout,
                   cwd=code)


def run_evaluate(bundle_dir: Path, tmp: Path, timeout: float) -> dict:
    """``seltune evaluate`` of the ``cli`` step's checkpoint on ``test`` (new code)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return _time_v([sys.executable, "-m", "tuning.cli", "evaluate",
                    str(tmp / "cli-train" / "gating_selective.ckpt"), "--data",
                    str(bundle_dir), "--split", "test", "--json"], env, timeout)


def run_sweep(bundle_dir: Path, tmp: Path, timeout: float) -> dict:
    """A 4-trial sweep with 2 concurrent trials in a private Ray / storage / cache."""
    priv = tmp / "sweep"
    for d in ("ray", "storage", "cache"):
        (priv / d).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_TMPDIR=str(priv / "ray"),
               SELTUNE_STORAGE=str(priv / "storage"), SELTUNE_CACHE=str(priv / "cache"),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    before = _pswpout()
    res = _time_v([sys.executable, "-m", "tuning.cli", "sweep", "--data", str(bundle_dir),
                   "--num-samples", "4", "--max-concurrent", "2", "--storage",
                   str(priv / "storage"), "--name", "scale", "--json"], env, timeout,
                  sample_tree=True)
    after = _pswpout()
    res["swapped_pages"] = (after - before) if before >= 0 and after >= 0 else None
    res["trial_s"] = _trial_times(priv / "storage" / "scale")
    return res


def _trial_times(exp: Path) -> list[float]:
    """Per-trial wall times from the trials' result.json (last minus first report
    time plus the first report's time_this_iter), where Tune wrote them."""
    times = []
    for f in sorted(exp.glob("**/result.json")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if rows and "time_total_s" in rows[-1]:
            times.append(float(rows[-1]["time_total_s"]))
    return times


def run_step(code: Path, name: str, bundle_dir: Path, full_old: bool, timeout: float) -> dict:
    """``name`` in a fresh interpreter importing ``core`` from ``code``."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "_step", name, str(bundle_dir),
           "--code", str(code)] + (["--full-old"] if full_old else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=str(code))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------- main


def _fmt(res: dict, key: str = "wall_s") -> str:
    if "error" in res:
        return res["error"]
    if key not in res:
        return "-"
    est = " (est.)" if res.get("estimated") else ""
    return f"{res[key]:.2f} s{est}"


def _rss(res: dict) -> str:
    return f"{res['peak_rss_mb'] / 1024:.2f} GB" if "peak_rss_mb" in res else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["imagenet-lt", "inat2018", "both"],
                    default="imagenet-lt")
    ap.add_argument("--old-commit", default=OLD_COMMIT)
    ap.add_argument("--skip-old", action="store_true")
    ap.add_argument("--full-old", action="store_true",
                    help="run the old plug-in fit to the end (~15 min at ImageNet-LT shape)")
    ap.add_argument("--rows-scale", type=float, default=1.0,
                    help="scale every split's rows (for a quick try)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per step, seconds")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cli", action="store_true",
                    help="also time `seltune train argse-selective` end to end (new code)")
    ap.add_argument("--sweep", action="store_true",
                    help="also run a 4-trial sweep, 2 concurrent (new code)")
    args = ap.parse_args(argv)
    shapes = ["imagenet-lt", "inat2018"] if args.shape == "both" else [args.shape]
    sys.path.insert(0, str(REPO))
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="seltune-scale-") as tmp:
        old = Path(tmp) / "old"
        if not args.skip_old:
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.old_commit],
                           cwd=REPO, check=True, capture_output=True)
        try:
            for shape in shapes:
                t0 = time.perf_counter()
                bdir = make_bundle(shape, Path(tmp) / shape, rows_scale=args.rows_scale)
                size = sum(f.stat().st_size for f in bdir.iterdir()) / 2**30
                print(f"[{shape}] bundle made in {time.perf_counter() - t0:.0f} s, "
                      f"{size:.2f} GB on disk", flush=True)
                bdir_old = bdir
                if not args.skip_old:
                    # the old code reads format 1 (Parquet) only: the same arrays, rewritten
                    from core.bundles import load_bundle, save_bundle_v1

                    bdir_old = save_bundle_v1(load_bundle(bdir), Path(tmp) / f"{shape}-v1")
                steps = ["load", "rules", "train", "baselines"]
                res: dict = {"disk_gb": size, "new": {}, "old": {}}
                layout = write_layout(bdir, Path(tmp) / f"{shape}-layout")
                res["new"]["import"] = run_import(REPO, layout, Path(tmp) / f"{shape}-imp-new",
                                                  args.timeout)
                print(f"[{shape}] new import: {_fmt(res['new']['import'])}, "
                      f"{_rss(res['new']['import'])}", flush=True)
                if not args.skip_old and (shape == "imagenet-lt" or args.full_old):
                    res["old"]["import"] = run_import(old, layout, Path(tmp) / f"{shape}-imp-old",
                                                      args.timeout)
                    print(f"[{shape}] old import: {_fmt(res['old']['import'])}, "
                          f"{_rss(res['old']['import'])}", flush=True)
                shutil.rmtree(layout)
                for step in steps:
                    res["new"][step] = run_step(REPO, step, bdir, False, args.timeout)
                    print(f"[{shape}] new {step}: {_fmt(res['new'][step])}, "
                          f"{_rss(res['new'][step])}", flush=True)
                    old_ok = not args.skip_old and (shape == "imagenet-lt" or args.full_old
                                                    or step in ("load", "rules"))
                    if old_ok:
                        res["old"][step] = run_step(old, step, bdir_old, args.full_old,
                                                    args.timeout)
                        print(f"[{shape}] old {step}: {_fmt(res['old'][step])}, "
                              f"{_rss(res['old'][step])}", flush=True)
                if args.cli:
                    res["new"]["cli"] = run_cli(bdir, Path(tmp), args.timeout)
                    print(f"[{shape}] new cli: {_fmt(res['new']['cli'])}, "
                          f"{_rss(res['new']['cli'])}", flush=True)
                    res["new"]["evaluate"] = run_evaluate(bdir, Path(tmp), args.timeout)
                    print(f"[{shape}] new evaluate: {_fmt(res['new']['evaluate'])}, "
                          f"{_rss(res['new']['evaluate'])}", flush=True)
                if args.sweep:
                    res["new"]["sweep"] = run_sweep(bdir, Path(tmp), args.timeout)
                    sw = res["new"]["sweep"]
                    print(f"[{shape}] new sweep (4 trials, 2 concurrent): {_fmt(sw)}, "
                          f"driver {_rss(sw)}, workers' peaks "
                          f"{[round(x / 1024, 2) for x in sw.get('worker_peak_rss_mb', [])]} GB, "
                          f"machine used at most "
                          f"{sw.get('machine_used_peak_mb', 0) / 1024:.2f} GB, "
                          f"trials {[round(t, 1) for t in sw.get('trial_s', [])]} s, "
                          f"swapped pages {sw.get('swapped_pages')}", flush=True)
                o, n = res["old"].get("rules", {}), res["new"]["rules"]
                if "eval_s" in o and "eval_s" in n:
                    print(f"[{shape}] rule evaluation speed-up (41 candidates): "
                          f"{o['eval_s'] / n['eval_s']:.0f}x (C/K = "
                          f"{SHAPES[shape]['classes'] // 2})", flush=True)
                results[shape] = res
        finally:
            if not args.skip_old:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                               check=False, capture_output=True)
    print(markdown(results, " ".join(["python benchmarks/scale.py", *(argv or sys.argv[1:])])))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def markdown(results: dict, command: str) -> str:
    lines = [f"Command: `{command}`", ""]
    for shape, res in results.items():
        lines += [f"**{shape}** ({res['disk_gb']:.2f} GB on disk)", "",
                  "| step | old wall | old peak RSS | new wall | new peak RSS |",
                  "|---|---|---|---|---|"]
        for step in ("import", "load", "rules", "train", "baselines", "cli", "evaluate",
                     "sweep"):
            o, n = res["old"].get(step, {}), res["new"].get(step, {})
            if not o and not n:
                continue
            lines.append(f"| {step} | {_fmt(o)} | {_rss(o)} | {_fmt(n)} | {_rss(n)} |")
        o, n = res["old"].get("rules", {}), res["new"].get("rules", {})
        if "eval_s" in o and "eval_s" in n:
            lines += ["", f"Rule evaluation (41 candidates on tunev): {o['eval_s']:.3f} s -> "
                      f"{n['eval_s'] * 1000:.2f} ms, {o['eval_s'] / n['eval_s']:.0f}x; the "
                      f"one-off grouping of the posterior {n.get('group_once_s', 0):.3f} s."]
        tr, bl = res["new"].get("train", {}), res["new"].get("baselines", {})
        if "wall_s" in tr and "wall_s" in bl:
            lines += [f"New: training + baselines {tr['wall_s'] + bl['wall_s']:.1f} s."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        sp = argparse.ArgumentParser()
        sp.add_argument("cmd")
        sp.add_argument("name")
        sp.add_argument("bundle")
        sp.add_argument("--code", required=True)
        sp.add_argument("--full-old", action="store_true")
        a = sp.parse_args()
        sys.path.insert(0, a.code)
        print(json.dumps(_step(a.name, a.bundle, a.full_old)))
        sys.exit(0)
    sys.exit(main())
