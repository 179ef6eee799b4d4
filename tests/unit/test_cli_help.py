"""Every option of every ``parastep`` command says what it does and what it defaults to.

Each action's help (as ``--help`` renders it) must be non-empty; a flag says it is one, a required
option or positional says "required", and any other option names its default. Where the parser
holds the default, the rendered help shows that value (``%(default)s``), so the text cannot drift
from the code; defaults computed at run time are checked against the constants that compute them.
"""

from __future__ import annotations

import argparse

import pytest

from parastep.cli import build_parser


def _parsers():
    """(name, parser) for the top level and every subcommand."""
    top = build_parser()
    yield "parastep", top
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    yield from ((f"parastep {name}", cmd) for name, cmd in sorted(sub.choices.items()))


def _actions():
    for name, parser in _parsers():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = max(action.option_strings, key=len) if action.option_strings else action.dest
            yield pytest.param(parser, action, id=f"{name} {flag}")


def _rendered(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action) if action.help else ""


@pytest.mark.parametrize("parser,action", list(_actions()))
def test_every_option_states_its_default(parser, action):
    text = _rendered(parser, action)
    assert text.strip(), "no help"
    if action.nargs == 0:                                   # store_true and friends
        assert "flag" in text, f"a flag's help says it is one: {text!r}"
    elif action.required or not action.option_strings:
        assert "required" in text, f"a required option's help says so: {text!r}"
    else:
        assert "default" in text, f"the help names the default: {text!r}"
        d = action.default
        if d is not None and d is not argparse.SUPPRESS:
            shown = {str(d)} | ({format(d, "g")} if isinstance(d, float) else set())
            assert any(s in text for s in shown), f"the help shows the parser's default {d!r}: {text!r}"


@pytest.mark.parametrize("name,parser", list(_parsers()))
def test_every_help_page_renders(name, parser):
    text = parser.format_help()                     # a stray '%' in a help string raises here
    assert text.startswith(f"usage: {name}")


def _help_of(command: str, flag: str) -> str:
    parser = dict(_parsers())[f"parastep {command}"]
    action = next(a for a in parser._actions if flag in a.option_strings)
    return _rendered(parser, action)


def test_computed_defaults_match_the_code():
    """Defaults the commands compute (not the parser) are stated as the code computes them."""
    from parastep.executor.inputs import default_prompt
    from parastep.executor.evaluate import DEFAULT_SEEDS as EVAL_SEEDS
    from parastep.planner.fixed import default_warmup
    from parastep.profiler.command import DEFAULT_SEEDS as PROFILE_SEEDS

    assert f"default: {' and '.join(map(str, PROFILE_SEEDS))})" in _help_of("profile", "--seed")
    assert f"default: {' and '.join(map(str, EVAL_SEEDS))})" in _help_of("evaluate", "--seed")
    digits = type("DigitsPipeline", (), {})()
    assert f"'{default_prompt(digits)}' on digits" in _help_of("exec", "--prompt")
    assert "10% of steps, at least 1" in _help_of("plan", "--warmup")
    assert [default_warmup(t) for t in (1, 4, 5, 10, 50)] == [1, 1, 1, 1, 5]


def test_profile_help_names_every_default(capsys):
    """The options of ``profile`` that once showed no help: each names its default, in ``--help`` too."""
    assert _help_of("profile", "--gpus").endswith("(default: 2)")
    assert "(default: the registry's steps for the model, else 50)" in _help_of("profile", "--steps")
    assert "(default: min(max(gpus, 8), steps))" in _help_of("profile", "--max-window")
    assert _help_of("profile", "--out").endswith("(required)")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["profile", "--help"])
    out = " ".join(capsys.readouterr().out.split())           # unwrapped
    assert "--gpus GPUS largest world size: exchange costs for 2..G ranks (default: 2)" in out
