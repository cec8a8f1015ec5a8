"""docs/errors.md is what the code decides: regenerated here and compared (the fix is to regenerate it)."""

from __future__ import annotations

from pathlib import Path

from modelbus.cli.reference import render

ROOT = Path(__file__).resolve().parents[1]


def test_docs_errors_md_is_generated_from_the_code() -> None:
    assert (ROOT / "docs" / "errors.md").read_text() == render(), (
        "docs/errors.md is stale: .venv/bin/python -m modelbus.cli.reference > docs/errors.md"
    )


def test_the_tables_show_the_classification_they_are_computed_from() -> None:
    text = render()
    # a wrong key at the upstream makes the model `error` (model.auth); a rate limit leaves it ready
    assert (
        "| OpenAI: a wrong API key | 401 | 401 | `invalid_request_error` | `invalid_api_key` | `model.auth` |"
        in text
    )
    assert "| OpenAI: rate limited | 429 | 429 | `requests` | `rate_limit_exceeded` | stays `ready` |" in text
    assert "| `QueueFull` | 429 | `queue_full` |" in text
    assert "| 503 | `model_not_ready` | `rejected` |" in text
