"""What can go wrong while getting a request a ready server, each with its HTTP answer.

A newcomer looking for "why did my request get 503/424/400" starts here: queue timeouts are
worth retrying (503 with Retry-After); a start that failed is not (its cause is in the log tail
the message carries), nor is a model bigger than the whole memory cap.
"""

from __future__ import annotations

from gateway.errors import BadRequest, GatewayError, NotFound, ServiceUnavailable

MAX_RETRY_AFTER = 120  # the OpenAI SDK will not honour a longer Retry-After


class StartFailed(GatewayError):
    """The model server did not become ready; the message carries its log tail.

    424 Failed Dependency, not 503: the process exited or never became healthy, which a retry
    seconds later does not fix, and SDKs retry every 5xx (the OpenAI SDKs: 408, 409, 429 and
    >= 500), relaunching the process each time and making the user wait for the same error.
    424 says what happened (the request failed because the model server it depends on did)
    and is retried by none of them.
    """

    status_code = 424
    error_type = "server_error"
    code = "server_start_failed"


class ModelTooLarge(BadRequest):
    """Can never fit under the cap: failing at once beats a queue that can only time out."""

    code = "model_too_large"


class QueueTimeout(ServiceUnavailable):
    """Waited the queue timeout for memory or a start: a retry later can succeed."""

    code = "queue_timeout"


class ProfileRemoved(NotFound):
    code = "model_not_found"
