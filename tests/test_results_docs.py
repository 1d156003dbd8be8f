"""docs/results.md and the README give only per-seed numbers the committed result files hold, and
every file the documents link to is there.

A ``mean ± std`` with its seeds' values (in parentheses, or in the next table column headed
``per seed``) must find those values, to the decimals shown, in one seed-ordered vector of a
result file under ``docs/results/``, and their mean and sample standard deviation must be the ones
shown; a column headed ``... per seed`` alone, and a parenthesised list of per-seed values in a
sentence (also when it wraps across lines or is followed by words: ``(0.70, 0.72 per seed)``),
must find its values likewise.  A ``mean ± std`` shown without its seeds' values (a mean over
rounds, a test loss) must be the mean and std of such a vector of the suite its section is about
(the suite named in backticks in its heading; every suite's in the README and the claims): among
every suite's thousands of vectors, about one in ten wrong digits would match one by chance.
The vectors: a cell's final values (``comparison.csv``), any per-seed column of a file with a
``seed`` column (``convergence.csv``, ``rounds.csv`` per round, ``contrasts.csv`` with its paired
differences A − B from every pair of ``a_X`` and ``b_X`` columns, sign and all) and each class's
and the worst class's recall (``diagnostics.csv``).  Tables and prose (table cells of prose too)
are checked alike; code is not, nor lists of whole numbers (ranks, seeds).  So a number typed by
hand, or left behind when a suite's results are rebuilt, fails here.

Two numbers a sentence sets against each other ("0.761 against 0.716", "(0.08, 0.06 against 0.09,
0.10)" seed by seed) must be given side by side by the section's suite (the suite a claims-table
row links to): see :class:`SideBySide`.  A lone number in a sentence is not checked: among
thousands of committed values, any three decimals match one.  Nor is a near miss always caught:
one cell's value at a round often sits a few thousandths from another's (a last digit off by
three passed in 16 of the 49 pairs of docs/results.md when tried).
"""

from __future__ import annotations

import csv
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from scipy import stats

from tests.conftest import REPO_ROOT

RESULTS = REPO_ROOT / "docs" / "results"
NUMBER = r"[+−-]?\d+(?:\.\d+)?"
SEED_LIST = re.compile(rf"(?:{NUMBER}|—)(?:, (?:{NUMBER}|—))+")
MEAN_STD = re.compile(rf"({NUMBER}) ± ({NUMBER})(?: \(({SEED_LIST.pattern})\))?")

Vector = tuple[float | None, ...]
# Columns that say where in a run a row is, not what it measured.
ROUND_COLUMNS = ("round", "rank", "last_round")


def _value(text: str) -> float | None:
    return float(text.replace("−", "-")) if text not in ("", "—") else None


def _shown(value: float | None, decimals: int) -> str:
    """A value as a table shows it (``—`` for none), in the form of :func:`_plain`."""
    if value is None:
        return "—"
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _decimals(token: str) -> int:
    return len(token.split(".")[1]) if "." in token else 0


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _numeric(rows: list[dict[str, str]], column: str) -> bool:
    return all(re.fullmatch(rf"{NUMBER}(?:e-?\d+)?|", row[column]) for row in rows)


def _runs(
    rows: list[dict[str, str]],
) -> tuple[list[str], dict[tuple[str, ...], list[dict[str, str]]]]:
    """The columns that tell one run's rows apart (its text columns: cell, metric, ...; and its
    round columns), and the rows by those columns, in seed order."""
    keys = [c for c in rows[0] if c != "seed" and (c in ROUND_COLUMNS or not _numeric(rows, c))]
    groups: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: int(row["seed"])):
        groups[tuple(row[column] for column in keys)].append(row)
    return keys, groups


def _per_seed_vectors(rows: list[dict[str, str]]) -> Iterator[Vector]:
    """Every seed-ordered vector one result file's rows hold."""
    if not rows:
        return
    if "final_per_seed" in rows[0]:
        for row in rows:
            yield tuple(float(value) for value in row["final_per_seed"].split())
    if "seed" not in rows[0]:
        return
    if "recall" in rows[0]:  # diagnostics: one row per class; each class's and the worst recall
        worst: dict[str, dict[int, float]] = defaultdict(dict)
        per_class: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
        for row in rows:
            runs = worst[row["cell"]]
            seed = int(row["seed"])
            runs[seed] = min(runs.get(seed, 1.0), float(row["recall"]))
            per_class[(row["cell"], row["class"])][seed] = float(row["recall"])
        for runs in [*worst.values(), *per_class.values()]:
            yield tuple(runs[seed] for seed in sorted(runs))
        return
    keys, groups = _runs(rows)
    for group in groups.values():
        for column in group[0]:
            if column not in keys and column != "seed":
                yield tuple(_value(row[column]) for row in group)
        for a in [c for c in group[0] if c.startswith("a_") and f"b_{c[2:]}" in group[0]]:
            yield tuple(float(row[a]) - float(row[f"b_{a[2:]}"]) for row in group)  # A − B


