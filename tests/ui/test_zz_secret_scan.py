"""The session's secret scan again, after the browser tests (which collect after tests/test_zz_*).

The UI tests add every password, token and key they handle to `tests.support.secrets.SEEN`;
this runs the same scan over every log the session wrote, the model servers' included.
"""

from __future__ import annotations

from tests.test_zz_secret_scan import test_no_secret_reaches_any_log

__all__ = ["test_no_secret_reaches_any_log"]
