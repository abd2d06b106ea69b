"""What every command line shares: --help states each default once, the same idea has the same flag and default,
and progress off a terminal is plain lines."""
from __future__ import annotations

import re

import pytest

from analysis import report
from archs import predict
from archs.cli import progress
from compress import run as compress_run
from compress import train as compress_train
from search import run as search_run

PARSERS = {"search.run": search_run.build_parser, "compress.run": compress_run.build_parser,
           "compress.train": compress_train.build_parser, "analysis.report": report.build_parser,
           "archs.predict": predict.build_parser}


def _option_blocks(text: str) -> dict[str, str]:
    """Each option's help text, continuation lines joined."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^  (-{1,2}[\w-]+)", line)
        if m:
            current = m.group(1)
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_states_each_default_once_as_the_user_types_it(name):
    text = PARSERS[name]().format_help()
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: True)" not in text
    assert "['" not in text and "(default: [" not in text  # lists as typed: conv,dws,ir
    for opt, block in _option_blocks(text).items():
        assert len(re.findall(r"\(default", block)) <= 1, (opt, block)


def test_same_idea_same_flag_and_default_everywhere():
    s, c, t = (PARSERS[n]() for n in ("search.run", "compress.run", "compress.train"))

    def default(p, dest):
        return p.get_default(dest)

    for dest in ("device", "batch_size"):
        assert default(s, dest) == default(c, dest) == default(t, dest), dest
    assert default(s, "device") == "auto" and default(s, "batch_size") == 32
    for dest in ("kd_alpha", "temperature"):
        assert default(s, dest) == default(c, dest), dest
    assert c.parse_args(["m", "--kd-alpha", "0.5"]).kd_alpha == 0.5
    assert c.parse_args(["m", "--alpha", "0.4"]).kd_alpha == 0.4  # the old spelling still works, hidden
    assert "--alpha " not in c.format_help() and "--kd-alpha" in c.format_help()
    assert s.parse_args(["--budget-mflops", "1"]).warm_start is True
    assert s.parse_args(["--budget-mflops", "1", "--no-warm-start"]).warm_start is False


def test_progress_off_a_terminal_is_one_line_per_update(capsys):
    bar = progress(total=3, desc="trials", mininterval=0)
    for _ in range(3):
        bar.update()
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("trials: 100%") and 2 <= len(lines) <= 5
