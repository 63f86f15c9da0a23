"""Build the labelled text sets that classify's defaults were measured on (docs/tasks.md).

    python benchmarks/classify_sets.py OUT_DIR

writes `label<TAB>text` files, each from material on a Debian machine (nothing downloaded):

- messages.tsv: the language of a program message (es, fr, it, pt: four close Romance
  languages), from the gettext catalogs under /usr/share/locale; 70-200 characters, at most
  1,700 a language, a text found in two languages (untranslated, shared terms) dropped.
- nordic.tsv: the same for da, nb, sv (very close) and de, nl, with a shorter range
  (15-60 characters, at most 1,200 a language).
- debian.tsv: the section of a Debian package (12 topics: admin, devel, doc, games, graphics,
  math, net, science, sound, text, utils, x11; not the sections of a programming language,
  whose descriptions name it) from its one-line description in apt's package list (bookworm
  main); 400 a section.
The built-in surnames set (`--dataset surnames`) is the fourth.
"""

from __future__ import annotations

import gettext
import glob
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path


def catalog_texts(language: str, low: int, high: int) -> set[str]:
    out = set()
    for path in sorted(glob.glob(f"/usr/share/locale/{language}/LC_MESSAGES/*.mo")):
        if "/iso_" in path:  # lists of names, not sentences
            continue
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except UnicodeDecodeError:  # a catalog in a legacy encoding: left out
            continue
        for source, text in catalog.items():
            if not isinstance(source, str) or not source or not isinstance(text, str):
                continue  # the header and plural forms
            text = " ".join(text.split())
            if text != " ".join(source.split()) and low <= len(text) <= high:
                out.add(text)
    return out


def languages_set(languages, low, high, most, seed=0) -> list[tuple[str, str]]:
    texts = {lang: catalog_texts(lang, low, high) for lang in languages}
    count = Counter(t for ts in texts.values() for t in ts)
    rng = random.Random(seed)
    rows = []
    for lang in languages:
        unique = sorted(t for t in texts[lang] if count[t] == 1)
        rows += [(lang, t) for t in rng.sample(unique, min(most, len(unique)))]
    return rows


TOPICS = (
    "admin",
    "devel",
    "doc",
    "games",
    "graphics",
    "math",
    "net",
    "science",
    "sound",
    "text",
    "utils",
    "x11",
)


def debian_set(most=400, seed=0) -> list[tuple[str, str]]:
    lists = sorted(glob.glob("/var/lib/apt/lists/*_Packages.lz4"))
    if not lists:
        raise SystemExit("no apt package list under /var/lib/apt/lists (run apt-get update)")
    by_section = defaultdict(set)
    for path in lists:
        text = subprocess.run(["lz4cat", path], capture_output=True, check=True, text=True).stdout
        for block in text.split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if ": " in line and not line[0].isspace()
            )
            section, description = fields.get("Section", ""), fields.get("Description", "")
            section = section.split("/")[-1]
            if section in TOPICS and description:
                by_section[section].add(" ".join(description.split()))
    count = Counter(d for ds in by_section.values() for d in ds)
    rng = random.Random(seed)
    rows = []
    for section in sorted(by_section):
        unique = sorted(d for d in by_section[section] if count[d] == 1)
        rows += [(section, d) for d in rng.sample(unique, min(most, len(unique)))]
    return rows


def write(path: Path, rows) -> None:
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    lengths = sorted(len(t) for _, t in rows)
    labels = Counter(label for label, _ in rows)
    print(
        f"{path}: {len(rows)} lines, {len(labels)} labels, characters median {lengths[len(lengths) // 2]} "
        f"(min {lengths[0]}, max {lengths[-1]}); per label {dict(sorted(labels.items()))}"
    )


SETS = {
    "messages": lambda: languages_set(("es", "fr", "it", "pt"), 70, 200, 1700),
    "nordic": lambda: languages_set(("da", "de", "nb", "nl", "sv"), 15, 60, 1200),
    "debian": debian_set,
}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "classify_sets")
    out.mkdir(parents=True, exist_ok=True)
    for name, build in SETS.items():
        write(out / f"{name}.tsv", build())


if __name__ == "__main__":
    main()