def _kindred(columns: list[str]) -> list[list[str]]:
    """Groups of columns that measure the same kind of thing, found by a shared word
    (``a_final``/``b_final``, ``low_slot_norm``/``high_slot_norm``, ``loss_served``/``loss_after``),
    not ``test_loss`` against ``test_accuracy``."""
    words = {word for column in columns for word in column.split("_")} - {"a", "b", "test", "mean"}
    kins = {tuple(c for c in columns if word in c.split("_")) for word in words}
    return [list(kin) for kin in sorted(kins) if len(kin) > 1]


# The columns that name what a row is about (a cell, a contrast, a reference model), not where.
SUBJECT_COLUMNS = {"cell", "method", "contrast", "a", "b", "reference"}


class SideBySide:
    """The pairs of committed values a sentence may set against each other ("0.761 against
    0.716"): two values of one row; or two subjects' values in one column of one file at the same
    round, metric or class, one seed's each, or their means or stds over seeds (``a_final`` and
    ``b_final`` are one column); or anything the suite gives against a reference (the untuned
    model, the majority class).  A random pair of three-decimal numbers passes for a figure's
    suite one time in 20 to 90 (measured on 2026-11-28; one in 13 for the populations, with their
    per-layer energies)."""

    def __init__(self, tables: dict[str, list[dict[str, str]]]) -> None:
        groups: list[list[float]] = []
        aligned: dict[tuple[str, ...], list[float]] = defaultdict(list)
        self._references: list[float] = []
        for name, rows in tables.items():
            if not rows:
                continue
            values = [c for c in rows[0] if c != "seed" and c not in SUBJECT_COLUMNS]
            values = [c for c in values if _numeric(rows, c) and c not in ROUND_COLUMNS]
            kins = _kindred(values)
            groups += [[float(row[c]) for c in kin if row[c]] for row in rows for kin in kins]
            if name.endswith("baselines.csv"):
                self._references += [float(row[c]) for row in rows for c in values if row[c]]
            if "seed" not in rows[0]:
                continue
            keys, runs = _runs(rows)
            for key, run in runs.items():
                where = [
                    f"{c}={v}" for c, v in zip(keys, key, strict=True) if c not in SUBJECT_COLUMNS
                ]
                for column in values:
                    family = (name, *where, column.removeprefix("a_").removeprefix("b_"))
                    seeds = {row["seed"]: float(row[column]) for row in run if row[column]}
                    for seed, value in seeds.items():
                        aligned[(*family, seed)].append(value)
                    if len(seeds) > 1:
                        mean = statistics.fmean(seeds.values())
                        aligned[(*family, "mean")].append(mean)
                        aligned[(*family, "std")].append(statistics.stdev(seeds.values()))
                        if name.endswith("baselines.csv"):
                            self._references.append(mean)
        self._groups = [*groups, *aligned.values()]
        self._shown: dict[int, tuple[dict[str, set[int]], set[str], set[str]]] = {}

    def _index(self, decimals: int) -> tuple[dict[str, set[int]], set[str], set[str]]:
        """By how each value shows: the groups holding it; the references; every value."""
        if decimals not in self._shown:
            where: dict[str, set[int]] = defaultdict(set)
            for index, group in enumerate(self._groups):
                for value in group:
                    where[_shown(value, decimals)].add(index)
            references = {_shown(value, decimals) for value in self._references}
            self._shown[decimals] = (where, references, set(where))
        return self._shown[decimals]

    def hold(self, a: str, b: str) -> bool:
        """Whether the suite gives ``a`` and ``b`` side by side, each to its shown decimals."""
        (where_a, references_a, every_a), (where_b, references_b, every_b) = (
            self._index(_decimals(a)),
            self._index(_decimals(b)),
        )
        a, b = _plain(a), _plain(b)
        if where_a.get(a, set()) & where_b.get(b, set()):
            return True
        return (a in references_a and b in every_b) or (b in references_b and a in every_a)


