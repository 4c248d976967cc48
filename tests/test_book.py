"""The book as a whole: packaging in step, notebooks committed executed, the book builds clean
with -W, every chapter page has its Colab launch and download buttons, and math renders offline."""
import json
import pathlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import functools
import http.server

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
REPO_URL = CONFIG["repository"]["url"]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _bound(req: str) -> str:
    return req.split(";")[0].strip()[len(_name(req)):].replace(" ", "")


def _applies(req: str) -> bool:
    """False for a requirement whose environment marker excludes this interpreter."""
    return ";" not in req or sys.version_info < (3, 11)  # our only marker: python_version < "3.11"


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_name(r): _bound(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted.update({_name(r): _bound(r) for r in extra if ";" not in r})
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda_names = {"pytorch": "torch"}
    have = {}
    for dep in env["dependencies"]:
        for req in dep["pip"] if isinstance(dep, dict) else [dep]:
            if req.startswith("-e") or _name(req) in {"python", "pip"}:
                continue
            have[conda_names.get(_name(req), _name(req))] = _bound(req)
    assert have == wanted, "environment.yml and pyproject.toml list different packages or bounds"


def test_constraints_pin_every_package_and_torch():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = version
    assert pins.get("torch") == "2.13.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    missing = [_name(r) for r in reqs if _applies(r) and _name(r) not in pins]
    assert not missing, f"constraints.txt does not pin {missing}"


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = []

    def walk(entries):
        for e in entries or []:
            files.append(e["file"])
            walk(e.get("sections"))

    for part in toc["parts"]:
        walk(part["chapters"])
    return files


def test_toc_lists_every_notebook_and_seven_parts():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    assert [p["caption"].split(".")[0] for p in toc["parts"][:7]] == ["I", "II", "III", "IV", "V", "VI", "VII"]
    listed = {f for f in _toc_files() if f.startswith("notebooks/")}
    assert listed == {f"notebooks/{p.stem}" for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_executed(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    counts = [c["execution_count"] for c in code]
    assert None not in counts, f"{path.name}: {counts.count(None)} code cells never executed (run `make execute`)"
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not executed top to bottom in one fresh kernel"
    assert all(c["outputs"] for c in code[-1:]), f"{path.name}: the summary cell has no stored output"
    for c in code:
        src = "".join(c["source"])
        assert "NBVAL_SKIP" not in src, f"{path.name}: a cell is skipped by nbval"
        for out in c["outputs"]:
            assert out["output_type"] != "error", f"{path.name}: a stored error output"
            if out.get("name") == "stderr":
                pytest.fail(f"{path.name}: stderr output stored (a warning?): {''.join(out['text'])[:200]}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_header_and_colab_cell(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    header = "".join(nb["cells"][0]["source"])
    assert header.startswith("# "), f"{path.name}: the first cell must be the title"
    assert re.search(r"\[[^\]]*[\u4e00-\u9fff][^\]]*\]\(https://kexue\.fm/archives/\d+\)", header), (
        f"{path.name}: the header must link the original Chinese title to kexue.fm"
    )
    setup = next(c for c in nb["cells"] if c["cell_type"] == "code")
    src = "".join(setup["source"])
    assert '"google.colab" in sys.modules' in src, f"{path.name}: the first code cell must guard the Colab install"
    assert f"git+{REPO_URL}" in src, f"{path.name}: the Colab install must use the repository set in _config.yml"
    last = "".join(nb["cells"][-1]["source"])
    assert "verify.summary()" in last, f"{path.name}: the last cell must show verify.summary()"


def test_floating_point_path_is_pinned():
    """Stored outputs reproduce only on the pinned floating-point path (the Makefile's FP_PINS): `make test` sets it."""
    import platform

    import torch

    if os.environ.get("KEXUE_FP_PINNED") != "1":
        pytest.fail("the floating-point path is not pinned: run the tests with `make test` (see the Makefile's FP_PINS)")
    if platform.machine() in ("x86_64", "AMD64"):
        assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()
        for key, value in (("ONEDNN_MAX_CPU_ISA", "AVX2"), ("MKL_CBWR", "AVX2"), ("OPENBLAS_CORETYPE", "Haswell")):
            assert os.environ.get(key) == value, f"{key} is {os.environ.get(key)!r}, not {value!r}"
    assert torch.get_num_threads() == 1


def test_ledger_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "ledger.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="session")
def built_book():
    """Build the book exactly as `make book` does (clean doctrees, -W -n --keep-going)."""
    shutil.rmtree(ROOT / "_build" / ".doctrees", ignore_errors=True)
    subprocess.run([sys.executable, str(ROOT / "tools" / "install_mathjax.py")], check=True)
    jb = pathlib.Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run([str(jb), "build", str(ROOT), "-W", "-n", "--keep-going"], capture_output=True, text=True)
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "warning" not in result.stderr.lower(), result.stderr[-4000:]
    return ROOT / "_build" / "html"


def test_book_builds_clean(built_book):
    assert (built_book / "index.html").exists()
    for path in NOTEBOOKS:
        assert (built_book / "notebooks" / f"{path.stem}.html").exists(), f"no page for {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_page_buttons_and_outputs(built_book, path):
    html = (built_book / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
    assert "colab.research.google.com/github/" in html and f"notebooks/{path.stem}.ipynb" in html, "no Colab launch button"
    assert f"_sources/notebooks/{path.stem}.ipynb" in html, "no download button for the .ipynb"
    assert "PASS C1" in html, "stored outputs are not rendered"
    assert "| claim |" not in html, "the summary table was not rendered as a table"


def test_math_is_served_locally(built_book):
    html = (built_book / "notebooks" / "sector_probability.html").read_text(encoding="utf-8")
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
    mathjax = [s for s in scripts if "mathjax" in s.lower()]
    assert mathjax and all(not s.startswith(("http:", "https:", "//")) for s in mathjax), mathjax
    assert (built_book / "_static" / "mathjax" / "MathJax.js").exists()


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser_or_skip():
    """The browser's path; in CI (``CI`` set) a missing browser fails the test instead of skipping it."""
    path = _chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but headless Chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    return path


def test_math_renders_offline_in_a_browser(built_book):
    browser = _browser_or_skip()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(built_book))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{port}/notebooks/sector_probability.html"]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    finally:
        server.shutdown()
    rendered = len(re.findall(r'class="MathJax[_ "]', dom))
    assert rendered >= 5, f"MathJax rendered {rendered} formulas; the page's math was not typeset offline"
    assert "Math Processing Error" not in dom
