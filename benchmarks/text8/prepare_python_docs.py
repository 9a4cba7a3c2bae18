r"""Write the Python 3.11 manual as a text8-format file: real English text, available offline.

Debian's ``python3.11-doc`` package (the CPython documentation, PSF License Version 2) ships the
whole manual as one Texinfo file, ``usr/share/info/python3.11.info.gz``. This script keeps the
manual's body (it stops before the module index, the general index and the tag table, which are
lists of names and byte offsets), drops node headers and menus, replaces ``*note`` cross-
references by their text, and cleans the rest with ``plmu.data.text8.to_text8_alphabet`` (lower
case, digits spelled out, everything else a space). English technical prose with code examples.

    apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb pydoc
    python benchmarks/text8/prepare_python_docs.py \
        pydoc/usr/share/info/python3.11.info.gz data/pydoc

writes ``data/pydoc/text8`` (11.83M characters from 3.11.2-6+deb12u9), ready for
``plmu train text8 --data-dir data/pydoc``.
"""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

from plmu.data.text8 import to_text8_alphabet


def clean_info(raw: str) -> str:
    """The manual's body in the text8 alphabet (see the module docstring)."""
    end = raw.find("Node: Python Module Index")
    if end < 0:
        raise ValueError("no 'Python Module Index' node: is this python3.x.info?")
    raw = raw[:end]
    raw = re.sub(r"^File: .*$", "", raw, flags=re.M)  # node headers
    raw = re.sub(r"^\* .*$", "", raw, flags=re.M)  # menus
    raw = re.sub(r"\*[Nn]ote\s+([^:*]{1,80}?)::", r"\1", raw)  # *note Node::
    raw = re.sub(r"\*[Nn]ote\s+([^:*]{1,80}?):\s*[^\s.,]+[.,]", r"\1", raw)  # *note text: id.
    return to_text8_alphabet(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("info", type=Path, help="python3.11.info.gz from python3.11-doc")
    parser.add_argument("out", type=Path, help="output directory (gets the file 'text8')")
    args = parser.parse_args()
    with gzip.open(args.info, "rt", encoding="utf-8") as f:
        text = clean_info(f.read())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text8").write_text(text)
    print(f"{args.out / 'text8'}: {len(text):,} characters")


if __name__ == "__main__":
    main()
