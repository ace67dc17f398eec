"""capture_retry: the EventBridge-scheduled worker that retries pending captures."""
