"""Every "PROTOCOL.md section N" the code cites names a section of docs/PROTOCOL.md.

The protocol notes used to live outside the repository, so a citation could point
at nothing; this keeps each one resolvable as the document grows.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "PROTOCOL.md"
SCANNED = ("blockrun_proxy", "tests", "bench")

_NUMBER = r"\d+(?:\.\d+)?"
# "PROTOCOL.md section 5 rule 4", "(PROTOCOL.md 3)", "PROTOCOL.md 9.4 to 9.6",
# "docs/PROTOCOL.md sections 3 and 9", and citations broken over comment lines.
CITATION = re.compile(
    rf"PROTOCOL\.md[\s#]*(?:sections?[\s#]+)?(?P<first>{_NUMBER})"
    rf"(?P<more>(?:[\s#]+(?:and|to)[\s#]+{_NUMBER})*)"
    r"(?:,?[\s#]+rule[\s#]+(?P<rule>\d+))?"
)
HEADING = re.compile(rf"^#{{2,3}} (?P<number>{_NUMBER})[. ]", re.MULTILINE)


def sections() -> dict[str, str]:
    """Each numbered heading's number, mapped to its text up to the next heading."""
    text = DOC.read_text()
    found = list(HEADING.finditer(text))
    return {
        m["number"]: text[m.end() : found[i + 1].start() if i + 1 < len(found) else len(text)]
        for i, m in enumerate(found)
    }


def citations() -> list[tuple[str, list[str], str | None]]:
    cited = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == Path(__file__):
                continue
            for match in CITATION.finditer(path.read_text()):
                numbers = [match["first"], *re.findall(_NUMBER, match["more"])]
                cited.append((str(path.relative_to(ROOT)), numbers, match["rule"]))
    return cited


def test_the_code_cites_the_document() -> None:
    # Guards the regex: if it stopped matching, every other check would pass vacuously.
    assert len(citations()) >= 15


def test_every_citation_resolves() -> None:
    known = sections()
    missing = []
    for where, numbers, rule in citations():
        for number in numbers:
            if number not in known:
                missing.append(f"{where}: section {number}")
        if rule is not None and not re.search(rf"^{rule}\. ", known.get(numbers[0], ""), re.M):
            missing.append(f"{where}: section {numbers[0]} rule {rule}")
    assert missing == []


def test_section_numbers_are_unique_and_the_old_ones_kept() -> None:
    numbers = [m["number"] for m in HEADING.finditer(DOC.read_text())]
    assert len(numbers) == len(set(numbers))
    # The numbering the code was written against before this file existed.
    assert {"1", "2", "3", "4", "5", "6", "7", "8"} <= set(numbers)