class Committed:
    """Every committed vector, found by how a table shows it (to some number of decimals), and
    the values each suite gives side by side."""

    def __init__(self, vectors: list[Vector], sides: list[SideBySide] | None = None) -> None:
        self.vectors = vectors
        self.sides = sides or []
        self._shown: dict[int, dict[tuple[str, ...], list[Vector]]] = {}
        self._summaries: dict[tuple[int, int], set[tuple[str, str]]] = {}
        self._stats: set[tuple[float, float, int]] = set()
        self._intervals: dict[int, set[tuple[str, str]]] = {}

    def showing(self, seeds: list[str]) -> list[Vector]:
        """The vectors that show as ``seeds``, each value to the decimals the list uses."""
        numbers = [token for token in seeds if token != "—"]
        decimals = _decimals(numbers[0]) if numbers else 0
        if decimals not in self._shown:
            index = self._shown[decimals] = defaultdict(list)
            for vector in self.vectors:
                index[tuple(_shown(value, decimals) for value in vector)].append(vector)
        return self._shown[decimals].get(tuple(_plain(token) for token in seeds), [])

    def summarised(self, mean: str, std: str) -> bool:
        """Some vector with a value in every seed has the mean and sample std shown."""
        decimals = (_decimals(mean), _decimals(std))
        if decimals not in self._summaries:
            self._summaries[decimals] = {
                (_shown(m, decimals[0]), _shown(d, decimals[1])) for m, d, _ in self.statistics()
            }
        return (_plain(mean), _plain(std)) in self._summaries[decimals]

    def statistics(self) -> set[tuple[float, float, int]]:
        """(mean, sample std, seeds) of every vector with a value in every seed, in floats:
        exact statistics over every vector would take seconds."""
        if not self._stats:
            for vector in {v for v in self.vectors if len(v) > 1 and None not in v}:
                values = [value for value in vector if value is not None]
                centre = statistics.fmean(values)
                spread = sum((value - centre) ** 2 for value in values) / (len(values) - 1)
                self._stats.add((centre, spread**0.5, len(values)))
        return self._stats

    def interval(self, low: str, high: str) -> bool:
        """Some vector's 95 % confidence interval of its mean (Student's t) is the one shown."""
        decimals = _decimals(low)
        if decimals not in self._intervals:
            t = {n: float(stats.t.ppf(0.975, n - 1)) for n in {n for _, _, n in self.statistics()}}
            self._intervals[decimals] = {
                (_shown(m - t[n] * d / n**0.5, decimals), _shown(m + t[n] * d / n**0.5, decimals))
                for m, d, n in self.statistics()
            }
        return (_plain(low), _plain(high)) in self._intervals[decimals]


def committed(tables: dict[str, list[dict[str, str]]]) -> Committed:
    """What one suite's result files (their rows, by file name) give."""
    vectors = [vector for rows in tables.values() for vector in _per_seed_vectors(rows)]
    return Committed(vectors, [SideBySide(tables)])


def committed_vectors(folder: Path) -> Committed:
    return committed({str(p.relative_to(folder)): _rows(p) for p in sorted(folder.rglob("*.csv"))})


def suite_vectors() -> dict[str, Committed]:
    """Each suite's own committed vectors, by the suite's name (its folder)."""
    return {folder.name: committed_vectors(folder) for folder in sorted(RESULTS.iterdir())}


def _plain(token: str) -> str:
    """A shown number without its plus sign, and a zero without a minus (−0.000 is a tiny loss)."""
    if token == "—":
        return token
    text = token.replace("+", "").replace("−", "-")
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _mean_std_holds(mean: str, std: str, seeds: str, vectors: Committed) -> bool:
    """Some committed vector shows as ``seeds`` and has the mean and sample std shown."""
    for vector in vectors.showing(seeds.split(", ")):
        values = [value for value in vector if value is not None]
        if len(values) == len(vector) and [_plain(mean), _plain(std)] == [
            _shown(statistics.mean(values), _decimals(mean)),
            _shown(statistics.stdev(values), _decimals(std)),
        ]:
            return True
    return False


def _unheld(cell: str, vectors: Committed) -> bool:
    """A list of per-seed numbers that no committed vector shows."""
    return bool(SEED_LIST.fullmatch(cell)) and not vectors.showing(cell.split(", "))


def _mean_std_error(claimed: re.Match[str], seeds: str | None, vectors: Committed) -> str | None:
    """Why a ``mean ± std`` (with its seeds' values, if shown) is in no result file, or None."""
    mean, std = claimed.group(1), claimed.group(2)
    if seeds is not None and SEED_LIST.fullmatch(seeds):
        if _mean_std_holds(mean, std, seeds, vectors):
            return None
        return f"{claimed.group(0).split(' (')[0]} ({seeds}) is in no result file"
    if vectors.summarised(mean, std):
        return None
    return f"{claimed.group(0)} summarises no result file's seeds"


