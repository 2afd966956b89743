"""The API's JSON parser: DRF's, plus a clear 400 for JSON nested too deep.

Python's json module recurses per level: a body of a few thousand `[` made DRF's parser raise
RecursionError, a 500. Here it is a ParseError saying what to do, and anything nested deeper than
the forms accept (devices.forms.MAX_JSON_DEPTH) is refused the same way, so the API and the pages
agree. NaN and Infinity stay refused (DRF's STRICT_JSON).
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from devices.forms import MAX_JSON_DEPTH, TOO_DEEP, json_depth


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - {TOO_DEEP}") from None
        if json_depth(data) > MAX_JSON_DEPTH:
            raise ParseError(f"JSON parse error - {TOO_DEEP}")
        return data
