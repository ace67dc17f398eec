"""dlq_processor: retries failed compensations from the FailedCompensations queue."""
