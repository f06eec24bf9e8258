"""The layout: schema.json is the one source of the field rules, and dependencies are pinned."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from conftest import ROOT, make_run

from app import ApiError, RunValidator

REQUIRED = ["run_id", "job_name", "agent_id", "start_time", "end_time", "status"]


def test_schema_is_valid_draft_2020_12():
    schema = json.loads((ROOT / "schema.json").read_text(encoding="utf-8"))

    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert sorted(schema["required"]) == sorted(REQUIRED)


def test_field_rules_come_from_schema_json(tmp_path):
    schema = json.loads((ROOT / "schema.json").read_text(encoding="utf-8"))
    schema["properties"]["job_name"]["maxLength"] = 3
    narrowed = tmp_path / "schema.json"
    narrowed.write_text(json.dumps(schema), encoding="utf-8")

    RunValidator().clean(make_run(job_name="abcd"))  # the shipped schema allows it
    with pytest.raises(ApiError, match="job_name: must be at most 3 characters"):
        RunValidator(narrowed).clean(make_run(job_name="abcd"))


def pins(path) -> dict[str, str]:
    """Return {lower-case name: version} of a requirements file, checking every line is a pin."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith(("-c ", "-r ")):
            continue
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][\w.]*", line), line
        name, version = line.split("==")
        found[name.lower().replace("_", "-")] = version
    return found


def test_runtime_requirements_are_pinned():
    names = pins(ROOT / "requirements.txt")

    assert {"flask", "waitress", "jsonschema"} <= set(names)
    assert "-c constraints.txt" in (ROOT / "requirements.txt").read_text(encoding="utf-8")


def test_constraints_pin_every_named_requirement_at_the_same_version():
    constraints = pins(ROOT / "constraints.txt")
    named = {}
    for path in ("requirements.txt", "requirements-dev.txt", "bench/requirements.txt"):
        named.update(pins(ROOT / path))

    assert {name: constraints.get(name) for name in named} == named


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n([^\n]+)\n```", quick_start)  # the one-line command blocks
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()

    assert len(commands) == 2  # one installs and serves, one installs and tests
    assert commands[1] in ci_lines
