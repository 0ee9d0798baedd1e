"""`make mutation`: mutmut over the modules of mutation/modules.toml, one module at a time, and a
per-module score table (docs/testing.md).

For each module the project's sources and tests are copied to build/mutation/<module>/ (the
checkout itself is never mutated, so other work can go on in it), the copy's ``[tool.mutmut]``
is narrowed to that module and its own fast test files, and ``mutmut run`` runs there. The table
is read from mutmut's result files (``mutants/<module>.meta``):

    score = killed / (killed + survived)

where a timeout counts as killed (the mutant was detected), a mutant no selected test reaches
("no tests") counts as survived, and the mutants listed in mutation/equivalent.txt are left out of
both and counted on their own: they change nothing a caller can observe. A large module's entry
may name the functions to mutate (``functions = [...]``): only their mutants run and are scored.

    python tools/mutation.py                       # every module, then the table
    python tools/mutation.py pipeline/metrics.py   # some modules
    python tools/mutation.py --report              # the table from the last runs only
    python tools/mutation.py --survivors pipeline/cli.py   # rerun only the last run's survivors
    python tools/mutation.py --part 2 pipeline/config.py   # one part of a module run in parts

A module's entry may split it into ``parts``, each some functions against their own test files
(config.py: every test loads a whole config, so without parts each mutant would run them all).
``--part N`` runs the mutants of part N that have no verdict yet and adds their verdicts to the
module's results, so a long module can be finished part by part.

``--survivors`` is for after writing tests against a run's survivors: a fresh copy (with the
current tests) mutates the module again but runs only the mutants that survived (or had no
tests) last time, and their new results replace the old ones in the last run's result file.
The module's source must be unchanged since that run, or mutant names could point elsewhere.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES_FILE = ROOT / "mutation" / "modules.toml"
EQUIVALENT_FILE = ROOT / "mutation" / "equivalent.txt"
WORK = ROOT / "build" / "mutation"
# What the tests need from the project: the package, the stage entry points, the shipped prompts
# and configs, the tests and pyproject.toml (pytest's and mutmut's settings).
COPY = ("pipeline", "stages", "prompts", "configs", "tests", "pyproject.toml")
TARGET = 0.85

# mutmut's exit-code meanings (mutmut/stats.py, 3.8.1), folded into what the score needs.
KILLED_CODES = {1, 3}
SURVIVED_CODES = {0}
NO_TESTS_CODES = {5, 33}
TIMEOUT_CODES = {36, 24, -24, 152, 255}


def _read_modules() -> dict:
    with MODULES_FILE.open("rb") as f:
        return tomllib.load(f)["modules"]


def load_modules() -> dict[str, list[str]]:
    """Module -> its test files. An entry is the list of tests, or ``{tests = [...], functions =
    [...]}`` to mutate only those functions of a large module (``name`` or ``Class.method``)."""
    modules = {m: v["tests"] if isinstance(v, dict) else v for m, v in _read_modules().items()}
    for module, tests in modules.items():
        for path in [module, *(t.partition("::")[0] for t in tests)]:  # a test may be file::name
            if not (ROOT / path).is_file():
                raise SystemExit(f"{MODULES_FILE.relative_to(ROOT)}: {path} does not exist")
    return modules


def load_patterns() -> dict[str, list[str]]:
    """Module -> mutmut name patterns of its listed functions (none: the whole module)."""
    out: dict[str, list[str]] = {}
    for module, value in _read_modules().items():
        dotted = module.removesuffix(".py").replace("/", ".")
        for name in value.get("functions", []) if isinstance(value, dict) else []:
            cls, _, func = name.rpartition(".")  # mutmut names a method's mutants xǁClassǁmethod__mutmut_N
            out.setdefault(module, []).append(
                f"{dotted}.xǁ{cls}ǁ{func}__mutmut_*" if cls else f"{dotted}.x_{func}__mutmut_*"
            )
    return out


def _function_patterns(module: str, names: list[str]) -> list[str]:
    dotted = module.removesuffix(".py").replace("/", ".")
    out = []
    for name in names:
        cls, _, func = name.rpartition(".")  # mutmut names a method's mutants xǁClassǁmethod__mutmut_N
        out.append(f"{dotted}.xǁ{cls}ǁ{func}__mutmut_*" if cls else f"{dotted}.x_{func}__mutmut_*")
    return out


def load_parts() -> dict[str, list[tuple[list[str], list[str]]]]:
    """Module -> its parts, ``[(mutmut name patterns, tests)]``, for an entry with ``parts = [{functions =
    [...], tests = [...]}, ...]``: each part's functions run against its own test files only (a mutant
    then runs the tests written for its function, not every test that loads a config)."""
    out: dict[str, list[tuple[list[str], list[str]]]] = {}
    for module, value in _read_modules().items():
        for part in value.get("parts", []) if isinstance(value, dict) else []:
            for path in (t.partition("::")[0] for t in part["tests"]):
                if not (ROOT / path).is_file():
                    raise SystemExit(f"{MODULES_FILE.relative_to(ROOT)}: {path} does not exist")
            out.setdefault(module, []).append((_function_patterns(module, part["functions"]), part["tests"]))
    return out


def run_parts(module: str, parts: list[tuple[list[str], list[str]]]) -> int:
    """Run a module part by part, each in a fresh copy; the verdicts of all parts go into one result file."""
    codes: dict[str, int | None] = {}
    returncode = 0
    for patterns, tests in parts:
        returncode = run_module(module, tests, patterns) or returncode
        codes.update({n: c for n, c in (results(module, patterns) or {}).items() if c is not None})
    meta = _meta_path(module)
    if meta.is_file():  # the last part's file lists every mutant of the module
        last = json.loads(meta.read_text())
        meta.write_text(json.dumps({**last, "exit_code_by_key": {**last["exit_code_by_key"], **codes}}, indent=4))
    return returncode


def load_equivalent() -> dict[str, str]:
    """Mutant name -> the one-line reason it is equivalent (``name  reason``; # starts a comment)."""
    out: dict[str, str] = {}
    for n, line in enumerate(EQUIVALENT_FILE.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{EQUIVALENT_FILE.relative_to(ROOT)}, line {n}: {name} needs a one-line reason")
        out[name] = reason.strip()
    return out


def work_dir(module: str) -> Path:
    return WORK / module.removesuffix(".py").replace("/", ".")


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def prepare(module: str, tests: list[str]) -> Path:
    """A fresh copy of the project whose [tool.mutmut] mutates ``module`` against ``tests`` only."""
    dest = work_dir(module)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    pyproject = (dest / "pyproject.toml").read_text()
    narrowed = {
        "only_mutate": _toml_list([module]),
        "pytest_add_cli_args_test_selection": _toml_list(tests),
    }
    for key, value in narrowed.items():
        # the keys' values in [tool.mutmut] may span lines: replace up to the closing bracket
        pyproject, n = re.subn(rf"(?ms)^{key} = \[.*?\]$", f"{key} = {value}", pyproject, count=1)
        if n != 1:
            raise SystemExit(f"pyproject.toml: [tool.mutmut] has no {key} list to narrow")
    (dest / "pyproject.toml").write_text(pyproject)
    return dest


def run_module(module: str, tests: list[str], patterns: list[str] | None = None) -> int:
    dest = prepare(module, tests)
    print(f"== {module}: mutmut run against {', '.join(tests)} (log: {dest.relative_to(ROOT)}/mutmut.log)", flush=True)
    env = {**os.environ, "PYTHONPATH": ""}  # the copy's own package, not the checkout's
    with (dest / "mutmut.log").open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", *(patterns or [])],
            cwd=dest,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode:
        print(f"   mutmut exited {proc.returncode}; the last lines of its log:", file=sys.stderr)
        print("\n".join((dest / "mutmut.log").read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
    return proc.returncode


def _meta_path(module: str) -> Path:
    return work_dir(module) / "mutants" / (module + ".meta")


def rerun_survivors(
    module: str, tests: list[str], equivalent: dict[str, str], patterns: list[str] | None = None, pending: bool = False
) -> int:
    """Run only the last run's surviving / untested mutants of ``module`` against the current tests
    (``pending``: only those it has no verdict for, e.g. a part not run yet or an interrupted run's rest)."""
    meta = _meta_path(module)
    if not meta.is_file():
        print(f"== {module}: no earlier run to take the survivors from; run it whole first", file=sys.stderr)
        return 1
    if (work_dir(module) / module).read_bytes() != (ROOT / module).read_bytes():
        print(f"== {module} changed since its last run: mutant names may have moved; run it whole", file=sys.stderr)
        return 1
    old = json.loads(meta.read_text())
    codes = old["exit_code_by_key"]
    scoped = results(module, patterns) or {}
    if pending:
        names = sorted(n for n, c in scoped.items() if c is None)
    else:
        names = sorted(
            n for n, c in scoped.items() if n not in equivalent and (c in SURVIVED_CODES or c in NO_TESTS_CODES)
        )
    what = "unchecked mutant(s)" if pending else "survivor(s)"
    if not names:
        print(f"== {module}: no {what} to run")
        return 0
    dest = prepare(module, tests)
    print(f"== {module}: {len(names)} {what} against {', '.join(tests)} (log: {dest.relative_to(ROOT)}/mutmut.log)")
    env = {**os.environ, "PYTHONPATH": ""}
    with (dest / "mutmut.log").open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", *names], cwd=dest, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    new = json.loads(meta.read_text())["exit_code_by_key"] if meta.is_file() else {}
    # The earlier verdicts, with the rerun mutants' new ones (a rerun that gave none keeps the old).
    merged = {**codes, **{n: new[n] for n in names if new.get(n) is not None}}
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({**old, "exit_code_by_key": merged}, indent=4))
    return proc.returncode


def results(module: str, patterns: list[str] | None = None) -> dict[str, int | None] | None:
    """The verdict per mutant of the module's last run; with ``patterns``, of those functions only."""
    meta = _meta_path(module)
    if not meta.is_file():
        return None
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    if patterns:
        codes = {n: c for n, c in codes.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    return codes


def score_table(
    modules: list[str], equivalent: dict[str, str], patterns: dict[str, list[str]] | None = None
) -> tuple[str, list[str], bool]:
    """The Markdown table, the surviving mutants' names, and whether every module met the target."""
    header = "| module | mutants | killed | timeout | survived | no tests | equivalent | other | score |"
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    survivors: list[str] = []
    ok = True
    for module in modules:
        codes = results(module, (patterns or {}).get(module))
        if codes is None:
            rows.append(f"| {module} | not run | | | | | | | |")
            ok = False
            continue
        count = dict.fromkeys(("killed", "timeout", "survived", "no tests", "equivalent", "other"), 0)
        for name, code in sorted(codes.items()):
            if name in equivalent:
                count["equivalent"] += 1
            elif code in KILLED_CODES:
                count["killed"] += 1
            elif code in TIMEOUT_CODES:
                count["timeout"] += 1
            elif code in SURVIVED_CODES:
                count["survived"] += 1
                survivors.append(name)
            elif code in NO_TESTS_CODES:
                count["no tests"] += 1
                survivors.append(name)
            else:  # not checked, interrupted, segfault: neither a kill nor a survival
                count["other"] += 1
        detected = count["killed"] + count["timeout"]
        undetected = count["survived"] + count["no tests"]
        score = detected / (detected + undetected) if detected + undetected else float("nan")
        ok = ok and score >= TARGET and count["other"] == 0
        rows.append(
            f"| {module} | {len(codes)} | {count['killed']} | {count['timeout']} | {count['survived']} | "
            f"{count['no tests']} | {count['equivalent']} | {count['other']} | {score:.1%} |"
        )
    return "\n".join(rows), survivors, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths from mutation/modules.toml (default: all)")
    parser.add_argument("--report", action="store_true", help="print the table of the last runs, run nothing")
    parser.add_argument(
        "--survivors", action="store_true", help="rerun only the last run's survivors with the current tests"
    )
    parser.add_argument(
        "--part",
        type=int,
        metavar="N",
        help="of a module run in parts (mutation/modules.toml), run only part N (from 1), only its mutants without "
        "a verdict yet, and merge the verdicts into the module's last results",
    )
    args = parser.parse_args(argv)
    table = load_modules()
    unknown = [m for m in args.modules if m not in table]
    if unknown:
        parser.error(f"not in mutation/modules.toml: {', '.join(unknown)} (known: {', '.join(table)})")
    modules = args.modules or list(table)
    equivalent = load_equivalent()
    patterns = load_patterns()
    parts = load_parts()
    if args.part is not None:
        for module in modules:
            if not 1 <= args.part <= len(parts.get(module, [])):
                parser.error(f"{module} has {len(parts.get(module, []))} parts in mutation/modules.toml")
            part_patterns, tests = parts[module][args.part - 1]
            if results(module) is None:
                run_module(module, tests, part_patterns)
            else:
                rerun_survivors(module, tests, equivalent, part_patterns, pending=True)
    elif args.survivors:
        for module in modules:
            for part_patterns, tests in parts.get(module, [(patterns.get(module), table[module])]):
                rerun_survivors(module, tests, equivalent, part_patterns)
    elif not args.report:
        for module in modules:
            if module in parts:
                run_parts(module, parts[module])
            else:
                run_module(module, table[module], patterns.get(module))
    text, survivors, ok = score_table(modules, equivalent, patterns)
    report = [
        text,
        "",
        f"score = (killed + timeout) / (killed + timeout + survived + no tests); target {TARGET:.0%}.",
        f"Equivalent mutants ({EQUIVALENT_FILE.relative_to(ROOT)}) are left out of the score.",
    ]
    if survivors:
        report += ["", "Surviving mutants (see one with `cd build/mutation/<module> && mutmut show NAME`):"]
        report += [f"  {name}" for name in survivors]
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
