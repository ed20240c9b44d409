"""The documentation: the README stays a short front door, and the MkDocs site builds with --strict (as `make docs`
does), then renders in headless Chromium: HTML rather than raw Markdown, the search box working, every image
decoded, no failed request or script error; the CLI reference is the real `--help` text."""
from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_readme_is_a_short_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for needle in ("make demo", "make test", "make docs", "```python", "scorelab fit gaussian", "| sampler |"):
        assert needle in text, needle
    # every relative link and image points at a file of the repository, never outside it
    targets = re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", text)
    assert targets, "the README links to the documentation pages"
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert len(images) == 1 and images[0].endswith(".png")
    for target in targets:
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), target
    assert not re.search(r"load average|RESULTS:BEGIN|\.\./shared|issue #?\d", text, re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built as `make docs` builds it (result pages, then mkdocs build --strict), all in a temporary folder:
    a copy of docs/ with its generated result pages and mkdocs.yml pointed at it, so nothing in the tree is written
    and parallel test workers cannot collide."""
    import mkdocs  # noqa: F401  (the docs extra is part of the test set-up: missing, this fails rather than skips)
    import mkdocstrings  # noqa: F401
    import yaml

    work = tmp_path_factory.mktemp("docs-build")
    docs = work / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("results", "__pycache__"))
    for name in ("models", "bench"):  # what docs/hooks.py reads beside docs/ (model cards, figures)
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config["docs_dir"] = str(docs)
    config["site_dir"] = str(work / "site")
    config["hooks"] = [str(docs / Path(h).name) for h in config["hooks"]]
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            handler = plugin["mkdocstrings"]["handlers"]["python"]
            handler["paths"] = [str(ROOT / p) for p in handler["paths"]]
    (work / "mkdocs.yml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    pages = subprocess.run([sys.executable, "-m", "bench.pages", "--out", str(docs / "results")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert pages.returncode == 0, pages.stderr[-3000:]
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(work / "mkdocs.yml")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert build.returncode == 0, build.stderr[-3000:]
    assert not re.search(r"^(WARNING|ERROR)", build.stderr, re.M), build.stderr[-3000:]
    return work / "site"


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "chromium is needed for this test (make test installs it: apt-get install -y chromium)"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1200, "height": 900})
        yield context
        context.close()


def open_page(browser, url):
    """The page at `url` after it loaded, with every failed request and script error it produced."""
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return page, problems


# the article's visible text outside code blocks: Markdown that was not converted would show up here
PROSE_JS = """() => {
  const article = document.querySelector("article").cloneNode(true);
  article.querySelectorAll("pre, code, .highlight").forEach(e => e.remove());
  document.body.appendChild(article);            // innerText needs a rendered element
  const text = article.innerText;
  article.remove();
  return text;
}"""
IMAGES_JS = "() => Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"


def check_rendered(page, problems):
    assert not problems, problems
    prose = page.evaluate(PROSE_JS)
    assert len(prose) > 200
    raw = [line for line in prose.splitlines()
           if re.match(r"\s*(#{1,6} |```|\|\s*-{3})", line) or re.search(r"\]\([^)]*\)|!\[", line)]
    assert not raw, raw[:5]
    images = page.evaluate(IMAGES_JS)
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, broken
    return prose, images


def check_index(server, browser):
    page, problems = open_page(browser, server + "/")
    prose, images = check_rendered(page, problems)
    assert page.title().startswith("scorelab")
    assert "Score functions of diffusion models" in prose
    assert any(src.endswith("teleport.png") for src, _, _ in images)
    assert page.locator("table").count() >= 1 and page.locator("article h1").first.inner_text().rstrip("¶") == "scorelab"
    nav = page.locator("nav.md-nav--primary").inner_text()
    for title in ("Concepts", "Samplers and teleportation", "Results", "Limits", "API reference"):
        assert title in nav, title
    # the search box is there and answers from the built index (Material's search runs in a web worker)
    box = page.locator("input.md-search__input")
    assert box.count() == 1
    box.focus()
    box.press_sequentially("teleportation", delay=20)  # typed, as a reader would: the search listens to keys
    results = page.locator(".md-search-result__item")
    results.first.wait_for(timeout=30_000)
    assert results.count() >= 1 and "teleport" in results.first.inner_text().lower()
    assert not problems, problems
    page.close()


def check_api_page(server, browser):
    page, problems = open_page(browser, server + "/api/samplers/")
    prose, _ = check_rendered(page, problems)
    headings = page.locator(".doc-heading").all_inner_texts()
    for name in ("euler", "heun", "dpmpp_2m", "unipc", "edm_stochastic"):
        assert any(re.search(rf"\b{name}\b", h) for h in headings), (name, headings[:20])
    signatures = " ".join(page.locator(".doc-signature").all_inner_texts())
    assert "extra_args" in signatures and "sigmas" in signatures
    # a docstring's text, rendered
    import scorelab.samplers as samplers

    first_line = samplers.euler.__doc__.strip().splitlines()[0]
    assert first_line.split(":")[0][:30] in prose
    page.close()


def check_model_card(server, browser):
    page, problems = open_page(browser, server + "/shipped/fashion-mnist-unet/")
    _, images = check_rendered(page, problems)
    assert any(src.endswith("samples_heun18.png") for src, _, _ in images)
    page.close()


def test_site_renders_in_headless_chromium(server, browser):
    """One test, so that the site is built once even when the tests run on several workers."""
    check_index(server, browser)
    check_api_page(server, browser)
    check_model_card(server, browser)


def test_cli_reference_is_the_help_text():
    """Every line that `scorelab sample --help` (and `fit gaussian`) prints is on the generated CLI page, which
    docs/hooks.py writes at build time."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.cli_markdown()
    env = dict(os.environ, COLUMNS=str(hooks.HELP_WIDTH))
    for command in (["sample"], ["fit", "gaussian"]):
        help_text = subprocess.run([sys.executable, "-m", "scorelab.cli", *command, "--help"], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=60)
        assert help_text.returncode == 0, help_text.stderr
        block = f"```text\n$ scorelab {' '.join(command)} --help\n{help_text.stdout.rstrip()}\n```"
        assert block in page
    from scorelab.cli import COMMANDS

    for name in COMMANDS:
        assert f"`scorelab {name}`" in page, name
