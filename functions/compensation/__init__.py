"""compensation: the EventBridge-scheduled worker that compensates and recovers sagas."""
