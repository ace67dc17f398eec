"""Lost DynamoDB answers, injected on the real client: the request is applied, then botocore's retry re-sends it."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ReadTimeoutError
from botocore.httpsession import URLLib3Session

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class LoseAnswers:
    """Loses the answer of chosen `operation` calls after DynamoDB applied them, as a read timeout does.

    A `before-send` hook registered last runs after any in-process responder (moto's) has applied the request;
    for a real endpoint on this machine (DynamoDB Local, moto server) the hook sends the request itself. Then it
    raises ReadTimeoutError, which botocore's standard retry treats as transient and answers by re-sending the
    same request: exactly what happens in AWS when a response is lost on the way back.

    `lose` picks which calls (1-based, counting first attempts only) lose their answer: {1}, {2, 3}, ...
    `when` optionally narrows the calls counted, by the request's JSON body (`when=lambda body: ...`).
    `sends` is how many sends of a chosen call lose their answer: 1 lets botocore's first re-send through; the
    client's max_attempts (3) makes botocore give up with the ReadTimeoutError after every send was applied.
    """

    def __init__(
        self, client: Any, operation: str, *, lose: set[int] | None = None, when: Any = None, sends: int = 1
    ) -> None:
        self._client = client
        # Registered on the whole event, after every handler already there (moto's responder is one of them);
        # handlers of a more specific event name would run before it.
        self._event = "before-send"
        self._target = f"DynamoDB_20120810.{operation}"
        self._lose = lose if lose is not None else {1}
        self._when = when
        self._sends = sends
        self._seen = 0
        self._retrying: dict[bytes, int] = {}
        self.lost: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._http = URLLib3Session()

    def __enter__(self) -> LoseAnswers:
        self._client.meta.events.register_last(self._event, self._hook, unique_id=f"lose-answers-{id(self)}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.meta.events.unregister(self._event, unique_id=f"lose-answers-{id(self)}")

    def _hook(self, request: Any, **_: Any) -> None:
        if request.headers.get("X-Amz-Target", b"") not in (self._target, self._target.encode()):
            return
        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        with self._lock:
            if body in self._retrying:
                # botocore's re-send of a request already applied: lose its answer too, or let it through
                if self._retrying[body] <= 0:
                    del self._retrying[body]
                    return
                self._retrying[body] -= 1
            else:
                parsed = json.loads(body or b"{}")
                if self._when is not None and not self._when(parsed):
                    return
                self._seen += 1
                if self._seen not in self._lose:
                    return
                self._retrying[body] = self._sends - 1
                self.lost.append(parsed)
        if urlsplit(request.url).hostname in LOCAL_HOSTS:
            response = self._http.send(request)
            assert response.status_code < 500, response.content
        raise ReadTimeoutError(endpoint_url=request.url)