# A parenthesised list of per-seed values with decimals, maybe followed by words: "(0.70,
# 0.72, 0.74)", "(+0.014, +0.006, +0.020 per seed)", "(0.434, 0.508; two seeds)".  Lists of
# whole numbers (ranks, seeds) are not results; they belong in code spans when in parentheses.
LISTED = re.compile(rf"\((?P<values>{SEED_LIST.pattern})(?=\)|;|,? [^\d\s+−-])")


# "0.761 against 0.716": two numbers with decimals, not a mean's std ("± 0.02 against"), nor a
# range ("against 2.32–2.35").  "(0.08, 0.06 against 0.09, 0.10)" sets seed against seed.
AGAINST = re.compile(rf"(?<![\d.–])(?<!± )({NUMBER}) against ({NUMBER})(?!\.?\d|–)")
LISTS_AGAINST = re.compile(rf"\(({SEED_LIST.pattern}) against ({SEED_LIST.pattern})(?=[);])")
# The 95 % confidence interval of a mean over seeds, as contrasts.md gives it.
INTERVAL = re.compile(rf"95 % CI \[({NUMBER}), ({NUMBER})\]")


def _set_against(text: str) -> Iterator[tuple[int, str, str]]:
    """(offset, a, b) of each pair of numbers with decimals ``text`` sets against each other."""
    lists = [
        (found.span(), a.split(", "), b.split(", "))
        for found in LISTS_AGAINST.finditer(text)
        for a, b in [found.groups()]
        if len(a.split(", ")) == len(b.split(", "))
    ]
    for (start, _), a_values, b_values in lists:
        yield from ((start, a, b) for a, b in zip(a_values, b_values, strict=True) if "." in a + b)
    for pair in AGAINST.finditer(text):
        inside = any(start <= pair.start() < end for (start, end), _, _ in lists)
        if not inside and "." in pair.group(1) and "." in pair.group(2):
            yield pair.start(), pair.group(1), pair.group(2)


def _prose_errors(text: str, vectors: Committed, section: Committed) -> Iterator[tuple[int, str]]:
    """(offset, why) of each mean ± std and per-seed list in ``text`` no result file gives; a
    mean ± std without its seeds is looked up in the section's own suite only (among every
    suite's thousands of vectors, one in ten wrong digits would match some vector)."""
    claims = list(MEAN_STD.finditer(text))
    for claimed in claims:
        seeds = claimed.group(3)
        error = _mean_std_error(claimed, seeds, vectors if seeds else section)
        if error:
            yield claimed.start(), error
    for listed in LISTED.finditer(text):
        values = listed.group("values")
        inside = any(claim.start() <= listed.start() < claim.end() for claim in claims)
        with_decimals = all("." in token for token in values.split(", ") if token != "—")
        if not inside and with_decimals and _unheld(values, vectors):
            yield listed.start(), f"({values}) is in no result file"
    for offset, a, b in _set_against(text):
        if not any(side.hold(a, b) for side in section.sides):
            yield offset, f"{a} against {b}: no result file gives them side by side"
    for found in INTERVAL.finditer(text):
        if not section.interval(*found.groups()):
            yield found.start(), f"{found.group(0)} is the interval of no seeds of its suite"


def _table_errors(
    cells: list[str], header: list[str], vectors: Committed, section: Committed
) -> Iterator[str]:
    consumed = -1  # the "per seed" column a mean ± std before it took its values from
    for column, cell in enumerate(cells):
        heading = header[column] if column < len(header) else ""
        claimed = MEAN_STD.fullmatch(cell)
        if claimed:
            seeds = claimed.group(3)
            if seeds is None and column + 1 < len(cells) and header[column + 1] == "per seed":
                seeds, consumed = cells[column + 1], column + 1
            error = _mean_std_error(claimed, seeds, vectors if seeds else section)
            if error:
                yield error
        elif column != consumed and heading.endswith("per seed"):
            if _unheld(cell, vectors):
                yield f"{heading} {cell} is in no result file"
        elif column != consumed:  # a sentence in a cell (the claims table's evidence)
            yield from (error for _, error in _prose_errors(cell, vectors, section))


class _Paragraph:
    """Consecutive prose lines, joined, so that a list broken across lines is still one list."""

    def __init__(self) -> None:
        self.text = ""
        self.starts: list[tuple[int, int]] = []  # (offset in text, line number)

    def add(self, number: int, line: str) -> None:
        self.starts.append((len(self.text), number))
        self.text += line.strip() + " "

    def line_at(self, offset: int) -> int:
        return max(number for start, number in self.starts if start <= offset)

    def errors(self, vectors: Committed, section: Committed) -> list[str]:
        found = _prose_errors(self.text, vectors, section)
        return [f"line {self.line_at(offset)}: {error}" for offset, error in found]


