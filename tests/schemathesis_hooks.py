"""Schemathesis hooks: teach the generator the rules JSON Schema cannot state.

Loaded by tests/test_contract.py through SCHEMATHESIS_HOOKS. Each hook touches positive cases
only (data the schema calls valid) and bends them to obey a rule the OpenAPI document states
in words (its info.description); negative cases pass untouched, so the server must still
reject them.
"""

from __future__ import annotations

import schemathesis
from schemathesis import GenerationMode

from app import encode_cursor
from store import InvalidRunId, file_name_for, parse_timestamp


def _is_negative(case) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode == GenerationMode.NEGATIVE


def _fits_file_name(run_id: object) -> bool:
    if not isinstance(run_id, str) or not run_id:
        return True  # not ours to judge: the schema decides
    try:
        file_name_for(run_id)
    except InvalidRunId:
        return False
    return True


def _in_range(moment: object) -> bool:
    if not isinstance(moment, str):
        return True
    try:
        parse_timestamp(moment, date_only_ok=True)
    except ValueError as exc:
        # Only the documented limit; any other date-time the server cannot read is a finding.
        return "out of range" not in str(exc)
    return True


@schemathesis.hook
def filter_case(context, case) -> bool:
    """Drop positive cases that break a documented rule: a run_id too long to be a file name
    once encoded, or a date-time outside the years 0001-9999 once converted to UTC."""
    if _is_negative(case):
        return True
    body = case.body if isinstance(case.body, dict) else {}
    query = case.query or {}
    run_ids = [(case.path_parameters or {}).get("run_id"), body.get("run_id")]
    moments = [body.get("start_time"), body.get("end_time"), query.get("since"), query.get("until")]
    return all(map(_fits_file_name, run_ids)) and all(map(_in_range, moments))


@schemathesis.hook
def map_case(context, case):
    """Order start_time before end_time, and turn a random cursor into one the server issues."""
    if _is_negative(case):
        return case
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("start_time"), str):
        try:
            start = parse_timestamp(body["start_time"])
            end = parse_timestamp(body.get("end_time"))
        except (TypeError, ValueError, OverflowError):
            pass  # a date-time the server cannot read is a finding, not ours to hide
        else:
            if end < start:
                body["start_time"], body["end_time"] = body["end_time"], body["start_time"]
    query = case.query
    if query and isinstance(query.get("cursor"), str):
        # A cursor is opaque: only positions the server handed out are valid. Keep the
        # generated text as the run id part so the decoder still sees varied input.
        query["cursor"] = encode_cursor((len(query["cursor"]), query["cursor"]))
    return case
