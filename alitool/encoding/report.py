"""What a run of the encoder G_z(x) / decoder G_x(z) over many inputs did (Dumoulin et al. 2017, section 2, at
scale), and how it is told: one warning line per skipped or damaged input, one summary line at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from alitool.encoding.decoding import Notice
from alitool.io.sources import Skipped


@dataclass
class RunReport:
    """What a run did: rows produced, and every input skipped or worth a warning, in input order."""

    rows: int = 0
    dim: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    warn: Callable[[str], None] = field(default=lambda line: stderr_line(line), repr=False)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def on_skip(self, item: Skipped) -> None:
        self.skipped.append(item)
        self.warn(f"warning: {printable(item.source)}: skipped: {item.reason}")

    def on_notice(self, item: Notice) -> None:
        self.notices.append(item)
        self.warn(f"warning: {printable(item.source)}: {item.message}")

    def summary(self, what: str = "rows") -> str:
        line = f"{self.rows} {what} in {self.seconds:.1f} s ({self.rate:.0f}/s)"
        if self.skipped:
            line += f"; skipped {len(self.skipped)} input{'s' if len(self.skipped) != 1 else ''} (see the warnings)"
        if self.notices:
            line += f"; {len(self.notices)} damaged video{'s' if len(self.notices) != 1 else ''} partly read"
        return line


def printable(text: str) -> str:
    """A file name that may hold undecodable bytes, safe to print on any terminal."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def stderr_line(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)  # above a progress bar, when there is one