def together(suites: Iterable[Committed]) -> Committed:
    """Several suites' vectors and side-by-side pairs as one."""
    suites = list(suites)
    return Committed(
        [vector for suite in suites for vector in suite.vectors],
        [side for suite in suites for side in suite.sides],
    )


def _linked(
    row: str, suites: dict[str, Committed] | None, unions: dict[tuple[str, ...], Committed]
) -> Committed | None:
    """The suites whose sections a table row links to (the claims table's evidence), together,
    if any: each anchor names one, the longest suite name it holds.  ``unions`` keeps each
    combination built once, as its statistics take seconds."""
    named = []
    for anchor in re.findall(r"\]\(#([^)]*)\)", row):
        held = [name for name in suites or {} if name in anchor]
        named += [max(held, key=len)] if held else []
    if not suites or not named:
        return None
    names = tuple(dict.fromkeys(named))
    if len(names) == 1:
        return suites[names[0]]
    if names not in unions:
        unions[names] = together(suites[name] for name in names)
    return unions[names]


def document_errors(
    text: str, vectors: Committed, suites: dict[str, Committed] | None = None
) -> list[str]:
    """Each table cell or sentence whose per-seed numbers no committed vector gives, with its line.

    Fenced code blocks and inline code are not results and are skipped.  Under a heading that
    names a suite in backticks, a ``mean ± std`` without its seeds must be that suite's."""
    errors: list[str] = []
    header: list[str] = []
    paragraph = _Paragraph()
    section = vectors
    in_code = False
    unions: dict[tuple[str, ...], Committed] = {}
    for number, raw in enumerate([*text.splitlines(), ""], start=1):
        fence = raw.lstrip().startswith("```")
        line = re.sub(r"`[^`]*`", "``", raw) if not in_code else ""
        if fence or in_code or not line.strip() or line.startswith(("|", "#")):
            errors += paragraph.errors(vectors, section)
            paragraph = _Paragraph()
        if fence:
            in_code = not in_code
        elif in_code or not line.strip():
            header = []
        elif line.startswith("#"):
            header = []
            named = re.findall(r"`([^`]*)`", raw)
            section = next((suites[n] for n in named if suites and n in suites), vectors)
        elif line.startswith("|"):
            cells = [c.replace("**", "").strip() for c in line.strip().strip("|").split("|")]
            if not header:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                held = _linked(line, suites, unions) or section
                found = _table_errors(cells, header, vectors, held)
                errors += [f"line {number}: {error}" for error in found]
        else:
            header = []
            paragraph.add(number, line)
    return errors


@pytest.fixture(scope="module")
def suites() -> dict[str, Committed]:
    return suite_vectors()


@pytest.fixture(scope="module")
def vectors(suites: dict[str, Committed]) -> Committed:
    """Every suite's vectors together (the result files are read once, by suite)."""
    return together(suites.values())


@pytest.mark.parametrize("document", ["docs/results.md", "README.md"])
def test_every_per_seed_number_in_tables_and_prose_is_a_committed_result(
    document: str, vectors: Committed, suites: dict[str, Committed]
) -> None:
    text = (REPO_ROOT / document).read_text(encoding="utf-8")
    assert document_errors(text, vectors, suites) == []
    assert sum(line.count(" ± ") for line in text.splitlines() if line.startswith("|")) > 10
    assert sum(bool(MEAN_STD.search(line)) for line in text.splitlines() if line[:1] != "|") > 5


TABLE = """\
| cell | after round 20 | per seed | mean over rounds | test loss, per seed |
|---|---|---|---|---|
| a | **{mean} ± {std}** | {seeds} | 0.650 ± 0.050 (0.600, 0.650, 0.700) | 0.51, 0.52, — |
"""
VECTORS = Committed([(0.8, 0.9, 0.7), (0.6, 0.65, 0.7), (0.511, 0.52, None), (-0.0004, 0.0, 0.02)])


def test_a_table_that_gives_the_committed_numbers_passes() -> None:
    assert (
        document_errors(TABLE.format(mean=0.8, std=0.1, seeds="0.800, 0.900, 0.700"), VECTORS) == []
    )
    assert (
        document_errors("| x | per seed |\n|---|---|\n| d | 0.000, 0.000, +0.020 |", VECTORS) == []
    )


@pytest.mark.parametrize(
    ("mean", "std", "seeds"),
    [
        ("0.800", "0.100", "0.800, 0.900, 0.710"),  # one seed's value typed wrong
        ("0.810", "0.100", "0.800, 0.900, 0.700"),  # the mean not the seeds' mean
        ("0.800", "0.050", "0.800, 0.900, 0.700"),  # the std not their std
        ("0.800", "0.100", "0.900, 0.800, 0.700"),  # the seeds in another order
    ],
)
def test_a_number_no_result_file_gives_is_named_with_its_line(
    mean: str, std: str, seeds: str
) -> None:
    errors = document_errors(TABLE.format(mean=mean, std=std, seeds=seeds), VECTORS)
    assert errors == [f"line 3: {mean} ± {std} ({seeds}) is in no result file"]


