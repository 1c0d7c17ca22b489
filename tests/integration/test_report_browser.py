"""The export report opened in a real browser (headless Chromium, Debian ``chromium``).

The report is built as in ``tests/unit/tuning/test_report.py`` (a real AR-GSE
checkpoint from a one-cycle ``train_selective``, a small SQLite study, hand-made
status/ledger/result), without Ray. A copy of the page gets a small script at the top
of ``<head>`` that records uncaught errors, failed resource loads and
``console.error`` calls, and on ``load`` writes what it saw (images decoded, page
width against the window) into the DOM, which ``chromium --dump-dom`` prints.

Chromium is installed with apt-get once per session when missing (needs root), like
the PostgreSQL fixture; without apt-get or root the tests skip, saying why.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
INPUTS = HERE.parent / "unit" / "tuning" / "test_report.py"

CHECK_SCRIPT = """<script>
window.__seltune_errors = [];
window.addEventListener('error', function (e) {
  var what = e.message || ((e.target && e.target.tagName) + ' failed to load');
  window.__seltune_errors.push('error: ' + what);
}, true);
(function () {
  var orig = console.error;
  console.error = function () {
    window.__seltune_errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return orig.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var root = document.documentElement;
  var out = {
    images: imgs.length,
    undecoded: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt; }),
    errors: window.__seltune_errors,
    scrollWidth: root.scrollWidth,
    clientWidth: root.clientWidth
  };
  var pre = document.createElement('pre');
  pre.id = 'seltune-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the ``chromium`` binary, installed with apt-get if missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs apt-get as root "
                    "(apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600,
                       check=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get install chromium failed:\n{proc.stderr[-3000:]}")
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("apt-get install chromium finished but no chromium binary is on PATH")
    return found


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    """The report of a tiny real export (see the module docstring)."""
    spec = importlib.util.spec_from_file_location("seltune_report_inputs", INPUTS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from tuning.results.html_report import write_report

    tmp = tmp_path_factory.mktemp("report-browser")
    path = write_report(tmp / "export", **mod.build_report_inputs(tmp / "inputs"))
    text = path.read_text()
    assert "could not be drawn" not in text, "a report section failed; see the log"
    return path


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180)


def test_report_loads_without_errors_every_image_decodes_and_page_fits(chromium,
                                                                       report_html, tmp_path):
    page = tmp_path / "checked.html"
    page.write_text(report_html.read_text().replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    # 800 px: narrower than the widest table, which must scroll inside its container
    proc = _chromium(chromium, tmp_path / "profile", "--window-size=800,900",
                     "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    found = re.search(r"<pre id=\"seltune-check\">(.*?)</pre>", proc.stdout, re.S)
    assert found, f"no check result in the DOM (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["errors"] == []
    assert seen["images"] == 5
    assert seen["undecoded"] == []
    assert seen["scrollWidth"] <= seen["clientWidth"], seen
    assert "Uncaught" not in proc.stderr


def test_report_screenshot_shows_the_curves_not_a_blank_page(chromium, report_html, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = _chromium(chromium, tmp_path / "profile", "--window-size=1200,2400",
                     f"--screenshot={shot}", report_html.as_uri())
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1200, 2400)
        colours = rgb.getcolors(maxcolors=1 << 20) or []
    # a blank or text-only page has a handful of colours; the plots' lines and markers
    # (anti-aliased, ten colours) give hundreds
    assert len(colours) > 200, len(colours)
    white = max(count for count, c in colours if c == (255, 255, 255)) if any(
        c == (255, 255, 255) for _, c in colours) else 0
    assert white < 0.97 * 1200 * 2400
