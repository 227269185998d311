"""bench/readme_tables.py: the README's benchmark tables come from bench/results/, and `make lint` says
when they disagree."""

from __future__ import annotations

import json

import pytest

from bench import readme_tables


def test_the_readme_says_what_the_results_say():
    assert readme_tables.main(["--check"]) == 0, "run .venv/bin/python bench/readme_tables.py"


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(readme_tables, "RESULTS", tmp_path)

    def write(name, **fields):
        base = {"benchmark": name, "date": "2026-12-01T10:00:00+00:00", "smoke": False, "machine": {"cpus": 2},
                "config": {"machine_busy_pct_before": 3.0}, "achieved": [], "goals": [], "problems": []}  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps({**base, **fields}))

    return write


def readme_with(tmp_path, *names) -> object:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + "".join(f"<!-- bench:{n} -->\nstale\n<!-- /bench -->\n" for n in names) + "end\n")
    return readme


def test_blocks_show_rates_goals_verdicts_and_problems(tmp_path, results):
    results("fast", achieved=[{"what": "GET", "achieved": 1349.2, "target": None, "unit": "req/s", "note": ""}],
            goals=[{"goal": "p99 <= 50 ms", "achieved": 74.8, "target": 50, "unit": "ms", "met": False},
                   {"goal": "ratio >= 0.4", "achieved": 0.42, "target": 0.4, "unit": "", "met": True}])  # fmt: skip
    results("broken", goals=[{"goal": "lost == 0", "achieved": 3, "target": 0, "unit": "", "met": False}],
            problems=["3 messages lost"])  # fmt: skip
    readme = readme_with(tmp_path, "goals", "fast", "broken")

    assert readme_tables.main(["--check", "--readme", str(readme)]) == 1, "stale blocks are found"
    assert readme_tables.main(["--readme", str(readme)]) == 0
    text = readme.read_text()

    assert "stale" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| GET | 1,349 req/s | - |  |" in text
    assert "| p99 <= 50 ms | 74.8 ms | **missed** |" in text and "| ratio >= 0.4 | 0.42 | **met** |" in text
    assert "| `fast` | p99 <= 50 ms | 74.8 ms | **missed** | 2026-12-01 |" in text
    assert "**This run is not valid**: 3 messages lost" in text
    assert "machine 3% busy before the run" in text
    assert readme_tables.main(["--check", "--readme", str(readme)]) == 0, "then it agrees"


def test_a_benchmark_s_own_tables_are_rendered_as_it_wrote_them(tmp_path, results):
    rows = [["GET p99 ms", "20.1", "22.3", "yes (1.11x)"], ["a|b", "1", "2", "-"]]
    results("grows", tables=[{"title": "By fleet size", "headers": ["figure", "10,000", "1,000,000", "flat?"],
                              "rows": rows}])  # fmt: skip
    readme = readme_with(tmp_path, "grows")
    assert readme_tables.main(["--readme", str(readme)]) == 0
    text = readme.read_text()

    assert "By fleet size:\n\n| figure | 10,000 | 1,000,000 | flat? |\n| --- | ---: | ---: | ---: |\n" in text
    assert "| GET p99 ms | 20.1 | 22.3 | yes (1.11x) |" in text and "| a\\|b | 1 | 2 | - |" in text
    assert "| rate |" not in text, "no rates, no rates table"
    assert readme_tables.main(["--check", "--readme", str(readme)]) == 0


def test_a_block_without_results_or_in_another_format_is_an_error(tmp_path, results, capsys):
    (tmp_path / "old.json").write_text(json.dumps({"benchmark": "old", "pages": []}))
    assert readme_tables.main(["--readme", str(readme_with(tmp_path, "missing"))]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert readme_tables.main(["--readme", str(readme_with(tmp_path, "old"))]) == 2
    assert "not in the common format" in capsys.readouterr().err