def test_a_per_seed_column_alone_is_checked_too() -> None:
    table = TABLE.format(mean="0.800", std="0.100", seeds="0.800, 0.900, 0.700")
    wrong = table.replace("0.51, 0.52, —", "0.51, 0.53, —")
    expected = "line 3: test loss, per seed 0.51, 0.53, — is in no result file"
    assert document_errors(wrong, VECTORS) == [expected]


def test_a_mean_and_std_without_their_seeds_must_summarise_some_committed_seeds() -> None:
    """Columns such as the mean over rounds show no seeds' values: their mean and std alone must
    be those of some committed vector with a value in every seed."""
    table = "| cell | mean over rounds |\n|---|---|\n| a | {} |\n"
    assert document_errors(table.format("0.650 ± 0.050"), VECTORS) == []
    assert document_errors(table.format("0.650 ± 0.060"), VECTORS) == [
        "line 3: 0.650 ± 0.060 summarises no result file's seeds"
    ]
    # (0.511, 0.52, —) lacks a seed: no mean of three seeds to give.
    assert document_errors(table.format("0.52 ± 0.01"), VECTORS) != []


def test_a_confidence_interval_must_be_that_of_some_committed_seeds() -> None:
    """(0.6, 0.65, 0.7): mean 0.65 ± t(0.975, 2) 4.3027 x 0.05 / sqrt(3) = 0.65 ± 0.124."""
    text = "Over rounds +0.650, 95 % CI [{}, {}], ahead in every seed.\n"
    assert document_errors(text.format("+0.526", "+0.774"), VECTORS) == []
    assert document_errors(text.format("0.53", "0.77"), VECTORS) == []
    for low, high in [("+0.526", "+0.775"), ("+0.551", "+0.749"), ("−0.526", "+0.774")]:
        assert document_errors(text.format(low, high), VECTORS) == [
            f"line 1: 95 % CI [{low}, {high}] is the interval of no seeds of its suite"
        ]
    row = "| claim | evidence |\n|---|---|\n| a | +0.650, 95 % CI [+0.526, +0.770] |\n"
    assert document_errors(row, VECTORS) == [
        "line 3: 95 % CI [+0.526, +0.770] is the interval of no seeds of its suite"
    ]


PROSE = """\
Replication ends at {claim}, ahead of FedIT in every seed over rounds ({seeds}).

```python
state = run(ranks=(384, 384))  # code is not a result
```
A rank list in inline code, `(5, 20)`, is not one either.
"""


def test_prose_is_checked_like_the_tables() -> None:
    good = PROSE.format(claim="0.800 ± 0.100 (0.800, 0.900, 0.700)", seeds="0.600, 0.650, 0.700")
    assert document_errors(good, VECTORS) == []
    assert document_errors(PROSE.format(claim="0.650 ± 0.050", seeds="0.600, 0.650"), VECTORS) == [
        "line 1: (0.600, 0.650) is in no result file"
    ]
    wrong_std = PROSE.format(
        claim="0.800 ± 0.110 (0.800, 0.900, 0.700)", seeds="0.600, 0.650, 0.700"
    )
    assert document_errors(wrong_std, VECTORS) == [
        "line 1: 0.800 ± 0.110 (0.800, 0.900, 0.700) is in no result file"
    ]
    assert document_errors(
        PROSE.format(claim="0.81 ± 0.10", seeds="0.60, 0.65, 0.70"), VECTORS
    ) == ["line 1: 0.81 ± 0.10 summarises no result file's seeds"]
    # A mean ± std's own seeds are one claim, named once.
    claim = "0.800 ± 0.100 (0.800, 0.900, 0.710)"
    wrong_seed = PROSE.format(claim=claim, seeds="0.600, 0.650, 0.700")
    assert document_errors(wrong_seed, VECTORS) == [f"line 1: {claim} is in no result file"]


