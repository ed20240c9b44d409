"""MkDocs hooks: the pages that are generated at build time, never hand-copied.

- `cli.md`: the command-line reference, the `--help` text of `scorelab` and of every sub-command, taken from the
  argparse parser that `scorelab` itself runs (`scorelab.cli.build_parser`), so it cannot drift from the code.
- `shipped/<model>/index.md`: the model cards `models/<model>/README.md` with the files they show.
- `bench/results/*.png`: the benchmark figures, at the same relative path as in the repository, so a page can show
  `bench/results/teleport.png` as the README does.

`python docs/hooks.py` prints the CLI reference (to check it without building the site).
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELP_WIDTH = 100


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(name path, parser) for `parser` and every sub-command below it, depth first in declaration order."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # aliases point at the same parser
                    continue
                seen.add(id(sub))
                yield from _commands(sub, prefix + (name,))


def cli_markdown() -> str:
    """The CLI reference page: one section per command with its `--help` output."""
    from scorelab.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)  # argparse wraps to the terminal width: fix it for a stable page
    try:
        parser = build_parser()
        parts = ["# Command line\n",
                 "Every command below prints this text with `--help`; this page is generated from the same "
                 "parser when the site is built. Each command shows a progress bar on long work, writes PNG "
                 "grids or JSON, and on bad input prints one line and exits with status 2.\n"]
        for path, sub in _commands(parser):
            title = " ".join(("scorelab",) + path)
            level = "#" * min(2 + max(len(path) - 1, 0), 4)
            parts.append(f"{level} `{title}`\n\n```text\n$ {title} --help\n{sub.format_help().rstrip()}\n```\n")
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


# A card written for the repository names the project's design notes and the README, which are not part of the
# site: on the site those become words, not file names.
_OUTSIDE = [(re.compile(r"\(DESIGN\.md,\s+"), "(the project's protocol, "), (re.compile(r"DESIGN\.md's"), "the project's"),
            (re.compile(r"\(DESIGN\.md bar\)"), "(the project's bar)"), (re.compile(r"DESIGN\.md"), "the project's design"),
            (re.compile(r"\bmain README\b"), "documentation"), (re.compile(r"\bin the README\b"), "in the documentation")]

# A model card links to files of the repository that are not pages of the site (scripts, JSON): show those as code.
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(((?!https?://|#)[^)\s]+)\)")


def _card_markdown(card: Path, site_files: set[str], page_dir: str) -> str:
    text = card.read_text(encoding="utf-8")
    for pattern, words in _OUTSIDE:
        text = pattern.sub(words, text)

    def keep_or_flatten(m):
        label, target = m.group(1), m.group(2)
        if re.search(r"(^|/)README\.md($|#)", target):  # another card: its page on the site
            target = re.sub(r"README\.md", "index.md", target)
            target = re.sub(r"^\.\./\.\./models/", "../", target)
        resolved = os.path.normpath(os.path.join(page_dir, target.split("#")[0])).replace(os.sep, "/")
        if resolved in site_files:
            return f"[{label}]({target})"
        return label if label.startswith("`") else f"`{label}`"

    return _LINK.sub(keep_or_flatten, text)


def on_files(files, config):
    from mkdocs.structure.files import File

    def add(src_uri: str, **kw):
        if files.get_file_from_path(src_uri) is None:
            files.append(File.generated(config, src_uri, **kw))

    add("cli.md", content=cli_markdown())
    for png in sorted((ROOT / "bench" / "results").glob("*.png")):
        add(f"bench/results/{png.name}", abs_src_path=str(png))
    cards = sorted((ROOT / "models").glob("*/README.md"))
    for card in cards:
        for extra in sorted(card.parent.glob("*.png")):
            add(f"shipped/{card.parent.name}/{extra.name}", abs_src_path=str(extra))
    site_files = {f.src_uri for f in files}
    for card in cards:
        page_dir = f"shipped/{card.parent.name}"
        add(f"{page_dir}/index.md", content=_card_markdown(card, site_files, page_dir))
    return files


if __name__ == "__main__":
    print(cli_markdown())
