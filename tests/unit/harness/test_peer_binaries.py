"""The suite finds host programs only where the Makefile puts them.

A program a test runs must come from a package `make apt-deps` installs (or
from the peer chroot `make asterisk-chroot` builds): a package once installed
by hand on a used machine otherwise hides the missing step until a fresh
machine fails (issue 11: the host's /usr/sbin/kamailio after Kamailio moved
to the chroot).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.peers import HOST_BINARIES, host_binary

ROOT = Path(__file__).resolve().parents[3]


def _apt_packages() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^APT_PACKAGES\s*:=\s*(.+)$", text, re.MULTILINE)
    assert match, "Makefile has no APT_PACKAGES line"
    return set(match.group(1).split())


def test_every_host_program_comes_from_a_package_the_makefile_installs() -> None:
    missing = {name: pkg for name, pkg in HOST_BINARIES.items() if pkg not in _apt_packages()}
    assert not missing, f"not in the Makefile's APT_PACKAGES: {missing}"


def test_programs_are_looked_up_only_through_host_binary() -> None:
    lookup = re.compile(r"shutil\.which\(|/usr/s?bin/")
    allowed = {ROOT / "tests" / "peers" / "__init__.py"}
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path in allowed or path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if lookup.search(line) and not ('"chroot"' in line or "in the peer chroot" in line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "host programs found outside host_binary():\n" + "\n".join(offenders)


def test_an_unlisted_program_is_refused() -> None:
    with pytest.raises(KeyError, match="HOST_BINARIES"):
        host_binary("kamailio")