def test_a_contrast_is_held_to_its_sign(tmp_path: Path) -> None:
    """A − B as committed; told the other way round ("B ahead of A by ..."), it must say so with
    its sign (``A − B: −0.100``), or who is ahead would go unchecked."""
    contrasts = tmp_path / "contrasts.csv"
    contrasts.write_text(
        "contrast,seed,a_mean_over_rounds,b_mean_over_rounds,a_final,b_final\n"
        "a - b,0,0.5,0.4,0.70,0.72\na - b,1,0.6,0.4,0.80,0.81\n",
        encoding="utf-8",
    )
    committed = Committed(list(_per_seed_vectors(_rows(contrasts))))
    assert committed.showing(["+0.100", "+0.200"]) and committed.showing(["-0.020", "-0.010"])
    assert document_errors("A leads (+0.100, +0.200) over rounds.", committed) == []
    assert document_errors("B leads (−0.100, −0.200) over rounds.", committed) == [
        "line 1: (−0.100, −0.200) is in no result file"
    ]
    # Any a_X / b_X pair of columns is a contrast (rescore.py's a_score and b_score).
    rescored = tmp_path / "rescored_contrasts.csv"
    rescored.write_text("contrast,seed,a_score,b_score\na - b,0,0.15,0.14\na - b,1,0.07,0.09\n")
    assert Committed(list(_per_seed_vectors(_rows(rescored)))).showing(["+0.010", "-0.020"])


def test_a_list_broken_across_lines_or_followed_by_words_is_checked() -> None:
    text = (
        "It leads in every seed (0.600,\n0.650, 0.710 per seed) and (0.800, 0.900; three seeds).\n"
    )
    assert document_errors(text, VECTORS) == [
        "line 1: (0.600, 0.650, 0.710) is in no result file",
        "line 2: (0.800, 0.900) is in no result file",
    ]
    assert (
        document_errors(text.replace("0.710", "0.700").replace("0.900;", "0.900, 0.700;"), VECTORS)
        == []
    )
    # Whole numbers in parentheses are ranks or seeds, not results.
    assert document_errors("Ranks (8, 30, 200) and seeds (0, 1).\n", VECTORS) == []


def test_bold_cells_and_sentences_in_tables_are_checked() -> None:
    """``**0.8 ± 0.1** (seeds)`` is one claim; a cell of prose (the claims table's evidence) is
    checked as prose."""
    table = "| cell | accuracy | evidence |\n|---|---|---|\n| a | **{}** ({}) | ahead ({}) |\n"
    good = table.format("0.800 ± 0.100", "0.800, 0.900, 0.700", "0.600, 0.650, 0.700")
    assert document_errors(good, VECTORS) == []
    wrong_bold = table.format("0.800 ± 0.100", "0.800, 0.900, 0.710", "0.600, 0.650, 0.700")
    assert document_errors(wrong_bold, VECTORS) == [
        "line 3: 0.800 ± 0.100 (0.800, 0.900, 0.710) is in no result file"
    ]
    wrong_prose = table.format("0.800 ± 0.100", "0.800, 0.900, 0.700", "0.600, 0.650, 0.710")
    assert document_errors(wrong_prose, VECTORS) == [
        "line 3: (0.600, 0.650, 0.710) is in no result file"
    ]


def test_a_mean_and_std_without_seeds_must_be_the_sections_own_suite() -> None:
    """Under a heading naming a suite, a bare mean ± std is looked up in that suite's files only;
    elsewhere (the README, the claims) in every suite's."""
    suites = {"s1": Committed([(0.8, 0.9, 0.7)]), "s2": Committed([(0.6, 0.65, 0.7)])}
    both = Committed([*suites["s1"].vectors, *suites["s2"].vectors])
    text = "## Figure: `{}`\n\nIt learns: 0.800 ± 0.100 after round 20.\n"
    assert document_errors(text.format("s1"), both, suites) == []
    assert document_errors(text.format("s2"), both, suites) == [
        "line 3: 0.800 ± 0.100 summarises no result file's seeds"
    ]
    assert document_errors("It learns: 0.800 ± 0.100 after round 20.\n", both, suites) == []


def _table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


SIDE_BY_SIDE = {
    "rounds.csv": _table(
        "cell,seed,round,test_loss,test_accuracy\n"
        "a,0,2,0.9,0.500\na,1,2,0.8,0.600\na,0,4,0.7,0.750\na,1,4,0.6,0.850\n"
        "b,0,2,1.1,0.400\nb,1,2,1.0,0.420\nb,0,4,0.9,0.640\nb,1,4,0.8,0.660\n"
    ),
    "contrasts.csv": _table(
        "contrast,a,b,seed,a_mean_over_rounds,b_mean_over_rounds,a_final,b_final\n"
        "a - b,a,b,0,0.625,0.520,0.750,0.640\n"
    ),
    "baselines.csv": _table("reference,seed,test_accuracy\nmajority_class,0,0.255\n"),
}


