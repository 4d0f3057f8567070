"""Shared assertion for the converter's error report on a damaged state_dict."""

from __future__ import annotations

from typing import Any, Mapping

import pytest

from ip_lap_jax import conversion


def assert_conversion_error(state_dict: Mapping[str, Any], template: Any, *, unknown: str,
                            missing: str, misshaped: str) -> str:
  """Converting must fail with one ConversionError that names exactly one unknown, one
  missing and one mis-shaped key (these); returns the message for further checks."""
  with pytest.raises(conversion.ConversionError) as info:
    conversion.state_dict_to_variables(state_dict, template)
  message = str(info.value)
  assert "1 unknown keys" in message and unknown in message
  assert "1 missing keys" in message and missing in message
  assert "1 mis-shaped keys" in message and misshaped in message
  return message
