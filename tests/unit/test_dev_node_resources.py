"""``dev serve --node-memory-mb`` / ``--node-cpus``: what the process node offers pods, and bad values named."""

from __future__ import annotations

import pytest

from kubelambda.cli import build_parser


def test_the_node_resources_are_parsed() -> None:
    args = build_parser().parse_args(["dev", "serve", "--node-memory-mb", "60000", "--node-cpus", "4"])
    assert (args.node_memory_mb, args.node_cpus) == (60000, 4)
    args = build_parser().parse_args(["dev", "serve"])
    assert (args.node_memory_mb, args.node_cpus) == (None, None)  # the machine's


@pytest.mark.parametrize(
    ("option", "value"), [("--node-memory-mb", "0"), ("--node-memory-mb", "lots"), ("--node-cpus", "1.5")]
)
def test_a_bad_value_is_named(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dev", "serve", option, value])
    err = capsys.readouterr().err
    assert f"{option} must be a positive" in err
    assert repr(value) in err