@pytest.mark.parametrize(
    ("sentence", "unheld"),
    [
        ("A ends at 0.800 against 0.650 for B.", []),  # the means over seeds at round 4
        ("In seed 1 it is at 0.850 against 0.660.", []),
        ("After round 4 (0.750, 0.850 against 0.640, 0.660).", []),  # seed against seed
        ("A is at 0.750 against the majority class's 0.255.", []),  # no pair: words between
        ("Seed 0 sits near the majority class (0.400 against 0.255).", []),
        ("A is at 0.800 against 0.660.", ["0.800 against 0.660"]),  # a mean against one seed
        ("A at round 4, 0.800 against B at round 2, 0.410.", []),
        ("A ends at 0.800 against 0.410.", ["0.800 against 0.410"]),  # B at round 2
        ("A's loss, 0.7 against its accuracy 0.750.", []),
        ("Its loss is 0.7 against 0.750.", ["0.7 against 0.750"]),  # a loss against an accuracy
        ("(0.750, 0.850 against 0.660, 0.640)", ["0.750 against 0.660", "0.850 against 0.640"]),
        ("Spread ± 0.071 against 0.014, ranks 5 against 20, loss 2.96 against 2.32–2.35.", []),
    ],
)
def test_numbers_set_against_each_other_must_be_given_side_by_side(
    sentence: str, unheld: list[str]
) -> None:
    """In "A against B", A and B must be values one result file gives for the same thing: two
    cells at the same round and seed (or their means over seeds), two columns of one row that
    measure the same (A − B's ``a_final`` and ``b_final``), or a value against a reference's."""
    expected = [f"line 1: {pair}: no result file gives them side by side" for pair in unheld]
    assert document_errors(sentence + "\n", committed(SIDE_BY_SIDE)) == expected
    assert SideBySide(SIDE_BY_SIDE).hold("0.750", "0.640")  # a_final against b_final


def test_a_claims_row_is_checked_against_the_suite_its_evidence_links_to() -> None:
    """The claims table sits under no suite's heading; a row linking to a suite's section is
    held to that suite's files, so a pair another suite happens to give does not pass."""
    suites = {
        "fig": committed(SIDE_BY_SIDE),
        "fig_random": committed({"rounds.csv": _table("cell,seed,x\nc,0,0.3\n")}),
    }
    both = Committed([], [side for suite in suites.values() for side in suite.sides])
    row = "| claim | evidence |\n|---|---|\n| holds | [Figure](#figure-{}): 0.800 against 0.650 |\n"
    assert document_errors(row.format("fig"), both, suites) == []
    assert document_errors(row.format("fig_random"), both, suites) == [
        "line 3: 0.800 against 0.650: no result file gives them side by side"
    ]
    assert document_errors(row.format("elsewhere"), both, suites) == []
    # A row citing both suites (one claim on two figures) is held to the two together.
    two = "| claim | evidence |\n|---|---|\n| holds | [a](#a-fig_random) 0.800 against 0.650{} |\n"
    assert document_errors(two.format(", [b](#b-fig)"), both, suites) == []
    assert document_errors(two.format(""), both, suites) != []


@pytest.mark.parametrize("document", ["README.md", "docs/results.md"])
def test_every_file_a_document_links_to_is_committed(document: str) -> None:
    path = REPO_ROOT / document
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local, document
    assert [link for link in local if not (path.parent / link).exists()] == []


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: the heading's text lowercased, without
    punctuation but hyphens and underscores, spaces as hyphens; a repeated one numbered."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6} (.+)", line)):
            text = heading.group(1).strip().replace("`", "").lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


def test_a_heading_anchor_is_as_github_makes_it() -> None:
    text = (
        "# A\n## Byun & Lee, Figure 2: `fig2` (in progress)\n```\n# not a heading\n```\n## A\n# A\n"
    )
    assert heading_anchors(text) == {
        "a",
        "byun--lee-figure-2-fig2-in-progress",
        "a-1",
        "a-2",
    }


@pytest.mark.parametrize("document", ["README.md", "docs/results.md"])
def test_every_section_a_document_links_to_is_there(document: str) -> None:
    """A renamed heading (a section no longer "in progress") must not leave a link dead."""
    path = REPO_ROOT / document
    links = re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", path.read_text(encoding="utf-8"))
    assert links, document
    anchors = {
        target: heading_anchors((path.parent / target if target else path).read_text("utf-8"))
        for target in {target for target, _ in links}
    }
    assert [f"{target}#{anchor}" for target, anchor in links if anchor not in anchors[target]] == []


def test_the_contents_of_the_results_list_every_section() -> None:
    text = (REPO_ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    listed = re.findall(r"^- \[[^\]]+\]\(#([^)]+)\)$", text.split("\n## ", 1)[0], flags=re.M)
    sections = heading_anchors("\n".join(re.findall(r"^## .+$", text, flags=re.M)))
    assert sorted(listed) == sorted(sections)
