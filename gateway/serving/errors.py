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


class NotOnThisMachine(ServiceUnavailable):
    """The profile was moved off this machine (its `nodes` no longer include it) while a
    request waited here: never start it again here; the caller may place it on a node."""

    code = "no_node_available"


class PortTaken(StartFailed):
    """The health check was answered on the server's port, but not by the process we launched.

    Ports are picked before a server binds them, and a real backend loads for seconds first:
    another program can take the port in between and answer the health check. Trusting that
    answer would send users' requests (prompts, keys in headers) to a stranger's server, so the
    start fails instead; `lifecycle` retries once on another port when the port was not fixed.
    """

    def __init__(
        self, *, port: int, holder: str, pid: int, log_tail: str, advice: str = ""
    ) -> None:
        self.port = port
        self.holder = holder
        self.pid = pid
        self.log_tail = log_tail
        self.summary = (
            f"port {port} is answered by {holder}, not by the model server this gateway "
            f"launched (pid {pid}), so no request was sent there"
        )
        super().__init__(f"{self.summary}{advice}; last log lines:\n{log_tail}")

    def advised(self, advice: str) -> PortTaken:
        """The same failure, with what to do about it (the caller knows whether the port was
        the profile's own or one it picked)."""
        return PortTaken(
            port=self.port,
            holder=self.holder,
            pid=self.pid,
            log_tail=self.log_tail,
            advice=f"; {advice}",
        )
